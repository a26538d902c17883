"""The knowledge filter and the paper's groups (Biran et al. 2024): shortcut queries leave both groups, one
answer rule (an alias anywhere within the token budget), early stopping that never changes a verdict."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.data import TwoHopQuery
from hopscope.engine import MatchRule, generate, normalise_text
from hopscope.methods.hopping.knowledge import PROMPTS, classify, groups, knowledge_table, score_prompts
from hopscope.methods import analysis
from hopscope.methods.hopping import KnowledgeSettings
from hopscope.models import tiny
from hopscope.pipeline import execute


@pytest.fixture(scope="module")
def varied():
    """A tiny model whose greedy continuations vary from token to token (OLMo 2's larger random init)."""
    return tiny("olmo2")


def _flags(composed, hops, shortcut):
    return pd.Series(composed), pd.Series(hops), pd.Series(shortcut)


def test_groups_exclude_shortcut_queries():
    # composed right + shortcut, composed wrong + hops known + shortcut, then the three shortcut-free cases
    g = groups(*_flags([True, False, True, False, False], [True, True, False, True, False],
                       [True, True, False, False, False]))
    assert g.tolist() == ["shortcut", "shortcut", "correct", "incorrect", "hops_unknown"]


def _table(**ok: bool) -> pd.DataFrame:
    row = {}
    for kind in PROMPTS:
        row.update({f"{kind}_asked": True, f"{kind}_correct": ok.get(kind, False), f"{kind}_alias_rank": 5})
    return pd.DataFrame([row])


@pytest.mark.parametrize("ok, group", [
    (dict(first_hop=True, second_hop=True, composed=True, relation_shortcut=True), "shortcut"),
    (dict(first_hop=True, second_hop=True, entity_shortcut=True), "shortcut"),
    (dict(first_hop=True, second_hop=True, composed=True), "correct"),
    (dict(composed=True), "correct"),  # the paper's correct group does not ask for both hops
    (dict(first_hop=True, second_hop=True), "incorrect"),
    (dict(first_hop=True), "hops_unknown"),
])
def test_classify_puts_each_query_in_the_papers_group(ok, group):
    t = classify(_table(**ok))
    assert t["group"].iloc[0] == group
    assert bool(t["shortcut"].iloc[0]) == group.startswith("shortcut")


def test_unasked_shortcut_prompts_do_not_count():
    t = _table(first_hop=True, second_hop=True, entity_shortcut=True)
    t["entity_shortcut_asked"] = False
    assert classify(t)["group"].iloc[0] == "incorrect"


def _words(text: str) -> list[str]:
    return normalise_text(text).split()


def _word_cases(lm):
    """A prompt, a word the greedy continuation names within 10 tokens but not first, and one it names only later."""
    for prompt in ("The capital of France is", "Paris is a city in", "The river Nile flows", "One two three four"):
        toks = generate(lm, prompt, None, max_new_tokens=16).tokens[0]
        early = _words(lm.tokenizer.decode(toks[:9]))
        late = [w for w in _words(lm.tokenizer.decode(toks[11:16])) if w not in _words(lm.tokenizer.decode(toks[:11]))]
        inside = [w for w in early[1:] if w != early[0] and w.isalpha()]
        if inside and late and early:
            return prompt, inside[0], late[-1], early[0]
    pytest.skip("the tiny model's continuations gave no usable words")


def test_alias_anywhere_within_the_budget(varied):
    lm = varied
    prompt, inside, late, first = _word_cases(lm)
    anywhere = score_prompts(lm, [prompt] * 3, [[inside], [late], [first]], MatchRule(10, anywhere=True))
    assert anywhere["correct"].tolist() == [True, False, True]  # within the budget anywhere; not after it
    start = score_prompts(lm, [prompt] * 2, [[inside], [first]], MatchRule(10, anywhere=False))
    assert start["correct"].tolist() == [False, True]  # the start-only rule (a deviation) misses a later alias
    longer = score_prompts(lm, [prompt], [[late]], MatchRule(16, anywhere=True))
    assert longer["correct"].tolist() == [True]


def test_early_stop_never_changes_a_verdict(varied):
    lm = varied
    prompt, inside, late, _ = _word_cases(lm)
    rule = MatchRule(10)
    prompts = [prompt, prompt + " and", "Hello world", prompt]
    answers = [[inside], [inside], [late], ["zzqx"]]
    scored = score_prompts(lm, prompts, answers, rule)
    full = generate(lm, list(dict.fromkeys(prompts)), None, max_new_tokens=10).texts(lm)
    texts = dict(zip(dict.fromkeys(prompts), full))
    assert scored["correct"].tolist() == [rule.matches(texts[p], a) for p, a in zip(prompts, answers)]
    for p, text in zip(prompts, scored["text"]):
        assert texts[p].startswith(text)  # a stopped row keeps a prefix of its generation


def test_knowledge_table_keeps_every_query(tiny_llama):
    qs = [TwoHopQuery(qid=f"q{i}", prompt=f"The capital of the country of city{i} is",
                      first_hop_prompt=f"city{i} is in", second_hop_prompt="The capital of Xland is", e1=f"city{i}",
                      e2="Xland", e3="Xcity", r1="city_country", r2="country_capital",
                      entity_shortcut_prompt=f"The capital of city{i} is",
                      relation_shortcut_prompt="The capital of the country is") for i in range(3)]
    t = knowledge_table(tiny_llama, qs, MatchRule())
    assert t["qid"].tolist() == ["q0", "q1", "q2"]
    assert set(t["group"]) <= {"correct", "incorrect", "shortcut", "hops_unknown"}
    assert t[[f"{k}_asked" for k in PROMPTS]].all().all()
    # the relation shortcut and the second hop are the same prompt for every query: asked once, same scores
    assert t["relation_shortcut_text"].nunique() == 1 and t["second_hop_text"].nunique() == 1


def test_the_stand_alone_knowledge_analysis(tiny_llama, tmp_path):
    qs = [TwoHopQuery(qid=f"q{i}", prompt=f"The capital of the country where city{i} is located is",
                      first_hop_prompt=f"city{i} is in", second_hop_prompt="The capital of Xland is", e1=f"city{i}",
                      e2="Xland", e3="Xcity", r1="city_country", r2="country_capital") for i in range(2)]
    res = execute(analysis("knowledge"), tiny_llama, qs, KnowledgeSettings.quick(), run_folder=tmp_path / "k",
                  progress=False)
    assert res.tables["knowledge"]["qid"].tolist() == ["q0", "q1"]
    assert {"group_counts", "accuracy", "shortcuts"} <= set(res.tables) and "knowledge_groups" in res.figures
    assert (tmp_path / "k" / "report.html").is_file()

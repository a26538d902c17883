"""Answer-token hygiene: which answers' first tokens are unambiguous among their relation's answers."""

from __future__ import annotations

import pytest

from hopscope.data import Dataset, SingleHopQuery, TwoHopQuery, answer_token_table, restrict_unambiguous
from hopscope.data.hygiene import hygiene_summary


@pytest.fixture(scope="module")
def tok():
    from hopscope.models.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


def _q(qid, answer, relation="currency", aliases=()):
    return SingleHopQuery(qid=qid, prompt=f"Q {qid} is the", answer=answer, relation=relation, subject=qid,
                          aliases=list(aliases))


def test_shared_and_short_first_tokens_are_flagged(tok):
    ds = Dataset([_q("ao", "Kwanza"), _q("la", "Kip"), _q("mm", "Kyat"), _q("de", "euro"), _q("fr", "euro"),
                  _q("af", "Afghani"), _q("kr", "South Korean", "demonym"), _q("za", "South African", "demonym"),
                  _q("nl", "Dutch", "demonym"), _q("xx", "Kip", "other")])
    t = answer_token_table(tok, ds).set_index("qid")
    first = {a: tok.decode([tok(" " + a)["input_ids"][0]]) for a in ("Kwanza", "Kip")}
    assert first["Kwanza"] == first["Kip"] == " K"  # GPT-2 splits both after " K"
    assert not t.loc["ao", "unambiguous"] and "kip" in t.loc["ao", "shared_with"]
    assert not t.loc["la", "unambiguous"]
    assert not t.loc["mm", "unambiguous"] and t.loc["mm", "shared_with"] == []  # " Ky": unique but short
    assert t.loc["de", "unambiguous"] and t.loc["fr", "unambiguous"]  # same answer is no ambiguity
    assert t.loc["af", "unambiguous"] and t.loc["af", "n_tokens"] == 2
    assert not t.loc["kr", "unambiguous"] and not t.loc["za", "unambiguous"]  # both start with " South"
    assert t.loc["nl", "unambiguous"]
    # groups are separate: "Kip" in another relation competes with nothing there, but " K" is short
    assert t.loc["xx", "reason"].startswith("first token ' K' is shorter")


def test_min_chars_and_restrict(tok):
    ds = Dataset([_q("mm", "Kyat"), _q("de", "euro")])
    strict = answer_token_table(tok, ds, min_chars=3).set_index("qid")
    assert not strict.loc["mm", "unambiguous"] and strict.loc["de", "unambiguous"]
    assert answer_token_table(tok, ds, min_chars=2).set_index("qid").loc["mm", "unambiguous"]
    assert [r.qid for r in restrict_unambiguous(ds, tok)] == ["de"]


def test_aliases_of_other_answers_count_and_two_hop_uses_r2(tok):
    a = TwoHopQuery(qid="a", prompt="p a", first_hop_prompt="f", second_hop_prompt="s", e1="x", e2="y",
                    e3="Kwanza", r1="r1", r2="currency")
    b = _q("b", "dollar", aliases=["Kip dollar"])
    t = answer_token_table(tok, Dataset([a, b])).set_index("qid")
    assert t.loc["a", "group"] == "currency"
    assert "kip dollar" in t.loc["a", "shared_with"]
    summary = hygiene_summary(answer_token_table(tok, Dataset([a, b])))
    assert summary.set_index("group").loc["currency", "n"] == 2

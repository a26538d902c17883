"""The repair analysis on a tiny model: the split by entity, identity policies, the self memory, the held-out
statistics, reproducibility and resume.

The tiny Llama's greedy continuation repeats the prompt's last token (tied embeddings, small init), so queries
whose prompts end in chosen words fall in known knowledge groups: the first hop ends in the bridge, the second
hop in the answer, a correct composition in the answer and an incorrect one in another word.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hopscope.data import TwoHopQuery
from hopscope.engine import Site, add, generate, normalise_text
from hopscope.methods import repair
from hopscope.methods.hopping.settings import KnowledgeSettings
from hopscope.methods.injection.memories import Memory, MemoryBank, memory_ids
from hopscope.methods.repair import analysis as A
from hopscope.methods.repair import policies as P
from hopscope.methods.repair.choose import candidate_gains, choose_backpatch, choose_cell
from hopscope.methods.repair.memories import first_line, memory_table
from hopscope.methods.repair.split import cap_per_entity, entity_keys, split_queries
from hopscope.methods.repair.summary import heldout_summary
from hopscope.models import tiny
from hopscope.stats import clopper_pearson, mcnemar_exact

WORDS = ("apple", "river", "stone", "cloud", "table", "house", "water", "light", "music", "paper", "horse", "night",
         "field", "bread", "chair", "glass", "plant", "sugar", "metal", "green", "money", "power", "heart", "world")
TOKENS = 5  # the answer rule's budget in these tests (the paper's is 10)


def tiny_queries(lm, n: int = 20, n_bridges: int = 5) -> list[TwoHopQuery]:
    words = [w for w in WORDS if len(lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    bridges, answers = words[:n_bridges], words[n_bridges:]
    out = []
    for i in range(n):
        b, a, other = bridges[i % n_bridges], answers[i % len(answers)], bridges[(i + 1) % n_bridges]
        out.append(TwoHopQuery(
            qid=f"q{i}", prompt=f"Query {i}: the food of the home of E{i} is {a if i % 2 == 0 else other}",
            first_hop_prompt=f"Fact {i}: the home of E{i} is {b}", second_hop_prompt=f"Fact: the food of {b} is {a}",
            e1=f"E{i}", e2=b, e3=a, r1="home", r2="food", entity_shortcut_prompt=f"the food of E{i} is {other}",
            relation_shortcut_prompt=f"the food of it is {other}"))
    return out


def settings(**changes) -> repair.Settings:
    base = dict(knowledge=KnowledgeSettings(max_new_tokens=TOKENS), backpatch_layers=3, inject_layers=3,
                taus=(4.0,), inject_positions="last", mitigation_prompts=8, text_windows=2, window=16,
                shard_queries=3)
    return repair.Settings(**{**base, **changes})


@pytest.fixture(scope="module")
def lm():
    return tiny("llama")


@pytest.fixture(scope="module")
def data(lm):
    return tiny_queries(lm)


@pytest.fixture(scope="module")
def result(lm, data):
    return repair.run(lm, data, settings(), progress=False)


def _bridge_names(q) -> set[str]:
    return {normalise_text(x) for x in [q.e2, *q.e2_aliases]}


# ---- the split --------------------------------------------------------------------------------------------
def test_entity_keys_join_queries_whose_bridges_share_a_name():
    keys = entity_keys({"a": ["United States", "USA"], "b": ["usa"], "c": ["USA!", "America"], "d": ["France"],
                        "e": ["Kenya"]})
    assert keys["a"] == keys["b"] == keys["c"] != keys["d"] != keys["e"]


def test_split_puts_every_entity_on_one_side_near_the_fraction():
    keys = {f"q{i}": f"e{i % 9}" for i in range(60)}
    strata = {f"q{i}": ("incorrect" if i % 3 else "correct") for i in range(60)}
    for seed in range(5):
        side = split_queries(keys, strata, 0.5, seed)
        by_entity: dict[str, set[str]] = {}
        for qid, s in side.items():
            by_entity.setdefault(keys[qid], set()).add(s)
        assert all(len(s) == 1 for s in by_entity.values())
        held = [q for q, s in side.items() if s == "held-out"]
        assert 20 <= len(held) <= 40 and len(held) < len(side)
        assert side == split_queries(keys, strata, 0.5, seed)  # a pure function of its inputs
    assert len({tuple(sorted(split_queries(keys, strata, 0.5, s).items())) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="bridge entity"):
        split_queries({"a": "x", "b": "x"}, {"a": "correct", "b": "incorrect"}, 0.5, 0)


def test_split_sends_the_largest_entity_to_the_side_that_needs_it():
    keys = {**{f"big{i}": "china" for i in range(6)}, **{f"q{i}": f"e{i}" for i in range(4)}}
    strata = dict.fromkeys(keys, "incorrect")
    for seed in range(4):  # 6 of 10 queries share one bridge: with fraction 0.6 they are the held-out side
        side = split_queries(keys, strata, 0.6, seed)
        assert {side[f"big{i}"] for i in range(6)} == {"held-out"} and sum(v == "held-out" for v in side.values()) == 6


def test_cap_per_entity_keeps_at_most_k_of_each_bridge():
    keys = {**{f"c{i}": "china" for i in range(12)}, **{f"i{i}": "india" for i in range(3)}, "k": "kenya"}
    kept = cap_per_entity(keys, 4, seed=0)
    assert sum(q.startswith("c") for q in kept) == 4 and {"i0", "i1", "i2", "k"} <= set(kept)
    assert kept == [q for q in keys if q in set(kept)] == cap_per_entity(keys, 4, seed=0)  # data order, seeded
    assert cap_per_entity(keys, 4, seed=1) != kept and cap_per_entity(keys, None, 0) == list(keys)


def test_train_and_heldout_never_share_a_query_or_a_bridge(result, data):
    t = result.tables
    train, held = set(t["train"]["qid"]), set(t["heldout"]["qid"])
    assert train and held and not train & held
    assert set(t["split"].loc[t["split"]["split"] == "train", "qid"]) == train
    qs = {q.qid: q for q in data}
    assert not set().union(*(_bridge_names(qs[q]) for q in train)) & set().union(*(_bridge_names(qs[q]) for q in held))
    assert set(t["heldout"]["group"]) == {"correct", "incorrect"} == set(t["train"]["group"])


# ---- the policies -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", [dict(backpatch_position="last", inject_positions="last"),
                                   dict(backpatch_position="e1", inject_positions="all")])
def test_identity_policies_fix_nothing_and_break_nothing(lm, data, where):
    """A back-patch with s = t writes a state back where it came from; tau = 0 injects nothing."""
    res = repair.run(lm, data, settings(families=("backpatch", "injection"), backpatch_pairs=((1, 1), (2, 2)),
                                        taus=(0.0,), text_windows=0, **where), progress=False)
    summary = res.tables["summary"].set_index("policy")
    for policy in ("backpatch", "self_injection", "gold_injection", "random_injection"):
        row = summary.loc[policy]
        assert row["fixed"] == 0 and row["broke"] == 0 and row["fix_rate"] == 0 and row["break_rate"] == 0
        assert row["net"] == 0 and row["n_incorrect"] > 0 and row["n_correct"] > 0
    ho = res.tables["heldout"]
    none = ho[ho["policy"] == "none"].set_index("qid")["text"]
    for policy in ("backpatch", "self_injection", "gold_injection"):
        assert ho[ho["policy"] == policy].set_index("qid")["text"].equals(none)
    gains = res.tables["candidates"]
    assert (gains["net"] == 0).all() and (gains["fixed"] == 0).all() and (gains["broke"] == 0).all()


def test_self_memory_is_exactly_the_first_hop_generation(lm, data, result):
    mem = result.tables["memories"]
    qs = {q.qid: q for q in data}
    assert len(mem) == len(result.tables["split"])
    for row in mem.itertuples():
        independent = generate(lm, qs[row.qid].first_hop_prompt, max_new_tokens=TOKENS).texts(lm)[0]
        assert row.self_memory == first_line(independent)
        if row.self_memory:
            assert row.self_ids == " ".join(map(str, memory_ids(lm, row.self_memory)))
            assert len(row.random_ids.split()) == row.memory_tokens == len(row.self_ids.split())


def test_self_injection_injects_that_memory(lm, data, result):
    """The held-out self-injection row equals injecting memory_ids(self_memory) by hand at the chosen cell."""
    cell = result.tables["choices"].set_index("family").loc["injection", "chosen"]
    layer, tau = int(cell.split()[0][1:]), float(cell.split("=")[1])
    mem = result.tables["memories"].set_index("qid")
    ho = result.tables["heldout"]
    rows = ho[ho["policy"] == "self_injection"]
    bank = MemoryBank(lm)
    qs = {q.qid: q for q in data}
    checked = 0
    for r in rows.itertuples():
        text = mem.loc[r.qid, "self_memory"]
        if not text:
            continue
        v = bank.vectors([Memory("self", 0, text, memory_ids(lm, text))], layer)[0]
        g = generate(lm, qs[r.qid].prompt, [[add(Site(layer, "attn_out", -1), tau * v)]], max_new_tokens=TOKENS)
        assert g.texts(lm)[0].startswith(r.text)
        checked += 1
    assert checked >= 3


def test_memory_from_the_knowledge_filter_when_its_line_is_complete(lm, data):
    q = data[0]
    kn = pd.DataFrame([{"qid": q.qid, "group": "correct", "first_hop_asked": True,
                        "first_hop_text": " the United States.\nQ: and"}])
    t = memory_table(lm, [q], kn, {q.qid: "train"}, {q.qid: "x"}, KnowledgeSettings().rule)
    assert t.loc[0, "self_memory"] == "the United States" and t.loc[0, "self_source"] == "knowledge filter"
    assert first_line("  Paris, France.\n") == "Paris, France" and first_line("\nParis") == ""


def test_mitigation_chosen_on_train_and_its_random_control(lm, data):
    res = repair.run(lm, data, settings(families=("mitigation",), mitigation_from="train", text_windows=0),
                     progress=False)
    cands = res.tables["mitigation_candidates"]
    assert len(cands) >= 2 and cands["proposed_on"].str.startswith("repair:").all() and not cands["chosen"].any()
    choice = res.tables["choices"].set_index("family").loc["mitigation"]
    gains = res.tables["candidates"]
    best = gains.sort_values(["net", "dlogprob"], ascending=False).iloc[0]
    assert choice["chosen"] == best["candidate"] and choice["chosen_by"] == "net accuracy gain on train"
    assert set(res.tables["train"]["candidate"]) - {"none"} == set(cands["mitigation"])
    assert set(res.tables["heldout"]["policy"]) == {"none", "mitigation", "mitigation_random"}
    for row in cands.to_dict("records"):
        row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
        control = P.random_mitigation(lm, row, seed=0)
        assert control["kind"] == row["kind"] and control["layer"] == row["layer"]
        assert len(control["heads"]) == len(row["heads"]) and len(control["neurons"]) == len(row["neurons"])
        assert not set(control["heads"]) & set(row["heads"]) and not set(control["neurons"]) & set(row["neurons"])
        assert control == P.random_mitigation(lm, row, seed=0)  # one fixed draw per seed


# ---- statistics -------------------------------------------------------------------------------------------
def _heldout(policy_correct: dict[str, list[bool]], groups: list[str]) -> pd.DataFrame:
    rows = []
    for policy, oks in policy_correct.items():
        for i, (ok, g) in enumerate(zip(oks, groups)):
            rows.append({"qid": f"q{i}", "group": g, "policy": policy, "candidate": policy, "correct": ok})
    return pd.DataFrame(rows)


def test_heldout_summary_fix_break_net_and_tests():
    groups = ["incorrect"] * 4 + ["correct"] * 3
    none = [False, False, False, False, True, True, True]
    treated = [True, True, False, False, False, True, True]  # fixes 2 of 4, breaks 1 of 3
    control = [False] * 7
    s = heldout_summary(_heldout({"none": none, "backpatch": treated, "backpatch_random": control}, groups))
    r = s.set_index("policy").loc["backpatch"]
    assert (r["fixed"], r["n_incorrect"], r["broke"], r["n_correct"], r["n"]) == (2, 4, 1, 3, 7)
    assert r["fix_rate"] == 0.5 and math.isclose(r["break_rate"], 1 / 3) and math.isclose(r["net"], 1 / 7)
    ci = clopper_pearson(2, 4)
    assert (r["fix_low"], r["fix_high"]) == (ci.low, ci.high)
    assert r["p_vs_none"] == mcnemar_exact(treated, none).p_value == 1.0
    assert r["control"] == "backpatch_random" and math.isclose(r["net_vs_control"], 4 / 7)
    assert r["p_vs_control"] == mcnemar_exact(treated, control).p_value
    assert r["net_low"] <= r["net"] <= r["net_high"]
    assert list(s["rank"]) == [1, 2] and list(s["policy"]) == ["backpatch", "backpatch_random"]


def test_choice_by_net_gain_then_log_probability():
    rows = []
    for qid, group, ok0 in (("a", "incorrect", False), ("b", "incorrect", False), ("c", "correct", True)):
        rows.append({"qid": qid, "group": group, "policy": "none", "candidate": "none", "s": -1, "t": -1,
                     "layer": -1, "tau": math.nan, "correct": ok0, "logprob": -5.0})
        for (s_, t_), ok, lp in (((3, 1), qid == "a", -4.0), ((4, 1), qid == "a", -1.0), ((4, 2), False, -0.5)):
            rows.append({"qid": qid, "group": group, "policy": "backpatch", "candidate": f"s={s_} t={t_}", "s": s_,
                         "t": t_, "layer": -1, "tau": math.nan, "correct": ok if group == "incorrect" else ok0,
                         "logprob": lp})
    gains = candidate_gains(pd.DataFrame(rows))
    assert gains.set_index("candidate").loc["s=3 t=1", "net"] == pytest.approx(1 / 3)
    assert gains.set_index("candidate").loc["s=4 t=2", "net"] == 0
    assert choose_backpatch(gains, 1) == [[4, 1]]  # ties with (3, 1) on net, wins on log p
    assert choose_backpatch(gains, 3) == [[4, 1], [4, 2]]  # distinct t only
    assert choose_cell(gains) is None


# ---- runs ---------------------------------------------------------------------------------------------------
def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet gives list cells back as arrays and strings as a string dtype: compare the values."""
    return df.reset_index(drop=True).map(lambda v: v.tolist() if hasattr(v, "tolist") and not isinstance(v, str)
                                         else v)


def _assert_same_tables(a, b) -> None:
    assert set(a.tables) == set(b.tables)
    for name in a.tables:
        pd.testing.assert_frame_equal(_plain(a.tables[name]), _plain(b.tables[name]), check_dtype=False,
                                      check_exact=True, obj=name)
    pd.testing.assert_frame_equal(a.claims, b.claims, check_dtype=False, check_exact=True)


def test_same_seed_same_tables_other_seed_other_draws(lm, data, result):
    _assert_same_tables(result, repair.run(lm, data, settings(), progress=False))
    other = repair.run(lm, data, settings(seed=1, families=("injection",), text_windows=0), progress=False)
    a = result.tables["memories"].set_index("qid")["random_ids"]
    b = other.tables["memories"].set_index("qid")["random_ids"]
    assert not a.equals(b.reindex(a.index))


def test_resume_after_a_crash_gives_identical_tables(lm, data, result, tmp_path, monkeypatch):
    stage = next(s for s in A.ANALYSIS.stages if s.name == "heldout")
    work = stage.work
    calls = []

    def crash_on_second(lm_, ctx, shard):
        calls.append(shard.index)
        if shard.index == 1:
            raise RuntimeError("simulated crash")
        return work(lm_, ctx, shard)

    monkeypatch.setattr(stage, "work", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        repair.run(lm, data, settings(), run_folder=tmp_path / "run", progress=False)
    monkeypatch.setattr(stage, "work", work)
    resumed = repair.run(lm, data, settings(), run_folder=tmp_path / "run", progress=False)
    _assert_same_tables(result, resumed)
    assert (tmp_path / "run" / "report.html").is_file()


def test_result_has_claims_report_and_ranked_summary(result):
    ids = list(result.claims["id"])
    assert ids == ["repair.backpatch_beats_none", "repair.self_injection_beats_none",
                   "repair.gold_injection_beats_none", "repair.mitigation_beats_none", "repair.backpatch_beats_random",
                   "repair.self_injection_beats_random", "repair.mitigation_beats_random"]
    s = result.tables["summary"]
    assert list(s["net"]) == sorted(s["net"], reverse=True)
    assert {"heldout_net", "heldout_fix_break", "train_backpatch"} <= set(result.figures)
    assert [sec.title for sec in result.sections] == ["Design", "Chosen on train", "Held-out repair",
                                                      "Cost on plain text"]
    ppl = result.tables["perplexity"].set_index("policy")
    assert ppl.loc["none", "ppl_change"] == 0 and ppl["perplexity"].gt(1).all()


# ---- settings and bad input ---------------------------------------------------------------------------------
def test_settings_round_trip_and_sizes():
    for s in (repair.Settings(), repair.Settings.quick(), repair.Settings.study(seed=3),
              settings(backpatch_pairs=((1, 1),))):
        assert repair.Settings.from_dict(s.to_dict()) == s
    assert repair.Settings.study(seed=3).knowledge.seed == 3
    for bad, match in ((dict(heldout_fraction=1.0), "heldout_fraction"), (dict(families=("magic",)), "families"),
                       (dict(inject_positions="middle"), "inject_positions"), (dict(taus=()), "taus"),
                       (dict(mitigation_from="paper"), "mitigation_from"), (dict(backpatch_layers=0), "backpatch_layers")):
        with pytest.raises(ValueError, match=match):
            repair.Settings(**bad)
    with pytest.raises(ValueError, match="no setting"):
        repair.Settings.from_dict({"n_pairs": 3})


def test_bad_input_is_one_clear_error(lm, data):
    with pytest.raises(ValueError, match="outside"):
        repair.run(lm, data, settings(backpatch_pairs=((99, 1),)), progress=False)
    nothing = repair.run(lm, data[1:2], settings(), progress=False)  # a model that knows too little: a note
    assert not len(nothing.tables["split"]) and not len(nothing.tables["summary"]) and not len(nothing.claims)
    assert "Nothing was repaired" in nothing.sections[0].text


def test_a_mitigation_row_decodes_as_the_edited_model():
    """A heads mitigation is an edit of the model: its greedy continuation equals HF's greedy decoding of a copy
    whose o_proj columns of those heads are scaled by the factor (every prompt and generated position)."""
    import copy

    import torch

    from hopscope.engine import MatchRule
    from hopscope.methods.recall.mitigation import Mitigation
    from hopscope.methods.repair.decode import decode_rows

    lm = tiny("mistral")  # a larger init than the tiny Llama's: the edit changes its continuation
    q = tiny_queries(lm, n=1)[0]
    mit = Mitigation("heads", lm.n_layers - 1, heads=list(range(lm.n_heads)), factor=-4.0)
    rule = MatchRule(max_new_tokens=6)
    specs = [P.Spec("none"), P.Spec("mitigation", mit.name, layer=mit.layer)]
    rows = decode_rows(lm, q, specs, [[], P.mitigation(lm, mit.to_row())], -1, rule)
    edited = copy.deepcopy(lm.model)
    o_proj = edited.model.layers[mit.layer].self_attn.o_proj
    d_head = lm.d_head
    with torch.no_grad():
        for h in mit.heads:
            o_proj.weight[:, h * d_head:(h + 1) * d_head] *= mit.factor
    ids = torch.tensor([lm.to_ids(q.prompt)])
    want = edited.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                           pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    plain = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    got = rows.set_index("policy")["text"]
    n = rows.set_index("policy")["n_tokens"]
    assert want != plain  # the edit changes the continuation, so the test can tell the two apart
    assert lm.tokenizer.decode(want[:n["mitigation"]], skip_special_tokens=True) == got["mitigation"]
    assert lm.tokenizer.decode(plain[:n["none"]], skip_special_tokens=True) == got["none"]

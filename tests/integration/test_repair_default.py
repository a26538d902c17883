"""The repair analysis on the default model (SmolLM2-135M) at its quick size: the split by entity, the self memory
read from the knowledge filter's record, identity rows, and a finished run folder."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def quick(default_model, tmp_path_factory):
    from hopscope.methods import repair

    out = tmp_path_factory.mktemp("repair") / "run"
    return repair.run(default_model, settings=repair.Settings.quick(), run_folder=out, progress=False), out


def test_repair_quick_on_the_default_model(quick):
    from hopscope.report import RunFolder

    result, out = quick
    assert RunFolder.open(out).status == "done" and (out / "report.html").is_file()
    split = result.tables["split"]
    by_side = split.groupby("split")["entity"].apply(set)
    assert not by_side["train"] & by_side["held-out"]
    assert set(result.tables["heldout"]["qid"]) == set(split.loc[split["split"] == "held-out", "qid"])
    assert len(result.claims) == 7 and result.claims["verdict"].isin(["supported", "contradicted",
                                                                      "inconclusive"]).all()
    ppl = result.tables["perplexity"].set_index("policy")
    assert ppl.loc["none", "perplexity"] < 200  # prose the model reads well enough to cost something


def test_self_memory_matches_an_independent_first_hop_generation(default_model, quick):
    from hopscope.engine import generate
    from hopscope.methods.hopping import queries as Q
    from hopscope.methods.repair.memories import first_line
    from hopscope.methods.repair.settings import Settings

    result, _ = quick
    s = Settings.quick()
    qs = Q.by_qid(Q.prepare(None, s.knowledge))
    mem = result.tables["memories"]
    assert (mem["self_source"] == "knowledge filter").any()  # the filter's record already held the first line
    for row in mem.head(4).itertuples():
        text = generate(default_model, qs[row.qid].first_hop_prompt, max_new_tokens=s.rule.max_new_tokens).texts(
            default_model)[0]
        assert row.self_memory == first_line(text)
    assert mem["self_has_bridge"].mean() > 0.5  # the incorrect group knows its first hop

"""Resolution layers (logit lens), the per-query summary, and the whole study on a tiny model."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.engine import run
from hopscope.engine.answers import first_token_id, score_tokens
from hopscope.methods.backpatch import StudyOptions, run_study
from hopscope.methods.resolution import (
    answer_aliases, bridge_aliases, e1_token_span, first_hop_position, first_layer, lens_ranks, lens_resolution,
    summarize, summary_by_group,
)
from hopscope.report import RunFolder
from test_backpatch import make_query


def test_query_protocol(tiny_gpt2):
    q = make_query(e3_aliases=["Paris, France", "Paris"])
    assert answer_aliases(q) == ["Paris", "Paris, France"] and bridge_aliases(q) == ["France"]
    s, e = e1_token_span(tiny_gpt2, q)
    assert "".join(tiny_gpt2.str_tokens(q.prompt)[s:e]).strip() == "Eiffel Tower"
    assert tiny_gpt2.str_tokens(q.prompt)[first_hop_position(tiny_gpt2, q)].strip() == "located"


def test_e1_found_at_its_last_occurrence_without_spans(tiny_llama):
    """Few-shot prompts mention names earlier; without spans, e1 is located at its last occurrence."""
    q = make_query(prompt="Paris is nice. The capital of Paris is", e1="Paris")
    q.e1_span = None
    s, e = e1_token_span(tiny_llama, q)
    assert s > 3 and "".join(tiny_llama.str_tokens(q.prompt)[s:e]).strip() == "Paris"


def test_first_layer():
    assert first_layer([False, True, True]) == 1
    assert first_layer([False, True], layers=[4, 8]) == 8
    assert pd.isna(first_layer([False, False]))


def test_lens_last_layer_matches_the_model(tiny_model):
    """The residual stream's last layer read through the lens is the model's own output distribution."""
    qs = [make_query(qid="a"), make_query(prompt="The capital of the country where the Colosseum is is", qid="b",
                                          e1="Colosseum", e2="Italy", e3="Rome")]
    ranks = lens_ranks(tiny_model, qs, batch_size=2)
    assert len(ranks) == 2 * 3 * tiny_model.n_layers * 2
    logits = run(tiny_model, [q.prompt for q in qs], last_only=True).logits
    for i, q in enumerate(qs):
        for target, ans in (("e2", q.e2), ("e3", q.e3)):
            sc = score_tokens(logits[i:i + 1], [first_token_id(tiny_model.tokenizer, ans)])
            row = ranks[(ranks.query_id == q.qid) & (ranks.component == "resid_post") & (ranks.target == target)
                        & (ranks.layer == tiny_model.n_layers - 1)].iloc[0]
            assert row["rank"] == int(sc["rank"][0])
            assert row["prob"] == pytest.approx(float(sc["prob"][0]), rel=1e-4, abs=1e-7)


def test_lens_resolution_and_summary():
    ranks = pd.DataFrame([
        {"query_id": q, "component": "resid_post", "layer": l, "target": t, "rank": r, "prob": 0.1}
        for q, t, rs in (("a", "e2", [9, 3, 0, 0]), ("a", "e3", [9, 9, 4, 0]),
                         ("b", "e2", [9, 9, 9, 0]), ("b", "e3", [9, 9, 9, 9]))
        for l, r in enumerate(rs)])
    lens = lens_resolution(ranks, k=5)
    a2 = lens[(lens.query_id == "a") & (lens.target == "e2")].iloc[0]
    assert (a2.first_top1, a2.first_top5, a2.best_rank) == (2, 1, 0)
    kn = pd.DataFrame({"query_id": ["a", "b"], "group": ["correct", "incorrect"]})
    s = summarize(kn, lens=lens)
    assert s.set_index("query_id").loc["b", "e2_lens_top1"] == 3 and pd.isna(s.set_index("query_id").loc["b", "e3_lens_top1"])
    g = summary_by_group(s).set_index(["measure", "group"])
    assert g.loc[("e3_lens_top1", "incorrect"), "n_resolved"] == 0
    assert g.loc[("e2_lens_top1", "correct"), "median_layer"] == 2


def test_study_writes_a_resumable_run_folder(tiny_llama, tmp_path):
    qs = [make_query(qid="a"), make_query(prompt="The capital of the country where the Colosseum is is", qid="b",
                                          e1="Colosseum", e2="Italy", e3="Rome"),
          make_query(prompt="The capital of the country where Big Ben is is", qid="c", e1="Big Ben", e2="England",
                     e3="London")]
    kn = pd.DataFrame({"query_id": ["a", "b", "c"], "group": ["incorrect", "correct", "hops_unknown"]})
    opts = StudyOptions(layers=[0, 2], max_new_tokens=2, patchscope_tokens=2, knockout_k=0,
                        patchscope_targets=("repeat",))
    folder = RunFolder.create("backpatch", {"test": 1}, out=tmp_path / "run", seed=0)
    with folder:
        head = run_study(tiny_llama, qs, folder, opts, knowledge=kn, progress=False)
    assert head["n_analysed"] == 2 and "oracle fix rate (back)" in head and "break rate" in head
    pairs = folder.load_table("pairs")
    assert set(pairs["query_id"]) == {"a", "b"}
    assert set(pairs["condition"]) == {"clean", "back", "forward", "random", "unrelated"}
    for name in ("queries", "lens", "patchscope_layers", "knockout_layers", "summary", "summary_by_group"):
        assert len(folder.load_table(name)), name
    assert {p.stem for p in folder.figures_dir.glob("*.png")} >= {"fix_rate", "keep_rate", "oracle", "resolution_layers"}
    assert folder.report_path.exists()
    again = RunFolder.resume(folder.path)
    with again:
        head2 = run_study(tiny_llama, qs, again, opts, knowledge=kn, progress=False)
    pd.testing.assert_frame_equal(again.load_table("pairs"), pairs)
    assert head2["oracle fix rate (back)"] == head["oracle fix rate (back)"]

"""The recall analysis end to end on a tiny Llama (random weights: plumbing and exactness, not findings):
the Result's shape, the claims, determinism, resume after a crash, and ``hopscope recall``."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.methods.recall import ANALYSIS, Settings, run
from hopscope.methods.recall import analysis as A
from hopscope.report import RunFolder
from hopscope.stats import CLAIM_COLUMNS

SMALL = dict(n=8, n_other=2, text_windows=2, window=16, shard_size=3)
CLAIMS = ["recall.movers", "recall.mlp_gain", "recall.suppression", "recall.mitigation"]


@pytest.fixture(scope="module")
def result(tiny_llama):
    return run(tiny_llama, settings=Settings.quick(**SMALL), progress=False)


def test_result_has_tables_claims_sections_and_exact_checks(result):
    t = result.tables
    assert {"prompts", "heads", "head_patching", "mlp_decomposition", "final_layer_effects", "mitigation",
            "mitigation_scores", "mitigation_text", "movers_concentration"} <= set(t)
    assert t["dla_components"]["sum_error"].abs().max() < 1e-4
    assert t["mlp_decomposition"]["sum_error"].max() < 1e-4
    assert list(result.claims["id"]) == CLAIMS and list(result.claims.columns) == CLAIM_COLUMNS
    assert set(result.claims["verdict"]) <= {"supported", "contradicted", "inconclusive"}
    prompts = t["prompts"]
    assert prompts["qid"].is_unique and set(prompts["split"]) == {"train", "test"}
    test = set(prompts.loc[prompts["split"] == "test", "qid"])
    assert set(t["movers_concentration"]["qid"]) == test  # claims are measured on the held-out half
    by_id = result.claims.set_index("id")
    assert by_id.loc["recall.suppression", "n"] == len(prompts)
    block = t["final_layer_effects"].query("component == 'block'")
    assert by_id.loc["recall.suppression", "value"] == pytest.approx(float((block["effect_logit_diff"] < 0).mean()))
    assert t["mitigation"]["chosen"].sum() == 1
    for sec in result.sections:
        assert all(f in result.figures for f in sec.figures)
        assert all(name in t for name in sec.tables.values())
    assert {"claim-recall-movers", "claim-recall-suppression", "heads-drop_path_pct"} <= set(result.figures)


def test_mitigation_claim_is_the_paired_held_out_change(result):
    t = result.tables
    chosen = t["mitigation"].query("chosen")["mitigation"].iloc[0]
    s = t["mitigation_scores"].query("eval_set == 'test'")
    wide = s.pivot(index="qid", columns="mitigation", values="prob")
    delta = (wide[chosen] - wide["none"]).median()
    assert result.claims.set_index("id").loc["recall.mitigation", "value"] == pytest.approx(delta, abs=1e-9)


def test_same_seed_gives_identical_tables(tiny_llama, result):
    again = run(tiny_llama, settings=Settings.quick(**SMALL), progress=False)
    for name, df in result.tables.items():
        pd.testing.assert_frame_equal(df, again.tables[name], obj=name)
    pd.testing.assert_frame_equal(result.claims, again.claims)


def test_an_interrupted_run_resumes_with_identical_tables(tiny_llama, result, tmp_path, monkeypatch):
    work = A.ANALYSIS.stages[1].work  # the patch stage
    calls = []

    def crash(lm, ctx, shard):
        calls.append(shard.index)
        if shard.index == 1:
            raise KeyboardInterrupt("simulated kill")
        return work(lm, ctx, shard)

    monkeypatch.setattr(ANALYSIS.stages[1], "work", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, settings=Settings.quick(**SMALL), run_folder=tmp_path / "r", progress=False)
    monkeypatch.setattr(ANALYSIS.stages[1], "work", work)
    assert RunFolder.open(tmp_path / "r").status == "interrupted"
    resumed = run(tiny_llama, settings=Settings.quick(**SMALL), run_folder=tmp_path / "r", progress=False)
    for name, df in result.tables.items():
        pd.testing.assert_frame_equal(df, resumed.tables[name], obj=name)
    assert RunFolder.open(tmp_path / "r").status == "done"
    assert (tmp_path / "r" / "claims.parquet").is_file() and (tmp_path / "r" / "report.html").is_file()


def test_options_mean_source_and_all_heads_run(tiny_llama):
    res = run(tiny_llama, settings=Settings.quick(**SMALL, heads="all", patch_source="mean", total_effect=True),
              progress=False)
    pat = res.tables["head_patching"]
    assert len(pat) == 8 * tiny_llama.n_layers * tiny_llama.n_heads and pat["drop_total"].notna().all()
    assert "head_output_sums" not in res.tables


def test_bad_input_fails_in_one_line(tiny_llama):
    facts = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
    rows = [{"qid": f"q{i}", "prompt": f"The capital of {c} is", "answer": a, "subject": c}
            for i, (c, a) in enumerate(facts)]
    with pytest.raises(ValueError, match="q2.*subject 'Chile' does not occur"):
        run(tiny_llama, [*rows[:2], dict(rows[2], subject="Chile"), rows[3]], Settings.quick(**SMALL))
    with pytest.raises(ValueError, match="q1.*tokenizes to nothing"):
        run(tiny_llama, [rows[0], dict(rows[1], answer=" "), *rows[2:]], Settings.quick(**SMALL))
    with pytest.raises(ValueError, match="patch_source"):
        Settings(patch_source="nope")
    with pytest.raises(ValueError, match="unknown relation"):
        run(tiny_llama, settings=Settings.quick(relation="nope"))


def test_cli_writes_a_run_resumes_it_and_rejects_bad_arguments(tiny_llama, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import hopscope.cli.recall as cli_recall
    from hopscope.cli import app

    monkeypatch.setattr(cli_recall, "load", lambda *a, **k: tiny_llama)
    runner = CliRunner()
    out = tmp_path / "r"
    res = runner.invoke(app, ["recall", "--quick", "--n", "6", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "recall.mitigation" in res.output and "report:" in res.output
    folder = RunFolder.open(out)
    assert folder.status == "done" and folder.quick and len(folder.load_claims()) == 4
    again = runner.invoke(app, ["recall", "--resume", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    bad = runner.invoke(app, ["recall", "--relation", "nope", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "unknown relation" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["recall", "--heads", "some", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "heads must be one of" in bad.output
    assert "Example: hopscope recall" in runner.invoke(app, ["recall", "--help"]).output

"""recall_study and ``hopscope recall`` end to end on a tiny Llama (random weights: plumbing, not findings)."""

from __future__ import annotations

import json

import pytest

from hopscope.methods.recall import recall_study, relation_queries
from hopscope.report import RunFolder

TABLES = {"heads", "heads_per_prompt", "head_ablation", "dla_components", "mlp_decomposition",
          "mlp_decomposition_summary", "mlp_layers", "final_layer_effects", "final_layer_suppression",
          "final_layer_attribution", "mitigation_eval", "mitigation", "timings"}


def test_recall_study_writes_tables_figures_and_exact_checks(tiny_llama, tmp_path):
    queries = relation_queries("capital", 6, shots=1)
    others = {"continent": relation_queries("continent", 3, shots=1)}
    run = RunFolder.create("recall", {"n": 6}, out=tmp_path / "run", seed=0)
    res = recall_study(tiny_llama, queries, run, quick=True, other_queries=others, title="1-shot")
    run.finish()
    assert TABLES <= set(run.table_names())
    figures = {p.stem for p in run.figures_dir.glob("*.png")}
    assert {"1_shot-heads-dla", "1_shot-heads-attn_subject", "1_shot-heads-drop_path", "1_shot-mlp-decomposition",
            "1_shot-final-layer-suppression", "1_shot-mitigation"} <= figures
    h = res.headline
    assert h["dla sum max error"] < 1e-4 and h["mlp parts sum max error"] < 1e-4
    assert 0.0 <= h["last block lowers logit diff (share)"] <= 1.0
    heads = res.tables["heads"]
    assert list(heads["rank"]) == list(range(1, len(heads) + 1))
    assert heads["drop_path"].notna().sum() >= 3  # candidates were checked causally
    evals = res.tables["mitigation_eval"]
    assert {"train", "held_out", "other:continent", "generic_text"} == set(evals["eval_set"])
    comp = res.tables["dla_components"]
    assert comp["sum_error"].abs().max() < 1e-4
    titles = [s["title"] for s in json.loads((run.path / "sections.json").read_text())]
    assert any(t.startswith("1-shot: Subject-moving heads") for t in titles)


def test_recall_cli_runs_each_number_of_shots(tiny_llama, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import hopscope.cli.recall as cli_recall
    from hopscope.cli import app

    monkeypatch.setattr(cli_recall, "load", lambda *a, **k: tiny_llama)
    result = CliRunner().invoke(app, ["recall", "--relation", "capital", "--shots", "0,1", "--n", "4", "--n-other", "2",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    run = RunFolder.open(tmp_path / "r")
    assert run.status == "done"
    assert set(run.config["children"]) == {"recall-0shot", "recall-1shot"}
    assert list(run.load_table("summary")["shots"]) == [0, 1]
    assert (tmp_path / "r" / "recall-1shot" / "report.html").exists()


def test_recall_cli_rejects_bad_arguments(tmp_path):
    from typer.testing import CliRunner

    from hopscope.cli import app

    result = CliRunner().invoke(app, ["recall", "--relation", "nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "unknown relation" in result.output


def test_recall_study_needs_two_subjects(tiny_llama):
    q = relation_queries("capital", 1, shots=0)
    with pytest.raises(ValueError, match="two different subjects"):
        recall_study(tiny_llama, q + q)

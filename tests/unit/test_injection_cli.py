"""``hopscope inject`` and ``hopscope attn-lens train|show`` end to end on a tiny model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hopscope.cli import app
from hopscope.models import tiny


@pytest.fixture()
def tiny_cli(monkeypatch, tiny_llama):
    import hopscope.cli.inject as cli

    monkeypatch.setattr(cli, "load", lambda *a, **k: tiny_llama)
    monkeypatch.setenv("HOPSCOPE_NO_PROGRESS", "1")
    return CliRunner()


def test_inject_quick(tiny_cli, shared_data, tmp_path):
    out = tmp_path / "run"
    res = tiny_cli.invoke(app, ["inject", "--quick", "--limit", "4", "--grid-prompts", "2", "--layer-stride", "2",
                                "--taus", "1,4", "--rel", "", "--best-random", "1", "--pos-words", "2",
                                "--no-lens", "--no-projection", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "best layer" in res.output and (out / "report.html").is_file()
    assert {"grid", "best_cell_summary"} <= {p.stem for p in (out / "tables").iterdir()}


def test_attn_lens_train_and_show(tiny_cli, tmp_path):
    out = tmp_path / "lens_run"
    res = tiny_cli.invoke(app, ["attn-lens", "train", "--layer", "1", "--rank", "2", "--steps", "3", "--corpus",
                                "world-facts", "--train-texts", "6", "--held-texts", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = tiny_cli.invoke(app, ["attn-lens", "show", "The capital of France is", "--lens", str(out / "lens_l1"),
                                "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "trained lens" in res.output and len(res.output.strip().splitlines()) == 2 + tiny("llama").n_heads
    res = tiny_cli.invoke(app, ["attn-lens", "show", "Hello", "--lens", str(out / "lens_l1"), "--layer", "2"])
    assert res.exit_code != 0 and "layer 1" in res.output


def test_inject_bad_data(tiny_cli, tmp_path):
    res = tiny_cli.invoke(app, ["inject", "--data", str(tmp_path / "missing.csv")])
    assert res.exit_code == 2 and "not found" in res.output

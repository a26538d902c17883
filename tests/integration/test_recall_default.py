"""Factual recall on the default model (SmolLM2-135M): the CLI end to end, and the seed's head finding."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.default_model


def test_recall_cli_on_the_default_model(tmp_path):
    from typer.testing import CliRunner

    from hopscope.cli import app
    from hopscope.report import RunFolder

    out = tmp_path / "recall"
    result = CliRunner().invoke(app, ["recall", "--relation", "capital", "--shots", "0,3", "--n", "12",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = RunFolder.open(out)
    assert run.status == "done" and (out / "report.html").exists()
    for k in (0, 3):
        child = RunFolder.open(out / f"recall-{k}shot")
        names = set(child.table_names())
        assert {"heads", "mlp_decomposition", "final_layer_suppression", "mitigation"} <= names
        assert (child.figures_dir / f"{k}_shot-heads-dla.png").exists()
        h = child.headline
        assert h["dla sum max error"] < 1e-3
        assert h["mlp parts sum max error"] < 1e-3
        assert 0.0 <= h["last block lowers logit diff (share)"] <= 1.0
        heads = child.load_table("heads")
        top = heads[heads["mover"]].iloc[0]
        # a head in the upper layers reads the subject and writes it (SmolLM2: L23H4 in our runs)
        assert top["layer"] >= 15 and top["attn_subject"] > 0.3 and top["drop_path"] > 0

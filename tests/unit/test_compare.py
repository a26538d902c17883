"""``hopscope compare``: several runs' claims side by side, compare.parquet, one-line errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from hopscope.cli.compare import register
from hopscope.report import RunFolder, compare_runs
from hopscope.report.compare import COMPARE_COLUMNS, compare_frame
from hopscope.stats import mean_vs_zero, share_vs

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test root."""

    register(app)
    return app


def model_run(tmp_path, name: str, model: str, share: float, extra: bool = False, quick: bool = False) -> RunFolder:
    run = RunFolder.create("study", out=tmp_path / name, seed=0, quick=quick)
    run.set_model(model, "local")
    flags = np.arange(100) < share * 100
    claims = [share_vs("recall.suppression", flags, analysis="recall", statement="final block suppresses",
                       paper="Lv et al. 2024")]
    if extra:
        claims.append(mean_vs_zero("hop.order", np.linspace(0.5, 2, 40), analysis="backpatch", statement="order"))
    run.write_claims(claims)
    run.finish()
    return run


def test_compare_frame_is_long_with_one_row_per_run_and_claim(tmp_path):
    a = model_run(tmp_path, "a", "SmolLM2", 0.8, extra=True)
    b = model_run(tmp_path, "b", "Qwen", 0.5, quick=True)
    long = compare_frame([a.path, b.path])
    assert list(long.columns) == COMPARE_COLUMNS and len(long) == 3
    assert list(zip(long["model"], long["id"])) == [("SmolLM2", "recall.suppression"), ("SmolLM2", "hop.order"),
                                                   ("Qwen", "recall.suppression")]
    assert list(long["order"]) == [0, 1, 0] and list(long["quick"]) == [False, False, True]
    same = compare_frame([a.path, model_run(tmp_path, "a2", "SmolLM2", 0.7).path])
    assert list(dict.fromkeys(same["model"])) == ["SmolLM2 (a)", "SmolLM2 (a2)"]   # same model twice


def test_compare_report_puts_each_model_in_a_column(tmp_path):
    a = model_run(tmp_path, "a", "SmolLM2", 0.8, extra=True)
    b = model_run(tmp_path, "b", "Qwen", 0.5, quick=True)
    out = compare_runs([a.path, b.path], out=tmp_path / "cmp")
    long = pd.read_parquet(out.path / "compare.parquet")
    assert len(long) == 3
    html = out.report_path.read_text(encoding="utf-8")
    table = html[html.index('<table class="data claims">'):]
    table = table[:table.index("</table>")]
    assert re.findall(r"<th>(.*?)</th>", table) == ["claim", "paper", "SmolLM2", "Qwen", "agree?"]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2
    assert "0.8 [" in rows[0] and "0.5 [" in rows[0] and "supported" in rows[0] and "inconclusive" in rows[0]
    assert "not tested" in rows[1]                         # Qwen's run has no hop.order
    assert "Quick runs, whose verdicts are indicative only: Qwen." in html
    assert (out.figures_dir / "claim-recall-suppression.png").is_file()


def test_compare_cli_writes_the_report_and_gives_one_line_errors(tmp_path):
    a = model_run(tmp_path, "a", "SmolLM2", 0.8)
    b = model_run(tmp_path, "b", "Qwen", 0.6)
    result = runner.invoke(make_app(), ["compare", str(a.path), str(b.path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "c" / "report.html")
    bare = RunFolder.create("lens", out=tmp_path / "bare")
    bare.finish()
    (tmp_path / "plain").mkdir()
    for folder, message in ((tmp_path / "plain", "is not a run folder"), (bare.path, "has no claims"),
                            (tmp_path / "nope", "no such folder")):
        result = runner.invoke(make_app(), ["compare", str(a.path), str(folder), "--out", str(tmp_path / "x")])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    with pytest.raises(ValueError, match="twice"):
        compare_frame([a.path, a.path])

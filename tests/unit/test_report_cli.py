"""`hopscope runs list` and `hopscope runs show` on a temporary folder of runs."""

from __future__ import annotations

import json
import re

import pandas as pd
import typer
from typer.testing import CliRunner

from hopscope.cli.runs import register
from hopscope.report import RunFolder
from hopscope.stats import share_vs

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test root."""

    register(app)
    return app


def make_runs(root):
    done = RunFolder.create("backpatch", args={"limit": 2}, root=root, seed=0)
    done.set_model("gpt2", "hub")
    with done.table("pairs", key="query_id", progress=False) as tab:
        for q in tab.pending(["a", "b", "c"]):
            tab.append([{"query_id": q, "layer": i} for i in range(4)])
    done.write_table("summary", pd.DataFrame({"layer": [0, 1]}))
    done.add_section("Fix rate", headline={"oracle fix rate": 0.3125})
    done.write_claims([share_vs("hop.fix", [1] * 30 + [0] * 10, analysis="backpatch", statement="fixes"),
                       share_vs("hop.break", [1] * 5 + [0] * 5, analysis="backpatch", statement="breaks")])
    done.finish()
    broken = RunFolder.create("knockout", root=root)
    broken.fail(RuntimeError("out of memory"))
    (root / "not-a-run").mkdir()
    return done, broken


def test_runs_list_shows_every_run(tmp_path):
    done, broken = make_runs(tmp_path)
    result = runner.invoke(make_app(), ["runs", "list", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["folder", "command", "model", "status", "started", "duration", "claims"]
    assert len(lines) == 3
    row = next(line for line in lines if "backpatch" in line)
    assert str(done.path) in row and "gpt2" in row and " done " in row
    assert "1 supported, 0 contradicted, 1 inconclusive" in row
    assert "failed" in next(line for line in lines if "knockout" in line)

    as_json = runner.invoke(make_app(), ["runs", "list", "--root", str(tmp_path), "--json"])
    records = json.loads(as_json.output)
    assert {r["command"] for r in records} == {"backpatch", "knockout"}


def test_runs_list_empty_or_missing_root(tmp_path):
    result = runner.invoke(make_app(), ["runs", "list", "--root", str(tmp_path)])
    assert result.exit_code == 0 and "no runs" in result.output
    result = runner.invoke(make_app(), ["runs", "list", "--root", str(tmp_path / "nope")])
    assert "does not exist" in result.output


def test_runs_show_prints_config_headline_and_tables(tmp_path):
    done, broken = make_runs(tmp_path)
    result = runner.invoke(make_app(), ["runs", "show", str(done.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "command  backpatch" in out and "model    gpt2" in out and '"limit": 2' in out
    assert "oracle fix rate" in out and "0.312" in out
    assert "pairs" in out and "12 rows" in out and "summary" in out and "2 rows" in out
    assert re.search(r"hop\.fix\s+0\.75 \[0\.6\d*, 0\.8\d*\]\s+n=40\s+supported", out), out
    assert re.search(r"hop\.break\s+0\.5 \[.*\]\s+n=10\s+inconclusive", out), out
    failed = runner.invoke(make_app(), ["runs", "show", str(broken.path)]).output
    assert "status failed" in failed and "RuntimeError: out of memory" in failed
    info = json.loads(runner.invoke(make_app(), ["runs", "show", str(done.path), "--json"]).output)
    assert {t["name"]: t["rows"] for t in info["tables"]} == {"pairs": 12, "summary": 2}
    assert [c["id"] for c in info["claims"]] == ["hop.fix", "hop.break"] and info["claims"][0]["n"] == 40


def test_runs_show_rejects_a_non_run_folder(tmp_path):
    result = runner.invoke(make_app(), ["runs", "show", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_runs_report_rerenders(tmp_path):
    done, _ = make_runs(tmp_path)
    (done.path / "report.html").unlink()
    result = runner.invoke(make_app(), ["runs", "report", str(done.path)])
    assert result.exit_code == 0 and (done.path / "report.html").exists()


def test_runs_report_regathers_a_studys_claims(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "s")
    child = study.child("backpatch")
    child.write_claims([share_vs("hop.fix", [1] * 30, analysis="backpatch", statement="fixes")])
    child.finish()
    study.fail("killed")                                  # the study never finished: no gathered claims yet
    (study.path / "claims.parquet").unlink(missing_ok=True)
    result = runner.invoke(make_app(), ["runs", "report", str(study.path)])
    assert result.exit_code == 0, result.output
    assert list(pd.read_parquet(study.path / "claims.parquet")["id"]) == ["hop.fix"]
    assert "hop.fix" in (study.path / "report.html").read_text(encoding="utf-8")

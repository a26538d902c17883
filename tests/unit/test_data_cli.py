"""``hopscope data ...`` commands, run through Typer's test runner (tiny model for ``filter``)."""

from __future__ import annotations

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from hopscope.cli import data as data_cli
from hopscope.data import Dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    data_cli.register(app)
    return app


def test_build_and_show(app, tmp_path):
    out = tmp_path / "wf.parquet"
    res = runner.invoke(app, ["data", "build", "world-facts", "--out", str(out), "--n", "2", "--seed", "1",
                              "--compositions", "capital_country_currency,city_country_capital"])
    assert res.exit_code == 0, res.output
    assert "GeoNames" in res.output
    ds = Dataset.load(out)
    assert len(ds.two_hop()) == 4 and len(ds.single_hop()) == 14
    shown = runner.invoke(app, ["data", "show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "capital_country_currency" in shown.output and "e1='Beijing'" in shown.output


def test_build_rejects_unknown_relation(app, tmp_path):
    res = runner.invoke(app, ["data", "build", "world-facts", "--out", str(tmp_path / "x.jsonl"),
                              "--relations", "country_mascot"])
    assert res.exit_code == 2 and "unknown relation/composition ['country_mascot']" in res.output


def test_show_reports_schema_errors(app, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "single_hop", "qid": "a", "prompt": "p", "relation": "r", "subject": "s"}\n')
    res = runner.invoke(app, ["data", "show", str(bad)])
    assert res.exit_code == 2 and "row 1, field 'answer'" in res.output


def test_load_memory_injections(app, tmp_path, shared_data):
    out = tmp_path / "mi.jsonl"
    res = runner.invoke(app, ["data", "load", "memory-injections", str(shared_data / "memory_injections"),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(Dataset.load(out)) == 1106


def test_filter_prints_subsets_and_writes_table(app, tmp_path, tiny_gpt2, monkeypatch):
    import hopscope.cli.common as common

    monkeypatch.setattr(common, "load", lambda *a, **k: tiny_gpt2)
    data = tmp_path / "wf.jsonl"
    assert runner.invoke(app, ["data", "build", "world-facts", "--out", str(data), "--n", "2", "--k-shot", "1",
                               "--relations", "country_capital",
                               "--compositions", "capital_country_currency,city_country_capital"]).exit_code == 0
    table = tmp_path / "kf.parquet"
    res = runner.invoke(app, ["data", "filter", "--data", str(data), "--n", "3", "--max-new-tokens", "2",
                              "--out", str(table), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    assert "subset counts" in res.output and "hops_unknown" in res.output and "shortcut" in res.output
    frame = pd.read_parquet(table)
    assert len(frame) == 3 and set(frame["composition"]) == {"capital_country_currency", "city_country_capital"}


def test_build_out_folder_is_one_clear_error(app, tmp_path):
    res = runner.invoke(app, ["data", "build", "world-facts", "--out", str(tmp_path), "--n", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: --out {tmp_path} is a folder; give a file name ending in .jsonl" in res.output
    res = runner.invoke(app, ["data", "build", "world-facts", "--out", str(tmp_path / "wf.txt"), "--n", "1"])
    assert res.exit_code == 2 and "unknown file type '.txt'" in res.output


def test_build_prints_duplicate_resolution_and_counts(app, tmp_path):
    out = tmp_path / "wf.jsonl"
    res = runner.invoke(app, ["data", "build", "world-facts", "--out", str(out), "--n", "150", "--k-shot", "1",
                              "--relations", "capital_country",
                              "--compositions", "capital_country_currency,capital_country_currency"])
    assert res.exit_code == 0, res.output  # n=150 used to stop at "duplicate qid 'capital_country:belgrade:t0'"
    assert "capitals shared by several countries: 1 resolved to the dominant country (1 dropped)" in res.output
    assert "capital_country_currency: 150 queries" in res.output and "capital_country: 150 queries" in res.output
    ds = Dataset.load(out)
    assert len(ds) == 300 and ds.info["report"]["compositions"]["capital_country_currency"]["queries"] == 150


def test_load_hopping_too_late_file(app, tmp_path):
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "htl_two_hop_rbe.csv"
    out = tmp_path / "htl.jsonl"
    res = runner.invoke(app, ["data", "load", "hopping-too-late", str(fixture), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [r.qid for r in Dataset.load(out)] == [f"htl:{i}" for i in range(5)]
    shown = runner.invoke(app, ["data", "show", str(fixture)])  # recognised by its columns
    assert shown.exit_code == 0 and "e1='Barack Obama'" in shown.output
    bad = tmp_path / "bad.csv"
    lines = fixture.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(",Christopher Nolan,", ",,")  # row 2 loses its e2_label
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["data", "load", "hopping-too-late", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: {bad}, row 2, field 'e2_label': is empty" in res.output

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
    assert "subset counts" in res.output and "wrong_no_shortcut" in res.output
    frame = pd.read_parquet(table)
    assert len(frame) == 3 and set(frame["composition"]) == {"capital_country_currency", "city_country_capital"}

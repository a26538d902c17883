"""``hopscope inject`` and ``hopscope attn-lens train|show`` end to end on a tiny model; bad input is one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hopscope.cli import app

SMALL = ["--quick", "--limit", "6", "--search", "3", "--layer-stride", "2", "--taus", "1,4", "--random", "1",
         "--pos-words", "1", "--lens-steps", "2", "--lens-corpus", "world-facts", "--no-progress"]


@pytest.fixture()
def cli(monkeypatch, tiny_gpt2):
    import hopscope.cli.inject as mod

    monkeypatch.setattr(mod, "load", lambda *a, **k: tiny_gpt2)
    return CliRunner()


def test_inject_help_shows_an_example(cli):
    res = cli.invoke(app, ["inject", "--help"])
    assert res.exit_code == 0 and "Example: hopscope inject" in res.output


def test_inject_quick_writes_a_run_folder_and_resumes(cli, tmp_path):
    out = tmp_path / "run"
    res = cli.invoke(app, ["inject", *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "inj.gold_beats_random" in res.output and (out / "report.html").is_file()
    assert {"grid", "controls", "claims"} <= {p.stem for p in out.rglob("*.parquet")}
    args = json.loads((out / "config.json").read_text())["args"]
    assert args["taus"] == [1.0, 4.0] and args["data"] is None and args["prompt_bos"] is True
    again = cli.invoke(app, ["inject", "--resume", str(out)])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.csv"], "not found"),
    (["--positions", "first"], "positions must be one of"),
    (["--taus", "1,x"], "comma-separated numbers"),
    (["--lens-layer", "9"], "lens_layer 9 is out of range"),
])
def test_bad_input_is_one_line(cli, tmp_path, argv, message):
    res = cli.invoke(app, ["inject", *SMALL, "--out", str(tmp_path / "r"), *argv])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_attn_lens_train_and_show(cli, tiny_gpt2, tmp_path):
    out = tmp_path / "lens_run"
    res = cli.invoke(app, ["attn-lens", "train", "--layer", "1", "--rank", "2", "--steps", "3", "--corpus",
                           "world-facts", "--train-texts", "6", "--held-texts", "3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "kl_unigram" in res.output
    res = cli.invoke(app, ["attn-lens", "show", "The capital of France is", "--lens", str(out / "lens_l1"), "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "trained lens" in res.output and len(res.output.strip().splitlines()) == 2 + tiny_gpt2.n_heads
    res = cli.invoke(app, ["attn-lens", "show", "Hello", "--lens", str(out / "lens_l1"), "--layer", "2"])
    assert res.exit_code == 2 and "layer 1" in res.output

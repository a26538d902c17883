"""``hopscope study`` orchestration on a tiny model (the default-model run is the README's first command)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hopscope.models import tiny
from hopscope.study import StudySettings, run_study


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    lm = tiny("llama")
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def test_knowledge_only_study_writes_one_report(tiny_folder, tmp_path):
    settings = StudySettings(model=tiny_folder, queries=1, only=("knowledge",))
    run = run_study(settings, out=str(tmp_path / "study"), say=lambda m: None)
    config = json.loads((run.path / "config.json").read_text())
    assert config["status"] == "done" and config["children"] == ["knowledge"]
    table = pd.read_parquet(run.path / "knowledge" / "tables" / "knowledge.parquet")
    assert len(table) == table["composition"].nunique() >= 5   # one query per composition
    html = (run.path / "report.html").read_text()
    assert "Knowledge filter" in html and "Study" in html


def test_finished_analysis_is_skipped_on_resume(tiny_folder, tmp_path):
    settings = StudySettings(model=tiny_folder, queries=1, only=("knowledge",))
    first = run_study(settings, out=str(tmp_path / "s"), say=lambda m: None)
    before = pd.read_parquet(first.path / "knowledge" / "tables" / "knowledge.parquet")
    said: list[str] = []
    run_study(settings, resume=str(first.path), say=said.append)
    assert any("already finished" in m for m in said)
    after = pd.read_parquet(first.path / "knowledge" / "tables" / "knowledge.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_unknown_analysis_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown analyses \\['tarot'\\]"):
        run_study(StudySettings(only=("tarot",)), out=str(tmp_path / "x"), say=lambda m: None)

"""The study loop: analyses in child run folders, claims gathered, resume skips what is finished."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.methods import REGISTRY
from hopscope.study import StudySettings, run_study


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy_a", "tests.support.toy_analyses:TOY_A")
    monkeypatch.setitem(REGISTRY, "toy_b", "tests.support.toy_analyses:TOY_B")
    return StudySettings(models=("tiny-llama",), analyses=("toy_a", "toy_b"), quick=True)


def _tables(folder):
    return {p.relative_to(folder).as_posix(): pd.read_parquet(p)
            for p in sorted(folder.rglob("*.parquet")) if "/parts/" not in p.as_posix()}


def test_study_writes_children_claims_and_report(toys, tmp_path):
    report = run_study(toys, out=tmp_path / "s", progress=False, say=lambda m: None)
    assert report == tmp_path / "s" / "report.html" and report.is_file()
    claims = pd.read_parquet(tmp_path / "s" / "claims.parquet")
    assert sorted(claims["id"]) == ["toy_a.noise_high", "toy_b.noise_high"]
    assert claims["p_holm"].notna().all() and (claims["p_holm"] >= claims["p_value"]).all()  # Holm across both
    for name in ("toy_a", "toy_b"):
        assert (tmp_path / "s" / name / "claims.parquet").is_file()
    html = report.read_text()
    assert "toy_a.noise_high" in html and "indicative" in html.lower()


def test_unknown_analysis_and_setting_are_one_clear_error(toys, tmp_path):
    with pytest.raises(ValueError, match="unknown analyses"):
        run_study(StudySettings(analyses=("nope",)), out=tmp_path / "x", progress=False, say=lambda m: None)
    bad = StudySettings(models=("tiny-llama",), analyses=("toy_a",), overrides={"toy_a": {"nope": 1}})
    with pytest.raises(ValueError, match="has no setting"):
        run_study(bad, out=tmp_path / "y", progress=False, say=lambda m: None)


def test_resume_skips_finished_analyses_and_gives_the_same_tables(toys, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    run_study(toys, out=ref, progress=False, say=lambda m: None)
    import tests.support.toy_analyses as T

    calls = []
    real = T._work
    monkeypatch.setattr(T.TOY_B.stages[0], "work", lambda lm, ctx, shard: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_study(toys, out=tmp_path / "s", progress=False, say=lambda m: None)
    monkeypatch.setattr(T.TOY_A.stages[0], "work", lambda *a: calls.append("a") or real(*a))
    monkeypatch.setattr(T.TOY_B.stages[0], "work", lambda *a: calls.append("b") or real(*a))
    run_study(toys, resume=tmp_path / "s", progress=False, say=lambda m: None)
    assert "a" not in calls and calls.count("b") == 2  # toy_a was finished; toy_b's two quick shards ran
    got, want = _tables(tmp_path / "s"), _tables(ref)
    assert set(got) == set(want)
    for name in want:
        if name.endswith("claims.parquet"):
            continue
        pd.testing.assert_frame_equal(got[name], want[name], check_like=True)

"""The probe analysis end to end on the k-th smallest task: seeded (same seed, same tables), resumable,
with the claims, the random-init control, the weights table, and the CLI."""

import pandas as pd
import pytest
import torch

from hopscope.methods.probe import ANALYSIS, Settings, run
from hopscope.methods.probe.models import random_init_like, trained_model
from hopscope.pipeline import FolderStore

TINY = Settings.quick(n_probe=60, n_eval=60, train_steps=120, n_permutations=100, n_bootstrap=100,
                      mask_fractions=(0.5,), n_random_masks=1, shard_size=30)


@pytest.fixture(scope="module")
def reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(None, settings=TINY, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_tables_claims_and_labels(reference):
    t = reference.tables
    assert {"training", "statements", "answers", "probe_scores", "probe_null", "probe_bootstrap", "layerwise",
            "head_entropy", "masking", "corruption"} <= set(t)
    assert "trained_weights" not in t  # kept in the run's parts, not in the report
    st = t["statements"]
    assert set(st["model"]) == {"model", "random_init_0"} and len(st) == 2 * 60 * TINY.n
    # the k-th smallest labels of the paper: one root and at most k - 1 leaves per list
    per_list = st[st.model == "model"].groupby("qid")["depth"].apply(lambda d: sorted(d[d >= 0]))
    assert all(d[0] == 0 and len(d) <= TINY.k for d in per_list)
    assert list(reference.claims["id"]) == ["probe.useful", "probe.step"]
    assert reference.claims["n"].tolist() == [60, 60]
    ent = t["head_entropy"]
    assert len(ent) == TINY.layers * TINY.heads
    assert ent[["entropy_position", "entropy_rank"]].stack().between(0, 1).all()
    noise = t["corruption"][t["corruption"].kind == "noise"]
    assert (noise.answer_after == noise.answer_before).all()  # rewriting a noise number keeps the answer


def test_same_seed_gives_identical_tables_and_an_interrupted_run_resumes_to_them(reference, tmp_path, monkeypatch):
    stage = next(s for s in ANALYSIS.stages if s.name == "corruption")
    work = stage.work
    calls = []

    def crash(lm, ctx, shard):
        calls.append(shard.index)
        if shard.index == 1:
            raise RuntimeError("simulated kill")
        return work(lm, ctx, shard)

    monkeypatch.setattr(stage, "work", crash)
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(None, settings=TINY, run_folder=tmp_path / "run", progress=False)
    assert FolderStore(tmp_path / "run" / "parts").count("corruption") == 1
    monkeypatch.setattr(stage, "work", work)
    resumed = run(None, settings=TINY, run_folder=tmp_path / "run", progress=False)
    for name, table in reference.tables.items():
        pd.testing.assert_frame_equal(resumed.tables[name], table, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(resumed.claims, reference.claims)


def test_the_trained_weights_rebuild_the_model_and_the_control_is_the_same_architecture(tmp_path):
    from hopscope.engine import run as engine_run
    from hopscope.methods.probe.analysis import work_train
    from hopscope.pipeline import Context, Shard

    tables = work_train(None, Context(None, TINY), Shard("train", 0, 0, 0))
    a, b = trained_model(TINY, tables["trained_weights"]), trained_model(TINY, tables["trained_weights"].copy())
    r = random_init_like(a, seed=1)
    keys = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")
    assert type(r.model) is type(a.model) and all(getattr(r.config, k) == getattr(a.config, k) for k in keys)
    assert not torch.equal(r.model.transformer.h[0].attn.c_attn.weight, a.model.transformer.h[0].attn.c_attn.weight)
    x = engine_run(a, ["1 2 3"], last_only=True).logits
    assert torch.equal(x, engine_run(b, ["1 2 3"], last_only=True).logits)


def test_settings_sizes_and_errors():
    s = Settings()
    assert (s.n, s.k, s.pool_size, s.n_probe, s.shots, s.max_depth, s.token_pool) == (16, 2, 512, 1024, 4, 1, "mean")
    assert s.resolved_distance == "euclidean" and s.resolved_query_pool == "last" and s.resolved_normalize == "max"
    assert Settings.study().n_probe >= 400 and Settings.quick().n_probe < Settings.study().n_probe
    with pytest.raises(ValueError, match="token_pool"):
        Settings(token_pool="max")
    with pytest.raises(ValueError, match="needs data"):
        ANALYSIS.prepare(None, Settings(task="proofwriter"))
    with pytest.raises(ValueError, match="needs a model"):
        run(None, settings=Settings(train=False))


def test_cli_train_then_probe_and_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from hopscope.cli import app

    runner = CliRunner()
    model_dir = tmp_path / "model"
    r = runner.invoke(app, ["train", "kth-smallest", "--out", str(model_dir), "--n", "5", "--pool-size", "16",
                            "--n-train", "2000", "--steps", "60", "--batch-size", "32", "--layers", "1",
                            "--heads", "2", "--width", "32", "--threads", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["probe", "--model", str(model_dir), "--quick", "--n-probe", "40", "--n-eval", "40",
                            "--permutations", "50", "--no-masking", "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "probe.useful:" in r.output and (tmp_path / "run" / "report.html").is_file()
    from hopscope.report import RunFolder

    run_folder = RunFolder.open(tmp_path / "run")
    assert run_folder.status == "done" and "probe_scores" in run_folder.table_names()
    cfg = run_folder.config["args"]
    assert cfg["train"] is False and cfg["n"] == 5 and len(cfg["pool"]) == 16
    r = runner.invoke(app, ["probe", "--proofwriter", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "no such file" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["probe", "--quick", "--token-pool", "max", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "token_pool" in r.output
    assert "Example: hopscope probe" in runner.invoke(app, ["probe", "--help"]).output

"""Probe analyses on tiny models: random-init chance level, entropy, masking, corruption, the study, the CLI."""

import numpy as np
import pandas as pd
import pytest
import torch

from hopscope.data.kth_smallest import KthSmallestConfig, make_split, resolve_pool
from hopscope.methods.probe import (
    ProbeSettings, StudyConfig, accuracy, bin_by_probe_score, corruption_table, head_entropy, heads_by, kth_items,
    masking_curve, probe_model, random_init_like, run_probe_study,
)
from hopscope.methods.probe.entropy import by_rank, normalized_entropy
from hopscope.methods.probe.masking import predictions, target_token_ids

TASK = KthSmallestConfig(n=5, k=2, pool_size=16, n_train=4000, n_val=200, n_test=300, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer GPT-2 trained 300 steps on lists of 5 (about 95% accurate), loaded as a LoadedModel."""
    import hopscope
    from hopscope.train import TrainConfig, train_kth_smallest
    from hopscope.train.kth_smallest import GPT2Arch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("probe") / "model"
        cfg = TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup=20, eval_every=300, seed=0)
        train_kth_smallest(TASK, cfg, arch=GPT2Arch(n_layers=2, n_heads=2, d_model=32, n_positions=16), out=out)
    finally:
        torch.set_num_threads(threads)
    return hopscope.load_model(str(out)), out


def test_probe_on_random_init_features_is_near_chance(tiny_gpt2):
    task = resolve_pool(KthSmallestConfig(n=8, pool_size=64, n_test=150), tiny_gpt2.tokenizer)
    items = kth_items(make_split(task, "test"))
    out = probe_model(tiny_gpt2, items, ProbeSettings(), baseline=random_init_like(tiny_gpt2, seed=1),
                      layerwise=False)
    sc = out.scores.set_index("task")
    assert sc.loc["useful", "f1_model"] < 0.62 and sc.loc["useful", "f1_random"] < 0.62
    assert sc.loc["step", "f1_model"] < 0.68 and sc.loc["step", "f1_random"] < 0.68
    assert sc.loc["useful", "n_rows"] == 150 * 8 and sc.loc["step", "n_rows"] == 150 * 2
    assert out.layerwise.empty


def test_entropy_helpers():
    assert normalized_entropy(np.ones(8)) == pytest.approx(1.0)
    assert normalized_entropy(np.eye(8)[2]) == pytest.approx(0.0)
    a = np.zeros((2, 1, 1, 3))
    a[0, 0, 0] = [0.0, 1.0, 0.0]  # list 0: all attention on position 1
    a[1, 0, 0] = [0.0, 0.0, 1.0]  # list 1: all attention on position 2
    ranks = np.array([[2, 0, 1], [1, 2, 0]])  # the attended number is the smallest in both lists
    assert by_rank(a, ranks)[:, 0, 0].tolist() == [[1, 0, 0], [1, 0, 0]]
    ent = head_entropy(a, ranks)
    assert ent.loc[0, "entropy_rank"] == pytest.approx(0.0)  # one rank always
    assert ent.loc[0, "entropy_position"] == pytest.approx(np.log(2) / np.log(3))  # two positions
    assert heads_by(pd.DataFrame(dict(layer=[0, 0, 1], head=[0, 1, 0], e=[0.5, 0.1, 0.1])), "e") == [(0, 1), (1, 0), (0, 0)]


def test_trained_model_beats_its_random_init(trained):
    m, _ = trained
    ex = make_split(resolve_pool(TASK, m.tokenizer), "test", 200)
    prompts, ids = [e.prompt for e in ex], target_token_ids(m.tokenizer, [e.target for e in ex])
    acc = accuracy(m, prompts, ids)
    assert acc > 0.6
    # random init with tied embeddings mostly copies the last number: right when it is the answer (~1/4)
    assert accuracy(random_init_like(m), prompts, ids) < acc - 0.3
    every_head = [(layer, h) for layer in range(m.n_layers) for h in range(m.n_heads)]
    assert accuracy(m, prompts, ids, every_head) < acc - 0.2  # masking every head breaks the model
    assert (predictions(m, prompts[:8]) == predictions(m, prompts[:8], [])).all()


def test_masking_curve_and_corruption(trained):
    m, _ = trained
    task = resolve_pool(TASK, m.tokenizer)
    ex = make_split(task, "test", 120)
    items = kth_items(ex)
    ent = head_entropy(np.random.default_rng(0).random((5, m.n_layers, m.n_heads, 5)), np.asarray(items.ranks[:5]))
    curve = masking_curve(m, items.prompts, items.targets, ent, fractions=(0.5, 1.0), n_random=2)
    assert set(curve.strategy) == {"lowest_entropy_position", "lowest_entropy_rank", "random"}
    assert len(curve) == 4 * 3 and curve[curve.fraction == 0].accuracy.nunique() == 1
    assert (curve[curve.fraction == 1.0].n_masked == m.n_layers * m.n_heads).all()

    score = np.full((len(ex), task.n), 0.5)
    table = corruption_table(m, ex, task.pool, score, seed=0)
    noise, useful = table[table.kind == "noise"], table[table.kind == "useful"]
    assert len(noise) == len(useful) == len(ex)
    assert (noise.answer_after == noise.answer_before).all()  # rewriting noise keeps the answer
    assert (useful.new_value > useful.answer_before).all()
    # the model follows the task: its answer survives a noise rewrite far more often than a useful one
    assert noise.kept_answer.mean() > useful.kept_answer.mean() + 0.3
    binned = bin_by_probe_score(table)
    assert set(binned.kind) == {"noise", "useful"} and binned.n.sum() == len(table)


def test_study_end_to_end(trained):
    m, folder = trained
    cfg = StudyConfig(n_probe=80, n_eval=80, fractions=(0.5,), n_random=1)
    res = run_probe_study(str(folder), config=cfg, seed=0)
    t = res["tables"]
    assert {"accuracy", "probe_scores", "layerwise", "head_entropy", "attention_profile", "masking",
            "corruption", "corruption_binned"} <= set(t)
    assert list(t["probe_scores"].task) == ["useful", "step"]
    assert {"f1_model", "f1_random", "S"} <= set(t["probe_scores"].columns)
    assert len(t["layerwise"]) == 2 * 2 * m.n_layers
    assert len(t["head_entropy"]) == m.n_layers * m.n_heads
    assert t["head_entropy"][["entropy_position", "entropy_rank"]].apply(lambda c: c.between(0, 1)).all().all()
    assert res["summary"]["accuracy"] > 0.6 and res["summary"]["task"]["n"] == 5
    assert {"attention_by_rank", "masking", "entropy_rank", "layerwise_useful"} <= set(res["figures"])
    assert all(hasattr(f, "savefig") for f in res["figures"].values())


def test_cli_train_then_probe(tmp_path):
    import typer
    from typer.testing import CliRunner

    from hopscope.cli.probe import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    model_dir = tmp_path / "model"
    r = runner.invoke(app, ["train", "kth-smallest", "--out", str(model_dir), "--n", "5", "--pool-size", "16",
                            "--n-train", "2000", "--steps", "60", "--batch-size", "32", "--layers", "1",
                            "--heads", "2", "--width", "32", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and (model_dir / "hopscope_task.json").is_file()
    run_dir = tmp_path / "run"
    r = runner.invoke(app, ["probe", str(model_dir), "--out", str(run_dir), "--n-probe", "40", "--n-eval", "40",
                            "--no-corruption"])
    assert r.exit_code == 0, r.output
    assert "S " in r.output
    names = {p.stem for p in (run_dir / "figures").glob("*.png")}
    assert {"attention_by_rank", "entropy_position", "masking", "layerwise_useful", "layerwise_step"} <= names
    assert (run_dir / "report.html").is_file()
    from hopscope.report import RunFolder

    run = RunFolder.open(run_dir)
    assert {"accuracy", "probe_scores", "layerwise", "head_entropy", "masking", "training_metrics"} <= set(run.table_names())
    assert run.status == "done"

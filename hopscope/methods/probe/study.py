"""A compact MechanisticProbe study on the k-th smallest task: accuracy, probe scores against a random-init
baseline, layer-wise curves, head entropy, head masking, corruption and attention figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from hopscope.data.kth_smallest import KthSmallestConfig, make_split, resolve_pool
from hopscope.methods.probe.core import ProbeSettings, probe_model, random_init_like
from hopscope.methods.probe.corruption import bin_by_probe_score, corruption_table
from hopscope.methods.probe.entropy import attention_profile, head_entropy, statement_attention
from hopscope.methods.probe.items import ProbeItems, kth_items
from hopscope.methods.probe.masking import FRACTIONS, accuracy, masking_curve, target_token_ids
from hopscope.methods.probe import plots


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of a study: ``quick()`` (the CLI default, and for ``hopscope study``) or ``full()`` (``--full``)."""

    n_probe: int = 500
    n_eval: int = 500
    fractions: tuple[float, ...] = FRACTIONS
    n_random: int = 3
    corruption: bool = True
    settings: ProbeSettings = field(default_factory=ProbeSettings)

    @classmethod
    def quick(cls, **kw) -> "StudyConfig":
        return cls(**{"n_probe": 300, "n_eval": 300, "fractions": (0.1, 0.3, 0.5, 0.7, 0.9), "n_random": 2, **kw})

    @classmethod
    def full(cls, **kw) -> "StudyConfig":
        return cls(**kw)


def quick_train(seed: int = 0, out: str | Path | None = None, progress: Callable[[dict], None] | None = None):
    """Train the small model of the quick study: GPT-2 with 4 layers of 4 heads, width 64, number-level
    vocabulary, lists of 8 from a pool of 128, 600 steps (about 1-2 minutes on 2 free CPU cores; ~95%)."""
    from hopscope.train.kth_smallest import GPT2Arch, train_kth_smallest
    from hopscope.train.last_token import TrainConfig

    task = KthSmallestConfig(n=8, k=2, pool_size=128, n_train=30_000, n_val=500, n_test=1000, seed=seed)
    cfg = TrainConfig(steps=600, batch_size=128, lr=2e-3, warmup=50, eval_every=200, eval_size=500, seed=seed)
    return train_kth_smallest(task, cfg, arch=GPT2Arch(n_layers=4, n_heads=4, d_model=64, n_positions=32),
                              out=out, progress=progress)


def _as_loaded(result) -> Any:
    from hopscope.models import LoadedModel

    return LoadedModel(model=result.model, tokenizer=result.tokenizer, name="kth-smallest-gpt2",
                       source=str(result.folder) if result.folder else "trained in this run")


def run_probe_study(
    model=None,
    *,
    task: KthSmallestConfig | None = None,
    config: StudyConfig | None = None,
    quick: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the study and return ``{"tables": {name: DataFrame}, "figures": {name: Figure}, "summary": {...}}``.

    ``model``: None (train the quick tiny model first, see :func:`quick_train`), a folder written by
    ``hopscope train kth-smallest`` (its task settings are read from it), or a ``LoadedModel``-like object
    (then ``task`` says which lists to use; default: the default task with the tokenizer's pool).
    """
    say = progress or (lambda msg: None)
    config = config or (StudyConfig.quick() if quick else StudyConfig.full())
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {}
    t0 = time.time()
    if model is None:
        say("training the quick k-th smallest model")
        trained = quick_train(seed=seed)
        tables["training"] = trained.history
        summary["train_test_accuracy"] = trained.metrics["test_accuracy"]
        m, task = _as_loaded(trained), trained.task
    elif isinstance(model, (str, Path)):
        from hopscope.models import load_model
        from hopscope.train.kth_smallest import load_task_info

        m = load_model(str(model))
        info = load_task_info(model)
        if task is None and info is not None:
            task = KthSmallestConfig.from_dict(info["task_config"])
    else:
        m = model
    task = resolve_pool(task or KthSmallestConfig(seed=seed), m.tokenizer)
    settings = replace(config.settings, seed=seed)

    eval_lists = make_split(task, "test", min(config.n_eval, task.n_test))
    probe_lists = make_split(task, "test", min(config.n_probe, task.n_test))
    prompts = [e.prompt for e in eval_lists]
    targets = [e.target for e in eval_lists]
    ids = target_token_ids(m.tokenizer, targets)

    say("accuracy")
    baseline = random_init_like(m, seed)
    acc = accuracy(m, prompts, ids)
    tables["accuracy"] = pd.DataFrame([
        dict(model="trained", accuracy=acc, n=len(prompts)),
        dict(model="random_init", accuracy=accuracy(baseline, prompts, ids), n=len(prompts)),
        dict(model="chance (uniform over pool)", accuracy=1.0 / len(task.pool), n=len(prompts)),
    ])

    say("probing (trained and random-init)")
    items = kth_items(probe_lists)
    outcome = probe_model(m, items, settings, baseline=baseline)
    tables["probe_scores"] = outcome.scores
    tables["layerwise"] = outcome.layerwise

    say("head entropy")
    feats = outcome.features["trained"]
    stmt = statement_attention(feats.attention.attn, feats.spans, settings.token_pool)
    ranks = np.asarray(items.ranks)
    tables["head_entropy"] = head_entropy(stmt, ranks)
    tables["attention_profile"] = attention_profile(stmt, ranks)

    say("head masking")
    tables["masking"] = masking_curve(m, prompts, targets, tables["head_entropy"], fractions=config.fractions,
                                      n_random=config.n_random, seed=seed)

    if config.corruption:
        say("corruption")
        fit = outcome.fits["trained"]["useful"]
        p_useful = fit.proba[:, list(fit.classes).index(1)]
        score = [[0.0] * task.n for _ in probe_lists]
        for r, (i, j) in enumerate(zip(feats.features.list_id, feats.features.statement)):
            score[i][j] = float(p_useful[r])
        table = corruption_table(m, probe_lists, task.pool, score, seed=seed)
        tables["corruption"] = table
        tables["corruption_binned"] = bin_by_probe_score(table)

    figures = {
        "attention_by_rank": plots.attention_figure(tables["attention_profile"], "rank"),
        "attention_by_position": plots.attention_figure(tables["attention_profile"], "position"),
        "layerwise_useful": plots.layerwise_figure(tables["layerwise"], "useful"),
        "layerwise_step": plots.layerwise_figure(tables["layerwise"], "step"),
        "entropy_position": plots.entropy_figure(tables["head_entropy"], "entropy_position"),
        "entropy_rank": plots.entropy_figure(tables["head_entropy"], "entropy_rank"),
        "masking": plots.masking_figure(tables["masking"]),
    }
    sc = outcome.scores.set_index("task")
    summary.update({
        "model": m.name, "task": task.to_dict() | {"pool": f"{len(task.pool)} values"}, "seed": seed,
        "accuracy": acc, "n_eval": len(prompts), "n_probe": len(probe_lists),
        **{f"f1_{t}": float(sc.loc[t, "f1_model"]) for t in sc.index},
        **{f"f1_random_{t}": float(sc.loc[t, "f1_random"]) for t in sc.index},
        **{f"S_{t}": float(sc.loc[t, "S"]) for t in sc.index},
        "seconds": time.time() - t0,
    })
    return {"tables": tables, "figures": figures, "summary": summary}


def write_probe_study(run, result: dict[str, Any]) -> None:
    """Write a study's tables, figures and report sections into a ``hopscope.report.RunFolder``."""
    for name, df in result["tables"].items():
        run.write_table(name, df)
    for name, fig in result["figures"].items():
        run.save_figure(name, fig)
    s = result["summary"]
    t = result["tables"]
    acc_tables = {"accuracy": "accuracy"}
    acc_tables.update({name: name for name in ("training", "training_metrics") if name in t})
    run.add_section(
        "Model accuracy", text="Top-1 accuracy of the k-th smallest answer at the last position (test lists).",
        tables=acc_tables, headline={"accuracy": round(s["accuracy"], 4)})
    run.add_section(
        "MechanisticProbe scores",
        text=("kNN probes (k = 8, distance-weighted) on last-token attention features, macro-F1 under "
              "cross-validation grouped by list. S = (F1 - F1_random_init) / (1 - F1_random_init)."),
        figures=["layerwise_useful", "layerwise_step"],
        tables={"scores": "probe_scores", "layer-wise": "layerwise"},
        headline={f"S ({k[2:]})": round(v, 3) for k, v in s.items() if k.startswith("S_")})
    run.add_section(
        "Attention and head entropy",
        text="Mean attention from the last token to each number, by size rank and by position; head entropy "
             "of each head's mean attention, normalised by log n.",
        figures=["attention_by_rank", "attention_by_position", "entropy_position", "entropy_rank"],
        tables={"head entropy": "head_entropy"})
    run.add_section(
        "Head masking", text="Accuracy with heads masked, lowest-entropy heads first versus random heads.",
        figures=["masking"], tables={"masking": "masking"})
    if "corruption_binned" in t:
        run.add_section(
            "Corruption",
            text=("One useful and one noise number of each list rewritten to a value above the answer "
                  "(a useful number becomes noise, so the answer moves; a noise number stays noise). "
                  "Binned by the probe's out-of-fold probability that the rewritten number is useful."),
            tables={"by probe score": "corruption_binned"})


def run_text_probe_study(
    model,
    items: ProbeItems,
    *,
    settings: ProbeSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The probe on real-text reasoning items (e.g. :func:`proofwriter_items`) with a pretrained model:
    accuracy of the first answer token, probe scores against random init, layer-wise curves.

    Defaults pool the question's query rows (``query="mean"``) as the statements precede the question.
    """
    settings = replace(settings or ProbeSettings(query="mean"), seed=seed)
    if items.targets is None:
        raise ValueError("text probe items need targets (the answers) to report accuracy")
    ids = target_token_ids(model.tokenizer, items.targets)
    baseline = random_init_like(model, seed)
    outcome = probe_model(model, items, settings, baseline=baseline)
    acc = accuracy(model, items.prompts, ids)
    tables = {
        "accuracy": pd.DataFrame([dict(model="pretrained", accuracy=acc, n=len(items)),
                                  dict(model="random_init", accuracy=accuracy(baseline, items.prompts, ids),
                                       n=len(items))]),
        "probe_scores": outcome.scores,
        "layerwise": outcome.layerwise,
    }
    figures = {f"layerwise_{t}": plots.layerwise_figure(outcome.layerwise, t) for t in ("useful", "step")}
    sc = outcome.scores.set_index("task")
    summary = {"model": model.name, "n_items": len(items), "accuracy": acc, "seed": seed,
               **{f"f1_{t}": float(sc.loc[t, "f1_model"]) for t in sc.index},
               **{f"f1_random_{t}": float(sc.loc[t, "f1_random"]) for t in sc.index},
               **{f"S_{t}": float(sc.loc[t, "S"]) for t in sc.index}}
    return {"tables": tables, "figures": figures, "summary": summary}

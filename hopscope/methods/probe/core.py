"""MechanisticProbe on a model: features, the two kNN probes, the random-init baseline, layer-wise curves."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from hopscope.methods.probe.attention import AttentionRows, query_attention
from hopscope.methods.probe.classifier import ProbeFit, knn_probe, probing_score
from hopscope.methods.probe.features import StatementFeatures, statement_features
from hopscope.methods.probe.items import ProbeItems
from hopscope.methods.probe.spans import token_spans

TASKS = ("useful", "step")


@dataclass(frozen=True)
class ProbeSettings:
    """How features are built and probes fit (defaults follow the paper: head mean, last token, k = 8)."""

    per_head: bool = False
    query: str = "last"
    normalize: str = "max"
    token_pool: str = "sum"
    n_neighbors: int = 8
    n_splits: int = 5
    seed: int = 0
    batch_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelFeatures:
    """One model's attention rows, statement token spans and statement features on some items."""

    attention: AttentionRows
    spans: list[list[tuple[int, int]]]
    features: StatementFeatures


def extract(m, items: ProbeItems, settings: ProbeSettings = ProbeSettings()) -> ModelFeatures:
    """Read attention through the engine and turn it into statement features."""
    spans = [token_spans(m.tokenizer, p, s) for p, s in zip(items.prompts, items.statements)]
    query_spans = None
    if items.query_chars is not None and settings.query != "last":
        query_spans = [token_spans(m.tokenizer, p, [q])[0] for p, q in zip(items.prompts, items.query_chars)]
    rows = query_attention(m, items.prompts, query=settings.query, query_spans=query_spans,
                           batch_size=settings.batch_size)
    feats = statement_features(rows.attn, spans, per_head=settings.per_head, token_pool=settings.token_pool,
                               normalize=settings.normalize)
    return ModelFeatures(rows, spans, feats)


def labels(items: ProbeItems, feats: StatementFeatures) -> dict[str, np.ndarray]:
    """Per feature row: ``useful`` (0/1) and ``step`` (0 = noise, else the tree step)."""
    useful = np.array([int(items.useful[i][j]) for i, j in zip(feats.list_id, feats.statement)])
    step = np.array([int(items.step[i][j]) for i, j in zip(feats.list_id, feats.statement)])
    return {"useful": useful, "step": step}


def fit_probes(items: ProbeItems, feats: StatementFeatures, settings: ProbeSettings = ProbeSettings(),
               n_layers: int | None = None) -> dict[str, ProbeFit]:
    """The useful-vs-noise probe (every statement) and the step probe (useful statements only)."""
    lab = labels(items, feats)
    X = feats.matrix(n_layers)
    kw = dict(n_neighbors=settings.n_neighbors, n_splits=settings.n_splits, seed=settings.seed)
    on = lab["useful"] == 1
    return {
        "useful": knn_probe(X, lab["useful"], feats.list_id, **kw),
        "step": knn_probe(X[on], lab["step"][on], feats.list_id[on], **kw),
    }


def random_init_like(m, seed: int = 0):
    """The same architecture and tokenizer with freshly initialised weights (the probe's baseline)."""
    from transformers import AutoModelForCausalLM

    from hopscope.models import LoadedModel

    config = copy.deepcopy(m.model.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=m.dtype).to(m.device)
    return LoadedModel(model=model, tokenizer=m.tokenizer, name=f"{m.name}-random-init",
                       source=f"random-init(seed={seed}) of {m.source}")


@dataclass
class ProbeOutcome:
    """Tables: ``scores`` (task, F1s, S), ``layerwise`` (task, model, layers, F1); fits and features kept."""

    scores: pd.DataFrame
    layerwise: pd.DataFrame
    fits: dict[str, dict[str, ProbeFit]]
    features: dict[str, ModelFeatures]


def probe_model(m, items: ProbeItems, settings: ProbeSettings = ProbeSettings(), *, baseline=None,
                layerwise: bool = True) -> ProbeOutcome:
    """Probe ``m`` and a baseline (default: ``random_init_like(m, settings.seed)``) on ``items``.

    ``scores`` has one row per task with ``f1_model``, ``f1_random``, their fold spreads and the
    normalised score ``S``; ``layerwise`` has the F1 of probes on the first ``l`` layers' features.
    """
    baseline = random_init_like(m, settings.seed) if baseline is None else baseline
    feats = {"trained": extract(m, items, settings), "random_init": extract(baseline, items, settings)}
    fits = {name: fit_probes(items, f.features, settings) for name, f in feats.items()}
    rows = []
    for task in TASKS:
        fm, fr = fits["trained"][task], fits["random_init"][task]
        rows.append(dict(task=task, f1_model=fm.f1, f1_model_std=fm.f1_std, f1_random=fr.f1,
                         f1_random_std=fr.f1_std, S=probing_score(fm.f1, fr.f1), n_rows=len(fm.pred)))
    curve = []
    if layerwise:
        for name, f in feats.items():
            for n in range(1, f.features.n_layers + 1):
                fl = fits[name] if n == f.features.n_layers else fit_probes(items, f.features, settings, n)
                for task in TASKS:
                    curve.append(dict(task=task, model=name, layers=n, f1=fl[task].f1, f1_std=fl[task].f1_std))
    lw = pd.DataFrame(curve, columns=["task", "model", "layers", "f1", "f1_std"])
    if len(lw):
        rand = lw[lw.model == "random_init"].set_index(["task", "layers"])["f1"]
        lw["S"] = [probing_score(r.f1, rand[(r.task, r.layers)]) if r.model == "trained" else np.nan
                   for r in lw.itertuples()]
    return ProbeOutcome(pd.DataFrame(rows), lw, fits, feats)

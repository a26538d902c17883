"""MechanisticProbe as stages of pure, seeded shards.

``train`` (k-th smallest with ``train=True``): trains the small GPT-2; its weights are a table, so every later
stage (and any executor) rebuilds the same model. ``features``: per chunk of questions, the attention features
of every statement for the probed model and its random initialisations, and whether each model answers.
``probe``: one shard per probe (``useful``, ``step``): grouped cross-validated kNN probes, the score S, its
bootstrap replicates and its label-permutation null, and the layer-wise curves. ``entropy`` and ``masking``
(k-th smallest): head entropy, and accuracy with heads masked. ``corruption``: the paper's "That ... is
false" corruption (ProofWriter) or the number rewrites (k-th smallest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hopscope.data.kth_smallest import KthSmallestConfig, check_pool, make_split
from hopscope.methods.probe import answers, classifier, entropy, masking
from hopscope.methods.probe.attention import query_attention
from hopscope.methods.probe.claims import claims
from hopscope.methods.probe.corruption import kth_rewrites
from hopscope.methods.probe.features import pool_statements, statement_features
from hopscope.methods.probe.models import arch_of, probed_model, random_init_like, random_seeds
from hopscope.methods.probe.proofwriter import load_questions, proofwriter_questions
from hopscope.methods.probe.questions import ProbeQuestion, kth_questions
from hopscope.methods.probe.report import figures, headline, sections
from hopscope.methods.probe.settings import Settings
from hopscope.pipeline import Analysis, Context, Shard, Stage
from hopscope.results import Result
from hopscope.train.kth_smallest import train_kth_smallest, weights_table
from hopscope.train.last_token import TrainConfig

PROBES = ("useful", "step")
MODEL = "model"


def task_config(s: Settings, split_sizes: bool = False) -> KthSmallestConfig:
    pool = tuple(s.pool) if s.pool else tuple(range(s.pool_size))
    extra = dict(n_train=s.train_lists, n_val=500, n_test=1000) if split_sizes else {}
    return KthSmallestConfig(n=s.n, k=s.k, pool_size=len(pool), pool=pool, seed=s.seed, **extra)


def prepare(data: Any, s: Settings) -> list[ProbeQuestion]:
    """The probed questions: seeded k-th smallest test lists, or the ProofWriter questions of ``data``."""
    if s.kth:
        if data is not None:
            raise ValueError("the k-th smallest probe builds its own lists; pass data only with task='proofwriter'")
        return kth_questions(make_split(task_config(s), "test", max(s.n_probe, s.n_eval)))
    if data is None:
        raise ValueError("task='proofwriter' needs data: a ProofWriter jsonl path or ProofQuery records")
    return proofwriter_questions(load_questions(data), shots=s.shots, max_depth=s.max_depth, limit=s.n_questions,
                                 seed=s.seed, shared_examples=s.shared_examples)


def n_probe(ctx: Context) -> int:
    s = ctx.settings
    return min(len(ctx.data), s.n_probe if s.kth else len(ctx.data))


def n_eval(ctx: Context) -> int:
    s = ctx.settings
    return min(len(ctx.data), s.n_eval if s.kth else len(ctx.data))


def chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


# ---- train ----------------------------------------------------------------------------------------------
def plan_train(ctx: Context) -> list[int]:
    return [0] if ctx.settings.kth and ctx.settings.train else []


def work_train(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    cfg = TrainConfig(steps=s.train_steps, batch_size=s.batch_size, lr=s.lr,
                      warmup=max(1, min(100, s.train_steps // 10)),
                      eval_every=max(1, s.train_steps // 4), eval_size=500, seed=s.seed)
    result = train_kth_smallest(task_config(s, split_sizes=True), cfg, arch=arch_of(s))
    history = result.history.drop(columns=["seconds"], errors="ignore")
    history["test_accuracy"] = result.metrics["test_accuracy"]
    return {"training": history, "trained_weights": weights_table(result.model)}


# ---- features -------------------------------------------------------------------------------------------
def plan_features(ctx: Context) -> list[list[int]]:
    return chunks(max(n_probe(ctx), n_eval(ctx)), ctx.settings.shard_size)


def feature_columns(n_layers: int, n_features: int) -> list[str]:
    return [f"L{l}" if n_features == 1 else f"L{l}H{h}" for l in range(n_layers) for h in range(n_features)]


def work_features(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    m = probed_model(lm, s, ctx.tables)
    qs = [ctx.data[i] for i in shard.payload]
    if s.kth:
        check_pool(m.tokenizer, task_config(s).pool)
    models = [(MODEL, -1, m)] + [(f"random_init_{j}", seed, random_init_like(m, seed))
                                 for j, seed in enumerate(random_seeds(s))]
    stmt_rows, answer_rows, head_rows = [], [], []
    for name, seed, model in models:
        qa = query_attention(model, qs, pool=s.resolved_query_pool)
        scored = answers.score(model, qa.logits, qs)
        for i, q in enumerate(qs):
            answer_rows.append(dict(qid=q.qid, model=name, correct=bool(scored["correct"][i]),
                                    margin=float(scored["margin"][i])))
            f = statement_features(qa.attn[i], qa.spans[i], token_pool=s.token_pool, per_head=s.per_head,
                                   normalize=s.resolved_normalize)
            cols = feature_columns(f.shape[1], f.shape[2])
            for j, vec in enumerate(f.reshape(len(f), -1)):
                row = dict(qid=q.qid, group=q.group, model=name, init_seed=seed, statement=j, depth=q.depth[j],
                           useful=q.depth[j] >= 0)
                if q.ranks:
                    row.update(rank=q.ranks[j], value=q.numbers[j])
                row.update(zip(cols, (float(v) for v in vec)))
                stmt_rows.append(row)
            if s.kth and name == MODEL:
                heads = pool_statements(qa.attn[i], qa.spans[i], s.token_pool)  # [S, L, H]
                for j, l, h in np.ndindex(*heads.shape):
                    head_rows.append(dict(qid=q.qid, layer=l, head=h, statement=j, attention=float(heads[j, l, h])))
    out = {"statements": pd.DataFrame(stmt_rows), "answers": pd.DataFrame(answer_rows)}
    if s.kth:
        out["head_attention"] = pd.DataFrame(head_rows, columns=["qid", "layer", "head", "statement", "attention"])
    return out


# ---- probe ----------------------------------------------------------------------------------------------
def plan_probe(ctx: Context) -> list[str]:
    return list(PROBES)


def probe_rows(ctx: Context, task: str) -> pd.DataFrame:
    """The probed statements of one model set, in question then statement order (first ``n_probe`` questions)."""
    keep = {q.qid: i for i, q in enumerate(ctx.data[:n_probe(ctx)])}
    t = ctx.tables["statements"]
    t = t[t["qid"].isin(keep)]
    if task == "step":
        t = t[t["useful"]]
    return t.assign(_order=t["qid"].map(keep)).sort_values(["model", "_order", "statement"], kind="stable")


def layer_subsets(n_layers: int, max_points: int = 12) -> list[int]:
    """Numbers of first layers for the layer-wise curve (every layer up to 12, else evenly spaced)."""
    if n_layers <= max_points:
        return list(range(1, n_layers + 1))
    return sorted({int(round(x)) for x in np.linspace(1, n_layers, max_points)})


def work_probe(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    task = shard.payload
    rows = probe_rows(ctx, task)
    names = list(dict.fromkeys(rows["model"]))
    base = rows[rows["model"] == MODEL]
    label_values = base["depth"].to_numpy() if task == "step" else base["useful"].astype(int).to_numpy()
    classes = np.unique(label_values)
    if len(classes) < 2:
        raise ValueError(f"the {task} probe needs two classes; every probed statement has label {classes.tolist()}")
    y = np.searchsorted(classes, label_values)
    groups = base["group"].to_numpy()
    folds = classifier.make_folds(groups, s.n_folds, shard.seed)
    cols = [c for c in rows.columns if c.startswith("L") and c[1:2].isdigit()]
    feats = {name: rows[rows["model"] == name][cols].to_numpy(dtype=float) for name in names}
    graphs = {name: classifier.neighbours(X, folds, s.n_neighbors, s.resolved_distance) for name, X in feats.items()}
    C = len(classes)
    preds = {name: classifier.predict(g, y, C) for name, g in graphs.items()}
    f1 = {name: float(classifier.macro_f1(y, p[0], C)) for name, p in preds.items()}
    randoms = [n for n in names if n != MODEL]
    f1_random = float(np.mean([f1[n] for n in randoms]))
    S = classifier.probing_score(f1[MODEL], f1_random)

    # scores, per model, with the per-fold spread
    score_rows = []
    for name in names:
        fold_f1 = [float(classifier.macro_f1(y[t], preds[name][0][t], C)) for t in folds]
        score_rows.append(dict(task=task, model=name, f1=f1[name], f1_fold_mean=float(np.mean(fold_f1)),
                               f1_fold_std=float(np.std(fold_f1)), n_rows=len(y), n_prompts=len(np.unique(base["qid"])),
                               n_folds=len(folds), S=S if name == MODEL else np.nan, f1_random_mean=f1_random))
    # out-of-fold predictions of the probed model
    p_model, proba = preds[MODEL]
    pred_table = pd.DataFrame(dict(qid=base["qid"].to_numpy(), statement=base["statement"].to_numpy(), task=task,
                                   label=classes[y], pred=classes[p_model],
                                   p_positive=proba[:, -1], fold=_fold_of(folds, len(y))))
    # bootstrap over prompts (paired across models) of the out-of-fold macro-F1s, and S
    qcodes = np.unique(base["qid"].to_numpy(), return_inverse=True)[1]
    boot = _bootstrap(y, {n: preds[n][0] for n in names}, qcodes, C, s.n_bootstrap, shard.seed + 1)
    boot_S = classifier.probing_score(boot[MODEL], np.mean([boot[n] for n in randoms], axis=0))
    boot_table = pd.DataFrame(dict(task=task, replicate=np.arange(s.n_bootstrap), S=boot_S, f1_model=boot[MODEL],
                                   f1_random=np.mean([boot[n] for n in randoms], axis=0)))
    # label permutations within each prompt (the same for every model): the null of S
    perms = classifier.permuted_within(qcodes, s.n_permutations, shard.seed + 2)
    null_f1 = {n: _permuted_f1(graphs[n], y, perms, C) for n in names}
    null_S = classifier.probing_score(null_f1[MODEL], np.mean([null_f1[n] for n in randoms], axis=0))
    null_table = pd.DataFrame(dict(task=task, permutation=np.arange(s.n_permutations), S=null_S,
                                   f1_model=null_f1[MODEL], f1_random=np.mean([null_f1[n] for n in randoms], axis=0)))
    out = {"probe_scores": pd.DataFrame(score_rows), "probe_predictions": pred_table,
           "probe_bootstrap": boot_table, "probe_null": null_table}
    if s.layerwise:
        n_layers = len({c.split("H")[0] for c in cols})
        out["layerwise"] = _layerwise(task, feats, y, folds, C, s, names, n_layers)
    return out


def _fold_of(folds: list[np.ndarray], n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    for i, t in enumerate(folds):
        out[t] = i
    return out


def _bootstrap(y: np.ndarray, preds: dict[str, np.ndarray], codes: np.ndarray, C: int, B: int, seed: int
               ) -> dict[str, np.ndarray]:
    """Macro-F1 of each model's predictions over ``B`` bootstrap resamples of prompts (the same resamples)."""
    G = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, G, G), minlength=G) for _ in range(B)]).astype(float)  # [B, G]
    out = {}
    for name, pred in preds.items():
        conf = np.zeros((G, C, C))
        np.add.at(conf, (codes, y, pred), 1.0)
        out[name] = classifier.f1_from_confusion(np.einsum("bg,gij->bij", weights, conf))
    return out


def _permuted_f1(graph: classifier.Neighbours, y: np.ndarray, perms: np.ndarray, C: int, chunk: int = 250
                 ) -> np.ndarray:
    out = []
    for lo in range(0, len(perms), chunk):
        yp = y[perms[lo:lo + chunk]]                       # [P, n]
        pred = classifier.predict(graph, yp, C)[0]
        out.append(classifier.macro_f1(yp, pred, C))
    return np.concatenate(out) if out else np.zeros(0)


def _layerwise(task: str, feats: dict[str, np.ndarray], y: np.ndarray, folds, C: int, s: Settings, names,
               n_layers: int) -> pd.DataFrame:
    """F1 of probes on the first ``l`` layers' features: the probed model and its first random init."""
    per_layer = feats[MODEL].shape[1] // n_layers
    rows = []
    for name in dict.fromkeys([MODEL, names[1] if len(names) > 1 else MODEL]):
        for n in layer_subsets(n_layers):
            g = classifier.neighbours(feats[name][:, : n * per_layer], folds, s.n_neighbors, s.resolved_distance)
            rows.append(dict(task=task, model=name, layers=n,
                             f1=float(classifier.macro_f1(y, classifier.predict(g, y, C)[0], C))))
    t = pd.DataFrame(rows)
    rand = t[t.model != MODEL].set_index("layers")["f1"]
    t["S"] = [classifier.probing_score(r.f1, rand.get(r.layers, np.nan)) if r.model == MODEL else np.nan
              for r in t.itertuples()]
    return t


# ---- entropy and masking (k-th smallest) ----------------------------------------------------------------
def plan_entropy(ctx: Context) -> list[int]:
    return [0] if ctx.settings.kth else []


def work_entropy(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    arr, qids = entropy.head_array(ctx.tables["head_attention"])
    ranks = np.array([q.ranks for q in ctx.data if q.qid in set(qids)])
    return {"head_entropy": entropy.head_entropy(arr, ranks),
            "attention_profile": entropy.attention_profile(arr, ranks)}


def plan_masking(ctx: Context) -> list[dict]:
    s = ctx.settings
    if not (s.kth and s.masking):
        return []
    return [dict(p, heads=[list(h) for h in p["heads"]])
            for p in masking.plans(ctx.tables["head_entropy"], s.n_random_masks, s.seed)]


def work_masking(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    m = probed_model(lm, s, ctx.tables)
    qs = ctx.data[:n_eval(ctx)]
    prompts = [q.prompt for q in qs]
    order = [tuple(h) for h in shard.payload["heads"]]
    rows = []
    for fraction in (0.0, *s.mask_fractions):
        n = masking.n_masked(fraction, len(order))
        logits = answers.last_logits(m, prompts, masking.head_masks(order[:n]))
        correct = answers.score(m, logits, qs)["correct"]
        rows += [dict(qid=q.qid, strategy=shard.payload["strategy"], repeat=shard.payload["repeat"],
                      fraction=float(fraction), n_masked=n, correct=bool(c)) for q, c in zip(qs, correct)]
    return {"masking": pd.DataFrame(rows)}


# ---- corruption -----------------------------------------------------------------------------------------
def plan_corruption(ctx: Context) -> list[list[int]]:
    if not ctx.settings.corruption:
        return []
    return chunks(n_probe(ctx), ctx.settings.shard_size)


def work_corruption(lm, ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    m = probed_model(lm, s, ctx.tables)
    qs = [ctx.data[i] for i in shard.payload]
    before = ctx.tables["answers"]
    before = before[before["model"] == MODEL].set_index("qid")
    if not s.kth:
        qs = [q for q in qs if q.corrupted]
        cols = ["qid", "corrupted_statement", "correct_before", "correct_after", "margin_before", "margin_after"]
        if not qs:
            return {"corruption": pd.DataFrame(columns=cols)}
        alt = [ProbeQuestion(q.qid, q.group, q.corrupted, (), (), (0, len(q.corrupted)), q.answer, q.alternative)
               for q in qs]
        after = answers.score(m, answers.last_logits(m, [q.prompt for q in alt]), alt)
        return {"corruption": pd.DataFrame(dict(
            qid=[q.qid for q in qs], corrupted_statement=[q.corrupted_statement for q in qs],
            correct_before=[bool(before.loc[q.qid, "correct"]) for q in qs], correct_after=after["correct"],
            margin_before=[float(before.loc[q.qid, "margin"]) for q in qs], margin_after=after["margin"]))[cols]}
    preds = ctx.tables["probe_predictions"]
    p_useful = preds[preds["task"] == "useful"].set_index(["qid", "statement"])["p_positive"]
    rows = [r for q in qs for r in kth_rewrites(q, s.k, task_config(s).pool, s.seed)]
    if not rows:
        return {"corruption": pd.DataFrame(columns=["qid", "kind", "position", "probe_score", "correct_after"])}
    new = [r.pop("question") for r in rows]
    logits = answers.last_logits(m, [q.prompt for q in new])
    after = answers.score(m, logits, new)
    kept = [ProbeQuestion(q.qid, q.group, q.prompt, (), (), (0, len(q.prompt)), f" {r['answer_before']}")
            for q, r in zip(new, rows)]
    kept_answer = answers.score(m, logits, kept)["correct"]
    t = pd.DataFrame(rows)
    t["probe_score"] = [float(p_useful.get((r["qid"], r["position"]), np.nan)) for r in rows]
    t["correct_before"] = [bool(before.loc[r["qid"], "correct"]) for r in rows]
    t["correct_after"] = after["correct"]
    t["kept_answer"] = kept_answer
    return {"corruption": t}


def finish(ctx: Context) -> Result:
    tables = {k: v for k, v in ctx.tables.items() if k != "trained_weights"}
    result = Result("probe", ctx.settings.to_dict(), tables, claims=claims(tables, ctx.settings))
    result.headline = headline(result, ctx.settings)
    result.figures = figures(result, ctx.settings)
    result.sections = sections(result, ctx.settings)
    if ctx.settings.kth and ctx.settings.train:
        result.model = {"name": "kth-smallest-gpt2", "source": "trained in this run", "family": "gpt2",
                        "n_layers": ctx.settings.layers, "n_heads": ctx.settings.heads, "d_model": ctx.settings.width}
    return result


ANALYSIS = Analysis(
    "probe", Settings,
    stages=[Stage("train", plan_train, work_train), Stage("features", plan_features, work_features),
            Stage("probe", plan_probe, work_probe), Stage("entropy", plan_entropy, work_entropy),
            Stage("masking", plan_masking, work_masking), Stage("corruption", plan_corruption, work_corruption)],
    finish=finish, prepare=prepare, title="MechanisticProbe (Hou et al. 2023)")

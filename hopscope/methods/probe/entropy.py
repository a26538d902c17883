"""Per-head attention summaries of the k-th smallest model: head entropy by position and by size rank
(the paper's ``head_calculation``: the entropy of each head's mean attention over the lists, / log n)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def head_array(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``[N, L, H, S]`` attention of each head to each statement from a ``head_attention`` table, and the
    question ids in order."""
    qids = list(dict.fromkeys(table["qid"]))
    dims = [len(qids)] + [int(table[c].max()) + 1 for c in ("layer", "head", "statement")]
    out = np.zeros(dims)
    pos = {q: i for i, q in enumerate(qids)}
    out[table["qid"].map(pos).to_numpy(), table["layer"].to_numpy(), table["head"].to_numpy(),
        table["statement"].to_numpy()] = table["attention"].to_numpy()
    return out, qids


def by_rank(stmt_attn: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Reorder the statement axis of ``[N, L, H, S]`` by size rank (index 0 = the smallest number)."""
    order = np.argsort(np.asarray(ranks), axis=1, kind="stable")  # [N, S]: position holding rank r
    return np.take_along_axis(stmt_attn, order[:, None, None, :], axis=-1)


def normalized_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis of non-negative weights (renormalised), divided by log(size)."""
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    return h / np.log(p.shape[-1])


def head_entropy(stmt_attn: np.ndarray, ranks: np.ndarray) -> pd.DataFrame:
    """One row per (layer, head): normalised entropy of the head's mean attention over list positions
    (``entropy_position``) and over size ranks (``entropy_rank``). Low entropy by position marks a head
    that looks at fixed places; low entropy by rank, a head that picks numbers by size."""
    pos = normalized_entropy(stmt_attn.mean(0))
    rank = normalized_entropy(by_rank(stmt_attn, ranks).mean(0))
    rows = [dict(layer=l, head=h, entropy_position=float(pos[l, h]), entropy_rank=float(rank[l, h]))
            for l in range(pos.shape[0]) for h in range(pos.shape[1])]
    return pd.DataFrame(rows)


def attention_profile(stmt_attn: np.ndarray, ranks: np.ndarray) -> pd.DataFrame:
    """Mean attention (over lists and heads) per layer to each list position and to each size rank:
    columns ``layer, axis ('position'|'rank'), index, attention``."""
    rows = []
    for axis, a in (("position", stmt_attn), ("rank", by_rank(stmt_attn, ranks))):
        mean = a.mean((0, 2))
        rows += [dict(layer=l, axis=axis, index=i, attention=float(mean[l, i]))
                 for l in range(mean.shape[0]) for i in range(mean.shape[1])]
    return pd.DataFrame(rows)

"""Per-head attention summaries: statement attention, head entropy by position and by size rank."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hopscope.methods.probe.features import pool_statements


def statement_attention(attn: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]],
                        token_pool: str = "sum") -> np.ndarray:
    """``[N, L, H, S]`` raw query attention to each statement (prompts must have equally many statements)."""
    counts = {len(s) for s in spans}
    if len(counts) != 1:
        raise ValueError(f"prompts have different numbers of statements ({sorted(counts)}); "
                         "per-head maps need a fixed count")
    return np.stack([pool_statements(a, s, token_pool).transpose(1, 2, 0) for a, s in zip(attn, spans)])


def by_rank(stmt_attn: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Reorder the statement axis of ``[N, L, H, S]`` by size rank (index 0 = smallest number)."""
    order = np.argsort(np.asarray(ranks), axis=1, kind="stable")  # [N, S]: position holding rank r
    return np.take_along_axis(stmt_attn, order[:, None, None, :], axis=-1)


def normalized_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis of non-negative weights (renormalised), divided by log(size)."""
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    return h / np.log(p.shape[-1])


def head_entropy(stmt_attn: np.ndarray, ranks: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (layer, head): normalised entropy of the head's mean query attention over statement
    positions (``entropy_position``) and over size ranks (``entropy_rank``, when ``ranks`` are given).

    Low entropy by position marks a head that looks at fixed places; low entropy by rank, a head that
    picks numbers by size."""
    pos = normalized_entropy(stmt_attn.mean(0))  # [L, H]
    rank = normalized_entropy(by_rank(stmt_attn, ranks).mean(0)) if ranks is not None else None
    rows = []
    for layer in range(pos.shape[0]):
        for head in range(pos.shape[1]):
            row = dict(layer=layer, head=head, entropy_position=float(pos[layer, head]))
            if rank is not None:
                row["entropy_rank"] = float(rank[layer, head])
            rows.append(row)
    return pd.DataFrame(rows)


def attention_profile(stmt_attn: np.ndarray, ranks: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy mean attention (over prompts and heads) per layer to each statement position and, with
    ``ranks``, to each size rank: columns ``layer, axis ('position'|'rank'), index, attention``."""
    rows = []
    views = {"position": stmt_attn}
    if ranks is not None:
        views["rank"] = by_rank(stmt_attn, ranks)
    for axis, a in views.items():
        mean = a.mean((0, 2))  # [L, S]
        for layer in range(mean.shape[0]):
            for i in range(mean.shape[1]):
                rows.append(dict(layer=layer, axis=axis, index=i, attention=float(mean[layer, i])))
    return pd.DataFrame(rows)

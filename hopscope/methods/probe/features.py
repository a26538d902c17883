"""Statement features: per layer, the attention a statement receives from the query (MechanisticProbe)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hopscope.methods.probe.settings import TOKEN_POOLS

Span = tuple[int, int]


def pool_statements(attn: np.ndarray, spans: Sequence[Span], token_pool: str = "mean") -> np.ndarray:
    """``[L, H, length]`` attention of the query -> ``[n_statements, L, H]``: each statement's tokens pooled
    (``mean``, the paper's choice, or ``sum``)."""
    if token_pool not in TOKEN_POOLS:
        raise ValueError(f"unknown token_pool {token_pool!r}; choose one of {TOKEN_POOLS}")
    length = attn.shape[-1]
    for a, b in spans:
        if not 0 <= a < b <= length:
            raise ValueError(f"statement span {(a, b)} lies outside the prompt of {length} tokens")
    fn = np.mean if token_pool == "mean" else np.sum
    return np.stack([fn(attn[:, :, a:b], axis=-1) for a, b in spans])


def statement_features(attn: np.ndarray, spans: Sequence[Span], *, token_pool: str = "mean",
                       per_head: bool = False, normalize: str = "none") -> np.ndarray:
    """``[n_statements, L, F]`` features of one prompt: F = 1 (the mean over heads, the paper's) or the
    heads (``per_head``). ``normalize="max"`` divides the prompt's block by its largest value (the paper's
    k-th smallest code); ``"none"`` keeps raw attention (its ProofWriter code)."""
    if normalize not in ("max", "none"):
        raise ValueError(f"unknown normalize {normalize!r}; choose max or none")
    f = pool_statements(attn, spans, token_pool)
    if not per_head:
        f = f.mean(-1, keepdims=True)
    if normalize == "max":
        f = f / max(float(f.max()), 1e-12)
    return f.astype(np.float32)

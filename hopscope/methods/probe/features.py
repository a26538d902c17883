"""Statement features: per layer, the attention a statement receives from the query (MechanisticProbe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NORMALIZE = ("max", "sum", "none")
TOKEN_POOL = ("sum", "mean", "max")


@dataclass
class StatementFeatures:
    """``values[r]`` is statement row ``r``'s ``[n_layers, n_features]`` block (n_features = 1 for the
    head mean, n_heads per head); ``list_id``/``statement`` say which prompt and statement it is."""

    values: np.ndarray
    list_id: np.ndarray
    statement: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.values.shape[1]

    def matrix(self, n_layers: int | None = None) -> np.ndarray:
        """``[rows, l * n_features]`` features of the first ``n_layers`` layers (all by default)."""
        n = self.n_layers if n_layers is None else n_layers
        if not 1 <= n <= self.n_layers:
            raise ValueError(f"n_layers must lie in 1..{self.n_layers}, got {n}")
        return self.values[:, :n].reshape(len(self.values), -1)


def pool_statements(attn: np.ndarray, spans: Sequence[tuple[int, int]], token_pool: str = "sum") -> np.ndarray:
    """``[L, H, length]`` attention -> ``[n_statements, L, H]``, pooling each statement's tokens."""
    if token_pool not in TOKEN_POOL:
        raise ValueError(f"unknown token_pool {token_pool!r}; choose one of {TOKEN_POOL}")
    fn = {"sum": np.sum, "mean": np.mean, "max": np.max}[token_pool]
    length = attn.shape[-1]
    for a, b in spans:
        if not 0 <= a < b <= length:
            raise ValueError(f"statement span {(a, b)} lies outside the prompt of {length} tokens")
    return np.stack([fn(attn[:, :, a:b], axis=-1) for a, b in spans])


def statement_features(
    attn: Sequence[np.ndarray],
    spans: Sequence[Sequence[tuple[int, int]]],
    *,
    per_head: bool = False,
    token_pool: str = "sum",
    normalize: str = "max",
) -> StatementFeatures:
    """Features of every statement of every prompt.

    ``attn[i]`` is prompt ``i``'s ``[L, H, length]`` query attention and ``spans[i]`` its statements' token
    spans. Heads are averaged unless ``per_head``. ``normalize``: ``"max"`` divides each prompt's block by
    its largest value (as the MechanisticProbe code does), ``"sum"`` makes each layer (and head) sum to 1
    over the statements, ``"none"`` keeps raw attention.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE}")
    if len(attn) != len(spans):
        raise ValueError(f"{len(attn)} attention rows but {len(spans)} span lists")
    blocks, list_ids, statements = [], [], []
    for i, (a, sp) in enumerate(zip(attn, spans)):
        f = pool_statements(a, sp, token_pool)  # [S, L, H]
        if not per_head:
            f = f.mean(-1, keepdims=True)
        if normalize == "max":
            f = f / max(float(f.max()), 1e-12)
        elif normalize == "sum":
            f = f / np.maximum(f.sum(0, keepdims=True), 1e-12)
        blocks.append(f.astype(np.float32))
        list_ids.append(np.full(len(sp), i))
        statements.append(np.arange(len(sp)))
    return StatementFeatures(np.concatenate(blocks), np.concatenate(list_ids), np.concatenate(statements))

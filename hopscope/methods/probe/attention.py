"""Attention from the query position(s) to every prompt token, read through the engine.

This is the only place the probe touches the model's attention; everything downstream works on the
numpy arrays returned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hopscope.engine import Site, cache, run

QUERY_MODES = ("last", "mean", "max")


@dataclass
class AttentionRows:
    """Per prompt: attention ``[n_layers, n_heads, length]`` from the query to each prompt token, and
    the top-1 next-token id at the last position."""

    attn: list[np.ndarray]
    top1: np.ndarray


def query_attention(
    m,
    prompts: Sequence[str],
    *,
    query: str = "last",
    query_spans: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 64,
) -> AttentionRows:
    """Attention of every layer and head from the query position(s) of each prompt.

    ``query="last"`` reads the last prompt token's row; ``"mean"``/``"max"`` pool the rows of the query
    positions ``query_spans[i]`` (token coordinates; default: every position of the prompt).
    """
    if query not in QUERY_MODES:
        raise ValueError(f"unknown query mode {query!r}; choose one of {QUERY_MODES}")
    if query_spans is not None and len(query_spans) != len(prompts):
        raise ValueError(f"{len(query_spans)} query spans for {len(prompts)} prompts")
    attn: list[np.ndarray] = []
    top1: list[np.ndarray] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = list(prompts[lo:lo + batch_size])
        positions = [-1 if query == "last" else (tuple(query_spans[lo + i]) if query_spans is not None else None)
                     for i in range(len(chunk))]
        sites = [[Site(layer, "attn_pattern", pos) for layer in range(m.n_layers)] for pos in positions]
        res = run(m, chunk, [[cache(s) for s in row] for row in sites], last_only=True)
        top1.append(res.logits.argmax(-1).cpu().numpy())
        for row, row_sites in zip(res.cache, sites):
            p = torch.stack([row[s] for s in row_sites]).float()  # [L, H, q, length]
            pooled = p[:, :, -1] if query == "last" else p.mean(2) if query == "mean" else p.max(2).values
            attn.append(pooled.cpu().numpy())
    return AttentionRows(attn, np.concatenate(top1) if top1 else np.zeros(0, dtype=np.int64))

"""Attention from the query position(s) to every prompt token, read through the engine.

This is the only place the probe touches the model's attention; everything downstream works on the
numpy arrays returned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hopscope.engine import run_with_cache

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
    attn: list[np.ndarray] = []
    top1: list[np.ndarray] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = list(prompts[lo:lo + batch_size])
        logits, acts = run_with_cache(m, chunk, components=("attn_pattern",))
        pattern = torch.stack([acts["attn_pattern", layer] for layer in range(m.n_layers)], 1)  # [b,L,H,s,s]
        width = pattern.shape[-1]
        lengths = [len(m.to_ids(p)) for p in chunk]
        top1.append(logits[:, -1].argmax(-1).cpu().numpy())
        for i, n in enumerate(lengths):
            p = pattern[i, :, :, width - n:, width - n:].float()  # [L, H, n, n] prompt coordinates
            if query == "last":
                row = p[:, :, -1]
            else:
                a, b = query_spans[lo + i] if query_spans is not None else (0, n)
                rows = p[:, :, a:b]
                row = rows.mean(2) if query == "mean" else rows.max(2).values
            attn.append(row.cpu().numpy())
    return AttentionRows(attn, np.concatenate(top1) if top1 else np.zeros(0, dtype=np.int64))

"""Attention from the query rows of each prompt to every prompt token, read through the engine.

This is the only place the probe reads the model's attention; everything downstream works on numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hopscope.data.spans import model_token_span
from hopscope.engine import Site, cache, run
from hopscope.methods.probe.questions import ProbeQuestion

Span = tuple[int, int]


@dataclass
class QueryAttention:
    """Per prompt: pooled query attention ``[n_layers, n_heads, length]``, the statements' token spans and
    the last position's logits ``[vocab]``."""

    attn: list[np.ndarray]
    spans: list[list[Span]]
    logits: torch.Tensor


def token_spans(lm, q: ProbeQuestion) -> tuple[list[Span], Span]:
    """Token spans (engine coordinates) of the statements and of the query rows of ``q``."""
    spans = [model_token_span(lm, q.prompt, s) for s in q.statements]
    return spans, model_token_span(lm, q.prompt, q.query)


def query_attention(lm, questions: Sequence[ProbeQuestion], *, pool: str = "last",
                    batch_size: int | None = None) -> QueryAttention:
    """Attention of every layer and head from the query rows: the last token (``pool="last"``) or the max
    / mean over the query span's rows (``"max"``, ``"mean"``). ``batch_size``: prompts per forward (default
    32 for the last row, 8 when whole query spans are cached)."""
    if pool not in ("last", "max", "mean"):
        raise ValueError(f"unknown query pool {pool!r}; choose last, max or mean")
    batch_size = batch_size or (32 if pool == "last" else 8)
    attn: list[np.ndarray] = []
    spans: list[list[Span]] = []
    logits = []
    for lo in range(0, len(questions), batch_size):
        chunk = list(questions[lo:lo + batch_size])
        rows, sites = [], []
        for q in chunk:
            st, qs = token_spans(lm, q)
            spans.append(st)
            where = -1 if pool == "last" else qs
            row_sites = [Site(layer, "attn_pattern", where) for layer in range(lm.n_layers)]
            sites.append(row_sites)
            rows.append([cache(s) for s in row_sites])
        res = run(lm, [q.prompt for q in chunk], rows, last_only=True)
        logits.append(res.logits.float().cpu())
        for cached, row_sites in zip(res.cache, sites):
            p = torch.stack([cached[s] for s in row_sites]).float()  # [L, H, q, length]
            pooled = p[:, :, -1] if pool == "last" else p.max(2).values if pool == "max" else p.mean(2)
            attn.append(pooled.cpu().numpy())
    return QueryAttention(attn, spans, torch.cat(logits) if logits else torch.zeros(0))

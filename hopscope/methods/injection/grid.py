"""Injection rows: ``tau * memory`` added to one layer's attention output, run through the engine.

One prompt, many rows (every (cell, memory) of it): :func:`hopscope.engine.prompt_pass` shares what every
row shares. At ``positions="all"`` (the seed: every prompt position) the pass starts at position 0 and its
staircase runs the blocks below each row's layer once, for all rows; at ``"query"`` the few-shot prefix
before the question runs once (a cached KV prefix); at ``"last"`` only the last position runs per row.
Every pass carries one clean row, so a row's change is measured against the same computation path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Site, add, first_token_id, prompt_pass, score_tokens

if TYPE_CHECKING:
    from hopscope.methods.injection.memories import Memory, MemoryBank
    from hopscope.models.loaded import LoadedModel


@dataclass(frozen=True)
class Cell:
    """One (layer, strength) of the grid: ``grid="tau"`` (``step`` = tau, the seed's grid) or ``"rel"``
    (``step`` = injected norm / median residual norm at the layer; ``tau`` derived from it)."""

    layer: int
    grid: str
    step: float
    tau: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def make_cells(layers: Sequence[int], taus: Sequence[float], rel: Sequence[float] = (),
               resid_norm: Sequence[float] | None = None, gold_norm: Sequence[float] | None = None) -> list[Cell]:
    """Every layer with every tau and, given per-layer norms, every ``rel`` step."""
    cells = [Cell(int(l), "tau", float(t), float(t)) for l in layers for t in taus]
    if rel:
        if resid_norm is None or gold_norm is None:
            raise ValueError("rel steps need the residual and gold-memory norms per layer")
        cells += [Cell(int(l), "rel", float(r), float(r * resid_norm[l] / max(gold_norm[l], 1e-12)))
                  for l in layers for r in rel]
    return cells


@dataclass(frozen=True)
class Where:
    """Which positions of one fed prompt an injection covers: the pass's ``start`` and the site's position."""

    start: int
    position: object

    @classmethod
    def of(cls, positions: str, n_tokens: int, query_start: int) -> "Where":
        if positions == "all":
            return cls(0, None)
        if positions == "query":
            return cls(query_start, (query_start, n_tokens)) if query_start > 0 else cls(0, None)
        return cls(-1, -1)


def injected_logits(lm: "LoadedModel", prompt: str, layers: Sequence[int], vectors: torch.Tensor, where: Where,
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits ``(clean [vocab], injected [R, vocab])`` with ``vectors[i]`` added to ``attn_out``
    of ``layers[i]`` at the positions of ``where``."""
    rows = [[]] + [[add(Site(int(l), "attn_out", where.position), v)] for l, v in zip(layers, vectors)]
    logits = prompt_pass(lm, prompt, rows, start=where.start, batch_size=batch_size).logits.float().cpu()
    return logits[0], logits[1:]


def score_change(clean: torch.Tensor, logits: torch.Tensor, answer_id: int) -> dict[str, np.ndarray]:
    """p0 / logp0 (clean) and p1 / logp1 / rank1 of the answer after injection, % change and change in log p."""
    s0 = score_tokens(clean[None], [answer_id])
    s1 = score_tokens(logits, [answer_id] * logits.shape[0])
    p0, lp0 = float(s0["prob"][0]), float(s0["logprob"][0])
    p1, lp1 = s1["prob"].double().numpy(), s1["logprob"].double().numpy()
    return {"p0": np.full(len(p1), p0), "logp0": np.full(len(p1), lp0), "rank0": np.full(len(p1), int(s0["rank"][0])),
            "p1": p1, "logp1": lp1, "rank1": s1["rank"].numpy(),
            "change_pct": 100.0 * (p1 - p0) / max(p0, 1e-30), "dlogp": lp1 - lp0}


def injection_rows(lm: "LoadedModel", prompt: str, answer: str, cells: Sequence[Cell], memories: Sequence["Memory"],
                   bank: "MemoryBank", where: Where, batch_size: int = 256) -> pd.DataFrame:
    """One row per (cell, memory): the answer's first-token probability before and after ``tau * memory``."""
    if not cells or not memories:
        raise ValueError("injection needs at least one cell and one memory")
    aid = first_token_id(lm.tokenizer, answer)
    layers, vecs, meta = [], [], []
    for cell in cells:
        mat = bank.vectors(memories, cell.layer)
        for m, v in zip(memories, mat):
            layers.append(cell.layer)
            vecs.append(cell.tau * v)
            meta.append((cell.layer, cell.grid, cell.step, cell.tau, m.kind, m.index, m.text, len(m.ids)))
    clean, logits = injected_logits(lm, prompt, layers, torch.stack(vecs), where, batch_size)
    df = pd.DataFrame(meta, columns=["layer", "grid", "step", "tau", "memory_kind", "memory_index", "memory",
                                     "memory_tokens"])
    for k, v in score_change(clean, logits, aid).items():
        df[k] = v
    return df

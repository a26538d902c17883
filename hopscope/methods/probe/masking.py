"""Head masking (the paper's pruning analysis): accuracy with a fraction of heads masked, lowest-entropy
heads first versus random heads. A masked head's output is zeroed at every position through the engine
(what HF's ``head_mask`` does to the head's attention)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hopscope.engine import Site, zero_ablate

ORDERS = ("entropy_position", "entropy_rank")


def head_masks(heads: Sequence[tuple[int, int]]) -> list:
    """Engine interventions zeroing each head's output at every position."""
    return [zero_ablate(Site(layer, "head_out", position=None, head=head)) for layer, head in heads]


def heads_by(entropy: pd.DataFrame, column: str) -> list[tuple[int, int]]:
    """All heads, lowest ``column`` first (ties: earlier layer, then head)."""
    if column not in entropy:
        raise KeyError(f"entropy table has no column {column!r}; columns: {list(entropy.columns)}")
    ordered = entropy.sort_values([column, "layer", "head"], kind="stable")
    return [(int(r.layer), int(r.head)) for r in ordered.itertuples()]


def plans(entropy: pd.DataFrame, n_random: int, seed: int) -> list[dict]:
    """One masking order per strategy: ``lowest_<order>`` for each entropy, ``random`` (``n_random`` repeats)."""
    heads = [(int(r.layer), int(r.head)) for r in entropy.sort_values(["layer", "head"]).itertuples()]
    out = [dict(strategy=f"lowest_{o}", repeat=0, heads=heads_by(entropy, o)) for o in ORDERS]
    rng = np.random.default_rng(seed)
    for rep in range(n_random):
        out.append(dict(strategy="random", repeat=rep, heads=[heads[i] for i in rng.permutation(len(heads))]))
    return out


def n_masked(fraction: float, total: int) -> int:
    return int(round(fraction * total))

"""Accuracy with attention heads masked: lowest-entropy heads first versus random heads."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hopscope.engine import Site, run, zero_ablate

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def target_token_ids(tokenizer, targets: Sequence[str]) -> np.ndarray:
    """First token id of each target (e.g. ``" 42"``); a ValueError names a target with no tokens."""
    from hopscope.train.last_token import target_ids

    return target_ids(tokenizer, targets).numpy()


def head_masks(heads: Sequence[tuple[int, int]]) -> list:
    """Engine interventions zeroing each head's output at every position."""
    return [zero_ablate(Site(layer, "head_out", position=None, head=head)) for layer, head in heads]


def predictions(m, prompts: Sequence[str], heads: Sequence[tuple[int, int]] = (), *,
                batch_size: int = 128) -> np.ndarray:
    """Top-1 next-token id at the last position of each prompt, with ``heads`` masked."""
    ivs = head_masks(heads)
    res = run(m, list(prompts), [ivs] * len(prompts) if ivs else None, last_only=True, batch_size=batch_size)
    return res.logits.argmax(-1).cpu().numpy()


def accuracy(m, prompts: Sequence[str], target_ids: np.ndarray, heads: Sequence[tuple[int, int]] = (), *,
             batch_size: int = 128) -> float:
    """Share of prompts whose top-1 next token is the target, with ``heads`` masked."""
    return float((predictions(m, prompts, heads, batch_size=batch_size) == np.asarray(target_ids)).mean())


def heads_by(entropy: pd.DataFrame, column: str) -> list[tuple[int, int]]:
    """All heads, lowest ``column`` first (ties: earlier layer, then head)."""
    if column not in entropy:
        raise KeyError(f"entropy table has no column {column!r}; columns: {list(entropy.columns)}")
    ordered = entropy.sort_values([column, "layer", "head"], kind="stable")
    return [(int(r.layer), int(r.head)) for r in ordered.itertuples()]


def masking_curve(
    m,
    prompts: Sequence[str],
    targets: Sequence[str],
    entropy: pd.DataFrame,
    *,
    fractions: Sequence[float] = FRACTIONS,
    orders: Sequence[str] = ("entropy_position", "entropy_rank"),
    n_random: int = 3,
    seed: int = 0,
    batch_size: int = 128,
) -> pd.DataFrame:
    """Accuracy after masking a fraction of heads: ``lowest_<order>`` strategies mask the lowest-entropy
    heads first; ``random`` masks a random set (``n_random`` repeats). Fraction 0 is the intact model.

    Columns: ``strategy, repeat, fraction, n_masked, accuracy``.
    """
    ids = target_token_ids(m.tokenizer, targets)
    all_heads = [(int(r.layer), int(r.head)) for r in entropy.itertuples()]
    total = len(all_heads)
    rng = np.random.default_rng(seed)
    plans: list[tuple[str, int, list[tuple[int, int]]]] = []
    for order in orders:
        if order in entropy:
            plans.append((f"lowest_{order}", 0, heads_by(entropy, order)))
    for rep in range(n_random):
        perm = rng.permutation(total)
        plans.append(("random", rep, [all_heads[i] for i in perm]))
    base = accuracy(m, prompts, ids, batch_size=batch_size)
    rows = []
    for strategy, rep, ranking in plans:
        rows.append(dict(strategy=strategy, repeat=rep, fraction=0.0, n_masked=0, accuracy=base))
        for f in fractions:
            n = int(round(f * total))
            rows.append(dict(strategy=strategy, repeat=rep, fraction=float(f), n_masked=n,
                             accuracy=accuracy(m, prompts, ids, ranking[:n], batch_size=batch_size)))
    return pd.DataFrame(rows)

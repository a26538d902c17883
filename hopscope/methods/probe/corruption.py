"""Rewrite one useful or one noise number of a k-th smallest list and see how the model's answer moves."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hopscope.data.kth_smallest import KthExample
from hopscope.methods.probe.masking import predictions, target_token_ids

BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _rewrite(ex: KthExample, position: int, pool: np.ndarray, rng: np.random.Generator) -> KthExample | None:
    """Replace the number at ``position`` by a pool value larger than the answer (and than the old value):
    a noise number stays noise (the answer is kept); a useful number becomes noise (the answer moves)."""
    choices = pool[(pool > ex.answer) & (pool != ex.numbers[position])]
    if len(choices) == 0:
        return None
    return ex.corrupted(position, int(rng.choice(choices)))


def corruption_table(
    m,
    examples: Sequence[KthExample],
    pool: Sequence[int],
    useful_score: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    batch_size: int = 128,
) -> pd.DataFrame:
    """One row per (list, kind): a random useful (``kind='useful'``) and a random noise number are
    rewritten. ``probe_score`` is the probe's (out-of-fold) probability that the rewritten number is
    useful; ``correct_before``/``correct_after`` compare the prediction with the gold answer of the
    original/rewritten list; ``kept_answer``: the prediction after equals the original answer."""
    rng = np.random.default_rng(seed)
    pool_arr = np.asarray(sorted(pool))
    originals, corrupted, meta = [], [], []
    for i, ex in enumerate(examples):
        for kind, flag in (("useful", True), ("noise", False)):
            cands = [j for j, u in enumerate(ex.useful) if u == flag]
            if not cands:
                continue
            j = int(rng.choice(cands))
            new = _rewrite(ex, j, pool_arr, rng)
            if new is None:
                continue
            originals.append(ex)
            corrupted.append(new)
            meta.append(dict(list_id=i, kind=kind, position=j, probe_score=float(useful_score[i][j]),
                             old_value=ex.numbers[j], new_value=new.numbers[j], answer_before=ex.answer,
                             answer_after=new.answer))
    if not meta:
        return pd.DataFrame(columns=["list_id", "kind", "position", "probe_score", "correct_before",
                                     "correct_after", "kept_answer"])
    used = sorted({d["list_id"] for d in meta})
    before = dict(zip(used, predictions(m, [examples[i].prompt for i in used], batch_size=batch_size)))
    pred_before = np.array([before[d["list_id"]] for d in meta])
    pred_after = predictions(m, [e.prompt for e in corrupted], batch_size=batch_size)
    gold_before = target_token_ids(m.tokenizer, [e.target for e in originals])
    gold_after = target_token_ids(m.tokenizer, [e.target for e in corrupted])
    df = pd.DataFrame(meta)
    df["correct_before"] = pred_before == gold_before
    df["correct_after"] = pred_after == gold_after
    df["kept_answer"] = pred_after == gold_before
    return df


def bin_by_probe_score(table: pd.DataFrame, bins: Sequence[float] = BINS) -> pd.DataFrame:
    """Per (kind, probe-score bin): count, accuracy before and after the rewrite, their change, and the
    share of predictions that kept the original answer."""
    if table.empty:
        return pd.DataFrame(columns=["kind", "score_bin", "n", "acc_before", "acc_after", "delta", "kept_answer"])
    t = table.assign(score_bin=pd.cut(table["probe_score"], list(bins), include_lowest=True).astype(str))
    out = (t.groupby(["kind", "score_bin"], observed=True)
           .agg(n=("list_id", "size"), acc_before=("correct_before", "mean"), acc_after=("correct_after", "mean"),
                kept_answer=("kept_answer", "mean"))
           .reset_index())
    out["delta"] = out["acc_after"] - out["acc_before"]
    return out[["kind", "score_bin", "n", "acc_before", "acc_after", "delta", "kept_answer"]]

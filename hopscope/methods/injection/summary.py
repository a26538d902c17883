"""Summaries of injection rows: the seed's outlier-trimmed mean beside mean, median and share improved, and the
choice of the best cell.

The seed's figures average the % change after ``reject_outliers(data, cutoff=99)``, which keeps the values
strictly below the 99th percentile (numpy's linear interpolation): :func:`trimmed_mean`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hopscope.methods.injection.settings import CRITERIA


def trimmed_mean(values: Sequence[float] | np.ndarray, percentile: float = 99.0) -> float:
    """Mean of the values strictly below their ``percentile``-th percentile (the seed's ``reject_outliers``).

    With every value equal nothing is strictly below the percentile; then the plain mean is returned.
    """
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan")
    kept = arr[arr < np.percentile(arr, percentile)]
    return float(kept.mean()) if kept.size else float(arr.mean())


def summarize(rows: pd.DataFrame, by: Sequence[str], percentile: float = 99.0) -> pd.DataFrame:
    """Per group: rows, prompts, mean p0 / p1, mean, trimmed mean and median % change, share improved
    (p1 > p0), mean and median change in log p."""
    by = [c for c in by if c in rows.columns]
    out = []
    for key, g in rows.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        pct = g["change_pct"].to_numpy(dtype=float)
        out.append({**dict(zip(by, key)), "n": len(g), "n_prompts": g["qid"].nunique(),
                    "p0": float(g["p0"].mean()), "p1": float(g["p1"].mean()),
                    "mean_pct": float(np.mean(pct)), "trimmed_mean_pct": trimmed_mean(pct, percentile),
                    "median_pct": float(np.median(pct)), "share_improved": float((g["p1"] > g["p0"]).mean()),
                    "mean_dlogp": float(g["dlogp"].mean()), "median_dlogp": float(g["dlogp"].median())})
    return pd.DataFrame(out)


CELL_KEYS = ("grid", "layer", "step", "tau")


def best_cell(grid_rows: pd.DataFrame, criterion: str, percentile: float = 99.0) -> dict[str, object]:
    """The cell whose gold-memory rows have the highest ``criterion`` (ties: the earliest cell in grid order)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    gold = grid_rows[grid_rows["memory_kind"] == "gold"]
    if gold.empty:
        raise ValueError("no gold-memory rows in the grid")
    summ = summarize(gold, CELL_KEYS, percentile)
    order = summ.sort_values(criterion, ascending=False, kind="stable")
    top = order.iloc[0]
    return {"grid": str(top["grid"]), "layer": int(top["layer"]), "step": float(top["step"]),
            "tau": float(top["tau"]), "criterion": criterion, "value": float(top[criterion])}


def per_prompt(rows: pd.DataFrame, value: str = "change_pct") -> pd.DataFrame:
    """``[qid x memory kind]``: the median of ``value`` over each kind's memories for each prompt."""
    return rows.groupby(["qid", "memory_kind"])[value].median().unstack("memory_kind")

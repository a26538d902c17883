"""Holm's step-down correction for a family of p-values (the claims of one report)."""

from __future__ import annotations

import numpy as np


def holm(p_values: object) -> np.ndarray:
    """Holm-adjusted p-values, in the input order.

    Sort the m finite p-values ascending; the i-th (1-based) becomes max over j <= i of
    min(1, (m - j + 1) * p_(j)). NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="mergesort")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out

"""Seeded bootstrap percentile intervals over units (queries, prompts), and sample-size planning.

Every function resamples *units* with replacement: pass one value per unit (a query's fix flag, a
prompt's change). Paired variants resample the pair (treated[i], control[i]) together, so the
interval reflects the paired design. The same (values, seed, n_resamples) always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats as _sp

N_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # resample matrices are built in blocks of about this many cells

Stat = Callable[..., object]


class Interval(NamedTuple):
    """A confidence interval; unpacks as ``low, high``."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


def as_array(values: object, name: str = "values") -> np.ndarray:
    """A 1-D float array (bools become 0/1); a clear error for anything else."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per unit (1-D), got shape {arr.shape}")
    return arr


def _apply(stat: Stat, samples: np.ndarray) -> np.ndarray:
    """``stat`` over the last axis of a [resamples, n] block (vectorised when ``stat`` takes ``axis``)."""
    try:
        out = np.asarray(stat(samples, axis=-1), dtype=float)
        if out.shape == samples.shape[:-1]:
            return out
    except TypeError:
        pass
    return np.asarray([float(stat(row)) for row in samples.reshape(-1, samples.shape[-1])],
                      dtype=float).reshape(samples.shape[:-1])


def _replicates(arrays: list[np.ndarray], combine: Callable[[list[np.ndarray]], np.ndarray],
                n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples`` bootstrap replicates; all arrays share the resampled unit indices (pairing)."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    block = max(1, _CHUNK_CELLS // max(n, 1))
    out = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = combine([a[idx] for a in arrays])
    return out


def _percentile(replicates: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return Interval(math.nan, math.nan)
    alpha = 1.0 - level
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return Interval(float(low), float(high))


def bootstrap_ci(values: object, stat: Stat = np.mean, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> Interval:
    """Percentile bootstrap interval of ``stat`` over units; NaN bounds when there are no values."""
    arr = as_array(values)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Interval(math.nan, math.nan)
    reps = _replicates([arr], lambda s: _apply(stat, s[0]), n_resamples, seed)
    return _percentile(reps, level)


def paired_bootstrap_ci(treated: object, control: object, stat: Stat = np.mean,
                        n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of ``stat(treated) - stat(control)``, resampling the pairs (same units in both)."""
    a, b = paired_arrays(treated, control)
    if a.size == 0:
        return Interval(math.nan, math.nan)
    reps = _replicates([a, b], lambda s: _apply(stat, s[0]) - _apply(stat, s[1]), n_resamples, seed)
    return _percentile(reps, level)


def two_sample_bootstrap_ci(a: object, b: object, stat: Stat = np.mean, n_resamples: int = N_RESAMPLES,
                            seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of ``stat(a) - stat(b)`` for two independent samples (each resampled on its own)."""
    x, y = as_array(a, "a"), as_array(b, "b")
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return Interval(math.nan, math.nan)
    rx = _replicates([x], lambda s: _apply(stat, s[0]), n_resamples, seed)
    ry = _replicates([y], lambda s: _apply(stat, s[0]), n_resamples, seed + 1)
    return _percentile(rx - ry, level)


def paired_arrays(treated: object, control: object) -> tuple[np.ndarray, np.ndarray]:
    """Two aligned arrays, dropping pairs where either side is missing."""
    a, b = as_array(treated, "treated"), as_array(control, "control")
    if a.shape != b.shape:
        raise ValueError(f"paired data need one control per unit: {a.size} treated vs {b.size} control values")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> Interval:
    """Exact binomial interval for k successes in n trials (used where the bootstrap degenerates)."""
    if n <= 0:
        return Interval(math.nan, math.nan)
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(_sp.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(_sp.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(low, high)


def n_for_width(n: int, width: float, target: float) -> int | None:
    """Units needed for an interval of width ``target``, given width ``width`` at ``n`` units.

    Interval widths shrink as 1/sqrt(n), so n' = ceil(n * (width / target)**2). None when n is 0 or a
    width is not positive and finite (nothing to extrapolate from).
    """
    if n <= 0 or not (math.isfinite(width) and math.isfinite(target)) or width <= 0 or target <= 0:
        return None
    return int(math.ceil(n * (width / target) ** 2 - 1e-9))


def n_to_halve(n: int) -> int | None:
    """Units that make a sqrt(n)-shrinking interval half as wide: 4n (None for n = 0)."""
    return 4 * int(n) if n > 0 else None

"""Paired and permutation tests, each returning a :class:`TestResult` with a two-sided p-value.

- :func:`mcnemar_exact`: paired binary outcomes (a query fixed by the treatment vs by the control);
- :func:`wilcoxon_signed_rank`: paired continuous changes (a prompt's % change under two memories);
- :func:`sign_flip_test`: a mean against a null value (exact over all sign flips for n <= 14);
- :func:`permutation_pvalue`: an observed statistic against null samples (e.g. random-init models);
- :func:`permutation_test`: two independent samples, by permuting the group labels;
- :func:`binomial_test`: a rate against a null rate.
Degenerate inputs (nothing to compare) give p = 1 (or NaN for no data) and say why in ``detail``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sp

from .bootstrap import paired_arrays, as_array

N_PERMUTATIONS = 9999
EXACT_SIGN_FLIP_MAX_N = 14
ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class TestResult:
    """A test's name, statistic, p-value and a one-line description of what it counted."""

    __test__ = False  # not a pytest class

    name: str
    statistic: float
    p_value: float
    detail: str = ""


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def mcnemar_exact(treated: object, control: object) -> TestResult:
    """Exact McNemar test: among discordant pairs, are 'treated only' (b) and 'control only' (c) 50/50?

    p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]); p = 1 with no discordant pairs.
    """
    a, c_arr = paired_arrays(treated, control)
    t, k = a.astype(bool), c_arr.astype(bool)
    b = int(np.sum(t & ~k))
    c = int(np.sum(~t & k))
    detail = f"{b} units positive only with the treatment, {c} only with the control"
    if b + c == 0:
        return TestResult("McNemar exact", 0.0, 1.0 if a.size else math.nan,
                          "no discordant pairs" if a.size else "n=0")
    p = min(1.0, 2.0 * float(_sp.binom.cdf(min(b, c), b + c, 0.5)))
    return TestResult("McNemar exact", float(min(b, c)), p, detail)


def wilcoxon_signed_rank(treated: object, control: object | None = None) -> TestResult:
    """Wilcoxon signed-rank test of treated - control (or of ``treated`` alone) around zero.

    Zero differences are dropped (Wilcoxon's convention); scipy's exact distribution is used for
    small samples without ties, the normal approximation otherwise. Statistic: W+ (sum of positive ranks).
    """
    if control is None:
        d = as_array(treated, "differences")
        d = d[np.isfinite(d)]
    else:
        a, b = paired_arrays(treated, control)
        d = a - b
    nonzero = d[d != 0]
    if d.size == 0:
        return TestResult("Wilcoxon signed-rank", math.nan, math.nan, "n=0")
    if nonzero.size == 0:
        return TestResult("Wilcoxon signed-rank", 0.0, 1.0, "all differences are zero")
    ranks = _sp.rankdata(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    res = _sp.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    detail = f"{int((nonzero > 0).sum())} positive, {int((nonzero < 0).sum())} negative, {d.size - nonzero.size} zero"
    return TestResult("Wilcoxon signed-rank", w_plus, float(res.pvalue), detail)


def sign_flip_test(values: object, null: float = 0.0, n_permutations: int = N_PERMUTATIONS,
                   seed: int = 0) -> TestResult:
    """Permutation test of mean(values) = ``null``: flip the sign of each (value - null) at random.

    Exact (all 2^n flips, p = share with |mean| >= observed) for n <= 14, otherwise ``n_permutations``
    seeded random flips with p = (1 + count) / (1 + n_permutations).
    """
    d = as_array(values) - float(null)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return TestResult("sign-flip permutation", math.nan, math.nan, "n=0")
    observed = abs(float(d.mean()))
    if not np.any(d != 0):
        return TestResult("sign-flip permutation", 0.0, 1.0, "all values equal the null value")
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        means = np.abs(signs @ d) / d.size
        p = float(np.mean(means >= observed - tol))
        return TestResult("sign-flip permutation (exact)", observed, p, f"all {len(signs)} sign flips")
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_permutations, d.size))
    count = int(np.sum(np.abs(signs @ d) / d.size >= observed - tol))
    return TestResult("sign-flip permutation", observed, (1 + count) / (1 + n_permutations),
                      f"{n_permutations} random sign flips")


def permutation_pvalue(observed: float, null_samples: object, alternative: str = "two-sided") -> float:
    """p-value of ``observed`` among samples of the statistic under the null.

    greater: (1 + #{null >= observed}) / (m + 1); less: the same with <=; two-sided: twice the
    smaller one, at most 1. NaN with no null samples.
    """
    _check_alternative(alternative)
    null = as_array(null_samples, "null_samples")
    null = null[np.isfinite(null)]
    if null.size == 0 or not math.isfinite(observed):
        return math.nan
    tol = 1e-12 * max(1.0, abs(observed))
    greater = (1 + int(np.sum(null >= observed - tol))) / (null.size + 1)
    less = (1 + int(np.sum(null <= observed + tol))) / (null.size + 1)
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    return min(1.0, 2.0 * min(greater, less))


def _mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1) - y.mean(axis=-1)


def permutation_test(a: object, b: object,
                     stat: Callable[[np.ndarray, np.ndarray], np.ndarray] = _mean_difference,
                     n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                     alternative: str = "two-sided") -> TestResult:
    """Two-sample permutation test: shuffle the group labels of the pooled units.

    ``stat(x, y)`` works on the last axis of [k, n] blocks (default: difference in means).
    """
    _check_alternative(alternative)
    x, y = as_array(a, "a"), as_array(b, "b")
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return TestResult("label permutation", math.nan, math.nan, "n=0")
    observed = float(np.asarray(stat(x[None, :], y[None, :])).reshape(-1)[0])
    pool = np.concatenate([x, y])
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // pool.size)
    null = np.empty(n_permutations, dtype=float)
    for start in range(0, n_permutations, block):
        stop = min(n_permutations, start + block)
        shuffled = rng.permuted(np.broadcast_to(pool, (stop - start, pool.size)), axis=1)
        null[start:stop] = np.asarray(stat(shuffled[:, : x.size], shuffled[:, x.size:]), dtype=float)
    p = permutation_pvalue(observed, null, alternative)
    return TestResult("label permutation", observed, p, f"{n_permutations} label shuffles of {x.size} + {y.size} units")


def binomial_test(k: int, n: int, null: float, alternative: str = "two-sided") -> TestResult:
    """Exact binomial test of k successes in n trials against the rate ``null``."""
    _check_alternative(alternative)
    if not 0.0 <= null <= 1.0:
        raise ValueError(f"a null rate must be in [0, 1], got {null}")
    if n <= 0:
        return TestResult("binomial exact", math.nan, math.nan, "n=0")
    p = float(_sp.binomtest(int(k), int(n), float(null), alternative=alternative).pvalue)
    return TestResult("binomial exact", float(k), p, f"{k} of {n} against rate {null:g}")

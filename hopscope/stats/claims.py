"""Claims as data: one row per claim a paper makes, measured on this model against a control.

Every builder takes the labels as keyword arguments (``id, analysis, statement, paper, paper_value,
measure, control_label, direction``), measures on one value per unit, and returns a :class:`Claim`
whose verdict follows :data:`hopscope.stats.verdict.VERDICT_RULE` (with Holm over this one claim;
:func:`apply_holm` redoes it across a report's claims).

    rate_vs_control   paired binary outcomes vs a paired control (exact McNemar), or vs a null rate
    paired_change     paired continuous changes vs a control (Wilcoxon signed-rank, median difference)
    mean_vs_zero      a mean vs zero (or ``null``) (sign-flip permutation test)
    share_vs          a share of units vs a null share (exact binomial)
    scores_vs_permutation  an observed score vs samples of it under a null (permutation p-value)

For paired designs the measure is the *difference* treated - control, so the control value is 0;
the control's own rate or median is written into the ``control`` label and the ``note``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import (
    LEVEL,
    N_RESAMPLES,
    Interval,
    paired_arrays,
    as_array,
    bootstrap_ci,
    clopper_pearson,
    n_to_halve,
    paired_bootstrap_ci,
)
from .holm import holm
from .significance import (
    binomial_test,
    mcnemar_exact,
    permutation_pvalue,
    sign_flip_test,
    wilcoxon_signed_rank,
)
from .verdict import check_direction, verdict

CLAIM_COLUMNS = [
    "id", "analysis", "statement", "paper", "paper_value", "measure", "value", "low", "high", "n",
    "control", "control_value", "test", "p_value", "p_holm", "direction", "verdict", "n_to_halve", "note",
]
_TEXT = ("id", "analysis", "statement", "paper", "paper_value", "measure", "control", "test", "direction",
         "verdict", "note")
_FLOAT = ("value", "low", "high", "control_value", "p_value", "p_holm")


@dataclass
class Claim:
    """One claim row (the fields of :data:`CLAIM_COLUMNS`, in order) plus the resamples used."""

    id: str
    analysis: str
    statement: str
    paper: str
    paper_value: str
    measure: str
    value: float
    low: float
    high: float
    n: int
    control: str
    control_value: float
    test: str
    p_value: float
    p_holm: float
    direction: str
    verdict: str
    n_to_halve: int | None
    note: str
    n_resamples: int = N_RESAMPLES

    def row(self) -> dict[str, Any]:
        """The claim as a dict of CLAIM_COLUMNS."""
        data = asdict(self)
        return {k: data[k] for k in CLAIM_COLUMNS}


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _paper_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _make(*, id: str, analysis: str, statement: str, paper: str, paper_value: Any, measure: str,
          value: float, interval: Interval, n: int, control: str, control_value: float, test: str,
          p_value: float, direction: str, note: str, n_resamples: int) -> Claim:
    if not isinstance(id, str) or not id.strip():
        raise ValueError("a claim needs a non-empty id")
    if not isinstance(analysis, str) or not analysis.strip():
        raise ValueError(f"claim {id!r} needs the analysis that tests it")
    check_direction(direction)
    value, low, high = float(value), float(interval.low), float(interval.high)
    notes = [] if n else ["n=0"]
    if note:
        notes.append(note)
    return Claim(
        id=id, analysis=analysis, statement=statement, paper=paper, paper_value=_paper_value(paper_value),
        measure=measure, value=value, low=low, high=high, n=int(n), control=control,
        control_value=float(control_value), test=test, p_value=float(p_value), p_holm=float(p_value),
        direction=direction, verdict=verdict(value, low, high, control_value, direction, p_value),
        n_to_halve=n_to_halve(int(n)), note="; ".join(notes), n_resamples=int(n_resamples),
    )


def _binary(values: object, name: str) -> np.ndarray:
    arr = as_array(values, name)
    finite = arr[np.isfinite(arr)]
    if not np.all((finite == 0) | (finite == 1)):
        raise ValueError(f"{name} must be binary (True/False or 0/1 per unit)")
    return arr


def _rate_vs_null(flags: np.ndarray, null: float, n_resamples: int, seed: int, level: float
                  ) -> tuple[float, Interval, int, str, float, str]:
    flags = flags[np.isfinite(flags)]
    n, k = int(flags.size), int(flags.sum())
    if n == 0:
        return math.nan, Interval(math.nan, math.nan), 0, "binomial exact", math.nan, ""
    rate = k / n
    interval = bootstrap_ci(flags, np.mean, n_resamples, seed, level)
    note = f"{k} of {n} units"
    if k in (0, n):
        interval = clopper_pearson(k, n, level)
        note += "; all outcomes equal, so the exact Clopper-Pearson interval replaces the zero-width bootstrap"
    test = binomial_test(k, n, null)
    return rate, interval, n, test.name, test.p_value, note


def rate_vs_control(id: str, outcome: object, control: object | None = None, *, null: float | None = None,
                    analysis: str, statement: str, paper: str = "", paper_value: Any = "",
                    measure: str = "rate", control_label: str = "", direction: str = "greater",
                    n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Claim:
    """A per-unit binary outcome's rate, against a paired control (exact McNemar; value = rate
    difference, interval by paired bootstrap) or against a null rate (exact binomial test)."""
    labels = dict(id=id, analysis=analysis, statement=statement, paper=paper, paper_value=paper_value,
                  direction=direction, n_resamples=n_resamples)
    treated = _binary(outcome, "outcome")
    if control is not None:
        a, b = paired_arrays(treated, _binary(control, "control"))
        n = int(a.size)
        test = mcnemar_exact(a, b)
        if n == 0:
            value, interval, note = math.nan, Interval(math.nan, math.nan), ""
            label = control_label or "control"
        else:
            value = float(a.mean() - b.mean())
            interval = paired_bootstrap_ci(a, b, np.mean, n_resamples, seed, level)
            note = f"rate {_fmt(float(a.mean()))} vs {_fmt(float(b.mean()))} for the control; {test.detail}"
            label = f"{control_label or 'control'} (rate {_fmt(float(b.mean()))})"
        return _make(**labels, measure=f"{measure}, minus the control's (paired)", value=value, interval=interval,
                     n=n, control=label, control_value=0.0, test=test.name, p_value=test.p_value, note=note)
    if null is None:
        raise ValueError(f"claim {id!r}: rate_vs_control needs a paired control or a null rate")
    rate, interval, n, test_name, p, note = _rate_vs_null(treated, float(null), n_resamples, seed, level)
    return _make(**labels, measure=measure, value=rate, interval=interval, n=n,
                 control=control_label or f"null rate {float(null):g}", control_value=float(null),
                 test=test_name, p_value=p, note=note)


def share_vs(id: str, flags: object, *, null: float = 0.5, analysis: str, statement: str, paper: str = "",
             paper_value: Any = "", measure: str = "share of units", control_label: str = "",
             direction: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
             level: float = LEVEL) -> Claim:
    """The share of units with a property, against a null share (exact binomial test)."""
    rate, interval, n, test_name, p, note = _rate_vs_null(_binary(flags, "flags"), float(null),
                                                          n_resamples, seed, level)
    return _make(id=id, analysis=analysis, statement=statement, paper=paper, paper_value=paper_value,
                 measure=measure, value=rate, interval=interval, n=n,
                 control=control_label or f"share {float(null):g}", control_value=float(null), test=test_name,
                 p_value=p, direction=direction, note=note, n_resamples=n_resamples)


def paired_change(id: str, treated: object, control: object, *, analysis: str, statement: str,
                  paper: str = "", paper_value: Any = "", measure: str = "change", control_label: str = "",
                  direction: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> Claim:
    """Per-unit treated vs control values: median of the differences, its bootstrap interval, and the
    Wilcoxon signed-rank test of the differences."""
    a, b = paired_arrays(treated, control)
    d = a - b
    test = wilcoxon_signed_rank(d)
    n = int(d.size)
    if n == 0:
        value, interval, note, label = math.nan, Interval(math.nan, math.nan), "", control_label or "control"
    else:
        value = float(np.median(d))
        interval = bootstrap_ci(d, np.median, n_resamples, seed, level)
        note = (f"median {_fmt(float(np.median(a)))} vs {_fmt(float(np.median(b)))} for the control; "
                f"{float(np.mean(d > 0)):.0%} of units higher with the treatment; {test.detail}")
        if np.all(d == d[0]):
            note += "; all differences are equal (zero-width interval)"
        label = f"{control_label or 'control'} (median {_fmt(float(np.median(b)))})"
    return _make(id=id, analysis=analysis, statement=statement, paper=paper, paper_value=paper_value,
                 measure=f"{measure}: median difference from the control (paired)", value=value,
                 interval=interval, n=n, control=label, control_value=0.0, test=test.name,
                 p_value=test.p_value, direction=direction, note=note, n_resamples=n_resamples)


def mean_vs_zero(id: str, values: object, *, null: float = 0.0, analysis: str, statement: str,
                 paper: str = "", paper_value: Any = "", measure: str = "mean", control_label: str = "",
                 direction: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> Claim:
    """The mean of per-unit values against zero (or ``null``): bootstrap interval, sign-flip test."""
    arr = as_array(values)
    arr = arr[np.isfinite(arr)]
    test = sign_flip_test(arr, null, seed=seed)
    n = int(arr.size)
    value = float(arr.mean()) if n else math.nan
    interval = bootstrap_ci(arr, np.mean, n_resamples, seed, level)
    note = ""
    if n:
        note = f"median {_fmt(float(np.median(arr)))}; {test.detail}"
        if np.all(arr == arr[0]):
            note += "; all values are equal (zero-width interval)"
    return _make(id=id, analysis=analysis, statement=statement, paper=paper, paper_value=paper_value,
                 measure=measure, value=value, interval=interval, n=n,
                 control=control_label or ("zero" if float(null) == 0 else f"{float(null):g}"),
                 control_value=float(null), test=test.name, p_value=test.p_value, direction=direction,
                 note=note, n_resamples=n_resamples)


def scores_vs_permutation(id: str, observed: float, null_samples: object, *,
                          observed_samples: object | None = None, n_units: int | None = None,
                          analysis: str, statement: str, paper: str = "", paper_value: Any = "",
                          measure: str = "score", control_label: str = "", direction: str = "greater",
                          level: float = LEVEL, n_resamples: int = N_RESAMPLES) -> Claim:
    """An observed score against m samples of it under a null (permuted labels, random-init models).

    Control value: the null samples' mean; p: two-sided permutation p-value. Interval: the percentile
    interval of ``observed_samples`` (e.g. bootstrap replicates of the score) when given, otherwise the
    observed score shifted by the null's own 95% spread (the score is assumed as noisy as its null).
    ``n``: ``n_units`` (the units the score was computed on) when given, else the number of null samples.
    """
    null = as_array(null_samples, "null_samples")
    null = null[np.isfinite(null)]
    m = int(null.size)
    obs = float(observed)
    alpha = 1.0 - level
    notes = []
    if m == 0 or not math.isfinite(obs):
        interval, control_value, p = Interval(math.nan, math.nan), math.nan, math.nan
        notes.append("no null samples" if m == 0 else "no observed score")
    else:
        control_value = float(null.mean())
        p = permutation_pvalue(obs, null)
        if observed_samples is not None:
            reps = as_array(observed_samples, "observed_samples")
            reps = reps[np.isfinite(reps)]
            lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if reps.size else (math.nan, math.nan)
            interval = Interval(float(lo), float(hi))
            notes.append(f"interval from {reps.size} replicates of the observed score")
        else:
            q_lo, q_hi = np.quantile(null, [alpha / 2, 1 - alpha / 2])
            interval = Interval(obs - (float(q_hi) - control_value), obs + (control_value - float(q_lo)))
            notes.append("interval: the observed score plus the null samples' 95% spread around their mean")
        notes.append(f"{m} null samples (null mean {_fmt(control_value)}); the smallest possible p is "
                     f"{_fmt(2.0 / (m + 1))}")
    n = int(n_units) if n_units is not None else m
    return _make(id=id, analysis=analysis, statement=statement, paper=paper, paper_value=paper_value,
                 measure=measure, value=obs, interval=interval, n=n,
                 control=control_label or "permutation null", control_value=control_value,
                 test=f"permutation ({m} null samples)", p_value=p, direction=direction,
                 note="; ".join(notes), n_resamples=n_resamples)


# ---- frames --------------------------------------------------------------------------------------------
def empty_claims() -> pd.DataFrame:
    """A claims frame with no rows and the right columns and dtypes."""
    return _typed(pd.DataFrame({c: [] for c in CLAIM_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for column in _TEXT:
        df[column] = df[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                    else str(v)).astype(object)
    for column in _FLOAT:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["n"] = pd.to_numeric(df["n"], errors="coerce").fillna(0).astype("int64")
    df["n_to_halve"] = pd.to_numeric(df["n_to_halve"], errors="coerce").astype("Int64")
    return df[CLAIM_COLUMNS].reset_index(drop=True)


def claims_frame(claims: Iterable[Claim | Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Claims as a DataFrame with exactly CLAIM_COLUMNS (one row each, ids unique).

    ``df.attrs["n_resamples"]`` records the bootstrap resamples the claims used (RunFolder.write_claims
    writes it to config.json).
    """
    if isinstance(claims, pd.DataFrame):
        df, resamples = claims, claims.attrs.get("n_resamples")
    else:
        items = list(claims)
        rows = [c.row() if isinstance(c, Claim) else dict(c) for c in items]
        df = pd.DataFrame(rows, columns=CLAIM_COLUMNS) if rows else pd.DataFrame({c: [] for c in CLAIM_COLUMNS})
        found = sorted({c.n_resamples for c in items if isinstance(c, Claim)})
        resamples = found[0] if len(found) == 1 else (found or None)
    missing = [c for c in CLAIM_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"claims lack the columns {missing}")
    df = _typed(df)
    duplicated = sorted(set(df["id"][df["id"].duplicated()]))
    if duplicated:
        raise ValueError(f"claim ids must be unique in one report; repeated: {duplicated}")
    if resamples is not None:
        df.attrs["n_resamples"] = resamples
    return df


def apply_holm(frame: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjust ``p_value`` across all rows into ``p_holm`` and redo each verdict with it."""
    df = claims_frame(frame)
    df["p_holm"] = holm(df["p_value"].to_numpy(dtype=float))
    df["verdict"] = [verdict(r.value, r.low, r.high, r.control_value, r.direction, r.p_holm)
                     for r in df.itertuples(index=False)]
    if "n_resamples" in frame.attrs:
        df.attrs["n_resamples"] = frame.attrs["n_resamples"]
    return df


def verdict_counts(frame: pd.DataFrame) -> dict[str, int]:
    """How many claims have each verdict (every verdict named, zeros included)."""
    counts = frame["verdict"].value_counts() if len(frame) else pd.Series(dtype=int)
    return {v: int(counts.get(v, 0)) for v in ("supported", "contradicted", "inconclusive")}


def concat_claims(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several claims frames as one (ids must stay unique), Holm applied across all of them."""
    frames = [claims_frame(f) for f in frames if f is not None and len(f)]
    if not frames:
        return empty_claims()
    resamples = sorted({f.attrs["n_resamples"] for f in frames if isinstance(f.attrs.get("n_resamples"), int)})
    merged = apply_holm(pd.concat(frames, ignore_index=True))
    if resamples:
        merged.attrs["n_resamples"] = resamples[0] if len(resamples) == 1 else resamples
    return merged

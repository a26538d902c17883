"""The verdict rule, fixed before any result is seen, and its one-line explanation per claim."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .bootstrap import LEVEL

ALPHA = 0.05
__all__ = ["ALPHA", "DIRECTIONS", "LEVEL", "VERDICTS", "VERDICT_RULE", "interval_verdict", "verdict", "verdict_reason"]
VERDICTS = ("supported", "contradicted", "inconclusive")
DIRECTIONS = ("greater", "less")

VERDICT_RULE = (
    "Verdict rule, fixed before the results: supported = the estimate lies on the paper's side of the "
    "control value and its 95% bootstrap interval excludes the control value; contradicted = the 95% interval "
    "lies entirely on the other side of the control value; inconclusive = neither. Supported and contradicted "
    "also need the claim's test to agree: its Holm-adjusted p-value (Holm across all claims of this report) "
    "must be below 0.05, otherwise the claim is inconclusive. For an inconclusive claim, 'n to halve' is the "
    "number of units (queries, prompts) that would make its interval half as wide (4n: widths shrink as 1/sqrt(n))."
)


def _finite(*values: Any) -> bool:
    try:
        return all(v is not None and math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'greater' or 'less' (the paper's direction), got {direction!r}")
    return direction


def interval_verdict(value: float, low: float, high: float, control_value: float, direction: str) -> str:
    """The contract's rule on the interval alone (no test)."""
    check_direction(direction)
    if not _finite(value, low, high, control_value):
        return "inconclusive"
    sign = 1.0 if direction == "greater" else -1.0
    v, lo, hi, c = sign * value, sign * low, sign * high, sign * control_value
    lo, hi = min(lo, hi), max(lo, hi)
    if v > c and lo > c:
        return "supported"
    if hi < c:
        return "contradicted"
    return "inconclusive"


def verdict(value: float, low: float, high: float, control_value: float, direction: str,
            p: float | None = None, alpha: float = ALPHA) -> str:
    """supported / contradicted / inconclusive by :data:`VERDICT_RULE`.

    ``p`` is the (Holm-adjusted) p-value of the claim's test; a supported or contradicted interval
    with p >= alpha becomes inconclusive. With ``p`` None or NaN only the interval decides.
    """
    result = interval_verdict(value, low, high, control_value, direction)
    if result != "inconclusive" and _finite(p) and float(p) >= alpha:
        return "inconclusive"
    return result


def _num(value: Any) -> str:
    return f"{float(value):.3g}" if _finite(value) else "n/a"


def verdict_reason(claim: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """Why a claim row got its verdict, in one sentence (for the report)."""
    n = claim.get("n")
    if not n:
        return "No units were measured (n=0)."
    value, low, high = claim.get("value"), claim.get("low"), claim.get("high")
    control_value, direction = claim.get("control_value"), claim.get("direction", "greater")
    if not _finite(value, low, high, control_value):
        return "No interval could be computed, so no verdict."
    p = claim.get("p_holm")
    if not _finite(p):
        p = claim.get("p_value")
    side = "above" if direction == "greater" else "below"
    other = "below" if direction == "greater" else "above"
    where = f"The 95% interval [{_num(low)}, {_num(high)}]"
    by_interval = interval_verdict(value, low, high, control_value, direction)
    p_text = f"Holm-adjusted p = {_num(p)}" if _finite(p) else "no test p-value"
    if by_interval == "supported":
        if _finite(p) and float(p) >= alpha:
            return f"{where} lies {side} the control value {_num(control_value)}, but {p_text} ≥ {alpha:g}."
        return f"{where} lies {side} the control value {_num(control_value)} (the paper's direction); {p_text}."
    if by_interval == "contradicted":
        if _finite(p) and float(p) >= alpha:
            return f"{where} lies {other} the control value {_num(control_value)}, but {p_text} ≥ {alpha:g}."
        return f"{where} lies {other} the control value {_num(control_value)}, against the paper; {p_text}."
    halve = claim.get("n_to_halve")
    more = f" About {int(halve):,} units would halve its width." if _finite(halve) else ""
    lo, hi = sorted((float(low), float(high)))
    if lo <= float(control_value) <= hi:
        return f"{where} contains the control value {_num(control_value)}.{more}"
    return f"The estimate {_num(value)} is not {side} the control value {_num(control_value)}.{more}"

"""Human-readable numbers, durations and times for the report and the CLI."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any


def number(value: Any) -> str:
    """Integers as is (no separators: they are often ids), floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def headline_number(value: Any) -> str:
    """Headline values: integers with thousands separators, floats to 3 significant digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float) and not math.isnan(value) and 1e-3 <= abs(value) < 1e6:
        return f"{value:.3g}"
    return number(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def timestamp(iso: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (the timezone is dropped for display)."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(iso)

"""Headline numbers: each one a label, a value, its n and optionally an interval and a unit.

``add_section(headline=...)`` accepts
- ``{"oracle fix rate": 0.31}`` (the old form: label -> value; n unknown),
- ``[Headline(label, value, n, low, high, unit), ...]`` (hopscope.results.Headline or any object with
  those attributes), or the same as dicts with those keys,
- ``{"oracle fix rate": {"value": 0.31, "n": 200, "low": 0.25, "high": 0.37}}``.
Entries without a label or without a value (None, NaN, "") are dropped: no empty cards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from . import formatting
from .sections import cell

FIELDS = ("label", "value", "n", "low", "high", "unit")


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _record(item: Any, label: Any = None) -> dict[str, Any] | None:
    if isinstance(item, Mapping) and "value" in item:
        data = {k: item.get(k) for k in FIELDS}
    elif hasattr(item, "value") and hasattr(item, "label"):
        data = {k: getattr(item, k, None) for k in FIELDS}
    else:
        data = {"label": label, "value": item}
    if label is not None and not data.get("label"):
        data["label"] = label
    data = {k: cell(data.get(k)) for k in FIELDS}
    data["unit"] = data["unit"] or ""
    if _empty(data["label"]) or _empty(data["value"]):
        return None
    data["label"] = str(data["label"]).strip()
    if data["n"] is not None:
        try:
            data["n"] = int(data["n"])
        except (TypeError, ValueError):
            data["n"] = None
    return data


def normalize(headline: Mapping[str, Any] | Iterable[Any] | None) -> list[dict[str, Any]]:
    """Headline entries as a list of dicts with the keys of :data:`FIELDS` (empty ones dropped)."""
    if headline is None:
        return []
    if isinstance(headline, Mapping):
        items = [_record(v, label=k) for k, v in headline.items()]
    else:
        items = [_record(v) for v in headline]
    return [i for i in items if i is not None]


def as_dict(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """label -> value (what ``RunFolder.headline`` returns)."""
    return {e["label"]: e["value"] for e in entries}


def value_text(entry: Mapping[str, Any]) -> str:
    """'0.31 [0.25, 0.37]' (with the unit) for a card or a line of text."""
    text = formatting.headline_number(entry["value"])
    unit = entry.get("unit") or ""
    if unit:
        text += unit if unit in ("%", "×", "x") else f" {unit}"
    low, high = entry.get("low"), entry.get("high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        text += f" [{formatting.headline_number(low)}, {formatting.headline_number(high)}]"
    return text


def n_text(entry: Mapping[str, Any]) -> str:
    n = entry.get("n")
    return f"n = {n:,}" if isinstance(n, int) else ""

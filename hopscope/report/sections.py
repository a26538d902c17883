"""Report sections: what an analysis wants shown (text, figures, headline numbers, drill-down tables),
stored as JSON in the run folder so a resumed run or a later analysis can add to the same report."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

DEFAULT_MAX_ROWS = 50


def slug(text: str) -> str:
    """A lowercase identifier for anchors and file names."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out or "section"


def cell(value: Any) -> Any:
    """A JSON-friendly display value for one table cell (numbers stay numbers, the rest becomes text)."""
    if value is None:
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def snapshot(df: pd.DataFrame, max_rows: int = DEFAULT_MAX_ROWS) -> dict[str, Any]:
    """The first ``max_rows`` rows of a table, plus its total row count, as JSON-friendly data."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"section tables must be DataFrames or names of stored tables, got {type(df).__name__}")
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()
    head = df.head(max_rows)
    return {
        "columns": [str(c) for c in head.columns],
        "rows": [[cell(v) for v in row] for row in head.itertuples(index=False, name=None)],
        "n_rows": int(len(df)),
    }


def make_section(
    title: str,
    *,
    text: str = "",
    figures: list[str],
    tables: Mapping[str, pd.DataFrame | str] | None,
    headline: Any,
    analysis: str | None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> dict[str, Any]:
    """A section record; DataFrames are snapshotted, strings are references to stored tables, headline
    entries normalised (see :mod:`hopscope.report.headline`)."""
    from .headline import normalize
    if not isinstance(title, str) or not title.strip():
        raise ValueError("a section needs a non-empty title")
    table_records = []
    for name, value in (tables or {}).items():
        if isinstance(value, str):
            table_records.append({"name": str(name), "ref": value, "max_rows": max_rows})
        else:
            table_records.append({"name": str(name), "ref": None, **snapshot(value, max_rows)})
    return {
        "title": title.strip(),
        "id": slug(title),
        "analysis": analysis,
        "text": text or "",
        "figures": list(figures),
        "tables": table_records,
        "headline": normalize(headline),
    }

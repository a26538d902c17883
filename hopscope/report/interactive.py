"""Interactive figures: a Plotly spec (plain JSON: ``{"data": [...], "layout": {...}}``) travels with a
matplotlib Figure, is saved beside its PNG as ``figures/<name>.plotly.json`` and drawn in report.html by
plotly.js, which is inlined once per page from the ``plotly`` package (no network at view time). The PNG
stays in the page as the fallback when scripts do not run."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

SPEC_ATTR = "_hopscope_plotly"
SPEC_SUFFIX = ".plotly.json"


def attach(fig: Any, spec: dict[str, Any]) -> Any:
    """Give a matplotlib Figure an interactive twin (returned for chaining)."""
    if not isinstance(spec, dict) or "data" not in spec:
        raise ValueError("an interactive spec is a dict with 'data' (a list of Plotly traces) and 'layout'")
    setattr(fig, SPEC_ATTR, clean(spec))
    return fig


def spec_of(fig: Any) -> dict[str, Any] | None:
    return getattr(fig, SPEC_ATTR, None)


def clean(value: Any) -> Any:
    """JSON-safe data: arrays to lists, numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def script_json(spec: Any) -> str:
    """JSON to put inside a <script> element (no '</' that could close it)."""
    return json.dumps(clean(spec), ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


@lru_cache(maxsize=1)
def plotly_js() -> str | None:
    """plotly.min.js from the installed ``plotly`` package, or None when it is not installed."""
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None


def axis(title: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Plotly axis with a title."""
    out: dict[str, Any] = {"automargin": True, **extra}
    if title:
        out["title"] = {"text": title}
    return out


def layout(title: str = "", **extra: Any) -> dict[str, Any]:
    """A plain white Plotly layout."""
    out: dict[str, Any] = {"paper_bgcolor": "white", "plot_bgcolor": "white",
                           "margin": {"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
                           "hovermode": "closest", "font": {"size": 12}, **extra}
    if title:
        out["title"] = {"text": title, "x": 0.01, "xanchor": "left"}  # left: clear of the tool bar
    return out


def reference_line(value: float, label: str, vertical: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A dashed reference line (e.g. the control value) and its label, as a Plotly shape and annotation."""
    line = {"dash": "dash", "color": "#666", "width": 1}
    if vertical:
        return ({"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": value, "x1": value, "line": line},
                {"x": value, "y": 1, "yref": "paper", "text": label, "showarrow": False, "yanchor": "bottom",
                 "font": {"size": 11, "color": "#555"}})
    return ({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": value, "y1": value, "line": line},
            {"x": 1, "xref": "paper", "y": value, "text": label, "showarrow": False, "xanchor": "right",
             "yanchor": "bottom", "font": {"size": 11, "color": "#555"}})


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]  # matplotlib's tab10, so the PNG and the live figure agree

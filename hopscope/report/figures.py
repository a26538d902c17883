"""Reusable plots for the analyses. Every function returns a ``matplotlib.figure.Figure`` built without
pyplot (no global state, rendered by Agg when saved): hand it to ``RunFolder.save_figure``.

``heatmap``, ``line_curves``, ``bar_chart``, ``points_plot`` and ``interval_plot`` also carry an
interactive Plotly twin (values on hover) that ``save_figure`` stores beside the PNG and report.html
draws; the PNG is the fallback. ``interactive(fig, spec)`` attaches a spec to any other Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hopscope.stats import bootstrap_ci

from .interactive import PALETTE, attach, reference_line
from .interactive import axis as _axis
from .interactive import layout as _layout

interactive = attach  # interactive(fig, {"data": [...], "layout": {...}}) -> fig

MAX_TICKS = 40


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    return fig, ax


def _tidy(ax: Axes, title: str, xlabel: str | None, ylabel: str | None) -> None:
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _ticks(n: int) -> np.ndarray:
    """Tick positions, thinned so that at most MAX_TICKS labels are drawn."""
    step = max(1, int(np.ceil(n / MAX_TICKS)))
    return np.arange(0, n, step)


def heatmap(
    matrix: Any,
    x_labels: Sequence[Any] | None = None,
    y_labels: Sequence[Any] | None = None,
    title: str = "",
    colorbar_label: str = "",
    *,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: str | None = None,
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    fmt: str = "{:.2f}",
) -> Figure:
    """A 2-D matrix as coloured cells (rows = y labels, columns = x labels).

    A DataFrame supplies its own labels. ``center`` (e.g. 0 for effects) gives a diverging map around
    it. Cells are annotated when ``annotate`` is True (default: when there are at most 150 cells).
    NaN cells are drawn in grey.
    """
    if isinstance(matrix, pd.DataFrame):
        x_labels = list(matrix.columns) if x_labels is None else x_labels
        y_labels = list(matrix.index) if y_labels is None else y_labels
        xlabel = xlabel if xlabel is not None else (matrix.columns.name or None)
        ylabel = ylabel if ylabel is not None else (matrix.index.name or None)
    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {data.shape}")
    n_rows, n_cols = data.shape
    for labels, n, axis in ((x_labels, n_cols, "x"), (y_labels, n_rows, "y")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"heatmap: {len(labels)} {axis} labels for {n} {'columns' if axis == 'x' else 'rows'}")
    fig, ax = _figure(min(14.0, max(5.0, 2.5 + 0.32 * n_cols)), min(12.0, max(3.5, 1.5 + 0.3 * n_rows)))
    colours = colormaps[cmap or ("RdBu_r" if center is not None else "viridis")].with_extremes(bad="#d0d0d0")
    norm = None
    if center is not None:
        finite = data[np.isfinite(data)]
        span = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        span = span or 1.0
        norm = TwoSlopeNorm(vcenter=center, vmin=vmin if vmin is not None else center - span,
                            vmax=vmax if vmax is not None else center + span)
        vmin = vmax = None
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=colours, norm=norm, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    if colorbar_label:
        bar.set_label(colorbar_label)
    for labels, n, set_ticks, set_labels in (
        (x_labels, n_cols, ax.set_xticks, ax.set_xticklabels),
        (y_labels, n_rows, ax.set_yticks, ax.set_yticklabels),
    ):
        positions = _ticks(n)
        set_ticks(positions)
        if labels is not None:
            set_labels([str(labels[i]) for i in positions])
    if x_labels is not None and max((len(str(s)) for s in x_labels), default=0) > 3:
        ax.tick_params(axis="x", labelrotation=60)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    if annotate or (annotate is None and data.size <= 150):
        for (i, j), value in np.ndenumerate(data):
            if np.isfinite(value):
                level = float(image.norm(value))
                dark = abs(level - 0.5) > 0.3 if center is not None else level < 0.5
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    _tidy(ax, title, xlabel, ylabel)
    xs = [str(v) for v in (x_labels if x_labels is not None else range(n_cols))]
    ys = [str(v) for v in (y_labels if y_labels is not None else range(n_rows))]
    trace: dict[str, Any] = {
        "type": "heatmap", "z": data, "x": xs, "y": ys, "colorscale": "RdBu" if center is not None else "Viridis",
        "reversescale": center is not None, "colorbar": {"title": {"text": colorbar_label}} if colorbar_label else {},
        "hovertemplate": f"{xlabel or 'x'}: %{{x}}<br>{ylabel or 'y'}: %{{y}}<br>"
                         f"{colorbar_label or 'value'}: %{{z:.4g}}<extra></extra>",
        "hoverongaps": False,
    }
    if center is not None:
        trace.update(zmid=center, zmin=norm.vmin, zmax=norm.vmax)
    elif vmin is not None or vmax is not None:
        trace.update(zmin=vmin, zmax=vmax)
    if annotate or (annotate is None and data.size <= 150):
        trace["texttemplate"] = "%{z:.2f}"
    return attach(fig, {"data": [trace], "layout": _layout(
        title, xaxis=_axis(xlabel, type="category"), yaxis=_axis(ylabel, type="category", autorange="reversed"),
        height=int(min(900, max(300, 120 + 22 * n_rows))))})


def line_curves(
    series: Mapping[str, Sequence[float]] | pd.DataFrame,
    x: Sequence[float] | None = None,
    title: str = "",
    xlabel: str = "layer",
    ylabel: str = "",
    *,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    hline: float | None = None,
    logy: bool = False,
    markers: bool = True,
) -> Figure:
    """Several named series over a shared x axis (layers by default), with optional shaded bands.

    ``series``: name -> values, or a DataFrame whose columns are the series and index the x values.
    ``bands``: name -> (low, high) arrays, e.g. a confidence interval, drawn in the series' colour.
    """
    if isinstance(series, pd.DataFrame):
        x = list(series.index) if x is None else x
        series = {str(c): series[c].to_numpy(dtype=float) for c in series.columns}
    if not series:
        raise ValueError("line_curves needs at least one series")
    fig, ax = _figure(7.5, 4.2)
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        xs = np.arange(len(values)) if x is None else np.asarray(x)
        if len(xs) != len(values):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(xs)} x positions")
        colour = f"C{i % 10}"
        ax.plot(xs, values, label=str(name), color=colour, marker="o" if markers and len(values) <= 60 else None,
                markersize=3.5, linewidth=1.6)
        if bands and name in bands:
            low, high = bands[name]
            ax.fill_between(xs, np.asarray(low, dtype=float), np.asarray(high, dtype=float), color=colour,
                            alpha=0.18, linewidth=0)
    if x is None or _all_integers(x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if hline is not None:
        ax.axhline(hline, color="0.4", linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=9, loc="best")
    _tidy(ax, title, xlabel, ylabel)
    traces: list[dict[str, Any]] = []
    for i, (name, values) in enumerate(series.items()):
        xs = np.arange(len(values)) if x is None else np.asarray(x)
        colour = PALETTE[i % 10]
        if bands and name in bands:
            low, high = (np.asarray(b, dtype=float) for b in bands[name])
            traces.append({"type": "scatter", "x": list(xs) + list(xs[::-1]), "y": list(low) + list(high[::-1]),
                           "fill": "toself", "fillcolor": colour, "opacity": 0.18, "line": {"width": 0},
                           "hoverinfo": "skip", "showlegend": False, "legendgroup": str(name)})
        traces.append({"type": "scatter", "mode": "lines+markers" if markers else "lines", "name": str(name),
                       "x": xs, "y": np.asarray(values, dtype=float), "line": {"color": colour},
                       "legendgroup": str(name), "marker": {"size": 5},
                       "hovertemplate": f"{name}<br>{xlabel or 'x'}: %{{x}}<br>{ylabel or 'value'}: %{{y:.4g}}"
                                        "<extra></extra>"})
    shapes = [] if hline is None else [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": hline,
                                        "y1": hline, "line": {"dash": "dash", "color": "#666", "width": 1}}]
    return attach(fig, {"data": traces, "layout": _layout(
        title, xaxis=_axis(xlabel), yaxis=_axis(ylabel, type="log" if logy else "linear"), shapes=shapes,
        showlegend=len(series) > 1)})


def _all_integers(values: Sequence[Any]) -> bool:
    try:
        return bool(np.all(np.mod(np.asarray(values, dtype=float), 1) == 0))
    except (TypeError, ValueError):  # categorical x values
        return False


def box_by_group(
    data: Mapping[str, Sequence[float]] | pd.DataFrame,
    value: str | None = None,
    by: str | None = None,
    title: str = "",
    ylabel: str = "",
    *,
    xlabel: str | None = None,
    order: Sequence[Any] | None = None,
    show_points: bool = True,
) -> Figure:
    """Box plots of a value per group: ``{group: values}``, or a tidy DataFrame with ``value`` and ``by``.

    With ``show_points`` the individual values are overlaid (jittered, seeded), useful for small groups.
    """
    if isinstance(data, pd.DataFrame):
        if value is None or by is None:
            raise ValueError("box_by_group with a DataFrame needs value= and by= column names")
        groups = {k: g[value].dropna().to_numpy(dtype=float) for k, g in data.groupby(by, sort=True)}
        xlabel = xlabel if xlabel is not None else by
        ylabel = ylabel or value
    else:
        groups = {k: np.asarray(v, dtype=float) for k, v in data.items()}
    if order is not None:
        missing = [g for g in order if g not in groups]
        if missing:
            raise ValueError(f"box_by_group: groups {missing} not in the data")
        groups = {g: groups[g] for g in order}
    if not groups:
        raise ValueError("box_by_group needs at least one group")
    names = [str(k) for k in groups]
    fig, ax = _figure(min(14.0, max(5.0, 1.5 + 0.9 * len(names))), 4.2)
    values = [v[np.isfinite(v)] for v in groups.values()]
    ax.boxplot(values, tick_labels=names, showfliers=not show_points, patch_artist=True,
               boxprops={"facecolor": "#cfe0f3", "edgecolor": "#2b5d8a"}, medianprops={"color": "#c0392b"})
    if show_points:
        rng = np.random.default_rng(0)
        for i, v in enumerate(values, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=8, color="0.25", alpha=0.55, zorder=3)
    if max(len(n) for n in names) > 8:
        ax.tick_params(axis="x", labelrotation=30)
    ax.grid(True, axis="y", alpha=0.3)
    _tidy(ax, title, xlabel, ylabel)
    return fig


def bar_chart(
    values: Mapping[str, float] | pd.Series,
    title: str = "",
    ylabel: str = "",
    *,
    xlabel: str | None = None,
    errors: Mapping[str, float] | Sequence[float] | None = None,
    horizontal: bool = False,
    annotate: bool = True,
    fmt: str = "{:.3g}",
) -> Figure:
    """One bar per named value, optional error bars, values written on the bars."""
    if isinstance(values, pd.Series):
        values = {str(k): float(v) for k, v in values.items()}
    if not values:
        raise ValueError("bar_chart needs at least one value")
    names = [str(k) for k in values]
    heights = np.asarray(list(values.values()), dtype=float)
    err = None
    if errors is not None:
        err = np.asarray([errors[k] for k in values] if isinstance(errors, Mapping) else errors, dtype=float)
    n = len(names)
    if horizontal:
        fig, ax = _figure(7.0, min(12.0, max(2.5, 0.9 + 0.35 * n)))
        bars = ax.barh(names, heights, xerr=err, color=[f"C{i % 10}" for i in range(n)], capsize=3)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
        _tidy(ax, title, ylabel, xlabel)
    else:
        fig, ax = _figure(min(14.0, max(4.5, 1.5 + 0.7 * n)), 4.2)
        bars = ax.bar(names, heights, yerr=err, color=[f"C{i % 10}" for i in range(n)], capsize=3)
        if max(len(s) for s in names) > 8:
            ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.3)
        _tidy(ax, title, xlabel, ylabel)
    if annotate and n <= 40:
        ax.bar_label(bars, labels=[fmt.format(h) for h in heights], padding=2, fontsize=8)
    trace: dict[str, Any] = {"type": "bar", "x": heights if horizontal else names, "y": names if horizontal else heights,
                             "orientation": "h" if horizontal else "v", "marker": {"color": [PALETTE[i % 10]
                                                                                            for i in range(n)]}}
    if err is not None:
        trace["error_x" if horizontal else "error_y"] = {"type": "data", "array": err, "visible": True}
    value_axis = "x" if horizontal else "y"
    trace["hovertemplate"] = f"%{{{'y' if horizontal else 'x'}}}: %{{{value_axis}:.4g}}<extra></extra>"
    return attach(fig, {"data": [trace], "layout": _layout(
        title, xaxis=_axis(ylabel if horizontal else xlabel), yaxis=_axis(
            xlabel if horizontal else ylabel, **({"autorange": "reversed"} if horizontal else {})))})


def points_plot(
    groups: Mapping[str, Sequence[float]],
    title: str = "",
    ylabel: str = "",
    *,
    ids: Mapping[str, Sequence[Any]] | None = None,
    reference: float | None = None,
    reference_label: str = "control",
    xlabel: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Figure:
    """Every unit's value as a point (jittered, seeded), per group, with the group mean and its 95%
    bootstrap interval as an error bar; ``reference`` draws a dashed line (e.g. the control value).
    ``ids`` (group -> unit ids, e.g. qids) are shown on hover in the live figure."""
    if not groups:
        raise ValueError("points_plot needs at least one group")
    names = [str(k) for k in groups]
    values = [np.asarray(v, dtype=float) for v in groups.values()]
    fig, ax = _figure(min(14.0, max(4.5, 1.8 + 1.1 * len(names))), 4.2)
    rng = np.random.default_rng(0)
    traces: list[dict[str, Any]] = []
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        keep = np.isfinite(v)
        jitter = rng.uniform(-0.15, 0.15, int(keep.sum()))
        ax.scatter(i + jitter, v[keep], s=9, color="0.35", alpha=0.5, zorder=2)
        unit_ids = [str(u) for u, k in zip(ids[name], keep, strict=True) if k] if ids and name in ids else None
        trace: dict[str, Any] = {"type": "scatter", "mode": "markers", "name": name, "x": i + jitter, "y": v[keep],
                                 "marker": {"color": "rgba(80,80,80,0.5)", "size": 6}, "showlegend": False}
        if unit_ids is not None:
            trace.update(text=unit_ids, hovertemplate=f"{name}<br>%{{text}}: %{{y:.4g}}<extra></extra>")
        else:
            trace["hovertemplate"] = f"{name}: %{{y:.4g}}<extra></extra>"
        traces.append(trace)
        if keep.any():
            mean = float(v[keep].mean())
            low, high = bootstrap_ci(v[keep], n_resamples=n_resamples, seed=seed)
            ax.errorbar([i + 0.32], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color=f"C{i % 10}",
                        capsize=4, markersize=6, zorder=3)
            traces.append({"type": "scatter", "mode": "markers", "x": [i + 0.32], "y": [mean], "showlegend": False,
                           "marker": {"color": PALETTE[i % 10], "size": 10},
                           "error_y": {"type": "data", "symmetric": False, "array": [high - mean],
                                       "arrayminus": [mean - low]},
                           "hovertemplate": f"{name}: mean %{{y:.4g}} [{low:.4g}, {high:.4g}], n = {int(keep.sum())}"
                                            "<extra></extra>"})
    shapes, notes = [], []
    if reference is not None:
        ax.axhline(reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
        ax.legend(frameon=False, fontsize=9)
        shape, note = reference_line(reference, reference_label)
        shapes, notes = [shape], [note]
    ax.set_xticks(range(len(names)), names)
    ax.grid(True, axis="y", alpha=0.3)
    _tidy(ax, title, xlabel, ylabel)
    return attach(fig, {"data": traces, "layout": _layout(
        title, shapes=shapes, annotations=notes,
        xaxis=_axis(xlabel, tickmode="array", tickvals=list(range(len(names))), ticktext=names,
                                         range=[-0.6, len(names) - 0.4], zeroline=False, showgrid=False),
        yaxis=_axis(ylabel))})


def interval_plot(
    rows: Sequence[Mapping[str, Any]],
    title: str = "",
    xlabel: str = "",
    *,
    reference: float | None = None,
    reference_label: str = "control",
) -> Figure:
    """A forest plot: one row per estimate (``label``, ``value``, ``low``, ``high``, optional ``n``) with its
    interval as a horizontal error bar; ``reference`` draws a dashed vertical line."""
    if not rows:
        raise ValueError("interval_plot needs at least one row")
    labels = [str(r["label"]) for r in rows]
    value = np.asarray([r["value"] for r in rows], dtype=float)
    low = np.asarray([r["low"] for r in rows], dtype=float)
    high = np.asarray([r["high"] for r in rows], dtype=float)
    fig, ax = _figure(7.5, min(10.0, max(2.0, 0.9 + 0.42 * len(rows))))
    y = np.arange(len(rows))
    ax.errorbar(value, y, xerr=[value - low, high - value], fmt="o", color="C0", capsize=4)
    if reference is not None:
        ax.axvline(reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
        ax.legend(frameon=False, fontsize=9, loc="best")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    _tidy(ax, title, xlabel, None)
    hover = [f"{lab}: %{{x:.4g}} [{lo:.4g}, {hi:.4g}]" + (f", n = {r['n']}" if r.get("n") is not None else "")
             for lab, lo, hi, r in zip(labels, low, high, rows, strict=True)]
    shapes, notes = [], []
    if reference is not None:
        shape, note = reference_line(reference, reference_label, vertical=True)
        shapes, notes = [shape], [note]
    trace = {"type": "scatter", "mode": "markers", "x": value, "y": labels, "marker": {"size": 9, "color": PALETTE[0]},
             "error_x": {"type": "data", "symmetric": False, "array": high - value, "arrayminus": value - low},
             "hovertemplate": [h + "<extra></extra>" for h in hover]}
    return attach(fig, {"data": [trace], "layout": _layout(
        title, shapes=shapes, annotations=notes, xaxis=_axis(xlabel, zeroline=False),
        yaxis=_axis(None, autorange="reversed", type="category"),
        height=int(min(800, max(220, 90 + 34 * len(rows)))))})

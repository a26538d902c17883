"""Figures of a probe study (matplotlib Figures built with hopscope.report.figures)."""

from __future__ import annotations

import pandas as pd

from hopscope.report.figures import heatmap, line_curves


def attention_figure(profile: pd.DataFrame, axis: str = "rank"):
    """Mean last-token attention per layer (columns) to each size rank / position (rows)."""
    t = profile[profile["axis"] == axis].pivot(index="index", columns="layer", values="attention")
    t.index = [f"{i + 1}" for i in t.index]
    t.columns = [f"L{c}" for c in t.columns]
    what = "size rank (1 = smallest)" if axis == "rank" else "position in the list"
    return heatmap(t, title=f"Mean attention from the last token by {what}", colorbar_label="attention",
                   xlabel="layer", ylabel=what, annotate=False)


def layerwise_figure(layerwise: pd.DataFrame, task: str):
    """Probe macro-F1 on the first l layers' features: trained model versus random init."""
    t = layerwise[layerwise["task"] == task].pivot(index="layers", columns="model", values="f1")
    names = {"useful": "useful vs noise", "step": "step (leaf vs root)"}
    return line_curves(t, title=f"Probe F1 by layers used: {names.get(task, task)}", xlabel="layers used",
                       ylabel="macro-F1")


def entropy_figure(entropy: pd.DataFrame, column: str):
    """Head entropy map (layers x heads)."""
    t = entropy.pivot(index="layer", columns="head", values=column)
    t.index = [f"L{i}" for i in t.index]
    t.columns = [f"H{h}" for h in t.columns]
    by = column.replace("entropy_", "")
    return heatmap(t, title=f"Normalised head entropy by {by}", colorbar_label="entropy / log n",
                   xlabel="head", ylabel="layer", vmin=0.0, vmax=1.0)


def masking_figure(curve: pd.DataFrame):
    """Accuracy against the fraction of heads masked, per strategy (random: mean over repeats, with range)."""
    g = curve.groupby(["strategy", "fraction"])["accuracy"]
    mean = g.mean().unstack("strategy")
    bands = None
    if "random" in mean:
        lo, hi = g.min().unstack("strategy")["random"], g.max().unstack("strategy")["random"]
        bands = {"random": (lo.to_numpy(), hi.to_numpy())}
    return line_curves(mean, title="Accuracy with heads masked", xlabel="fraction of heads masked",
                       ylabel="accuracy", bands=bands)

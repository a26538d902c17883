"""Figure helpers: each returns a Figure that renders to PNG; bad input gives a clear error."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from hopscope.report import bar_chart, box_by_group, heatmap, line_curves


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_heatmap_labels_colorbar_and_nan():
    matrix = np.arange(12.0).reshape(3, 4)
    matrix[0, 0] = np.nan
    fig = heatmap(matrix, ["a", "b", "c", "d"], ["x", "y", "z"], "effect", "Δ logprob", xlabel="layer")
    ax, bar = fig.axes
    assert ax.get_title() == "effect" and bar.get_ylabel() == "Δ logprob" and ax.get_xlabel() == "layer"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert len(ax.texts) == 11  # annotated, NaN cell left blank
    assert png(fig)[:4] == b"\x89PNG"


def test_heatmap_from_dataframe_centered_and_many_ticks_thinned():
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(5, 100)),
                      index=pd.Index(range(5), name="source"), columns=pd.Index(range(100), name="target"))
    fig = heatmap(df, center=0.0)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "target" and ax.get_ylabel() == "source"
    assert len(ax.get_xticks()) <= 40 and not ax.texts
    norm = ax.images[0].norm
    assert norm.vcenter == 0.0 and norm.vmin == -norm.vmax
    with pytest.raises(ValueError, match="labels"):
        heatmap(np.zeros((2, 3)), x_labels=["a"])
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros(3))


def test_line_curves_series_and_bands():
    fig = line_curves({"subject": [0.1, 0.5, 0.9], "relation": [0.2, 0.2, 0.1]}, title="drop", ylabel="Δp",
                      bands={"subject": ([0.0, 0.4, 0.8], [0.2, 0.6, 1.0])}, hline=0.0)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()][:2] == ["subject", "relation"]
    assert ax.get_xlabel() == "layer" and len(ax.collections) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["subject", "relation"]
    df = pd.DataFrame({"a": [1.0, 2.0]}, index=[10, 20])
    assert list(line_curves(df).axes[0].get_lines()[0].get_xdata()) == [10, 20]
    with pytest.raises(ValueError, match="x positions"):
        line_curves({"a": [1, 2]}, x=[0, 1, 2])
    png(fig)


def test_box_by_group_from_mapping_and_tidy_frame():
    fig = box_by_group({"right": [1, 2, 3], "wrong": [2, 5]}, title="rank", ylabel="rank")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["right", "wrong"]
    df = pd.DataFrame({"group": ["b", "a", "a"], "v": [1.0, 2.0, 3.0]})
    fig = box_by_group(df, value="v", by="group", order=["b", "a"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"] and ax.get_ylabel() == "v"
    with pytest.raises(ValueError, match="value= and by="):
        box_by_group(df)
    with pytest.raises(ValueError, match="not in the data"):
        box_by_group(df, value="v", by="group", order=["c"])
    png(fig)


def test_bar_chart_values_errors_and_labels():
    fig = bar_chart(pd.Series({"oracle": 0.31, "random": 0.05}), title="fix rate", ylabel="fraction",
                    errors={"oracle": 0.02, "random": 0.01})
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.31, 0.05])
    assert [t.get_text() for t in ax.texts] == ["0.31", "0.05"]
    fig_h = bar_chart({"a": 1.0, "b": 2.0}, horizontal=True)
    assert [p.get_width() for p in fig_h.axes[0].patches] == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError):
        bar_chart({})
    png(fig)
    png(fig_h)


# ---- interactive twins -------------------------------------------------------------------------------
def test_heatmap_carries_its_values_and_labels_for_hover():
    from hopscope.report.interactive import spec_of

    matrix = np.arange(6.0).reshape(2, 3)
    matrix[1, 2] = np.nan
    spec = spec_of(heatmap(matrix, ["a", "b", "c"], ["x", "y"], "effect", "Δ logprob", xlabel="layer", center=0.0))
    trace = spec["data"][0]
    assert trace["type"] == "heatmap" and trace["x"] == ["a", "b", "c"] and trace["y"] == ["x", "y"]
    assert trace["z"] == [[0.0, 1.0, 2.0], [3.0, 4.0, None]]          # NaN becomes JSON null
    assert "layer: %{x}" in trace["hovertemplate"] and "Δ logprob: %{z:.4g}" in trace["hovertemplate"]
    assert trace["zmid"] == 0.0 and trace["zmin"] == -trace["zmax"]
    assert spec["layout"]["yaxis"]["autorange"] == "reversed"          # row 0 on top, as in the PNG


def test_points_and_interval_plots_show_means_with_bootstrap_intervals():
    from hopscope.report import interval_plot, points_plot
    from hopscope.report.interactive import spec_of
    from hopscope.stats import bootstrap_ci

    values = {"oracle": [1, 0, 1, 1, 0, 1], "random": [0, 0, 1, 0, 0, 0]}
    spec = spec_of(points_plot(values, ids={"oracle": list("abcdef"), "random": list("ghijkl")}, reference=0.5))
    means = [t for t in spec["data"] if "error_y" in t]
    low, high = bootstrap_ci(values["oracle"])
    assert means[0]["y"] == [pytest.approx(4 / 6)]
    assert means[0]["error_y"]["array"][0] == pytest.approx(high - 4 / 6)
    assert means[0]["error_y"]["arrayminus"][0] == pytest.approx(4 / 6 - low)
    assert spec["data"][0]["text"] == list("abcdef") and spec["layout"]["shapes"][0]["y0"] == 0.5
    fig = interval_plot([{"label": "m1", "value": 0.3, "low": 0.2, "high": 0.4, "n": 100},
                         {"label": "m2", "value": 0.1, "low": -0.1, "high": 0.2}], reference=0.0)
    trace = spec_of(fig)["data"][0]
    assert trace["y"] == ["m1", "m2"] and trace["error_x"]["array"] == pytest.approx([0.1, 0.1])
    assert "n = 100" in trace["hovertemplate"][0]
    png(fig)
    with pytest.raises(ValueError):
        interval_plot([])


def test_save_figure_writes_the_spec_beside_the_png(tmp_path):
    import json

    from hopscope.report import RunFolder
    from hopscope.report.figures import interactive

    run = RunFolder.create("demo", out=tmp_path / "run")
    run.save_figure("h", heatmap(np.eye(2)))
    spec = json.loads((run.figures_dir / "h.plotly.json").read_text())
    assert spec["data"][0]["z"] == [[1.0, 0.0], [0.0, 1.0]]
    run.save_figure("h", box_by_group({"a": [1, 2]}))                  # no twin: the stale spec goes
    assert not (run.figures_dir / "h.plotly.json").exists()
    custom = interactive(box_by_group({"a": [1, 2]}), {"data": [{"type": "box", "y": [1, 2]}], "layout": {}})
    run.save_figure("c", custom)
    assert json.loads((run.figures_dir / "c.plotly.json").read_text())["data"][0]["type"] == "box"
    with pytest.raises(ValueError, match="spec"):
        interactive(box_by_group({"a": [1]}), {"layout": {}})

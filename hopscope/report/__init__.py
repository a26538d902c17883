"""Result store and HTML report: one folder per run (config, tidy Parquet tables, PNG figures with
interactive twins, claims.parquet, a self-contained report.html). Start with :class:`RunFolder`; plots
live in :mod:`hopscope.report.figures`; :func:`compare_runs` puts several runs' claims side by side."""

from .figures import bar_chart, box_by_group, heatmap, interval_plot, line_curves, points_plot
from .compare import compare_runs
from .html import render_report, write_report
from .run_folder import RunFolder
from .runs_index import describe_run, list_runs
from .tables import IncrementalTable, TableStore

__all__ = [
    "RunFolder",
    "IncrementalTable",
    "TableStore",
    "heatmap",
    "line_curves",
    "box_by_group",
    "bar_chart",
    "points_plot",
    "interval_plot",
    "compare_runs",
    "render_report",
    "write_report",
    "list_runs",
    "describe_run",
]


"""Result store and HTML report: one folder per run (config, tidy Parquet tables, PNG figures,
a self-contained report.html). Start with :class:`RunFolder`; plots live in
:mod:`hopscope.report.figures`."""

from .figures import bar_chart, box_by_group, heatmap, line_curves
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
    "render_report",
    "write_report",
    "list_runs",
    "describe_run",
]

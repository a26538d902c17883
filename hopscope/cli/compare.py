"""``hopscope compare RUN...``: the claims of several runs side by side in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import fail


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders with claims (e.g. one study per model).",
                                               metavar="RUN...")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (default: runs/compare-<timestamp>).")]
    = None,
) -> None:
    """One report with the claims tables of several runs side by side (one column per model), plus
    compare.parquet (one row per run and claim).

    Example: hopscope compare runs/study-smollm2 runs/study-qwen --out runs/compare-both
    """
    from hopscope.report.compare import compare_runs

    try:
        run = compare_runs(runs, out=out)
    except (ValueError, FileExistsError) as err:
        fail(str(err))
    typer.echo(str(run.report_path))


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the main CLI."""
    app.command("compare")(compare_command)

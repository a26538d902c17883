"""``hopscope runs list``, ``runs show`` and ``runs report``: look at past run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hopscope.cli.common import fail
from hopscope.report import layout
from hopscope.report.runs_index import describe_run, format_run, format_runs, list_runs

runs_app = typer.Typer(help="List and inspect run folders.", no_args_is_help=True)


@runs_app.command("list")
def list_command(
    root: Annotated[Path, typer.Option("--root", help="Folder holding run folders.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records instead of a table.")] = False,
) -> None:
    """Past runs under ROOT: folder, command, model, status, start time, duration (newest first).

    Example: hopscope runs list --root runs
    """
    if root.exists() and not root.is_dir():
        fail(f"--root {root} is a file, not a folder of run folders")
    if not root.is_dir():
        typer.echo(f"no runs: {root} does not exist", err=True)
        raise typer.Exit(0 if not as_json else 1)
    df = list_runs(root)
    if as_json:
        typer.echo(df.to_json(orient="records", indent=2))
    else:
        typer.echo(format_runs(df))


@runs_app.command("show")
def show_command(
    folder: Annotated[Path, typer.Argument(help="A run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """A run's config, headline numbers and tables with their row counts.

    Example: hopscope runs show runs/study-20250101-120000
    """
    if not layout.is_run_folder(folder):
        fail(f"{folder} is not a run folder (no {layout.CONFIG})")
    info = describe_run(folder)
    typer.echo(json.dumps(info, indent=2, default=str) if as_json else format_run(info))


@runs_app.command("report")
def report_command(folder: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """(Re)render FOLDER/report.html from what the folder holds now (e.g. after an interrupted run);
    a study first gathers its children's claims again.

    Example: hopscope runs report runs/study-20250101-120000
    """
    from hopscope.report.claims_store import gather_and_write
    from hopscope.report.html import write_report

    if not layout.is_run_folder(folder):
        fail(f"{folder} is not a run folder (no {layout.CONFIG})")
    config = layout.read_config(folder)
    if layout.children(folder, config):
        gather_and_write(folder, config)
        layout.write_json(folder / layout.CONFIG, config)
    typer.echo(str(write_report(folder)))


def register(app: typer.Typer) -> None:
    """Add the ``runs`` sub-app to the main CLI."""
    app.add_typer(runs_app, name="runs")

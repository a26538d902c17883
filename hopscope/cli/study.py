"""``hopscope study``: the main job, every analysis on one model into one report."""

from __future__ import annotations

from typing import List, Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ResumeOpt, SeedOpt, fail


def study(
    model: Optional[str] = ModelOpt,
    queries: int = typer.Option(6, "--queries", "-n", help="Two-hop queries per composition."),
    only: List[str] = typer.Option([], "--only", help="Run only these analyses (repeatable): "
                                   "knowledge, backpatch, inject, recall, probe."),
    relation: str = typer.Option("capital", "--relation", help="Single-hop relation of the recall analysis."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt,
) -> None:
    """Run a compact version of every analysis and write one run folder with one report."""
    from hopscope.study import ANALYSES, StudySettings, run_study

    settings = StudySettings(model=model, queries=queries, relation=relation, only=tuple(only) or ANALYSES,
                             seed=seed, device=device, dtype=dtype)
    try:
        run = run_study(settings, out=out, resume=resume, say=lambda m: typer.echo(m, err=True))
    except ValueError as err:
        fail(str(err))
    typer.echo(f"report: {run.report_path}")


def register(app: typer.Typer) -> None:
    app.command()(study)

"""``hopscope study``: the main job, every analysis on one model (or several) into one report."""

from __future__ import annotations

from typing import List, Optional

import typer

from hopscope.cli.common import (DeviceOpt, DtypeOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt, ThreadsOpt,
                                 configure, fail, user_errors)


def study(
    model: List[str] = typer.Option([], "--model", "-m", help="Model(s) to study (repeatable): embedded name, local HF "
                                    "folder, .gguf file, hub id or tiny-<family> (default: the embedded SmolLM2-135M)."),
    only: List[str] = typer.Option([], "--only", help="Run only these analyses (repeatable): hopping, injection, "
                                   "recall, probe, repair."),
    quick: bool = QuickOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Test each paper's claims on a model: every analysis at a size that can decide, one report.

    The report opens with the claims table (claim, paper, this model's value with its 95% interval and n,
    the control, the verdict); each analysis's detail follows. An interrupted study finishes with --resume.

    Example: hopscope study                       (the default model, about 15 minutes on 2 CPU cores)
    Example: hopscope study --quick --out runs/smoke
    Example: hopscope study --model smollm2-135m --model qwen2.5-coder-0.5b
    """
    from hopscope.study import ANALYSES, StudySettings, run_study

    configure(threads)
    if resume and out:
        fail("give either --out (a new run) or --resume (an interrupted one), not both")
    settings = StudySettings(models=tuple(model) or (None,), analyses=tuple(only) or ANALYSES, quick=quick, seed=seed,
                             device=device, dtype=dtype)
    with user_errors():
        path = run_study(settings, out=out, resume=resume, progress=progress, say=lambda m: typer.echo(m, err=True))
    typer.echo(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command()(study)

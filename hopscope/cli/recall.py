"""CLI: ``hopscope recall``: factual-recall mechanisms (Lv et al. 2024) on a world-facts relation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import (DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt,
                                 ThreadsOpt, configure, fail, load, user_errors)


def recall_cmd(
    relation: str = typer.Option("capital", help="World-facts relation: capital, continent, currency, language "
                                 "(or any hopscope.data relation name, e.g. country_demonym)."),
    shots: int = typer.Option(0, help="Demonstrations before each prompt (the paper: 0, and few-shot)."),
    n: Optional[int] = typer.Option(None, help="Prompts (most popular subjects first; default: all, or the "
                                    "--quick / --study size)."),
    heads: Optional[str] = typer.Option(None, help="Path-patch 'all' heads (the paper) or only 'candidates'."),
    patch_source: Optional[str] = typer.Option(None, help="'other_subject' (the paper) or 'mean' (mean ablation)."),
    study: bool = typer.Option(False, "--study", help="The size `hopscope study` uses (enough to decide the claims)."),
    quick: bool = QuickOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    out: Optional[Path] = OutOpt,
    resume: Optional[Path] = ResumeOpt,
    seed: int = SeedOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Subject-moving heads, the MLP that amplifies or erases them, final-layer suppression and its mitigation,
    with the paper's four claims tested (recall.movers, recall.mlp_gain, recall.suppression, recall.mitigation).

    Example: hopscope recall --relation capital --study --out runs/recall
    """
    from hopscope.methods.recall import Settings, run
    from hopscope.methods.recall.queries import relation_name
    from hopscope.report import RunFolder

    configure(threads)
    if quick and study:
        fail("choose one of --quick and --study")
    with user_errors():
        if resume is not None:  # the settings the run was started with
            settings = Settings(**RunFolder.open(resume).args)
        else:
            changes = {k: v for k, v in dict(relation=relation, shots=shots, n=n, heads=heads,
                                             patch_source=patch_source, seed=seed).items() if v is not None}
            relation_name(relation)
            settings = (Settings.quick(**changes) if quick else Settings.study(**changes) if study
                        else Settings(**changes))
    lm = load(model, device, dtype)
    with user_errors():
        folder = RunFolder.start("recall", settings.to_dict(), out=out, resume=resume, seed=settings.seed,
                                 quick=quick)
    with folder:
        with user_errors():
            result = run(lm, settings=settings, run_folder=folder, progress=progress)
    for c in result.claims.itertuples():
        typer.echo(f"{c.id}: {c.value:.3g} [{c.low:.3g}, {c.high:.3g}] n={c.n} -> {c.verdict}")
    typer.echo(f"report: {folder.report_path}")


def register(app: typer.Typer) -> None:
    """Add ``recall`` to the hopscope CLI."""
    app.command("recall")(recall_cmd)

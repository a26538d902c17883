"""CLI: ``hopscope repair``: repair policies chosen on training queries, scored on held-out queries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import (DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt,
                                 ThreadsOpt, configure, fail, load, user_errors)


def _names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def _records(data: Optional[Path]) -> Optional[list]:
    if data is None:
        return None
    from hopscope.data import Dataset

    if not data.is_file():
        raise FileNotFoundError(f"no dataset file {data}")
    records = list(Dataset.load(data).two_hop())
    if not records:
        raise ValueError(f"{data} holds no two-hop queries")
    return records


def repair_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="Two-hop dataset file (JSONL/CSV/Parquet); default: "
                                        "world facts built from --n and --compositions."),
    n: Optional[int] = typer.Option(None, "--n", help="World facts: queries per composition (default 1000, or the "
                                    "--quick / --study size)."),
    compositions: Optional[str] = typer.Option(None, "--compositions", help="World facts: comma-separated "
                                               "compositions (default: all)."),
    heldout: Optional[float] = typer.Option(None, "--heldout", help="Share of each knowledge group held out "
                                            "(split by bridge entity; default 0.5)."),
    families: Optional[str] = typer.Option(None, "--families", help="Policies to try: comma-separated of backpatch, "
                                           "injection, mitigation (default: all; no repair always runs)."),
    mitigation_from: Optional[str] = typer.Option(None, "--mitigation-from", help="'recall': the recall analysis "
                                                  "chooses the mitigation on its own prompts (default); 'train': "
                                                  "proposed and chosen on the training queries."),
    study: bool = typer.Option(False, "--study", help="The size `hopscope study` uses (about 3 minutes)."),
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
    """Choose each repair (a fixed back-patch, self-injection of the model's own first-hop answer, the recall
    analysis's final-layer mitigation) on training queries and score it on held-out queries that share no bridge
    entity: fix rate, break rate and net change in accuracy with 95% intervals, McNemar tests against no repair
    and against each policy's control, and the perplexity cost on plain text.

    Example: hopscope repair --study --out runs/repair
    """
    from dataclasses import replace

    from hopscope.methods.repair import Settings, run
    from hopscope.report import RunFolder

    configure(threads)
    if quick and study:
        fail("choose one of --quick and --study")
    if resume is not None and out is not None:
        fail("give either --out (a new run) or --resume (an interrupted one), not both")
    with user_errors():
        if resume is not None:  # the settings (and data file) the run was started with
            args = RunFolder.open(resume).args
            data = Path(args.pop("data")) if args.get("data") else None
            settings = Settings.from_dict(args)
        else:
            changes = {k: v for k, v in dict(heldout_fraction=heldout, families=_names(families),
                                             mitigation_from=mitigation_from, seed=seed).items() if v is not None}
            size = Settings.quick if quick else Settings.study if study else Settings
            settings = size(**changes)
            if n is not None or compositions is not None:
                k = settings.knowledge
                settings = replace(settings, knowledge=replace(
                    k, queries_per_composition=n if n is not None else k.queries_per_composition,
                    compositions=_names(compositions) if compositions is not None else k.compositions))
        records = _records(data)
        folder = RunFolder.start("repair", {**settings.to_dict(), "data": str(data) if data else None}, out=out,
                                 resume=resume, seed=settings.seed, quick=quick)
    with folder:
        lm = load(model, device, dtype)
        with user_errors():
            result = run(lm, records, settings, run_folder=folder, progress=progress)
    for r in result.tables["summary"].itertuples():
        typer.echo(f"{r.rank}. {r.policy} [{r.candidate}]: net {r.net:+.3f} [{r.net_low:+.3f}, {r.net_high:+.3f}] "
                   f"n={r.n}; fixed {r.fixed}/{r.n_incorrect}, broke {r.broke}/{r.n_correct}")
    for c in result.claims.itertuples():
        typer.echo(f"{c.id}: {c.value:+.3g} [{c.low:.3g}, {c.high:.3g}] n={c.n} -> {c.verdict}")
    typer.echo(f"report: {folder.report_path}")


def register(app: typer.Typer) -> None:
    """Add ``repair`` to the hopscope CLI."""
    app.command("repair")(repair_cmd)

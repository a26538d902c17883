"""CLI: ``hopscope recall`` — factual-recall mechanisms (Lv et al. 2024) on a world-facts relation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, SeedOpt, fail, load


def recall_cmd(
    relation: str = typer.Option("capital", help="World-facts relation: capital, continent, currency, language "
                                 "(or any hopscope.data relation name, e.g. country_demonym)."),
    shots: str = typer.Option("0,3", help="Comma-separated numbers of demonstrations; one analysis each."),
    n: int = typer.Option(30, help="Prompts per analysis (most popular subjects first)."),
    quick: bool = typer.Option(True, "--quick/--full", help="Quick: causal check of candidate heads only and "
                               "smaller cost sets; full: every head."),
    n_other: Optional[int] = typer.Option(None, help="Prompts per other relation for the mitigation's cost "
                                          "(default 10 quick, 30 full)."),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/recall-<timestamp>)."),
    seed: int = SeedOpt,
    progress: bool = typer.Option(False, help="Show progress bars."),
) -> None:
    """Subject-moving heads, MLP amplify/erase decomposition, final-layer suppression and its mitigation,
    zero-shot and few-shot, into one run folder (one child folder per number of shots)."""
    import pandas as pd

    from hopscope.methods.recall.queries import relation_name, relation_queries
    from hopscope.methods.recall.study import recall_study
    from hopscope.report import RunFolder

    try:
        relation_name(relation)
    except ValueError as err:
        fail(str(err))
    try:
        shot_list = [int(s) for s in shots.split(",") if s.strip()]
    except ValueError:
        fail(f"--shots must be comma-separated integers, got {shots!r}")
    if not shot_list or min(shot_list) < 0:
        fail("--shots needs at least one non-negative integer")
    if n < 2:
        fail("--n must be at least 2 (mean-ablation needs other subjects)")
    args = dict(relation=relation, shots=shot_list, n=n, n_other=n_other, model=model, quick=quick)
    run = RunFolder.create("recall", args, out=out, seed=seed)
    with run:
        lm = load(model, device, dtype)
        run.set_model(lm)
        rows = []
        for k in shot_list:
            queries = relation_queries(relation, n, shots=k, seed=seed)
            child = run.child(f"recall-{k}shot", dict(args, shots=k))
            child.set_model(lm)
            child.set_dataset(f"{relation}-{k}shot", queries)
            res = recall_study(lm, queries, child, quick=quick, seed=seed, n_other=n_other, title=f"{k}-shot",
                               progress=progress)
            child.finish()
            rows.append({"shots": k, **res.headline, "seconds": res.timings.get("total")})
            typer.echo(f"{k}-shot: " + "; ".join(f"{key} {_fmt(v)}" for key, v in res.headline.items()))
        table = pd.DataFrame(rows)
        run.write_table("summary", table)
        run.add_section(f"Factual recall: {relation}", text=(
            f"{n} prompts per setting about the most popular subjects (hopscope.data.build_single_hop, first "
            f"template); demonstrations drawn with seed {seed}. One row per number of demonstrations; each setting's "
            "sections follow."), tables={"summary": table})
    typer.echo(f"run folder: {run.path}")


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def register(app: typer.Typer) -> None:
    """Add ``recall`` to the hopscope CLI."""
    app.command("recall")(recall_cmd)

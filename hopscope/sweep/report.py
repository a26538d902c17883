"""The sweep's own report sections: what ran where (one row per job), and the claims across models.

Each job's child run folder keeps its analysis's own report; the sweep's page holds these sections above
every child's, and its claims.parquet gathers every child's claims (Holm across all of them).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from hopscope.report import RunFolder
from hopscope.report.compare import compare_runs
from hopscope.results import Headline

JOB_COLUMNS = ["folder", "model", "analysis", "dataset", "status", "shards", "computed", "reused", "retries",
               "seconds"]


def jobs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job: its folder, shards in its parts, computed this session, found finished, time."""
    return pd.DataFrame(records, columns=JOB_COLUMNS)


def write_overview(run: RunFolder, jobs: pd.DataFrame, *, executor: dict[str, Any], placement: dict[str, Any],
                   wall_s: float) -> None:
    """The "Sweep" section: the grid, where it ran, and the jobs table."""
    run.write_table("jobs", jobs)
    kind = executor.get("kind", "local")
    where = "in this process (local executor)" if kind == "local" else (
        f"on Ray: {executor.get('workers')} workers, each holding its own copy of the model "
        f"({executor.get('cpus_per_worker'):g} CPUs, {executor.get('gpus_per_worker') or 0:g} GPUs each)")
    place = ""
    if placement.get("device_map") is not None:
        place = (f" Models were placed with device_map={placement['device_map']!r}"
                 + (f", max_memory={placement['max_memory']}" if placement.get("max_memory") else "") + ".")
    n_models, n_analyses = jobs["model"].nunique(), jobs["analysis"].nunique()
    text = (f"{len(jobs)} jobs ({n_models} models x {n_analyses} analyses x {jobs['dataset'].nunique()} datasets), "
            f"run {where}.{place} Every job is its analysis's stages of pure, seeded shards; each finished shard "
            "is one Parquet part in the job's folder (parts/<stage>/<shard>), never recomputed, and a job's "
            "tables are its parts concatenated in shard order, equal to a single-process run.\n\n"
            "'computed' counts the shards this session ran, 'reused' the finished parts it found; 'retries' the "
            "shards run again because their worker died.")
    done = int((jobs["status"] == "done").sum())
    headline = [Headline("jobs done", done, n=len(jobs)),
                Headline("shards computed this session", float(jobs["computed"].sum())),
                Headline("finished shards reused", float(jobs["reused"].sum())),
                Headline("wall time this session", round(wall_s, 1), unit=" s")]
    if int(jobs["retries"].sum()):
        headline.append(Headline("shards retried after a worker died", float(jobs["retries"].sum())))
    run.add_section("Sweep", text=text, tables={"jobs": "jobs"}, headline=[h.to_dict() for h in headline])


def write_comparison(run: RunFolder, jobs: pd.DataFrame) -> list[Path]:
    """The "Claims across models" section, and one ``hopscope compare`` folder per (analysis, dataset) that
    ran on two or more models (``<sweep>/compare__<analysis>[__<dataset>]``); returns those folders."""
    rows, made = [], []
    for (analysis, dataset), group in jobs.groupby(["analysis", "dataset"], sort=False):
        with_claims = [(r.model, run.path / r.folder) for r in group.itertuples()
                       if len(RunFolder.open(run.path / r.folder).load_claims())]
        for model, folder in with_claims:
            for c in RunFolder.open(folder).load_claims().to_dict("records"):
                rows.append({"analysis": analysis, "dataset": dataset, "claim": c["id"], "statement": c["statement"],
                             "model": model, "estimate": _estimate(c), "verdict": c["verdict"]})
        if len(with_claims) >= 2:
            name = f"compare__{analysis}" + ("" if dataset == "default" else f"__{Path(str(dataset)).name}")
            target = run.path / name.replace("/", "_")
            if target.exists():
                shutil.rmtree(target)  # derived from the children: rebuilt from what they hold now
            compare_runs([f for _, f in with_claims], out=target)
            made.append(target)
    if not rows:
        return made
    long = pd.DataFrame(rows)
    long["cell"] = long["estimate"] + " " + long["verdict"].astype(str)
    wide = long.pivot_table(index=["analysis", "dataset", "claim", "statement"], columns="model", values="cell",
                            aggfunc="first", sort=False).reset_index()
    wide.columns.name = None
    links = "; ".join(f"{p.name}/report.html" for p in made)
    text = ("Each claim's estimate [95% interval] and verdict on every model of the sweep (supported: the paper's "
            "direction with the interval excluding the control; contradicted: the interval excludes the paper's "
            "direction; inconclusive otherwise)."
            + (f"\n\nOne interval figure per claim across the models: {links}." if made else ""))
    run.add_section("Claims across models", text=text, tables={"claims by model": wide})
    return made


def _estimate(c: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3g}"
    return f"{f(c.get('value'))} [{f(c.get('low'))}, {f(c.get('high'))}]"

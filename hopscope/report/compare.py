"""``hopscope compare``: the claims of several runs (one per model, say) side by side in one report.

    compare_runs(["runs/study-a", "runs/study-b"], out="runs/compare-x")  # -> the finished RunFolder

writes ``<out>/compare.parquet`` (one row per run and claim: run, model, quick, order and the claim
columns), one interval figure per claim across the runs, and ``<out>/report.html``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hopscope.stats import CLAIM_COLUMNS

from . import claims_store, layout
from .run_folder import RunFolder
from .sections import slug

COMPARE_COLUMNS = ["run", "model", "quick", "order", *CLAIM_COLUMNS]


def run_claims(folder: str | os.PathLike[str]) -> tuple[dict, pd.DataFrame]:
    """A run's config and claims; a one-line ValueError when it is not a run or has no claims."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if not layout.is_run_folder(folder):
        raise ValueError(f"{folder} is not a run folder (no {layout.CONFIG})")
    config = layout.read_config(folder)
    frame = claims_store.read_claims(folder)
    if frame is None or not len(frame):
        raise ValueError(f"{folder} has no claims ({layout.CLAIMS} is missing or empty): nothing to compare")
    return config, frame


def compare_frame(folders: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every run's claims in one long table; ``model`` names the run's model (plus its folder when two
    runs share a model), ``order`` keeps the claims in the order they first appear."""
    if len(folders) < 1:
        raise ValueError("compare needs at least one run folder")
    loaded = [(Path(f), *run_claims(f)) for f in folders]
    names = [str((cfg.get("model") or {}).get("name") or path.name) for path, cfg, _ in loaded]
    labels = [f"{n} ({p.name})" if names.count(n) > 1 else n for n, (p, _, _) in zip(names, loaded, strict=True)]
    if len(set(labels)) < len(labels):
        raise ValueError("the same run folder was given twice")
    order: dict[str, int] = {}
    parts = []
    for (path, cfg, frame), label in zip(loaded, labels, strict=True):
        for cid in frame["id"]:
            order.setdefault(cid, len(order))
        part = frame.copy()
        part.insert(0, "order", part["id"].map(order).astype("int64"))
        part.insert(0, "quick", layout.is_quick(cfg))
        part.insert(0, "model", label)
        part.insert(0, "run", str(path))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[COMPARE_COLUMNS]


def compare_runs(folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
                 root: str | os.PathLike[str] = "runs") -> RunFolder:
    """Write the comparison run folder (default ``<root>/compare-<timestamp>``) and its report."""
    from .figures import interval_plot

    long = compare_frame(folders)
    run = RunFolder.create("compare", {"runs": [str(f) for f in folders]}, out=out, root=root)
    with run:
        tmp = run.path / (layout.COMPARE + ".tmp")
        long.to_parquet(tmp, index=False)
        os.replace(tmp, run.path / layout.COMPARE)
        for cid, group in long.groupby("id", sort=False):
            rows = [{"label": r["model"], "value": r["value"], "low": r["low"], "high": r["high"], "n": r["n"]}
                    for r in group.to_dict("records")]
            first = group.iloc[0]
            run.save_figure(f"claim-{slug(cid)}", interval_plot(
                rows, title=f"{cid}: {first['statement'] or first['measure']}", xlabel=str(first["measure"]),
                reference=float(first["control_value"]) if pd.notna(first["control_value"]) else None,
                reference_label=f"control value {first['control_value']:.3g}"))
    return run

"""Claims in run folders: ``claims.parquet`` at the top of a run, a study gathering its children's claims
(Holm across all of them), and the figure named for each claim."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from hopscope.stats import ALPHA, LEVEL, N_RESAMPLES, VERDICT_RULE, claims_frame, concat_claims

from . import layout


def read_claims(folder: str | os.PathLike[str], name: str = layout.CLAIMS) -> pd.DataFrame | None:
    """A run's claims (None when it has none)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    return claims_frame(pd.read_parquet(path))


def write_frame(folder: Path, frame: pd.DataFrame, name: str = layout.CLAIMS) -> Path:
    """Write a claims frame atomically."""
    path = folder / name
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def conventional_figure(folder: str | os.PathLike[str], cid: str) -> str | None:
    """A saved figure named ``claim-<id>`` (or ``claim-<slug of id>``): a claim's figure by convention."""
    from .sections import slug

    for name in (f"claim-{cid}", f"claim-{slug(cid)}"):
        if (Path(folder) / layout.FIGURES / f"{name}.png").is_file():
            return name
    return None


def read_figures(folder: str | os.PathLike[str], ids: Any = ()) -> dict[str, dict[str, Any]]:
    """claim id -> {"figure": name, "folder": where}: the ones written with the claims, plus, for ``ids``
    without one, figures saved under the conventional name ``claim-<id>``."""
    out = layout.read_json(Path(folder) / layout.CLAIM_FIGURES, default={}) or {}
    for cid in ids:
        if cid not in out:
            name = conventional_figure(folder, cid)
            if name:
                out[cid] = {"figure": name, "folder": "."}
    return out


def stats_config(n_resamples: Any = None) -> dict[str, Any]:
    """What config.json records about the statistics behind the claims."""
    return {"n_resamples": n_resamples if n_resamples is not None else N_RESAMPLES, "level": LEVEL,
            "alpha": ALPHA, "interval": "percentile bootstrap over units (seeded)",
            "multiple_comparisons": "Holm across all claims of the report", "verdict_rule": VERDICT_RULE}


def gather(folder: Path, config: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], list[Any]]:
    """A study's claims: its own (claims-own.parquet) followed by each child's claims.parquet, Holm
    across all. Ids found in more than one child become ``<child>:<id>``. Returns the frame, the
    merged claim figures (with the folder that holds each) and the children's n_resamples values."""
    parts: list[pd.DataFrame] = []
    sources: list[tuple[str, pd.DataFrame]] = []
    own = read_claims(folder, layout.CLAIMS_OWN)
    if own is not None and len(own):
        sources.append((".", own))
    for child in layout.children(folder, config):
        frame = read_claims(child)
        if frame is not None and len(frame):
            sources.append((child.name, frame))
    counts = pd.Series([i for _, f in sources for i in f["id"]], dtype=object).value_counts()
    figures: dict[str, dict[str, Any]] = {}
    resamples: list[Any] = []
    for where, frame in sources:
        frame = frame.copy()
        base = folder if where == "." else folder / where
        own_figures = read_figures(base, frame["id"])
        cfg = layout.read_json(base / layout.CONFIG, default={}) or {}
        value = (cfg.get("stats") or {}).get("n_resamples")
        if value is not None and value not in resamples:
            resamples.append(value)
        renamed = []
        for cid in frame["id"]:
            new = f"{where}:{cid}" if where != "." and counts.get(cid, 0) > 1 else cid
            renamed.append(new)
            if cid in own_figures:
                entry = dict(own_figures[cid])
                entry["folder"] = str(Path(where) / entry.get("folder", ".")) if where != "." else entry.get(
                    "folder", ".")
                figures[new] = entry
        frame["id"] = renamed
        parts.append(frame)
    return concat_claims(parts), figures, resamples


def gather_and_write(folder: Path, config: dict[str, Any]) -> pd.DataFrame:
    """Gather a study's claims (see :func:`gather`) into its claims.parquet and claim_figures.json,
    updating ``config`` in place (``stats``, ``claims_source``); the caller saves the config."""
    own, mine = folder / layout.CLAIMS, folder / layout.CLAIMS_OWN
    if config.get("claims_source") == "own" and own.is_file() and not mine.exists():
        os.replace(own, mine)  # claims written before the children existed stay the study's own
    frame, figures, resamples = gather(folder, config)
    if len(frame):
        write_frame(folder, frame)
        layout.write_json(folder / layout.CLAIM_FIGURES, figures)
        config["stats"] = stats_config(resamples[0] if len(resamples) == 1 else (resamples or None))
        config["claims_source"] = "gathered"
    return frame

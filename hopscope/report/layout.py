"""Names of the files in a run folder and plain readers for them (shared by the writer, the HTML
renderer and the ``runs`` CLI).

    <run>/config.json      what ran: command, args, model, dataset (+hash), seed, versions, times, status
    <run>/sections.json    report sections added by the analyses (title, text, figures, tables, headline)
    <run>/tables/          tidy tables (see hopscope.report.tables)
    <run>/figures/*.png    figures
    <run>/report.html      the self-contained report
    <run>/claims.parquet   the claims tested (hopscope.stats.CLAIM_COLUMNS; a study: its children's, Holm across all)
    <run>/claims-own.parquet  a study's own claims, kept apart from the gathered ones
    <run>/claim_figures.json  claim id -> the figure that shows its uncertainty (and the folder holding it)
    <run>/compare.parquet  ``hopscope compare``: every run's claims, one row per (run, claim)
    <run>/<child>/         child run folders of a study (listed in config["children"])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG = "config.json"
SECTIONS = "sections.json"
TABLES = "tables"
FIGURES = "figures"
REPORT = "report.html"
CLAIMS = "claims.parquet"
CLAIMS_OWN = "claims-own.parquet"
CLAIM_FIGURES = "claim_figures.json"
COMPARE = "compare.parquet"
FORMAT_VERSION = 1


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename), so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run folder's config.json; a clear error when the folder is not a run folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such run folder: {folder}")
    if not is_run_folder(folder):
        raise FileNotFoundError(f"{folder} is not a run folder (no {CONFIG})")
    return read_json(folder / CONFIG)


def read_sections(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return read_json(Path(path) / SECTIONS, default=[])


def children(path: str | os.PathLike[str], config: dict[str, Any] | None = None) -> list[Path]:
    """Child run folders of a study, in the order they were added (missing ones skipped)."""
    folder = Path(path)
    config = config if config is not None else read_config(folder)
    return [folder / name for name in config.get("children", []) if is_run_folder(folder / name)]


def effective_status(config: dict[str, Any]) -> str:
    """The recorded status, except that a 'running' run whose process is gone (on this host) reads
    'stopped' (killed without a chance to record it); resume it like an interrupted run."""
    from . import provenance

    status = str(config.get("status", "unknown"))
    pid = config.get("pid")
    if status == "running" and pid is not None and config.get("host") == provenance.host():
        if not provenance.pid_alive(int(pid)):
            return "stopped"
    return status


def is_quick(config: dict[str, Any]) -> bool:
    """A quick (smoke-test) run: its verdicts are indicative only."""
    return bool(config.get("quick") or (config.get("args") or {}).get("quick"))

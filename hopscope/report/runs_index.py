"""Listing and describing run folders (behind ``hopscope runs list`` and ``hopscope runs show``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from hopscope.stats import verdict_counts

from . import claims_store, formatting, headline, layout
from .tables import TableStore

LIST_COLUMNS = ["folder", "command", "model", "status", "started", "duration", "claims"]


def claims_line(folder: str | os.PathLike[str]) -> str:
    """'3 supported, 1 contradicted, 5 inconclusive of 9' (empty when the run has no claims)."""
    try:
        frame = claims_store.read_claims(folder)
    except (OSError, ValueError) as err:
        return f"unreadable: {err}"
    if frame is None or not len(frame):
        return ""
    c = verdict_counts(frame)
    return f"{c['supported']} supported, {c['contradicted']} contradicted, {c['inconclusive']} inconclusive"


def list_runs(root: str | os.PathLike[str] = "runs") -> pd.DataFrame:
    """One row per run folder directly under ``root`` (newest first): folder, command, model, status,
    started, duration (seconds of work, across resumed sessions), claims (verdict counts). Unreadable
    configs are shown as such."""
    root = Path(root)
    rows = []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if layout.is_run_folder(p)):
            try:
                config = layout.read_config(folder)
            except (OSError, json.JSONDecodeError) as err:
                rows.append({"folder": str(folder), "command": "?", "model": "", "status": f"unreadable: {err}",
                             "started": "", "duration": None, "claims": ""})
                continue
            model = config.get("model") or {}
            rows.append({
                "folder": str(folder),
                "command": str(config.get("command", "?")),
                "model": str(model.get("name", "")),
                "status": layout.effective_status(config),
                "started": config.get("start_time") or "",
                "duration": config.get("elapsed_s"),
                "claims": claims_line(folder),
            })
    df = pd.DataFrame(rows, columns=LIST_COLUMNS)
    return df.sort_values("started", ascending=False, kind="mergesort").reset_index(drop=True)


def format_runs(df: pd.DataFrame) -> str:
    """The runs table as aligned text."""
    if df.empty:
        return "no runs"
    shown = df.assign(
        started=df["started"].map(formatting.timestamp),
        duration=df["duration"].map(lambda s: formatting.duration(s) if pd.notna(s) else ""),
    )
    return shown.to_string(index=False)


def describe_run(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Config, headline numbers (per section) and tables (with row counts) of a run and its children."""
    folder = Path(folder)
    config = layout.read_config(folder)
    store = TableStore(folder / layout.TABLES)
    tables = [store.info(name) for name in store.names()]
    headline_rows = [
        {"section": s["title"], "name": e["label"], "value": e["value"], "n": e["n"], "low": e["low"],
         "high": e["high"], "unit": e["unit"]}
        for s in layout.read_sections(folder)
        for e in headline.normalize(s.get("headline"))
    ]
    claims = claims_store.read_claims(folder)
    return {
        "folder": str(folder),
        "status": layout.effective_status(config),
        "config": config,
        "headline": headline_rows,
        "claims": [] if claims is None else claims.astype(object).where(claims.notna(), None).to_dict("records"),
        "tables": tables,
        "figures": sorted(p.stem for p in (folder / layout.FIGURES).glob("*.png")),
        "report": str(folder / layout.REPORT) if (folder / layout.REPORT).exists() else None,
        "children": [describe_run(child) for child in layout.children(folder, config)],
    }


def format_run(info: dict[str, Any], indent: str = "") -> str:
    """``describe_run`` output as readable text."""
    config = info["config"]
    model = config.get("model") or {}
    dataset = config.get("dataset") or {}
    lines = [
        f"run      {info['folder']}",
        f"command  {config.get('command')}   status {info['status']}",
        f"model    {model.get('name', '-')}" + (f"  (from {model['source']})" if model.get("source") else ""),
        f"dataset  {dataset.get('name', '-')}" + (f"  {dataset['hash']}" if dataset.get("hash") else "")
        + (f"  {dataset['n_records']} records" if dataset.get("n_records") is not None else ""),
        f"seed     {config.get('seed')}",
        f"started  {formatting.timestamp(config.get('start_time'))}"
        f"   ended {formatting.timestamp(config.get('end_time')) or '-'}"
        f"   took {formatting.duration(config.get('elapsed_s'))}",
        "versions " + ", ".join(f"{k} {v}" for k, v in (config.get("versions") or {}).items()),
        "args     " + json.dumps(config.get("args", {}), ensure_ascii=False, default=str),
    ]
    if config.get("error"):
        lines.append(f"error    {config['error']}")
    lines.append("")
    if info.get("claims"):
        lines.append("claims:")
        for c in info["claims"]:
            value = "n/a" if c["value"] is None else formatting.headline_number(float(c["value"]))
            interval = ("" if c["low"] is None or c["high"] is None else
                        f" [{formatting.headline_number(float(c['low']))}, {formatting.headline_number(float(c['high']))}]")
            lines.append(f"  {c['id']:<32} {value + interval:>24}  n={c['n']:<6} {c['verdict']}")
        lines.append("")
    lines.append("headline numbers:" if info["headline"] else "headline numbers: none")
    for item in info["headline"]:
        n = f"  (n={item['n']})" if item.get("n") is not None else ""
        value = headline.value_text({"value": item["value"], "low": item.get("low"), "high": item.get("high"),
                                     "unit": item.get("unit")})
        lines.append(f"  {item['name']:<32} {value:>12}{n}   [{item['section']}]")
    lines.append("")
    lines.append("tables:" if info["tables"] else "tables: none")
    for table in info["tables"]:
        note = f"  (+{table['pending_parts']} unmerged parts: incomplete)" if table["pending_parts"] else ""
        lines.append(f"  {table['name']:<32} {table['rows']:>10,} rows  {len(table['columns'])} columns{note}")
    if info["figures"]:
        lines.append("")
        lines.append("figures: " + ", ".join(info["figures"]))
    if info["report"]:
        lines.append(f"report:  {info['report']}")
    text = "\n".join(indent + line if line else line for line in lines)
    for child in info["children"]:
        text += "\n\n" + indent + "  child run:\n" + format_run(child, indent + "    ")
    return text

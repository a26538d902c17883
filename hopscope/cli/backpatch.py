"""CLI: ``hopscope backpatch`` (back-patching with controls + resolution layers) and ``hopscope resolve``
(resolution layers only: logit lens, Patchscopes, attention knockout), each into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ResumeOpt, SeedOpt, fail, load

DataOpt = typer.Option(None, "--data", help="Two-hop dataset file (.jsonl/.csv/.parquet); default: built-in world facts.")
NOpt = typer.Option(50, "--n", help="World facts: queries per composition.")
CompOpt = typer.Option(None, "--compositions", help="World facts: comma-separated compositions (default: all).")
LimitOpt = typer.Option(None, "--limit", help="At most this many queries per group (correct / incorrect), seeded.")
QuickOpt = typer.Option(False, "--quick", help="Quick settings: <=8 queries per group, every 3rd layer, 5 tokens.")
TargetsOpt = typer.Option("repeat,describe", "--patchscope-targets", help="Patchscope target prompts: repeat, describe.")
KOpt = typer.Option(3, "--knockout-k", help="Knockout window half-width (layers c-k..c+k).")
BatchOpt = typer.Option(128, "--batch-size", help="Patched rows per forward.")
PruneOpt = typer.Option(True, "--prune/--no-prune", help="Stop decoding a row once its alias match is decided.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Progress bars.")


def parse_layers(spec: Optional[str], n_layers: int) -> Optional[list[int]]:
    """``None``/"all" -> every layer; "a:b:c" -> range(a, b, c); "0,4,8" -> a list (negatives count from the end)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    try:
        if ":" in spec:
            parts = [p.strip() for p in spec.split(":")]
            a, b = int(parts[0] or 0), int(parts[1] or n_layers)
            step = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            layers = list(range(a, b, step))
        else:
            layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad layer spec {spec!r}: use 'all', 'start:stop:step' or '0,4,8'") from None
    layers = sorted({l + n_layers if l < 0 else l for l in layers})
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or spec!r} are outside 0..{n_layers - 1}")
    return layers


def _names(spec: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in spec.split(",") if x.strip())


def load_queries(data: Optional[Path], n: int, compositions: Optional[str], seed: int) -> list:
    """Two-hop records from a dataset file or the built-in world-facts builders."""
    from hopscope.data import Dataset, build_world_facts
    from hopscope.data.templates import DEFAULT_TWO_HOP

    if data is not None:
        if not data.exists():
            fail(f"no dataset file {data}")
        records = list(Dataset.load(data).two_hop())
    else:
        comps = _names(compositions) if compositions else DEFAULT_TWO_HOP
        records = list(build_world_facts(n=n, seed=seed, relations=(), compositions=comps))
    if not records:
        fail("the dataset holds no two-hop queries")
    return records


def _study(command: str, args: dict, model, device, dtype, data, n, compositions, seed, out, resume, progress,
           make_options) -> None:
    from hopscope.methods.backpatch import run_study
    from hopscope.report import RunFolder

    lm = load(model, device, dtype)
    queries = load_queries(data, n, compositions, seed)
    try:
        options = make_options(lm)
    except ValueError as err:
        fail(str(err))
    run = RunFolder.start(command, {**args, "options": vars(options)}, out=out, resume=resume, seed=seed)
    with run:
        head = run_study(lm, queries, run, options, progress=progress)
    for k, v in head.items():
        typer.echo(f"{k:>48}: {v:.3f}" if isinstance(v, float) else f"{k:>48}: {v}")
    typer.echo(f"run folder: {run.path}")


def backpatch_cmd(
    model: Optional[str] = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    data: Optional[Path] = DataOpt, n: int = NOpt, compositions: Optional[str] = CompOpt,
    limit: Optional[int] = LimitOpt,
    layers: Optional[str] = typer.Option(None, "--layers", help="Back-patching grid: all | start:stop:step | 0,4,8."),
    tokens: int = typer.Option(10, "--tokens", help="New tokens decoded per patched row."),
    controls: bool = typer.Option(True, "--controls/--no-controls", help="Forward, random and unrelated controls."),
    variants: str = typer.Option("last,first_hop", "--variants", help="Patch positions: last, first_hop."),
    resolve: bool = typer.Option(True, "--resolve/--no-resolve", help="Also the resolution layers (lens, Patchscopes, knockout)."),
    resolve_layers: Optional[str] = typer.Option(None, "--resolve-layers", help="Patchscope / knockout layers."),
    targets: str = TargetsOpt, knockout_k: int = KOpt, quick: bool = QuickOpt, batch_size: int = BatchOpt,
    prune: bool = PruneOpt, out: Optional[Path] = OutOpt, resume: Optional[Path] = ResumeOpt, seed: int = SeedOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Back-patching (Biran et al. 2024) with controls on the knowledge-filtered two-hop queries, plus where
    the bridge and the answer resolve; tables, heatmaps, box plots and headline numbers in a run folder."""
    from hopscope.methods.backpatch import CONDITIONS, StudyOptions

    def make(lm):
        kw = dict(layers=parse_layers(layers, lm.n_layers), resolve_layers=parse_layers(resolve_layers, lm.n_layers),
                  max_new_tokens=tokens, conditions=CONDITIONS if controls else ("back",), variants=_names(variants),
                  limit=limit, resolve=resolve, patchscope_targets=_names(targets), knockout_k=knockout_k,
                  batch_size=batch_size, prune=prune, seed=seed)
        if quick:
            q = StudyOptions.quick(lm.n_layers)
            for name in ("layers", "resolve_layers", "limit"):
                kw[name] = kw[name] if kw[name] is not None else getattr(q, name)
            kw["max_new_tokens"] = min(tokens, q.max_new_tokens)
            kw["patchscope_targets"] = q.patchscope_targets
        return StudyOptions(**kw)

    args = dict(model=model, data=data, n=n, compositions=compositions, quick=quick)
    _study("backpatch", args, model, device, dtype, data, n, compositions, seed, out, resume, progress, make)


def resolve_cmd(
    model: Optional[str] = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    data: Optional[Path] = DataOpt, n: int = NOpt, compositions: Optional[str] = CompOpt,
    limit: Optional[int] = LimitOpt,
    layers: Optional[str] = typer.Option(None, "--layers", help="Patchscope source layers / knockout centres."),
    tokens: int = typer.Option(5, "--tokens", help="New tokens decoded per Patchscope / knockout row."),
    targets: str = TargetsOpt, knockout_k: int = KOpt, quick: bool = QuickOpt, batch_size: int = BatchOpt,
    prune: bool = PruneOpt, out: Optional[Path] = OutOpt, resume: Optional[Path] = ResumeOpt, seed: int = SeedOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Where two-hop queries resolve the bridge e2 and the answer e3: logit lens and sublayer projections,
    Patchscopes and sliding-window attention knockout, split by correct vs incorrect composition."""
    from hopscope.methods.backpatch import StudyOptions

    def make(lm):
        grid = parse_layers(layers, lm.n_layers)
        if quick and grid is None:
            grid = StudyOptions.quick(lm.n_layers).resolve_layers
        return StudyOptions(backpatch=False, resolve_layers=grid, patchscope_tokens=tokens,
                            limit=limit if limit is not None else (8 if quick else None),
                            patchscope_targets=("repeat",) if quick else _names(targets), knockout_k=knockout_k,
                            batch_size=batch_size, prune=prune, seed=seed)

    args = dict(model=model, data=data, n=n, compositions=compositions, quick=quick)
    _study("resolve", args, model, device, dtype, data, n, compositions, seed, out, resume, progress, make)


def register(app: typer.Typer) -> None:
    """Add ``backpatch`` and ``resolve`` to the hopscope CLI."""
    app.command("backpatch")(backpatch_cmd)
    app.command("resolve")(resolve_cmd)

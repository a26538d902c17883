"""``hopscope backpatch`` (knowledge groups, back-patching with controls, resolution stages) and ``hopscope resolve``
(the resolution stages only: Patchscopes, attention knockout of t1, sublayer projections), as Biran et al. 2024
define them (``--protocol paper``, the default)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from hopscope.cli.common import (
    DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt, ThreadsOpt, configure, fail,
    load, user_errors,
)

DataOpt = typer.Option(None, "--data", help="Two-hop dataset file (.jsonl/.csv/.parquet, or the paper's two_hop CSV); "
                       "default: world facts built from --n and --compositions.")
NOpt = typer.Option(None, "--n", help="World facts: queries per composition (default 1000; --study-size 70).")
CompOpt = typer.Option(None, "--compositions", help="World facts: comma-separated compositions (default: all).")
StudyOpt = typer.Option(False, "--study-size", help="The size `hopscope study` uses (~5 CPU minutes on 2 cores).")
ProtocolOpt = typer.Option(None, "--protocol", help="paper (the default: the paper's definitions) or custom "
                           "(allows the deviations: --match start, --knockout-keys e1_span, --population all).")
TokensOpt = typer.Option(None, "--tokens", help="Token budget of the one answer rule (default 10, the paper's).")
MatchOpt = typer.Option(None, "--match", help="anywhere (the paper's: an alias anywhere in the budget) or start.")
PopulationOpt = typer.Option(None, "--population", help="paper (incorrect / correct shortcut-free groups) or all.")
NResolveOpt = typer.Option(None, "--n-resolve", help="Queries per group for the resolution stages (default: all).")
PSLayersOpt = typer.Option(None, "--patchscope-layers", help="Patchscope source layers: all | k (evenly spaced) | "
                           "0,8,16 (default all).")
PTLayersOpt = typer.Option(None, "--target-layers", help="Patchscope target layers (default all).")
TargetsOpt = typer.Option(None, "--targets", help="Patchscope target prompts: description (the paper's), repeat.")
KLayersOpt = typer.Option(None, "--knockout-layers", help="Knockout window centres (default all).")
KWindowOpt = typer.Option(None, "--knockout-window", help="Knockout window half-width k: layers c-k..c+k (default 3).")
KKeysOpt = typer.Option(None, "--knockout-keys", help="t1 (e1's last token, the paper's) or e1_span.")


def parse_layers(spec: Optional[str]) -> Any:
    """``None``/"all" -> None (every layer); "6" -> 6 evenly spaced layers; "0,4,8" -> those layers (negatives
    count from the end); "a:b:c" -> range(a, b, c). Checked against the model when the analysis starts."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    try:
        if ":" in spec:
            parts = [p.strip() for p in spec.split(":")]
            a, b = int(parts[0] or 0), int(parts[1])
            step = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            return tuple(range(a, b, step))
        if "," not in spec:
            return int(spec)
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"bad layer spec {spec!r}: use all, a count (6), a list (0,4,8) or start:stop:step") from None


def _names(spec: Optional[str]) -> Optional[tuple[str, ...]]:
    return None if spec is None else tuple(x.strip() for x in spec.split(",") if x.strip())


def _settings(resume: Optional[str], quick: bool, study_size: bool, seed: int, over: dict[str, Any],
              knowledge: dict[str, Any]):
    from hopscope.methods.hopping import Settings
    from hopscope.report import RunFolder

    if resume is not None:
        stored = dict(RunFolder.open(resume).args)
        label = stored.pop("data", None)
        return Settings.from_dict(stored), label
    size = Settings.quick if quick else Settings.study if study_size else Settings
    base = size()
    k = {name: value for name, value in knowledge.items() if value is not None}
    over = {name: value for name, value in over.items() if value is not None}
    return replace(base, knowledge=replace(base.knowledge, **k) if k else base.knowledge, seed=seed, **over), None


def _load_data(data: Optional[Path]):
    if data is None:
        return None
    from hopscope.data import Dataset

    if not data.exists():
        raise FileNotFoundError(f"no dataset file {data}")
    if data.is_dir():
        raise ValueError(f"--data {data} is a folder: give a dataset file")
    return Dataset.load(data)


def _run(command: str, settings, label, data, model, device, dtype, threads, out, resume, progress, quick) -> None:
    from hopscope.methods import hopping
    from hopscope.report import RunFolder

    configure(threads)
    with user_errors():
        settings.validate()
        dataset = _load_data(Path(label) if label else data)
    lm = load(model, device, dtype)
    with user_errors():
        run_folder = RunFolder.start(command, {**settings.to_dict(), "data": str(data) if data else label}, out=out,
                                     resume=resume, seed=settings.seed, quick=quick)
        with run_folder:
            result = hopping.run(lm, dataset, settings, run_folder=run_folder, progress=progress)
    for h in result.headline:
        typer.echo(f"{h.label:>48}: {h.text()}")
    for c in result.claims.itertuples():
        typer.echo(f"{c.id:>48}: {c.verdict} ({c.value:.3g} [{c.low:.3g}, {c.high:.3g}], n={c.n})")
    typer.echo(f"\nwrote {run_folder.report_path}")


def backpatch_cmd(
    data: Optional[Path] = DataOpt, n: Optional[int] = NOpt, compositions: Optional[str] = CompOpt,
    n_incorrect: Optional[int] = typer.Option(None, "--n-incorrect", help="At most N incorrect queries (seeded)."),
    n_correct: Optional[int] = typer.Option(None, "--n-correct", help="At most N correct queries (seeded)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Back-patching (s, t) grid: all | k | 0,4,8."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Patched positions: last (t2), e1 (t1)."),
    controls: Optional[str] = typer.Option(None, "--controls", help="Controls beyond the paper: forward, random, "
                                           "unrelated (comma-separated; 'none' for none)."),
    resolve: bool = typer.Option(True, "--resolve/--no-resolve", help="Also Patchscopes, knockout, stages."),
    n_resolve: Optional[int] = NResolveOpt, patchscope_layers: Optional[str] = PSLayersOpt,
    target_layers: Optional[str] = PTLayersOpt, targets: Optional[str] = TargetsOpt,
    knockout_layers: Optional[str] = KLayersOpt, knockout_window: Optional[int] = KWindowOpt,
    knockout_keys: Optional[str] = KKeysOpt, tokens: Optional[int] = TokensOpt, match: Optional[str] = MatchOpt,
    population: Optional[str] = PopulationOpt, protocol: Optional[str] = ProtocolOpt,
    study_size: bool = StudyOpt, quick: bool = QuickOpt, model: Optional[str] = ModelOpt, device: str = DeviceOpt,
    dtype: str = DtypeOpt, threads: Optional[int] = ThreadsOpt, out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt, seed: int = SeedOpt, progress: bool = ProgressOpt,
) -> None:
    """Back-patching (Biran et al. 2024) on the paper's knowledge groups, with random-vector, unrelated-prompt and
    forward-patch controls, plus Patchscopes, attention knockout of t1 and the resolution stages.

    Defaults are the paper's protocol at full size (every layer pair, 1000 world-facts queries per composition);
    --study-size and --quick are smaller fixed sizes.

    Example: hopscope backpatch --study-size --out runs/bp
    """
    with user_errors():
        over = dict(n_incorrect=n_incorrect, n_correct=n_correct, layers=parse_layers(layers),
                    variants=_names(variants), resolve=resolve, n_resolve=n_resolve,
                    patchscope_layers=parse_layers(patchscope_layers),
                    patchscope_target_layers=parse_layers(target_layers), patchscope_targets=_names(targets),
                    knockout_layers=parse_layers(knockout_layers), knockout_window=knockout_window,
                    knockout_keys=knockout_keys, population=population, protocol=protocol)
        if controls is not None:
            over["controls"] = () if controls.strip().lower() == "none" else _names(controls)
        settings, label = _settings(resume, quick, study_size, seed, over, _knowledge(n, compositions, tokens, match))
    _run("backpatch", settings, label, data, model, device, dtype, threads, out, resume, progress, quick)


def resolve_cmd(
    data: Optional[Path] = DataOpt, n: Optional[int] = NOpt, compositions: Optional[str] = CompOpt,
    n_resolve: Optional[int] = NResolveOpt, patchscope_layers: Optional[str] = PSLayersOpt,
    target_layers: Optional[str] = PTLayersOpt, targets: Optional[str] = TargetsOpt,
    knockout_layers: Optional[str] = KLayersOpt, knockout_window: Optional[int] = KWindowOpt,
    knockout_keys: Optional[str] = KKeysOpt, tokens: Optional[int] = TokensOpt, match: Optional[str] = MatchOpt,
    population: Optional[str] = PopulationOpt, protocol: Optional[str] = ProtocolOpt,
    study_size: bool = StudyOpt, quick: bool = QuickOpt, model: Optional[str] = ModelOpt, device: str = DeviceOpt,
    dtype: str = DtypeOpt, threads: Optional[int] = ThreadsOpt, out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt, seed: int = SeedOpt, progress: bool = ProgressOpt,
) -> None:
    """Where two-hop queries resolve the bridge e2 and the answer e3 (Biran et al. 2024): Patchscopes over (s, t)
    from t1 and the last token, knockout of the last token's attention to t1 in sliding windows, sublayer
    projections, and every resolution stage per query, split by the paper's knowledge groups.

    Example: hopscope resolve --quick --patchscope-layers 8
    """
    with user_errors():
        over = dict(backpatch=False, n_resolve=n_resolve, patchscope_layers=parse_layers(patchscope_layers),
                    patchscope_target_layers=parse_layers(target_layers), patchscope_targets=_names(targets),
                    knockout_layers=parse_layers(knockout_layers), knockout_window=knockout_window,
                    knockout_keys=knockout_keys, population=population, protocol=protocol)
        settings, label = _settings(resume, quick, study_size, seed, over, _knowledge(n, compositions, tokens, match))
    _run("resolve", settings, label, data, model, device, dtype, threads, out, resume, progress, quick)


def _knowledge(n: Optional[int], compositions: Optional[str], tokens: Optional[int], match: Optional[str]):
    if match is not None and match not in ("anywhere", "start"):
        fail(f"--match must be anywhere or start, got {match!r}")
    return dict(queries_per_composition=n, compositions=_names(compositions), max_new_tokens=tokens,
                match_anywhere=None if match is None else match == "anywhere")


def register(app: typer.Typer) -> None:
    """Add ``backpatch`` and ``resolve`` to the hopscope CLI."""
    app.command("backpatch")(backpatch_cmd)
    app.command("resolve")(resolve_cmd)

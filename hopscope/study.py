"""``hopscope study``: every analysis on one model (or several), into one run folder and one report.

The study is a loop over :data:`hopscope.methods.REGISTRY`: each analysis runs at its ``Settings.study()``
size (``--quick``: ``Settings.quick()``, verdicts marked indicative) through :func:`hopscope.pipeline.execute`
into a child run folder ``<study>/<analysis>/``. Every shard an analysis finishes is on disk at once, so a
study killed at any point (even with SIGKILL) and run again with ``--resume`` finishes with exactly the
tables of an uninterrupted run: finished analyses are skipped, finished shards are not recomputed. The
parent folder gathers every child's claims (Holm across all of them) into its ``claims.parquet`` and its
report opens with them. With several models, each gets its own study folder and a comparison report sits
on top.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hopscope.progress import note

ANALYSES = ("hopping", "injection", "recall", "probe", "repair")


@dataclass
class StudySettings:
    """What ``hopscope study`` runs; recorded in the run folder's config."""

    models: tuple[str | None, ...] = (None,)
    analyses: tuple[str, ...] = ANALYSES
    quick: bool = False
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # analysis -> Settings field -> value

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = [m or "smollm2-135m" for m in self.models]
        d["analyses"] = list(self.analyses)
        return d


def analysis_settings(name: str, study: StudySettings) -> Any:
    """The Settings an analysis runs with in this study (its study() or quick() size, the study's seed)."""
    from hopscope.methods import analysis

    kind = analysis(name).settings_type
    settings = kind.quick() if study.quick else kind.study()
    changes = {"seed": study.seed} if "seed" in {f.name for f in dataclasses.fields(kind)} else {}
    changes.update(study.overrides.get(name, {}))
    unknown = set(changes) - {f.name for f in dataclasses.fields(kind)}
    if unknown:
        raise ValueError(f"{name} has no setting(s) {sorted(unknown)}; its settings are "
                         f"{', '.join(f.name for f in dataclasses.fields(kind))}")
    return dataclasses.replace(settings, **changes)


def _finished(path: Path) -> bool:
    from hopscope.report import RunFolder

    return (path / "config.json").is_file() and RunFolder.open(path).status == "done"


def run_one_model(settings: StudySettings, model: str | None, *, out: str | Path | None = None,
                  resume: str | Path | None = None, progress: bool = True,
                  say: Callable[[str], None] = note):
    """The study of one model into one run folder; returns the finished RunFolder."""
    import hopscope
    from hopscope.methods import REGISTRY, analysis
    from hopscope.pipeline import execute
    from hopscope.report import RunFolder

    unknown = [a for a in settings.analyses if a not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; choose from {', '.join(REGISTRY)}")
    args = {**settings.to_dict(), "models": [model or "smollm2-135m"]}
    run = RunFolder.start("study", args, out=out, resume=resume, seed=settings.seed)
    run.set_quick(settings.quick)
    t0 = time.monotonic()
    timings: dict[str, float] = dict(run.config.get("timings", {}))
    try:
        say(f"loading model {model or 'smollm2-135m (default)'}")
        lm = hopscope.load_model(model, device=settings.device, dtype=settings.dtype)
        run.set_model(lm)
        for name in settings.analyses:
            if _finished(run.path / name):
                say(f"[{name}] already finished in {run.path / name}; skipping")
                continue
            child = run.child(name, analysis_settings(name, settings).to_dict())
            child.set_quick(settings.quick)
            say(f"[{name}] running")
            t = time.monotonic()
            try:
                execute(analysis(name), lm, None, analysis_settings(name, settings), run_folder=child,
                        progress=progress)
            except BaseException as err:
                child.fail(err)
                raise
            timings[name] = round(time.monotonic() - t + timings.get(name, 0.0), 1)
            run.config["timings"] = timings
            child.finish()
            say(f"[{name}] done in {timings[name]} s")
        total = time.monotonic() - t0
        run.add_section(
            "Study", text=(f"Model {lm.name} ({lm.source}); analyses: {', '.join(settings.analyses)}; seed "
                           f"{settings.seed}; {'quick sizes: verdicts are indicative' if settings.quick else 'study sizes'}. "
                           f"Seconds per analysis (this and earlier sessions): {timings}. This session: {total:.0f} s."))
        run.finish()
    except BaseException as err:
        run.fail(err)
        raise
    return run


def model_slug(model: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model or "smollm2-135m").strip("-") or "model"


def run_study(settings: StudySettings, *, out: str | Path | None = None, resume: str | Path | None = None,
              progress: bool = True, say: Callable[[str], None] = note) -> Path:
    """Run the study on every model of ``settings``; returns the path of the report to open."""
    if len(settings.models) == 1:
        return run_one_model(settings, settings.models[0], out=out, resume=resume, progress=progress,
                             say=say).report_path
    from hopscope.report.compare import compare_runs

    root = Path(resume or out or Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}")
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for model in settings.models:
        folder = root / model_slug(model)
        again = (folder / "config.json").is_file()
        folders.append(run_one_model(settings, model, out=None if again else folder, resume=folder if again else None,
                                     progress=progress, say=say).path)
    compare = root / "compare"
    if compare.exists():
        import shutil

        shutil.rmtree(compare)  # a comparison is derived: rebuild it from the finished studies
    report = compare_runs(folders, out=compare).report_path
    say(f"comparison of {len(folders)} models: {report}")
    return report

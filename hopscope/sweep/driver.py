"""The sweep driver: every (model, analysis, dataset) of a grid into one run folder with one report.

Each job is :func:`hopscope.pipeline.execute` into a child run folder (``<sweep>/<model>__<analysis>``), its
shards run by the local executor (in this process, with the model loaded here) or by a :class:`RayPool`
(the model loaded once in every worker; the driver holds only its facts). Jobs run model by model, so each
model is loaded once per worker. A job whose child folder is finished is skipped; an interrupted one
resumes from its parts. Running the same sweep again (same ``out``) finishes it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from hopscope.pipeline import Analysis, Context, FolderStore, LocalExecutor, Shard, Stage, execute
from hopscope.progress import bar
from hopscope.report import RunFolder
from hopscope.report import layout

from .models import ModelSpec, RemoteModel, free_memory, load
from .ray_pool import RayPool, import_ray, worker_gpus
from .report import jobs_frame, write_comparison, write_overview
from .spec import ExecutorOptions, Job, Placement, SweepSpec, load_dataset

COMMAND = "sweep"


def run_sweep(spec: SweepSpec, *, placement: Placement | None = None, executor: ExecutorOptions | None = None,
              out: str | os.PathLike[str] | None = None, resume: str | os.PathLike[str] | None = None,
              progress: bool = True, say: Callable[[str], None] | None = None) -> RunFolder:
    """Run the sweep into ``out`` (default ``runs/sweep-<timestamp>``), or finish the one in ``resume`` (or
    in ``out``, when it holds one already); returns the finished :class:`~hopscope.report.RunFolder`."""
    placement = placement or Placement()
    options = executor or ExecutorOptions()
    jobs = spec.jobs()  # bad names and settings fail here, before any folder is made
    if options.kind == "ray":
        import_ray()
        worker_gpus(options, spec.device)
    pb = _Progress(progress)
    say = say or pb.write
    if options.kind == "local" and options.workers > 1:
        say("--workers applies to the Ray executor; the local executor runs the shards one after another")
    try:
        run = _open(spec, out, resume)
    except BaseException:
        pb.close()
        raise
    run.config["sweep"] = {"executor": options.to_dict(), "placement": placement.to_dict()}
    t0 = time.monotonic()
    records: dict[str, dict[str, Any]] = {}
    backend: _Local | _Ray | None = None
    try:
        for model, group in itertools.groupby(jobs, key=lambda j: j.model):
            group = list(group)
            pending = [j for j in group if not _finished(run.path / j.folder)]
            for job in group:
                if job.folder not in {j.folder for j in pending}:
                    records[job.folder] = _record(job, run.path / job.folder, computed=0, retries=0)
                    pb.reused(records[job.folder]["reused"])
            if not pending:
                continue
            if backend is None:
                backend = _Ray(options, spec.device, say) if options.kind == "ray" else _Local(options)
            records.update(_run_model(run, backend, ModelSpec(model, spec.device, spec.dtype, placement), pending,
                                      pb, say))
            free_memory()
        frame = jobs_frame([records[j.folder] for j in jobs])
        write_overview(run, frame, executor=options.to_dict(), placement=placement.to_dict(),
                       wall_s=time.monotonic() - t0)
        write_comparison(run, frame)
        run.finish()
    except BaseException as err:
        run.fail(err)
        raise
    finally:
        pb.close()
        if backend is not None:
            backend.close()
    return run


def recorded_spec(folder: str | os.PathLike[str]) -> SweepSpec:
    """The grid a sweep run folder was started with (for ``hopscope sweep --resume FOLDER``)."""
    config = layout.read_config(folder)
    if config.get("command") != COMMAND:
        raise ValueError(f"{folder} holds a {config.get('command')!r} run, not a sweep")
    return SweepSpec.from_dict(dict(config.get("args", {})), where=str(folder))


# ---- one model ------------------------------------------------------------------------------------------------
def _run_model(run: RunFolder, backend: "_Local | _Ray", model: ModelSpec, jobs: list[Job], pb: "_Progress",
               say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    data_cache: dict[str, Any] = {}
    with backend.session(model) as (lm, executor):
        for job in jobs:
            if job.dataset not in data_cache:
                data_cache[job.dataset] = load_dataset(job.dataset)
            child = run.child(job.folder, job.settings.to_dict())
            reused = FolderStore(child.path / "parts").count()
            pb.reused(reused)
            counted = _Counting(executor, pb, job.folder)
            retries0 = backend.retries
            t = time.monotonic()
            try:
                execute(job.analysis, lm, data_cache[job.dataset], job.settings, run_folder=child, progress=False,
                        executor=counted)
                child.finish()
            except BaseException as err:
                child.fail(err)
                raise
            out[job.folder] = _record(job, child.path, computed=counted.computed, retries=backend.retries - retries0,
                                      seconds=time.monotonic() - t)
            say(f"{job.folder}: {counted.computed} shards computed, {reused} reused "
                f"({time.monotonic() - t:.1f} s)")
    return out


def _record(job: Job, folder: Path, *, computed: int, retries: int, seconds: float | None = None) -> dict[str, Any]:
    shards = FolderStore(folder / "parts").count()
    config = layout.read_config(folder)
    return {"folder": job.folder, "model": job.model, "analysis": job.analysis.name, "dataset": job.dataset,
            "status": config.get("status"), "shards": shards, "computed": computed, "reused": shards - computed,
            "retries": retries,
            "seconds": round(float(seconds if seconds is not None else config.get("elapsed_s", 0)), 2)}


def _finished(folder: Path) -> bool:
    return layout.is_run_folder(folder) and layout.read_config(folder).get("status") == "done"


def _open(spec: SweepSpec, out: Any, resume: Any) -> RunFolder:
    args = spec.to_dict()
    if resume is not None:
        return RunFolder.resume(resume, command=COMMAND, args=args)
    if out is not None and layout.is_run_folder(out):
        return RunFolder.resume(out, command=COMMAND, args=args)
    return RunFolder.create(COMMAND, args, out=out, seed=spec.seed, quick=spec.size == "quick")


# ---- executors ------------------------------------------------------------------------------------------------
class _Local:
    """Shards in this process, with the model loaded here."""

    retries = 0

    def __init__(self, options: ExecutorOptions) -> None:
        if options.threads:
            import torch

            torch.set_num_threads(options.threads)

    @contextlib.contextmanager
    def session(self, model: ModelSpec) -> Iterator[tuple[Any, Any]]:
        lm = load(model)
        yield lm, LocalExecutor(lm)

    def close(self) -> None:
        pass


class _Ray:
    """Shards on a pool of Ray workers, each holding the model; the driver keeps only its facts."""

    def __init__(self, options: ExecutorOptions, device: str, say: Callable[[str], None]) -> None:
        self.pool = RayPool(options, device=device, say=say)

    @property
    def retries(self) -> int:
        return self.pool.retries

    @contextlib.contextmanager
    def session(self, model: ModelSpec) -> Iterator[tuple[Any, Any]]:
        yield RemoteModel(self.pool.load(model)), self.pool.executor(model)

    def close(self) -> None:
        self.pool.close()


class _Counting:
    """An executor passing another's shards through, counting them and advancing the sweep's progress."""

    def __init__(self, inner: Any, pb: "_Progress", label: str) -> None:
        self.inner, self.pb, self.label = inner, pb, label
        self.computed = 0

    def map(self, analysis: Analysis, stage: Stage, ctx: Context, shards: list[Shard]):
        self.pb.stage(f"{self.label}: {stage.name}", len(shards))
        for shard, tables in self.inner.map(analysis, stage, ctx, shards):
            self.computed += 1
            self.pb.update()
            yield shard, tables


class _Progress:
    """One bar for the whole sweep: shards done / shards known so far, across every worker."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = bar(total=0, desc="sweep", enabled=enabled, unit="shard")

    def stage(self, label: str, todo: int) -> None:
        self.bar.total += todo
        self.bar.set_description(label, refresh=False)
        self.bar.refresh()

    def reused(self, n: int) -> None:
        if n:
            self.bar.total += n
            self.bar.update(n)

    def update(self) -> None:
        self.bar.update(1)

    def write(self, message: str) -> None:
        """A line of status above the bar (nothing when progress is off)."""
        if self.enabled:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

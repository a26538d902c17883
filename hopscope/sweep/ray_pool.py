"""The Ray executor: a pool of worker actors, each holding one loaded replica of the model, running shards.

Ray is an optional extra (``pip install "hopscope[ray]"``), imported only when a Ray sweep starts. Without
an address (``--ray-address`` / ``$RAY_ADDRESS``) a local Ray is started on this machine and stopped at the
end; with one, the sweep joins that cluster as a driver. The driver keeps the run folder: workers get the
analysis and the stage's :class:`~hopscope.pipeline.Context` through Ray's object store and send each shard's
tables back; the driver writes the Parquet part. A worker that dies (process exit, node loss, out of
memory) loses only the shard it was running: a fresh worker replaces it and the shard runs again, at most
``max_retries`` times. An exception raised *by* a shard is not retried (a shard is a pure function of its
inputs: it would raise again); it ends the sweep like a local run, with finished parts kept.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from hopscope.pipeline import Analysis, Context, Shard, Stage

from .models import ModelSpec, free_memory, load
from .spec import ExecutorOptions

# Test hook: "<analysis>/<stage>/<index>=<marker file>" makes the first attempt at that shard exit its worker
# process (os._exit) before it computes anything; the marker file (created then) lets the retry through.
CRASH_ENV = "HOPSCOPE_SWEEP_CRASH_ONCE"
PLACEMENT_TIMEOUT_S = 600.0  # how long workers may wait for cluster resources before the sweep gives up


class ShardLost(RuntimeError):
    """A shard whose workers kept dying: it was tried ``1 + max_retries`` times."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the Ray executor needs Ray: pip install "hopscope[ray]"') from None
    return ray


class ShardWorker:
    """The body of one Ray actor: one model replica (reloaded only when the model changes) running shards."""

    def __init__(self, threads: int | None, crash: str | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self._spec: ModelSpec | None = None
        self._lm: Any = None
        self._crash = crash
        self._cached: dict[str, tuple[Any, Any]] = {}  # "analysis"/"ctx" -> (object ref id, object)

    def load(self, spec: ModelSpec) -> dict[str, Any]:
        """Hold ``spec``'s model (loading it unless held already); returns its facts."""
        if self._spec != spec:
            self._lm, self._spec = None, None
            free_memory()
            self._lm = load(spec)
            self._spec = spec
        return self._lm.summary()

    def work(self, spec: ModelSpec, stage: str, analysis_ref: list, ctx_ref: list, shard: Shard) -> dict:
        """Run one shard of ``stage`` (the analysis and context come as object refs, fetched once per stage)."""
        self.load(spec)
        analysis: Analysis = self._fetch("analysis", analysis_ref[0])
        ctx: Context = self._fetch("ctx", ctx_ref[0])
        _maybe_crash(self._crash, analysis.name, shard)
        for s in analysis.stages:
            if s.name == stage:
                return s.work(self._lm, ctx, shard)
        raise ValueError(f"analysis {analysis.name!r} has no stage {stage!r}")

    def pid(self) -> int:
        return os.getpid()

    def _fetch(self, slot: str, ref: Any) -> Any:
        import ray

        key = ref.hex()
        if slot not in self._cached or self._cached[slot][0] != key:
            self._cached[slot] = (key, ray.get(ref))
        return self._cached[slot][1]


def _maybe_crash(spec: str | None, analysis: str, shard: Shard) -> None:
    if not spec:
        return
    target, _, marker = spec.partition("=")
    if target != f"{analysis}/{shard.stage}/{shard.index}" or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(3)


def worker_gpus(options: ExecutorOptions, device: str) -> float:
    """GPUs per worker: as given, else 1 for a CUDA device and 0 otherwise (a CUDA sweep needs some)."""
    gpus = options.gpus_per_worker
    n = float(gpus) if gpus is not None else (1.0 if str(device).startswith("cuda") else 0.0)
    if str(device).startswith("cuda") and n == 0:
        raise ValueError(f"--device {device} with --gpus-per-worker 0: the Ray workers would see no GPU")
    return n


class RayPool:
    """``options.workers`` actors on a local or joined Ray cluster; :meth:`executor` runs one model on them."""

    def __init__(self, options: ExecutorOptions, *, device: str = "cpu",
                 say: Callable[[str], None] = lambda m: None) -> None:
        self._ray = ray = import_ray()
        self.options = options
        self.say = say
        self.gpus = worker_gpus(options, device)
        self.cpus = float(options.cpus_per_worker)
        self.threads = options.threads or max(1, int(self.cpus))
        self.retries = 0  # shards run again because their worker died
        self.owns_ray = False
        if not ray.is_initialized():
            address = options.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
                say(f"joined the Ray cluster at {address}")
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(options.workers * self.cpus)),
                         include_dashboard=False, logging_level=logging.WARNING)
                self.owns_ray = True
                say("started a local Ray")
        self._crash = os.environ.get(CRASH_ENV)
        self._remote = ray.remote(ShardWorker)
        self.actors: list[Any] = []
        try:
            self._check_resources()
            self.actors = [self._new_actor() for _ in range(options.workers)]
            self._wait_placed()
        except BaseException:
            self.close()
            raise

    # -- workers ----------------------------------------------------------------------------------
    def _new_actor(self) -> Any:
        return self._remote.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0).remote(
            self.threads, self._crash)

    def _check_resources(self) -> None:
        have = self._ray.cluster_resources()
        need = {"CPU": self.options.workers * self.cpus, "GPU": self.options.workers * self.gpus}
        short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need
                 if need[k] > 0 and need[k] > have.get(k, 0)]
        if short and self.owns_ray:
            raise ValueError(f"{self.options.workers} workers with {self.cpus:g} CPUs and {self.gpus:g} GPUs each "
                             f"need {' and '.join(short)}: use fewer --workers or smaller --gpus-per-worker")
        if short:
            self.say(f"waiting for the cluster to provide {' and '.join(short)}")

    def _wait_placed(self) -> None:
        refs = [a.pid.remote() for a in self.actors]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_TIMEOUT_S)
        if len(ready) < len(refs):
            raise RuntimeError(f"only {len(ready)} of {len(refs)} Ray workers started within "
                               f"{PLACEMENT_TIMEOUT_S:.0f} s "
                               f"(each needs {self.cpus:g} CPUs and {self.gpus:g} GPUs; the cluster has "
                               f"{self._ray.cluster_resources()})")
        self._ray.get(ready)

    def _replace(self, actor: Any) -> Any:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - it is dead already
            pass
        new = self._new_actor()
        self.actors[self.actors.index(actor)] = new
        return new

    def close(self) -> None:
        """Stop the workers (and the local Ray this pool started)."""
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        if self.owns_ray:
            self._ray.shutdown()

    # -- running ----------------------------------------------------------------------------------
    def load(self, spec: ModelSpec) -> dict[str, Any]:
        """Every worker loads ``spec`` (in parallel); returns the model's facts."""
        refs = [a.load.remote(spec) for a in self.actors]
        return [self._get(r) for r in refs][0]

    def executor(self, spec: ModelSpec) -> "RayExecutor":
        return RayExecutor(self, spec)

    def run(self, spec: ModelSpec, analysis: Analysis, stage: Stage, ctx: Context,
            shards: Sequence[Shard]) -> Iterator[tuple[Shard, dict]]:
        """Yield ``(shard, tables)`` as workers finish them, one shard in flight per worker."""
        ray = self._ray
        _ship_by_value(ray, analysis)
        analysis_ref, ctx_ref = ray.put(analysis), ray.put(ctx)
        queue: deque[Shard] = deque(shards)
        attempts: dict[int, int] = {}
        free = list(self.actors)
        running: dict[Any, tuple[Any, Shard]] = {}
        lost = _lost_errors(ray)
        try:
            while queue or running:
                while queue and free:
                    actor, shard = free.pop(), queue.popleft()
                    running[actor.work.remote(spec, stage.name, [analysis_ref], [ctx_ref], shard)] = (actor, shard)
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    actor, shard = running.pop(ref)
                    try:
                        tables = ray.get(ref)
                    except lost as err:
                        n = attempts[shard.index] = attempts.get(shard.index, 0) + 1
                        if n > self.options.max_retries:
                            raise ShardLost(f"{analysis.name}: shard {shard.index} of stage {shard.stage!r} lost its "
                                            f"worker {n} times ({type(err).__name__}); giving up") from None
                        self.retries += 1
                        self.say(f"{analysis.name}: a worker died running shard {shard.index} of {shard.stage!r} "
                                 f"({type(err).__name__}); running it again on a new worker "
                                 f"(retry {n} of at most {self.options.max_retries})")
                        free.append(self._replace(actor))
                        queue.appendleft(shard)
                        continue
                    except ray.exceptions.RayTaskError as err:
                        raise _cause(err) from None
                    free.append(actor)
                    yield shard, tables
        finally:
            for ref in running:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            raise _cause(err) from None


class RayExecutor:
    """The :class:`hopscope.pipeline.Executor` of one model on a :class:`RayPool`."""

    def __init__(self, pool: RayPool, spec: ModelSpec) -> None:
        self.pool = pool
        self.spec = spec

    def map(self, analysis: Analysis, stage: Stage, ctx: Context, shards: Sequence[Shard]):
        yield from self.pool.run(self.spec, analysis, stage, ctx, shards)


def _lost_errors(ray: Any) -> tuple[type, ...]:
    """Ray's errors for a worker that went away (as opposed to an exception raised by the shard)."""
    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "OutOfMemoryError", "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _cause(err: Any) -> BaseException:
    """The exception a shard raised in a worker, with the worker's traceback kept as a note."""
    cause = getattr(err, "cause", None)
    if not isinstance(cause, BaseException):
        return RuntimeError(str(err).splitlines()[0] if str(err) else type(err).__name__)
    if hasattr(cause, "add_note"):
        cause.add_note(f"(raised in a Ray worker)\n{err}")
    return cause


def _ship_by_value(ray: Any, analysis: Analysis) -> None:
    """Analyses defined outside hopscope (a script's own, a test's) travel to the workers by value, so the
    workers need not be able to import the module that defines them (what it imports, they must)."""
    fns: list[Any] = [analysis.finish, analysis.prepare, analysis.settings_type]
    fns += [f for s in analysis.stages for f in (s.plan, s.work)]
    for fn in fns:
        name = getattr(fn, "__module__", None)
        if name and name != "__main__" and not name.startswith("hopscope") and name in sys.modules:
            ray.cloudpickle.register_pickle_by_value(sys.modules[name])

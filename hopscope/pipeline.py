"""Analyses as stages of pure, seeded shards: resumable in a run folder and runnable on any executor.

An :class:`Analysis` is a list of :class:`Stage`s and a ``finish`` step. A stage *plans* its work as a list
of JSON-able payloads (query ids, grid cells, ...) from the :class:`Context` (data, settings, model facts
and the merged tables of the stages before it), and *works* one :class:`Shard` at a time with the model,
returning a dict of tables. A shard's tables depend only on (model, settings, payload, seed, earlier
tables), never on which process or executor ran it, so a run folder keeps each finished shard as Parquet
parts under ``parts/<stage>/<shard>/``, a rerun skips them, and the merge (concatenation in shard order)
is the same however the work was spread. ``finish`` turns the merged tables into a :class:`Result`
without the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import pandas as pd

from hopscope.progress import bar
from hopscope.results import Result

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``payload`` of stage ``stage``, number ``index``, with its own ``seed``."""

    stage: str
    index: int
    payload: Any
    seed: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


@dataclass
class Context:
    """What a stage sees: the analysis's data and settings, the model's facts, earlier stages' tables."""

    data: Any
    settings: Any
    model: dict[str, Any] = field(default_factory=dict)
    tables: Tables = field(default_factory=dict)


@dataclass
class Stage:
    """``plan(ctx) -> payloads``; ``work(lm, ctx, shard) -> tables`` (pure given its inputs)."""

    name: str
    plan: Callable[[Context], Sequence[Any]]
    work: Callable[["LoadedModel", Context, Shard], Tables]


@dataclass
class Analysis:
    """A named analysis: how to prepare its data, its stages, and how to finish into a Result."""

    name: str
    settings_type: type
    stages: list[Stage]
    finish: Callable[[Context], Result]
    prepare: Callable[[Any, Any], Any] = field(default=lambda data, settings: data)
    title: str = ""

    def default_settings(self, quick: bool = False) -> Any:
        return self.settings_type.quick() if quick else self.settings_type()


class Executor(Protocol):
    """Runs the shards of one stage and yields ``(shard, tables)`` as each finishes (any order)."""

    def map(self, analysis: Analysis, stage: Stage, ctx: Context, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Tables]]:
        ...


class LocalExecutor:
    """In-process, one shard after another, with the already loaded model."""

    def __init__(self, lm: "LoadedModel") -> None:
        self.lm = lm

    def map(self, analysis: Analysis, stage: Stage, ctx: Context, shards: Sequence[Shard]):
        for shard in shards:
            yield shard, stage.work(self.lm, ctx, shard)


def shard_seed(seed: int, *parts: object) -> int:
    """A seed for one shard, a pure function of the run's seed and the shard's identity."""
    return (int(seed) * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2 ** 31)


def make_shards(analysis: Analysis, stage: Stage, ctx: Context) -> list[Shard]:
    seed = int(getattr(ctx.settings, "seed", 0))
    return [Shard(stage.name, i, p, shard_seed(seed, analysis.name, stage.name, i))
            for i, p in enumerate(stage.plan(ctx))]


# ---- where finished shards live -----------------------------------------------------------------------------
class MemoryStore:
    """Shard tables kept in memory (a run without a folder)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], Tables] = {}

    def done(self, shard: Shard) -> bool:
        return (shard.stage, shard.index) in self._parts

    def put(self, shard: Shard, tables: Tables) -> None:
        self._parts[shard.stage, shard.index] = dict(tables)

    def get(self, shard: Shard) -> Tables:
        return self._parts[shard.stage, shard.index]


class FolderStore:
    """Shard tables as Parquet parts: ``<root>/<stage>/<shard>/<table>.parquet``, each shard written
    atomically (a temporary folder renamed into place), so a killed run leaves only whole shards."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, shard: Shard) -> Path:
        return self.root / shard.stage / shard.name

    def done(self, shard: Shard) -> bool:
        return (self._dir(shard) / "_done").is_file()

    def put(self, shard: Shard, tables: Tables) -> None:
        final = self._dir(shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{shard.name}-", dir=final.parent))
        try:
            for name, df in tables.items():
                _check_table(shard, name, df)
                df.reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "_done").write_text(",".join(tables))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def get(self, shard: Shard) -> Tables:
        d = self._dir(shard)
        names = [n for n in (d / "_done").read_text().split(",") if n]
        return {n: pd.read_parquet(d / f"{n}.parquet") for n in names}

    def count(self, stage: str | None = None) -> int:
        """Finished shards (of one stage, or all)."""
        pattern = f"{stage}/*/_done" if stage else "*/*/_done"
        return sum(1 for p in self.root.glob(pattern) if not p.parent.name.startswith("."))  # not a killed put's


def _check_table(shard: Shard, name: str, df: Any) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"stage {shard.stage!r} returned {type(df).__name__} for table {name!r}, not a DataFrame")


def merge(parts: Iterable[Tables]) -> Tables:
    """Concatenate each table over shards, in shard order."""
    out: dict[str, list[pd.DataFrame]] = {}
    for tables in parts:
        for name, df in tables.items():
            out.setdefault(name, []).append(df)
    return {name: (pd.concat([d for d in dfs if len(d)] or dfs[:1], ignore_index=True)) for name, dfs in out.items()}


def store_for(run_folder: Any) -> MemoryStore | FolderStore:
    if run_folder is None:
        return MemoryStore()
    return FolderStore(Path(getattr(run_folder, "path", run_folder)) / "parts")


def run_stages(analysis: Analysis, ctx: Context, store: MemoryStore | FolderStore, executor: Executor, *,
               progress: bool = True) -> Context:
    """Run every stage whose shards are not all in ``store``; returns ``ctx`` with every stage's tables."""
    for stage in analysis.stages:
        shards = make_shards(analysis, stage, ctx)
        todo = [s for s in shards if not store.done(s)]
        if todo:
            with bar(total=len(shards), desc=f"{analysis.name}: {stage.name}", enabled=progress, unit="shard") as pb:
                pb.update(len(shards) - len(todo))
                for shard, tables in executor.map(analysis, stage, ctx, todo):
                    store.put(shard, tables)
                    pb.update(1)
        tables = merge(store.get(s) for s in shards)
        clash = set(tables) & set(ctx.tables)
        if clash:
            raise ValueError(f"{analysis.name}: stage {stage.name!r} writes tables {sorted(clash)} that an earlier "
                             "stage wrote already; table names must be unique within an analysis")
        ctx.tables.update(tables)
    return ctx


def model_facts(lm: "LoadedModel") -> dict[str, Any]:
    """The model facts a plan may use (layer and head counts, names) without holding the model."""
    return lm.summary()


def execute(analysis: Analysis, lm: "LoadedModel", data: Any = None, settings: Any = None, *,
            run_folder: Any = None, progress: bool = True, executor: Executor | None = None) -> Result:
    """Prepare, run every stage (resuming from ``run_folder``'s parts) and finish into a :class:`Result`.

    ``run_folder``: None (in memory), a :class:`hopscope.report.RunFolder` (the result is saved into it and
    left for its owner to finish), or a path (a run folder created, or resumed if it holds one, and finished).
    ``lm``: the loaded model, or, when ``executor`` runs the shards on copies of its own (the Ray executor of
    :mod:`hopscope.sweep`), any object whose ``summary()`` gives the model's facts.
    """
    from hopscope.report import RunFolder

    settings = settings if settings is not None else analysis.default_settings()
    if not isinstance(settings, analysis.settings_type):
        raise TypeError(f"{analysis.name} takes {analysis.settings_type.__name__}, not {type(settings).__name__}")
    own = run_folder is not None and not isinstance(run_folder, RunFolder)
    if own:
        path = Path(run_folder)
        if (path / "config.json").is_file():
            run_folder = RunFolder.resume(path, command=analysis.name, args=settings.to_dict())
        else:
            run_folder = RunFolder.create(analysis.name, settings.to_dict(), out=path,
                                          seed=getattr(settings, "seed", None))
    try:
        if run_folder is not None:
            run_folder.set_model(lm)
        prepared = analysis.prepare(data, settings)
        if run_folder is not None and prepared is not None and isinstance(prepared, (list, tuple)):
            run_folder.set_dataset(f"{analysis.name}-data", list(prepared))
        ctx = Context(prepared, settings, model_facts(lm))
        run_stages(analysis, ctx, store_for(run_folder), executor or LocalExecutor(lm), progress=progress)
        result = analysis.finish(ctx)
        result.model = result.model or model_facts(lm)
        if run_folder is not None:
            result.save(run_folder, finish=own)
    except BaseException as err:
        if own:
            run_folder.fail(err)
        raise
    return result

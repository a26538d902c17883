"""What a sweep runs: a grid of models x analyses x datasets (from flags or a small TOML file).

Three parts, kept apart because they play different roles on resume:

- :class:`SweepSpec`, the grid and everything the tables depend on (models, analyses, datasets, size, seed,
  setting overrides, device, dtype). It is recorded as the run's arguments; resuming with another one is
  refused, since mixing them would mix results.
- :class:`Placement`, how each model is laid out over devices (``device_map``, ``max_memory``, offload folder).
- :class:`ExecutorOptions`, where the shards run (``local`` or ``ray``, workers, GPUs and CPUs per worker,
  the cluster address, retries). Placement and executor never change a table, so a sweep started on a
  laptop may be finished on a cluster.

A sweep file::

    models = ["smollm2-135m", "HuggingFaceTB/SmolLM2-360M-Instruct"]
    analyses = ["hopping", "recall"]
    datasets = ["default"]              # "default": each analysis's own data; else dataset files
    size = "study"                      # full (the paper's protocol) | study | quick
    seed = 0
    device = "cuda"
    dtype = "bfloat16"

    [settings.recall]                   # overrides of one analysis's Settings fields
    n_queries = 200

    [placement]                         # models larger than one device
    device_map = "auto"
    max_memory = { 0 = "70GiB", 1 = "70GiB", cpu = "200GiB" }

    [executor]
    kind = "ray"
    workers = 4
    gpus_per_worker = 2
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopscope.pipeline import Analysis

SIZES = ("full", "study", "quick")
EXECUTORS = ("local", "ray")
DEFAULT_DATASET = "default"


@dataclass
class SweepSpec:
    """The grid of a sweep and what its tables depend on (recorded in the run folder, checked on resume).

    ``analyses``: registered names (``hopscope.methods.REGISTRY``), ``"module:ATTRIBUTE"`` naming an
    :class:`~hopscope.pipeline.Analysis` anywhere importable, or (from Python) Analysis objects.
    ``datasets``: ``"default"`` (each analysis's own data) or dataset files (``hopscope.data.Dataset.load``).
    ``settings``: per analysis, overrides of its ``Settings`` fields, applied on top of ``size``.
    """

    models: list[str]
    analyses: list[Any]
    datasets: list[str] = field(default_factory=lambda: [DEFAULT_DATASET])
    size: str = "full"
    seed: int = 0
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.models = [str(m) for m in self.models]
        self.analyses = list(self.analyses)
        self.datasets = [str(d) for d in self.datasets] or [DEFAULT_DATASET]
        if not self.models:
            raise ValueError("a sweep needs at least one model (--model)")
        if not self.analyses:
            raise ValueError("a sweep needs at least one analysis (--analysis)")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        for kind, items in (("model", self.models), ("analysis", [analysis_label(a) for a in self.analyses]),
                            ("dataset", self.datasets)):
            dup = sorted({x for x in items if items.count(x) > 1})
            if dup:
                raise ValueError(f"{kind} {dup[0]!r} is listed twice")

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.models), "analyses": [analysis_label(a) for a in self.analyses],
                "datasets": list(self.datasets), "size": self.size, "seed": int(self.seed),
                "settings": {k: dict(v) for k, v in self.settings.items()}, "device": self.device,
                "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "sweep") -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        missing = [k for k in ("models", "analyses") if not d.get(k)]
        if missing:
            flag = {"models": "--model", "analyses": "--analysis"}
            raise ValueError(f"{where}: no {' and no '.join(missing)} given (use {' and '.join(flag[m] for m in missing)}, "
                             "or a TOML file with --config)")
        return cls(**d)

    def jobs(self) -> list["Job"]:
        """One job per (model, analysis, dataset), models outermost (each model is loaded once)."""
        analyses = [(a, resolve_analysis(a)) for a in self.analyses]
        slugs = _unique_slugs(self.models, "model")
        data_slugs = _unique_slugs(self.datasets, "dataset")
        out = []
        for model in self.models:
            for label, analysis in analyses:
                overrides = dict(self.settings.get(analysis_label(label), self.settings.get(analysis.name, {})))
                settings = build_settings(analysis, self.size, self.seed, overrides)
                for dataset in self.datasets:
                    folder = f"{slugs[model]}__{analysis.name}"
                    if dataset != DEFAULT_DATASET:
                        folder += f"__{data_slugs[dataset]}"
                    out.append(Job(model, analysis, dataset, settings, folder))
        unknown = set(self.settings) - {analysis_label(a) for a in self.analyses} - {a.name for _, a in analyses}
        if unknown:
            raise ValueError(f"settings given for {sorted(unknown)[0]!r}, which is not among the sweep's analyses")
        folders = [j.folder for j in out]
        dup = sorted({f for f in folders if folders.count(f) > 1})
        if dup:
            raise ValueError(f"two jobs would share the folder {dup[0]!r} (two analyses with the same name?)")
        return out


@dataclass
class Placement:
    """How a model is laid over devices (accelerate): see :func:`hopscope.models.load_model`."""

    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, Any] | None = None
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        if self.device_map is None and (self.max_memory is not None or self.offload_folder is not None):
            raise ValueError("max_memory and offload_folder need a device_map (e.g. --device-map auto)")
        if isinstance(self.max_memory, str):
            self.max_memory = parse_max_memory(self.max_memory)
        elif self.max_memory is not None:
            self.max_memory = {_device_key(k): v for k, v in dict(self.max_memory).items()}

    def to_dict(self) -> dict[str, Any]:
        return {"device_map": self.device_map, "max_memory": self.max_memory, "offload_folder": self.offload_folder}


@dataclass
class ExecutorOptions:
    """Where shards run. ``gpus_per_worker=None``: 1 when the device is CUDA, else 0.
    ``threads``: torch threads per worker (default: ``cpus_per_worker``). ``max_retries``: how often a shard
    whose worker died is run again before the sweep gives up. ``address``: a Ray cluster to join (default
    ``$RAY_ADDRESS``; none: a local Ray is started)."""

    kind: str = "local"
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    address: str | None = None
    max_retries: int = 2
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor {self.kind!r}; choose one of {', '.join(EXECUTORS)}")
        if int(self.workers) < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker is not None and float(self.gpus_per_worker) < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if float(self.cpus_per_worker) <= 0:
            raise ValueError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if int(self.max_retries) < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        self.workers, self.max_retries = int(self.workers), int(self.max_retries)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Job:
    """One (model, analysis, dataset) of the grid, run into the child run folder ``folder``."""

    model: str
    analysis: Analysis
    dataset: str
    settings: Any
    folder: str


# ---- resolving names -----------------------------------------------------------------------------------------
def analysis_label(a: Any) -> str:
    """How an analysis is named in the recorded spec: its string, or an Analysis object's name."""
    return a.name if isinstance(a, Analysis) else str(a)


def resolve_analysis(a: Any) -> Analysis:
    """An :class:`Analysis` from a registered name, ``"module:ATTRIBUTE"``, or an Analysis itself."""
    if isinstance(a, Analysis):
        return a
    name = str(a)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"analysis {name!r}: cannot import {attr!r} from {module_name!r} ({err})") from None
    else:
        from hopscope.methods import REGISTRY, analysis

        if name not in REGISTRY:
            raise ValueError(f"unknown analysis {name!r}; choose from {', '.join(REGISTRY)} or give module:ATTRIBUTE")
        try:
            obj = analysis(name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"analysis {name!r} is registered but not available in this build ({err})") from None
    if not isinstance(obj, Analysis):
        raise ValueError(f"analysis {name!r} is a {type(obj).__name__}, not a hopscope.pipeline.Analysis")
    return obj


def build_settings(analysis: Analysis, size: str, seed: int, overrides: dict[str, Any]) -> Any:
    """The analysis's Settings at ``size`` (``full`` = its defaults, the paper's protocol; ``study`` = its
    ``study()`` where it has one; ``quick`` = ``quick()``), with ``overrides`` and the sweep's seed."""
    st = analysis.settings_type
    if size == "quick":
        settings = st.quick()
    elif size == "study" and hasattr(st, "study"):
        settings = st.study()
    else:
        settings = st()
    fields = {f.name for f in dataclasses.fields(settings)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"analysis {analysis.name!r} has no setting {key!r}; "
                             f"its settings: {', '.join(sorted(fields))}")
        if isinstance(getattr(settings, key), tuple) and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    if "seed" in fields and "seed" not in overrides:
        changes["seed"] = int(seed)
    return dataclasses.replace(settings, **changes)


def load_dataset(name: str) -> Any:
    """``None`` for ``"default"`` (the analysis builds its own data), else the records of a dataset file."""
    if name == DEFAULT_DATASET:
        return None
    from hopscope.data import Dataset

    return Dataset.load(name)


# ---- parsing ---------------------------------------------------------------------------------------------------
def parse_max_memory(text: str) -> dict[Any, str]:
    """``"0=20GiB,1=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", 1: "20GiB", "cpu": "60GiB"}``."""
    out: dict[Any, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--max-memory: {item!r} is not DEVICE=SIZE (e.g. 0=20GiB,cpu=60GiB)")
        out[_device_key(key.strip())] = value.strip()
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"recall.n_queries=200"`` -> ``("recall", "n_queries", 200)`` (values are JSON where they parse)."""
    target, sep, raw = text.partition("=")
    analysis, dot, key = target.rpartition(".")
    if not sep or not dot or not analysis or not key:
        raise ValueError(f"--set {text!r}: use ANALYSIS.SETTING=VALUE, e.g. recall.n_queries=200")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return analysis, key, value


def read_sweep_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Placement, ExecutorOptions]:
    """A sweep TOML file: (the grid as a dict for :class:`SweepSpec`, its placement, its executor options)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError("reading a sweep file needs Python 3.11+ (or `pip install tomli`)") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    placement = _section(path, data.pop("placement", {}), Placement, "placement")
    executor = _section(path, data.pop("executor", {}), ExecutorOptions, "executor")
    grid = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(data) - grid)
    if unknown:
        known = ", ".join(sorted(grid | {"placement", "executor"}))
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; known: {known}")
    return data, placement, executor


def _section(path: Path, data: Any, cls: type, name: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: [{name}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: [{name}] has no key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return cls(**data)


def _device_key(key: Any) -> Any:
    """max_memory keys: GPU indices as ints (TOML keys are strings), ``cpu``/``disk``/``mps`` as strings."""
    text = str(key).strip()
    return int(text) if text.isdigit() else text


def _unique_slugs(names: list[str], kind: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        base = Path(name).name if (os.sep in name and Path(name).expanduser().exists()) else name
        s = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-") or kind
        if s in out.values():
            other = next(k for k, v in out.items() if v == s)
            raise ValueError(f"{kind}s {other!r} and {name!r} would share the folder name {s!r}")
        out[name] = s
    return out

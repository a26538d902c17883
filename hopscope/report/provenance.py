"""Provenance helpers: timestamps, library versions, model descriptions and dataset content hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

_VERSIONED = ("hopscope", "torch", "transformers", "pandas", "pyarrow", "numpy")


def now() -> datetime:
    """The current local time, timezone-aware, to the second."""
    return datetime.now().astimezone().replace(microsecond=0)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results (read from package metadata, without importing
    them), and the engine's linear route (``hopscope.engine.linear``: which float32 CPU kernel computed the
    numbers)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = _module_version(name)
    out["linear_route"] = _linear_route()
    return out


def _linear_route() -> str:
    try:
        from hopscope.engine.linear import route

        return route()
    except Exception:  # a broken torch should not stop a run from recording its config
        return "unknown"


def _module_version(name: str) -> str:
    """Fallback for packages used from a source checkout without being installed."""
    if name == "hopscope":
        try:
            import hopscope

            return str(getattr(hopscope, "__version__", "unknown"))
        except Exception:  # a broken package should not stop a run from recording its config
            return "unknown"
    return "not installed"


def host() -> str:
    """This machine's host name (used to tell whether a 'running' run's process is still alive)."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_model(model: Any, source: str | None = None) -> dict[str, Any]:
    """Record of a model: a loaded model object (name/source/family/sizes attributes) or a plain name."""
    if isinstance(model, (str, os.PathLike)):
        return {"name": str(model), "source": source}
    info: dict[str, Any] = {
        "name": str(getattr(model, "name", type(model).__name__)),
        "source": source if source is not None else _str_or_none(getattr(model, "source", None)),
    }
    for attr in ("family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_vocab"):
        value = getattr(model, attr, None)
        if isinstance(value, (str, int)):
            info[attr] = value
    return info


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def dataset_hash(data: Any) -> tuple[str, int | None]:
    """sha256 of a dataset's content and its record count (None when unknown, e.g. a file on disk).

    ``data`` may be a file or folder path (hashed byte for byte), a pandas DataFrame, or an iterable of
    records (dicts, dataclasses, objects with ``to_dict()``); records are hashed as canonical JSON lines,
    so the same records give the same hash whatever their container.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"dataset path does not exist: {path}")
        return _hash_path(path), None
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            data = data.to_dict("records")
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    if not isinstance(data, Iterable) or isinstance(data, Iterator):
        raise TypeError(
            f"cannot hash a dataset of type {type(data).__name__}; pass a path, a DataFrame or a list of records"
        )
    digest = hashlib.sha256()
    count = 0
    for record in data:
        line = json.dumps(_plain(record), sort_keys=True, default=str, ensure_ascii=False)
        digest.update(line.encode("utf-8") + b"\n")
        count += 1
    return "sha256:" + digest.hexdigest(), count


def _plain(record: Any) -> Any:
    """A JSON-friendly view of one record."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, Mapping):
        return dict(record)
    for method in ("to_dict", "model_dump"):
        if callable(getattr(record, method, None)):
            return getattr(record, method)()
    return record


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()

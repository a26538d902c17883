"""Helpers shared by the loaders: locating package data, reading tables with clear errors."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hopscope.data.records import RecordError

SHARED_DATA_ENV = "HOPSCOPE_SHARED_DATA"


def package_folder(package: str, *parts: str) -> Path:
    """Folder of an installed package (found with ``find_spec``; the package is *not* imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (needed for its data files)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found in package {package!r}")
    return path


def shared_data_dir() -> Path:
    """The shared data folder: ``$HOPSCOPE_SHARED_DATA``, else ``../shared/data`` from the working
    directory or from the repository root."""
    candidates = []
    if os.environ.get(SHARED_DATA_ENV):
        candidates.append(Path(os.environ[SHARED_DATA_ENV]))
    candidates += [Path.cwd() / ".." / "shared" / "data",
                   Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FileNotFoundError(
        f"shared data folder not found (tried {', '.join(str(c) for c in candidates)}); "
        f"set {SHARED_DATA_ENV}")


def read_table(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a CSV as text cells ('' for empty) and check the columns; errors name file and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RecordError(f"missing column(s) {missing}; the file has {list(frame.columns)}",
                          file=str(path), field=missing[0])
    return frame


def cell(row: dict, name: str, *, required: bool = True) -> str:
    """A stripped text cell; a required empty cell raises :class:`RecordError` for that field."""
    value = (row.get(name) or "").strip()
    if required and not value:
        raise RecordError("is empty", field=name)
    return value


def sentence_start(text: str) -> str:
    """Capitalise the first letter."""
    return text[:1].upper() + text[1:]

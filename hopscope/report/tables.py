"""Tidy tables on disk: whole tables and incremental, crash-safe, resumable ones.

Layout inside a run folder's ``tables/`` directory::

    <name>.parquet            the table (sorted by its key); complete once the writer closed cleanly
    <name>.parts/part-N.parquet  chunks flushed while a run is in progress (merged into <name>.parquet
                              when the writer closes cleanly; left in place after a crash or Ctrl-C)
    <name>.csv                optional copy of the final table

Every parquet file carries JSON metadata: the table key, and the keys of the *units of work* whose
rows it holds (``done``), so a resumed run knows what to skip even for units that produced no rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

Rows = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Any]
Key = Any  # a scalar or a tuple of scalars

_META = b"hopscope"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PART = re.compile(r"^part-(\d+)\.parquet$")


def check_name(name: str, what: str = "table") -> str:
    """Validate a table/figure name (it becomes a file name)."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".parts", ".tmp")):
        raise ValueError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.' and start with a letter or digit"
        )
    return name


def normalize_key(value: Any) -> Key:
    """A hashable, JSON-stable form of a key: numpy scalars -> Python, lists -> tuples, 1-tuples -> scalar."""
    if isinstance(value, (list, tuple)):
        items = tuple(normalize_key(v) for v in value)
        return items[0] if len(items) == 1 else items
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"keys must be scalars or tuples of scalars, got {type(value).__name__}: {value!r}")


def to_arrow(rows: Rows) -> pa.Table:
    """Rows (a DataFrame, a list of dicts or one dict) as an Arrow table; the index is dropped."""
    if isinstance(rows, pd.DataFrame):
        df = rows
    elif isinstance(rows, Mapping):
        df = pd.DataFrame([rows])
    else:
        df = pd.DataFrame(list(rows))
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise TypeError(f"rows cannot be stored as a Parquet table: {err}") from err


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def _write_parquet(path: Path, table: pa.Table, meta: Mapping[str, Any]) -> None:
    """Write atomically (temporary file, then rename) with hopscope metadata."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META: json.dumps(meta).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict[str, Any]:
    raw = (pq.read_schema(path).metadata or {}).get(_META)
    return json.loads(raw) if raw else {}


def _keys_from_meta(meta: Mapping[str, Any]) -> set[Key]:
    return {normalize_key(k) for k in meta.get("done", [])}


def _row_keys(table: pa.Table, key: Sequence[str]) -> list[Key]:
    if not key or table.num_rows == 0:
        return []
    columns = [table.column(k).to_pylist() for k in key]
    return list(dict.fromkeys(normalize_key(tuple(vals)) for vals in zip(*columns, strict=True)))


def sort_by_key(df: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Stable sort by the key columns (rows with equal keys keep their order); fresh RangeIndex."""
    key = [k for k in key if k in df.columns]
    if key and len(df):
        try:
            df = df.sort_values(key, kind="mergesort", na_position="last")
        except TypeError:  # mixed types in a key column: order by their text instead
            df = df.sort_values(key, kind="mergesort", key=lambda col: col.astype(str))
    return df.reset_index(drop=True)


class TableStore:
    """The ``tables/`` directory of one run folder."""

    def __init__(self, root: Path, csv: bool = False) -> None:
        self.root = Path(root)
        self.csv = csv

    # ---- paths -------------------------------------------------------------------------------------
    def base_path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.parquet"

    def parts_dir(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.parts"

    def _live_parts(self, name: str) -> list[Path]:
        """Part files not yet merged into the base file, in write order."""
        parts_dir = self.parts_dir(name)
        if not parts_dir.is_dir():
            return []
        base = self.base_path(name)
        absorbed = set(_read_meta(base).get("absorbed", [])) if base.exists() else set()
        parts = [p for p in parts_dir.iterdir() if _PART.match(p.name) and p.name not in absorbed]
        return sorted(parts, key=lambda p: int(_PART.match(p.name).group(1)))

    # ---- queries -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of every table in the store (complete or in progress)."""
        if not self.root.is_dir():
            return []
        found = {p.stem for p in self.root.glob("*.parquet")}
        found |= {p.name[: -len(".parts")] for p in self.root.glob("*.parts") if p.is_dir()}
        return sorted(found)

    def exists(self, name: str) -> bool:
        return self.base_path(name).exists() or bool(self._live_parts(name))

    def info(self, name: str) -> dict[str, Any]:
        """Row count, key, columns and completeness of a table, read from file metadata only."""
        files = ([self.base_path(name)] if self.base_path(name).exists() else []) + self._live_parts(name)
        if not files:
            raise KeyError(f"no table named {name!r} in {self.root}")
        rows, key, columns = 0, [], []
        for path in files:
            pfile = pq.ParquetFile(path)
            rows += pfile.metadata.num_rows
            key = key or _read_meta(path).get("key", [])
            columns += [c for c in pfile.schema_arrow.names if c not in columns]
        n_parts = len(self._live_parts(name))
        return {"name": name, "rows": rows, "columns": columns, "key": key, "pending_parts": n_parts}

    def done_keys(self, name: str) -> set[Key]:
        """Keys of every unit of work already stored for this table."""
        done: set[Key] = set()
        base = self.base_path(name)
        for path in ([base] if base.exists() else []) + self._live_parts(name):
            done |= _keys_from_meta(_read_meta(path))
        return done

    def read(self, name: str) -> pd.DataFrame:
        """The whole table (base file plus unmerged parts), sorted by its key."""
        base = self.base_path(name)
        files = ([base] if base.exists() else []) + self._live_parts(name)
        if not files:
            raise KeyError(f"no table named {name!r} in {self.root}; tables: {self.names()}")
        key = next((m["key"] for m in map(_read_meta, files) if m.get("key")), [])
        table = _concat([pq.read_table(p) for p in files])
        return sort_by_key(table.to_pandas(), key)

    def head(self, name: str, n: int = 10) -> pd.DataFrame:
        """The first ``n`` rows, read without loading the whole table (from the merged file if any)."""
        base = self.base_path(name)
        files = ([base] if base.exists() else []) + self._live_parts(name)
        if not files:
            raise KeyError(f"no table named {name!r} in {self.root}")
        batches = []
        for path in files:
            pfile = pq.ParquetFile(path)
            if pfile.metadata.num_rows:
                batches = [next(pfile.iter_batches(batch_size=n))]
                break
        if not batches:
            return pd.DataFrame()
        return pa.Table.from_batches(batches).to_pandas().head(n)

    # ---- writes ------------------------------------------------------------------------------------
    def write(self, name: str, df: pd.DataFrame, key: Sequence[str] = (), csv: bool | None = None) -> Path:
        """Write a whole table at once (replacing any previous one), sorted by ``key`` when given."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"write_table expects a pandas DataFrame, got {type(df).__name__}")
        missing = [k for k in key if k not in df.columns]
        if missing:
            raise ValueError(f"table {name!r}: key columns {missing} not in columns {list(df.columns)}")
        if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
            df = df.reset_index()  # keep information held in a meaningful index as columns
        df = sort_by_key(df, list(key))
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.base_path(name)
        _write_parquet(path, to_arrow(df), {"key": list(key), "done": [], "absorbed": [], "next_part": 0})
        shutil.rmtree(self.parts_dir(name), ignore_errors=True)
        self._maybe_csv(name, csv)
        return path

    def consolidate(self, name: str, csv: bool | None = None) -> None:
        """Merge unmerged parts into the base file (sorted by key), then remove them."""
        parts = self._live_parts(name)
        base = self.base_path(name)
        if parts:
            metas = [_read_meta(p) for p in ([base] if base.exists() else []) + parts]
            key = next((m["key"] for m in metas if m.get("key")), [])
            done = [k for m in metas for k in m.get("done", [])]
            old = _read_meta(base) if base.exists() else {}
            absorbed = list(old.get("absorbed", [])) + [p.name for p in parts]
            next_part = max(int(_PART.match(p.name).group(1)) for p in parts) + 1
            df = self.read(name)
            _write_parquet(base, to_arrow(df), {"key": key, "done": done, "absorbed": absorbed, "next_part": next_part})
            for part in parts:
                part.unlink(missing_ok=True)
            try:
                self.parts_dir(name).rmdir()
            except OSError:
                pass
        if base.exists():
            self._maybe_csv(name, csv)

    def write_part(self, name: str, table: pa.Table, key: Sequence[str], done: list[Key]) -> Path:
        """Write one chunk of an incremental table."""
        parts_dir = self.parts_dir(name)
        parts_dir.mkdir(parents=True, exist_ok=True)
        base = self.base_path(name)
        start = _read_meta(base).get("next_part", 0) if base.exists() else 0
        taken = [int(_PART.match(p.name).group(1)) for p in parts_dir.iterdir() if _PART.match(p.name)]
        index = max([start - 1, *taken]) + 1
        path = parts_dir / f"part-{index:06d}.parquet"
        _write_parquet(path, table, {"key": list(key), "done": [_jsonable(k) for k in done]})
        return path

    def _maybe_csv(self, name: str, csv: bool | None) -> None:
        if csv if csv is not None else self.csv:
            path = self.root / f"{name}.csv"
            tmp = path.with_name(path.name + ".tmp")
            self.read(name).to_csv(tmp, index=False)
            os.replace(tmp, path)


def _jsonable(key: Key) -> Any:
    return list(key) if isinstance(key, tuple) else key


class IncrementalTable:
    """A table filled unit by unit (usually one query at a time), flushed to disk in chunks.

    Use it as a context manager (``RunFolder.table`` returns one). Inside :meth:`pending`, all rows
    appended while one item is being processed form a *unit*: it is committed when the loop moves on
    to the next item, so an exception mid-item never leaves half of its rows. Committed units are
    written as parquet parts every ``chunk_rows`` rows or ``flush_seconds`` seconds, and on exit;
    a clean exit merges them into ``<name>.parquet`` sorted by ``key``.
    """

    def __init__(
        self,
        store: TableStore,
        name: str,
        key: Sequence[str],
        *,
        chunk_rows: int = 5000,
        flush_seconds: float = 10.0,
        progress: bool | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(key, str):
            key = [key]
        if not key:
            raise ValueError(f"table {name!r}: an incremental table needs key columns (e.g. key=['query_id'])")
        check_name(name)
        old_key = store.info(name)["key"] if store.exists(name) else None
        if old_key and list(old_key) != list(key):
            raise ValueError(f"table {name!r} was stored with key {old_key}, not {list(key)}")
        self.store, self.name, self.key = store, name, list(key)
        self.chunk_rows, self.flush_seconds, self.progress = chunk_rows, flush_seconds, progress
        self._on_close = on_close
        self.done: set[Key] = store.done_keys(name)
        self._staged: list[pa.Table] = []        # rows of the unit in progress
        self._buffer: list[pa.Table] = []        # committed rows not yet on disk
        self._buffer_keys: list[Key] = []
        self._buffer_rows = 0
        self._last_flush = time.monotonic()
        self._unit: Key | None = None            # key of the item being processed by pending()
        self._closed = False
        self.rows_written = 0

    # ---- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> IncrementalTable:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.close(ok=exc_type is None)

    # ---- the loop ----------------------------------------------------------------------------------
    def pending(
        self, items: Iterable[Any], key: Callable[[Any], Any] | None = None, desc: str | None = None
    ) -> Iterator[Any]:
        """Yield the items whose key is not stored yet, with a progress bar (ETA) over those left.

        ``key(item)`` gives the item's key (default: the item itself); it should match the values
        of the key columns in the rows appended for it. Rows appended while an item is out are
        committed together when the next item is requested.
        """
        keyfn = key or (lambda item: item)
        items = list(items) if isinstance(items, Sequence) or hasattr(items, "__len__") else items
        todo: Iterable[tuple[Key, Any]]
        total = None
        if isinstance(items, list):
            keyed = [(normalize_key(keyfn(it)), it) for it in items]
            _check_unique([k for k, _ in keyed], self.name)
            todo = [(k, it) for k, it in keyed if k not in self.done]
            total = len(todo)
            skipped = len(keyed) - total
        else:
            todo, skipped = ((normalize_key(keyfn(it)), it) for it in items), 0
        label = desc or self.name
        if skipped:
            label += f" ({skipped} done before)"
        seen: set[Key] = set()
        with tqdm(total=total, desc=label, unit="item", disable=_disable(self.progress), leave=True) as bar:
            for unit, item in todo:
                if unit in seen:
                    raise ValueError(f"table {self.name!r}: duplicate item key {unit!r}")
                seen.add(unit)
                if unit in self.done:
                    continue
                self._unit = unit
                yield item
                self._commit(unit)
                self._unit = None
                bar.update(1)
                self._maybe_flush()

    def append(self, rows: Rows) -> None:
        """Add rows (list of dicts, one dict or a DataFrame); they must hold the key columns."""
        if self._closed:
            raise RuntimeError(f"table {self.name!r} is closed")
        table = to_arrow(rows)
        if table.num_rows == 0:
            return
        missing = [k for k in self.key if k not in table.column_names]
        if missing:
            raise ValueError(f"table {self.name!r}: rows lack key columns {missing} (columns: {table.column_names})")
        self._staged.append(table)
        if self._unit is None:  # outside pending(): every append is its own unit, keyed by its rows
            self._commit(None)
            self._maybe_flush()

    # ---- persistence -------------------------------------------------------------------------------
    def _commit(self, unit: Key | None) -> None:
        staged = self._staged
        self._staged = []
        keys = [unit] if unit is not None else [k for t in staged for k in _row_keys(t, self.key)]
        self._buffer.extend(staged)
        self._buffer_keys.extend(keys)
        self._buffer_rows += sum(t.num_rows for t in staged)
        self.done.update(keys)

    def _maybe_flush(self) -> None:
        if self._buffer_rows >= self.chunk_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write committed rows to a new part file (no-op when nothing is buffered)."""
        if self._buffer_keys or self._buffer:
            self.store.write_part(self.name, _concat(self._buffer), self.key, self._buffer_keys)
            self.rows_written += self._buffer_rows
        self._buffer, self._buffer_keys, self._buffer_rows = [], [], 0
        self._last_flush = time.monotonic()

    def close(self, ok: bool = True) -> None:
        """Flush; on success also commit a unit left open (e.g. after ``break``) and merge the parts."""
        if self._closed:
            return
        if ok and self._staged:
            self._commit(self._unit)
        self._staged = []
        self.flush()
        self._closed = True
        if ok:
            self.store.consolidate(self.name)
            if self._on_close:
                self._on_close(self.name)

    def load(self) -> pd.DataFrame:
        """Everything stored so far (flushes first)."""
        self.flush()
        return self.store.read(self.name)


def _check_unique(keys: list[Key], name: str) -> None:
    seen: set[Key] = set()
    for k in keys:
        if k in seen:
            raise ValueError(f"table {name!r}: duplicate item key {k!r} in the items given to pending()")
        seen.add(k)


def _disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None hides the bar when stderr is not a terminal."""
    if progress is None:
        return True if os.environ.get("HOPSCOPE_NO_PROGRESS") else None
    return not progress

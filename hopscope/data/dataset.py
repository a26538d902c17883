"""A :class:`Dataset` is an ordered list of records that saves to and loads from JSONL, CSV or Parquet.

Loading validates every row; the first bad row raises :class:`RecordError` naming the file, the
row (1-based, counting records, i.e. lines for JSONL) and the field.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import pandas as pd

from hopscope.data.records import (
    RECORD_TYPES,
    Record,
    RecordError,
    SingleHopQuery,
    TwoHopQuery,
    record_from_row,
)

R = TypeVar("R", bound=Record)
FORMATS = ("jsonl", "csv", "parquet")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "parquet"):
        return suffix
    raise ValueError(f"{path}: unknown dataset format {path.suffix!r}; use .jsonl, .csv or .parquet")


def check_output_path(path: str | Path, *, suffixes: tuple[str, ...] = (".jsonl", ".ndjson", ".csv", ".parquet")
                      ) -> Path:
    """``path`` as a file to write, or a ``ValueError`` saying why it cannot be one (a folder, an
    unknown extension, a parent that is a file)."""
    path = Path(path)
    names = ", ".join(suffixes)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name ending in {names}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: unknown file type {path.suffix or '(none)'!r}; give a file name ending in {names}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is a file, not a folder")
    return path


class Dataset:
    """Records in a fixed order, plus a name and free-form info (e.g. attribution)."""

    def __init__(self, records: Iterable[Record] = (), *, name: str = "", info: dict[str, Any] | None = None,
                 check_ids: bool = True) -> None:
        self.records: list[Record] = list(records)
        self.name = name
        self.info = dict(info or {})
        if check_ids:
            self._check_unique_ids()

    def _check_unique_ids(self, file: str | None = None) -> None:
        seen: dict[str, int] = {}
        for i, r in enumerate(self.records, 1):
            if r.qid in seen:
                raise RecordError(f"duplicate qid {r.qid!r} (first at row {seen[r.qid]})",
                                  field="qid", row=i, file=file)
            seen[r.qid] = i

    # -- sequence protocol -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> Dataset: ...
    def __getitem__(self, i: int | slice) -> Record | Dataset:
        if isinstance(i, slice):
            return self._derive(self.records[i])
        return self.records[i]

    def __add__(self, other: Dataset) -> Dataset:
        return Dataset([*self.records, *other.records], name=self.name or other.name,
                       info={**other.info, **self.info})

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in Counter(r.kind for r in self.records).items())
        return f"Dataset({self.name!r}, {len(self)} records: {kinds})"

    def _derive(self, records: Iterable[Record]) -> Dataset:
        return Dataset(records, name=self.name, info=self.info, check_ids=False)

    # -- selection -------------------------------------------------------------------------
    def filter(self, keep: Callable[[Record], bool]) -> Dataset:
        return self._derive(r for r in self.records if keep(r))

    def of_kind(self, cls: type[R]) -> Dataset:
        """Only the records of one type, e.g. ``ds.of_kind(TwoHopQuery)``."""
        return self.filter(lambda r: isinstance(r, cls))

    def single_hop(self) -> Dataset:
        return self.of_kind(SingleHopQuery)

    def two_hop(self) -> Dataset:
        return self.of_kind(TwoHopQuery)

    def relations(self) -> list[str]:
        """Relation names in first-seen order."""
        return list(dict.fromkeys(getattr(r, "relation", r.kind) for r in self.records))

    def by_relation(self) -> dict[str, Dataset]:
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            groups[getattr(r, "relation", r.kind)].append(r)
        return {k: self._derive(v) for k, v in groups.items()}

    def take(self, n: int | None, *, balanced: bool = True, seed: int | None = None) -> Dataset:
        """The first ``n`` records; ``balanced`` interleaves relations round-robin (each keeps
        its order, e.g. most popular first). With ``seed``, records are shuffled first."""
        records = list(self.records)
        if seed is not None:
            random.Random(seed).shuffle(records)
        if n is None or n >= len(records):
            return self._derive(records)
        if not balanced:
            return self._derive(records[:n])
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in records:
            groups[getattr(r, "relation", r.kind)].append(r)
        queues = [iter(g) for g in groups.values()]
        out: list[Record] = []
        while len(out) < n and queues:
            alive = []
            for q in queues:
                r = next(q, None)
                if r is not None:
                    alive.append(q)
                    out.append(r)
                    if len(out) == n:
                        break
            queues = alive
        return self._derive(out)

    # -- tables ------------------------------------------------------------------------------
    def to_rows(self) -> list[dict[str, Any]]:
        return [r.to_row() for r in self.records]

    def to_frame(self) -> pd.DataFrame:
        """One row per record; columns are the union of the record fields."""
        return pd.DataFrame(self.to_rows())

    def fingerprint(self) -> str:
        """Stable hash of the content (for caches)."""
        h = hashlib.sha256()
        for row in self.to_rows():
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def counts(self) -> pd.DataFrame:
        """Records per (kind, relation)."""
        rows = Counter((r.kind, getattr(r, "relation", r.kind)) for r in self.records)
        return pd.DataFrame([{"kind": k, "relation": rel, "n": n} for (k, rel), n in rows.items()])

    # -- I/O ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write JSONL, CSV or Parquet (by extension). Nested fields become JSON text in CSV
        and Parquet; dataset info goes to the Parquet metadata / a ``.info.json`` sidecar."""
        path = check_output_path(path)
        fmt = _format_of(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.to_rows()
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            frame = pd.DataFrame([_flatten(r, keep_lists=fmt == "parquet") for r in rows])
            if fmt == "csv":
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
        meta = {"name": self.name, "info": self.info}
        path.with_name(path.name + ".info.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path, *, kind: str | None = None) -> Dataset:
        """Read and validate a dataset file. ``kind`` is the record type for rows without one."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"dataset file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give a dataset file (.jsonl, .csv or .parquet)")
        fmt = _format_of(path)
        if fmt == "jsonl":
            rows = list(_read_jsonl(path))
        elif fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            rows = [(i, {k: (None if v == "" else v) for k, v in row.items()})
                    for i, row in enumerate(frame.to_dict("records"), 1)]
        else:
            frame = pd.read_parquet(path)
            rows = list(enumerate(frame.to_dict("records"), 1))
        records = []
        for i, row in rows:
            try:
                records.append(record_from_row(row, default_kind=kind))
            except RecordError as e:
                raise e.at(file=str(path), row=i) from None
        info_path = path.with_name(path.name + ".info.json")
        meta = json.loads(info_path.read_text()) if info_path.exists() else {}
        ds = cls(records, name=meta.get("name", path.stem), info=meta.get("info"), check_ids=False)
        ds._check_unique_ids(file=str(path))
        return ds


def _flatten(row: dict[str, Any], *, keep_lists: bool) -> dict[str, Any]:
    """Cells for a table: dicts (and, for CSV, all lists) as JSON text; Parquet keeps lists of
    scalars (aliases, spans) as native list columns."""
    out = {}
    for k, v in row.items():
        scalar_list = isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)
        if isinstance(v, dict) or (isinstance(v, list) and not (keep_lists and scalar_list)):
            out[k] = json.dumps(v, ensure_ascii=False)
        else:
            out[k] = v
    return out


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"not valid JSON ({e.msg} at column {e.colno})",
                                  file=str(path), row=line_no) from None
            if not isinstance(row, dict):
                raise RecordError(f"expected a JSON object, got {type(row).__name__}",
                                  file=str(path), row=line_no)
            yield line_no, row


__all__ = ["Dataset", "FORMATS", "RECORD_TYPES", "check_output_path"]

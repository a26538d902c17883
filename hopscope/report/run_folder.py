"""RunFolder: the one object an analysis writes its results through.

    run = RunFolder.create("backpatch", args=dict(limit=100), seed=0)   # or RunFolder.resume(path)
    with run:                                   # marks the run failed/interrupted if the body raises
        run.set_model(m)                        # a loaded model (name/source/family recorded) or a name
        run.set_dataset("two_hop", records)     # name + content hash
        with run.table("pairs", key=["query_id"]) as tab:
            for q in tab.pending(queries, key=lambda q: q.id):
                tab.append(rows_for(q))
        run.write_table("summary", df)
        run.save_figure("fix_rate", fig)
        run.add_section("Back-patching", text="...", figures=["fix_rate"],
                        tables={"per query": "pairs"}, headline=[Headline("oracle fix rate", 0.31, n=200)])
        run.write_claims([rate_vs_control(...), ...],          # claims.parquet (Holm across them)
                         figures={"hop.backpatch_fix": {"table": "pairs", "value": "fixed", "by": "patch"}})
        run.finish()                            # report.html, status done, end time

Studies: ``study.child("backpatch")`` makes a run folder inside the study's folder; ``study.finish()``
gathers every child's claims into the study's claims.parquet (Holm across all of them) and renders one
page holding the study's claims and sections and every child's sections (each child also keeps its own
config, tables, claims and report).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hopscope.stats import apply_holm, claims_frame, empty_claims

from . import claims_store, headline, interactive, layout, provenance
from .sections import DEFAULT_MAX_ROWS, make_section, slug
from .tables import IncrementalTable, TableStore, check_name

_RESUME_IGNORED_ARGS = frozenset({"resume", "out", "progress", "csv"})


class RunFolder:
    """A folder holding one run's config, tables, figures and report."""

    def __init__(self, path: Path, config: dict[str, Any], *, writable: bool) -> None:
        """Use :meth:`create`, :meth:`resume` or :meth:`open` rather than this constructor."""
        self.path = Path(path)
        self.config = config
        self.tables = TableStore(self.path / layout.TABLES, csv=bool(config.get("csv", False)))
        self._writable = writable
        self._session_start = time.monotonic()
        self._elapsed_before = float(config.get("elapsed_s", 0.0))
        self._clock_stopped = config.get("status") != "running"

    # ---- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        out: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        root: str | os.PathLike[str] = "runs",
        csv: bool = False,
        argv: Sequence[str] | None = None,
        quick: bool = False,
    ) -> RunFolder:
        """Start a new run in ``out`` (must not hold a run yet) or in ``<root>/<command>-<timestamp>``.

        ``quick``: a smoke-test run at small fixed sizes; its report marks the verdicts as indicative.
        """
        check_name(command, "command")
        started = provenance.now()
        path = _new_folder(command, started.strftime("%Y%m%d-%H%M%S"), out, Path(root))
        config: dict[str, Any] = {
            "format": layout.FORMAT_VERSION,
            "command": command,
            "args": _jsonable(dict(args or {})),
            "argv": list(argv) if argv is not None else list(sys.argv),
            "seed": seed,
            "model": None,
            "dataset": None,
            "versions": provenance.versions(),
            "status": "running",
            "start_time": started.isoformat(),
            "end_time": None,
            "elapsed_s": 0.0,
            "sessions": [{"start": started.isoformat(), "end": None, "status": "running"}],
            "host": provenance.host(),
            "pid": os.getpid(),
            "error": None,
            "csv": bool(csv),
            "quick": bool(quick),
            "children": [],
        }
        run = cls(path, config, writable=True)
        run._save()
        return run

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        command: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> RunFolder:
        """Continue an interrupted (or finished) run: finished table units are skipped.

        With ``command``/``args`` given, they must match what the run was started with (``resume``,
        ``out``, ``progress`` and ``csv`` arguments excepted), since mixing settings would mix results.
        """
        path = Path(path)
        config = layout.read_config(path)
        if command is not None and config.get("command") != command:
            raise ValueError(f"{path} holds a {config.get('command')!r} run, not {command!r}")
        if args is not None:
            _check_same_args(path, config.get("args", {}), _jsonable(dict(args)))
        if (
            config.get("status") == "running"
            and config.get("host") == provenance.host()
            and config.get("pid") not in (None, os.getpid())
            and provenance.pid_alive(int(config["pid"]))
        ):
            raise RuntimeError(f"{path} is in use by a running process (pid {config['pid']})")
        started = provenance.now()
        session: dict[str, Any] = {"start": started.isoformat(), "end": None, "status": "running"}
        current = provenance.versions()
        if current != config.get("versions"):
            session["versions"] = current
            warnings.warn(f"resuming {path} with different library versions: {current}", stacklevel=2)
        config.setdefault("sessions", []).append(session)
        config.update(status="running", end_time=None, error=None, host=provenance.host(), pid=os.getpid())
        run = cls(path, config, writable=True)
        run._save()
        return run

    @classmethod
    def start(
        cls,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        out: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        root: str | os.PathLike[str] = "runs",
        csv: bool = False,
        quick: bool = False,
    ) -> RunFolder:
        """What a CLI command calls with its ``--out``/``--resume``/``--seed``/``--csv``/``--quick`` options."""
        if resume is not None:
            return cls.resume(resume, command=command, args=args)
        return cls.create(command, args, out=out, seed=seed, root=root, csv=csv, quick=quick)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunFolder:
        """Read access to an existing run (tables, config); its status is left untouched."""
        return cls(Path(path), layout.read_config(path), writable=False)

    # ---- properties --------------------------------------------------------------------------------
    @property
    def command(self) -> str:
        return str(self.config["command"])

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.config.get("args", {}))

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def status(self) -> str:
        return str(self.config.get("status"))

    @property
    def quick(self) -> bool:
        """A smoke-test run (``quick`` in config.json, or a ``quick`` argument): verdicts are indicative."""
        return layout.is_quick(self.config)

    @property
    def figures_dir(self) -> Path:
        return self.path / layout.FIGURES

    @property
    def report_path(self) -> Path:
        return self.path / layout.REPORT

    @property
    def headline(self) -> dict[str, Any]:
        """All headline numbers of this run's sections, label -> value (a later section wins on a clash)."""
        out: dict[str, Any] = {}
        for section in self.sections():
            out.update(headline.as_dict(headline.normalize(section.get("headline"))))
        return out

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, command={self.command!r}, status={self.status!r})"

    # ---- provenance --------------------------------------------------------------------------------
    def set_model(self, model: Any, source: str | None = None) -> None:
        """Record the model: a loaded hopscope model (name, source, family, sizes) or a name/id."""
        info = provenance.describe_model(model, source)
        old = self.config.get("model")
        if old and old.get("name") != info["name"]:
            raise ValueError(f"{self.path} was run with model {old.get('name')!r}, not {info['name']!r}")
        self.config["model"] = info
        self._save()

    def set_dataset(self, name: str, data: Any) -> str:
        """Record the dataset's name and content hash (records, a DataFrame or a file/folder path).

        On a resumed run the hash must match the one recorded, so finished rows stay valid.
        Returns the hash.
        """
        digest, count = provenance.dataset_hash(data)
        info: dict[str, Any] = {"name": str(name), "hash": digest, "n_records": count}
        if isinstance(data, (str, os.PathLike)):
            info["path"] = str(Path(data).resolve())
        old = self.config.get("dataset")
        if old and old.get("hash") != digest:
            raise ValueError(
                f"{self.path} was run on dataset {old.get('name')!r} with hash {old.get('hash')}; "
                f"{name!r} hashes to {digest}: the data changed, start a new run instead of resuming"
            )
        self.config["dataset"] = info
        self._save()
        return digest

    # ---- tables ------------------------------------------------------------------------------------
    def table(
        self,
        name: str,
        key: Sequence[str] | str,
        *,
        chunk_rows: int = 5000,
        flush_seconds: float = 10.0,
        progress: bool | None = None,
    ) -> IncrementalTable:
        """An incremental table (use with ``with``); see :class:`IncrementalTable`."""
        self._require_writable()
        return IncrementalTable(
            self.tables, name, key, chunk_rows=chunk_rows, flush_seconds=flush_seconds, progress=progress
        )

    def write_table(self, name: str, df: pd.DataFrame, key: Sequence[str] = (), csv: bool | None = None) -> Path:
        """Write a whole table (replacing an older one of that name); sorted by ``key`` when given."""
        self._require_writable()
        return self.tables.write(name, df, key=[key] if isinstance(key, str) else list(key), csv=csv)

    def load_table(self, name: str) -> pd.DataFrame:
        """A stored table (merging any parts left by an interrupted run), sorted by its key."""
        return self.tables.read(name)

    def table_names(self) -> list[str]:
        return self.tables.names()

    # ---- figures -----------------------------------------------------------------------------------
    def save_figure(self, name: str, fig: Any, *, dpi: int = 110) -> Path:
        """Save a matplotlib Figure as ``figures/<name>.png`` and close it; returns the path.

        A figure from :mod:`hopscope.report.figures` (or given a spec with ``figures.interactive``) also
        gets ``figures/<name>.plotly.json``, drawn live in report.html with the PNG as its fallback.
        """
        self._require_writable()
        check_name(name, "figure")
        if not hasattr(fig, "savefig"):
            raise TypeError(f"save_figure expects a matplotlib Figure, got {type(fig).__name__}")
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{name}.png"
        tmp = path.with_name(f"{name}.tmp.png")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white")
        os.replace(tmp, path)
        spec_path = self.figures_dir / f"{name}{interactive.SPEC_SUFFIX}"
        spec = interactive.spec_of(fig)
        if spec is not None:
            spec_tmp = spec_path.with_name(spec_path.name + ".tmp")
            spec_tmp.write_text(interactive.script_json(spec), encoding="utf-8")
            os.replace(spec_tmp, spec_path)
        elif spec_path.exists():
            spec_path.unlink()
        _close_figure(fig)
        return path

    # ---- claims ------------------------------------------------------------------------------------
    def write_claims(
        self,
        claims: Any,
        *,
        figures: Mapping[str, Any] | None = None,
        n_resamples: int | None = None,
    ) -> Path:
        """Write the claims this run tested to ``<run>/claims.parquet`` (Holm across them).

        ``claims``: a list of :class:`hopscope.stats.Claim` or a claims DataFrame. ``figures``: claim
        id -> the figure showing its uncertainty: a saved figure's name, a Figure (saved as
        ``claim-<id>``), or ``{"table": name, "value": column, "by": column or None, "id": "qid"}``
        to plot every unit's value from a stored table (points plus mean and 95% interval). Without
        one, a figure saved as ``claim-<id>`` is used; every claim also gets its interval drawn.
        ``n_resamples`` (default: the claims' own) is recorded in config.json with the verdict rule.
        A run with children keeps these in claims-own.parquet; finish() gathers them with the children's.
        """
        self._require_writable()
        frame = apply_holm(claims_frame(claims))
        resamples = n_resamples if n_resamples is not None else frame.attrs.get("n_resamples")
        target = layout.CLAIMS_OWN if self.config.get("children") else layout.CLAIMS
        specs = claims_store.read_figures(self.path)
        for cid, fig in (figures or {}).items():
            if cid not in set(frame["id"]):
                raise KeyError(f"figure given for claim {cid!r}, which is not among the claims written")
            specs[cid] = {"figure": self._claim_figure(cid, fig, frame), "folder": "."}
        layout.write_json(self.path / layout.CLAIM_FIGURES, specs)
        self.config["stats"] = claims_store.stats_config(resamples)
        path = claims_store.write_frame(self.path, frame, target)
        self.config["claims_source"] = "own"
        if target == layout.CLAIMS_OWN:
            self.gather_claims()
        self._save()
        return path

    def load_claims(self) -> pd.DataFrame:
        """This run's claims (a study: gathered from its children); an empty frame when it has none."""
        frame = claims_store.read_claims(self.path)
        return frame if frame is not None else empty_claims()

    def gather_claims(self) -> pd.DataFrame:
        """A study: its own claims plus every child's, Holm across all, written to claims.parquet."""
        self._require_writable()
        frame = claims_store.gather_and_write(self.path, self.config)
        self._save()
        return frame

    def _claim_figure(self, cid: str, fig: Any, frame: pd.DataFrame) -> str:
        if isinstance(fig, str):
            check_name(fig, "figure")
            if not (self.figures_dir / f"{fig}.png").exists():
                raise FileNotFoundError(f"claim {cid!r}: no figure {fig!r} saved in {self.figures_dir}")
            return fig
        name = f"claim-{slug(cid)}"
        if isinstance(fig, Mapping):
            fig = self._table_points(cid, fig, frame)
        self.save_figure(name, fig)
        return name

    def _table_points(self, cid: str, spec: Mapping[str, Any], frame: pd.DataFrame) -> Any:
        from .figures import points_plot

        table, value = spec.get("table"), spec.get("value")
        if not table or not value:
            raise ValueError(f"claim {cid!r}: a table figure needs 'table' and 'value'")
        df = self.load_table(str(table))
        by, id_col = spec.get("by"), spec.get("id", "qid")
        for column in [value, by] if by else [value]:
            if column not in df.columns:
                raise KeyError(f"claim {cid!r}: table {table!r} has no column {column!r}")
        groups = {str(k): g for k, g in df.groupby(by, sort=False)} if by else {str(value): df}
        ids = {k: g[id_col].tolist() for k, g in groups.items()} if id_col in df.columns else None
        row = frame.loc[frame["id"] == cid].iloc[0]
        reference = spec.get("reference")
        return points_plot({k: pd.to_numeric(g[value], errors="coerce").to_numpy(dtype=float)
                            for k, g in groups.items()},
                           title=str(spec.get("title") or row["measure"]), ylabel=str(spec.get("ylabel") or value),
                           ids=ids, reference=float(reference) if reference is not None else None,
                           reference_label=str(spec.get("reference_label") or "control"), xlabel=by)

    # ---- report ------------------------------------------------------------------------------------
    def sections(self) -> list[dict[str, Any]]:
        return layout.read_sections(self.path)

    def add_section(
        self,
        title: str,
        text: str = "",
        figures: Sequence[Any] = (),
        tables: Mapping[str, pd.DataFrame | str] | None = None,
        headline: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        """Add (or, same title, replace) a report section.

        ``figures``: names of saved figures or Figure objects (saved as ``<title-slug>-<i>``).
        ``tables``: display name -> DataFrame (its first ``max_rows`` rows are kept) or the name of a
        stored table (read when the report is rendered). ``headline``: the section's key numbers, as
        ``[Headline(label, value, n, low, high, unit), ...]`` (or dicts with those keys) or the old
        ``{label: value}``; entries without a label or a value are dropped.
        ``text`` is plain text; blank lines separate paragraphs.
        """
        self._require_writable()
        names = []
        for i, fig in enumerate(figures):
            if isinstance(fig, str):
                check_name(fig, "figure")
                if not (self.figures_dir / f"{fig}.png").exists():
                    raise FileNotFoundError(f"no figure {fig!r} saved in {self.figures_dir}")
                names.append(fig)
            else:
                names.append(self.save_figure(f"{slug(title)}-{i}", fig).stem)
        for ref in (v for v in (tables or {}).values() if isinstance(v, str)):
            if not self.tables.exists(ref):
                raise KeyError(f"section {title!r} refers to table {ref!r}, which is not stored")
        section = make_section(
            title, text=text, figures=names, tables=tables, headline=headline, analysis=self.command, max_rows=max_rows
        )
        existing = [s for s in self.sections() if s["title"] != section["title"]]
        layout.write_json(self.path / layout.SECTIONS, existing + [section])

    def child(self, command: str, args: Mapping[str, Any] | None = None) -> RunFolder:
        """A run folder for one analysis of a study, inside this one (reopened if it exists).

        It starts with this run's seed, model and dataset; ``finish()`` on this run renders one
        page with every child's sections.
        """
        self._require_writable()
        check_name(command, "command")
        path = self.path / command
        if layout.is_run_folder(path):
            run = RunFolder.resume(path)
        else:
            run = RunFolder.create(command, args, out=path, seed=self.seed, csv=bool(self.config.get("csv")))
            run.config.update(model=self.config.get("model"), dataset=self.config.get("dataset"), parent="..",
                              quick=self.quick)
            run._save()
        if command not in self.config["children"]:
            self.config["children"].append(command)
            self._save()
        return run

    def set_quick(self, quick: bool = True) -> None:
        """Mark this run as a quick smoke test (its report calls the verdicts indicative)."""
        self._require_writable()
        self.config["quick"] = bool(quick)
        self._save()

    def render(self) -> Path:
        """(Re)write report.html from what is in the folder now (a study first gathers its claims)."""
        from .html import write_report

        if self._writable and layout.children(self.path, self.config):
            self.gather_claims()
        self._save()
        return write_report(self.path)

    def finish(self) -> Path:
        """Mark the run done, record the end time and write report.html; returns the report's path."""
        self._require_writable()
        self._end("done")
        return self.render()

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed (or interrupted, for KeyboardInterrupt); finished rows stay on disk."""
        interrupted = isinstance(error, KeyboardInterrupt)
        self._end("interrupted" if interrupted else "failed")
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}".rstrip(": ")
        self.config["error"] = str(error)
        try:
            self.render()  # a partial report is still useful
        except Exception as err:  # noqa: BLE001 - never hide the original error
            warnings.warn(f"could not render the partial report of {self.path}: {err}", stacklevel=2)
            self._save()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if not self._writable or self.status != "running":
            return
        if exc is None:
            self.finish()
        else:
            self.fail(exc)

    # ---- internals ---------------------------------------------------------------------------------
    def _end(self, status: str) -> None:
        ended = provenance.now().isoformat()
        self.config.update(status=status, end_time=ended)
        session = self.config["sessions"][-1]
        session.update(end=ended, status=status)
        self._save()
        self._clock_stopped = True

    def _save(self) -> None:
        if not self._writable:
            return
        if not self._clock_stopped:
            elapsed = self._elapsed_before + (time.monotonic() - self._session_start)
            self.config["elapsed_s"] = round(elapsed, 3)
        self.path.mkdir(parents=True, exist_ok=True)
        layout.write_json(self.path / layout.CONFIG, self.config)

    def _require_writable(self) -> None:
        if not self._writable:
            raise PermissionError(f"{self.path} was opened read-only; use RunFolder.resume to add to it")


def _new_folder(command: str, stamp: str, out: str | os.PathLike[str] | None, root: Path) -> Path:
    if out is not None:
        path = Path(out)
        if layout.is_run_folder(path):
            raise FileExistsError(f"{path} already holds a run; pass it to --resume to continue it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = root / (f"{command}-{stamp}" if n == 1 else f"{command}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free folder name for {command}-{stamp} in {root}")


def _jsonable(value: Any) -> Any:
    """Arguments as JSON data (paths and other objects become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return str(value)


def _check_same_args(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    keys = (set(old) | set(new)) - _RESUME_IGNORED_ARGS
    changed = sorted(k for k in keys if old.get(k) != new.get(k))
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {path} with different arguments ({detail}); start a new run instead")


def _close_figure(fig: Any) -> None:
    """Release a figure; pyplot-managed figures must also leave pyplot's registry."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)

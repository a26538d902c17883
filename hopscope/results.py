"""What every analysis returns: tables, figures, headline numbers, claims and report sections.

``Result.save(folder)`` writes a run folder (tidy Parquet tables, PNG figures, ``claims.parquet``,
``report.html``); in Jupyter a Result shows its headline and claims as HTML.
"""

from __future__ import annotations

import html
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hopscope.stats import CLAIM_COLUMNS


@dataclass
class Headline:
    """A labelled number with its sample size and, where it is an estimate, its 95% interval."""

    label: str
    value: float
    n: int | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        v = f"{self.value:.3g}{self.unit}"
        if self.low is not None and self.high is not None:
            v += f" [{self.low:.3g}, {self.high:.3g}]"
        return v + (f" (n={self.n})" if self.n is not None else "")


@dataclass
class Section:
    """One section of the report: prose, figures (names in ``Result.figures``), tables (label -> table name)."""

    title: str
    text: str = ""
    figures: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)
    headline: list[Headline] = field(default_factory=list)


@dataclass
class Result:
    """The outcome of one analysis on one model."""

    analysis: str
    settings: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Any] = field(default_factory=dict)
    headline: list[Headline] = field(default_factory=list)
    claims: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CLAIM_COLUMNS))
    sections: list[Section] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: "str | os.PathLike[str] | Any", *, finish: bool | None = None) -> Path:
        """Write into a RunFolder (or a new one at the path ``folder``); returns the folder's path.

        A RunFolder passed in is left open for its owner to finish; a path becomes a finished run folder.
        """
        from hopscope.report import RunFolder

        run = folder if isinstance(folder, RunFolder) else RunFolder.create(self.analysis, self.settings, out=folder)
        finish = (not isinstance(folder, RunFolder)) if finish is None else finish
        if self.model and not run.config.get("model"):
            run.config["model"] = self.model
        for name, df in self.tables.items():
            run.write_table(name, df)
        for name, fig in self.figures.items():
            run.save_figure(name, fig)
        if len(self.claims):
            run.write_claims(self.claims)
        for sec in self.sections:
            tables = {label: name for label, name in sec.tables.items() if name in self.tables}
            run.add_section(sec.title, text=sec.text, figures=[f for f in sec.figures if f in self.figures],
                            tables=tables, headline=[h.to_dict() for h in sec.headline])
        if finish:
            run.finish()
        return run.path

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(self.analysis)}</h3>"]
        if self.model:
            m = self.model
            shape = f" ({m.get('family')}, {m.get('n_layers')} layers)" if m.get("family") else ""
            parts.append(f"<p>model: {html.escape(str(m.get('name', '?')) + shape)}</p>")
        if self.headline:
            rows = "".join(f"<tr><td>{html.escape(h.label)}</td><td>{html.escape(h.text())}</td></tr>"
                           for h in self.headline)
            parts.append(f"<table>{rows}</table>")
        if len(self.claims):
            cols = ["id", "statement", "measure", "value", "low", "high", "n", "control", "verdict"]
            parts.append(self.claims[[c for c in cols if c in self.claims]].to_html(index=False, float_format="%.3g"))
        names = ", ".join(f"{html.escape(k)} ({len(v)} rows)" for k, v in self.tables.items())
        parts.append(f"<p>tables: {names}</p>")
        if self.figures:
            parts.append(f"<p>figures: {html.escape(', '.join(self.figures))}</p>")
        parts.append("<p><code>.tables[name]</code> (pandas), <code>.figures[name]</code> (matplotlib), "
                     "<code>.claims</code>, <code>.save(folder)</code> (a run folder with report.html)</p>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (f"Result({self.analysis!r}, tables={list(self.tables)}, figures={list(self.figures)}, "
                f"claims={len(self.claims)})")

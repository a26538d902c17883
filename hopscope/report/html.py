"""report.html: one self-contained page (inline CSS and scripts, figures as base64 data URIs, plotly.js
inlined once when a figure is interactive; nothing is fetched) built from what a run folder holds.

It reads top-down: the claims (summary from the verdicts, the verdict rule, the claims table), one
section per claim with the figure that shows its uncertainty, then each analysis's detail (collapsed
when there are claims), the stored tables and the run config. A study's page also holds its children's
sections; ``hopscope compare``'s page opens with the claims of several runs side by side."""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from . import assets, claims_store, claims_view, formatting, headline, interactive, layout
from .sections import DEFAULT_MAX_ROWS, slug, snapshot
from .tables import TableStore

MAX_CELL_CHARS = 200
PREVIEW_ROWS = 10

_BANNERS = {
    "running": "This run has not finished: tables and figures may be incomplete.",
    "stopped": "This run was stopped before it finished (the process is gone). Resume it with --resume {folder}.",
    "interrupted": "This run was interrupted before it finished. Resume it with --resume {folder}.",
    "failed": "This run failed: {error}. Finished rows are kept; resume it with --resume {folder}.",
}

Run = tuple[Path, dict[str, Any], str]


class _Page:
    """State of one rendering: interactive figure ids, and whether plotly.js is needed."""

    def __init__(self) -> None:
        self.specs = 0
        self.plotly = interactive.plotly_js() is not None
        self.uses_plotly = False

    def figure(self, folder: Path, name: str, caption: str | None = None) -> str:
        path = folder / layout.FIGURES / f"{name}.png"
        if not path.is_file():
            return f'<p class="note">Figure {escape(name)} is missing ({escape(str(path))}).</p>'
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        img = f'<img class="static" src="data:image/png;base64,{data}" alt="{escape(name)}">'
        spec_path = folder / layout.FIGURES / f"{name}{interactive.SPEC_SUFFIX}"
        live = ""
        if self.plotly and spec_path.is_file():
            self.specs += 1
            self.uses_plotly = True
            sid = f"spec-{self.specs}"
            spec = spec_path.read_text(encoding="utf-8").replace("</", "<\\/")
            live = (f'<div class="plotly" data-spec="{sid}"></div>'
                    f'<script type="application/json" id="{sid}">{spec}</script>')
        return f"<figure>{live}{img}<figcaption>{escape(caption or name)}</figcaption></figure>"


def write_report(folder: str | os.PathLike[str]) -> Path:
    """Render ``<folder>/report.html`` and return its path."""
    folder = Path(folder)
    path = folder / layout.REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(folder), encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_report(folder: str | os.PathLike[str]) -> str:
    """The report of a run folder (and of its children, for a study) as one HTML string."""
    folder = Path(folder)
    config = layout.read_config(folder)
    runs: list[Run] = [(folder, config, "")] + [
        (child, layout.read_config(child), f"{child.name}--") for child in layout.children(folder, config)
    ]
    sections = {path: layout.read_sections(path) for path, _, _ in runs}
    status = layout.effective_status(config)
    quick = layout.is_quick(config)
    page = _Page()
    claims = claims_store.read_claims(folder)
    claims = claims if claims is not None and len(claims) else None
    compare = _read_compare(folder)
    collapse = claims is not None or compare is not None
    title = f"hopscope {config.get('command', '')} — {folder.resolve().name}"

    body = [f"<header><h1>{escape(title)}</h1>{_meta_line(config, status)}</header>"]
    if status in _BANNERS:
        text = _BANNERS[status].format(folder=folder, error=config.get("error") or "unknown error")
        body.append(f'<div class="banner {escape(status)}">{escape(text)}</div>')
    body.append(_toc(runs, sections, claims, compare is not None,
                     collapse and any(sections[path] for path, _, _ in runs)))
    if compare is not None:
        body.append(_compare_part(folder, *compare, page=page))
    if claims is not None:
        model = (config.get("model") or {}).get("name")
        figures = claims_store.read_figures(folder, claims["id"])
        body.append(claims_view.claims_part(claims, model, quick, lambda row: _claim_figure(folder, figures, row, page)))
    elif compare is None:
        body.append(_key_numbers(runs, sections))
    collapse = collapse and any(sections[path] for path, _, _ in runs)
    if collapse:
        body.append('<section id="detail"><h2>Analyses in detail</h2>'
                    '<p class="note">What each analysis measured, with its figures and tables (click to open).</p>')
    for path, cfg, prefix in runs:
        parts = [_section(path, s, prefix, level=4 if collapse else (3 if prefix else 2), page=page,
                          cards=collapse) for s in sections[path]]
        if not parts:
            continue
        name = cfg.get("command", path.name)
        if collapse:
            where = f" (child run {path.name})" if prefix else ""
            body.append(f'<details class="analysis" id="{prefix}run"><summary>{escape(name)}'
                        f'<span class="count">{escape(where)} · {len(parts)} section{"s" if len(parts) != 1 else ""}'
                        f"</span></summary>{_meta_line(cfg, layout.effective_status(cfg)) if prefix else ''}"
                        + "\n".join(parts) + "</details>")
        elif prefix:
            body.append(f'<section class="child" id="{prefix}run"><h2>{escape(name)} '
                        f'<span class="count">(child run {escape(path.name)})</span></h2>'
                        f"{_meta_line(cfg, layout.effective_status(cfg))}" + "\n".join(parts) + "</section>")
        else:
            body.extend(parts)
    if collapse:
        body.append("</section>")
    body.append(_tables_appendix(runs))
    body.append(_config_block(runs))
    versions = config.get("versions", {})
    body.append(f"<footer>Written by hopscope {escape(str(versions.get('hopscope', '')))} at "
                f"{escape(formatting.timestamp(config.get('end_time') or config.get('start_time')))}. "
                "This page is self-contained: figures and scripts are embedded, nothing is fetched.</footer>")
    scripts = []
    if page.uses_plotly:
        scripts.append(f"<script>{interactive.plotly_js()}</script>")
    scripts.append(f"<script>{assets.SCRIPT}</script>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{assets.CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n" + "\n".join(scripts)
        + "\n</body></html>\n"
    )


# ---- page parts ------------------------------------------------------------------------------------
def _meta_line(config: dict[str, Any], status: str) -> str:
    model = config.get("model") or {}
    dataset = config.get("dataset") or {}
    parts = [f'<span class="status {escape(status)}">{escape(status)}</span>']
    if layout.is_quick(config):
        parts.append("<b>quick run</b>")
    if model:
        source = model.get("source")
        source = f" ({escape(str(source))})" if source and source != model.get("name") else ""
        parts.append(f"model <b>{escape(str(model.get('name')))}</b>{source}")
    if dataset:
        n = dataset.get("n_records")
        count = f", {n:,} records" if isinstance(n, int) else ""
        parts.append(f"data <b>{escape(str(dataset.get('name')))}</b>{count}")
    if config.get("seed") is not None:
        parts.append(f"seed <b>{escape(str(config['seed']))}</b>")
    stats = config.get("stats") or {}
    if stats.get("n_resamples") is not None:
        parts.append(f"bootstrap <b>{escape(str(stats['n_resamples']))}</b> resamples")
    parts.append(f"started {escape(formatting.timestamp(config.get('start_time')))}")
    if config.get("elapsed_s") is not None:
        parts.append(f"took {escape(formatting.duration(config.get('elapsed_s')))}")
    return f'<p class="meta">{" · ".join(parts)}</p>'


def _section_anchor(prefix: str, section: dict[str, Any]) -> str:
    return f"{prefix}s-{section.get('id') or slug(section['title'])}"


def _toc(runs: list[Run], sections: dict[Path, list[dict[str, Any]]], claims: pd.DataFrame | None,
         compare: bool, collapse: bool) -> str:
    items = []
    if compare:
        items.append('<li><a href="#compare">Claims across runs</a></li>')
    if claims is not None:
        links = "".join(f'<li><a href="#{claims_view.anchor(c)}">{escape(c)}</a></li>' for c in claims["id"])
        items.append('<li><a href="#claims">Claims</a></li>')
        items.append(f'<li><a href="#claim-details">Claims in detail</a><ol>{links}</ol></li>')
    elif not compare:
        items.append('<li><a href="#headline">Key numbers</a></li>')
    analyses = []
    for path, cfg, prefix in runs:
        links = "".join(
            f'<li><a href="#{escape(_section_anchor(prefix, s))}">{escape(s["title"])}</a></li>' for s in sections[path]
        )
        if prefix or (collapse and links):
            if links:
                analyses.append(f'<li><a href="#{escape(prefix)}run">{escape(cfg.get("command", path.name))}</a>'
                                f"<ol>{links}</ol></li>")
        else:
            analyses.append(links)
    if collapse and analyses:
        items.append(f'<li><a href="#detail">Analyses in detail</a><ol>{"".join(analyses)}</ol></li>')
    else:
        items.extend(analyses)
    items.append('<li><a href="#tables">Stored tables</a></li>')
    items.append('<li><a href="#config">Run configuration</a></li>')
    return f'<nav class="toc"><div class="toc-title">Contents</div><ol>{"".join(items)}</ol></nav>'


def _cards(entries: list[dict[str, Any]], where: str = "", href: str = "") -> list[str]:
    out = []
    for entry in entries:
        source = f'<div class="from"><a href="#{escape(href)}">{escape(where)}</a></div>' if where else ""
        n = headline.n_text(entry)
        out.append(f'<div class="card"><div class="value">{escape(headline.value_text(entry))}</div>'
                   f'<div class="label">{escape(entry["label"])}</div>'
                   + (f'<div class="n">{escape(n)}</div>' if n else "") + f"{source}</div>")
    return out


def _key_numbers(runs: list[Run], sections: dict[Path, list[dict[str, Any]]]) -> str:
    cards = []
    for path, cfg, prefix in runs:
        for section in sections[path]:
            where = f"{cfg.get('command')} · {section['title']}" if prefix else section["title"]
            cards.extend(_cards(headline.normalize(section.get("headline")), where, _section_anchor(prefix, section)))
    inner = f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="note">No headline numbers.</p>'
    return f'<section id="headline"><h2>Key numbers</h2>{inner}</section>'


def _section(folder: Path, section: dict[str, Any], prefix: str, level: int, page: _Page, cards: bool) -> str:
    """One analysis section; its headline numbers as cards (``cards``) or, when the page's Key numbers
    already show them as cards, as one line."""
    anchor = _section_anchor(prefix, section)
    out = [f'<section id="{escape(anchor)}"><h{level}>{escape(section["title"])}</h{level}>']
    entries = headline.normalize(section.get("headline"))
    if entries and cards:
        out.append(f'<div class="cards">{"".join(_cards(entries))}</div>')
    elif entries:
        line = " · ".join(f"{escape(e['label'])} <b>{escape(headline.value_text(e))}</b>"
                          + (f" ({escape(headline.n_text(e))})" if headline.n_text(e) else "") for e in entries)
        out.append(f'<p class="meta">{line}</p>')
    for paragraph in (p.strip() for p in section.get("text", "").split("\n\n")):
        if paragraph:
            out.append(f"<p>{escape(paragraph).replace(chr(10), '<br>')}</p>")
    for name in section.get("figures", []):
        out.append(page.figure(folder, name))
    for table in section.get("tables", []):
        out.append(_section_table(folder, table))
    out.append("</section>")
    return "\n".join(out)


def _claim_figure(folder: Path, figures: dict[str, dict[str, Any]], row: dict[str, Any], page: _Page) -> str:
    entry = figures.get(row["id"])
    if not entry:
        return ""
    where = (folder / entry.get("folder", ".")).resolve()
    return page.figure(where, entry["figure"], caption=f"{row['id']}: {row['measure']}")


def _section_table(folder: Path, table: dict[str, Any]) -> str:
    name = table["name"]
    if table.get("ref"):
        store = TableStore(folder / layout.TABLES)
        try:
            table = {**table, **snapshot(store.read(table["ref"]), table.get("max_rows", DEFAULT_MAX_ROWS))}
        except KeyError:
            return f'<p class="note">Table {escape(table["ref"])} is not stored (yet).</p>'
    return _details(name, table["columns"], table["rows"], table["n_rows"])


def _details(name: str, columns: list[str], rows: list[list[Any]], n_rows: int, open_: bool = False) -> str:
    shown = len(rows)
    count = f"{n_rows:,} rows" if shown >= n_rows else f"showing {shown:,} of {n_rows:,} rows"
    return (f"<details{' open' if open_ else ''}><summary>{escape(name)} <span class=\"count\">({count})</span>"
            f"</summary>{html_table(columns, rows)}"
            + (f'<p class="note">{n_rows - shown:,} more rows are in the stored table.</p>' if shown < n_rows else "")
            + "</details>")


def html_table(columns: list[str], rows: list[list[Any]]) -> str:
    """An HTML table (sortable and filterable in the page) with every header and cell escaped; long
    text is cut (full text in the tooltip); numbers carry their exact value for sorting."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if value is None:
                cells.append('<td class="na"></td>')
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num" data-v="{value!r}">{escape(formatting.number(value))}</td>')
            else:
                text = str(value)
                if len(text) > MAX_CELL_CHARS:
                    cells.append(f'<td title="{escape(text)}">{escape(text[:MAX_CELL_CHARS])}…</td>')
                else:
                    cells.append(f"<td>{escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _tables_appendix(runs: list[Run]) -> str:
    out = ['<section id="tables"><h2>Stored tables</h2>',
           '<p class="note">Tidy tables of this run, as Parquet files under <code>tables/</code> '
           "(load them with <code>pandas.read_parquet</code>); "
           f"the first {PREVIEW_ROWS} rows of each are shown.</p>"]
    any_table = False
    for path, _, prefix in runs:
        store = TableStore(path / layout.TABLES)
        for name in store.names():
            any_table = True
            info = store.info(name)
            label = f"{path.name}/tables/{name}.parquet" if prefix else f"tables/{name}.parquet"
            if info["pending_parts"]:
                label += f" + {info['pending_parts']} unmerged part(s)"
            snap = snapshot(store.head(name, PREVIEW_ROWS), PREVIEW_ROWS)
            out.append(_details(label, snap["columns"], snap["rows"], info["rows"]))
    if not any_table:
        out.append('<p class="note">No tables stored.</p>')
    out.append("</section>")
    return "\n".join(out)


def _config_block(runs: list[Run]) -> str:
    out = ['<section id="config"><h2>Run configuration</h2>']
    for path, cfg, prefix in runs:
        text = escape(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))
        label = f"config.json of {path.name}" if prefix else "config.json"
        out.append(f"<details><summary>{escape(label)}</summary><pre>{text}</pre></details>")
    out.append("</section>")
    return "\n".join(out)


# ---- compare ---------------------------------------------------------------------------------------
def _read_compare(folder: Path) -> tuple[pd.DataFrame, list[str]] | None:
    path = folder / layout.COMPARE
    if not path.is_file():
        return None
    long = pd.read_parquet(path)
    models = list(dict.fromkeys(long["model"]))
    return long, models


def _compare_part(folder: Path, long: pd.DataFrame, models: list[str], page: _Page) -> str:
    from hopscope.stats import VERDICT_RULE

    runs = long.drop_duplicates("model")[["model", "run"]].to_dict("records")
    sources = "".join(f"<li><b>{escape(r['model'])}</b>: <code>{escape(str(r['run']))}</code></li>" for r in runs)
    figures = []
    for cid in dict.fromkeys(long.sort_values("order", kind="mergesort")["id"]):
        name = f"claim-{slug(cid)}"
        if (folder / layout.FIGURES / f"{name}.png").is_file():
            figures.append(f'<section class="claim" id="{claims_view.anchor(cid)}">'
                           + page.figure(folder, name, caption=f"{cid}: estimate and 95% interval per run")
                           + "</section>")
    quick = ", ".join(escape(m) for m in dict.fromkeys(long.loc[long["quick"].astype(bool), "model"]))
    quick_note = (f'<p class="banner">Quick runs, whose verdicts are indicative only: {quick}.</p>' if quick else "")
    return (f'<section id="compare"><h2>Claims across runs</h2>{claims_view.compare_summary(long, models)}'
            f'{quick_note}<p class="rule">{escape(VERDICT_RULE)} Each run applies Holm across its own claims.</p>'
            f"{claims_view.compare_table(long, models)}<p class=\"note\">Runs compared:</p><ul>{sources}</ul>"
            + "".join(figures) + "</section>")

"""report.html: one self-contained page (inline CSS, figures as base64 data URIs, no scripts, no
network) built from what a run folder holds: headline numbers, sections with figures and collapsible
drill-down tables, a table of contents, the stored tables and the run config. A study's page also
holds the sections of each child run folder."""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path
from typing import Any

from . import formatting, layout
from .sections import DEFAULT_MAX_ROWS, slug, snapshot
from .tables import TableStore

MAX_CELL_CHARS = 200
PREVIEW_ROWS = 10

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); } h3 { font-size: 17px; margin: 26px 0 8px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: var(--muted); font-size: 14px; } .meta b { color: var(--fg); font-weight: 600; }
.status { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
          text-transform: uppercase; background: #dafbe1; color: #1a7f37; }
.status.running, .status.stopped, .status.interrupted { background: #fff8c5; color: #9a6700; }
.status.failed { background: #ffebe9; color: #cf222e; }
.banner { margin: 14px 0; padding: 10px 14px; border-radius: 6px; background: #fff8c5; border: 1px solid #d4a72c; }
.banner.failed { background: #ffebe9; border-color: #ff8182; }
nav.toc { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px;
          margin: 18px 0; } nav.toc ol { margin: 4px 0; padding-left: 22px; } nav.toc li { margin: 2px 0; }
nav.toc .toc-title { font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: #fff; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-size: 13px; color: var(--muted); } .card .from { font-size: 11px; color: var(--muted); }
figure { margin: 14px 0; text-align: center; } figure img { max-width: 100%; height: auto;
         border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); }
details { margin: 10px 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
details > summary { cursor: pointer; font-weight: 600; } details[open] > summary { margin-bottom: 8px; }
.count { color: var(--muted); font-weight: normal; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); position: sticky; top: 0; } tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; white-space: nowrap; } td.na { color: #b0b7be; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px;
      font-size: 12px; overflow-x: auto; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0; }
.child { border-left: 3px solid var(--line); padding-left: 16px; margin-left: 2px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

_BANNERS = {
    "running": "This run has not finished: tables and figures may be incomplete.",
    "stopped": "This run was stopped before it finished (the process is gone). Resume it with --resume {folder}.",
    "interrupted": "This run was interrupted before it finished. Resume it with --resume {folder}.",
    "failed": "This run failed: {error}. Finished rows are kept; resume it with --resume {folder}.",
}


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
    runs = [(folder, config, "")] + [
        (child, layout.read_config(child), f"{child.name}--") for child in layout.children(folder, config)
    ]
    sections = {path: layout.read_sections(path) for path, _, _ in runs}
    status = layout.effective_status(config)
    title = f"hopscope {config.get('command', '')} — {folder.resolve().name}"

    body = [f"<header><h1>{escape(title)}</h1>{_meta_line(config, status)}</header>"]
    if status in _BANNERS:
        text = _BANNERS[status].format(folder=folder, error=config.get("error") or "unknown error")
        body.append(f'<div class="banner {escape(status)}">{escape(text)}</div>')
    body.append(_toc(runs, sections))
    body.append(_headline(runs, sections))
    for path, cfg, prefix in runs:
        if prefix:
            child_status = layout.effective_status(cfg)
            body.append(f'<section class="child" id="{prefix}run"><h2>{escape(cfg.get("command", path.name))}'
                        f' <span class="count">(child run {escape(path.name)})</span></h2>'
                        f"{_meta_line(cfg, child_status)}")
        for section in sections[path]:
            body.append(_section(path, section, prefix, level=3 if prefix else 2))
        if prefix:
            body.append("</section>")
    body.append(_tables_appendix(runs))
    body.append(_config_block(runs))
    versions = config.get("versions", {})
    body.append(f"<footer>Written by hopscope {escape(str(versions.get('hopscope', '')))} at "
                f"{escape(formatting.timestamp(config.get('end_time') or config.get('start_time')))}. "
                "This page is self-contained: figures are embedded, nothing is fetched.</footer>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ---- page parts ------------------------------------------------------------------------------------
def _meta_line(config: dict[str, Any], status: str) -> str:
    model = config.get("model") or {}
    dataset = config.get("dataset") or {}
    parts = [f'<span class="status {escape(status)}">{escape(status)}</span>']
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
    parts.append(f"started {escape(formatting.timestamp(config.get('start_time')))}")
    if config.get("elapsed_s") is not None:
        parts.append(f"took {escape(formatting.duration(config.get('elapsed_s')))}")
    return f'<p class="meta">{" · ".join(parts)}</p>'


def _section_anchor(prefix: str, section: dict[str, Any]) -> str:
    return f"{prefix}s-{section.get('id') or slug(section['title'])}"


def _toc(runs: list[tuple[Path, dict[str, Any], str]], sections: dict[Path, list[dict[str, Any]]]) -> str:
    items = ['<li><a href="#headline">Headline numbers</a></li>']
    for path, cfg, prefix in runs:
        links = "".join(
            f'<li><a href="#{escape(_section_anchor(prefix, s))}">{escape(s["title"])}</a></li>' for s in sections[path]
        )
        if prefix:
            items.append(f'<li><a href="#{escape(prefix)}run">{escape(cfg.get("command", path.name))}</a>'
                         + (f"<ol>{links}</ol>" if links else "") + "</li>")
        else:
            items.append(links)
    items.append('<li><a href="#tables">Stored tables</a></li>')
    items.append('<li><a href="#config">Run configuration</a></li>')
    return f'<nav class="toc"><div class="toc-title">Contents</div><ol>{"".join(items)}</ol></nav>'


def _headline(runs: list[tuple[Path, dict[str, Any], str]], sections: dict[Path, list[dict[str, Any]]]) -> str:
    cards = []
    for path, cfg, prefix in runs:
        for section in sections[path]:
            where = f"{cfg.get('command')} · {section['title']}" if prefix else section["title"]
            for label, value in section.get("headline", {}).items():
                cards.append(
                    f'<div class="card"><div class="value">{escape(formatting.headline_number(value))}</div>'
                    f'<div class="label">{escape(label)}</div><div class="from">'
                    f'<a href="#{escape(_section_anchor(prefix, section))}">{escape(where)}</a></div></div>'
                )
    inner = f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="note">No headline numbers.</p>'
    return f'<section id="headline"><h2>Headline numbers</h2>{inner}</section>'


def _section(folder: Path, section: dict[str, Any], prefix: str, level: int) -> str:
    anchor = _section_anchor(prefix, section)
    out = [f'<section id="{escape(anchor)}"><h{level}>{escape(section["title"])}</h{level}>']
    if section.get("headline"):
        pairs = ", ".join(f"{escape(k)} <b>{escape(formatting.headline_number(v))}</b>"
                          for k, v in section["headline"].items())
        out.append(f'<p class="meta">{pairs}</p>')
    for paragraph in (p.strip() for p in section.get("text", "").split("\n\n")):
        if paragraph:
            out.append(f"<p>{escape(paragraph).replace(chr(10), '<br>')}</p>")
    for name in section.get("figures", []):
        out.append(_figure(folder, name))
    for table in section.get("tables", []):
        out.append(_section_table(folder, table))
    out.append("</section>")
    return "\n".join(out)


def _figure(folder: Path, name: str) -> str:
    path = folder / layout.FIGURES / f"{name}.png"
    if not path.is_file():
        return f'<p class="note">Figure {escape(name)} is missing ({escape(str(path))}).</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}">'
            f"<figcaption>{escape(name)}</figcaption></figure>")


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
    """An HTML table with every header and cell escaped; long text is cut (full text in the tooltip)."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if value is None:
                cells.append('<td class="na"></td>')
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num">{escape(formatting.number(value))}</td>')
            else:
                text = str(value)
                if len(text) > MAX_CELL_CHARS:
                    cells.append(f'<td title="{escape(text)}">{escape(text[:MAX_CELL_CHARS])}…</td>')
                else:
                    cells.append(f"<td>{escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _tables_appendix(runs: list[tuple[Path, dict[str, Any], str]]) -> str:
    out = ['<section id="tables"><h2>Stored tables</h2>',
           '<p class="note">Tidy tables of this run, as Parquet files under <code>tables/</code>; '
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


def _config_block(runs: list[tuple[Path, dict[str, Any], str]]) -> str:
    out = ['<section id="config"><h2>Run configuration</h2>']
    for path, cfg, prefix in runs:
        text = escape(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))
        label = f"config.json of {path.name}" if prefix else "config.json"
        out.append(f"<details{'' if prefix else ' open'}><summary>{escape(label)}</summary><pre>{text}</pre></details>")
    out.append("</section>")
    return "\n".join(out)

"""The claims part of report.html: a summary written from the verdicts, the verdict rule, the claims
table (claim | paper | this model: value [95% interval], n | control | verdict), then one section per
claim with the figure that shows its uncertainty. Also the side-by-side table of ``hopscope compare``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import pandas as pd

from hopscope.stats import VERDICT_RULE, verdict_counts, verdict_reason

from .sections import slug

FigureHTML = Callable[[dict[str, Any]], str]


# ---- small pieces --------------------------------------------------------------------------------------
def _finite(*values: Any) -> bool:
    try:
        return all(v is not None and math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def num(value: Any, signed: bool = False) -> str:
    """A claim number to 3 significant digits ('n/a' when missing)."""
    if not _finite(value):
        return "n/a"
    value = float(value)
    if value == 0:
        return "0"
    text = f"{value:.3g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"
    return f"+{text}" if signed and value > 0 else text


def p_text(value: Any, name: str = "p") -> str:
    """'p = 0.03', 'p = 0.0012', 'p < 0.0001' ('p n/a' when there is no test)."""
    if not _finite(value):
        return f"{name} n/a"
    value = float(value)
    if value < 1e-4:
        return f"{name} < 0.0001"
    return f"{name} = " + (f"{value:.2g}" if value < 0.01 else f"{value:.3f}".rstrip("0").rstrip("."))


def is_difference(row: dict[str, Any]) -> bool:
    return "(paired)" in str(row.get("measure", ""))


def value_text(row: dict[str, Any]) -> str:
    """'0.31 [0.22, 0.40]'; paired differences carry their sign."""
    signed = is_difference(row)
    if not _finite(row.get("value")):
        return "n/a"
    text = num(row["value"], signed)
    if _finite(row.get("low"), row.get("high")):
        text += f" [{num(row['low'], signed)}, {num(row['high'], signed)}]"
    return text


def anchor(cid: str) -> str:
    return f"claim-{slug(cid)}"


def verdict_badge(verdict: str, quick: bool = False) -> str:
    label = f"{verdict} (indicative)" if quick and verdict != "inconclusive" else verdict
    cls = f"verdict {escape(verdict)}" + (" indicative" if quick else "")
    return f'<span class="{cls}">{escape(label)}</span>'


def interval_svg(row: dict[str, Any], width: int = 170, height: int = 30, labels: bool = False) -> str:
    """The estimate, its interval and the control value on one small axis; the paper's side is shaded."""
    value, low, high, control = (row.get(k) for k in ("value", "low", "high", "control_value"))
    if not _finite(value, low, high, control):
        return ""
    value, low, high, control = float(value), float(low), float(high), float(control)
    lo, hi = min(low, control, value), max(high, control, value)
    span = (hi - lo) or max(abs(hi), 1.0)
    lo, hi = lo - 0.12 * span, hi + 0.12 * span
    pad = 8
    top = 12 if labels else 0
    height = height + (26 if labels else 0)
    mid = 15 + top

    def x(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (width - 2 * pad)

    cx = x(control)
    greater = row.get("direction", "greater") == "greater"
    shade = (cx, width - pad - cx) if greater else (pad, cx - pad)
    colour = {"supported": "#1a7f37", "contradicted": "#cf222e"}.get(str(row.get("verdict")), "#57606a")
    tip = escape(f"{value_text(row)} against control {num(control)}; the paper's side is shaded")
    parts = [
        f'<svg class="interval" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{tip}</title>",
        f'<rect x="{shade[0]:.1f}" y="{top + 3}" width="{max(shade[1], 0):.1f}" height="24" fill="#dafbe1" '
        'opacity="0.7"/>',
        f'<line x1="{pad}" y1="{mid}" x2="{width - pad}" y2="{mid}" stroke="#d1d9e0"/>',
        f'<line x1="{cx:.1f}" y1="{top + 2}" x2="{cx:.1f}" y2="{top + 28}" stroke="#57606a" stroke-dasharray="3,2"/>',
        f'<line x1="{x(low):.1f}" y1="{mid}" x2="{x(high):.1f}" y2="{mid}" stroke="{colour}" stroke-width="2.5"/>',
        f'<line x1="{x(low):.1f}" y1="{mid - 6}" x2="{x(low):.1f}" y2="{mid + 6}" stroke="{colour}" stroke-width="2"/>',
        f'<line x1="{x(high):.1f}" y1="{mid - 6}" x2="{x(high):.1f}" y2="{mid + 6}" stroke="{colour}" '
        'stroke-width="2"/>',
        f'<circle cx="{x(value):.1f}" cy="{mid}" r="4.5" fill="{colour}"/>',
    ]
    if labels:
        parts.append(f'<text x="{cx:.1f}" y="10" text-anchor="middle">control {escape(num(control))}</text>')
        parts.append(f'<text x="{x(low):.1f}" y="{height - 2}" text-anchor="end">{escape(num(low))}</text>')
        parts.append(f'<text x="{x(high):.1f}" y="{height - 2}" text-anchor="start">{escape(num(high))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- summary -------------------------------------------------------------------------------------------
def _listing(rows: list[dict[str, Any]], limit: int = 6) -> str:
    items = [f'<a href="#{anchor(r["id"])}">{escape(r["id"])}</a> ({escape(r["statement"] or r["measure"])})'
             for r in rows[:limit]]
    if len(rows) > limit:
        items.append(f"and {len(rows) - limit} more")
    return "; ".join(items)


def summary(frame: pd.DataFrame, model: str | None, quick: bool) -> str:
    """A short summary of the verdicts, as HTML."""
    rows = frame.to_dict("records")
    counts = verdict_counts(frame)
    papers = sorted({r["paper"] for r in rows if r["paper"]})
    on = f" on <b>{escape(model)}</b>" if model else ""
    from_papers = f" from {len(papers)} paper{'s' if len(papers) != 1 else ''}" if papers else ""
    plural = "s" if len(rows) != 1 else ""
    out = [f"<p>This run tested <b>{len(rows)}</b> claim{plural}{from_papers}{on}: "
           f"<b>{counts['supported']}</b> supported, <b>{counts['contradicted']}</b> contradicted and "
           f"<b>{counts['inconclusive']}</b> inconclusive.</p><ul>"]
    for name in ("supported", "contradicted"):
        picked = [r for r in rows if r["verdict"] == name]
        if picked:
            out.append(f"<li>{verdict_badge(name, quick)} {_listing(picked)}.</li>")
    undecided = [r for r in rows if r["verdict"] == "inconclusive"]
    if undecided:
        empty = [r for r in undecided if not r["n"]]
        sized = [r for r in undecided if r["n"]]
        text = f"<li>{verdict_badge('inconclusive')} {_listing(undecided)}."
        if sized:
            example = max(sized, key=lambda r: r["n"])
            text += (f" Their intervals would be half as wide with 4&times; the units "
                     f"(e.g. {escape(example['id'])}: {int(example['n_to_halve']):,} instead of {int(example['n']):,}).")
        if empty:
            text += f" {len(empty)} had no units at all (n=0)."
        out.append(text + "</li>")
    out.append("</ul>")
    if quick:
        out.append('<p class="banner">This is a <b>quick</b> run at small fixed sizes (a smoke test): read its '
                   "verdicts as indicative only; the default-size run is the one that can decide them.</p>")
    return "".join(out)


# ---- table and details ---------------------------------------------------------------------------------
def _paper_cell(row: dict[str, Any]) -> str:
    paper = escape(row["paper"]) if row["paper"] else '<span class="sub">no paper figure</span>'
    value = f'<span class="sub">paper: {escape(row["paper_value"])}</span>' if row["paper_value"] else ""
    return paper + value


def claims_table(frame: pd.DataFrame, quick: bool) -> str:
    """The claims table (sortable and filterable in the page)."""
    head = ("<tr><th>claim</th><th>paper</th><th>this model: value [95% interval], n</th><th>interval vs control</th>"
            "<th>control</th><th>verdict</th></tr>")
    body = []
    for row in frame.to_dict("records"):
        value = row["value"] if _finite(row["value"]) else None
        n = int(row["n"])
        body.append(
            "<tr>"
            f'<td><a href="#{anchor(row["id"])}"><b>{escape(row["id"])}</b></a>'
            f'<span class="sub">{escape(row["statement"])}</span></td>'
            f"<td>{_paper_cell(row)}</td>"
            f'<td class="value"' + (f' data-v="{value!r}"' if value is not None else "") + ">"
            f"{escape(value_text(row))}, n = {n:,}"
            f'<span class="sub">{escape(row["measure"])}</span></td>'
            f"<td>{interval_svg(row)}</td>"
            f"<td>{escape(row['control'])}"
            f'<span class="sub">compared at {escape(num(row["control_value"]))}</span></td>'
            f"<td>{verdict_badge(row['verdict'], quick)}"
            f'<span class="sub">{escape(p_text(row["p_holm"], "Holm p"))}</span></td>'
            "</tr>")
    return (f'<div class="scroll"><table class="data claims"><thead>{head}</thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def claim_section(row: dict[str, Any], figure_html: str, quick: bool) -> str:
    """One claim: what was measured, the numbers, why the verdict, its figure."""
    facts = [
        ("paper", f"{escape(row['paper'] or '—')}" + (f" ({escape(row['paper_value'])})" if row["paper_value"] else "")),
        ("measure", escape(row["measure"])),
        ("this model", f"<b>{escape(value_text(row))}</b>, n = {int(row['n']):,}"),
        ("control", f"{escape(row['control'])} (compared at {escape(num(row['control_value']))})"),
        ("test", f"{escape(row['test'])}: {escape(p_text(row['p_value']))}, "
                 f"{escape(p_text(row['p_holm'], 'Holm-adjusted p'))}"),
        ("paper's direction", "higher than the control" if row["direction"] == "greater" else "lower than the control"),
    ]
    if row["verdict"] == "inconclusive" and _finite(row.get("n_to_halve")):
        facts.append(("n to halve the interval", f"{int(row['n_to_halve']):,}"))
    if row.get("note"):
        facts.append(("note", escape(row["note"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<section class="claim" id="{anchor(row["id"])}"><h3>{escape(row["id"])}: '
            f'{escape(row["statement"] or row["measure"])} {verdict_badge(row["verdict"], quick)}</h3>'
            f'<p>{escape(verdict_reason(row))} {interval_svg(row, 320, 30, labels=True)}</p>'
            f'<dl class="facts">{dl}</dl>{figure_html}</section>')


def claims_part(frame: pd.DataFrame, model: str | None, quick: bool, figure_for: FigureHTML) -> str:
    """Everything the report says about claims, top-down: summary, rule, table, one section per claim."""
    out = ['<section id="claims"><h2>Claims</h2>', f'<div class="summary">{summary(frame, model, quick)}</div>',
           f'<p class="rule">{escape(VERDICT_RULE)}</p>', claims_table(frame, quick),
           '<p class="note">Interval vs control: the dot is this model\'s estimate, the bar its 95% interval, the '
           "dashed line the control value; the paper's side of the control is shaded green. Each claim's own "
           "section below has the numbers and a figure.</p>", "</section>",
           '<section id="claim-details"><h2>Claims in detail</h2>',
           '<p class="note">One section per claim: the numbers behind its verdict and a figure of its uncertainty.</p>']
    for row in frame.to_dict("records"):
        out.append(claim_section(row, figure_for(row), quick))
    out.append("</section>")
    return "\n".join(out)


# ---- compare -------------------------------------------------------------------------------------------
def compare_table(long: pd.DataFrame, models: Sequence[str]) -> str:
    """One row per claim, one column per model: value [interval], n and verdict."""
    head = "<tr><th>claim</th><th>paper</th>" + "".join(f"<th>{escape(m)}</th>" for m in models) + "<th>agree?</th></tr>"
    body = []
    for (_, cid), group in long.groupby(["order", "id"], sort=True):
        first = group.iloc[0].to_dict()
        cells = []
        verdicts = []
        for model in models:
            hit = group[group["model"] == model]
            if hit.empty:
                cells.append('<td class="na">not tested</td>')
                continue
            row = hit.iloc[0].to_dict()
            verdicts.append(row["verdict"])
            value = row["value"] if _finite(row["value"]) else None
            cells.append(f'<td class="value"' + (f' data-v="{value!r}"' if value is not None else "") + ">"
                         f"{escape(value_text(row))}, n = {int(row['n']):,}<br>"
                         f"{verdict_badge(row['verdict'], bool(row.get('quick')))}</td>")
        agree = "yes" if len(set(verdicts)) == 1 and len(verdicts) == len(models) else "no"
        body.append(f'<tr><td><b>{escape(cid)}</b><span class="sub">{escape(first["statement"])}</span>'
                    f'<span class="sub">{escape(first["measure"])}</span></td><td>{_paper_cell(first)}</td>'
                    f"{''.join(cells)}<td>{agree}</td></tr>")
    return (f'<div class="scroll"><table class="data claims"><thead>{head}</thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def compare_summary(long: pd.DataFrame, models: Sequence[str]) -> str:
    """Which claims every model supports, and where the verdicts differ."""
    parts = []
    for model in models:
        counts = verdict_counts(long[long["model"] == model])
        parts.append(f"<li><b>{escape(model)}</b>: {counts['supported']} supported, {counts['contradicted']} "
                     f"contradicted, {counts['inconclusive']} inconclusive</li>")
    by_claim = long.groupby("id")["verdict"].agg(lambda v: tuple(v))
    tested_all = long.groupby("id")["model"].nunique() == len(models)
    everywhere = [c for c, v in by_claim.items() if tested_all[c] and set(v) == {"supported"}]
    differ = [c for c, v in by_claim.items() if len(set(v)) > 1]
    text = f"<ul>{''.join(parts)}</ul>"
    if everywhere:
        text += f"<p>Supported on every model: {escape(', '.join(everywhere))}.</p>"
    if differ:
        text += f"<p>Verdicts differ between models for: {escape(', '.join(differ))}.</p>"
    return text

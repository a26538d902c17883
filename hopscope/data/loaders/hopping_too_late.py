"""Hopping Too Late (Biran et al. 2024) ``two_hop.csv`` rows as two-hop records.

Columns read (others are ignored):

* ``e1_label``, ``e2_label``, ``e3_label`` (required) and optional Wikidata ids ``e1``, ``e2``, ``e3``;
* ``e1_aliases``, ``e2_aliases``, ``e3_aliases`` (optional): list strings such as ``"['a', 'b']"``;
* ``r1_template``, ``r2_template`` (required): noun phrases with ``{}`` for the subject,
  e.g. ``"the mother of {}"``; optional relation ids/names ``r1``, ``r2``;
* ``source_prompt`` (optional): the composed prompt; otherwise built as ``r2(r1(e1)) + " is"``.

Prompts: first hop ``"The mother of <e1> is"``, second hop ``"The spouse of <e2> is"``, entity
shortcut ``"The spouse of <e1> is"``, relation shortcut the composition with e1 replaced by
``"someone"``.
"""

from __future__ import annotations

from pathlib import Path

from hopscope.data.aliases import parse_list_string, unique
from hopscope.data.dataset import Dataset
from hopscope.data.loaders._common import cell, read_table, sentence_start
from hopscope.data.records import RecordError, TwoHopQuery
from hopscope.data.spans import SpanNotFound, char_span

REQUIRED = ("e1_label", "e2_label", "e3_label", "r1_template", "r2_template")
UNKNOWN_ENTITY = "someone"


def apply_template(template: str, value: str, field: str) -> str:
    """Put ``value`` into the single ``{}`` of ``template``; the error names the field."""
    if template.count("{}") != 1:
        raise RecordError(f"template {template!r} must contain exactly one '{{}}'", field=field)
    return template.replace("{}", value)


def _aliases(row: dict, name: str) -> list[str]:
    try:
        return parse_list_string(row.get(name, ""))
    except ValueError as e:
        raise RecordError(str(e), field=name) from None


def _query(row: dict, qid: str, source: str) -> TwoHopQuery:
    e1, e2, e3 = cell(row, "e1_label"), cell(row, "e2_label"), cell(row, "e3_label")
    t1, t2 = cell(row, "r1_template"), cell(row, "r2_template")
    phrase = apply_template(t1, e1, "r1_template")
    composed_phrase = apply_template(t2, phrase, "r2_template")
    prompt = cell(row, "source_prompt", required=False) or f"{sentence_start(composed_phrase)} is"
    try:
        first_span = char_span(prompt, phrase)
    except SpanNotFound:
        first_span = None
    try:
        e1_span = char_span(prompt, e1)
        relation_shortcut = prompt[: e1_span[0]] + UNKNOWN_ENTITY + prompt[e1_span[1]:]
    except SpanNotFound:
        e1_span, relation_shortcut = None, None
    r1 = cell(row, "r1", required=False) or t1
    r2 = cell(row, "r2", required=False) or t2
    ids = {k: cell(row, k, required=False) for k in ("e1", "e2", "e3")}
    return TwoHopQuery(
        qid=qid, prompt=prompt,
        first_hop_prompt=f"{sentence_start(phrase)} is",
        second_hop_prompt=f"{sentence_start(apply_template(t2, e2, 'r2_template'))} is",
        e1=e1, e2=e2, e3=e3, r1=r1, r2=r2,
        e2_aliases=unique(_aliases(row, "e2_aliases"), exclude=[e2]),
        e3_aliases=unique(_aliases(row, "e3_aliases"), exclude=[e3]),
        first_hop_span=first_span, e1_span=e1_span,
        entity_shortcut_prompt=f"{sentence_start(apply_template(t2, e1, 'r2_template'))} is",
        relation_shortcut_prompt=relation_shortcut, composition=f"{r1}->{r2}",
        provenance=f"hopping_too_late: {source}",
        meta={"ids": {k: v for k, v in ids.items() if v},
              "e1_aliases": unique(_aliases(row, "e1_aliases"), exclude=[e1])},
    )


def load_hopping_too_late(path: str | Path) -> Dataset:
    """Read a ``two_hop.csv``; a bad row raises :class:`RecordError` with file, row and field."""
    path = Path(path)
    frame = read_table(path, REQUIRED)
    records = []
    for i, row in enumerate(frame.to_dict("records"), 1):
        key = row.get("id") or row.get("Unnamed: 0") or str(i - 1)
        try:
            records.append(_query(row, f"htl:{key}", path.name))
        except RecordError as e:
            raise e.at(file=str(path), row=i) from None
    return Dataset(records, name="hopping_too_late", info={"source": str(path)})

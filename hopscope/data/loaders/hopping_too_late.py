"""Hopping Too Late (Biran et al. 2024) datasets as two-hop records.

Reads the files written by the paper's ``src/create_dataset.py`` (github.com/edenbiran/HoppingTooLate)
and by its ``src/evaluate_dataset.py``; other columns are ignored, so one loader takes them all:

* ``two_hop.csv``: a leading unnamed index column, ``id``, the Wikidata ids ``e1 r1 e2 r2 e3``,
  ``e1_aliases e2_aliases e3_aliases`` (Python list strings, ``"['Obama', ...]"``),
  ``e1_type e2_type e3_type r1_type r2_type``, ``e1_label r1_label e2_label r2_label e3_label``,
  ``e1_popularity e2_popularity e3_popularity``. It has no templates: they are rebuilt from the
  relation as the paper phrases it (:data:`RELATION_PHRASES`, else ``"the <r_type> of {}"``).
* ``two_hop_rbe.csv`` / ``two_hop_rae.csv``: the same entity columns plus ``r1_template``,
  ``r2_template`` and the composed prompt (``prompt`` in the script's column list, ``source_prompt``
  in the column the script computes and the experiment scripts read; either is accepted). ``rbe``
  puts the relation before the entity (``"the spouse of {}"``), ``rae`` after it (``"{} has a
  spouse named"``).
* an evaluated copy adds ``first_hop_correct second_hop_correct composition_correct
  entity_shortcut_correct relation_shortcut_correct`` (kept in ``meta["paper_eval"]``).

Mapping (paper -> record): ``e1_label/e2_label/e3_label`` -> ``e1/e2/e3``; ``e2_aliases`` /
``e3_aliases`` -> ``e2_aliases`` / ``e3_aliases`` with one-character aliases dropped, as the paper's
``get_answers`` does; ``r1_type`` (else ``r1_label``, the id, the template) -> ``r1``, likewise ``r2``;
``prompt``/``source_prompt`` (else ``r2_template.format(r1_template.format(e1_label))`` + ``" is"``
for rbe) -> ``prompt``; first hop ``f"{r1_template.format(e1)} is"``, second hop
``f"{r2_template.format(e2)} is"`` and entity shortcut ``f"{r2_template.format(e1)} is"`` as in
``evaluate_dataset.py`` (no ``" is"`` for rae templates); relation shortcut the composition with e1
and its ``" of"`` removed (``"the spouse of the mother"``: the paper's ``[:-4]``; for the two relations
whose phrase does not end in ``" of {}"`` the whole subject slot is removed instead).
``first_hop_span`` covers ``r1_template.format(e1)`` in the prompt (the paper's e1 source position is
its last token) and ``e1_span`` e1 inside it. Prompts are kept as the paper writes them (lower case).
Ids, e1 aliases, types and popularity go to ``meta``.
"""

from __future__ import annotations

from pathlib import Path

from hopscope.data.aliases import parse_list_string, unique
from hopscope.data.dataset import Dataset
from hopscope.data.loaders._common import cell, read_table
from hopscope.data.records import RecordError, TwoHopQuery
from hopscope.data.spans import SpanNotFound, char_span

LABELS = ("e1_label", "e2_label", "e3_label")
TEMPLATES = ("r1_template", "r2_template")
PROMPT_COLUMNS = ("source_prompt", "prompt")
EVAL_COLUMNS = ("first_hop_correct", "second_hop_correct", "composition_correct", "entity_shortcut_correct",
                "relation_shortcut_correct")
# the paper's noun phrase for the relations whose phrase is not "the <relation name> of {}"
RELATION_PHRASES = {
    "P85": "the national anthem of {}",
    "P127": "the owner of {}",
    "P800": "the most notable work of {}",
    "P272": "the company that produced {}",
    "P1441": "the work that features {}",
    "P112": "the founder of {}",
}


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


def _answers(row: dict, name: str, label: str) -> list[str]:
    """Aliases as the paper scores them: one-character aliases dropped, the label excluded."""
    return unique([a for a in _aliases(row, name) if len(a) > 1], exclude=[label])


def _template(row: dict, hop: str) -> str:
    """``r1_template`` / ``r2_template``, or the paper's phrase rebuilt from the relation."""
    given = cell(row, f"{hop}_template", required=False)
    if given:
        return given
    rid = cell(row, hop, required=False)
    if rid in RELATION_PHRASES:
        return RELATION_PHRASES[rid]
    name = cell(row, f"{hop}_type", required=False) or cell(row, f"{hop}_label", required=False)
    if not name:
        raise RecordError(f"needs {hop}_template, or {hop}_type / {hop}_label to rebuild it", field=f"{hop}_template")
    return f"the {name} of {{}}"


def _strip_subject(template: str) -> str:
    """A relation phrase without its subject: "the mother of {}" -> "the mother"."""
    head = template.replace("{}", "").rstrip()
    return head[: -len(" of")] if head.endswith(" of") else head


def _bool(value: str, field: str) -> bool | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in ("true", "1", "1.0"):
        return True
    if v in ("false", "0", "0.0"):
        return False
    raise RecordError(f"expected True/False, got {value!r}", field=field)


def _number(value: str, field: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise RecordError(f"expected a number, got {value!r}", field=field) from None


def _query(row: dict, qid: str, source: str) -> TwoHopQuery:
    e1, e2, e3 = (cell(row, k) for k in LABELS)
    t1, t2 = _template(row, "r1"), _template(row, "r2")
    before = t2.rstrip().endswith("{}")  # rbe: "the spouse of {}"; rae: "{} has a spouse named"
    tail = " is" if before else ""
    phrase = apply_template(t1, e1, "r1_template")
    built = apply_template(t2, phrase, "r2_template") + tail
    prompt = next((cell(row, c, required=False) for c in PROMPT_COLUMNS if cell(row, c, required=False)), built)
    try:
        first_span = char_span(prompt, phrase)
        at = first_span[0] + t1.index("{}")
        e1_span = (at, at + len(e1))
    except SpanNotFound:
        first_span = None
        try:
            e1_span = char_span(prompt, e1)
        except SpanNotFound:
            e1_span = None
    names = {hop: cell(row, f"{hop}_type", required=False) or cell(row, f"{hop}_label", required=False)
             or cell(row, hop, required=False) or tmpl for hop, tmpl in (("r1", t1), ("r2", t2))}
    meta = {
        "ids": {k: v for k in ("e1", "r1", "e2", "r2", "e3") if (v := cell(row, k, required=False))},
        "templates": {"r1": t1, "r2": t2, "style": "rbe" if before else "rae"},
        "e1_aliases": unique(_aliases(row, "e1_aliases"), exclude=[e1]),
        "types": {k: v for k in ("e1_type", "e2_type", "e3_type") if (v := cell(row, k, required=False))},
        "popularity": {k: v for k in ("e1_popularity", "e2_popularity", "e3_popularity")
                       if (v := _number(cell(row, k, required=False), k)) is not None},
    }
    evals = {k: b for k in EVAL_COLUMNS if k in row and (b := _bool(cell(row, k, required=False), k)) is not None}
    if evals:
        meta["paper_eval"] = evals
    return TwoHopQuery(
        qid=qid, prompt=prompt,
        first_hop_prompt=f"{phrase} is",
        second_hop_prompt=apply_template(t2, e2, "r2_template") + tail,
        e1=e1, e2=e2, e3=e3, r1=names["r1"], r2=names["r2"],
        e2_aliases=_answers(row, "e2_aliases", e2), e3_aliases=_answers(row, "e3_aliases", e3),
        first_hop_span=first_span, e1_span=e1_span,
        entity_shortcut_prompt=apply_template(t2, e1, "r2_template") + tail,
        relation_shortcut_prompt=apply_template(t2, _strip_subject(t1), "r2_template"),
        composition=f"{names['r1']}->{names['r2']}", provenance=f"hopping_too_late: {source}", meta=meta,
    )


def load_hopping_too_late(path: str | Path) -> Dataset:
    """Read a Hopping Too Late CSV (any of the formats above); a bad row raises
    :class:`RecordError` naming the file, the row (1-based, header not counted) and the field."""
    path = Path(path)
    if path.is_dir():
        raise RecordError("is a folder; give the path of a two_hop.csv", file=str(path))
    frame = read_table(path, LABELS)
    columns = set(frame.columns)
    if not set(TEMPLATES) <= columns and not ({"r1", "r2"} <= columns or {"r1_type", "r2_type"} <= columns
                                              or {"r1_label", "r2_label"} <= columns):
        raise RecordError(f"needs r1_template and r2_template, or the relation columns (r1/r2, r1_type/r2_type "
                          f"or r1_label/r2_label) to rebuild them; the file has {list(frame.columns)}",
                          file=str(path), field="r1_template")
    records = []
    for i, row in enumerate(frame.to_dict("records"), 1):
        key = (row.get("id") or row.get("Unnamed: 0") or str(i - 1)).strip()
        try:
            records.append(_query(row, f"htl:{key}", path.name))
        except RecordError as e:
            raise e.at(file=str(path), row=i) from None
    ds = Dataset(records, name="hopping_too_late", info={"source": str(path)}, check_ids=False)
    ds._check_unique_ids(file=str(path))
    return ds

"""Memory-injection CSVs (Sakarvadia et al. 2023) as two-hop records.

``explicit_sentence`` names the bridge (the second hop), ``obscure_sentence`` describes it (the
composition), ``explicit_entity`` is the bridge e2, ``obscure_entity`` the first-hop phrase.
``multi_hop_1000.csv`` also carries ``fact1 = [e1, r1, e2]`` and ``fact2 = [e2, r2, e3]`` as list
strings, which give e1, the relations, the first-hop prompt and the shortcut prompts.
"""

from __future__ import annotations

from pathlib import Path

from hopscope.data.aliases import parse_list_string, unique
from hopscope.data.dataset import Dataset
from hopscope.data.loaders._common import cell, read_table, sentence_start, shared_data_dir
from hopscope.data.records import RecordError, TwoHopQuery
from hopscope.data.spans import SpanNotFound, char_span

HANDWRITTEN = "handwritten_obscure_explicit_data.csv"
MULTI_HOP = "multi_hop_1000.csv"
COLUMNS = ("explicit_sentence", "obscure_sentence", "explicit_entity", "obscure_entity", "answer")
RAW_COLUMNS = ("explicit_sentence", "obscure_sentence", "explicit_entity")  # kept unstripped in meta["raw"]
PROVENANCE = "memory_injections (Sakarvadia et al. 2023, MIT): {}"
# stands in for e1 in the relation-shortcut prompt (the composition asked without its subject)
UNKNOWN_ENTITY = "something"


def _span(text: str, part: str) -> tuple[int, int] | None:
    try:
        return char_span(text, part)
    except SpanNotFound:
        return None


def _fact(row: dict, name: str) -> list[str]:
    try:
        fact = parse_list_string(cell(row, name))
    except ValueError as e:
        raise RecordError(str(e), field=name) from None
    if len(fact) != 3:
        raise RecordError(f"expected [subject, relation, object], got {fact}", field=name)
    return fact


def _row_query(row: dict, qid: str, provenance: str, has_facts: bool) -> TwoHopQuery:
    composed = cell(row, "obscure_sentence")
    second = cell(row, "explicit_sentence")
    e2, e3 = cell(row, "explicit_entity"), cell(row, "answer")
    phrase = cell(row, "obscure_entity")
    e1, r1, r2 = "", "described", "handwritten"
    e2_aliases: list[str] = []
    e3_aliases: list[str] = []
    entity_shortcut = relation_shortcut = None
    first = f"{sentence_start(phrase)} is"
    if has_facts:
        (e1, r1, e2_a), (e2_b, r2, e3_b) = _fact(row, "fact1"), _fact(row, "fact2")
        e2_aliases, e3_aliases = unique([e2_a, e2_b], exclude=[e2]), unique([e3_b], exclude=[e3])
        first = f"The {r1} of {e1} is"
        entity_shortcut = f"The {r2} of {e1} is"
        e1_span = _span(composed, e1)
        if e1_span is not None:
            a, b = e1_span
            relation_shortcut = composed[:a] + UNKNOWN_ENTITY + composed[b:]
    span = _span(composed, phrase)
    e1_span = _span(composed, e1) if e1 else None
    meta = {"obscure_entity": phrase, "phrase_found": span is not None}
    raw = {c: row[c] for c in RAW_COLUMNS if isinstance(row.get(c), str) and row[c] != row[c].strip()}
    if raw:  # the seed feeds cells unstripped (e.g. a trailing space): memory injection uses these
        meta["raw"] = raw
    return TwoHopQuery(
        qid=qid, prompt=composed, first_hop_prompt=first, second_hop_prompt=second,
        e1=e1, e2=e2, e3=e3, r1=r1, r2=r2, e2_aliases=e2_aliases, e3_aliases=e3_aliases,
        first_hop_span=span, e1_span=e1_span, entity_shortcut_prompt=entity_shortcut,
        relation_shortcut_prompt=relation_shortcut, composition=f"{r1}->{r2}" if has_facts else "handwritten",
        provenance=provenance, meta=meta,
    )


def load_memory_injection_csv(path: str | Path) -> Dataset:
    """Either seed CSV; ``fact1``/``fact2`` columns are used when present."""
    path = Path(path)
    frame = read_table(path, COLUMNS)
    has_facts = {"fact1", "fact2"} <= set(frame.columns)
    stem = path.stem
    records = []
    for i, row in enumerate(frame.to_dict("records"), 1):
        index = row.get("Unnamed: 0") or row.get("") or str(i - 1)
        try:
            records.append(_row_query(row, f"{stem}:{index}", PROVENANCE.format(path.name), has_facts))
        except RecordError as e:
            raise e.at(file=str(path), row=i) from None
    return Dataset(records, name=stem, info={"source": str(path), "licence": "MIT (msakarvadia/memory_injections)"})


def load_memory_injections(folder: str | Path | None = None) -> dict[str, Dataset]:
    """Both seed CSVs from ``folder`` (default: the shared data folder's ``memory_injections``)."""
    folder = Path(folder) if folder is not None else shared_data_dir() / "memory_injections"
    return {"handwritten": load_memory_injection_csv(folder / HANDWRITTEN),
            "multi_hop_1000": load_memory_injection_csv(folder / MULTI_HOP)}

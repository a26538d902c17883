"""Queries for the recall analyses: token-level facts about each prompt, and the world-facts relations.

:func:`prepare` accepts any records with ``prompt``, ``answer`` and ``subject`` (``SingleHopQuery`` from
:mod:`hopscope.data`, or dicts); the subject's token span comes from ``subject_span`` (characters) or
the subject's last occurrence in the prompt. :func:`relation_queries` builds zero- or few-shot queries
with :func:`hopscope.data.build_single_hop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from hopscope.data.spans import model_token_span
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
        tokens = model_token_span(lm, prompt, tuple(span))
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


# -- world-facts relations (hopscope.data) ---------------------------------------------------------
SHORT_NAMES = {"capital": "country_capital", "continent": "country_continent", "currency": "country_currency",
               "language": "country_language"}
RELATIONS = tuple(SHORT_NAMES)  # the relations analysed and used as "other relations" for costs


def relation_name(relation: str) -> str:
    """The :mod:`hopscope.data` relation name of ``relation`` (``"capital"`` -> ``"country_capital"``)."""
    from hopscope.data import RELATIONS as DATA_RELATIONS

    name = SHORT_NAMES.get(relation, relation)
    if name not in DATA_RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)} or "
                         f"{', '.join(DATA_RELATIONS)}")
    return name


def relation_queries(relation: str = "capital", n: int = 30, *, shots: int = 0, seed: int = 0) -> list:
    """``n`` single-hop queries of ``relation`` about its most popular subjects, each prompt preceded by
    ``shots`` demonstrations (``hopscope.data.build_single_hop``, first template)."""
    from hopscope.data import build_single_hop

    return build_single_hop(relation_name(relation), n=n, seed=seed, k_shot=shots)


def query_shots(query: Any) -> int:
    """Number of demonstrations recorded in a query's ``meta`` (0 when unknown)."""
    meta = _field(query, "meta", None) or {}
    return int(meta.get("k_shot", meta.get("shots", 0))) if isinstance(meta, dict) else 0

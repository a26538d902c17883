"""The prompts of a recall run: which prompt is analysed or only scored, which half it belongs to, and
which prompt about another subject patches it; then each prompt's token-level facts for a model.

:func:`design` turns query records (``SingleHopQuery`` from :mod:`hopscope.data`, or dicts with ``prompt``,
``answer``, ``subject``) into plain JSON-able rows, a pure function of the records and the seed;
:func:`items` tokenises rows for a model (the subject's token span from ``subject_span`` in characters, or
the subject's last occurrence). :func:`relation_queries` builds world-facts queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from hopscope.data import RELATIONS as DATA_RELATIONS
from hopscope.data import build_single_hop
from hopscope.data.spans import char_span, model_token_span
from hopscope.engine import first_token_id

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

MAIN = "main"
SHORT_NAMES = {"capital": "country_capital", "continent": "country_continent", "currency": "country_currency",
               "language": "country_language"}
RELATIONS = tuple(SHORT_NAMES)  # the relations analysed, and the "other relations" a mitigation is costed on


@dataclass(frozen=True)
class RecallItem:
    """One prompt, ready for a model: answer and subject token ids, the subject's token span."""

    qid: str
    prompt: str
    answer: str
    subject: str
    answer_id: int
    subject_id: int
    subject_tokens: tuple[int, int]  # [start, stop) token positions of the subject in the prompt
    n_tokens: int


def relation_name(relation: str) -> str:
    """The :mod:`hopscope.data` relation name of ``relation`` (``"capital"`` -> ``"country_capital"``)."""
    name = SHORT_NAMES.get(relation, relation)
    if name not in DATA_RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)} or "
                         f"{', '.join(DATA_RELATIONS)}")
    return name


def relation_queries(relation: str = "capital", n: int | None = 30, *, shots: int = 0, seed: int = 0) -> list:
    """``n`` single-hop queries of ``relation`` about its most popular subjects (``None``: all), each preceded
    by ``shots`` demonstrations (``hopscope.data.build_single_hop``, first template)."""
    return build_single_hop(relation_name(relation), n=n, seed=seed, k_shot=shots)


def _field(q: Any, name: str, default: Any = None) -> Any:
    if isinstance(q, Mapping):
        return q.get(name, default)
    return getattr(q, name, default)


def _row(q: Any, i: int, where: str) -> dict[str, Any]:
    prompt, answer, subject = _field(q, "prompt"), _field(q, "answer"), _field(q, "subject")
    qid = str(_field(q, "qid", None) or f"{where}{i}")
    if not prompt or not answer or not subject:
        raise ValueError(f"{where}query {qid} (row {i}): needs prompt, answer and subject")
    span = _field(q, "subject_span")
    if span is None:
        try:
            span = char_span(prompt, subject)
        except ValueError:
            raise ValueError(f"{where}query {qid} (row {i}): subject {subject!r} does not occur in the prompt "
                             f"{prompt!r}") from None
    return {"qid": qid, "prompt": str(prompt), "answer": str(answer), "subject": str(subject),
            "subject_span": [int(span[0]), int(span[1])]}


def split_halves(n: int, seed: int) -> list[str]:
    """``"train"`` / ``"test"`` for each of ``n`` prompts: a seeded half each (test gets the odd one)."""
    perm = np.random.default_rng([int(seed), 7]).permutation(n)
    roles = ["test"] * n
    for i in perm[: n // 2]:
        roles[int(i)] = "train"
    return roles


def source_pairs(subjects: Sequence[str], seed: int) -> list[int]:
    """For each prompt, the index of another prompt about a different subject (a seeded derangement):
    the corrupted run whose head outputs path patching writes in (the paper's other-subject prompts)."""
    n = len(subjects)
    if len(set(subjects)) < 2:
        raise ValueError("the recall analysis needs prompts about at least two different subjects")
    rng = np.random.default_rng([int(seed), 11])
    order = rng.permutation(n)
    out = [-1] * n
    for k, i in enumerate(order):  # pair each prompt with the next prompt in a shuffled cycle of other subjects
        for step in range(1, n):
            j = int(order[(k + step) % n])
            if subjects[j] != subjects[int(i)]:
                out[int(i)] = j
                break
    return out


def design(queries: Sequence[Any], others: Mapping[str, Sequence[Any]], seed: int) -> list[dict[str, Any]]:
    """JSON-able rows: the analysed prompts (``set="main"``, a ``split`` and a ``source`` qid) followed by the
    prompts of other relations (``set="other:<relation>"``), which are only scored."""
    if len(queries) < 4:
        raise ValueError(f"the recall analysis needs at least 4 prompts (got {len(queries)})")
    rows = [_row(q, i, "") for i, q in enumerate(queries)]
    seen: set[str] = set()
    for r in rows:
        if r["qid"] in seen:
            raise ValueError(f"query id {r['qid']!r} occurs twice; qids must be unique")
        seen.add(r["qid"])
    roles = split_halves(len(rows), seed)
    sources = source_pairs([r["subject"] for r in rows], seed)
    for r, role, src in zip(rows, roles, sources):
        r.update(set=MAIN, split=role, source=rows[src]["qid"])
    for name, qs in others.items():
        for i, q in enumerate(qs):
            r = _row(q, i, f"other:{name} ")
            r.update(set=f"other:{name}", split="", source="", qid=f"other:{name}:{r['qid']}")
            rows.append(r)
    return rows


def items(lm: "LoadedModel", rows: Sequence[Mapping[str, Any]]) -> list[RecallItem]:
    """Tokenise design rows for ``lm``; errors name the offending query."""
    out = []
    for r in rows:
        qid, prompt = r["qid"], r["prompt"]
        try:
            answer_id = first_token_id(lm.tokenizer, r["answer"])
            subject_id = first_token_id(lm.tokenizer, r["subject"])
        except ValueError as err:
            raise ValueError(f"query {qid}: {err}") from None
        tokens = model_token_span(lm, prompt, tuple(r["subject_span"]))
        n = len(lm.to_ids(prompt))
        if tokens[1] >= n:
            raise ValueError(f"query {qid}: the subject must come before the last prompt token")
        out.append(RecallItem(qid, prompt, r["answer"], r["subject"], answer_id, subject_id, tokens, n))
    return out

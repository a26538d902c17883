"""Two-hop queries as the hopping analyses read them: the data, answers, token positions, samples.

A query is a :class:`hopscope.data.TwoHopQuery` (or any record with its fields). ``t1`` is the position
of e1's last token in the composed prompt (the paper's first-hop source position) and ``last`` the last
prompt token (``t2``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Sequence

from hopscope.data import Dataset, TwoHopQuery, build_two_hop, model_token_span
from hopscope.data.aliases import unique
from hopscope.data.builders import DEFAULT_TWO_HOP

if TYPE_CHECKING:
    from hopscope.methods.hopping.settings import KnowledgeSettings
    from hopscope.models.loaded import LoadedModel


def prepare(data: Any, knowledge: "KnowledgeSettings") -> list[TwoHopQuery]:
    """The two-hop records of ``data`` (a Dataset, records, or None: world facts built from the settings)."""
    if data is None:
        comps = knowledge.compositions or DEFAULT_TWO_HOP
        records: list = []
        for comp in comps:
            records += build_two_hop(comp, n=knowledge.queries_per_composition, seed=knowledge.seed,
                                     k_shot=knowledge.k_shot)
    else:
        records = list(data.two_hop() if isinstance(data, Dataset) else Dataset(list(data)).two_hop())
    if not records:
        raise ValueError("the data holds no two-hop queries")
    return records


def by_qid(queries: Sequence[Any]) -> dict[str, Any]:
    return {str(q.qid): q for q in queries}


def answers(q: Any) -> list[str]:
    """e3 and its aliases."""
    return unique([q.e3, *(q.e3_aliases or [])])


def bridges(q: Any) -> list[str]:
    """e2 and its aliases."""
    return unique([q.e2, *(q.e2_aliases or [])])


def subjects(q: Any) -> list[str]:
    """e1 and its aliases (a loader may keep them in ``meta["e1_aliases"]``)."""
    return unique([q.e1, *((getattr(q, "meta", None) or {}).get("e1_aliases") or [])])


def e1_tokens(lm: "LoadedModel", q: Any) -> tuple[int, int]:
    """Token span of e1 in the composed prompt (from ``e1_span``, else e1's last occurrence)."""
    span = getattr(q, "e1_span", None)
    try:
        return model_token_span(lm, q.prompt, tuple(span) if span is not None else q.e1)
    except ValueError as err:
        raise ValueError(f"query {q.qid}: cannot locate e1 {q.e1!r} in its prompt ({err})") from None


def t1(lm: "LoadedModel", q: Any) -> int:
    """Position of e1's last token in the composed prompt."""
    return e1_tokens(lm, q)[1] - 1


def last(lm: "LoadedModel", q: Any) -> int:
    return len(lm.to_ids(q.prompt)) - 1


def position(lm: "LoadedModel", q: Any, where: str) -> int:
    """``"last"`` (t2) or ``"e1"`` (t1)."""
    if where == "last":
        return last(lm, q)
    if where == "e1":
        return t1(lm, q)
    raise ValueError(f"unknown position {where!r}; choose last or e1")


def sample(ids: Sequence[str], n: int | None, seed: int, label: str) -> list[str]:
    """A seeded random order of ``ids`` cut to ``n`` (None: all); nested: a smaller n is a prefix."""
    order = list(ids)
    random.Random(f"{seed}|{label}").shuffle(order)
    return order if n is None else order[:n]


def _names(q: Any) -> set[str]:
    return {x.lower() for x in (*subjects(q), *bridges(q), *answers(q))}


def partner(q: Any, pool: Sequence[Any], seed: int) -> str | None:
    """The qid of a seeded 'unrelated' query for ``q``: one that names none of q's entities (None: no such query).

    Draws from ``pool`` with a generator seeded by the run's seed and q's qid (a full scan only if 200 draws fail).
    """
    mine = _names(q)
    rng = random.Random(f"{seed}|unrelated|{q.qid}")
    ok = lambda o: o.qid != q.qid and not mine & _names(o)  # noqa: E731
    for _ in range(min(200, len(pool))):
        o = pool[rng.randrange(len(pool))]
        if ok(o):
            return str(o.qid)
    others = [o for o in pool if ok(o)]
    return str(rng.choice(others).qid) if others else None

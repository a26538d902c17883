"""Prompt templates: filling with span tracking, relation and composition specs, few-shot prefixes."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]


@dataclass(frozen=True)
class Filled:
    """A filled template and the character span of every placeholder value in it."""

    text: str
    spans: dict[str, Span]

    def shifted(self, offset: int) -> Filled:
        """The same text after ``offset`` characters of prefix (spans moved along)."""
        return Filled(self.text, {k: (a + offset, b + offset) for k, (a, b) in self.spans.items()})


def placeholders(template: str) -> list[str]:
    """Placeholder names in order, e.g. ``["subject"]`` for ``"The capital of {subject} is"``."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def fill(template: str, *, capitalize: bool = True, **values: str | Filled) -> Filled:
    """Fill ``{name}`` placeholders and record where each value landed.

    A value may itself be a :class:`Filled` (a nested phrase); its inner spans are carried over
    as ``"<name>.<inner>"``. With ``capitalize``, a value that starts the text gets a capital first
    letter ("the country whose..." -> "The country whose..."). Raises ``KeyError`` naming the
    template for a missing value and ``ValueError`` for an unused one or a format spec.
    """
    used: set[str] = set()
    out: list[str] = []
    spans: dict[str, Span] = {}
    pos = 0
    for literal, name, spec, conv in string.Formatter().parse(template):
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        if spec or conv or not name.isidentifier():
            raise ValueError(f"template {template!r}: placeholder {{{name}}} must be a plain name")
        if name not in values:
            raise KeyError(f"template {template!r} needs a value for {{{name}}}; got {sorted(values)}")
        used.add(name)
        value = values[name]
        inner = value.spans if isinstance(value, Filled) else {}
        text = value.text if isinstance(value, Filled) else str(value)
        if capitalize and pos == 0 and text:
            text = text[0].upper() + text[1:]
        spans[name] = (pos, pos + len(text))
        for k, (a, b) in inner.items():
            spans[f"{name}.{k}"] = (pos + a, pos + b)
        out.append(text)
        pos += len(text)
    unused = set(values) - used
    if unused:
        raise ValueError(f"template {template!r} has no placeholder for {sorted(unused)}")
    return Filled("".join(out), spans)


def few_shot_prefix(demos: Sequence[tuple[str, str]], *, end: str = ".", sep: str = "\n") -> str:
    """``"prompt answer.\\n"`` for each (prompt, answer) demonstration; ``""`` when there are none."""
    return "".join(f"{p} {a}{end}{sep}" for p, a in demos)


@dataclass(frozen=True)
class RelationSpec:
    """A relation between a subject type and an object type, with its prompt templates.

    ``templates`` put the subject in ``{subject}`` and end where the object should follow.
    ``composable`` lists the templates that still read well when the subject is a noun phrase
    ("The currency of {subject} is the" but not "{subject}'s currency is the").
    ``descriptions`` are noun phrases naming the *object* through the subject ("the country whose
    capital is {subject}"): they make this relation the first hop of a composition; ``vague`` is
    that phrase with the subject removed ("a country"), used by the relation-shortcut prompt.
    """

    name: str
    subject_type: str
    object_type: str
    templates: tuple[str, ...]
    composable: tuple[int, ...] = ()
    descriptions: tuple[str, ...] = ()
    vague: str = ""

    def __post_init__(self) -> None:
        for t in self.templates + self.descriptions:
            if placeholders(t) != ["subject"]:
                raise ValueError(f"relation {self.name}: template {t!r} must contain {{subject}} once")
        bad = [i for i in self.composable if not 0 <= i < len(self.templates)]
        if bad:
            raise ValueError(f"relation {self.name}: composable indices {bad} out of range")


@dataclass(frozen=True)
class CompositionSpec:
    """A two-hop composition r2(r1(e1)); ``shortcut_prone`` marks compositions whose answer is
    known to be guessable without the bridge (e.g. a capital's continent from its name)."""

    name: str
    r1: str
    r2: str
    shortcut_prone: bool = False


RELATIONS: dict[str, RelationSpec] = {r.name: r for r in (
    RelationSpec("country_capital", "country", "city", (
        "The capital of {subject} is",
        "The capital city of {subject} is",
        "{subject}'s capital is",
    ), composable=(0, 1)),
    RelationSpec("country_currency", "country", "currency", (
        "The currency of {subject} is the",
        "The official currency of {subject} is the",
        "In {subject}, people pay with the",
    ), composable=(0, 1, 2)),
    RelationSpec("country_language", "country", "language", (
        "The official language of {subject} is",
        "In {subject}, the official language is",
        "People in {subject} speak",
    ), composable=(0, 1, 2)),
    RelationSpec("country_continent", "country", "continent", (
        "{subject} is located in the continent of",
        "{subject} is in the continent of",
        "The continent where {subject} is located is",
    ), composable=(0, 1, 2)),
    RelationSpec("country_demonym", "country", "demonym", (
        "The demonym for people from {subject} is",
        "People from {subject} are called",
        "The nationality adjective for {subject} is",
    ), composable=(0, 1, 2)),
    RelationSpec("country_subregion", "country", "region", (
        "{subject} is part of the region called",
        "The world region that {subject} belongs to is",
    ), composable=(0, 1)),
    RelationSpec("country_neighbor", "country", "country", (
        "{subject} shares a border with",
        "A country that borders {subject} is",
    ), composable=(0, 1)),
    RelationSpec("capital_country", "city", "country", (
        "{subject} is the capital of",
        "{subject} is the capital city of",
        "The country whose capital is {subject} is",
    ), descriptions=(
        "the country whose capital is {subject}",
        "the country with the capital {subject}",
    ), vague="a country"),
    RelationSpec("city_country", "city", "country", (
        "{subject} is a city in the country of",
        "The city of {subject} is located in",
        "{subject} is located in the country of",
    ), descriptions=(
        "the country where {subject} is located",
        "the country in which the city of {subject} lies",
    ), vague="a country"),
)}

COMPOSITIONS: dict[str, CompositionSpec] = {c.name: c for c in (
    CompositionSpec("capital_country_currency", "capital_country", "country_currency"),
    CompositionSpec("capital_country_language", "capital_country", "country_language"),
    CompositionSpec("capital_country_continent", "capital_country", "country_continent", shortcut_prone=True),
    CompositionSpec("capital_country_demonym", "capital_country", "country_demonym"),
    CompositionSpec("city_country_capital", "city_country", "country_capital"),
    CompositionSpec("city_country_currency", "city_country", "country_currency"),
    CompositionSpec("city_country_continent", "city_country", "country_continent", shortcut_prone=True),
    CompositionSpec("city_country_language", "city_country", "country_language"),
    CompositionSpec("city_country_demonym", "city_country", "country_demonym"),
    CompositionSpec("city_country_neighbor", "city_country", "country_neighbor"),
    CompositionSpec("capital_country_neighbor", "capital_country", "country_neighbor"),
)}

DEFAULT_SINGLE_HOP = ("country_capital", "country_currency", "country_language", "country_continent",
                      "country_demonym", "capital_country", "city_country")
DEFAULT_TWO_HOP = tuple(COMPOSITIONS)

"""Word lists for the memory-injection part-of-speech controls, shipped inside the package.

``top_word_types.csv`` beside this module is the seed repository's ``data/top_word_types.csv``
(msakarvadia/memory_injections, MIT licence; see ``README.md`` and ``LICENSE`` in this folder),
with the same six columns, the same words and the same order; only its UTF-8 byte-order mark and
CRLF line endings were dropped. The lists have different lengths; empty cells pad the shorter ones.

Kinds are named as in the seed's ``--fake_data_type`` / ``--memory_dataset`` choices:

============  ==================  =====
kind          seed column         words
============  ==================  =====
top_5000      Top 5000 Words      5050 (4380 distinct: a word repeats once per part of speech)
nouns         Nouns               2635
verbs         Verbs               969
adjectives    Adjectives          824
adverbs       Adverbs             331
conjunctions  Conjunctions        40
============  ==================  =====

How the seed uses them (read from its code):

* ``experiments/fake_injections/fake_injection.py`` injects *every* word of one list, in order,
  into every prompt at one fixed layer and tweak factor: ``column.dropna().head(limit)`` with
  ``limit=200`` for top_5000 / nouns / verbs / adjectives / adverbs, and the whole conjunction list
  (40 words).
* ``experiments/part_of_speech_tweak_factor_injections/pos_tweaK_factor_analysis.py`` draws, for
  each layer and each prompt, one word with ``random.choice`` from the *whole* list
  (``column.dropna().tolist()``; ``random.seed(42)``), over tweak factors 1..15.
* "The first 40 words of each list" (the size of the conjunction list) is what :func:`first_words`
  returns by default: the ``head(40)`` of the column, repeats kept, as pandas' ``head`` would.

``load(kind)`` equals ``pandas.read_csv(<file>)[column].dropna().tolist()`` for every kind.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

FILE = Path(__file__).with_name("top_word_types.csv")
SOURCE = "https://github.com/msakarvadia/memory_injections (data/top_word_types.csv), MIT licence"
COLUMNS: dict[str, str] = {
    "top_5000": "Top 5000 Words",
    "nouns": "Nouns",
    "verbs": "Verbs",
    "adjectives": "Adjectives",
    "adverbs": "Adverbs",
    "conjunctions": "Conjunctions",
}
KINDS: tuple[str, ...] = tuple(COLUMNS)


@lru_cache(maxsize=1)
def _table() -> dict[str, tuple[str, ...]]:
    with FILE.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    missing = [c for c in COLUMNS.values() if c not in header]
    if missing:
        raise ValueError(f"{FILE}: missing column(s) {missing}; it has {header}")
    out = {}
    for kind, column in COLUMNS.items():
        i = header.index(column)
        out[kind] = tuple(r[i].strip() for r in body if i < len(r) and r[i].strip())
    return out


def _check(kind: str) -> str:
    if kind not in COLUMNS:
        raise ValueError(f"unknown word list {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def load(kind: str) -> list[str]:
    """All words of one list, in the seed's order (repeats kept)."""
    return list(_table()[_check(kind)])


def first_words(kind: str, n: int = 40) -> list[str]:
    """The first ``n`` words of a list (the seed's ``head(n)``); the whole list if it is shorter."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return load(kind)[:n]


def all_lists() -> dict[str, list[str]]:
    """Every list by kind."""
    return {kind: load(kind) for kind in KINDS}


__all__ = ["COLUMNS", "FILE", "KINDS", "SOURCE", "all_lists", "first_words", "load"]

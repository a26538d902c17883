"""Alias list strings (as CSV files store them) and answer normalisation."""

from __future__ import annotations

import math

import pytest

from hopscope.data.aliases import normalize, parse_list_string, unique


@pytest.mark.parametrize("text, expected", [
    ("['a', 'b']", ["a", "b"]),
    ('["a", "b"]', ["a", "b"]),
    ("[\"Lilli's Marriage\", 'director', 'Jaap Speyer']", ["Lilli's Marriage", "director", "Jaap Speyer"]),
    ("['O'Brien', 'Mc Cann']", ["O'Brien", "Mc Cann"]),  # unescaped quote inside an item
    ("[]", []),
    ("", []),
    ("  ", []),
    (None, []),
    (math.nan, []),
    ("Paris", ["Paris"]),
    (["x", 1], ["x", "1"]),
    ("[1, 2]", ["1", "2"]),
])
def test_parse_list_string(text, expected):
    assert parse_list_string(text) == expected


@pytest.mark.parametrize("bad", ["[a, b]", "['a', 'b'", "['a', b]"])
def test_parse_list_string_rejects_unreadable_text(bad):
    with pytest.raises(ValueError, match="cannot parse list string"):
        parse_list_string(bad)


def test_normalize_ignores_case_accents_and_punctuation():
    assert normalize("  São  Paulo! ") == "sao paulo"
    assert normalize("Washington, D.C.") == normalize("washington d c")
    assert normalize("Bogotá") == normalize("Bogota")


def test_unique_dedups_by_normalised_key_and_excludes():
    assert unique(["Kenya", "kenya", " Kényá ", "", "Kenyan shilling"], exclude=["KENYAN SHILLING"]) == ["Kenya"]

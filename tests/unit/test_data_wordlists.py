"""Word lists shipped in the package: the seed's lists, in the seed's order, with no folder beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

import hopscope
from hopscope.data import wordlists
from hopscope.data.loaders import _common


def test_lists_load_without_a_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(_common.SHARED_DATA_ENV, str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)  # no ../shared relative to the working directory either

    def no_shared():
        raise FileNotFoundError("shared data folder not found")

    monkeypatch.setattr(_common, "shared_data_dir", no_shared)
    wordlists._table.cache_clear()
    assert wordlists.FILE.is_file() and wordlists.FILE.is_relative_to(Path(hopscope.__file__).parent)
    assert {k: len(v) for k, v in wordlists.all_lists().items()}["nouns"] == 2635


def test_seed_order_and_counts():
    # the first rows of data/top_word_types.csv of msakarvadia/memory_injections
    assert wordlists.load("top_5000")[:8] == ["the", "be", "and", "a", "of", "to", "in", "i"]
    assert wordlists.load("nouns")[:5] == ["time", "people", "year", "way", "thing"]
    assert wordlists.load("verbs")[:5] == ["be", "have", "do", "say", "go"]
    assert wordlists.load("adjectives")[:5] == ["other", "good", "new", "great", "big"]
    assert wordlists.load("adverbs")[:5] == ["so", "just", "up", "out", "how"]
    assert wordlists.load("conjunctions")[:5] == ["and", "that", "but", "or", "as"]
    assert wordlists.load("conjunctions")[-3:] == ["provided", "considering", "given"]
    assert wordlists.load("top_5000")[-1] == "bizarre" and wordlists.load("adverbs")[-1] == "afterward"
    counts = {k: len(wordlists.load(k)) for k in wordlists.KINDS}
    assert counts == {"top_5000": 5050, "nouns": 2635, "verbs": 969, "adjectives": 824, "adverbs": 331,
                      "conjunctions": 40}
    assert len(set(wordlists.load("top_5000"))) == 4380  # the seed's list repeats a word per part of speech
    assert "TRUE" in wordlists.load("adjectives")  # kept as the seed spells it


def test_first_words_is_the_seeds_head():
    assert wordlists.first_words("nouns") == wordlists.load("nouns")[:40]
    assert len(wordlists.first_words("conjunctions")) == 40 == len(wordlists.load("conjunctions"))
    assert wordlists.first_words("top_5000", n=7) == ["the", "be", "and", "a", "of", "to", "in"]
    assert wordlists.first_words("top_5000")[5] == wordlists.first_words("top_5000")[11] == "to"  # repeats kept
    assert wordlists.first_words("adverbs", n=0) == []


def test_unknown_kind_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown word list 'pronouns'; choose one of top_5000, nouns, verbs"):
        wordlists.load("pronouns")
    with pytest.raises(ValueError, match="n must be >= 0"):
        wordlists.first_words("nouns", n=-1)


def test_source_and_licence_ship_beside_the_lists():
    folder = wordlists.FILE.parent
    licence = (folder / "LICENSE").read_text()
    assert "MIT License" in licence and "msakarvadia/memory_injections" in licence
    assert "Permission is hereby granted, free of charge" in licence
    readme = (folder / "README.md").read_text()
    assert "data/top_word_types.csv" in readme and "arXiv:2309.05605" in readme

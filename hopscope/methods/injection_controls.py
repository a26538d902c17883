"""Inputs of memory injection: explicit/obscure prompt pairs and the control memories.

A pair is a multi-hop prompt that *describes* the bridge entity (obscure), the single-hop prompt that
*names* it (explicit), the bridge itself (the gold memory) and the answer. Pairs come from the data
package's memory-injection loader (two-hop records) or from any objects with the same fields.

Control memories: random vocabulary words matched to the gold memory's token count, and the
part-of-speech word lists of the seed (``top_word_types.csv``, read from the shared data folder).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

POS_COLUMNS = {
    "top_5000": "Top 5000 Words",
    "nouns": "Nouns",
    "verbs": "Verbs",
    "adjectives": "Adjectives",
    "adverbs": "Adverbs",
    "conjunctions": "Conjunctions",
}
WORD_TYPES_FILE = "top_word_types.csv"
HANDWRITTEN_FILE = "handwritten_obscure_explicit_data.csv"


@dataclass(frozen=True)
class InjectionPair:
    """One explicit/obscure pair: prompts, the bridge entity (gold memory) and the answer."""

    qid: str
    obscure: str
    explicit: str
    bridge: str
    answer: str
    description: str = ""


def as_pairs(items: Iterable[Any]) -> list[InjectionPair]:
    """Pairs from two-hop records (``prompt``/``second_hop_prompt``/``e2``/``e3``) or pairs themselves."""
    pairs = []
    for i, it in enumerate(items):
        if isinstance(it, InjectionPair):
            pairs.append(it)
            continue
        try:
            pairs.append(InjectionPair(
                qid=str(getattr(it, "qid", i)), obscure=it.prompt, explicit=it.second_hop_prompt, bridge=it.e2,
                answer=it.e3, description=str(getattr(it, "meta", {}).get("obscure_entity", ""))))
        except AttributeError as err:
            raise TypeError(f"item {i} ({type(it).__name__}) is neither an InjectionPair nor a two-hop record: "
                            f"{err}") from None
    if not pairs:
        raise ValueError("no prompt pairs given")
    return pairs


def memory_injection_folder() -> Path:
    """The shared ``memory_injections`` data folder (``../shared/data`` relative to the repo root)."""
    from hopscope.data.loaders._common import shared_data_dir

    return shared_data_dir() / "memory_injections"


def load_pairs(path: str | Path | None = None, limit: int | None = None) -> list[InjectionPair]:
    """Pairs from a seed memory-injection CSV (default: the 106 handwritten pairs)."""
    from hopscope.data.loaders.memory_injection import load_memory_injection_csv

    path = Path(path) if path is not None else memory_injection_folder() / HANDWRITTEN_FILE
    pairs = as_pairs(load_memory_injection_csv(path))
    return pairs[:limit] if limit is not None else pairs


def pos_word_lists(path: str | Path | None = None) -> dict[str, list[str]]:
    """The seed's word lists (top 5000 words, nouns, verbs, adjectives, adverbs, conjunctions)."""
    path = Path(path) if path is not None else memory_injection_folder() / WORD_TYPES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"word-type list not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in POS_COLUMNS.values() if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)}")
    return {key: [w.strip() for w in frame[col] if w.strip()] for key, col in POS_COLUMNS.items()}


def sample_words(words: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` distinct words drawn with ``seed`` (all of them, in order, when there are ``n`` or fewer)."""
    words = list(dict.fromkeys(words))
    if len(words) <= n:
        return words
    return random.Random(seed).sample(words, n)


_WORD = re.compile(r"^ [a-z]{3,}$")


def vocabulary_words(tokenizer) -> list[int]:
    """Ids of tokens that decode to a space and a lower-case word of at least three letters."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = []
    for i in range(len(tokenizer)):
        if i not in special and _WORD.match(tokenizer.decode([i])):
            ids.append(i)
    if not ids:
        raise ValueError("the tokenizer has no plain-word tokens to draw random memories from")
    return ids


class RandomWords:
    """Random memories: strings of random vocabulary words, as many tokens as a given memory."""

    def __init__(self, tokenizer, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.pool = vocabulary_words(tokenizer)
        self.seed = seed

    def draw(self, n_tokens: int, key: str, index: int) -> str:
        """A string of ``n_tokens`` distinct random word tokens, reproducible from (seed, key, index)."""
        rng = random.Random(f"{self.seed}:{key}:{index}")
        ids = rng.sample(self.pool, max(1, n_tokens))
        return self.tokenizer.decode(ids).strip()


def load_pairs_any(path: str | Path | None = None) -> list[InjectionPair]:
    """Pairs from a seed CSV (default: the handwritten set) or a two-hop dataset file (JSONL/CSV/Parquet)."""
    if path is None:
        return load_pairs()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".csv":
        cols = set(pd.read_csv(path, nrows=0).columns)
        if {"explicit_sentence", "obscure_sentence"} <= cols:
            return load_pairs(path)
    from hopscope.data.dataset import Dataset

    return as_pairs(Dataset.load(path).two_hop())

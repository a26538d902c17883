"""The k-th smallest synthetic reasoning task (MechanisticProbe, Hou et al. 2023).

A list of ``n`` numbers is drawn with replacement from a pool of values; the prompt is the numbers joined
by spaces and the target is the k-th smallest, predicted at the last prompt position as the token
``" <value>"``. The reasoning tree has two steps: step 1 selects the k smallest numbers (the *useful*
statements; the others are *noise*), step 2 picks the k-th smallest of them (the *root*, at depth 0 of
the tree; the other useful numbers are *leaves*, at depth 1).

Ties follow the paper's code (``label_generator`` of Hou et al.'s MechanisticProbe): equal numbers share
one size rank, and only the first occurrence of a value is a statement of the tree; later copies of it
are noise. So the useful numbers are the first occurrences of the distinct values among the k smallest
(counted with repetition), and the root is the first occurrence of the k-th smallest value (a leaf too
when that value also fills a smaller rank; it is labelled root). :attr:`KthExample.ranks` keeps a
strict order (ties by first occurrence) for per-rank attention maps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test")
_SPLIT_SALT = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class KthSmallestConfig:
    """Task parameters. ``pool`` is filled in by :func:`resolve_pool` from the tokenizer when empty."""

    n: int = 16
    k: int = 2
    pool_size: int = 512
    pool: tuple[int, ...] = ()
    n_train: int = 50_000
    n_val: int = 1_000
    n_test: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be at least 2, got {self.n}")
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k must lie in 1..n={self.n}, got {self.k}")
        if self.pool and len(set(self.pool)) != len(self.pool):
            raise ValueError("pool values must be distinct")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pool"] = list(self.pool)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KthSmallestConfig":
        known = {f for f in cls.__dataclass_fields__}
        d = {key: v for key, v in d.items() if key in known}
        if "pool" in d:
            d["pool"] = tuple(int(v) for v in d["pool"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "KthSmallestConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class KthExample:
    """One list with its answer and reasoning-tree labels (per number, in list order)."""

    numbers: tuple[int, ...]
    k: int
    ranks: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(int(r) for r in size_ranks(self.numbers)))

    @property
    def prompt(self) -> str:
        return format_prompt(self.numbers)

    @property
    def answer(self) -> int:
        return int(sorted(self.numbers)[self.k - 1])

    @property
    def target(self) -> str:
        """The answer as the next token after the prompt (with its leading space)."""
        return f" {self.answer}"

    @property
    def depth(self) -> tuple[int, ...]:
        """Depth of each number in the reasoning tree: 0 for the root, 1 for a leaf, -1 for noise."""
        return tree_depths(self.numbers, self.k)

    @property
    def useful(self) -> tuple[bool, ...]:
        """True for the statements of the tree (the root and the leaves)."""
        return tuple(d >= 0 for d in self.depth)

    @property
    def char_spans(self) -> list[tuple[int, int]]:
        """Character span of each number in :attr:`prompt`."""
        spans, at = [], 0
        for v in self.numbers:
            width = len(str(v))
            spans.append((at, at + width))
            at += width + 1
        return spans

    def corrupted(self, position: int, value: int) -> "KthExample":
        """A copy with the number at ``position`` rewritten to ``value``."""
        numbers = list(self.numbers)
        numbers[position] = int(value)
        return KthExample(tuple(numbers), self.k)


def format_prompt(numbers: Sequence[int]) -> str:
    """The prompt: numbers joined by single spaces (no trailing space)."""
    return " ".join(str(int(v)) for v in numbers)


def tree_depths(numbers: Sequence[int], k: int) -> tuple[int, ...]:
    """Per number: 0 for the root (first occurrence of the k-th smallest value), 1 for a leaf (first
    occurrence of another value among the k smallest, counted with repetition), -1 for noise (every other
    number, later copies of a value included), as the paper's code labels them."""
    values = [int(v) for v in numbers]
    if not 1 <= k <= len(values):
        raise ValueError(f"k must lie in 1..{len(values)}, got {k}")
    smallest = sorted(values)[:k]
    root = smallest[-1]
    first = {v: values.index(v) for v in set(smallest)}
    depth = [-1] * len(values)
    for v, pos in first.items():
        depth[pos] = 0 if v == root else 1
    return tuple(depth)


def size_ranks(numbers: Sequence[int]) -> np.ndarray:
    """Rank of each number by size (0 = smallest); ties ranked by first occurrence."""
    order = np.argsort(np.asarray(numbers), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def _one_token(tokenizer, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def check_pool(tokenizer, pool: Sequence[int]) -> None:
    """Raise a ValueError naming the first pool value that is not one known token (alone or after a space)."""
    for v in pool:
        for text in (str(v), f" {v}"):
            if not _one_token(tokenizer, text):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                raise ValueError(f"pool value {v} is not one token for this tokenizer: {text!r} -> {ids}"
                                 f"{' (unknown token)' if ids == [tokenizer.unk_token_id] else ''}")


def single_token_values(tokenizer, size: int, *, start: int = 0, stop: int = 100_000) -> tuple[int, ...]:
    """The ``size`` smallest integers >= start that are one token both alone and after a space."""
    found: list[int] = []
    v = start
    while len(found) < size and v < stop:
        if _one_token(tokenizer, str(v)) and _one_token(tokenizer, f" {v}"):
            found.append(v)
        v += 1
    if len(found) < size:
        raise ValueError(f"only {len(found)} integers in [{start}, {stop}) are one token for this tokenizer, "
                         f"{size} requested; lower pool_size or pass a number-level tokenizer")
    return tuple(found)


def resolve_pool(config: KthSmallestConfig, tokenizer=None) -> KthSmallestConfig:
    """Fill ``config.pool`` (one-token values for ``tokenizer``, or 0..pool_size-1 without one) and check it."""
    from dataclasses import replace

    if config.pool:
        if tokenizer is not None:
            check_pool(tokenizer, config.pool)
        return replace(config, pool_size=len(config.pool))
    pool = single_token_values(tokenizer, config.pool_size) if tokenizer is not None else tuple(range(config.pool_size))
    return replace(config, pool=pool)


def sample_lists(config: KthSmallestConfig, split: str, count: int | None = None) -> np.ndarray:
    """[count, n] int array of lists for a split, drawn with replacement from the pool; seeded per split."""
    if split not in _SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not config.pool:
        raise ValueError("config.pool is empty; call resolve_pool(config, tokenizer) first")
    count = getattr(config, f"n_{split}") if count is None else count
    rng = np.random.default_rng([config.seed, _SPLIT_SALT[split]])
    pool = np.asarray(config.pool, dtype=np.int64)
    return pool[rng.integers(0, len(pool), size=(count, config.n))]


def make_split(config: KthSmallestConfig, split: str, count: int | None = None) -> list[KthExample]:
    """Examples of one split (see :func:`sample_lists`)."""
    return [KthExample(tuple(int(v) for v in row), config.k) for row in sample_lists(config, split, count)]

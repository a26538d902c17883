"""Control memories, injected at the same cell as the gold memory.

* ``random``: distinct random vocabulary tokens that decode to a space and a lower-case word of three or more
  letters, as many as the gold memory has (an extension; drawn per prompt from (seed, qid, index));
* ``other_bridge``: the bridge entity of another pair (the seed's ``--memory_dataset subject``);
* ``pos:<list>``: the first ``n`` words of each of the seed's part-of-speech lists (top 5000 words, nouns,
  verbs, adjectives, adverbs, conjunctions), every word on every prompt, as the seed's ``fake_injection.py``
  does with its lists' ``head()``; the lists ship inside the package (:mod:`hopscope.data.wordlists`).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from hopscope.data import wordlists
from hopscope.methods.injection.memories import Memory, make_memory

if TYPE_CHECKING:
    from hopscope.methods.injection.pairs import InjectionPair
    from hopscope.models.loaded import LoadedModel

_WORD = re.compile(r"^ [a-z]{3,}$")


@lru_cache(maxsize=8)
def _word_pool(tokenizer) -> tuple[int, ...]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = tuple(i for i in range(len(tokenizer)) if i not in special and _WORD.match(tokenizer.decode([i])))
    if not ids:
        raise ValueError("the tokenizer has no plain-word tokens to draw random memories from")
    return ids


def random_memories(lm: "LoadedModel", n_tokens: int, count: int, seed: int, qid: str) -> list[Memory]:
    """``count`` memories of ``n_tokens`` distinct random word tokens each, reproducible from (seed, qid, index)."""
    pool = _word_pool(lm.tokenizer)
    out = []
    for j in range(count):
        ids = tuple(random.Random(f"{seed}:{qid}:random:{j}").sample(pool, max(1, n_tokens)))
        out.append(Memory("random", j, lm.tokenizer.decode(list(ids)), ids))
    return out


def other_bridges(lm: "LoadedModel", pairs: Sequence["InjectionPair"], pair: "InjectionPair", count: int, seed: int,
                  *, space: bool = False, bos: bool = False) -> list[Memory]:
    """Bridges of ``count`` other pairs (with a different bridge), drawn from (seed, qid)."""
    others = sorted({p.bridge for p in pairs if p.bridge.strip().lower() != pair.bridge.strip().lower()})
    picked = random.Random(f"{seed}:{pair.qid}:other").sample(others, min(count, len(others)))
    return [make_memory(lm, "other_bridge", j, b, space=space, bos=bos) for j, b in enumerate(picked)]


def pos_memories(lm: "LoadedModel", n_words: int, *, space: bool = False, bos: bool = False) -> list[Memory]:
    """The first ``n_words`` words of each part-of-speech list (words that tokenize to nothing are left out)."""
    out = []
    for kind in wordlists.KINDS:
        for j, word in enumerate(wordlists.first_words(kind, n_words)):
            try:
                out.append(make_memory(lm, f"pos:{kind}", j, word, space=space, bos=bos))
            except ValueError:
                continue
    return out

"""Answer-token hygiene: is an answer's first token a fair stand-in for the answer, for one tokenizer?

First-token scoring is cheap but can mislead: " Afghani" is " Af"+"gh"+"ani", and a model that
puts mass on " K" "matches" Kwanza whatever it meant. An answer's first token is *unambiguous*
when no other answer of the same relation (nor any of their aliases) starts with the same token
and the token carries at least ``min_chars`` characters of the answer (or all of it). Methods can
restrict to such queries; they should still report the generation-based match as well.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from hopscope.data.aliases import normalize
from hopscope.data.dataset import Dataset
from hopscope.data.records import Record, TwoHopQuery


def answer_group(record: Record) -> str:
    """Which answers compete with this one: the relation that produces the answer (r2 for two-hop)."""
    if isinstance(record, TwoHopQuery):
        return record.r2
    return getattr(record, "relation", record.kind)


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of the answer as it continues a prompt (leading space, no bare-space token)."""
    from hopscope.engine.scoring import answer_token_ids

    return answer_token_ids(tokenizer, answer)


def answer_token_table(tokenizer: Any, dataset: Dataset | list[Record], *, min_chars: int = 3) -> pd.DataFrame:
    """One row per record: the answer's first token, its token count, which other answers of
    the group share that first token, and ``unambiguous``."""
    records = list(dataset)
    first: dict[str, tuple[int, str, int]] = {}  # answer text -> (first id, first token text, n tokens)

    def info(text: str) -> tuple[int, str, int] | None:
        if text not in first:
            try:
                ids = answer_ids(tokenizer, text)
            except ValueError:
                return None
            first[text] = (ids[0], tokenizer.decode([ids[0]]), len(ids))
        return first[text]

    # first-token id -> the distinct answer words (normalised answers and aliases) starting with it
    starts: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        for text in r.all_answers:
            i = info(text)
            if i is not None:
                starts[answer_group(r)][i[0]].add(normalize(text))
    rows = []
    for r in records:
        group = answer_group(r)
        i = info(r.answer)
        if i is None:
            rows.append({"qid": r.qid, "group": group, "answer": r.answer, "first_token": None,
                         "first_token_id": -1, "n_tokens": 0, "shared_with": [], "unambiguous": False,
                         "reason": "answer tokenizes to nothing"})
            continue
        tid, tok, n = i
        shared = sorted(starts[group][tid] - {normalize(a) for a in r.all_answers})
        covered = len(tok.strip())
        short = covered < min(min_chars, len(r.answer.strip()))
        reason = ("shares its first token with " + ", ".join(shared[:5])) if shared else (
            f"first token {tok!r} is shorter than {min_chars} characters" if short else "")
        rows.append({"qid": r.qid, "group": group, "answer": r.answer, "first_token": tok, "first_token_id": tid,
                     "n_tokens": n, "shared_with": shared, "unambiguous": not shared and not short,
                     "reason": reason})
    return pd.DataFrame(rows)


def unambiguous_qids(tokenizer: Any, dataset: Dataset, *, min_chars: int = 3) -> set[str]:
    table = answer_token_table(tokenizer, dataset, min_chars=min_chars)
    return set(table.loc[table["unambiguous"], "qid"])


def restrict_unambiguous(dataset: Dataset, tokenizer: Any, *, min_chars: int = 3) -> Dataset:
    """Only the records whose answer's first token is unambiguous for this tokenizer."""
    keep = unambiguous_qids(tokenizer, dataset, min_chars=min_chars)
    return dataset.filter(lambda r: r.qid in keep)


def hygiene_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per answer group: queries, unambiguous share, multi-token share."""
    return (table.assign(multi_token=table["n_tokens"] > 1)
            .groupby("group", sort=False)
            .agg(n=("qid", "size"), unambiguous=("unambiguous", "mean"), multi_token=("multi_token", "mean"))
            .reset_index())

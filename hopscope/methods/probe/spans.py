"""Map statements' character spans in a prompt to token spans, as the engine tokenizes the prompt."""

from __future__ import annotations

from typing import Sequence

Span = tuple[int, int]


def token_spans(tokenizer, prompt: str, char_spans: Sequence[Span]) -> list[Span]:
    """Token span ``(start, stop)`` (prompt coordinates, special tokens included) of each character span.

    A token belongs to a statement when its characters overlap the statement's. Uses the tokenizer's
    offset mapping, or re-tokenizes prefixes when it has none. Raises a ValueError naming a statement
    that covers no token.
    """
    try:
        enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return _spans_by_prefix(tokenizer, prompt, char_spans)
    out = []
    for a, b in char_spans:
        hits = [j for j, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        if not hits:
            raise ValueError(f"statement {prompt[a:b]!r} at characters {a}:{b} covers no token of the prompt")
        out.append((hits[0], hits[-1] + 1))
    return out


def _spans_by_prefix(tokenizer, prompt: str, char_spans: Sequence[Span]) -> list[Span]:
    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    out = []
    for a, b in char_spans:
        start, stop = n_tokens(prompt[:a].rstrip()) if a else n_tokens(""), n_tokens(prompt[:b])
        if stop <= start:
            raise ValueError(f"statement {prompt[a:b]!r} at characters {a}:{b} covers no token of the prompt")
        out.append((start, stop))
    return out

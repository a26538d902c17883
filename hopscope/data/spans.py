"""Map character spans of a prompt to token spans, for any tokenizer.

A token span ``(start, stop)`` covers every token that overlaps the characters, so it still works
when the tokenizer merges the entity with neighbouring characters (``"(Nairobi)'s"``,
``" Kenyan"`` for ``"Kenya"``): the merged token is included rather than an error raised.
Fast tokenizers give offsets directly; for others the offsets are rebuilt by decoding prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Span = tuple[int, int]


class SpanNotFound(ValueError):
    """The text to locate does not occur in the prompt."""


def char_span(prompt: str, text: str, *, occurrence: int = -1, start: int = 0) -> Span:
    """Character span of ``text`` in ``prompt`` (the last occurrence by default, since a few-shot
    prefix may mention it first); exact match, then case-insensitive."""
    if not text:
        raise SpanNotFound("cannot locate an empty string")
    for hay, needle in ((prompt, text), (prompt.lower(), text.lower())):
        hits = []
        i = hay.find(needle, start)
        while i != -1:
            hits.append(i)
            i = hay.find(needle, i + 1)
        if hits:
            try:
                a = hits[occurrence]
            except IndexError:
                raise SpanNotFound(f"{text!r} occurs {len(hits)} times in the prompt; "
                                   f"occurrence {occurrence} does not exist") from None
            return a, a + len(text)
    raise SpanNotFound(f"{text!r} does not occur in prompt {prompt[-120:]!r}")


def token_offsets(tokenizer: Any, prompt: str, *, add_special_tokens: bool = True) -> list[Span]:
    """Character ``(start, stop)`` of every token of ``prompt``; special tokens get ``(0, 0)``."""
    try:
        enc = tokenizer(prompt, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if offsets is not None and len(offsets) == len(enc["input_ids"]):
            return [(int(a), int(b)) for a, b in offsets]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        pass
    ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    return _offsets_by_decoding(tokenizer, prompt, ids)


def _offsets_by_decoding(tokenizer: Any, prompt: str, ids: Sequence[int]) -> list[Span]:
    """Offsets from the growth of decoded prefixes (tokenizers without offset mappings).

    Byte-level pieces of one character decode to U+FFFD until the character is complete; all the
    pieces then share that character's span.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[Span] = []
    pending: list[int] = []  # indices of tokens whose characters are not complete yet
    prev = 0
    for i, tid in enumerate(ids):
        if tid in special:
            out.append((prev, prev))
            continue
        text = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        out.append((prev, prev))
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pending.append(i)
            continue
        end = max(min(len(text), len(prompt)), prev)
        for j in [*pending, i]:
            out[j] = (prev, end)
        pending, prev = [], end
    return out


def token_span(tokenizer: Any, prompt: str, span: Span | str, *, add_special_tokens: bool = True,
               occurrence: int = -1) -> Span:
    """Token span ``(start, stop)`` (stop exclusive) covering character ``span`` of ``prompt``.

    ``span`` may be a string, located with :func:`char_span`. Every token that overlaps the
    characters is included, so a token merged with a neighbour never breaks the lookup.
    Raises :class:`SpanNotFound` only when the text is absent or no token overlaps it.
    """
    if isinstance(span, str):
        span = char_span(prompt, span, occurrence=occurrence)
    a, b = span
    if not 0 <= a < b <= len(prompt):
        raise SpanNotFound(f"character span {span} lies outside the prompt (length {len(prompt)})")
    offsets = token_offsets(tokenizer, prompt, add_special_tokens=add_special_tokens)
    hit = [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
    if not hit:
        # degenerate offsets (e.g. a tokenizer reporting empty spans): nearest token at/after a
        after = [i for i, (s, e) in enumerate(offsets) if e > a]
        if not after:
            raise SpanNotFound(f"no token overlaps characters {span} of the prompt")
        hit = [after[0]]
    return hit[0], hit[-1] + 1


def model_token_span(model: Any, prompt: str, span: Span | str, *, occurrence: int = -1) -> Span:
    """:func:`token_span` in the coordinates the engine uses for ``model`` (a LoadedModel).

    Whether the engine adds special tokens (a BOS) is read off ``model.to_ids``.
    """
    tok = model.tokenizer
    engine_ids = list(model.to_ids(prompt))
    with_special = list(tok(prompt, add_special_tokens=True)["input_ids"])
    add = with_special == engine_ids or len(with_special) == len(engine_ids)
    start, stop = token_span(tok, prompt, span, add_special_tokens=add, occurrence=occurrence)
    if not add:
        without = list(tok(prompt, add_special_tokens=False)["input_ids"])
        shift = len(engine_ids) - len(without)  # e.g. a BOS the engine prepends itself
        start, stop = start + shift, stop + shift
    return start, stop


def span_tokens(tokenizer: Any, prompt: str, span: Span, *, add_special_tokens: bool = True) -> list[str]:
    """The token strings inside a token span (handy for checking a located span)."""
    ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    return [tokenizer.decode([i]) for i in ids[span[0]: span[1]]]


def find_token_span(tokenizer: Any, prompt: str, span: Span | str, **kwargs: Any) -> Span | None:
    """:func:`token_span`, or ``None`` when the text is not in the prompt (for batch code that
    skips such rows instead of stopping)."""
    try:
        return token_span(tokenizer, prompt, span, **kwargs)
    except SpanNotFound:
        return None

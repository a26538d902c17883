"""Parsing and normalising answer aliases (list strings from CSV files, dedup, matching keys)."""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

def parse_list_string(value: object) -> list[str]:
    """Parse a list that a CSV stored as text, e.g. ``"['a', 'b']"`` or ``'["a", "b"]'``.

    Empty cells (``""``, ``None``, NaN, ``"[]"``) give ``[]``; a plain string without brackets is
    one alias. Raises ``ValueError`` naming the text when it cannot be read as a list of strings.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if not text or text in ("[]", "nan", "None"):
        return []
    if not text.startswith("["):
        return [text]
    for parse in (ast.literal_eval, json.loads):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError, json.JSONDecodeError):
            continue
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed]
    return _parse_loose(text)


def _parse_loose(text: str) -> list[str]:
    """Fallback for lists with unescaped quotes inside items, e.g. ``['O'Brien', 'x']``."""
    if not text.endswith("]"):
        raise ValueError(f"cannot parse list string {text!r}: missing closing ']'")
    inner = text[1:-1].strip()
    if not inner:
        return []
    items: list[str] = []
    # split on a quote-comma-space-quote boundary, which item text almost never contains
    for part in re.split(r"""(?<=['"])\s*,\s*(?=['"])""", inner):
        part = part.strip()
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "'\"":
            items.append(part[1:-1])
        else:
            raise ValueError(f"cannot parse list string {text!r}: item {part!r} is not quoted")
    return items


@lru_cache(maxsize=1 << 18)
def normalize(text: str) -> str:
    """Matching key: NFKD without accents, lower case, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


def unique(values: Iterable[str], *, exclude: Iterable[str] = ()) -> list[str]:
    """Non-empty values in first-seen order, dropping duplicates by :func:`normalize` key."""
    seen = {normalize(v) for v in exclude}
    out: list[str] = []
    for v in values:
        v = v.strip()
        key = normalize(v)
        if v and key not in seen:
            seen.add(key)
            out.append(v)
    return out

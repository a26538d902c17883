"""Attention knockout of t1 in a sliding window of layers (Geva et al. 2023; Biran et al. 2024).

The last prompt position's attention to t1 (e1's last token) is blocked in every layer of the window
``[c - k, c + k]`` (clipped to the model; the paper's k = 3) for each centre ``c``, on the prompt pass; the
model then greedy-decodes. As in the paper's code, a window has an ``effect`` when the generation changes and
the two are not both correct (for a correct query: it changed and is now wrong; for an incorrect one: it
changed). The first centre with an effect is how late the last position still reads e1 (the knockout part of
the paper's "information propagation" stage).

Rows stop decoding once their verdict is final (the alias appeared); the effect is still exact: a stopped row
is correct, so it has an effect only when the clean generation was wrong; two wrong generations both ran the
whole budget and are compared token by token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from hopscope.engine import Intervention, MatchRule, generate, knockout
from hopscope.methods.hopping import queries as Q

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

COLUMNS = ("qid", "centre", "lo", "hi", "keys", "correct", "changed", "effect", "text")


def window(centre: int, k: int, n_layers: int) -> range:
    """Layers ``centre - k .. centre + k`` clipped to ``0 .. n_layers - 1``."""
    if k < 0:
        raise ValueError(f"knockout window half-width must be >= 0, got {k}")
    return range(max(0, centre - k), min(n_layers - 1, centre + k) + 1)


def window_knockout(layers: Sequence[int], keys: Sequence[int], query: int = -1) -> list[Intervention]:
    """Block ``query``'s attention to ``keys`` in every layer of ``layers``."""
    return [knockout(l, keys=list(keys), query=query) for l in layers]


def knockout_keys(lm: "LoadedModel", q: Any, which: str = "t1") -> list[int]:
    """``t1``: e1's last token (the paper's); ``e1_span``: every e1 token (a deviation, kept as an option)."""
    if which == "t1":
        return [Q.t1(lm, q)]
    if which == "e1_span":
        a, b = Q.e1_tokens(lm, q)
        return list(range(a, b))
    raise ValueError(f"unknown knockout keys {which!r}; choose t1 or e1_span")


def knockout_rows(lm: "LoadedModel", q: Any, centres: Sequence[int], *, k: int = 3, keys: str = "t1"
                  ) -> tuple[list[dict[str, Any]], list[list[Intervention]]]:
    """One row per window centre (no clean row): ``(specs, interventions)``."""
    blocked = knockout_keys(lm, q, keys)
    specs, rows = [], []
    for c in centres:
        w = window(c, k, lm.n_layers)
        specs.append({"centre": c, "lo": w.start, "hi": w.stop - 1, "keys": ",".join(map(str, blocked))})
        rows.append(window_knockout(w, blocked))
    return specs, rows


def knockout_table(lm: "LoadedModel", q: Any, specs: Sequence[dict[str, Any]], tokens: Sequence[Sequence[int]],
                   rule: MatchRule) -> pd.DataFrame:
    """Score the decoded rows (the first is the clean row): correct, changed from clean, effect."""
    aliases = Q.answers(q)
    texts = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    correct = [rule.matches(t, aliases) for t in texts]
    clean = {"centre": -1, "lo": -1, "hi": -1, "keys": specs[0]["keys"] if specs else ""}
    out = []
    for spec, toks, text, ok in zip([clean, *specs], tokens, texts, correct):
        changed = changed_from_clean(toks, ok, tokens[0], correct[0])
        out.append({"qid": str(q.qid), **spec, "correct": ok, "changed": changed,
                    "effect": changed and not (ok and correct[0]), "text": text})
    return pd.DataFrame(out, columns=list(COLUMNS))


def knockout_query(lm: "LoadedModel", q: Any, centres: Sequence[int], rule: MatchRule, *, k: int = 3,
                   keys: str = "t1", stop_early: bool = True, batch_size: int = 256) -> pd.DataFrame:
    """One row per window centre plus the clean row (``centre = -1``): the generation and its effect."""
    specs, rows = knockout_rows(lm, q, centres, k=k, keys=keys)
    g = generate(lm, q.prompt, [[], *rows], max_new_tokens=rule.max_new_tokens, start=-1,
                 stop=rule.stopper(lm, [Q.answers(q)] * (len(rows) + 1)) if stop_early else None,
                 batch_size=batch_size)
    return knockout_table(lm, q, specs, g.tokens, rule)


def changed_from_clean(tokens: Sequence[int], correct: bool, clean_tokens: Sequence[int], clean_correct: bool) -> bool:
    """Whether a generation differs from the clean one, exact under early stopping (see the module docstring).

    When both are correct the two may have stopped at different points; the paper's criterion ignores the
    change then (both correct), so it is reported as a token comparison of what was decoded.
    """
    if correct != clean_correct:
        return True
    n = min(len(tokens), len(clean_tokens))
    return list(tokens[:n]) != list(clean_tokens[:n]) or (not correct and len(tokens) != len(clean_tokens))


def first_effect(rows: pd.DataFrame) -> pd.DataFrame:
    """Per query: the first and last window centre with an effect (NaN: none), and how many had one."""
    cols = ["qid", "clean_correct", "n_windows", "n_effects", "first_effect_layer", "last_effect_layer"]
    out = []
    for qid, g in rows.groupby("qid", sort=False):
        clean = g[g["centre"] == -1]
        w = g[g["centre"] >= 0].sort_values("centre")
        hits = w.loc[w["effect"].astype(bool), "centre"]
        out.append({"qid": qid, "clean_correct": bool(clean["correct"].iloc[0]) if len(clean) else False,
                    "n_windows": len(w), "n_effects": len(hits),
                    "first_effect_layer": float(hits.min()) if len(hits) else np.nan,
                    "last_effect_layer": float(hits.max()) if len(hits) else np.nan})
    return pd.DataFrame(out, columns=cols)

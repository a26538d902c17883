"""Attention knockout over a sliding window of layers (Geva et al. 2023; Biran et al. 2024).

The last prompt token's attention to e1's tokens is blocked in every layer of a window
``[c - k, c + k]`` (clipped to the model), for each centre ``c``; the first window whose knockout
changes the model's answer tells how late the last position still reads e1. Knockouts act on the
prompt pass (the last prompt token); decoded tokens attend to e1 as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from hopscope.engine.answers import alias_match, first_token_id
from hopscope.engine.interventions import Intervention, knockout
from hopscope.methods.backpatch import alias_stopper, patched_decode
from hopscope.methods.resolution import answer_aliases, e1_token_span, first_layer, query_id

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def window(centre: int, k: int, n_layers: int) -> range:
    """Layers ``centre - k .. centre + k`` clipped to ``0 .. n_layers - 1``."""
    if k < 0:
        raise ValueError(f"window half-width k must be >= 0, got {k}")
    return range(max(0, centre - k), min(n_layers - 1, centre + k) + 1)


def window_knockout(layers: Iterable[int], keys: tuple[int, int], query: int = -1) -> list[Intervention]:
    """Block ``query``'s attention to the ``keys`` span in every layer of ``layers`` (empty: no-op)."""
    return [knockout(l, keys=keys, query=query) for l in layers]


def knockout_query(
    lm: "LoadedModel",
    query: Any,
    *,
    k: int = 3,
    centres: Sequence[int] | None = None,
    keys: tuple[int, int] | None = None,
    max_new_tokens: int = 5,
    prune: bool = True,
    batch_size: int = 64,
) -> pd.DataFrame:
    """One row per window centre (and a ``centre = -1`` clean row): answer, first token, prob/rank of e3.

    ``keys``: the blocked token span (default: e1's tokens). ``token_changed``: the first decoded token
    differs from the clean run's; ``correct``: alias match of the continuation against e3.
    """
    keys = e1_token_span(lm, query) if keys is None else keys
    centres = list(range(lm.n_layers)) if centres is None else [c + lm.n_layers if c < 0 else c for c in centres]
    specs = [(-1, -1, -1)] + [(c, w.start, w.stop - 1) for c in centres for w in [window(c, k, lm.n_layers)]]
    rows = [[]] + [window_knockout(range(lo, hi + 1), keys) for _, lo, hi in specs[1:]]
    aliases = answer_aliases(query)
    dec = patched_decode(lm, query.prompt, rows, max_new_tokens=max_new_tokens,
                         stop=alias_stopper(lm, aliases) if prune else None,
                         target_id=first_token_id(lm.tokenizer, query.e3), batch_size=batch_size)
    clean_first = dec.tokens[0][0]
    out = []
    for (c, lo, hi), toks, p, r in zip(specs, dec.tokens, dec.prob.tolist(), dec.rank.tolist()):
        text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        out.append({"query_id": query_id(query), "centre": c, "lo": lo, "hi": hi, "k": k,
                    "keys_start": keys[0], "keys_stop": keys[1], "first_token": lm.tokenizer.decode(toks[:1]),
                    "token_changed": toks[0] != clean_first, "correct": alias_match(text, aliases),
                    "prob": p, "rank": int(r), "text": text})
    return pd.DataFrame(out)


def knockout_windows(lm: "LoadedModel", queries: Sequence[Any], *, progress: bool = True,
                     **options: Any) -> pd.DataFrame:
    """:func:`knockout_query` over ``queries``, concatenated."""
    from tqdm import tqdm

    frames = [knockout_query(lm, q, **options) for q in tqdm(queries, desc="knockout", disable=not progress)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def knockout_resolution(df: pd.DataFrame) -> pd.DataFrame:
    """Per query: centre of the first / last window whose knockout changes the first answer token."""
    out = []
    for qid, g in df.groupby("query_id", sort=False):
        clean = g[g["centre"] == -1].iloc[0]
        w = g[g["centre"] >= 0].sort_values("centre")
        flips = w["token_changed"].to_numpy()
        changed = (w["correct"] != clean["correct"]).to_numpy()
        cs = w["centre"].tolist()
        out.append({"query_id": qid, "clean_correct": bool(clean["correct"]), "n_windows": len(w),
                    "n_flips": int(flips.sum()), "first_flip_layer": first_layer(flips, cs),
                    "last_flip_layer": first_layer(flips[::-1], cs[::-1]),
                    "first_correctness_change": first_layer(changed, cs),
                    "min_prob": float(w["prob"].min()) if len(w) else float("nan"),
                    "clean_prob": float(clean["prob"])})
    return pd.DataFrame(out)

"""Patchscopes (Ghandeharioun et al. 2024) for two-hop queries: decode what a hidden state names.

The hidden state ``h_s`` (``resid_post`` of block ``s``) at a source position of the query prompt
replaces block ``t``'s output (default ``t = s``) at the placeholder ``x``, the last token of a target
prompt, and the model greedy-decodes. The first source layer whose decoding names e2 (resp. e3) is
where the bridge (resp. answer) is resolved at that position.

Targets: ``repeat`` (few-shot "name: name", scored by alias match at the start of the continuation)
and ``describe`` (few-shot "name: description", scored by an alias anywhere in the description, i.e.
the continuation up to its first comma or newline).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from hopscope.engine.answers import alias_match, normalise_text
from hopscope.engine.interventions import replace
from hopscope.engine.runner import run_with_cache
from hopscope.engine.sites import Site
from hopscope.methods.backpatch import patched_decode
from hopscope.methods.resolution import (
    answer_aliases, bridge_aliases, e1_token_span, first_hop_position, first_layer, query_id,
)

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

TARGETS = {
    "repeat": "Syria: Syria, Leonardo DiCaprio: Leonardo DiCaprio, Samsung: Samsung, x",
    "describe": ("Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean "
                 "multinational major appliance and consumer electronics corporation, x"),
}
SOURCES = ("e1_last", "last", "first_hop")


def source_position(lm: "LoadedModel", query: Any, source: str) -> int:
    """Prompt position of a named source: ``e1_last`` (e1's last token), ``last``, ``first_hop``."""
    if source == "last":
        return len(lm.to_ids(query.prompt)) - 1
    if source == "e1_last":
        return e1_token_span(lm, query)[1] - 1
    if source == "first_hop":
        return first_hop_position(lm, query)
    raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")


def _prefix_stopper(lm: "LoadedModel", aliases: Sequence[str]):
    """Stop once no alias can still be a prefix-match of the text (exact for every alias)."""
    targets = [a for a in (normalise_text(x) for x in aliases) if a]

    def stop(tokens: list[int]) -> bool:
        g = normalise_text(lm.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd"))
        return bool(g) and not any(a.startswith(g) for a in targets)
    return stop


def patchscope_query(
    lm: "LoadedModel",
    query: Any,
    *,
    layers: Sequence[int] | None = None,
    sources: Sequence[str] = ("e1_last", "last"),
    targets: Sequence[str] = ("repeat",),
    target_layer: int | None = None,
    max_new_tokens: int = 5,
    prune: bool = True,
    batch_size: int = 128,
) -> pd.DataFrame:
    """One row per (source, target, s): the decoded text and whether it names e2 / e3.

    ``target_layer``: patch every source layer into this layer (default: ``t = s``). ``prune`` stops
    ``repeat`` rows once neither e2 nor e3 can still start the text (their hits are unchanged).
    """
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}; choose from {tuple(TARGETS)}")
    layers = sorted({l + lm.n_layers if l < 0 else l for l in (range(lm.n_layers) if layers is None else layers)})
    e2, e3 = bridge_aliases(query), answer_aliases(query)
    positions = {s: source_position(lm, query, s) for s in sources}
    _, acts = run_with_cache(lm, query.prompt, components=("resid_post",), layers=layers)
    specs, rows = [], []
    for source, pos in positions.items():
        for s in layers:
            t = s if target_layer is None else target_layer
            specs.append((source, pos, s, t))
            rows.append([replace(Site(t, "resid_post", -1), acts["resid_post", s][0, pos])])
    out = []
    for target in targets:
        stop = _prefix_stopper(lm, e2 + e3) if (prune and target == "repeat") else None
        dec = patched_decode(lm, TARGETS[target], rows, max_new_tokens=max_new_tokens, stop=stop,
                             batch_size=batch_size)
        for (source, pos, s, t), toks in zip(specs, dec.tokens):
            text = lm.tokenizer.decode(toks, skip_special_tokens=True)
            if target == "repeat":
                hit2, hit3 = alias_match(text, e2), alias_match(text, e3)
            else:
                item = re.split(r"[,\n]", text.strip().lstrip(":").strip())[0]  # this item's description only
                hit2, hit3 = alias_match(item, e2, anywhere=True), alias_match(item, e3, anywhere=True)
            out.append({"query_id": query_id(query), "source": source, "position": pos, "target": target,
                        "s": s, "t": t, "text": text, "e2_hit": hit2, "e3_hit": hit3})
    return pd.DataFrame(out)


def patchscope(lm: "LoadedModel", queries: Sequence[Any], *, progress: bool = True, **options: Any) -> pd.DataFrame:
    """:func:`patchscope_query` over ``queries``, concatenated."""
    from tqdm import tqdm

    frames = [patchscope_query(lm, q, **options) for q in tqdm(queries, desc="patchscope", disable=not progress)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def patchscope_resolution(df: pd.DataFrame) -> pd.DataFrame:
    """First source layer that decodes e2 / e3, per (query, source, target); NaN when none does."""
    out = []
    for (qid, source, target), g in df.groupby(["query_id", "source", "target"], sort=False):
        g = g.sort_values("s")
        layers = g["s"].tolist()
        out.append({"query_id": qid, "source": source, "target": target,
                    "first_e2_layer": first_layer(g["e2_hit"].to_numpy(), layers),
                    "first_e3_layer": first_layer(g["e3_hit"].to_numpy(), layers)})
    return pd.DataFrame(out)

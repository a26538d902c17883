"""Head-level memory injection and head ablation, to find the few heads of a layer that matter.

Adding a residual-space vector to one head's output is the same as adding it to the layer's attention
output (the heads' outputs are summed), so a plain head injection cannot tell heads apart. ``mode="project"``
injects only what the head can write: the memory projected onto the column space of the head's slice of
the output projection (``W_O^h pinv(W_O^h) m``), i.e. the memory expressed in the head's own value space.
``mode="full"`` injects the whole vector (identical for every head; a sanity check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch

from hopscope.engine import Site, add, run, score_tokens, zero_ablate
from hopscope.methods.injection import MemoryBank, answer_id

if TYPE_CHECKING:
    from hopscope.methods.injection_controls import InjectionPair
    from hopscope.models.loaded import LoadedModel

HEAD_MODES = ("project", "full")


def head_write_matrix(lm: "LoadedModel", layer: int, head: int) -> torch.Tensor:
    """The head's slice of the output projection, ``[d_model, d_head]``."""
    if not 0 <= head < lm.n_heads:
        raise ValueError(f"head {head} out of range: {lm.name} has {lm.n_heads} heads")
    w = lm.adapter.out_proj_weight(layer).detach()
    return w[:, head * lm.d_head:(head + 1) * lm.d_head]


def head_memory(lm: "LoadedModel", layer: int, head: int, vec: torch.Tensor, mode: str = "project") -> torch.Tensor:
    """What of ``vec`` head ``head`` can write: its projection on the head's output space (or all of it)."""
    if mode not in HEAD_MODES:
        raise ValueError(f"mode must be one of {HEAD_MODES}, got {mode!r}")
    if mode == "full":
        return vec
    w = head_write_matrix(lm, layer, head).double()
    return (w @ (torch.linalg.pinv(w) @ vec.double())).to(vec.dtype)


def _score(lm, prompts: Sequence[str], ivs, aid: int) -> dict[str, torch.Tensor]:
    logits = run(lm, list(prompts), ivs, last_only=True).logits
    return score_tokens(logits, [aid] * len(prompts))


def _rows(pair, kind, heads, s0, s1, extra) -> list[dict]:
    p0, lp0 = float(s0["prob"][0]), float(s0["logprob"][0])
    return [{"qid": pair.qid, "prompt_kind": kind, "head": h, "p0": p0, "p1": float(s1["prob"][i]),
             "logp0": lp0, "logp1": float(s1["logprob"][i]), "rank1": int(s1["rank"][i]),
             "change_pct": 100 * (float(s1["prob"][i]) - p0) / max(p0, 1e-30),
             "dlogp": float(s1["logprob"][i]) - lp0, **extra} for i, h in enumerate(heads)]


def head_injection(
    lm: "LoadedModel",
    pairs: Sequence["InjectionPair"],
    layer: int,
    heads: Sequence[int],
    bank: MemoryBank,
    tau: float,
    *,
    mode: str = "project",
    positions: str = "all",
) -> pd.DataFrame:
    """Inject ``tau`` x the gold memory into each head's output alone (``head_out`` add); one row per (pair, head)."""
    pos = None if positions == "all" else -1
    rows = []
    for pair in pairs:
        aid = answer_id(lm, pair.answer)
        vec = bank.vector(pair.bridge, layer)
        ivs = [[]] + [[add(Site(layer, "head_out", pos, head=h), tau * head_memory(lm, layer, h, vec, mode))]
                      for h in heads]
        s = _score(lm, [pair.obscure] * len(ivs), ivs, aid)
        s0 = {k: v[:1] for k, v in s.items()}
        s1 = {k: v[1:] for k, v in s.items()}
        rows += _rows(pair, "obscure", heads, s0, s1, {"layer": layer, "tau": tau, "mode": mode})
    return pd.DataFrame(rows)


def head_ablation(
    lm: "LoadedModel",
    pairs: Sequence["InjectionPair"],
    layer: int,
    heads: Sequence[int],
    prompt_kinds: Sequence[str] = ("obscure", "explicit"),
) -> pd.DataFrame:
    """Zero-ablate each head (every position) and score the answer; one row per (pair, prompt kind, head)."""
    rows = []
    for pair in pairs:
        aid = answer_id(lm, pair.answer)
        for kind in prompt_kinds:
            prompt = getattr(pair, kind)
            ivs = [[]] + [[zero_ablate(Site(layer, "head_out", None, head=h))] for h in heads]
            s = _score(lm, [prompt] * len(ivs), ivs, aid)
            rows += _rows(pair, kind, heads, {k: v[:1] for k, v in s.items()}, {k: v[1:] for k, v in s.items()},
                          {"layer": layer})
    return pd.DataFrame(rows)


def head_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (prompt kind, head): mean/median Δlog p, mean/median % change, share improved."""
    g = df.assign(improved=df.p1 > df.p0).groupby(["prompt_kind", "head"])
    return g.agg(n=("qid", "size"), mean_dlogp=("dlogp", "mean"), median_dlogp=("dlogp", "median"),
                 mean_pct=("change_pct", "mean"), median_pct=("change_pct", "median"),
                 share_improved=("improved", "mean")).reset_index()

"""Per-layer and per-head vocabulary projections of explicit (bridge named) vs obscure (bridge described) prompts.

At the last prompt position, every layer's attention output and every head's output (its slice of the
output projection, in residual space) goes through the final norm and the unembedding
(:func:`hopscope.lenses.project`). For each we keep the top-k tokens and the rank/probability of the answer's
first token and of the bridge entity's first token; per (pair, layer, head) the divergence between the
explicit and the obscure prompt's head output: Jensen-Shannon divergence of the projected distributions
and cosine distance of the vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import run_with_cache
from hopscope.engine.answers import first_token_id
from hopscope.lenses import project

if TYPE_CHECKING:
    from hopscope.methods.injection_controls import InjectionPair
    from hopscope.models.loaded import LoadedModel

PROMPT_KINDS = ("explicit", "obscure")


def join_tokens(tokens: Sequence[str]) -> str:
    """Top tokens as one readable cell: ``' the' | ' war'``."""
    return " | ".join(repr(t) for t in tokens)


def _token_stats(logits: torch.Tensor, lse: torch.Tensor, token: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = top-1) and probability of ``token[i]`` under ``logits[i, ..., :]`` (log-normaliser ``lse``)."""
    chosen = logits.gather(-1, token[..., None])
    rank = (logits > chosen).sum(-1)
    return rank.numpy(), (chosen[..., 0] - lse).exp().double().numpy()


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probs over the last dim."""
    logm = torch.logaddexp(logp, logq) - np.log(2.0)
    kl = lambda a: (a.exp() * (a - logm)).sum(-1)  # noqa: E731
    return 0.5 * (kl(logp) + kl(logq))


def layer_projection(
    lm: "LoadedModel",
    pairs: Sequence["InjectionPair"],
    *,
    k: int = 5,
    batch_size: int = 8,
    normalize: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tidy tables: per (pair, prompt kind, layer) for ``attn_out`` and per (..., head) for ``head_out``.

    Columns: ``answer_rank``/``answer_prob``, ``bridge_rank``/``bridge_prob``, ``top_tokens``; the head table
    also has ``js`` and ``cos_dist`` between the explicit and obscure prompt's head output (same on both rows).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    L, H = lm.n_layers, lm.n_heads
    layer_rows, head_rows = [], []
    dec = lm.tokenizer.decode
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start:start + batch_size])
        b = len(chunk)
        prompts = [p.explicit for p in chunk] + [p.obscure for p in chunk]
        _, acts = run_with_cache(lm, prompts, components=("attn_out", "head_out"))
        ans = torch.tensor([first_token_id(lm.tokenizer, p.answer) for p in chunk] * 2)
        bridge = torch.tensor([first_token_id(lm.tokenizer, p.bridge) for p in chunk] * 2)
        for layer in range(L):
            attn = acts["attn_out", layer][:, -1]  # [2b, d]
            heads = acts["head_out", layer][:, -1]  # [2b, H, d]
            vecs = torch.cat([attn[:, None], heads], dim=1)  # [2b, 1+H, d]
            logits = project(lm, vecs, normalize=normalize)  # [2b, 1+H, V]
            lse = logits.logsumexp(-1)
            a_rank, a_prob = _token_stats(logits, lse, ans[:, None].expand(-1, H + 1))
            b_rank, b_prob = _token_stats(logits, lse, bridge[:, None].expand(-1, H + 1))
            tops = logits.topk(k, dim=-1).indices.tolist()
            logp = logits[:, 1:] - lse[:, 1:, None]
            js = js_divergence(logp[:b], logp[b:]).double().numpy()  # [b, H]
            cos = 1 - torch.nn.functional.cosine_similarity(heads[:b], heads[b:], dim=-1).double().numpy()
            del logits, logp
            for i in range(2 * b):
                pair, kind, j = chunk[i % b], PROMPT_KINDS[i // b], i % b
                base = {"qid": pair.qid, "prompt_kind": kind, "layer": layer}
                for h in range(H + 1):
                    row = {**base, "answer_rank": int(a_rank[i, h]), "answer_prob": float(a_prob[i, h]),
                           "bridge_rank": int(b_rank[i, h]), "bridge_prob": float(b_prob[i, h]),
                           "top_tokens": join_tokens([dec([t]) for t in tops[i][h]])}
                    if h == 0:
                        layer_rows.append(row)
                    else:
                        head_rows.append({**row, "head": h - 1, "js": float(js[j, h - 1]),
                                          "cos_dist": float(cos[j, h - 1])})
        del acts
    heads_df = pd.DataFrame(head_rows)
    cols = ["qid", "prompt_kind", "layer", "head"] + [c for c in heads_df.columns
                                                     if c not in ("qid", "prompt_kind", "layer", "head")]
    return pd.DataFrame(layer_rows), heads_df[cols]


def head_matrix(heads: pd.DataFrame, value: str, prompt_kind: str | None = None, agg: str = "mean") -> pd.DataFrame:
    """A [layer x head] matrix of ``value`` aggregated over pairs (one prompt kind, or all rows)."""
    sub = heads if prompt_kind is None else heads[heads.prompt_kind == prompt_kind]
    if sub.empty:
        raise ValueError(f"no head rows for prompt kind {prompt_kind!r}")
    m = sub.groupby(["layer", "head"])[value].agg(agg).unstack("head")
    m.index.name, m.columns.name = "layer", "head"
    return m


def layer_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (prompt kind, layer): mean answer/bridge probability, median ranks and top-1 shares of attn_out."""
    g = layers.assign(answer_top1=layers.answer_rank == 0, bridge_top1=layers.bridge_rank == 0)
    out = g.groupby(["prompt_kind", "layer"]).agg(
        n=("qid", "size"), answer_prob=("answer_prob", "mean"), answer_rank=("answer_rank", "median"),
        answer_top1=("answer_top1", "mean"), bridge_prob=("bridge_prob", "mean"),
        bridge_rank=("bridge_rank", "median"), bridge_top1=("bridge_top1", "mean"))
    return out.reset_index()

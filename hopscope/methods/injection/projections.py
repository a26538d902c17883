"""Per-layer and per-head vocabulary projections of explicit (bridge named) vs obscure (bridge described) prompts.

At the last prompt position every layer's attention output and every head's raw output (its slice of the
output projection, in residual space, no per-head norm) go through the linear projection of
:func:`hopscope.lenses.projection.linear_logits`: the seed's ``model.unembed(...)`` on TransformerLens's
processed weights (``head_latent_space_projector``, ``interpret_attn.py``), less the constant bias. We keep
the top-k tokens and the rank and probability of the answer's and the bridge's first tokens, and per (pair,
layer, head) the Jensen-Shannon divergence between the explicit and the obscure prompt's head projections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Site, cache, first_token_id, run
from hopscope.lenses.projection import linear_logits, processed_unembedding

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

PROMPT_KINDS = ("explicit", "obscure")


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probs over the last dim."""
    logm = torch.logaddexp(logp, logq) - np.log(2.0)
    return 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1))


def _stats(logits: torch.Tensor, token: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = top-1) and probability of ``token[i]`` under ``logits[i, ..., :]``."""
    chosen = logits.gather(-1, token[..., None])
    rank = (logits > chosen).sum(-1)
    prob = (chosen[..., 0] - logits.logsumexp(-1)).exp()
    return rank.numpy(), prob.double().numpy()


def projections(lm: "LoadedModel", qids: Sequence[str], explicit: Sequence[str], obscure: Sequence[str],
                answers: Sequence[str], bridges: Sequence[str], *, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tidy tables: per (qid, prompt kind, layer) for ``attn_out`` and per (qid, prompt kind, layer, head).

    Columns: ``answer_rank`` / ``answer_prob``, ``bridge_rank`` / ``bridge_prob``, ``top_tokens``; the head table
    also has ``js`` between the explicit and the obscure prompt's head projection (the same on both rows).
    """
    L, H, b = lm.n_layers, lm.n_heads, len(qids)
    w = processed_unembedding(lm)
    sites = [Site(l, c, -1) for l in range(L) for c in ("attn_out", "head_out")]
    prompts = list(explicit) + list(obscure)
    res = run(lm, prompts, [[cache(x) for x in sites] for _ in prompts], last_only=True)
    ans = torch.tensor([first_token_id(lm.tokenizer, a) for a in answers] * 2)
    bridge = torch.tensor([first_token_id(lm.tokenizer, x) for x in bridges] * 2)
    dec = lm.tokenizer.decode
    layer_rows, head_rows = [], []
    for layer in range(L):
        attn = res.cached(Site(layer, "attn_out", -1))  # [2b, 1, d]
        vecs = torch.cat([attn, res.cached(Site(layer, "head_out", -1))[:, 0]], dim=1).float().cpu()  # [2b, 1+H, d]
        logits = linear_logits(lm, vecs, w)
        a_rank, a_prob = _stats(logits, ans[:, None].expand(-1, H + 1))
        b_rank, b_prob = _stats(logits, bridge[:, None].expand(-1, H + 1))
        tops = logits.topk(k, dim=-1).indices.tolist()
        logp = torch.log_softmax(logits[:, 1:], -1)
        js = js_divergence(logp[:b], logp[b:]).double().numpy()  # [b, H]
        for i in range(2 * b):
            j = i % b
            base = {"qid": qids[j], "prompt_kind": PROMPT_KINDS[i // b], "layer": layer}
            for h in range(H + 1):
                row = {**base, "answer_rank": int(a_rank[i, h]), "answer_prob": float(a_prob[i, h]),
                       "bridge_rank": int(b_rank[i, h]), "bridge_prob": float(b_prob[i, h]),
                       "top_tokens": " | ".join(repr(dec([t])) for t in tops[i][h])}
                if h == 0:
                    layer_rows.append(row)
                else:
                    head_rows.append({**base, "head": h - 1, **{k_: v for k_, v in row.items() if k_ not in base},
                                      "js": float(js[j, h - 1])})
    return pd.DataFrame(layer_rows), pd.DataFrame(head_rows)


def head_matrix(heads: pd.DataFrame, value: str, prompt_kind: str | None = None, agg: str = "mean") -> pd.DataFrame:
    """A [layer x head] matrix of ``value`` aggregated over pairs (one prompt kind, or all rows)."""
    sub = heads if prompt_kind is None else heads[heads["prompt_kind"] == prompt_kind]
    if sub.empty:
        raise ValueError(f"no head rows for prompt kind {prompt_kind!r}")
    m = sub.groupby(["layer", "head"])[value].agg(agg).unstack("head")
    m.index.name, m.columns.name = "layer", "head"
    return m


def layer_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (prompt kind, layer): mean answer / bridge probability, median ranks and top-1 shares of ``attn_out``."""
    g = layers.assign(answer_top1=layers["answer_rank"] == 0, bridge_top1=layers["bridge_rank"] == 0)
    out = g.groupby(["prompt_kind", "layer"]).agg(
        n=("qid", "size"), answer_prob=("answer_prob", "mean"), answer_rank=("answer_rank", "median"),
        answer_top1=("answer_top1", "mean"), bridge_prob=("bridge_prob", "mean"),
        bridge_rank=("bridge_rank", "median"), bridge_top1=("bridge_top1", "mean"))
    return out.reset_index()

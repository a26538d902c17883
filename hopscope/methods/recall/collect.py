"""One cached pass over the prompts, kept at the last position: every residual component (embedding,
each head, each attention bias, each MLP), the MLP inputs, attention to the subject, final logits, and
the direction whose dot product with a component is its direct logit attribution (DLA).

The metric of every recall analysis is the paper's: ``logit(answer) - mean(logits)`` at the last position
(:func:`answer_logit_diff`; the ``"ic"`` metric of the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import run_with_cache
from hopscope.methods.recall.linearize import logit_diff_directions, mlp_input_component
from hopscope.methods.recall.queries import RecallItem

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def answer_logit_diff(logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``logit(token) - mean(logits)`` per row of ``logits`` ``[n, V]``."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    logits = logits.float()
    return logits.gather(-1, ids[:, None])[:, 0] - logits.mean(-1)


@dataclass
class LastPosition:
    """Everything the recall analyses read at the last prompt position, stacked over ``n`` prompts."""

    items: list[RecallItem]
    embed: torch.Tensor  # [n, d]
    heads: torch.Tensor  # [n, L, H, d] each head's residual-space output (no bias)
    attn_bias: torch.Tensor  # [L, d] attention output-projection bias (zeros if none)
    attn: torch.Tensor  # [n, L, d] attention output as the block adds it
    mlp: torch.Tensor  # [n, L, d]
    mlp_in: torch.Tensor  # [n, L, d] the residual each MLP reads (resid_mid, or resid_pre if parallel)
    resid_final: torch.Tensor  # [n, d] residual after the last block (input of the final norm)
    attn_to_subject: torch.Tensor | None  # [n, L, H] attention mass from the last token onto the subject span
    logits: torch.Tensor  # [n, V]
    u: torch.Tensor  # [n, d] DLA direction for the answer (final norm frozen per prompt)
    const: torch.Tensor  # [n] logit-difference constant (final-norm and unembedding biases)
    w_u: torch.Tensor  # [V, d] unembedding

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def answer_ids(self) -> torch.Tensor:
        return torch.tensor([it.answer_id for it in self.items])

    @property
    def subject_ids(self) -> torch.Tensor:
        return torch.tensor([it.subject_id for it in self.items])

    @property
    def logit_diff(self) -> torch.Tensor:
        """Observed ``logit(answer) - mean(logits)`` ``[n]``."""
        return answer_logit_diff(self.logits, self.answer_ids)

    def head_dla(self) -> torch.Tensor:
        """``[n, L, H]`` direct logit attribution of each head to the answer's logit difference."""
        return torch.einsum("nlhd,nd->nlh", self.heads, self.u)

    def rest_dla(self) -> dict[str, torch.Tensor]:
        """DLA of everything that is not a head: ``embed [n]``, ``attn_bias [n, L]``, ``mlp [n, L]``,
        ``constant [n]``."""
        return {
            "embed": (self.embed * self.u).sum(-1),
            "attn_bias": self.u @ self.attn_bias.T,
            "mlp": torch.einsum("nld,nd->nl", self.mlp, self.u),
            "constant": self.const,
        }

    def subject_dot(self) -> torch.Tensor:
        """``[n, L, H]`` dot product of each head's output with the subject token's unembedding row."""
        w_u = self.w_u[self.subject_ids]
        return torch.einsum("nlhd,nd->nlh", self.heads, w_u)


def _attn_bias(lm: "LoadedModel") -> torch.Tensor:
    rows = []
    for layer in range(lm.n_layers):
        b = lm.adapter.out_proj_bias(layer)
        rows.append(b.detach().float().cpu() if b is not None else torch.zeros(lm.d_model))
    return torch.stack(rows)


def check_family(lm: "LoadedModel") -> None:
    """The decompositions need head outputs that add up in the residual stream (no sandwich norms)."""
    if hasattr(lm.adapter.blocks[0], "post_feedforward_layernorm"):
        raise NotImplementedError(f"{lm.family}: sandwich norms make head outputs non-additive in the residual, "
                                  "so the recall decompositions do not apply")


def collect(lm: "LoadedModel", items: Sequence[RecallItem], *, batch_size: int = 8,
            patterns: bool = True) -> LastPosition:
    """Run ``items`` (batched, left-padded) and keep the last position of every component (``patterns``:
    also the attention from the last token onto the subject)."""
    check_family(lm)
    mid = mlp_input_component(lm)
    comps = ("embed", "head_out", "attn_out", "mlp_out", mid) + (("attn_pattern",) if patterns else ())
    keys = ("embed", "heads", "attn", "mlp", "mlp_in", "final", "subj", "logits")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    L = lm.n_layers
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        logits, acts = run_with_cache(lm, [it.prompt for it in chunk], components=comps)
        width = logits.shape[1]
        stack = lambda comp: torch.stack([acts[comp, l][:, -1] for l in range(L)], 1).float().cpu()  # noqa: E731
        parts["logits"].append(logits[:, -1].float().cpu())
        parts["embed"].append(acts["embed", 0][:, -1].float().cpu())
        parts["heads"].append(stack("head_out"))
        parts["attn"].append(stack("attn_out"))
        parts["mlp"].append(stack("mlp_out"))
        parts["mlp_in"].append(stack(mid))
        if patterns:
            pattern = torch.stack([acts["attn_pattern", l][:, :, -1] for l in range(L)], 1)  # [b, L, H, k]
            subj = []
            for r, it in enumerate(chunk):
                off = width - it.n_tokens
                a, b = it.subject_tokens
                subj.append(pattern[r, :, :, off + a: off + b].sum(-1))
            parts["subj"].append(torch.stack(subj).float().cpu())
        final = parts["mlp_in"][-1][:, L - 1] + parts["mlp"][-1][:, L - 1]
        if mid == "resid_pre":  # parallel blocks: attention and MLP both read resid_pre
            final = final + parts["attn"][-1][:, L - 1]
        parts["final"].append(final)
    cat = {k: torch.cat(v) for k, v in parts.items() if v}
    u, const = logit_diff_directions(lm, cat["final"], [it.answer_id for it in items])
    return LastPosition(
        items=list(items), embed=cat["embed"], heads=cat["heads"], attn_bias=_attn_bias(lm), attn=cat["attn"],
        mlp=cat["mlp"], mlp_in=cat["mlp_in"], resid_final=cat["final"], attn_to_subject=cat.get("subj"),
        logits=cat["logits"], u=u, const=const, w_u=lm.adapter.unembed_weight().detach().float().cpu(),
    )


def dla_components(lp: LastPosition) -> pd.DataFrame:
    """Per prompt: DLA of the embedding, each layer's attention (heads + bias) and MLP, the constant, the
    observed logit difference and ``sum_error``, the DLA terms' sum minus it (zero up to float error)."""
    rest = lp.rest_dla()
    attn = lp.head_dla().sum(-1) + rest["attn_bias"]
    L = attn.shape[1]
    frames = []
    for i, it in enumerate(lp.items):
        comp = ["embed"] + ["attn"] * L + ["mlp"] * L + ["constant"]
        layer = [-1] + list(range(L)) * 2 + [-1]
        dla = np.concatenate([[float(rest["embed"][i])], attn[i].numpy(), rest["mlp"][i].numpy(),
                              [float(rest["constant"][i])]])
        frames.append(pd.DataFrame({"qid": it.qid, "component": comp, "layer": layer, "dla": dla,
                                    "logit_diff": float(lp.logit_diff[i]),
                                    "sum_error": float(dla.sum() - float(lp.logit_diff[i]))}))
    return pd.concat(frames, ignore_index=True)

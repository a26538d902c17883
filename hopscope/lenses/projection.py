"""Vocabulary projections of residual-space vectors.

Two maps from a vector ``x`` ``[..., d_model]`` to logits ``[..., vocab]``:

* :func:`project` — the logit lens proper: the model's final norm (``normalize=True``), then its
  unembedding (bias and final-logit softcap included). With ``normalize=False`` the vector goes straight
  through the unembedding.
* :func:`linear_logits` — the *linear part* of that map, as TransformerLens's processed weights give it
  (the projection of Sakarvadia et al.'s seed code, ``model.unembed(head_out)``): the final norm's
  centring (LayerNorm families only) and its gain ``gamma`` folded into the unembedding, the unembedding
  centred over the vocabulary (:func:`processed_unembedding`). Left out: the norm's division by the
  vector's scale (its one nonlinearity) and every bias. Being linear, it is additive: the heads' outputs
  of a layer project to logits that sum to the projection of ``attn_out`` minus the output bias's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def project(lm: "LoadedModel", vectors: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Logits ``[..., vocab]`` of residual-space ``vectors`` ``[..., d_model]``.

    ``normalize`` applies the model's final norm first (the logit lens); without it the vectors go
    straight through the unembedding (direct logit contribution, useful for sublayer outputs).
    """
    ad = lm.adapter
    with torch.no_grad():
        x = vectors.to(device=lm.device, dtype=lm.dtype)
        if normalize:
            x = ad.final_norm(x)
        logits = ad.unembed(x)
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def top_tokens(lm: "LoadedModel", logits: torch.Tensor, k: int = 5) -> list[list[str]]:
    """Decoded top-``k`` tokens for each row of ``logits`` ``[n, vocab]``."""
    idx = logits.topk(k, dim=-1).indices.tolist()
    return [[lm.tokenizer.decode([i]) for i in row] for row in idx]


@dataclass(frozen=True)
class NormLinear:
    """The linear part of the final norm: ``gamma * (x - mean(x))`` (LayerNorm) or ``gamma * x`` (RMSNorm)."""

    gamma: torch.Tensor  # [d_model], float32
    centres: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.centres:
            x = x - x.mean(-1, keepdim=True)
        return x * self.gamma.to(x.device)


def final_norm_linear(lm: "LoadedModel") -> NormLinear:
    """The final norm's gain and whether it centres, read off the module itself (any family).

    A centring norm maps ``s`` and ``-s`` to the same output when ``s`` is constant; its gain is half the
    difference of the outputs of ``+s`` and ``-s`` for a zero-mean, unit-variance ``s``. An RMS norm's gain is
    its output for the all-ones vector (Gemma's ``1 + weight`` included).
    """
    norm = lm.adapter.final_norm
    d = lm.d_model
    dev, dt = lm.device, lm.dtype
    with torch.no_grad():
        ones = torch.ones(d, device=dev, dtype=dt)
        centres = bool(torch.allclose(norm(ones).float(), norm(-ones).float(), atol=1e-4, rtol=1e-3))
        if centres:
            s = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(d)], dtype=torch.float64)
            s = (s - s.mean()) / s.std(unbiased=False)
            plus, minus = norm(s.to(dev, dt)).double(), norm((-s).to(dev, dt)).double()
            gamma = ((plus - minus) / (2 * s.to(dev))).float()
        else:
            gamma = norm(ones).float()
    return NormLinear(gamma.cpu(), centres)


def processed_unembedding(lm: "LoadedModel") -> torch.Tensor:
    """``[vocab, d_model]``: the unembedding with the final norm's gain folded in, centred over the vocabulary.

    Row ``t`` is ``gamma * W_U[t] - mean_t'(gamma * W_U[t'])``: TransformerLens's ``W_U.T`` after
    ``fold_ln`` and ``center_unembed``. Memory injection's default memories are sums of its rows.
    """
    w = lm.adapter.unembed_weight().detach().float().cpu()
    w = w * final_norm_linear(lm).gamma[None, :]
    return w - w.mean(0, keepdim=True)


def linear_logits(lm: "LoadedModel", vectors: torch.Tensor, unembedding: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[..., vocab]`` of ``vectors`` through the final norm's linear part and the processed unembedding.

    ``unembedding``: :func:`processed_unembedding` of ``lm`` (computed when not given). Linear in ``vectors``.
    """
    w = processed_unembedding(lm) if unembedding is None else unembedding
    norm = final_norm_linear(lm)
    x = vectors.detach().float().cpu()
    if norm.centres:
        x = x - x.mean(-1, keepdim=True)
    return x @ w.T

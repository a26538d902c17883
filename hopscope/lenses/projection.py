"""Vocabulary projections: any residual-space vector through the final norm and the unembedding."""

from __future__ import annotations

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
        logits = lm.model.lm_head(x) if hasattr(lm.model, "lm_head") else ad.unembed(x)
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def top_tokens(lm: "LoadedModel", logits: torch.Tensor, k: int = 5) -> list[list[str]]:
    """Decoded top-``k`` tokens for each row of ``logits`` ``[n, vocab]``."""
    idx = logits.topk(k, dim=-1).indices.tolist()
    return [[lm.tokenizer.decode([i]) for i in row] for row in idx]

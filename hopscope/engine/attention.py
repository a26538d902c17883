"""A pass-through attention function that can also record patterns and apply knockout masks.

hopscope registers it as the attention implementation ``"hopscope"`` of every model it loads. With no
request for a layer it calls transformers' own SDPA function, so outputs equal the stock model's; for a
layer whose pattern is read or whose edges are knocked out it computes attention explicitly (GQA aware).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "hopscope"


@dataclass
class AttentionRequests:
    """What the running forward wants from attention: layers to record, additive masks per layer."""

    record: set[int] = field(default_factory=set)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> bool [b, H, q, k], True = blocked
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)


ACTIVE: ContextVar[AttentionRequests | None] = ContextVar("hopscope_attention", default=None)


def explicit_attention(module, query, key, value, attention_mask, scaling, softcap=None, blocked=None):
    """Softmax attention written out; returns ([b, q, H, d] output, [b, H, q, k] pattern)."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        if q_len > 1 and getattr(module, "is_causal", True):
            allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :kv_len], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :kv_len]
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    pattern = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def hopscope_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Attention interface entry: SDPA unless the active requests touch this layer."""
    req = ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    if req is None or (layer not in req.record and layer not in req.masks):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out, pattern = explicit_attention(module, query, key, value, attention_mask, scaling,
                                      softcap=kwargs.get("softcap"), blocked=req.masks.get(layer))
    if layer in req.record:
        req.patterns[layer] = pattern.detach()
    return out, None


def _register() -> None:
    AttentionInterface.register(IMPLEMENTATION, hopscope_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


_register()


def install_attention(model: torch.nn.Module) -> None:
    """Point every (sub-)config of ``model`` at the hopscope attention implementation."""
    configs = [model.config] + [getattr(model.config, n) for n in ("text_config",) if hasattr(model.config, n)]
    for cfg in configs:
        cfg._attn_implementation = IMPLEMENTATION
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = IMPLEMENTATION

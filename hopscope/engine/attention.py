"""A pass-through attention function that can also record patterns and apply knockout masks.

hopscope registers it as the attention implementation ``"hopscope"`` and installs it on a model at the engine's
first call to that model (:func:`ensure_installed`, from ``compat.call_model``, so every pass takes one route
whatever ran before it). With no
request for a layer it calls the implementation the model had before (transformers' SDPA function, or the
family's own eager function where that is HF's default, e.g. Gemma 2, whose logit softcap SDPA cannot
apply), so outputs equal the stock model's. One difference of route, not of result: on CPU, a masked pass
of several query columns under grouped-query attention runs SDPA's own grouping (``enable_gqa``) instead of
transformers' ``repeat_kv`` copy of every key and value per head group (:func:`grouped_sdpa`); the output
is bitwise the same (a test holds it), the copy is saved. For a layer whose pattern is read or whose edges are knocked
out it computes attention explicitly, as HF's eager attention does: the scaling the module passes
(``query_pre_attn_scalar`` in Gemma), the logit softcap, the causal / sliding-window / padding mask that
transformers built for that layer, GQA. QK-norms and clipping run in the module before this function.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "hopscope"
PASS_THROUGH = ("sdpa", "eager")  # implementations the pass-through reproduces exactly


@dataclass
class AttentionRequests:
    """What the running forward wants from attention: layers to record, knockout masks per layer.

    ``masks[layer]``: bool ``[b, H, q, k]``, True = blocked, over the key columns of the whole sequence
    (``k = kv_length``). ``kv_length``: that full key length, when known; a sliding-window layer whose KV
    cache keeps only the last keys sees fewer, and its pattern is left-padded with zeros back to it.
    """

    record: set[int] = field(default_factory=set)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    kv_length: int | None = None


ACTIVE: ContextVar[AttentionRequests | None] = ContextVar("hopscope_attention", default=None)


def _allowed(module, attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) broadcastable to ``[b, H, q, k]``, or None for float masks/no mask."""
    if attention_mask is None:
        if q_len > 1 and getattr(module, "is_causal", True):
            # transformers skips building a plain causal mask for SDPA (is_causal); keys are right-aligned
            return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
        return None
    if attention_mask.dtype == torch.bool:
        return attention_mask[..., :kv_len]
    return None


def explicit_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float, softcap: float | None = None,
                       blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out as HF's eager attention; returns ([b, q, H, d] output, [b, H, q, k] pattern).

    ``blocked`` (bool, True = knocked out) is applied after the model's own mask; a query whose every
    visible key is blocked attends to nothing (zero pattern row and output), where softmax would
    otherwise spread it over the keys the mask hides.
    """
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = scores / softcap
        scores = torch.tanh(scores)
        scores = scores * softcap
    q_len, kv_len = query.shape[2], key.shape[2]
    allowed = _allowed(module, attention_mask, q_len, kv_len, query.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask[..., :kv_len]
        allowed = attention_mask[..., :kv_len] > torch.finfo(attention_mask.dtype).min / 2
    dead = None
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
        visible = ~blocked if allowed is None else (allowed & ~blocked)
        dead = ~visible.any(-1, keepdim=True)
        if allowed is not None:  # queries that see nothing anyway (padding) keep HF's uniform garbage
            dead = dead & allowed.any(-1, keepdim=True)
    pattern = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if dead is not None:
        pattern = pattern.masked_fill(dead, 0.0)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _eager_function(module) -> Callable:
    """The eager attention function of ``module``'s own modeling file (HF's default for that family)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        def fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
            scale = query.shape[-1] ** -0.5 if scaling is None else scaling
            return explicit_attention(module, query, key, value, attention_mask, scale, softcap=softcap)
    return fn


def _additive(mask: torch.Tensor | None, module, query: torch.Tensor, kv_len: int) -> torch.Tensor | None:
    """The float mask transformers' ``eager_mask`` would have built from hopscope's (SDPA-style) mask."""
    allowed = _allowed(module, mask, query.shape[2], kv_len, query.device)
    if allowed is None:
        return mask
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(allowed, zero, torch.finfo(query.dtype).min)


def pass_through(module, softcap: float | None = None) -> str:
    """The implementation the pass-through runs for ``module``: what the model had before hopscope
    (``"sdpa"`` or ``"eager"``), and ``"eager"`` wherever a logit softcap is set (SDPA cannot apply it)."""
    base = getattr(module, "_hopscope_pass_through", None)
    if base is None:  # not installed yet: what it will record
        cfg = getattr(module, "config", None)
        before = getattr(cfg, "_attn_implementation", None)
        base = before if before in PASS_THROUGH else "sdpa"
    if softcap is not None or base == "eager":
        return "eager"
    return "sdpa"


def hopscope_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       **kwargs):
    """Attention interface entry: the model's own implementation unless the active requests touch this layer."""
    req = ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    softcap = kwargs.get("softcap")
    if req is None or (layer not in req.record and layer not in req.masks):
        if pass_through(module, softcap) == "eager":
            mask = _additive(attention_mask, module, query, key.shape[2])
            return _eager_function(module)(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                           **kwargs)
        grouped = grouped_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if grouped is not None:
            return grouped
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    blocked = req.masks.get(layer)
    full = req.kv_length
    if blocked is not None:
        blocked = blocked[: query.shape[0]]  # rows that join mid-network are not in the batch yet
        full = blocked.shape[-1]
        if blocked.shape[-1] > key.shape[2]:  # a sliding-window cache kept only the last keys
            blocked = blocked[..., -key.shape[2]:]
    out, pattern = explicit_attention(module, query, key, value, attention_mask, scaling, softcap=softcap,
                                      blocked=blocked)
    if layer in req.record:
        if full is not None and full > pattern.shape[-1]:  # keys the sliding-window cache dropped: weight 0
            pattern = torch.nn.functional.pad(pattern, (full - pattern.shape[-1], 0))
        req.patterns[layer] = pattern.detach()
    return out, None


def grouped_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs) -> tuple[torch.Tensor, None] | None:
    """SDPA with its own grouped-query attention for a masked multi-column pass on CPU, or None where
    transformers' ``sdpa_attention_forward`` takes another route (no grouping, no mask, one query column,
    a position bias, another device, unequal head sizes). There transformers repeats every key and value
    ``num_key_value_groups`` times (``repeat_kv``) before SDPA, since masked GQA falls back to the math
    kernel on CUDA; on CPU ``enable_gqa`` computes the same output without that copy."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (groups <= 1 or attention_mask is None or query.shape[2] < 2 or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or key.shape[-1] != value.shape[-1]
            or key.shape[1] * groups != query.shape[1]):
        return None
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    AttentionInterface.register(IMPLEMENTATION, hopscope_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # sliding windows come in its mask_function


_register()


def install_attention(model: torch.nn.Module) -> None:
    """Point every (sub-)config of ``model`` at the hopscope attention implementation.

    The implementation each module ran before (``"sdpa"`` or ``"eager"``) is kept on the module, so the
    pass-through reproduces it; others (flash, flex) pass through to SDPA, which hopscope's masks feed.
    """
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is None or not hasattr(cfg, "_attn_implementation") or hasattr(module, "_hopscope_pass_through"):
            continue
        before = cfg._attn_implementation
        if before == IMPLEMENTATION:  # installed by someone else before: HF's default for the class
            before = "eager" if _eager_default(model) else "sdpa"
        module._hopscope_pass_through = before if before in PASS_THROUGH else "sdpa"
    configs = [model.config] + [getattr(model.config, n) for n in ("text_config",) if hasattr(model.config, n)]
    for cfg in configs:
        cfg._attn_implementation = IMPLEMENTATION
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = IMPLEMENTATION


def ensure_installed(model: torch.nn.Module) -> None:
    """Install the pass-through on ``model`` once (a flag on the model records it)."""
    if not getattr(model, "_hopscope_attention", False):
        install_attention(model)
        object.__setattr__(model, "_hopscope_attention", True)


def _eager_default(model: torch.nn.Module) -> bool:
    """Whether transformers' default implementation for ``model`` is eager (its class cannot run SDPA)."""
    return not getattr(type(model), "_supports_sdpa", True)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that call an attention function (they carry ``layer_idx``), in layer order."""
    return [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
            and hasattr(getattr(m, "config", None), "_attn_implementation")]


def implementation(model: torch.nn.Module) -> str:
    """One line saying which attention runs: the pass-through (SDPA or eager) and the explicit path."""
    kinds = sorted({pass_through(m, getattr(m, "attn_logit_softcapping", None)) for m in attention_modules(model)})
    names = {"sdpa": "SDPA (torch scaled_dot_product_attention)", "eager": "eager (the family's own HF function)"}
    passing = " + ".join(names[k] for k in kinds) or names["sdpa"]
    return f"pass-through {passing}; explicit softmax (as HF eager) on layers whose pattern is read or knocked out"

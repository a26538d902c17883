"""Where each architecture family keeps its blocks, attention, MLP, norms and unembedding.

An :class:`Adapter` names modules; it never changes them. The engine hooks these modules, so every
family supported here gets the same sites (resid_pre, attn_out, head_out, ...) on the unmodified HF model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Adapter:
    """Module locations for one loaded model.

    ``attn_to_resid`` is the module whose output the block adds to the residual stream after attention
    (the attention module itself, or a post-attention norm in Gemma 2/3); ``mlp_to_resid`` likewise for
    the MLP. ``parallel_residual`` marks blocks (GPT-NeoX) where attention and MLP read the same input,
    so there is no ``resid_mid``. ``mlp_down`` is the MLP's output projection: its input is the
    ``mlp_hidden`` site (the MLP's activations, one per neuron).
    """

    family: str
    blocks: list[nn.Module]
    attn: list[nn.Module]
    out_proj: list[nn.Module]
    mlp: list[nn.Module]
    mlp_down: list[nn.Module]
    attn_to_resid: list[nn.Module]
    mlp_to_resid: list[nn.Module]
    embed: nn.Module
    final_norm: nn.Module
    unembed: nn.Module
    parallel_residual: bool = False

    def out_proj_weight(self, layer: int) -> torch.Tensor:
        """The attention output projection as a [d_model, n_heads * d_head] matrix (y = W z + b)."""
        proj = self.out_proj[layer]
        if type(proj).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            return proj.weight.T
        return proj.weight

    def out_proj_bias(self, layer: int) -> torch.Tensor | None:
        return getattr(self.out_proj[layer], "bias", None)

    def unembed_weight(self) -> torch.Tensor:
        """[vocab, d_model] unembedding matrix."""
        return self.unembed.weight

    def unembed_bias(self) -> torch.Tensor | None:
        return getattr(self.unembed, "bias", None)


def _llama_like(model: nn.Module, family: str) -> Adapter:
    layers = list(model.model.layers)
    post_attn_norm = hasattr(layers[0], "post_feedforward_layernorm")  # Gemma 2/3 sandwich norms
    return Adapter(
        family=family,
        blocks=layers,
        attn=[b.self_attn for b in layers],
        out_proj=[b.self_attn.o_proj for b in layers],
        mlp=[b.mlp for b in layers],
        mlp_down=[b.mlp.down_proj for b in layers],
        attn_to_resid=[b.post_attention_layernorm if post_attn_norm else b.self_attn for b in layers],
        mlp_to_resid=[b.post_feedforward_layernorm if post_attn_norm else b.mlp for b in layers],
        embed=model.model.embed_tokens,
        final_norm=model.model.norm,
        unembed=model.lm_head,
    )


def _gpt2(model: nn.Module, family: str) -> Adapter:
    blocks = list(model.transformer.h)
    return Adapter(
        family=family,
        blocks=blocks,
        attn=[b.attn for b in blocks],
        out_proj=[b.attn.c_proj for b in blocks],
        mlp=[b.mlp for b in blocks],
        mlp_down=[b.mlp.c_proj for b in blocks],
        attn_to_resid=[b.attn for b in blocks],
        mlp_to_resid=[b.mlp for b in blocks],
        embed=model.transformer.wte,
        final_norm=model.transformer.ln_f,
        unembed=model.lm_head,
    )


def _opt(model: nn.Module, family: str) -> Adapter:
    decoder = model.model.decoder
    if decoder.project_in is not None or decoder.final_layer_norm is None:
        raise ValueError("OPT variants with project_in/out or post-norm (opt-350m) are not supported")
    blocks = list(decoder.layers)
    return Adapter(
        family=family,
        blocks=blocks,
        attn=[b.self_attn for b in blocks],
        out_proj=[b.self_attn.out_proj for b in blocks],
        mlp=[b.fc2 for b in blocks],
        mlp_down=[b.fc2 for b in blocks],
        attn_to_resid=[b.self_attn for b in blocks],
        mlp_to_resid=[b.fc2 for b in blocks],
        embed=decoder.embed_tokens,
        final_norm=decoder.final_layer_norm,
        unembed=model.lm_head,
    )


def _gpt_neox(model: nn.Module, family: str) -> Adapter:
    blocks = list(model.gpt_neox.layers)
    return Adapter(
        family=family,
        blocks=blocks,
        attn=[b.attention for b in blocks],
        out_proj=[b.attention.dense for b in blocks],
        mlp=[b.mlp for b in blocks],
        mlp_down=[b.mlp.dense_4h_to_h for b in blocks],
        attn_to_resid=[b.attention for b in blocks],
        mlp_to_resid=[b.mlp for b in blocks],
        embed=model.gpt_neox.embed_in,
        final_norm=model.gpt_neox.final_layer_norm,
        unembed=model.lm_head,
        parallel_residual=bool(model.config.use_parallel_residual),
    )


_BUILDERS: dict[str, Callable[[nn.Module, str], Adapter]] = {
    "llama": _llama_like,
    "mistral": _llama_like,
    "qwen2": _llama_like,
    "qwen3": _llama_like,
    "gemma": _llama_like,
    "gemma2": _llama_like,
    "gemma3_text": _llama_like,
    "olmo": _llama_like,
    "olmo2": _llama_like,
    "phi3": _llama_like,
    "gpt2": _gpt2,
    "opt": _opt,
    "gpt_neox": _gpt_neox,
}

SUPPORTED_FAMILIES = tuple(sorted(_BUILDERS))  # each one tested exactly on a tiny model (models.tiny)

# Nearby model types that are not supported, and why (the error a user gets says so).
_WHY_NOT: dict[str, str] = {
    "gemma3": "a multimodal Gemma 3 checkpoint; hopscope runs Gemma 3 text models (model_type 'gemma3_text', "
              "e.g. Gemma 3 270M and 1B)",
    "mixtral": "mixture-of-experts MLPs have no single output projection for mlp_hidden / mlp_out sites",
    "qwen2_moe": "mixture-of-experts MLPs have no single output projection for mlp_hidden / mlp_out sites",
    "qwen3_moe": "mixture-of-experts MLPs have no single output projection for mlp_hidden / mlp_out sites",
}


def build_adapter(model: nn.Module) -> Adapter:
    """Adapter for an HF causal LM, or a ValueError naming the unsupported ``model_type`` (and why)."""
    family = getattr(model.config, "model_type", None)
    if family not in _BUILDERS:
        why = f" ({_WHY_NOT[family]})" if family in _WHY_NOT else ""
        raise ValueError(f"model_type {family!r} is not supported by hopscope{why}; supported families: "
                         f"{', '.join(SUPPORTED_FAMILIES)}")
    return _BUILDERS[family](model, family)

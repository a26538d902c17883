"""Tiny randomly initialised models of each supported family, for fast exact tests.

Each family is configured so that what makes it different is exercised: biases, norms (pre, post,
sandwich, QK), attention and final-logit softcaps, sliding windows smaller than a test prompt (3 tokens),
``head_dim != d_model / n_heads``, grouped-query attention, Gemma's embedding scaling and
``query_pre_attn_scalar``, Phi-3's fused ``qkv_proj`` / ``gate_up_proj``, OLMo's ``clip_qkv``.
The model is built with transformers' default attention implementation for its family (eager for Gemma 2).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers import (
    Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, OlmoConfig,
    Olmo2Config, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config,
)

from hopscope.models.adapters import build_adapter
from hopscope.models.loaded import LoadedModel
from hopscope.models.tokenizers import gpt2_tokenizer, smollm2_tokenizer

TINY_FAMILIES = ("gpt2", "llama", "qwen2", "opt", "gpt_neox", "gemma", "mistral", "qwen3", "gemma2", "gemma3_text",
                 "olmo", "olmo2", "phi3")
SLIDING_WINDOW = 3  # tokens a sliding-window layer sees (itself included): fewer than any test prompt has

# Families added with the second session use a larger init so that attention is far from uniform and the
# softcaps and windows change the output measurably; embeddings, unembedding and the sublayers' output
# projections are scaled back to the usual 0.02 so that activations and logits stay O(1) and float32 noise
# ~1e-7. The first six families keep HF's default init, as before.
_INIT = 0.2
_SCALE_BACK = 0.1


def _config(family: str, vocab: int, n_layers: int) -> PretrainedConfig:
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4)
    new = dict(common, intermediate_size=128, max_position_embeddings=256, initializer_range=_INIT)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=n_layers, n_head=4, n_positions=256,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if family == "llama":
        return LlamaConfig(**common, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                           tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    if family == "gemma":
        return GemmaConfig(**common, num_key_value_heads=1, head_dim=16, intermediate_size=128,
                           max_position_embeddings=256)
    if family == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                         ffn_dim=128, max_position_embeddings=256, word_embed_proj_dim=64, dropout=0.0,
                         attention_dropout=0.0, pad_token_id=1)
    if family == "gpt_neox":
        return GPTNeoXConfig(**common, intermediate_size=128, max_position_embeddings=256, rotary_pct=0.5,
                             use_parallel_residual=True)
    if family == "mistral":  # every layer slides; head_dim 24 != 64 / 4
        return MistralConfig(**new, num_key_value_heads=2, head_dim=24, sliding_window=SLIDING_WINDOW)
    if family == "qwen3":  # QK-norm per head, q/k/v biases, layer 0 full and the others sliding
        return Qwen3Config(**new, num_key_value_heads=2, head_dim=32, attention_bias=True, use_sliding_window=True,
                           sliding_window=SLIDING_WINDOW, max_window_layers=1, tie_word_embeddings=False)
    if family == "gemma2":  # sandwich norms, both softcaps, alternating sliding/full, query_pre_attn_scalar
        return Gemma2Config(**new, num_key_value_heads=2, head_dim=24, sliding_window=SLIDING_WINDOW,
                            query_pre_attn_scalar=20, attn_logit_softcapping=5.0, final_logit_softcapping=1.0)
    if family == "gemma3_text":  # QK-norm, local/global layers with their own RoPE bases, no softcaps
        return Gemma3TextConfig(**new, num_key_value_heads=1, head_dim=24, sliding_window=SLIDING_WINDOW,
                                query_pre_attn_scalar=20, layer_types=_alternating(n_layers, first="sliding"))
    if family == "olmo":  # non-parametric LayerNorm, clipped q/k/v
        return OlmoConfig(**new, num_key_value_heads=2, clip_qkv=1.5, pad_token_id=0, bos_token_id=None,
                          eos_token_id=0)
    if family == "olmo2":  # post-norms only, QK-norm over all heads
        return Olmo2Config(**new, num_key_value_heads=2, pad_token_id=0, bos_token_id=None, eos_token_id=0)
    if family == "phi3":  # fused qkv_proj and gate_up_proj, partial rotary, sliding window
        return Phi3Config(**new, num_key_value_heads=2, partial_rotary_factor=0.5, sliding_window=SLIDING_WINDOW,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise ValueError(f"no tiny model for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


def _alternating(n_layers: int, first: str) -> list[str]:
    kinds = ("sliding_attention", "full_attention") if first == "sliding" else ("full_attention", "sliding_attention")
    return [kinds[i % 2] for i in range(n_layers)]


def tiny(family: str = "llama", *, n_layers: int = 3, seed: int = 0) -> LoadedModel:
    """A tiny randomly initialised model of ``family`` with a real tokenizer (GPT-2 BPE or SmolLM2's)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny model for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    tok = gpt2_tokenizer() if family in ("gpt2", "opt", "gpt_neox") else smollm2_tokenizer()
    config = _config(family, len(tok), n_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases and norm weights so that bias/norm handling is exercised
        if getattr(config, "initializer_range", None) == _INIT:
            ad = build_adapter(model)
            weights = {id(w): w for w in [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
                       + [m.weight for m in ad.out_proj + ad.mlp_down]}  # tied weights once
            for w in weights.values():
                w.mul_(_SCALE_BACK)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return LoadedModel(model=model, tokenizer=tok, name=f"tiny-{family}", source=f"random-init(seed={seed})")

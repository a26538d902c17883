"""Tiny randomly initialised models of each supported family, for fast exact tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen2Config

from hopscope.models.loaded import LoadedModel
from hopscope.models.tokenizers import gpt2_tokenizer, smollm2_tokenizer

TINY_FAMILIES = ("gpt2", "llama", "qwen2", "opt", "gpt_neox", "gemma")


def _config(family: str, vocab: int, n_layers: int) -> PretrainedConfig:
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4)
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
    raise ValueError(f"no tiny model for family {family!r}; choose one of {TINY_FAMILIES}")


def tiny(family: str = "llama", *, n_layers: int = 3, seed: int = 0) -> LoadedModel:
    """A tiny randomly initialised model of ``family`` with a real tokenizer (GPT-2 BPE or SmolLM2's)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny model for family {family!r}; choose one of {TINY_FAMILIES}")
    tok = gpt2_tokenizer() if family in ("gpt2", "opt", "gpt_neox") else smollm2_tokenizer()
    config = _config(family, len(tok), n_layers)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases and norm weights so that bias/norm handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return LoadedModel(model=model, tokenizer=tok, name=f"tiny-{family}", source=f"random-init(seed={seed})")

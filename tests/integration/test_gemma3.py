"""Gemma 3 270M (optional, Q4_K_M GGUF over five packages): local/global attention, QK-norm, MQA, exactly.

The shared checks (shapes, heads sum, fast path, generation) are in ``test_second_model.py``; here the
features Gemma 3 adds: 512-token sliding windows on 15 of 18 layers, ``query_pre_attn_scalar``, embedding
scaling, and a pass-through that equals HF's own forward.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect

import pytest
import torch

from hopscope.engine import Site, cache, knockout, run, run_last_position, run_with_cache
from hopscope.models import EMBEDDED

NAME = "gemma3-270m"
PROMPT = "The capital of France is"

pytestmark = [
    pytest.mark.default_model,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in EMBEDDED[NAME].packages),
                       reason=f"optional model {NAME} not installed ({EMBEDDED[NAME].install_hint})"),
]


@pytest.fixture(scope="module")
def gemma():
    import hopscope

    return hopscope.load_model(NAME)


@contextlib.contextmanager
def hf_attention(lm, implementation: str):
    """Run ``lm.model`` with transformers' own ``implementation`` (the same weights, no second copy)."""
    configs = {id(m.config): m.config for m in lm.model.modules() if hasattr(getattr(m, "config", None),
                                                                            "_attn_implementation")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = implementation
        yield lm.model
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def _naive_last(lm, prompts, rows):
    """Last-position logits with every row running its whole prompt (no shared prefix cache)."""
    kwargs = {"share_prefix": False} if "share_prefix" in inspect.signature(run).parameters else {}
    return run(lm, prompts, rows, last_only=True, **kwargs)


def _long_prompt(lm, n_tokens: int) -> str:
    words = "the river runs past old stone walls and quiet fields toward the sea".split()
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    assert len(lm.to_ids(text)) > n_tokens // 2
    return text


def test_config_is_gemma3_270m(gemma):
    cfg = gemma.config
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.sliding_window == 512
    assert cfg.query_pre_attn_scalar == 256 and cfg.head_dim == 256 and cfg.hidden_size == 640
    assert gemma.to_ids(PROMPT)[0] == gemma.tokenizer.bos_token_id  # Gemma needs its <bos>


def test_no_intervention_equals_hf_forward(gemma):
    ids = torch.tensor([gemma.to_ids(PROMPT)])
    got = run(gemma, [PROMPT]).logits[0]
    with hf_attention(gemma, "sdpa") as model, torch.no_grad():
        ref = model(input_ids=ids).logits[0]
    assert (got - ref).abs().max().item() <= 1e-4


def test_patterns_equal_hf_eager_weights(gemma):
    _, acts = run_with_cache(gemma, [PROMPT], components=("attn_pattern",))
    with hf_attention(gemma, "eager") as model, torch.no_grad():
        ref = model(input_ids=torch.tensor([gemma.to_ids(PROMPT)]), output_attentions=True).attentions
    assert max((acts["attn_pattern", l][0] - ref[l][0]).abs().max().item() for l in range(gemma.n_layers)) <= 1e-5


def test_sliding_window_beyond_512_tokens(gemma):
    """Past 512 tokens the local layers' masks reach the explicit path (the global layers see everything), and
    the last-position fast path, whose local-layer cache keeps only the last 511 keys, still lines up."""
    prompt = _long_prompt(gemma, 530)
    n = len(gemma.to_ids(prompt))
    assert n > 520
    local, full = Site(0, "attn_pattern", -1), Site(5, "attn_pattern", -1)
    rows = [[knockout(0, keys=[n - 3]), cache(local)], [cache(local), cache(full)]]
    naive = _naive_last(gemma, [prompt] * 2, rows)
    seen, seen_full = naive.cache[1][local][:, 0], naive.cache[1][full][:, 0]
    assert seen[:, : n - 512].abs().max().item() == 0.0
    assert (seen[:, n - 512:].sum(-1) - 1).abs().max().item() < 1e-5
    assert seen_full[:, : n - 512].sum().item() > 0
    assert (naive.logits[0] - naive.logits[1]).abs().max().item() > 1e-4  # the knockout inside the window bites
    fast = run_last_position(gemma, prompt, rows)
    assert (fast.logits - naive.logits).abs().max().item() <= 1e-3
    for row, sites in enumerate([[local], [local, full]]):
        for site in sites:
            assert (fast.cache[row][site] - naive.cache[row][site]).abs().max().item() <= 1e-5
    assert fast.cache[0][local][:, :, n - 3].abs().max().item() == 0.0


def test_embedding_is_scaled(gemma):
    _, acts = run_with_cache(gemma, [PROMPT], components=("embed",))
    raw = gemma.adapter.embed.weight[torch.tensor(gemma.to_ids(PROMPT))]
    assert (acts["embed", 0][0] - raw * torch.tensor(640 ** 0.5)).abs().max().item() <= 1e-5


def test_knows_paris(gemma):
    from hopscope.lenses import logit_lens

    df = logit_lens(gemma, PROMPT, [" Paris"])
    assert df.iloc[-1]["rank[ Paris]"] <= 2  # the pretrained 270M model: ' the', ' a', ' Paris'


def test_info_names_sites_and_attention(gemma):
    from hopscope.cli.core import describe

    info = describe(gemma)
    assert "resid_mid" in info["sites"] and "mlp_hidden (d_mlp 2048" in info["sites"]
    assert "attn_pattern (4 query / 1 key-value heads)" in info["sites"]
    assert info["attention"].startswith("pass-through SDPA")
    assert "sliding window 512 on 15 of 18 layers" in info["attn detail"]

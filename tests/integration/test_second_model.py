"""Cross-family checks on the optional real models: Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M.

Each ships its GGUF split over data-only packages (``hopscope.models.EMBEDDED[name].install_hint``); a test
whose packages are absent is skipped with the command that installs them.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hopscope.engine import Site, generate, replace, run, run_last_position, run_with_cache
from hopscope.models import EMBEDDED

pytestmark = pytest.mark.default_model

# name -> (family, layers, query heads, key/value heads, d_model, d_head)
SHAPES = {
    "qwen2.5-coder-0.5b": ("qwen2", 24, 14, 2, 896, 64),
    "gemma3-270m": ("gemma3_text", 18, 4, 1, 640, 256),
}
PROMPT = "The capital of France is"


def _installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in EMBEDDED[name].packages)


@pytest.fixture(scope="module", params=list(SHAPES))
def optional_model(request):
    name = request.param
    if not _installed(name):
        pytest.skip(f"optional model {name} not installed ({EMBEDDED[name].install_hint})")
    import hopscope

    return hopscope.load_model(name)


def test_shape_and_invariants(optional_model):
    lm = optional_model
    s = lm.summary()
    assert (s["family"], s["n_layers"], s["n_heads"], s["n_kv_heads"], s["d_model"], s["d_head"]) == SHAPES[lm.name]
    _, acts = run_with_cache(lm, [PROMPT], components=("head_out", "attn_out"), layers=[4])
    total = acts["head_out", 4].sum(2)
    bias = lm.adapter.out_proj_bias(4)
    if bias is not None:
        total = total + bias
    assert (total - acts["attn_out", 4]).abs().max().item() <= 1e-4
    rows = [[replace(Site(l, "resid_post", -1), acts["attn_out", 4][0, -1] * 3)] for l in (2, 10, 16)]
    fast = run_last_position(lm, PROMPT, rows).logits
    naive = run(lm, [PROMPT] * 3, rows, last_only=True).logits
    assert (fast - naive).abs().max().item() <= 1e-3
    assert torch.equal(generate(lm, PROMPT, rows, max_new_tokens=3).as_tensor(),
                       generate(lm, PROMPT, rows, max_new_tokens=3, fast=False).as_tensor())

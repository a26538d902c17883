"""The invariants and a known fact on the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import Site, cache, generate, replace, run, run_last_position, run_with_cache
from hopscope.lenses import logit_lens

pytestmark = pytest.mark.default_model

PROMPT = "The capital of France is"


def test_shape_facts(default_model):
    s = default_model.summary()
    assert (s["family"], s["n_layers"], s["n_heads"], s["n_kv_heads"], s["d_model"]) == ("llama", 30, 9, 3, 576)


def test_no_intervention_equals_hf(default_model):
    lm = default_model
    ids = torch.tensor([lm.to_ids(PROMPT)])
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits[0]
    assert (run(lm, [PROMPT]).logits[0] - ref).abs().max().item() <= 1e-4


def test_knows_paris(default_model):
    df = logit_lens(default_model, PROMPT, [" Paris"])
    assert df.iloc[-1]["rank[ Paris]"] == 0


def test_heads_sum_to_attn_out_with_gqa(default_model):
    _, acts = run_with_cache(default_model, [PROMPT], components=("head_out", "attn_out"), layers=[5, 20])
    for layer in (5, 20):
        assert acts["head_out", layer].shape[2] == 9
        assert (acts["head_out", layer].sum(2) - acts["attn_out", layer]).abs().max().item() <= 1e-4


def test_fast_path_equals_naive(default_model):
    lm = default_model
    g = torch.Generator().manual_seed(0)
    rows = [[replace(Site(int(l), "resid_post", -1), torch.randn(576, generator=g) * 5)] for l in (3, 12, 25)]
    fast = run_last_position(lm, PROMPT, rows).logits
    naive = run(lm, [PROMPT] * 3, rows, last_only=True).logits
    assert (fast - naive).abs().max().item() <= 1e-3
    assert torch.equal(generate(lm, PROMPT, rows, max_new_tokens=5).as_tensor(),
                       generate(lm, PROMPT, rows, max_new_tokens=5, fast=False).as_tensor())


def test_self_patch_is_identity(default_model):
    lm = default_model
    site = Site(10, "resid_post", -1)
    read = run(lm, [PROMPT], [[cache(site)]])
    patched = run(lm, [PROMPT], [[replace(site, read.cache[0][site])]])
    assert torch.equal(patched.logits, read.logits)

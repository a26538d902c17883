"""Per-layer / per-head projections of explicit vs obscure prompts on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from hopscope.engine import run_with_cache
from hopscope.engine.answers import first_token_id
from hopscope.lenses import project
from hopscope.methods.injection_controls import InjectionPair
from hopscope.methods.layer_projection import head_matrix, js_divergence, layer_projection, layer_summary

PAIRS = [
    InjectionPair("a", "The first president of the United States fought in the", "George Washington fought in the",
                  "George Washington", "Revolutionary War"),
    InjectionPair("b", "The biggest church in the world is in the city of", "St. Peter's Basilica is in the city of",
                  "St. Peter's Basilica", "Rome"),
    InjectionPair("same", "Jesus died on the", "Jesus died on the", "Jesus", "cross"),
]


@pytest.fixture(scope="module")
def tables(tiny_llama):
    return layer_projection(tiny_llama, PAIRS, k=3, batch_size=2)


def test_shapes(tiny_llama, tables):
    layers, heads = tables
    L, H = tiny_llama.n_layers, tiny_llama.n_heads
    assert len(layers) == len(PAIRS) * 2 * L and len(heads) == len(PAIRS) * 2 * L * H
    assert heads.answer_prob.between(0, 1).all() and (heads.answer_rank >= 0).all()
    assert all(len(t.split(" | ")) == 3 for t in layers.top_tokens)


def test_values_match_an_independent_projection(tiny_llama, tables):
    layers, heads = tables
    pair, layer, head = PAIRS[1], 2, 3
    _, acts = run_with_cache(tiny_llama, [pair.obscure], components=("attn_out", "head_out"))
    aid = first_token_id(tiny_llama.tokenizer, pair.answer)
    bid = first_token_id(tiny_llama.tokenizer, pair.bridge)
    p_attn = torch.softmax(project(tiny_llama, acts["attn_out", layer][0, -1]), -1)
    p_head = torch.softmax(project(tiny_llama, acts["head_out", layer][0, -1, head]), -1)
    row = layers[(layers.qid == "b") & (layers.prompt_kind == "obscure") & (layers.layer == layer)].iloc[0]
    assert row.answer_prob == pytest.approx(float(p_attn[aid]), rel=1e-4)
    assert row.answer_rank == int((p_attn > p_attn[aid]).sum())
    sel = (heads.qid == "b") & (heads.prompt_kind == "obscure") & (heads.layer == layer) & (heads["head"] == head)
    hrow = heads[sel].iloc[0]
    assert hrow.bridge_prob == pytest.approx(float(p_head[bid]), rel=1e-4)


def test_divergence_is_zero_for_identical_prompts(tables):
    _, heads = tables
    same = heads[heads.qid == "same"]
    assert same.js.abs().max() < 1e-6 and same.cos_dist.abs().max() < 1e-5
    assert heads[heads.qid == "a"].js.max() > 1e-6


def test_js_divergence_properties():
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(4, 10, generator=g), -1)
    q = torch.log_softmax(torch.randn(4, 10, generator=g), -1)
    assert torch.allclose(js_divergence(p, p), torch.zeros(4), atol=1e-6)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p), atol=1e-6)
    assert (js_divergence(p, q) <= math.log(2) + 1e-6).all()


def test_matrices_and_summary(tiny_llama, tables):
    layers, heads = tables
    m = head_matrix(heads, "js", "obscure")
    assert m.shape == (tiny_llama.n_layers, tiny_llama.n_heads)
    s = layer_summary(layers)
    assert set(s.prompt_kind) == {"explicit", "obscure"} and (s.n == len(PAIRS)).all()
    with pytest.raises(ValueError):
        head_matrix(heads, "js", "nonsense")

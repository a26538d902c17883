"""Per-layer / per-head projections of explicit vs obscure prompts: raw head outputs through the linear projection
(the seed's ``model.unembed(head_out)`` on processed weights), checked against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from hopscope.engine import first_token_id, run_with_cache
from hopscope.lenses.projection import linear_logits
from hopscope.methods.injection.projections import head_matrix, js_divergence, layer_summary, projections

QIDS = ["a", "b", "same"]
OBSCURE = ["The first president of the United States fought in the",
           "The biggest church in the world is in the city of", "Jesus died on the"]
EXPLICIT = ["George Washington fought in the", "St. Peter's Basilica is in the city of", "Jesus died on the"]
ANSWERS = ["Revolutionary War", "Rome", "cross"]
BRIDGES = ["George Washington", "St. Peter's Basilica", "Jesus"]


@pytest.fixture(scope="module")
def tables(tiny_gpt2):
    return projections(tiny_gpt2, QIDS, EXPLICIT, OBSCURE, ANSWERS, BRIDGES, k=3)


def test_shapes(tiny_gpt2, tables):
    layers, heads = tables
    L, H = tiny_gpt2.n_layers, tiny_gpt2.n_heads
    assert len(layers) == len(QIDS) * 2 * L and len(heads) == len(QIDS) * 2 * L * H
    assert heads["answer_prob"].between(0, 1).all() and (heads["answer_rank"] >= 0).all()
    assert all(len(t.split(" | ")) == 3 for t in layers["top_tokens"])


def test_values_match_an_independent_projection(tiny_gpt2, tables):
    lm = tiny_gpt2
    layers, heads = tables
    layer, head = 2, 3
    _, acts = run_with_cache(lm, [OBSCURE[1]], components=("head_out", "attn_out"))
    logits = linear_logits(lm, acts["head_out", layer][0, -1, head])
    aid = first_token_id(lm.tokenizer, ANSWERS[1])
    row = heads[(heads.qid == "b") & (heads.prompt_kind == "obscure") & (heads.layer == layer) & (heads["head"] == head)]
    assert row["answer_prob"].iloc[0] == pytest.approx(float(torch.softmax(logits, -1)[aid]), rel=1e-4, abs=1e-9)
    assert int(row["answer_rank"].iloc[0]) == int((logits > logits[aid]).sum())
    lrow = layers[(layers.qid == "b") & (layers.prompt_kind == "obscure") & (layers.layer == layer)]
    attn_logits = linear_logits(lm, acts["attn_out", layer][0, -1])
    assert lrow["answer_prob"].iloc[0] == pytest.approx(float(torch.softmax(attn_logits, -1)[aid]), rel=1e-4, abs=1e-9)


def test_identical_prompts_have_zero_divergence(tables):
    _, heads = tables
    assert heads[heads.qid == "same"]["js"].abs().max() < 1e-6
    assert heads[heads.qid == "a"]["js"].max() > 0
    assert (heads["js"] <= math.log(2) + 1e-6).all()


def test_js_divergence_bounds():
    p = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), -1)
    q = torch.log_softmax(torch.tensor([[-1.0, 0.0, 2.0]]), -1)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert 0 < js_divergence(p, q).item() <= math.log(2)


def test_matrix_and_summary(tiny_gpt2, tables):
    layers, heads = tables
    m = head_matrix(heads, "answer_prob", "obscure")
    assert m.shape == (tiny_gpt2.n_layers, tiny_gpt2.n_heads)
    s = layer_summary(layers)
    assert len(s) == 2 * tiny_gpt2.n_layers and (s["n"] == len(QIDS)).all()

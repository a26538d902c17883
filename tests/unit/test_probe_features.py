"""Probe features: mean pooling of a statement's tokens, normalisation, and attention read through the engine."""

import numpy as np
import pytest

from hopscope.data.kth_smallest import KthSmallestConfig, make_split, resolve_pool
from hopscope.methods.probe import Settings
from hopscope.methods.probe.attention import query_attention
from hopscope.methods.probe.features import pool_statements, statement_features
from hopscope.methods.probe.questions import ProbeQuestion, kth_questions


def test_mean_pooling_equals_the_hand_computed_mean():
    attn = np.zeros((1, 2, 4))  # one layer, two heads, four tokens
    attn[0, 0] = [0.1, 0.2, 0.3, 0.4]
    attn[0, 1] = [0.4, 0.0, 0.2, 0.4]
    spans = [(0, 1), (1, 4)]
    f = statement_features(attn, spans, token_pool=Settings().token_pool)  # the paper's default: mean
    # statement 2 = tokens 1..3: head 0 mean (0.2 + 0.3 + 0.4) / 3 = 0.3, head 1 (0 + 0.2 + 0.4) / 3 = 0.2
    assert f.shape == (2, 1, 1)
    assert f[:, 0, 0] == pytest.approx([(0.1 + 0.4) / 2, (0.3 + 0.2) / 2])
    summed = statement_features(attn, spans, token_pool="sum")
    assert summed[1, 0, 0] == pytest.approx((0.9 + 0.6) / 2)
    assert np.allclose(pool_statements(attn, spans, "mean")[1], attn[:, :, 1:4].mean(-1))


def test_max_normalisation_and_per_head():
    attn = np.random.default_rng(0).random((3, 2, 6))
    spans = [(0, 1), (1, 4), (4, 6)]
    f = statement_features(attn, spans, normalize="max")
    assert f.max() == pytest.approx(1.0)
    raw = statement_features(attn, spans)
    assert np.allclose(f, raw / raw.max(), atol=1e-6)
    heads = statement_features(attn, spans, per_head=True)
    assert heads.shape == (3, 3, 2) and np.allclose(heads.mean(-1), raw[..., 0], atol=1e-6)
    with pytest.raises(ValueError, match="outside the prompt"):
        pool_statements(attn, [(5, 8)])
    with pytest.raises(ValueError, match="unknown token_pool"):
        pool_statements(attn, spans, "max")


@pytest.fixture(scope="module")
def kth(tiny_gpt2):
    task = resolve_pool(KthSmallestConfig(n=6, pool_size=40), tiny_gpt2.tokenizer)
    return kth_questions(make_split(task, "test", 8))


def test_last_token_attention_through_the_engine(tiny_gpt2, kth):
    qa = query_attention(tiny_gpt2, kth, pool="last")
    assert len(qa.attn) == len(kth) and qa.logits.shape == (len(kth), tiny_gpt2.d_vocab)
    for a, spans in zip(qa.attn, qa.spans):
        assert a.shape == (tiny_gpt2.n_layers, tiny_gpt2.n_heads, 6)  # one token per number
        assert np.allclose(a.sum(-1), 1.0, atol=1e-5) and (a >= 0).all()
        assert spans == [(i, i + 1) for i in range(6)]


def test_query_pools_over_the_question_rows(tiny_llama):
    prompt = "Anne is big. Bob is red. Anne is big.: True or False?"
    q = ProbeQuestion("q", "g", prompt, ((0, 12), (13, 24)), (0, -1), (25, len(prompt)), " True", " False")
    last = query_attention(tiny_llama, [q], pool="last").attn[0]
    mx = query_attention(tiny_llama, [q], pool="max").attn[0]
    mean = query_attention(tiny_llama, [q], pool="mean").attn[0]
    assert (mx >= mean - 1e-6).all() and (mx >= last - 1e-6).all()
    assert not np.allclose(mean, last)
    spans = query_attention(tiny_llama, [q]).spans[0]
    assert spans[0][1] - spans[0][0] > 1  # multi-token statements
    with pytest.raises(ValueError, match="unknown query pool"):
        query_attention(tiny_llama, [q], pool="first")

"""Probe features: statement token spans, pooling, normalisation, and shapes read through the engine."""

import numpy as np
import pytest

from hopscope.data.kth_smallest import KthExample, KthSmallestConfig, make_split, resolve_pool
from hopscope.methods.probe import ProbeSettings, extract, kth_items, statement_features, token_spans
from hopscope.methods.probe.features import pool_statements
from hopscope.train.number_tokenizer import number_tokenizer


def test_token_spans_cover_multi_token_statements(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    prompt = "123456789 7 supercalifragilistic 8"
    chars = [(0, 9), (10, 11), (12, 32), (33, 34)]
    spans = token_spans(tok, prompt, chars)
    ids = tok(prompt)["input_ids"]
    assert spans[0][0] == 0 and spans[-1][1] == len(ids)
    for (a, b), (c, d) in zip(spans, chars):
        assert tok.decode(ids[a:b]).strip() == prompt[c:d]
    assert spans[0][1] - spans[0][0] > 1 and spans[1] == (spans[0][1], spans[0][1] + 1)


def test_token_spans_of_a_number_tokenizer_and_errors():
    tok = number_tokenizer(range(50))
    ex = KthExample((12, 5, 30), k=2)
    assert token_spans(tok, ex.prompt, ex.char_spans) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="covers no token"):
        token_spans(tok, "1  2", [(0, 1), (1, 2)])


def test_pooling_and_normalisation():
    attn = np.random.default_rng(0).random((3, 2, 6))  # [L, H, tokens]
    spans = [(0, 1), (1, 4), (4, 6)]
    pooled = pool_statements(attn, spans, "sum")
    assert pooled.shape == (3, 3, 2)
    assert np.allclose(pooled[1], attn[:, :, 1:4].sum(-1))
    assert np.allclose(pool_statements(attn, spans, "max")[1], attn[:, :, 1:4].max(-1))
    f = statement_features([attn, attn * 2], [spans, spans], normalize="max")
    assert f.values.shape == (6, 3, 1) and f.list_id.tolist() == [0, 0, 0, 1, 1, 1]
    assert f.values[:3].max() == pytest.approx(1.0) and np.allclose(f.values[:3], f.values[3:])
    raw = statement_features([attn], [spans], normalize="none")
    assert np.allclose(raw.values[:, :, 0], pooled.mean(-1))
    s = statement_features([attn], [spans], normalize="sum", per_head=True)
    assert s.values.shape == (3, 3, 2) and np.allclose(s.values.sum(0), 1.0)
    assert f.matrix(2).shape == (6, 2) and f.matrix().shape == (6, 3)
    with pytest.raises(ValueError, match="n_layers must lie"):
        f.matrix(4)
    with pytest.raises(ValueError, match="outside the prompt"):
        pool_statements(attn, [(5, 8)])
    with pytest.raises(ValueError, match="unknown normalize"):
        statement_features([attn], [spans], normalize="l2")


@pytest.fixture(scope="module")
def kth_lists(tiny_gpt2):
    task = resolve_pool(KthSmallestConfig(n=6, pool_size=40, n_test=12), tiny_gpt2.tokenizer)
    return make_split(task, "test")


def test_features_through_the_engine_have_the_right_shape(tiny_gpt2, kth_lists):
    m = tiny_gpt2
    items = kth_items(kth_lists)
    mf = extract(m, items, ProbeSettings(normalize="none"))
    n_rows = len(kth_lists) * 6
    assert mf.features.values.shape == (n_rows, m.n_layers, 1)
    assert all(a.shape == (m.n_layers, m.n_heads, 6) for a in mf.attention.attn)  # one token per number
    for a in mf.attention.attn:  # the last token's attention is a distribution over the prompt
        assert np.allclose(a.sum(-1), 1.0, atol=1e-5) and (a >= 0).all()
    per_head = extract(m, items, ProbeSettings(per_head=True, normalize="none"))
    assert per_head.features.values.shape == (n_rows, m.n_layers, m.n_heads)
    assert np.allclose(per_head.features.values.mean(-1), mf.features.values[..., 0], atol=1e-6)
    assert len(mf.attention.top1) == len(kth_lists)


def test_query_pooling_modes(tiny_gpt2, kth_lists):
    items = kth_items(kth_lists[:4])
    last = extract(tiny_gpt2, items, ProbeSettings(normalize="none")).attention.attn[0]
    mean = extract(tiny_gpt2, items, ProbeSettings(query="mean", normalize="none")).attention.attn[0]
    mx = extract(tiny_gpt2, items, ProbeSettings(query="max", normalize="none")).attention.attn[0]
    assert (mx >= mean - 1e-6).all() and (mx >= last - 1e-6).all()
    assert np.allclose(mx[..., 0], 1.0)  # the first query attends only to the first token
    with pytest.raises(ValueError, match="unknown query mode"):
        extract(tiny_gpt2, items, ProbeSettings(query="first"))

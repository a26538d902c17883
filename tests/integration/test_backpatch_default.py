"""Back-patching on the default model (SmolLM2-135M): fast path == naive re-run, identity patches."""

from __future__ import annotations

import pytest
import torch

from hopscope.data import build_two_hop
from hopscope.engine import Site, generate, replace, run_with_cache
from hopscope.methods.backpatch import backpatch_query, naive_decode, patched_decode
from hopscope.methods.resolution import e1_token_span, first_hop_position

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def query():
    return build_two_hop("capital_country_currency", n=1)[0]


def test_fast_equals_naive_on_default_model(default_model, query):
    lm = default_model
    _, acts = run_with_cache(lm, query.prompt)
    pairs = [(20, 5), (12, 3), (29, 0), (5, 20), (7, 7)]
    rows = [[replace(Site(t, "resid_post", -1), acts["resid_post", s][0, -1])] for s, t in pairs]
    fast = patched_decode(lm, query.prompt, rows, max_new_tokens=4, keep_logits=True, batch_size=2)
    naive = naive_decode(lm, query.prompt, rows, max_new_tokens=4)
    assert fast.tokens == naive.tokens
    torch.testing.assert_close(fast.first_logits, naive.first_logits, atol=1e-3, rtol=1e-4)
    clean = generate(lm, query.prompt, None, max_new_tokens=4, fast=False).tokens[0]
    assert fast.tokens[-1] == clean  # s = t


def test_first_hop_variant_and_spans(default_model, query):
    lm = default_model
    toks = lm.str_tokens(query.prompt)
    s, e = e1_token_span(lm, query)
    assert "".join(toks[s:e]).strip() == query.e1
    pos = first_hop_position(lm, query)
    assert toks[pos].strip() == query.e1.split()[-1]
    df = backpatch_query(lm, query, layers=[4, 16, 28], max_new_tokens=3, variants=("last", "first_hop"))
    assert set(df["variant"]) == {"last", "first_hop"} and len(df) == 1 + 4 * 3 + 3
    assert df["prob"].between(0, 1).all()

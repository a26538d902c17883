"""Sliding-window attention knockout on tiny models."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopscope.engine import generate, run
from hopscope.methods.backpatch import patched_decode
from hopscope.methods.knockout import knockout_query, knockout_resolution, window, window_knockout
from test_backpatch import PROMPT, make_query


def test_window_is_clipped():
    assert list(window(0, 3, 30)) == [0, 1, 2, 3]
    assert list(window(15, 3, 30)) == list(range(12, 19))
    assert list(window(29, 3, 30)) == [26, 27, 28, 29]
    assert list(window(5, 0, 30)) == [5]
    with pytest.raises(ValueError):
        window(5, -1, 30)


def test_empty_window_is_vanilla(tiny_model):
    ivs = window_knockout(range(0), (1, 3))
    assert ivs == []
    dec = patched_decode(tiny_model, PROMPT, [ivs], max_new_tokens=5, keep_logits=True)
    assert dec.tokens[0] == generate(tiny_model, PROMPT, None, max_new_tokens=5, fast=False).tokens[0]
    torch.testing.assert_close(dec.first_logits, run(tiny_model, PROMPT, last_only=True).logits, atol=2e-5, rtol=1e-5)


def test_knockout_fast_path_equals_full_run(tiny_model):
    rows = [window_knockout(window(c, 1, tiny_model.n_layers), (2, 5)) for c in range(tiny_model.n_layers)]
    dec = patched_decode(tiny_model, PROMPT, rows, max_new_tokens=1, keep_logits=True)
    full = run(tiny_model, [PROMPT] * len(rows), rows, last_only=True).logits
    torch.testing.assert_close(dec.first_logits, full, atol=2e-5, rtol=1e-5)
    assert (dec.first_logits[0] - run(tiny_model, PROMPT, last_only=True).logits[0]).abs().max() > 1e-4


def test_blocking_all_context_isolates_the_last_token(tiny_llama):
    """With every earlier key blocked in every layer, the last token cannot see its context."""
    a, b = "Paris is the capital of", "London is the capital of"
    n = len(tiny_llama.to_ids(a))
    assert n == len(tiny_llama.to_ids(b))
    ivs = window_knockout(range(tiny_llama.n_layers), (0, n - 1))
    la = patched_decode(tiny_llama, a, [ivs], max_new_tokens=1, keep_logits=True).first_logits
    lb = patched_decode(tiny_llama, b, [ivs], max_new_tokens=1, keep_logits=True).first_logits
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_knockout_query_table(tiny_llama):
    q = make_query()
    df = knockout_query(tiny_llama, q, k=1, max_new_tokens=3)
    assert list(df["centre"]) == [-1, 0, 1, 2]
    assert not df["token_changed"].iloc[0]
    s, e = df[["keys_start", "keys_stop"]].iloc[0]
    assert "".join(tiny_llama.str_tokens(q.prompt)[s:e]).strip() == "Eiffel Tower"
    res = knockout_resolution(df)
    assert res.loc[0, "n_windows"] == 3


def test_knockout_resolution_first_and_last_flip():
    df = pd.DataFrame({"query_id": "q", "centre": [-1, 0, 1, 2, 3], "token_changed": [False, False, True, True, False],
                       "correct": [True, True, False, True, True], "prob": [0.5, 0.4, 0.1, 0.2, 0.5]})
    r = knockout_resolution(df).iloc[0]
    assert (r.first_flip_layer, r.last_flip_layer, r.first_correctness_change) == (1, 2, 1)
    assert r.n_flips == 2 and r.min_prob == 0.1

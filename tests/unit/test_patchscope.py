"""Patchscopes on tiny models."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.engine import generate
from hopscope.methods.patchscope import TARGETS, patchscope_query, patchscope_resolution, source_position
from test_backpatch import make_query


def test_source_positions(tiny_llama):
    q = make_query()
    toks = tiny_llama.str_tokens(q.prompt)
    assert source_position(tiny_llama, q, "last") == len(toks) - 1
    assert toks[source_position(tiny_llama, q, "e1_last")].strip() == "Tower"
    assert toks[source_position(tiny_llama, q, "first_hop")].strip() == "located"
    with pytest.raises(ValueError, match="unknown source"):
        source_position(tiny_llama, q, "middle")


def test_patching_the_target_into_itself_is_identity(tiny_model):
    """Source = the target prompt, source position = its last token x, t = s: every layer decodes like
    the unpatched target prompt."""
    target = TARGETS["repeat"]
    clean = tiny_model.tokenizer.decode(generate(tiny_model, target, None, max_new_tokens=3, fast=False).tokens[0],
                                       skip_special_tokens=True)
    q = make_query(prompt=target, e1="x", e3="zzz")
    df = patchscope_query(tiny_model, q, sources=("last",), max_new_tokens=3, prune=False)
    assert len(df) == tiny_model.n_layers and (df["s"] == df["t"]).all()
    assert (df["text"] == clean).all()


def test_pruning_keeps_hits(tiny_llama):
    clean = tiny_llama.tokenizer.decode(generate(tiny_llama, TARGETS["repeat"], None, max_new_tokens=2, fast=False).tokens[0])
    q = make_query(e3=clean.strip(" :") or "x")
    kw = dict(max_new_tokens=4, targets=("repeat",), target_layer=1)
    a = patchscope_query(tiny_llama, q, prune=True, **kw)
    b = patchscope_query(tiny_llama, q, prune=False, **kw)
    assert (a["t"] == 1).all() and len(a) == 2 * tiny_llama.n_layers
    pd.testing.assert_series_equal(a["e2_hit"], b["e2_hit"])
    pd.testing.assert_series_equal(a["e3_hit"], b["e3_hit"])


def test_patchscope_resolution():
    df = pd.DataFrame({"query_id": "q", "source": "last", "target": "repeat", "s": [0, 2, 4, 6],
                       "e2_hit": [False, True, True, False], "e3_hit": [False, False, False, False]})
    r = patchscope_resolution(df).iloc[0]
    assert r.first_e2_layer == 2 and pd.isna(r.first_e3_layer)

"""Decode steps shared among rows with one token history change no result.

- The units of a step follow each row's join block and history exactly (a hand-worked case).
- A reserved cache layer taking one unit's new column writes it into every member row and returns the units'
  rows.
- Generation with shared steps equals generation without them and the reference path, token for token, on
  tiny models of every family, with and without early stopping; the shared steps do run (fewer rows than
  the batch reach the model) wherever the cache allows them.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hopscope.engine import Site, add, generate, kv, replace, run_with_cache, scale
from hopscope.engine.history import plan_units

gen_module = sys.modules["hopscope.engine.generate"]
history_module = sys.modules["hopscope.engine.history"]
PROMPT = "The capital of the country where the Eiffel Tower stands is"


def test_units_follow_joins_and_histories():
    # rows 0, 1, 3 share a history, row 2 has its own; joins 3, 1, 2, 0 in a 4-block model
    u = plan_units([(5,), (5,), (7,), (5,)], [3, 1, 2, 0], 4)
    assert u.rep[0].tolist() == [0, 2, 3] and u.of_row[0].tolist() == [0, 0, 1, 2]  # row 3 alone from block 0
    assert u.grow[0] is None
    assert u.rep[1].tolist() == [0, 1, 2, 3] and u.grow[1].tolist() == [0, 0, 1, 2]  # row 1 splits off at 1
    assert u.rep[3].tolist() == [0, 1, 2, 3] and u.of_row[4].tolist() == [0, 1, 2, 3]
    assert u.work() == 3 + 4 * 4
    assert plan_units([(1,), (2,)], [3, 3], 4) is None  # no two rows share a history
    assert plan_units([(1,), (1,)], [0, 0], 4) is None  # both rows are changed from block 0


def test_clean_rows_of_one_history_share_every_block():
    u = plan_units([(4, 2)] * 3, [6, 6, 6], 6)
    assert [r.tolist() for r in u.rep] == [[0]] * 7 and u.of_row[-1].tolist() == [0, 0, 0]


def test_unit_update_writes_every_member_row():
    cache = kv.reserve(_cache(rows=3, n=2), 1)
    layer = cache.layers[0]
    layer.units = (torch.tensor([0, 0, 1]), torch.tensor([0, 2]))  # rows 0, 1 are unit 0; row 2 is unit 1
    new_k, new_v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    keys, values = layer.update(new_k, new_v)
    layer.units = None
    assert torch.equal(layer.keys[:, :, -1:], new_k[[0, 0, 1]]) and torch.equal(layer.values[:, :, -1:], new_v[[0, 0, 1]])
    assert torch.equal(keys, layer.keys[[0, 2]]) and torch.equal(values, layer.values[[0, 2]])


def _cache(rows: int, n: int):
    from transformers.cache_utils import DynamicCache
    g = torch.Generator().manual_seed(0)
    cache = DynamicCache()
    cache.update(torch.randn(rows, 2, n, 4, generator=g), torch.randn(rows, 2, n, 4, generator=g), 0)
    return cache


def _rows(lm):
    """Clean rows (one history by construction) and rows changed at every layer, some by nothing at all."""
    _, other = run_with_cache(lm, ["A cold wind blew over the hills"], components=("resid_pre", "resid_post"))
    rows = [[], [], []]
    for layer in range(lm.n_layers):
        rows.append([replace(Site(layer, "resid_post", -1), other["resid_post", layer][0, -1])])
        rows.append([replace(Site(layer, "resid_pre", -1), other["resid_pre", layer][0, -1])])  # changes block layer
        rows.append([scale(Site(layer, "mlp_out", -1), 1.0)])  # a no-op change: it keeps the clean history
        rows.append([add(Site(layer, "resid_pre", -1), torch.zeros(lm.d_model))])
    return rows


@pytest.mark.parametrize("stopping", [False, True])
def test_shared_steps_equal_plain_steps(tiny_model, monkeypatch, stopping):
    lm = tiny_model
    rows = _rows(lm)
    stop = (lambda row, toks: len(toks) >= 2 + row % 4) if stopping else None
    reached: list[int] = []
    real_call = history_module.call_model
    monkeypatch.setattr(history_module, "call_model",
                        lambda model, **kw: reached.append(kw["input_ids"].shape[0]) or real_call(model, **kw))
    got = generate(lm, PROMPT, rows, max_new_tokens=5, stop=stop)
    monkeypatch.setattr(gen_module, "SHARE_HISTORIES", False)
    plain = generate(lm, PROMPT, rows, max_new_tokens=5, stop=stop)
    ref = generate(lm, PROMPT, rows, max_new_tokens=5, stop=stop, fast=False)
    assert got.tokens == plain.tokens == ref.tokens
    if kv.sliding_window(lm) is None:  # sliding-window caches keep their own layers: no shared steps there
        assert reached and max(reached) < len(rows)  # the three clean rows and the no-op rows run as one


def test_shared_steps_run_one_unit_per_history_below_the_joins(tiny_llama):
    lm = tiny_llama
    top = lm.n_layers - 1
    _, other = run_with_cache(lm, ["A cold wind blew over the hills"], components=("resid_post",))
    rows = [[]] * 4 + [[replace(Site(top, "resid_post", -1), other["resid_post", top][0, -1])]] * 2
    seen: dict[int, list[int]] = {0: [], top: []}
    hooks = [lm.adapter.mlp[b].register_forward_pre_hook(lambda m, a, b=b: seen[b].append(a[0].shape[0]))
             for b in (0, top)]  # the rows each block's MLP runs
    try:
        got = generate(lm, PROMPT, rows, max_new_tokens=4).tokens
    finally:
        for h in hooks:
            h.remove()
    steps = range(1, 4)  # the decode steps after the first token, each fed the tokens so far
    below = [len({tuple(t[:k]) for t in got}) for k in steps]  # every row joins above block 0
    at_top = [len({tuple(t[:k]) for t in got[:4]}) + 2 for k in steps]  # the patched rows run alone there
    assert seen[0][-3:] == below and seen[top][-3:] == at_top
    assert below[0] < len(rows)

"""Memory injection on tiny models: tau = 0 changes nothing, the fast path equals the engine and a plain hook,
memory vectors are sums of distinct token rows, summaries and cells are what they claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hopscope.methods.injection import (
    Cell, MemoryBank, best_cell, clean_logits, inject, injection_rows, make_cells, memory_token_ids, summarize,
)
from hopscope.models import tiny

PROMPT = "The first president of the United States fought in the"


def _rows(lm, n_layers_rows=(0, 2, 1, 2)):
    v = MemoryBank(lm).vectors(["George Washington", "Paris"])
    layers = list(n_layers_rows)
    vecs = torch.stack([v[0] * 3, v[1] * 7, v[0] * 11, v[1] * 2])
    return layers, vecs


@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("method", ["shared", "engine"])
def test_tau_zero_changes_nothing(tiny_llama, positions, method):
    clean = clean_logits(tiny_llama, [PROMPT])
    got = inject(tiny_llama, PROMPT, [0, 1, 2], torch.zeros(3, tiny_llama.d_model), positions=positions, method=method)
    assert torch.allclose(got, clean.expand(3, -1), atol=1e-5)


def test_tau_zero_rows_have_zero_change(tiny_llama):
    bank = MemoryBank(tiny_llama)
    df = injection_rows(tiny_llama, PROMPT, "Revolutionary War", [Cell(1, "tau", 0.0, 0.0)],
                        [("gold", 0, "George Washington")], bank)
    assert np.allclose(df.p1, df.p0, rtol=1e-5) and np.allclose(df.dlogp, 0.0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_shared_path_equals_engine(family):
    lm = tiny(family)
    layers, vecs = _rows(lm)
    for positions in ("all", "last"):
        a = inject(lm, PROMPT, layers, vecs, positions=positions, method="shared", batch_size=3)
        b = inject(lm, PROMPT, layers, vecs, positions=positions, method="engine")
        assert torch.allclose(a, b, atol=1e-5), (family, positions)
    assert not torch.allclose(a, clean_logits(lm, [PROMPT]).expand(len(layers), -1), atol=1e-3)


def test_injection_equals_plain_hook(tiny_llama):
    lm = tiny_llama
    layers, vecs = _rows(lm)
    got = inject(lm, PROMPT, layers, vecs, positions="all")
    ids = torch.tensor([lm.to_ids(PROMPT)])
    for i, (layer, v) in enumerate(zip(layers, vecs)):
        def hook(module, args, output, v=v):
            return (output[0] + v, *output[1:])
        h = lm.adapter.attn[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                ref = lm.model(input_ids=ids).logits[0, -1]
        finally:
            h.remove()
        assert torch.allclose(got[i], ref, atol=1e-5)


def test_last_position_injection_only_moves_the_last_token(tiny_llama):
    lm = tiny_llama
    layers, vecs = _rows(lm)
    allpos = inject(lm, PROMPT, layers, vecs, positions="all")
    last = inject(lm, PROMPT, layers, vecs, positions="last")
    assert not torch.allclose(allpos, last, atol=1e-4)
    one_token = "Hello"
    assert len(lm.to_ids(one_token)) == 1  # with a one-token prompt both are the same injection
    assert torch.allclose(inject(lm, one_token, layers, vecs, positions="all"),
                          inject(lm, one_token, layers, vecs, positions="last"), atol=1e-5)


def test_memory_vector_is_sum_of_distinct_token_rows(tiny_llama):
    lm = tiny_llama
    ids = memory_token_ids(lm, "George Washington")
    assert len(ids) == len(set(ids)) >= 2
    w = lm.adapter.unembed_weight()
    assert torch.allclose(MemoryBank(lm).vector("George Washington"), w[ids].sum(0))
    twice = memory_token_ids(lm, "Paris Paris")
    assert twice == memory_token_ids(lm, "Paris")
    assert torch.allclose(MemoryBank(lm, "embed").vector("Paris Paris"), lm.adapter.embed.weight[twice].sum(0))


def test_attn_memory_is_the_memory_runs_attention_output(tiny_llama):
    from hopscope.engine import run_with_cache

    lm = tiny_llama
    _, acts = run_with_cache(lm, [" Paris"], components=("attn_out",))
    assert torch.allclose(MemoryBank(lm, "attn").vector("Paris", 2), acts["attn_out", 2][0, -1], atol=1e-6)


@pytest.mark.parametrize("memory", ["", "   "])
def test_empty_memory_is_a_clear_error(tiny_llama, memory):
    with pytest.raises(ValueError, match="memory"):
        MemoryBank(tiny_llama).vector(memory)


def test_bad_arguments(tiny_llama):
    v = torch.zeros(1, tiny_llama.d_model)
    with pytest.raises(ValueError, match="positions"):
        inject(tiny_llama, PROMPT, [0], v, positions="first")
    with pytest.raises(ValueError, match="out of range"):
        inject(tiny_llama, PROMPT, [7], v)
    with pytest.raises(ValueError, match="vectors"):
        inject(tiny_llama, PROMPT, [0, 1], v)
    with pytest.raises(ValueError, match="source"):
        MemoryBank(tiny_llama, "hidden")


def test_make_cells_scales_relative_steps():
    norms = np.array([10.0, 20.0, 40.0])
    cells = make_cells([0, 2], taus=(1.0, 2.0), rel=(0.5,), resid_norms=norms, ref_norms=4.0)
    assert [(c.layer, c.grid, c.step) for c in cells] == [(0, "tau", 1.0), (0, "tau", 2.0), (2, "tau", 1.0),
                                                         (2, "tau", 2.0), (0, "rel", 0.5), (2, "rel", 0.5)]
    assert cells[-2].tau == pytest.approx(0.5 * 10 / 4) and cells[-1].tau == pytest.approx(0.5 * 40 / 4)
    with pytest.raises(ValueError):
        make_cells([0], rel=(1.0,))


def test_injection_rows_one_row_per_cell_and_memory(tiny_llama):
    cells = [Cell(0, "tau", 1.0, 1.0), Cell(2, "tau", 4.0, 4.0), Cell(1, "rel", 0.5, 2.5)]
    mems = [("gold", 0, "George Washington"), ("random", 0, "kettle"), ("random", 1, "orbit lamp")]
    df = injection_rows(tiny_llama, PROMPT, "Revolutionary War", cells, mems, MemoryBank(tiny_llama))
    assert len(df) == 9 and set(df.memory_kind) == {"gold", "random"}
    assert np.allclose(df.change_pct, 100 * (df.p1 - df.p0) / df.p0)
    assert np.allclose(df.dlogp, np.log(df.p1) - np.log(df.p0), atol=1e-6)


def test_summarize_and_best_cell():
    rows = pd.DataFrame({
        "qid": ["a", "b", "c", "a", "b", "c"], "prompt_kind": "obscure", "grid": "tau", "layer": [1, 1, 1, 2, 2, 2],
        "step": 1.0, "tau": 1.0, "memory_kind": "gold", "p0": [0.1, 0.2, 0.001] * 2,
        "p1": [0.2, 0.1, 0.01, 0.1, 0.2, 0.002]})
    rows["change_pct"] = 100 * (rows.p1 - rows.p0) / rows.p0
    rows["dlogp"] = np.log(rows.p1 / rows.p0)
    s = summarize(rows)
    one = s[s.layer == 1].iloc[0]
    assert one.n == 3 and one.share_improved == pytest.approx(2 / 3)
    assert one.mean_pct == pytest.approx((100 - 50 + 900) / 3) and one.median_pct == pytest.approx(100)
    assert best_cell(s, "mean_dlogp").layer == 1
    assert best_cell(s, "share_improved").layer == 1
    with pytest.raises(ValueError):
        best_cell(s, "max_pct")


def test_settings_checks_and_auto_positions(tiny_llama):
    from hopscope.methods.injection_controls import InjectionPair
    from hopscope.methods.injection_study import InjectionSettings, check_settings, resolve_positions

    short = [InjectionPair("a", PROMPT, "George Washington fought in the", "George Washington", "Revolutionary War")]
    long = [InjectionPair("b", " ".join([PROMPT] * 4), "x", "George Washington", "Revolutionary War")]
    quick = InjectionSettings.quick()
    assert quick.positions == "auto"
    assert resolve_positions(tiny_llama, short, quick).positions == "all"
    assert resolve_positions(tiny_llama, long, quick).positions == "last"
    assert resolve_positions(tiny_llama, long, InjectionSettings()).positions == "all"
    for bad in (dict(positions="first"), dict(criterion="max_pct"), dict(source="hidden"), dict(method="fast")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_settings(InjectionSettings(**bad))

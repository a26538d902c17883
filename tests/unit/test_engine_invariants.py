"""The engine's exact invariants, on tiny models of every family (``TINY_FAMILIES``).

The reference for "equals HF" is a separate HF model with the same weights, loaded with transformers'
default attention for the family (SDPA; eager for Gemma 2) and never touched by hopscope (``tiny_hf``);
attention patterns are compared with HF's eager attention weights (``tiny_hf_eager``).
"""

from __future__ import annotations

import torch

from hopscope.engine import (
    Site, add, cache, generate, knockout, mean_ablate, replace, run, run_last_position, run_with_cache, scale,
    zero_ablate,
)

# Two prompts of different lengths (so batches are padded), both longer than the tiny sliding windows.
PROMPTS = ["The capital of France is", "Hello world, my name is Ada and I live in"]
TOL = 1e-5


def _hf(model, lm, prompts, **kwargs):
    """HF's own forward on the same left-padded batch the engine runs."""
    b = lm.encode(prompts)
    with torch.no_grad():
        return b, model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                        **kwargs)


def _real(x: torch.Tensor, batch, row: int) -> torch.Tensor:
    """Row ``row`` of ``[b, seq, ...]`` without its padding columns."""
    return x[row, batch.offsets[row]:]


def _resid_components(lm):
    comps = ["resid_pre", "resid_post", "attn_out", "mlp_out"]
    return comps if lm.adapter.parallel_residual else comps + ["resid_mid"]


def test_no_intervention_equals_hf_forward(tiny_model, tiny_hf):
    lm = tiny_model
    for prompt in PROMPTS:  # alone, no padding
        ids = torch.tensor([lm.to_ids(prompt)])
        with torch.no_grad():
            ref = tiny_hf(input_ids=ids).logits[0]
        assert (run(lm, [prompt]).logits[0] - ref).abs().max().item() <= TOL, prompt
    batch, ref = _hf(tiny_hf, lm, PROMPTS)  # batched, left-padded
    got = run(lm, PROMPTS).logits
    for row in range(len(PROMPTS)):
        assert (_real(got, batch, row) - _real(ref.logits, batch, row)).abs().max().item() <= TOL


def test_attention_pattern_equals_hf_eager_weights(tiny_model, tiny_hf_eager):
    lm = tiny_model
    batch, ref = _hf(tiny_hf_eager, lm, PROMPTS, output_attentions=True)
    _, acts = run_with_cache(lm, PROMPTS, components=("attn_pattern",))
    for layer in range(lm.n_layers):
        got, want = acts["attn_pattern", layer], ref.attentions[layer]
        assert got.shape == want.shape
        for row in range(len(PROMPTS)):
            o = batch.offsets[row]
            diff = (got[row, :, o:, o:] - want[row, :, o:, o:]).abs().max().item()
            assert diff <= 1e-6, (layer, row, diff)


def test_replace_with_own_value_changes_nothing(tiny_model):
    lm = tiny_model
    base = run(lm, PROMPTS).logits
    for comp in _resid_components(lm):
        for layer in range(lm.n_layers):
            site = Site(layer, comp, None)
            read = run(lm, PROMPTS, [[cache(site)], [cache(site)]])
            rows = [[replace(site, read.cache[r][site])] for r in range(2)]
            assert torch.equal(run(lm, PROMPTS, rows).logits, base), (comp, layer)


def test_head_replace_with_own_value_changes_nothing(tiny_model):
    lm = tiny_model
    base = run(lm, PROMPTS, last_only=True).logits
    site = Site(1, "head_out", -1, head=1)
    read = run(lm, PROMPTS, [[cache(site)], [cache(site)]], last_only=True)
    rows = [[replace(site, read.cache[r][site])] for r in range(2)]
    assert (run(lm, PROMPTS, rows, last_only=True).logits - base).abs().max().item() <= TOL


def test_head_contributions_sum_to_attn_out(tiny_model):
    lm = tiny_model
    _, acts = run_with_cache(lm, PROMPTS, components=("head_out", "attn_out"))
    for layer in range(lm.n_layers):
        total = acts["head_out", layer].sum(2)
        bias = lm.adapter.out_proj_bias(layer)
        if bias is not None:
            total = total + bias
        assert (total - acts["attn_out", layer]).abs().max().item() <= TOL


def test_attention_pattern_is_causal_distribution(tiny_model):
    lm = tiny_model
    _, acts = run_with_cache(lm, [PROMPTS[0]], components=("attn_pattern",))
    pat = acts["attn_pattern", 0][0]  # [H, q, k]
    assert pat.shape == (lm.n_heads, pat.shape[1], pat.shape[1])
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)
    assert pat.triu(1).abs().max().item() == 0.0


def _random_patches(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for comp in _resid_components(lm):
        layer = int(torch.randint(0, lm.n_layers, (), generator=g))
        rows.append([add(Site(layer, comp, -1), torch.randn(lm.d_model, generator=g))])
    rows.append([replace(Site(lm.n_layers - 1, "resid_pre", -1), torch.randn(lm.d_model, generator=g))])
    rows.append([add(Site(1, "head_out", -1, head=2), torch.randn(lm.d_model, generator=g))])
    rows.append([scale(Site(0, "head_out", -1, head=0), 0.0)])
    rows.append([knockout(1, keys=(0, 3))])
    rows.append([knockout(0, keys=(-3, -1)), knockout(2, keys=[-2])])  # keys inside a 3-token window
    rows.append([])
    return rows


def test_fast_path_equals_naive_logits(tiny_model):
    lm = tiny_model
    rows = _random_patches(lm)
    fast = run_last_position(lm, PROMPTS[0], rows).logits
    naive = run(lm, [PROMPTS[0]] * len(rows), rows).logits[:, -1]  # full logits: every row runs every position
    assert (fast - naive).abs().max().item() <= TOL
    # the patches do change the output, so the comparison is not vacuous
    assert (naive[:-1] - naive[-1]).abs().amax(-1).min().item() > 1e-4


def test_fast_path_equals_naive_generation(tiny_model):
    lm = tiny_model
    rows = _random_patches(lm, seed=1)
    fast = generate(lm, PROMPTS[0], rows, max_new_tokens=5).as_tensor()
    naive = generate(lm, PROMPTS[0], rows, max_new_tokens=5, fast=False).as_tensor()
    assert fast.shape == (len(rows), 5)
    assert torch.equal(fast, naive)


def test_knockout_of_nothing_equals_no_knockout(tiny_model):
    lm = tiny_model
    base = run(lm, PROMPTS)
    got = run(lm, PROMPTS, [[knockout(l, keys=[]) for l in range(lm.n_layers)]] * 2).logits
    for row in range(len(PROMPTS)):
        assert (_real(got, base.batch, row) - _real(base.logits, base.batch, row)).abs().max().item() <= TOL


def test_knockout_of_all_but_first_changes_output(tiny_model):
    lm = tiny_model
    base = run(lm, PROMPTS)
    rows = [[knockout(l, keys=(1, -1), query=-1) for l in range(lm.n_layers)]] * 2
    got = run(lm, PROMPTS, rows).logits
    assert (got[:, -1] - base.logits[:, -1]).abs().max().item() > 1e-3
    # earlier positions are untouched: only the last query was knocked out
    for row in range(len(PROMPTS)):
        assert (_real(got, base.batch, row)[:-1] - _real(base.logits, base.batch, row)[:-1]).abs().max().item() <= TOL


def test_mean_ablation_over_batch_keeps_batch_mean(tiny_model):
    lm = tiny_model
    site = Site(1, "resid_post", -1)
    _, clean = run_with_cache(lm, PROMPTS, components=("resid_post",))
    _, ablated = run_with_cache(lm, PROMPTS, components=("resid_post",), interventions=[[mean_ablate(site)]] * 2)
    clean_mean = clean["resid_post", 1][:, -1].mean(0)
    assert (ablated["resid_post", 1][:, -1].mean(0) - clean_mean).abs().max().item() <= TOL
    assert (ablated["resid_post", 1][:, -1] - clean_mean).abs().max().item() <= TOL


def test_zero_ablating_every_head_zeroes_attn_out(tiny_model):
    lm = tiny_model
    rows = [[zero_ablate(Site(0, "head_out", None, head=h)) for h in range(lm.n_heads)]]
    _, acts = run_with_cache(lm, [PROMPTS[0]], components=("attn_out",), interventions=rows)
    bias = lm.adapter.out_proj_bias(0)
    expected = torch.zeros(lm.d_model) if bias is None else bias.detach()
    assert (acts["attn_out", 0][0] - expected).abs().max().item() <= TOL


def test_scale_one_changes_nothing_and_tau_zero_add_changes_nothing(tiny_model):
    lm = tiny_model
    base = run(lm, PROMPTS).logits
    rows = [[scale(Site(1, "mlp_out", None), 1.0), add(Site(0, "attn_out", None), torch.zeros(lm.d_model))]] * 2
    assert torch.equal(run(lm, PROMPTS, rows).logits, base)


def test_padding_does_not_change_a_row(tiny_model):
    lm = tiny_model
    short = min(range(len(PROMPTS)), key=lambda i: len(lm.to_ids(PROMPTS[i])))
    assert len({len(lm.to_ids(p)) for p in PROMPTS}) == 2  # the short prompt really is padded
    alone = run(lm, [PROMPTS[short]]).logits[0, -1]
    batched = run(lm, PROMPTS).logits[short, -1]
    assert (alone - batched).abs().max().item() <= TOL

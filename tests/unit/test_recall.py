"""Factual-recall analyses on tiny models: exact decompositions, no-op ablations, exact last-layer replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hopscope.engine import Site, run, run_last_position, zero_ablate
from hopscope.methods.recall import (
    EvalSet, LastLayerState, Mitigation, collect, decompose_mlp, evaluate_mitigations, final_layer_effects,
    head_ablation, head_frame, head_summary, logit_diff, mlp_spec, norm_spec, prepare,
)
from hopscope.methods.recall.mlp_decomposition import input_components, least_squares
from hopscope.methods.recall.suppression import final_logits, generic_text, neuron_dla

QUERIES = [
    {"qid": "fr", "prompt": "The capital of Germany is Berlin.\nThe capital of France is", "answer": "Paris",
     "subject": "France"},
    {"qid": "jp", "prompt": "The capital of Italy is Rome.\nThe capital of Japan is", "answer": "Tokyo",
     "subject": "Japan"},
    {"qid": "ke", "prompt": "The capital of Spain is Madrid.\nThe capital of Kenya is", "answer": "Nairobi",
     "subject": "Kenya"},
    {"qid": "pe", "prompt": "The capital of Chile is Santiago.\nThe capital of Peru is", "answer": "Lima",
     "subject": "Peru"},
]
FAMILIES = ("llama", "gpt2", "gpt_neox")


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    from hopscope.models import tiny

    lm = tiny(request.param)
    items = prepare(lm, QUERIES)
    return lm, items, collect(lm, items, batch_size=3)


def test_subject_span_is_the_subject_tokens(setup):
    lm, items, _ = setup
    for it in items:
        a, b = it.subject_tokens
        assert "".join(lm.str_tokens(it.prompt)[a:b]).strip() == it.subject


def test_head_dla_plus_rest_sums_to_the_logit_difference(setup):
    lm, _, lp = setup
    rest = lp.rest_dla()
    total = lp.head_dla().sum((1, 2)) + rest["embed"] + rest["attn_bias"].sum(1) + rest["mlp"].sum(1) + rest["constant"]
    observed = lp.logits.gather(-1, lp.answer_ids[:, None])[:, 0] - lp.logits.mean(-1)
    torch.testing.assert_close(total, observed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp.logit_diff, observed)


def test_components_rebuild_the_final_residual(setup):
    lm, _, lp = setup
    rebuilt = lp.embed + lp.heads.sum((1, 2)) + lp.attn_bias.sum(0) + lp.mlp.sum(1)
    torch.testing.assert_close(rebuilt, lp.resid_final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp.heads.sum(2) + lp.attn_bias, lp.attn, atol=1e-5, rtol=1e-5)


def test_norm_and_mlp_specs_match_the_modules(setup):
    lm, _, lp = setup
    spec = norm_spec(lm.adapter.final_norm)
    with torch.no_grad():
        torch.testing.assert_close(spec(lp.resid_final), lm.adapter.final_norm(lp.resid_final), atol=1e-5, rtol=1e-5)
    for layer in range(lm.n_layers):
        torch.testing.assert_close(mlp_spec(lm, layer)(lp.mlp_in[:, layer]), lp.mlp[:, layer], atol=1e-5, rtol=1e-5)


def test_linearised_mlp_parts_sum_exactly_to_the_mlp_output(setup):
    lm, _, lp = setup
    spec = mlp_spec(lm, 1)
    x = lp.mlp_in[:, 1]
    comps = torch.stack([0.7 * x, torch.randn_like(x), -torch.randn_like(x)], 1)
    comps[:, 0] = x - comps[:, 1:].sum(1)  # arbitrary components that sum to x
    parts, const = spec.linear_parts(x, comps)
    torch.testing.assert_close(parts.sum(1) + const, lp.mlp[:, 1], atol=1e-5, rtol=1e-5)
    parts2, _ = spec.linear_parts(x, 2.0 * comps)  # linear in the components (pattern frozen at x)
    torch.testing.assert_close(parts2, 2.0 * parts, atol=1e-5, rtol=1e-5)


def test_mlp_decomposition_is_exact_and_least_squares_is_orthogonal(setup):
    lm, _, lp = setup
    layer = lm.n_layers - 1
    names, comps = input_components(lp, layer, [(0, 1)], parallel=lm.adapter.parallel_residual)
    torch.testing.assert_close(comps.sum(1), lp.mlp_in[:, layer], atol=1e-5, rtol=1e-5)
    df = decompose_mlp(lm, lp, layer, [(0, 1)])
    assert df["sum_error"].max() < 1e-5
    assert set(names) | {"remainder"} <= set(df["component"]) <= set(names) | {"constant", "remainder"}
    heads = comps[:, [j for j, n in enumerate(names) if n.startswith("L") and "bias" not in n]]
    coef, rem = least_squares(lp.mlp[:, layer], heads)
    normal = torch.einsum("nkd,nd->nk", heads, rem)  # remainder is orthogonal to every head direction
    assert normal.abs().max() < 1e-3 * lp.mlp[:, layer].norm()


def test_head_table_metrics(setup):
    lm, _, lp = setup
    per = head_frame(lp)
    assert len(per) == lp.n * lm.n_layers * lm.n_heads
    assert per["attn_subject"].between(0, 1 + 1e-6).all()
    summary = head_summary(per)
    row = summary[(summary["layer"] == 1) & (summary["head"] == 2)].iloc[0]
    g = per[(per["layer"] == 1) & (per["head"] == 2)]
    assert row["corr_attn_dot"] == pytest.approx(np.corrcoef(g["attn_subject"], g["subject_dot"])[0, 1], abs=1e-6)
    assert row["dla"] == pytest.approx(g["dla"].mean())


def test_ablating_nothing_changes_nothing(setup):
    lm, _, lp = setup
    heads = [(0, 0), (1, 3), (lm.n_layers - 1, 1)]
    df = head_ablation(lm, lp, heads, means=lp.heads.clone())  # replace each head by its own output
    assert df[["drop_total", "drop_path", "drop_direct"]].abs().max().max() < 1e-4
    logits = run_last_position(lm, lp.items[0].prompt, [[]]).logits
    torch.testing.assert_close(logits[0], lp.logits[0], atol=1e-4, rtol=1e-4)


def test_mean_ablation_of_a_last_layer_head_has_equal_total_and_path_effects(setup):
    lm, _, lp = setup
    df = head_ablation(lm, lp, [(lm.n_layers - 1, 0), (0, 2)])
    last = df[df["layer"] == lm.n_layers - 1]
    np.testing.assert_allclose(last["drop_total"], last["drop_path"], atol=1e-5)
    assert df["drop_total"].abs().max() > 0


def test_final_layer_effects_equal_engine_zero_ablation(setup):
    lm, items, lp = setup
    L = lm.n_layers - 1
    eff = final_layer_effects(lm, lp, neurons=[1, 5])
    rows = [[zero_ablate(Site(L, "attn_out", -1)), zero_ablate(Site(L, "mlp_out", -1))],
            [zero_ablate(Site(L, "attn_out", -1))], [zero_ablate(Site(L, "mlp_out", -1))],
            [zero_ablate(Site(L, "head_out", -1, head=2))]]
    it = items[1]
    logits = run_last_position(lm, it.prompt, [[]] + rows).logits
    ld = logit_diff(logits, [it.answer_id] * len(logits))
    got = eff[eff["qid"] == it.qid].set_index("component")["effect_logit_diff"]
    for j, name in enumerate(["block", "attn", "mlp", "head 2"], start=1):
        assert got[name] == pytest.approx(float(ld[0] - ld[j]), abs=1e-4)


def test_neuron_dla_sums_to_the_mlp_dla(setup):
    lm, _, lp = setup
    dla, _ = neuron_dla(lm, lp)
    spec = mlp_spec(lm, lm.n_layers - 1)
    b = (lp.u @ spec.b_out) if spec.b_out is not None else 0.0
    torch.testing.assert_close(dla.sum(-1) + b, lp.rest_dla()["mlp"][:, -1], atol=1e-5, rtol=1e-5)


def test_mitigation_replay_equals_the_hooked_model(setup):
    lm, items, lp = setup
    L = lm.n_layers - 1
    gen = torch.Generator().manual_seed(0)
    mits = [Mitigation("heads", L, heads=[0, 2], factor=0.3), Mitigation("neurons", L, neurons=[3, 4, 9]),
            Mitigation("project", L, target="mlp", direction=torch.randn(lm.d_model, generator=gen)),
            Mitigation("project", L, target="attn", direction=torch.randn(lm.d_model, generator=gen))]
    text = EvalSet.from_text(lm, generic_text(2000)[0], window=12, n_windows=2)
    state = LastLayerState.from_last_position(lp)
    prompts = [it.prompt for it in items]
    valid = text.mask.bool()
    for mit in mits:
        with mit.applied(lm):
            ref = run(lm, prompts, last_only=True).logits
            with torch.no_grad():
                full = lm.model(input_ids=text.input_ids, attention_mask=text.mask,
                                position_ids=(text.mask.cumsum(-1) - 1).clamp(min=0)).logits
        torch.testing.assert_close(final_logits(lm, mit.replay(lm, state)), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(final_logits(lm, mit.replay(lm, text.state))[valid], full[valid].float(),
                                   atol=1e-4, rtol=1e-4)


def test_a_mitigation_that_keeps_everything_changes_nothing(setup):
    lm, items, lp = setup
    L = lm.n_layers - 1
    sets = [EvalSet.from_last_position("held_out", lp, [0, 1]), EvalSet.from_items(lm, "other:x", items[2:])]
    ev = evaluate_mitigations(lm, [Mitigation("heads", L, heads=[0, 1], factor=1.0),
                                   Mitigation("neurons", L, neurons=[0, 7], factor=1.0)], sets)
    assert ev["change"].abs().max() < 1e-5
    assert set(ev["metric"]) == {"prob", "accuracy", "logit_diff"}

"""Factual-recall parts on tiny models: exact decompositions, self-patches that change nothing, the fast path
against the naive one, the last-layer replay against the engine, mitigations as engine interventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hopscope.engine import Site, prompt_pass, run, run_last_position, zero_ablate
from hopscope.methods.recall import Mitigation
from hopscope.methods.recall import heads as H
from hopscope.methods.recall.collect import answer_logit_diff, collect
from hopscope.methods.recall.linearize import mlp_spec, norm_spec
from hopscope.methods.recall.mitigation import generic_text, score_prompts, score_text, text_windows
from hopscope.methods.recall.mlp_decomposition import decompose_mlp, input_components, least_squares
from hopscope.methods.recall.queries import design, items, source_pairs, split_halves
from hopscope.methods.recall.suppression import LastLayerState, final_layer_effects, final_logits, neuron_dla

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
FAMILIES = ("llama", "gpt2", "gpt_neox", "opt", "qwen2")


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    from hopscope.models import tiny

    lm = tiny(request.param)
    its = items(lm, design(QUERIES, {}, seed=0))
    return lm, its, collect(lm, its, batch_size=3)


# ---- data ----------------------------------------------------------------------------------------------------
def test_subject_span_is_the_subject_tokens(setup):
    lm, its, _ = setup
    for it in its:
        a, b = it.subject_tokens
        assert "".join(lm.str_tokens(it.prompt)[a:b]).strip() == it.subject


def test_sources_are_other_subjects_and_halves_are_seeded():
    subjects = ["a", "b", "a", "c", "b", "d", "e"]
    src = source_pairs(subjects, seed=3)
    assert all(subjects[j] != subjects[i] for i, j in enumerate(src))
    assert src == source_pairs(subjects, seed=3) and src != source_pairs(subjects, seed=4)
    roles = split_halves(7, seed=0)
    assert roles.count("train") == 3 and roles.count("test") == 4 and roles == split_halves(7, seed=0)
    rows = design(QUERIES, {"x": QUERIES[:1]}, seed=0)
    assert [r["set"] for r in rows] == ["main"] * 4 + ["other:x"]
    assert rows[-1]["qid"] == "other:x:fr"
    with pytest.raises(ValueError, match="does not occur"):
        design([dict(QUERIES[0], subject="Peru")] + QUERIES[1:], {}, seed=0)
    with pytest.raises(ValueError, match="occurs twice"):
        design(QUERIES[:3] + QUERIES[:1], {}, seed=0)


# ---- exact decompositions ------------------------------------------------------------------------------------
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
    gen = torch.Generator().manual_seed(0)
    comps = torch.stack([x, torch.randn(x.shape, generator=gen), -torch.randn(x.shape, generator=gen)], 1)
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
    normal = torch.einsum("nkd,nd->nk", heads, rem)  # the remainder is orthogonal to every head direction
    assert normal.abs().max() < 1e-3 * lp.mlp[:, layer].norm()
    one = df[(df["qid"] == "fr") & (df["component"] == "L0H1")].iloc[0]  # a component's part, by hand
    j = names.index("L0H1")
    parts, _ = mlp_spec(lm, layer).linear_parts(lp.mlp_in[:, layer], comps)
    assert one["part_dla"] == pytest.approx(float(parts[0, j] @ lp.u[0]), abs=1e-5)


def test_least_squares_recovers_known_coefficients():
    gen = torch.Generator().manual_seed(1)
    dirs = torch.randn(3, 2, 16, generator=gen)
    coef = torch.tensor([[2.0, -1.0], [0.5, 0.0], [-3.0, 4.0]])
    out = torch.einsum("nk,nkd->nd", coef, dirs)
    got, rem = least_squares(out, dirs)
    torch.testing.assert_close(got, coef, atol=1e-5, rtol=1e-5)
    assert rem.abs().max() < 1e-5


# ---- heads ---------------------------------------------------------------------------------------------------
def test_head_table_metrics(setup):
    lm, _, lp = setup
    per = H.head_frame(lp)
    assert len(per) == lp.n * lm.n_layers * lm.n_heads
    assert per["attn_subject"].between(0, 1 + 1e-6).all()
    summary = H.head_summary(per)
    row = summary[(summary["layer"] == 1) & (summary["head"] == 2)].iloc[0]
    g = per[(per["layer"] == 1) & (per["head"] == 2)]
    assert row["corr_attn_dot"] == pytest.approx(np.corrcoef(g["attn_subject"], g["subject_dot"])[0, 1], abs=1e-6)
    assert row["dla"] == pytest.approx(g["dla"].mean())


def test_patching_a_head_with_its_own_output_changes_nothing(setup):
    lm, _, lp = setup
    heads = [(0, 0), (1, 3), (lm.n_layers - 1, 1)]
    df = H.path_patching(lm, lp, heads, lp.heads.clone())
    assert df[["drop_total", "drop_path", "drop_direct"]].abs().max().max() < 1e-4
    logits = run_last_position(lm, lp.items[0].prompt, [[]]).logits
    torch.testing.assert_close(logits[0], lp.logits[0], atol=1e-4, rtol=1e-4)


def test_path_patching_equals_the_naive_full_run(setup):
    lm, its, lp = setup
    source = lp.heads.roll(1, 0)  # each prompt patched with the next prompt's head outputs
    heads = [(0, 2), (1, 1)]
    df = H.path_patching(lm, lp, heads, source)
    i = 2
    rows, labels = H.patch_rows(lp, i, heads, source[i])
    naive = run(lm, [its[i].prompt] * (len(rows) + 1), [[]] + rows).logits[:, -1]  # every block, every position
    ld = answer_logit_diff(naive, [its[i].answer_id] * len(naive))
    got = df[df["qid"] == its[i].qid].set_index(["layer", "head"])
    for (hid, kind), d in zip(labels, (ld[0] - ld[1:]).tolist()):
        assert got.loc[hid, f"drop_{kind}"] == pytest.approx(d, abs=1e-4)
    assert df["drop_total"].abs().max() > 0


def test_last_layer_heads_have_equal_path_and_total_effects(setup):
    lm, _, lp = setup
    df = H.path_patching(lm, lp, [(lm.n_layers - 1, 0)], lp.heads.roll(1, 0))
    np.testing.assert_allclose(df["drop_total"], df["drop_path"], atol=1e-5)


def test_concentration_on_a_hand_built_table():
    pat = pd.DataFrame({"qid": ["a"] * 4 + ["b"] * 4, "layer": [0, 0, 1, 1] * 2, "head": [0, 1, 0, 1] * 2,
                        "drop_path": [3.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]})
    c = H.concentration(pat, [(0, 0)]).set_index("qid")
    assert c.loc["a", "top_share"] == pytest.approx(0.75) and c.loc["a", "random_share"] == pytest.approx(0.125)
    assert c.loc["b", "top_share"] == pytest.approx(0.25) and c.loc["b", "random_share"] == pytest.approx(0.25)
    assert H.top_heads(pat, ["a", "b"], 1) == [(0, 0)]


# ---- final layer -----------------------------------------------------------------------------------------------
def test_final_layer_replay_equals_engine_zero_ablation(setup):
    lm, its, lp = setup
    L = lm.n_layers - 1
    eff = final_layer_effects(lm, lp)
    rows = [[zero_ablate(Site(L, "attn_out", -1)), zero_ablate(Site(L, "mlp_out", -1))],
            [zero_ablate(Site(L, "attn_out", -1))], [zero_ablate(Site(L, "mlp_out", -1))],
            [zero_ablate(Site(L, "head_out", -1, head=2))]]
    for it in its[1:3]:
        logits = run_last_position(lm, it.prompt, [[]] + rows).logits
        ld = answer_logit_diff(logits, [it.answer_id] * len(logits))
        got = eff[eff["qid"] == it.qid].set_index("component")["effect_logit_diff"]
        for j, name in enumerate(["block", "attn", "mlp", "head 2"], start=1):
            assert got[name] == pytest.approx(float(ld[0] - ld[j]), abs=1e-4)


def test_neuron_dla_sums_to_the_mlp_dla(setup):
    lm, _, lp = setup
    dla = neuron_dla(lm, lp)
    spec = mlp_spec(lm, lm.n_layers - 1)
    b = (lp.u @ spec.b_out) if spec.b_out is not None else 0.0
    torch.testing.assert_close(dla.sum(-1) + b, lp.rest_dla()["mlp"][:, -1], atol=1e-5, rtol=1e-5)


# ---- mitigations -----------------------------------------------------------------------------------------------
def _mitigations(lm):
    L = lm.n_layers - 1
    gen = torch.Generator().manual_seed(0)
    return [Mitigation("heads", L, heads=[0, 2], factor=0.3), Mitigation("neurons", L, neurons=[3, 4, 9]),
            Mitigation("project", L, target="mlp", direction=torch.randn(lm.d_model, generator=gen)),
            Mitigation("project", L, target="attn", direction=torch.randn(lm.d_model, generator=gen))]


def _replay(lm, m: Mitigation, st: LastLayerState) -> torch.Tensor:
    """The exact last-layer replay of a mitigation, by hand."""
    if m.kind == "heads":
        return st.replay(lm, -(1.0 - m.factor) * st.heads[:, m.heads].sum(1))
    if m.kind == "neurons":
        spec = mlp_spec(lm, lm.n_layers - 1)
        cols = list(m.neurons)
        return st.replay(lm, None,
                         lambda x, o: o - (1.0 - m.factor) * (spec.hidden(x)[:, cols] @ spec.w_out[:, cols].T))
    d = m.direction / m.direction.norm()
    if m.target == "mlp":
        return st.replay(lm, None, lambda x, o: o - (o @ d)[:, None] * d)
    return st.replay(lm, -(st.attn @ d)[:, None] * d)


def test_a_mitigation_through_the_engine_equals_its_exact_last_layer_replay(setup):
    lm, its, lp = setup
    st = LastLayerState.of(lp)
    prompts = [it.prompt for it in its]
    for m in _mitigations(lm):
        engine = run(lm, prompts, [m.interventions(lm)] * len(prompts), last_only=True).logits
        torch.testing.assert_close(final_logits(lm, _replay(lm, m, st)), engine, atol=1e-4, rtol=1e-4)
        last_only = prompt_pass(lm, prompts[0], [m.interventions(lm, positions=-1)]).logits
        torch.testing.assert_close(last_only[0], engine[0], atol=1e-4, rtol=1e-4)


def _hooked(lm, m: Mitigation):
    """The old hook-installed mitigation (recall/suppression.py, Mitigation.applied), rebuilt by hand."""
    ad = lm.adapter
    if m.kind == "heads":
        dh = lm.d_head
        cols = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in m.heads])

        def pre(module, args):
            z = args[0].clone()
            z[..., cols] = z[..., cols] * m.factor
            return (z, *args[1:])
        return ad.out_proj[m.layer].register_forward_pre_hook(pre)
    if m.kind == "neurons":
        idx = torch.tensor(m.neurons)

        def pre(module, args):
            h = args[0].clone()
            h[..., idx] = h[..., idx] * m.factor
            return (h, *args[1:])
        return ad.mlp_down[m.layer].register_forward_pre_hook(pre)
    d = m.direction / m.direction.norm()
    module = (ad.mlp_to_resid if m.target == "mlp" else ad.attn_to_resid)[m.layer]

    def post(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = out - (out @ d)[..., None] * d
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return module.register_forward_hook(post)


def test_mitigation_interventions_equal_the_old_hook_installed_edits(setup):
    lm, its, _ = setup
    text = text_windows(lm, generic_text(3000)[0], window=12, n=1)[0]
    ids = torch.tensor([lm.to_ids(text)])
    for m in _mitigations(lm):
        engine = run(lm, [text], [m.interventions(lm)]).logits[0]  # every position
        handle = _hooked(lm, m)
        try:
            with torch.no_grad():
                ref = lm.model(input_ids=ids).logits[0].float()
        finally:
            handle.remove()
        torch.testing.assert_close(engine, ref, atol=1e-4, rtol=1e-4)


def test_a_mitigation_that_keeps_everything_changes_nothing_and_round_trips(setup):
    lm, its, _ = setup
    L = lm.n_layers - 1
    keep = [Mitigation("heads", L, heads=[0, 1], factor=1.0), Mitigation("neurons", L, neurons=[0, 7], factor=1.0)]
    s = score_prompts(lm, its, keep, batch_prompts=3)
    wide = s.pivot(index="qid", columns="mitigation", values="prob")
    assert (wide.sub(wide["none"], axis=0).abs().max().max()) < 1e-5
    t = score_text(lm, [("w", text_windows(lm, generic_text(3000)[0], window=10, n=1)[0])], keep)
    assert t["nll"].max() - t["nll"].min() < 1e-3
    for m in _mitigations(lm):
        back = Mitigation.from_row(m.to_row())
        assert back.to_row() == m.to_row()


def test_mitigation_rejects_bad_definitions():
    with pytest.raises(ValueError, match="unknown mitigation kind"):
        Mitigation("nope", 0)
    with pytest.raises(ValueError, match="non-zero direction"):
        Mitigation("project", 0, direction=torch.zeros(4))

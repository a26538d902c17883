"""Factual recall on the default model (SmolLM2-135M): ``hopscope recall --quick`` end to end, and the exact
identities (last-layer replay vs engine, mitigation interventions vs replay) at the model's own size."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.default_model


def test_recall_quick_on_the_default_model(tmp_path):
    from typer.testing import CliRunner

    from hopscope.cli import app
    from hopscope.report import RunFolder

    out = tmp_path / "recall"
    result = CliRunner().invoke(app, ["recall", "--quick", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = RunFolder.open(out)
    assert run.status == "done" and (out / "report.html").exists()
    claims = run.load_claims()
    assert list(claims["id"]) == ["recall.movers", "recall.mlp_gain", "recall.suppression", "recall.mitigation"]
    assert run.load_table("dla_components")["sum_error"].abs().max() < 1e-3
    assert run.load_table("mlp_decomposition")["sum_error"].max() < 1e-3
    heads = run.load_table("heads")
    top = heads.iloc[0]
    # a head in the upper layers reads the subject and helps the answer (SmolLM2: L23H4 in our runs)
    assert top["layer"] >= 15 and top["attn_subject"] > 0.3 and top["drop_path"] > 0


def test_replay_and_mitigations_match_the_engine_on_the_default_model(default_model):
    from hopscope.engine import Site, run, run_last_position, zero_ablate
    from hopscope.methods.recall import Mitigation
    from hopscope.methods.recall.collect import answer_logit_diff, collect
    from hopscope.methods.recall.queries import design, items, relation_queries
    from hopscope.methods.recall.suppression import LastLayerState, final_layer_effects, final_logits

    lm = default_model
    its = items(lm, design(relation_queries("capital", 4), {}, seed=0))
    lp = collect(lm, its)
    L = lm.n_layers - 1
    eff = final_layer_effects(lm, lp).set_index(["qid", "component"])["effect_logit_diff"]
    logits = run_last_position(lm, its[0].prompt, [[], [zero_ablate(Site(L, "attn_out", -1)),
                                                         zero_ablate(Site(L, "mlp_out", -1))]]).logits
    ld = answer_logit_diff(logits, [its[0].answer_id] * 2)
    assert eff[its[0].qid, "block"] == pytest.approx(float(ld[0] - ld[1]), abs=1e-3)
    st = LastLayerState.of(lp)
    edit = Mitigation("heads", L, heads=[0, 6], factor=0.0)
    engine = run(lm, [it.prompt for it in its], [edit.interventions(lm)] * len(its), last_only=True).logits
    replay = final_logits(lm, st.replay(lm, -st.heads[:, [0, 6]].sum(1)))
    torch.testing.assert_close(replay, engine, atol=1e-3, rtol=1e-3)

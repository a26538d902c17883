"""Sublayer projections and the paper's resolution stages: "prediction extracted" reads the model's own first
generated token (defined on incorrect queries too), information propagation averages what is available."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hopscope.data import TwoHopQuery
from hopscope.engine import answer_token_ids, first_token_id, generate, run_with_cache
from hopscope.lenses import project
from hopscope.methods.hopping.projection import entity_token_ids, projection_ranks
from hopscope.methods.hopping.stages import resolution_stages
from hopscope.models import tiny

PROMPT = "The capital of the country where Shenzhen is located is"


@pytest.fixture(scope="module")
def lm():
    return tiny("olmo2", n_layers=4)


def test_prediction_extracted_is_defined_on_incorrect_queries(lm):
    q = TwoHopQuery(qid="q", prompt=PROMPT, first_hop_prompt="a", second_hop_prompt="b", e1="Shenzhen", e2="China",
                    e3="Beijing", r1="r1", r2="r2")
    own = generate(lm, PROMPT, None, max_new_tokens=1).tokens[0][0]
    assert own != first_token_id(lm.tokenizer, q.e3)  # the composition is wrong: e3 is not the prediction
    ranks = projection_ranks(lm, [q], ("attn_out", "mlp_out", "resid_post"))
    assert set(ranks["prediction"]) == {lm.tokenizer.decode([own])}
    # the logit lens of the last layer is the model's output, so the prediction is top-1 there by definition
    last = ranks[(ranks["component"] == "resid_post") & (ranks["layer"] == lm.n_layers - 1)]
    assert last["prediction_rank"].tolist() == [0]
    # the MLP ranks are those of the model's own token, recomputed here independently
    _, acts = run_with_cache(lm, PROMPT, components=("mlp_out",))
    for layer in range(lm.n_layers):
        logits = project(lm, acts["mlp_out", layer][0, -1])
        want = int((logits > logits[own]).sum())
        got = ranks[(ranks["component"] == "mlp_out") & (ranks["layer"] == layer)]["prediction_rank"].item()
        assert got == want


def test_entity_ids_cover_cased_lowercase_and_spacing(lm):
    ids = entity_token_ids(lm, ["Beijing"])
    tok = lm.tokenizer
    want = {first_token_id(tok, "Beijing"), first_token_id(tok, "beijing"),
            answer_token_ids(tok, "Beijing", leading_space=False)[0],
            answer_token_ids(tok, "beijing", leading_space=False)[0]}
    assert want == set(ids) and len(want) == 4


def _tables():
    ps = pd.DataFrame([
        dict(qid="a", target="description", source="e1", s=2, first_t_e1=np.nan, first_t_e2=0.0, first_t_e3=np.nan),
        dict(qid="a", target="description", source="last", s=4, first_t_e1=np.nan, first_t_e2=1.0, first_t_e3=np.nan),
        dict(qid="a", target="description", source="last", s=6, first_t_e1=np.nan, first_t_e2=np.nan, first_t_e3=2.0),
        dict(qid="b", target="description", source="e1", s=2, first_t_e1=np.nan, first_t_e2=np.nan, first_t_e3=np.nan),
    ])
    ko = pd.DataFrame([dict(qid="a", first_effect_layer=3.0), dict(qid="b", first_effect_layer=np.nan)])
    proj = pd.DataFrame([dict(qid=q, component=c, layer=l, e2_rank=int(not (q == "a" and c == "attn_out" and l >= 5)),
                              e3_rank=1, prediction_rank=int(not (c == "mlp_out" and l >= 7)), prediction="x")
                         for q in "ab" for c in ("attn_out", "mlp_out") for l in range(8)])
    return ps, ko, proj


def test_resolution_stages_from_the_tables():
    ps, ko, proj = _tables()
    st = resolution_stages(["a", "b"], {"a": "correct", "b": "incorrect"}, ps, ko, proj).set_index("qid")
    a, b = st.loc["a"], st.loc["b"]
    assert (a["e1_resolved_layer"], a["e2_at_last_layer"], a["e3_resolved_layer"]) == (2, 4, 6)
    assert (a["knockout_layer"], a["attn_e2_layer"], a["prediction_extracted_layer"]) == (3, 5, 7)
    assert a["info_propagation_layer"] == pytest.approx((3 + 5 + 4) / 3)
    assert np.isnan(b["e1_resolved_layer"]) and np.isnan(b["info_propagation_layer"])
    assert b["prediction_extracted_layer"] == 7 and b["group"] == "incorrect"

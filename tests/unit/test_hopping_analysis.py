"""The hopping analysis as a pipeline: the paper's populations, fixed sizes and seeds (identical tables), resume
after an interruption, one generate per query that equals its parts, settings and claims."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hopscope.data import TwoHopQuery
from hopscope.engine import MatchRule
from hopscope.methods.hopping import ANALYSIS, KnowledgeSettings, Settings, analysis, run
from hopscope.methods.hopping.claims import claims
from hopscope.methods.hopping.knockout import knockout_query
from hopscope.methods.hopping.settings import layer_grid
from hopscope.models import tiny
from hopscope.pipeline import Context

CITIES = [("Shenzhen", "China", "Beijing"), ("Dubai", "United Arab Emirates", "Abu Dhabi"),
          ("Lagos", "Nigeria", "Abuja"), ("Osaka", "Japan", "Tokyo")]


def queries() -> list[TwoHopQuery]:
    out = []
    for e1, e2, e3 in CITIES:
        prompt = f"The capital of the country where {e1} is located is"
        a = prompt.index(e1)
        out.append(TwoHopQuery(
            qid=f"city_country_capital:{e1.lower()}", prompt=prompt, first_hop_prompt=f"{e1} is a city in",
            second_hop_prompt=f"The capital of {e2} is", e1=e1, e2=e2, e3=e3, r1="city_country", r2="country_capital",
            e1_span=(a, a + len(e1)), entity_shortcut_prompt=f"The capital of {e1} is",
            relation_shortcut_prompt="The capital of the country is", composition="city_country_capital"))
    return out


def settings(**kw) -> Settings:
    base = dict(protocol="custom", population="all", layers=None, patchscope_layers=None, knockout_layers=None,
                knockout_window=1, n_incorrect=3, n_resolve=2, seed=0)
    return Settings(**{**base, **kw})


@pytest.fixture(scope="module")
def lm():
    return tiny("olmo2", n_layers=3)


@pytest.fixture(scope="module")
def reference(lm):
    return run(lm, queries(), settings(), progress=False)


def test_the_same_seed_gives_identical_tables(lm, reference):
    again = run(lm, queries(), settings(), progress=False)
    assert set(again.tables) == set(reference.tables)
    for name, df in reference.tables.items():
        pd.testing.assert_frame_equal(again.tables[name], df, check_dtype=False)
    pd.testing.assert_frame_equal(again.claims, reference.claims)
    assert len(reference.tables["backpatch"]) and len(reference.tables["patchscope"])
    assert len(reference.tables["stages"])


def test_an_interrupted_run_resumes_to_identical_tables(lm, reference, tmp_path, monkeypatch):
    stage = next(s for s in ANALYSIS.stages if s.name == "query")
    work, calls = stage.work, []

    def flaky(lm_, ctx, shard):
        calls.append(shard.index)
        if shard.index == 1:
            raise KeyboardInterrupt
        return work(lm_, ctx, shard)

    monkeypatch.setattr(stage, "work", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(lm, queries(), settings(), run_folder=tmp_path / "run", progress=False)
    monkeypatch.setattr(stage, "work", work)
    resumed = run(lm, queries(), settings(), run_folder=tmp_path / "run", progress=False)
    for name, df in reference.tables.items():
        pd.testing.assert_frame_equal(resumed.tables[name], df, check_dtype=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["status"] == "done" and config["args"]["knowledge"]["match_rule"]["max_new_tokens"] == 10


def test_one_generate_per_query_equals_each_part_alone(lm, reference):
    """Back-patching and knockout rows share one generate from t1; the knockout rows equal a knockout-only run."""
    ko, bp = reference.tables["knockout"], reference.tables["backpatch"]
    qid = next(q for q in ko["qid"] if q in set(bp["qid"]))  # a query with both kinds of rows
    q = next(x for x in queries() if x.qid == qid)
    got = ko[ko["qid"] == qid].reset_index(drop=True)
    alone = knockout_query(lm, q, layer_grid(None, lm.n_layers), MatchRule(), k=1)
    pd.testing.assert_frame_equal(got, alone, check_dtype=False)


def test_selection_takes_the_papers_groups_in_a_nested_seeded_sample():
    kn = pd.DataFrame({"qid": [f"q{i}" for i in range(12)],
                       "group": ["incorrect", "correct", "shortcut", "hops_unknown"] * 3})
    qs = [type("Q", (), {"qid": f"q{i}"}) for i in range(12)]
    small = analysis.selection(Context(qs, Settings(n_incorrect=2, n_correct=1), tables={"knowledge": kn}))
    big = analysis.selection(Context(qs, Settings(n_incorrect=3, n_correct=3), tables={"knowledge": kn}))
    assert set(big) == {"incorrect", "correct"}  # shortcut and hops_unknown queries are never analysed
    assert set(big["incorrect"]) == {"q0", "q4", "q8"} and set(big["correct"]) == {"q1", "q5", "q9"}
    assert big["incorrect"][:2] == small["incorrect"] and big["correct"][:1] == small["correct"]


def test_settings_sizes_and_protocol():
    for s in (Settings(), Settings.quick(), Settings.study()):
        s.validate()
        assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    paper = Settings()
    assert paper.layers is None and paper.knowledge.max_new_tokens == 10 and paper.knowledge.match_anywhere
    assert Settings(seed=5).knowledge.seed == 5
    for bad in (dict(knockout_keys="e1_span"), dict(population="all"),
                dict(knowledge=KnowledgeSettings(match_anywhere=False))):
        with pytest.raises(ValueError, match="protocol='custom'"):
            Settings(**bad).validate()
        Settings(protocol="custom", **bad).validate()
    with pytest.raises(ValueError, match="unknown controls"):
        Settings(controls=("sideways",)).validate()
    assert layer_grid(4, 30) == [0, 10, 19, 29] and layer_grid((-1, 0), 30) == [0, 29]
    with pytest.raises(ValueError, match="outside 0..29"):
        layer_grid((30,), 30)


def test_a_layer_outside_the_model_fails_before_any_work(lm):
    with pytest.raises(ValueError, match="layers: layers \\[7\\] are outside 0..2"):
        run(lm, queries(), settings(layers=(7,)), progress=False)


def test_claims_from_hand_built_tables():
    rows = []
    for i in range(10):  # back-patching fixes 6 of 10 incorrect queries, the random control 1 of them
        rows.append(dict(qid=f"w{i}", group="incorrect", variant="last", condition="back", fixed=i < 6,
                         break_frac=np.nan))
        rows.append(dict(qid=f"w{i}", group="incorrect", variant="last", condition="random", fixed=i == 0,
                         break_frac=np.nan))
    for i in range(4):
        rows.append(dict(qid=f"r{i}", group="correct", variant="last", condition="back", fixed=False, break_frac=0.25))
    stages = pd.DataFrame({"e1_resolved_layer": [2.0, 4.0, np.nan], "e3_resolved_layer": [10.0, 8.0, 9.0]})
    out = {c.id: c for c in claims({"backpatch_queries": pd.DataFrame(rows), "stages": stages},
                                   Settings(controls=("random",)))}
    assert set(out) == {"hop.resolve_order", "hop.backpatch_fix", "hop.backpatch_break"}
    assert out["hop.backpatch_fix"].value == pytest.approx(0.5) and out["hop.backpatch_fix"].n == 10
    assert out["hop.backpatch_break"].value == pytest.approx(0.25) and out["hop.backpatch_break"].n == 4
    assert out["hop.resolve_order"].value == pytest.approx(6.0) and out["hop.resolve_order"].n == 2

"""Patchscopes as Biran et al. 2024 use them: every (s, t) pair on the shared target prompt, the e1 > e2 > e3
precedence, and the first target layer that decodes an entity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hopscope.data import TwoHopQuery
from hopscope.engine import MatchRule, generate, normalise_text
from hopscope.methods.hopping.patchscope import (TARGET_PROMPTS, entity_label, first_source_layer,
                                                 first_target_layers, patchscope_batch)
from hopscope.models import tiny


@pytest.fixture(scope="module")
def lm():
    return tiny("olmo2", n_layers=4)


def _query(qid, prompt, e1, e2="Zqland", e3="Zqcity"):
    a = prompt.rindex(e1)
    return TwoHopQuery(qid=qid, prompt=prompt, first_hop_prompt="a", second_hop_prompt="b", e1=e1, e2=e2, e3=e3,
                       r1="r1", r2="r2", e1_span=(a, a + len(e1)))


def test_rows_cover_every_pair_of_both_sources(lm):
    qs = [_query("a", "The capital of the country where Shenzhen is located is", "Shenzhen"),
          _query("b", "The capital of the country where Dubai is located is", "Dubai")]
    rows = patchscope_batch(lm, qs, [0, 2, 3], MatchRule(), target_layers=[1, 3])
    got = set(zip(rows["qid"], rows["source"], rows["s"], rows["t"]))
    assert got == {(q, src, s, t) for q in "ab" for src in ("e1", "last") for s in (0, 2, 3) for t in (1, 3)}
    assert len(rows) == len(got) and set(rows["target"]) == {"description"}


def test_recovers_e2_when_the_source_state_is_the_targets_own_state(lm):
    """Source prompt = the target prompt itself: the state of layer s at x patched into layer t = s of the target is
    the target's own state, so the row decodes the target's clean continuation; e2 is a word of it."""
    target = TARGET_PROMPTS["description"]
    clean = generate(lm, target, None, max_new_tokens=10).texts(lm)[0]
    words = [w for w in normalise_text(clean).split() if w.isalpha()]
    q = _query("self", target, "Samsung", e2=words[0])
    assert not MatchRule().matches(clean, ["Samsung"])  # e1 must not win by precedence
    layers = list(range(lm.n_layers))
    rows = patchscope_batch(lm, [q], layers, MatchRule(), sources=("last",))
    diag = rows[rows["s"] == rows["t"]]
    assert (diag["text"] == clean).all() and (diag["label"] == "e2").all()
    first = first_target_layers(rows).set_index("s")
    assert (first["first_t_e2"] <= first.index).all()
    assert first_source_layer(first_target_layers(rows), "self", "description", "last", "e2") == 0


def test_precedence_is_e1_then_e2_then_e3():
    ents = {"e1": ["Shenzhen"], "e2": ["China"], "e3": ["Beijing"]}
    rule = MatchRule()
    assert entity_label(": Beijing is the capital of China", ents, rule) == "e2"
    assert entity_label(": China, near Shenzhen", ents, rule) == "e1"
    assert entity_label(": Beijing is a city", ents, rule) == "e3"
    assert entity_label(": Paris is a city", ents, rule) == "other"


def test_first_target_and_source_layers_from_rows():
    rows = pd.DataFrame([dict(qid="q", target="description", source="e1", s=s, t=t, label=lab)
                         for s, t, lab in [(0, 0, "other"), (0, 1, "other"), (1, 0, "other"), (1, 1, "e2"),
                                           (2, 0, "e2"), (2, 1, "e3")]])
    first = first_target_layers(rows).set_index("s")
    assert np.isnan(first.loc[0, "first_t_e2"]) and first.loc[1, "first_t_e2"] == 1 and first.loc[2, "first_t_e2"] == 0
    assert first.loc[2, "first_t_e3"] == 1
    assert first_source_layer(first_target_layers(rows), "q", "description", "e1", "e2") == 1
    assert np.isnan(first_source_layer(first_target_layers(rows), "q", "description", "last", "e2"))

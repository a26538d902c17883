"""Back-patching as Biran et al. 2024 define it: (s > t) pairs at the last token and at e1's last token, the
controls, exact early stopping, a self-patch that changes nothing, and the oracle summaries."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopscope.data import TwoHopQuery
from hopscope.engine import MatchRule, Site, generate, normalise_text, replace, run_with_cache
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping.backpatch import (backpatch_query, backpatch_rows, fix_rate_matrix, layer_pairs,
                                                query_summary)
from hopscope.models import tiny

PROMPT = "The capital of the country where Shenzhen is located is"


@pytest.fixture(scope="module")
def lm():
    return tiny("olmo2", n_layers=6)


def make_query(lm, qid="q0", prompt=PROMPT, e1="Shenzhen", word_at=2) -> TwoHopQuery:
    """A query whose answer e3 is a word of the model's own clean continuation (so verdicts vary by row)."""
    text = generate(lm, prompt, None, max_new_tokens=10).texts(lm)[0]
    words = [w for w in normalise_text(text).split() if w.isalpha()]
    a = prompt.index(e1)
    return TwoHopQuery(qid=qid, prompt=prompt, first_hop_prompt=f"{e1} is in", second_hop_prompt="X is",
                       e1=e1, e2="Zqland", e3=words[min(word_at, len(words) - 1)], r1="r1", r2="r2",
                       e1_span=(a, a + len(e1)), first_hop_span=(prompt.index("the country"), len(prompt) - 3))


def test_pairs_are_back_below_and_forward_above_the_diagonal():
    grid = [0, 2, 4, 5]
    assert layer_pairs(grid, "back") == [(2, 0), (4, 0), (4, 2), (5, 0), (5, 2), (5, 4)]
    assert all(s < t for s, t in layer_pairs(grid, "forward")) and len(layer_pairs(grid, "forward")) == 6
    assert layer_pairs(grid, "random") == layer_pairs(grid, "unrelated") == layer_pairs(grid, "back")
    with pytest.raises(ValueError, match="unknown condition"):
        layer_pairs(grid, "sideways")


def test_a_self_patch_changes_nothing(lm):
    q = make_query(lm)
    _, acts = run_with_cache(lm, q.prompt)
    for pos in (Q.last(lm, q), Q.t1(lm, q)):
        rows = [[replace(Site(t, "resid_post", pos), acts["resid_post", t][0, pos])] for t in range(lm.n_layers)]
        g = generate(lm, q.prompt, [[], *rows], max_new_tokens=6, start=Q.t1(lm, q), first_logits=True)
        assert all(toks == g.tokens[0] for toks in g.tokens)
        torch.testing.assert_close(g.first_logits[1:], g.first_logits[:1].expand(lm.n_layers, -1), atol=1e-4, rtol=0)


def test_early_stopped_backpatching_gives_the_unstopped_verdicts(lm):
    q, partner = make_query(lm), make_query(lm, "q1", "The capital of the country where Dubai is located is", "Dubai")
    grid = list(range(lm.n_layers))
    kw = dict(controls=("forward", "random", "unrelated"), partner=partner, seed=3)
    stopped = backpatch_query(lm, q, grid, MatchRule(), stop_early=True, **kw)
    full = backpatch_query(lm, q, grid, MatchRule(), stop_early=False, **kw)
    assert stopped["correct"].tolist() == full["correct"].tolist()
    assert stopped["correct"].any() and not stopped["correct"].all()  # the comparison decides something
    assert (stopped["n_tokens"] < full["n_tokens"]).any()  # and some rows did stop early
    assert all(f.startswith(s) for s, f in zip(stopped["text"], full["text"]))
    # one row per (variant, condition, s > t) pair: 15 back pairs at each position, 15 per control at the last
    counts = stopped.groupby(["variant", "condition"]).size().to_dict()
    assert counts == {("e1", "back"): 15, ("last", "back"): 15, ("last", "clean"): 1, ("last", "forward"): 15,
                      ("last", "random"): 15, ("last", "unrelated"): 15}


def test_rows_patch_the_right_positions_and_values(lm):
    q, partner = make_query(lm), make_query(lm, "q1", "The capital of the country where Dubai is located is", "Dubai")
    grid = [1, 3, 5]
    _, acts = run_with_cache(lm, q.prompt)
    _, pacts = run_with_cache(lm, partner.prompt)
    specs, rows = backpatch_rows(lm, q, grid, acts, variants=("last", "e1"), controls=("random", "unrelated"),
                                 partner=partner, partner_acts=pacts, seed=0)
    t1 = Q.t1(lm, q)
    assert lm.str_tokens(q.prompt)[t1].strip() == "hen"  # e1's last token, not the first-hop phrase's ("located")
    for spec, (iv,) in zip(specs, rows):
        pos = Q.last(lm, q) if spec["variant"] == "last" else t1
        assert iv.site == Site(spec["t"], "resid_post", pos) and spec["s"] > spec["t"]
        h = acts["resid_post", spec["s"]][0, pos]
        if spec["condition"] == "back":
            torch.testing.assert_close(iv.value, h)
        elif spec["condition"] == "random":
            assert torch.isclose(iv.value.norm(), h.norm(), rtol=1e-5) and not torch.allclose(iv.value, h)
        else:  # unrelated: the partner's own state at its last token
            torch.testing.assert_close(iv.value, pacts["resid_post", spec["s"]][0, Q.last(lm, partner)])
    assert {s["variant"] for s in specs if s["condition"] != "back"} == {"last"}  # controls at the last token only


def test_oracle_summary_and_matrix():
    pairs = pd.DataFrame([
        # a wrong composition that one back-patch fixes
        dict(qid="a", variant="last", condition="clean", s=-1, t=-1, correct=False, prob=0.1),
        dict(qid="a", variant="last", condition="back", s=2, t=0, correct=False, prob=0.2),
        dict(qid="a", variant="last", condition="back", s=2, t=1, correct=True, prob=0.5),
        # a right composition that one of two back-patches breaks
        dict(qid="b", variant="last", condition="clean", s=-1, t=-1, correct=True, prob=0.9),
        dict(qid="b", variant="last", condition="back", s=2, t=0, correct=False, prob=0.3),
        dict(qid="b", variant="last", condition="back", s=2, t=1, correct=True, prob=0.8),
    ])
    summary = query_summary(pairs).set_index("qid")
    assert bool(summary.loc["a", "fixed"]) and summary.loc["a", "best_t"] == 1
    assert not bool(summary.loc["b", "fixed"]) and summary.loc["b", "break_frac"] == 0.5
    m = fix_rate_matrix(pairs, ["a", "b"])
    assert m.loc[2, 0] == 0.0 and m.loc[2, 1] == 1.0

"""Attention knockout as Biran et al. 2024 define it: the last position's attention to t1 (e1's last token) only,
in a window of layers, counted when the generation changes and the two are not both correct."""

from __future__ import annotations

import pytest
import torch

from hopscope.data import TwoHopQuery
from hopscope.engine import MatchRule, Site, cache, generate, normalise_text, run
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping.knockout import (changed_from_clean, knockout_keys, knockout_query, knockout_rows,
                                               window)
from hopscope.models import tiny

PROMPT = "The capital of the country where Shenzhen is located is"


@pytest.fixture(scope="module")
def lm():
    return tiny("olmo2", n_layers=6)


def _query(lm, word_at=1) -> TwoHopQuery:
    text = generate(lm, PROMPT, None, max_new_tokens=10).texts(lm)[0]
    words = [w for w in normalise_text(text).split() if w.isalpha()]
    a = PROMPT.index("Shenzhen")
    return TwoHopQuery(qid="q", prompt=PROMPT, first_hop_prompt="a", second_hop_prompt="b", e1="Shenzhen",
                       e2="Zqland", e3=words[word_at], r1="r1", r2="r2", e1_span=(a, a + 8))


def _pattern(lm, ivs, layer):
    site = Site(layer, "attn_pattern", -1)
    res = run(lm, [PROMPT], [[*ivs, cache(site)]])
    return res.cache[0][site][:, 0]  # [heads, keys] of the last query position


def test_knockout_blocks_only_t1(lm):
    q = _query(lm)
    a, b = Q.e1_tokens(lm, q)
    assert b - a == 3  # " Shen", "z", "hen": only the last is t1
    t1 = Q.t1(lm, q)
    (spec,), (ivs,) = knockout_rows(lm, q, [2], k=1)
    assert (spec["lo"], spec["hi"]) == (1, 3) and [iv.site.layer for iv in ivs] == [1, 2, 3]
    clean = _pattern(lm, [], 1)
    knocked = _pattern(lm, ivs, 1)  # the first layer of the window: inputs are still clean there
    assert torch.all(knocked[:, t1] == 0) and torch.all(clean[:, t1] > 0)
    others = [i for i in range(clean.shape[1]) if i != t1]
    # every other key keeps its weight relative to the rest (softmax renormalised over the unblocked keys)
    expected = clean[:, others] / (1 - clean[:, t1:t1 + 1])
    torch.testing.assert_close(knocked[:, others], expected, atol=1e-5, rtol=1e-4)
    assert torch.all(knocked[:, a:t1] > 0)  # e1's other tokens are not blocked (the old span knockout blocked them)
    site = Site(1, "attn_pattern", (0, len(lm.to_ids(PROMPT)) - 1))
    rows_before = [run(lm, [PROMPT], [[*x, cache(site)]]).cache[0][site] for x in ([], ivs)]
    torch.testing.assert_close(rows_before[0], rows_before[1])  # other query positions are untouched
    assert knockout_keys(lm, q, "e1_span") == list(range(a, b))


def test_window_is_clipped_to_the_model():
    assert list(window(0, 3, 6)) == [0, 1, 2, 3] and list(window(5, 3, 6)) == [2, 3, 4, 5]
    assert list(window(2, 0, 6)) == [2]
    with pytest.raises(ValueError):
        window(2, -1, 6)


@pytest.mark.parametrize("row, clean, effect", [
    (([1, 2], True), ([1, 2, 3], True), False),        # both correct (stopped at different points): no effect
    (([1, 2, 3, 4], False), ([1, 2], True), True),     # was right, now wrong: changed and incorrect
    (([5], True), ([1, 2, 3, 4], False), True),        # was wrong, now right: changed, not both correct
    (([1, 2, 3, 4], False), ([1, 2, 3, 5], False), True),  # both wrong, different generations
    (([1, 2, 3, 4], False), ([1, 2, 3, 4], False), False),  # both wrong, the same generation
])
def test_the_papers_changed_and_not_both_correct_criterion(row, clean, effect):
    changed = changed_from_clean(row[0], row[1], clean[0], clean[1])
    assert (changed and not (row[1] and clean[1])) == effect


def test_early_stopped_knockout_gives_the_unstopped_effects(lm):
    q = _query(lm)
    kw = dict(k=1)
    stopped = knockout_query(lm, q, range(lm.n_layers), MatchRule(), stop_early=True, **kw)
    full = knockout_query(lm, q, range(lm.n_layers), MatchRule(), stop_early=False, **kw)
    assert stopped["effect"].tolist() == full["effect"].tolist()
    assert stopped["correct"].tolist() == full["correct"].tolist()
    assert stopped["correct"].iloc[0]  # the clean generation names e3, so early stopping is exercised
    assert stopped.loc[stopped["centre"] == -1, "effect"].tolist() == [False]

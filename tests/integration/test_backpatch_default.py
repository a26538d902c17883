"""The hopping methods on the default model (SmolLM2-135M): the one-generate fast path equals the naive per-row
re-run, t1 is e1's last token in its tokenization, and the clean row agrees with the knowledge filter."""

from __future__ import annotations

import pytest
import torch

from hopscope.data import build_two_hop
from hopscope.engine import MatchRule, Site, generate, replace, run_with_cache
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping.backpatch import backpatch_query
from hopscope.methods.hopping.knowledge import knowledge_table

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def query():
    return build_two_hop("city_country_capital", n=2)[1]


def test_fast_backpatch_equals_the_naive_rerun(default_model, query):
    lm = default_model
    _, acts = run_with_cache(lm, query.prompt)
    t1, last = Q.t1(lm, query), Q.last(lm, query)
    rows = [[replace(Site(t, "resid_post", p), acts["resid_post", s][0, p])]
            for s, t, p in [(20, 5, last), (29, 0, last), (12, 3, t1), (7, 7, last)]]
    fast = generate(lm, query.prompt, rows, max_new_tokens=4, start=t1, first_logits=True)
    naive = generate(lm, [query.prompt] * len(rows), rows, max_new_tokens=4, first_logits=True, fast=False)
    assert fast.tokens == naive.tokens
    torch.testing.assert_close(fast.first_logits, naive.first_logits, atol=1e-3, rtol=1e-4)


def test_t1_and_the_clean_verdict(default_model, query):
    lm = default_model
    toks = lm.str_tokens(query.prompt)
    a, b = Q.e1_tokens(lm, query)
    assert "".join(toks[a:b]).strip() == query.e1 and Q.t1(lm, query) == b - 1
    df = backpatch_query(lm, query, [4, 16, 28], MatchRule(), variants=("last", "e1"))
    assert df.groupby(["variant", "condition"]).size().to_dict() == {("e1", "back"): 3, ("last", "back"): 3,
                                                                    ("last", "clean"): 1}
    clean = df[df["condition"] == "clean"]["correct"].item()
    assert clean == bool(knowledge_table(lm, [query], MatchRule())["composed_correct"].item())

"""Back-patching on tiny models: identity patches, fast path == naive, pruning, controls, tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopscope.data import TwoHopQuery
from hopscope.engine import Site, generate, replace, run_with_cache
from hopscope.methods.backpatch import (
    alias_stopper, backpatch_query, fix_rate_matrix, headline, layer_pairs, naive_decode, patch_value,
    patched_decode, query_table, unrelated_for,
)

PROMPT = "The capital of the country where the Eiffel Tower is located is"


def make_query(prompt: str = PROMPT, e3: str = "Paris", qid: str = "q0", e1: str = "Eiffel Tower",
               e2: str = "France", e3_aliases: list[str] | None = None) -> TwoHopQuery:
    start = prompt.rindex(e1)
    phrase = prompt.find("the country") if e1 + " is located" in prompt else -1
    return TwoHopQuery(qid=qid, prompt=prompt, first_hop_prompt=f"The {e1} is located in",
                       second_hop_prompt=f"The capital of {e2} is", e1=e1, e2=e2, e3=e3, r1="located", r2="capital",
                       e3_aliases=e3_aliases or [], e1_span=(start, start + len(e1)),
                       first_hop_span=(phrase, start + len(e1) + len(" is located")) if phrase >= 0 else None)


def states(lm, prompt, position):
    _, acts = run_with_cache(lm, prompt)
    return {l: acts["resid_post", l][0, position] for l in range(lm.n_layers)}


def test_layer_pairs_counts():
    assert len(layer_pairs(range(30), "back")) == 435
    assert len(layer_pairs(range(30), "forward")) == 435
    assert all(s > t for s, t in layer_pairs(range(5), "random"))
    assert all(s < t for s, t in layer_pairs(range(5), "forward"))
    with pytest.raises(ValueError, match="unknown condition"):
        layer_pairs(range(3), "sideways")


@pytest.mark.parametrize("start", [-1, 6])
def test_identity_patch_reproduces_generation(tiny_model, start):
    """s = t: writing block t's own output back changes nothing, token for token (last and mid position)."""
    n = len(tiny_model.to_ids(PROMPT))
    pos = n - 1 if start == -1 else start
    h = states(tiny_model, PROMPT, pos)
    rows = [[replace(Site(t, "resid_post", pos), h[t])] for t in range(tiny_model.n_layers)]
    dec = patched_decode(tiny_model, PROMPT, rows, max_new_tokens=6, start=pos)
    clean = generate(tiny_model, PROMPT, None, max_new_tokens=6, fast=False).tokens[0]
    assert all(toks == clean for toks in dec.tokens)


@pytest.mark.parametrize("start", [-1, 5])
def test_fast_path_equals_naive(tiny_model, start):
    """Shared prefix + batched rows + batched decoding == one full re-run per pair."""
    n = len(tiny_model.to_ids(PROMPT))
    pos = n - 1 if start == -1 else start
    h = states(tiny_model, PROMPT, pos)
    pairs = [(2, 0), (0, 2), (1, 1)]  # back, forward, identity; batch_size=2 exercises chunking
    rows = [[replace(Site(t, "resid_post", pos), h[s])] for s, t in pairs]
    fast = patched_decode(tiny_model, PROMPT, rows, max_new_tokens=4, start=pos, keep_logits=True, batch_size=2)
    naive = naive_decode(tiny_model, PROMPT, rows, max_new_tokens=4)
    assert fast.tokens == naive.tokens
    torch.testing.assert_close(fast.first_logits, naive.first_logits, atol=2e-5, rtol=1e-5)


def test_back_patch_changes_the_state(tiny_llama):
    """A real back-patch (s > t) does change the logits, so the identity test is not vacuous."""
    h = states(tiny_llama, PROMPT, -1)
    dec = patched_decode(tiny_llama, PROMPT, [[], [replace(Site(0, "resid_post", -1), h[2])]], keep_logits=True,
                         max_new_tokens=1)
    assert (dec.first_logits[0] - dec.first_logits[1]).abs().max() > 1e-3


def test_alias_stopper(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    stop = alias_stopper(tiny_gpt2, ["New York", "NYC"])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert not stop(ids(" New"))             # still a prefix of "new york"
    assert not stop(ids(" New York"))        # "New Yorker" would not match: undecided
    assert stop(ids(" New York City"))       # matched for good
    assert stop(ids(" Boston"))              # can no longer match
    assert not stop(ids(" "))                # nothing yet
    assert stop(ids(" Newark"))


def test_pruning_keeps_correctness(tiny_llama):
    """prune=True stops rows early but every row's `correct` and first-token scores are unchanged."""
    clean = tiny_llama.tokenizer.decode(generate(tiny_llama, PROMPT, None, max_new_tokens=3, fast=False).tokens[0])
    q = make_query(e3=clean.strip() or "x")
    kw = dict(max_new_tokens=6, variants=("last", "first_hop"), unrelated="A cat sat on the warm")
    a = backpatch_query(tiny_llama, q, prune=True, **kw)
    b = backpatch_query(tiny_llama, q, prune=False, **kw)
    assert len(a) == len(b) == 1 + 4 * 3 + 3
    assert bool(a.loc[a["condition"] == "clean", "correct"].iloc[0])
    pd.testing.assert_series_equal(a["correct"], b["correct"])
    pd.testing.assert_series_equal(a["prob"], b["prob"])
    assert (a["n_tokens"] <= b["n_tokens"]).all() and a["n_tokens"].sum() < b["n_tokens"].sum()


def test_random_control_has_the_norm_of_h():
    h = torch.randn(64) * 7
    g = torch.Generator().manual_seed(0)
    v = patch_value("random", h, generator=g)
    assert torch.allclose(v.norm(), h.norm()) and not torch.allclose(v, h)
    assert patch_value("back", h) is h
    other = torch.ones(64)
    assert patch_value("unrelated", h, other) is other
    with pytest.raises(ValueError):
        patch_value("unrelated", h)


def test_backpatch_query_rows_and_reproducibility(tiny_llama):
    q = make_query()
    kw = dict(layers=[0, 2], max_new_tokens=2, variants=("last",), unrelated=make_query("A cat sat on the mat", qid="u",
                                                                                        e1="cat"))
    a = backpatch_query(tiny_llama, q, seed=3, **kw)
    b = backpatch_query(tiny_llama, q, seed=3, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["condition"]) == ["clean", "back", "forward", "random", "unrelated"]
    assert a.iloc[1][["s", "t"]].tolist() == [2, 0] and a.iloc[2][["s", "t"]].tolist() == [0, 2]
    with pytest.raises(ValueError, match="unknown variant"):
        backpatch_query(tiny_llama, q, variants=("middle",))


def test_unrelated_partner_shares_no_entity():
    qs = [make_query(qid="a"), make_query(qid="b", e1="Tower", e2="Italy", e3="Rome"),
          make_query(qid="c", e1="Eiffel", e2="Spain", e3="Madrid")]
    assert unrelated_for(qs, 1).qid in ("a", "c")
    assert unrelated_for(qs, 1) == unrelated_for(qs, 1)
    assert isinstance(unrelated_for(qs[:1], 0), str)


def _pairs() -> pd.DataFrame:
    rows = []
    for qid, clean_ok, fixes in (("w1", False, {(2, 0)}), ("w2", False, set()), ("c1", True, {(1, 0), (2, 0)})):
        rows.append(dict(query_id=qid, variant="last", condition="clean", s=-1, t=-1, correct=clean_ok, prob=0.1))
        for cond in ("back", "forward"):
            for s, t in layer_pairs(range(3), cond):
                ok = (s, t) in fixes if cond == "back" else clean_ok and s == 0
                rows.append(dict(query_id=qid, variant="last", condition=cond, s=s, t=t, correct=ok, prob=0.5 * ok))
    return pd.DataFrame(rows)


def test_query_table_and_headline():
    pairs = _pairs()
    kn = pd.DataFrame({"query_id": ["w1", "w2", "c1"], "group": ["incorrect", "incorrect", "correct"]})
    qt = query_table(pairs, kn)
    w1 = qt[(qt.query_id == "w1") & (qt.condition == "back")].iloc[0]
    assert w1.fixed and w1.n_correct == 1 and (w1.best_s, w1.best_t) == (2, 0)
    h = headline(qt)
    assert h["oracle fix rate (back)"] == 0.5 and h["oracle fix rate (forward)"] == 0.0
    assert h["break rate"] == pytest.approx(1 / 3) and h["any-pair break rate"] == 1.0
    m = fix_rate_matrix(pairs, ["w1", "w2"])
    assert m.loc[2, 0] == 0.5 and m.loc[1, 0] == 0.0 and m.shape == (3, 3)

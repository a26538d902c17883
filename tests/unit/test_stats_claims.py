"""Verdicts on constructed cases of each kind, the claim builders against hand computations, Holm across
claims, degenerate inputs, seeding, and the claims frame's columns and Parquet round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hopscope.stats import (
    CLAIM_COLUMNS,
    VERDICT_RULE,
    apply_holm,
    claims_frame,
    concat_claims,
    interval_verdict,
    mean_vs_zero,
    paired_change,
    rate_vs_control,
    scores_vs_permutation,
    share_vs,
    verdict,
    verdict_counts,
    verdict_reason,
)

LABELS = dict(analysis="hopping", statement="back-patching fixes compositions", paper="Biran et al. 2024",
              paper_value="up to 57%")


# ---- the rule -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "low", "high", "control", "direction", "expected"), [
    (0.30, 0.20, 0.40, 0.10, "greater", "supported"),       # paper's side, interval excludes the control
    (0.30, 0.05, 0.40, 0.10, "greater", "inconclusive"),    # interval contains the control
    (0.30, 0.10, 0.40, 0.10, "greater", "inconclusive"),    # touching is not excluding
    (-0.2, -0.3, -0.1, 0.00, "greater", "contradicted"),    # entirely on the other side
    (-0.2, -0.3, 0.00, 0.00, "greater", "inconclusive"),    # ends at the control: not entirely beyond
    (-0.2, -0.3, -0.1, 0.00, "less", "supported"),
    (0.20, 0.10, 0.30, 0.00, "less", "contradicted"),
    (0.00, 0.00, 0.00, 0.00, "greater", "inconclusive"),    # no effect, zero width
    (math.nan, math.nan, math.nan, 0.0, "greater", "inconclusive"),
])
def test_interval_rule(value, low, high, control, direction, expected):
    assert interval_verdict(value, low, high, control, direction) == expected
    assert verdict(value, low, high, control, direction) == expected


def test_the_test_must_agree_after_holm():
    assert verdict(0.3, 0.2, 0.4, 0.1, "greater", p=0.01) == "supported"
    assert verdict(0.3, 0.2, 0.4, 0.1, "greater", p=0.05) == "inconclusive"
    assert verdict(-0.2, -0.3, -0.1, 0.0, "greater", p=0.2) == "inconclusive"
    assert verdict(-0.2, -0.3, -0.1, 0.0, "greater", p=0.001) == "contradicted"
    assert verdict(0.3, 0.05, 0.4, 0.1, "greater", p=1e-9) == "inconclusive"   # p alone never decides
    with pytest.raises(ValueError, match="direction"):
        verdict(0.3, 0.2, 0.4, 0.1, "up")
    assert "Holm" in VERDICT_RULE and "95%" in VERDICT_RULE and "half as wide" in VERDICT_RULE


# ---- builders ----------------------------------------------------------------------------------------
def test_rate_vs_paired_control_by_hand():
    outcome = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    control = [0, 0, 0, 1, 0, 0, 1, 0, 1, 1]
    claim = rate_vs_control("hop.fix", outcome, control, measure="fix rate", control_label="random patch", **LABELS)
    assert claim.value == pytest.approx(0.6 - 0.4) and claim.n == 10 and claim.control_value == 0.0
    # discordant: b = 3 (units 0, 1, 2), c = 1 (unit 6); p = 2 * P[Bin(4, 1/2) <= 1] = 2 * 5/16
    assert claim.p_value == pytest.approx(0.625) and claim.test == "McNemar exact"
    assert claim.verdict == "inconclusive" and claim.n_to_halve == 40
    assert claim.control == "random patch (rate 0.4)" and "3 units positive only" in claim.note
    assert claim.low <= claim.value <= claim.high


def test_rate_vs_control_supported_and_contradicted():
    rng = np.random.default_rng(0)
    control = rng.random(300) < 0.1
    better = control | (rng.random(300) < 0.3)
    up = rate_vs_control("a", better, control, **LABELS)
    assert up.verdict == "supported" and up.low > 0 and up.p_value < 1e-6
    down = rate_vs_control("b", control, better, **LABELS)
    assert down.verdict == "contradicted" and down.high < 0
    less = rate_vs_control("c", control, better, direction="less", **LABELS)
    assert less.verdict == "supported"


def test_rate_vs_null_rate_by_hand_and_all_equal_outcomes():
    claim = rate_vs_control("hop.break", [1] * 9 + [0], null=0.5, **LABELS)
    assert claim.value == 0.9 and claim.control_value == 0.5 and claim.test == "binomial exact"
    assert claim.p_value == pytest.approx(22 / 1024) and claim.verdict == "supported"
    rare = rate_vs_control("hop.rare", [0] * 200, null=0.1, direction="less", **LABELS)
    # a zero-width bootstrap interval [0, 0] is replaced by the exact one: upper = 1 - 0.025^(1/200)
    assert rare.low == 0.0 and rare.high == pytest.approx(1 - 0.025 ** (1 / 200))
    assert rare.verdict == "supported" and "Clopper-Pearson" in rare.note
    small = rate_vs_control("hop.small", [0, 0, 0], null=0.5, direction="less", **LABELS)
    assert small.verdict == "inconclusive"      # p = 0.25: three units cannot decide
    with pytest.raises(ValueError, match="paired control or a null rate"):
        rate_vs_control("x", [1, 0], **LABELS)
    with pytest.raises(ValueError, match="binary"):
        rate_vs_control("x", [0.5, 1], null=0.5, **LABELS)


def test_degenerate_inputs_are_inconclusive_with_a_note():
    empty = rate_vs_control("e", [], [], **LABELS)
    assert empty.verdict == "inconclusive" and empty.note.startswith("n=0") and empty.n_to_halve is None
    assert math.isnan(empty.value) and math.isnan(empty.p_value)
    same = rate_vs_control("s", [1, 0, 1, 1], [1, 0, 1, 1], **LABELS)
    assert same.value == 0 and same.p_value == 1.0 and same.verdict == "inconclusive"
    assert "no discordant pairs" in same.note
    for claim in (paired_change("p", [], [], **LABELS), mean_vs_zero("m", [], **LABELS),
                  share_vs("h", [], **LABELS), scores_vs_permutation("q", 0.5, [], **LABELS)):
        assert claim.verdict == "inconclusive" and ("n=0" in claim.note or "no null samples" in claim.note)
    zeros = paired_change("z", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], **LABELS)
    assert zeros.value == 0 and zeros.p_value == 1.0 and zeros.verdict == "inconclusive"
    equal = mean_vs_zero("eq", [2.0, 2.0, 2.0], **LABELS)
    # zero-width interval [2, 2] excludes 0, but the exact sign-flip p = 2/8 keeps it inconclusive
    assert (equal.low, equal.high) == (2.0, 2.0) and equal.p_value == pytest.approx(0.25)
    assert equal.verdict == "inconclusive" and "zero-width" in equal.note


def test_paired_change_by_hand():
    treated, control = [1, 3, 4, 5, 6, 7], [0, 5, 1, 1, 1, 1]   # differences 1, -2, 3, 4, 5, 6
    claim = paired_change("inj.gold", treated, control, measure="% change", control_label="random memory",
                          **LABELS)
    assert claim.value == pytest.approx(3.5) and claim.p_value == pytest.approx(6 / 64)
    assert claim.test == "Wilcoxon signed-rank" and claim.control == "random memory (median 1)"
    assert claim.verdict == "inconclusive" and "83% of units higher" in claim.note
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 80)
    strong = paired_change("inj.s", base + 1.0 + rng.normal(0, 0.3, 80), base, **LABELS)
    assert strong.verdict == "supported" and 0.8 < strong.low < 1.0 < strong.high < 1.2


def test_mean_vs_zero_and_share_vs():
    rng = np.random.default_rng(2)
    layers = rng.integers(-1, 5, 120).astype(float)         # mean 1.5 layers earlier
    claim = mean_vs_zero("hop.order", layers, measure="layer of e3 minus layer of e2", **LABELS)
    assert claim.value == pytest.approx(layers.mean()) and claim.control == "zero"
    assert claim.verdict == "supported" and claim.p_value == pytest.approx(1 / 10000)
    flat = mean_vs_zero("hop.flat", rng.normal(0, 1, 100), **LABELS)
    assert flat.verdict == "inconclusive"
    share = share_vs("recall.supp", [1] * 70 + [0] * 30, null=0.5, **LABELS)
    assert share.value == 0.7 and share.control_value == 0.5 and share.verdict == "supported"
    assert 0.6 < share.low < 0.7 < share.high < 0.8


def test_scores_vs_permutation():
    rng = np.random.default_rng(3)
    null = rng.normal(0.1, 0.05, 999)
    high = scores_vs_permutation("probe.useful", 0.7, null, n_units=500, **LABELS)
    assert high.control_value == pytest.approx(null.mean()) and high.p_value == pytest.approx(2 / 1000)
    assert high.verdict == "supported" and high.n == 500 and high.n_to_halve == 2000
    # without replicates the interval is the observed score with the null's spread around it
    q_lo, q_hi = np.quantile(null, [0.025, 0.975])
    assert high.low == pytest.approx(0.7 - (q_hi - null.mean()))
    assert high.high == pytest.approx(0.7 + (null.mean() - q_lo))
    assert scores_vs_permutation("p.mid", 0.12, null, **LABELS).verdict == "inconclusive"
    assert scores_vs_permutation("p.low", -0.2, null, **LABELS).verdict == "contradicted"
    reps = scores_vs_permutation("p.rep", 0.7, null, observed_samples=np.linspace(0.6, 0.8, 101), **LABELS)
    assert reps.low == pytest.approx(0.605) and reps.high == pytest.approx(0.795)


def test_builders_are_seeded():
    rng = np.random.default_rng(4)
    a, b = rng.random(60) < 0.5, rng.random(60) < 0.3
    first = rate_vs_control("x", a, b, seed=11, **LABELS)
    assert first == rate_vs_control("x", a, b, seed=11, **LABELS)
    assert (first.low, first.high) != (rate_vs_control("x", a, b, seed=12, **LABELS).low,
                                       rate_vs_control("x", a, b, seed=12, **LABELS).high)


# ---- frames --------------------------------------------------------------------------------------------
def claims_pair(p1: float, p2: float) -> list:
    """Two claims whose intervals exclude the control, with chosen p-values."""
    rows = []
    for cid, p in (("c1", p1), ("c2", p2)):
        claim = mean_vs_zero(cid, np.linspace(1, 3, 50), **LABELS)
        claim.p_value = claim.p_holm = p
        rows.append(claim)
    return rows


def test_holm_across_claims_changes_verdicts_by_hand():
    frame = claims_frame(claims_pair(0.03, 0.04))
    assert list(frame["verdict"]) == ["supported", "supported"]      # each alone: p < 0.05
    adjusted = apply_holm(frame)
    # Holm: sorted 0.03, 0.04 -> 2 * 0.03 = 0.06, max(0.06, 0.04) = 0.06: neither survives
    assert list(adjusted["p_holm"]) == pytest.approx([0.06, 0.06])
    assert list(adjusted["verdict"]) == ["inconclusive", "inconclusive"]
    kept = apply_holm(claims_frame(claims_pair(0.001, 0.04)))
    assert list(kept["p_holm"]) == pytest.approx([0.002, 0.04])
    assert list(kept["verdict"]) == ["supported", "supported"]
    assert verdict_counts(adjusted) == {"supported": 0, "contradicted": 0, "inconclusive": 2}
    assert "Holm-adjusted p = 0.06" in verdict_reason(adjusted.iloc[0].to_dict())


def test_claims_frame_columns_types_parquet_and_unique_ids(tmp_path):
    claims = [rate_vs_control("a", [1, 0, 1], [0, 0, 1], **LABELS), rate_vs_control("e", [], [], **LABELS),
              share_vs("s", [1, 1, 0], **LABELS)]
    frame = claims_frame(claims)
    assert list(frame.columns) == CLAIM_COLUMNS and len(frame) == 3
    assert frame.attrs["n_resamples"] == 2000
    frame.to_parquet(tmp_path / "claims.parquet")
    back = pd.read_parquet(tmp_path / "claims.parquet")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["n_to_halve"].isna().tolist() == [False, True, False]
    with pytest.raises(ValueError, match="unique"):
        claims_frame(claims + [share_vs("s", [1], **LABELS)])
    with pytest.raises(ValueError, match="columns"):
        claims_frame(pd.DataFrame({"id": ["x"]}))
    first, second = claims_pair(0.01, 0.04)
    merged = concat_claims([claims_frame([first]), claims_frame([second])])   # e.g. two child runs
    assert list(merged["id"]) == ["c1", "c2"] and list(merged["p_holm"]) == pytest.approx([0.02, 0.04])
    assert len(claims_frame([])) == 0 and list(claims_frame([]).columns) == CLAIM_COLUMNS

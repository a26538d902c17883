"""Bootstrap intervals: coverage on synthetic data with a known rate, seeding, exact small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from hopscope.stats import (
    bootstrap_ci,
    clopper_pearson,
    n_for_width,
    n_to_halve,
    paired_bootstrap_ci,
    two_sample_bootstrap_ci,
)


def test_interval_covers_a_known_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    covered = 0
    for i in range(500):
        sample = rng.random(100) < 0.3          # Bernoulli(0.3), n = 100
        low, high = bootstrap_ci(sample, seed=i)
        covered += low <= 0.3 <= high
    assert 0.92 <= covered / 500 <= 0.98, covered / 500


def test_paired_interval_covers_a_known_rate_difference():
    rng = np.random.default_rng(7)
    covered = 0
    for i in range(300):
        control = rng.random(150) < 0.2
        treated = control | (rng.random(150) < 0.25)   # P(treated) = 0.2 + 0.8 * 0.25 = 0.4: difference 0.2
        low, high = paired_bootstrap_ci(treated, control, seed=i)
        covered += low <= 0.2 <= high
    assert 0.92 <= covered / 300 <= 0.98, covered / 300


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(0).normal(size=80)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, np.median, seed=1) == bootstrap_ci(values, lambda x: float(np.median(x)), seed=1)


def test_paired_mean_interval_is_the_interval_of_the_differences():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
    paired = paired_bootstrap_ci(a, b, seed=5)
    direct = bootstrap_ci(a - b, seed=5)       # same seed, same resampled units
    assert paired.low == pytest.approx(direct.low) and paired.high == pytest.approx(direct.high)


def test_level_and_small_exact_case():
    # two units {0, 1}: a resampled mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    low, high = bootstrap_ci([0, 1], n_resamples=4000, seed=0)
    assert (low, high) == (0.0, 1.0)
    assert bootstrap_ci([0, 1], n_resamples=4000, seed=0, level=0.4) == (0.5, 0.5)
    wide, narrow = bootstrap_ci(np.arange(50.0), level=0.95), bootstrap_ci(np.arange(50.0), level=0.5)
    assert wide.width > narrow.width > 0


def test_degenerate_inputs_give_nan_or_zero_width_not_errors():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in paired_bootstrap_ci([], []))
    with pytest.raises(ValueError, match="one control per unit"):
        paired_bootstrap_ci([1, 2], [1])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.zeros((2, 2)))


def test_two_sample_interval_of_a_clear_difference_excludes_zero():
    rng = np.random.default_rng(2)
    low, high = two_sample_bootstrap_ci(rng.normal(1, 1, 100), rng.normal(0, 1, 120))
    assert 0.5 < low < 1.0 < high < 1.6


def test_clopper_pearson_by_hand():
    # k = 0 of n = 10: upper bound solves (1 - p)^10 = 0.025
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0))
    # 3 of 10: the bounds are the rates at which P[X >= 3] and P[X <= 3] are each 0.025
    low, high = clopper_pearson(3, 10)
    assert binom.sf(2, 10, low) == pytest.approx(0.025) and binom.cdf(3, 10, high) == pytest.approx(0.025)
    assert (round(low, 4), round(high, 4)) == (0.0667, 0.6525)   # the textbook table values


def test_sizes_to_halve_or_reach_a_width():
    assert n_to_halve(100) == 400 and n_to_halve(1) == 4 and n_to_halve(0) is None
    assert n_for_width(100, width=0.2, target=0.1) == 400
    assert n_for_width(50, width=0.3, target=0.2) == math.ceil(50 * 2.25)
    assert n_for_width(0, 0.2, 0.1) is None and n_for_width(10, 0.0, 0.1) is None

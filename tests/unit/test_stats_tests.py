"""McNemar, Wilcoxon, sign-flip, permutation, binomial and Holm against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from hopscope.stats import (
    binomial_test,
    holm,
    mcnemar_exact,
    permutation_pvalue,
    permutation_test,
    sign_flip_test,
    wilcoxon_signed_rank,
)


def pairs(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Paired binary outcomes with b 'treated only', c 'control only' and concordant pairs."""
    treated = [1] * b + [0] * c + [1] * both + [0] * neither
    control = [0] * b + [1] * c + [1] * both + [0] * neither
    return treated, control


def test_mcnemar_exact_by_hand():
    # b = 1, c = 6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    assert mcnemar_exact(*pairs(1, 6, both=5, neither=9)).p_value == pytest.approx(0.125)
    # b = 5, c = 0: p = 2 / 2^5; concordant pairs do not matter
    assert mcnemar_exact(*pairs(5, 0)).p_value == pytest.approx(0.0625)
    assert mcnemar_exact(*pairs(5, 0, both=40, neither=40)).p_value == pytest.approx(0.0625)
    # b = c: p capped at 1
    assert mcnemar_exact(*pairs(3, 3)).p_value == 1.0
    none = mcnemar_exact(*pairs(0, 0, both=4, neither=3))
    assert none.p_value == 1.0 and none.detail == "no discordant pairs"
    assert math.isnan(mcnemar_exact([], []).p_value)


def test_wilcoxon_by_hand():
    # differences 1, -2, 3, 4, 5, 6: ranks 1..6, W- = 2; subsets of {1..6} with sum <= 2: {}, {1}, {2}
    # exact two-sided p = 2 * 3 / 2^6
    result = wilcoxon_signed_rank([1, -2, 3, 4, 5, 6])
    assert result.p_value == pytest.approx(6 / 64) and result.statistic == 19
    assert wilcoxon_signed_rank([1, 3, 4, 5, 6, 7], [0, 5, 1, 1, 1, 1]).p_value == pytest.approx(6 / 64)
    # zero differences are dropped (Wilcoxon's convention)
    assert wilcoxon_signed_rank([0, 0, 1, -2, 3, 4, 5, 6]).p_value == pytest.approx(6 / 64)
    # all positive, n = 5: 2 / 2^5
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5]).p_value == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0, 0, 0]).p_value == 1.0
    assert math.isnan(wilcoxon_signed_rank([]).p_value)


def test_wilcoxon_with_ties_matches_scipy_normal_approximation():
    d = np.array([1, 1, -1, 2, 2, 3, -3, 4, 4, 4, 5, 0, 6, -2, 7] * 4, dtype=float)
    nonzero = d[d != 0]
    expected = sp.wilcoxon(nonzero, zero_method="wilcox").pvalue
    assert wilcoxon_signed_rank(d).p_value == pytest.approx(expected)


def test_sign_flip_by_hand():
    # [1, 2, 3]: only +++ and --- reach |mean| 2: 2 of 8 sign vectors
    assert sign_flip_test([1, 2, 3]).p_value == pytest.approx(0.25)
    # [3, 1]: signed sums 4, 2, -2, -4: two reach |4|
    assert sign_flip_test([3, 1]).p_value == pytest.approx(0.5)
    # against a null value: [11, 12, 13] vs 10 is [1, 2, 3] vs 0
    assert sign_flip_test([11, 12, 13], null=10).p_value == pytest.approx(0.25)
    assert sign_flip_test([0, 0]).p_value == 1.0
    big = sign_flip_test(np.full(40, 1.0), seed=0)   # no random flip reaches the observed mean
    assert big.p_value == pytest.approx(1 / 10000)
    assert sign_flip_test(np.arange(-20, 21.0), seed=0).p_value == 1.0


def test_permutation_pvalue_by_hand():
    null = np.arange(1, 10.0)                                  # 1..9
    assert permutation_pvalue(5, null, "greater") == pytest.approx(6 / 10)   # (1 + #{5..9}) / 10
    assert permutation_pvalue(5, null, "less") == pytest.approx(6 / 10)
    assert permutation_pvalue(5, null) == 1.0
    assert permutation_pvalue(10, null, "greater") == pytest.approx(0.1)
    assert permutation_pvalue(10, null) == pytest.approx(0.2)
    assert permutation_pvalue(0, null, "less") == pytest.approx(0.1)
    assert math.isnan(permutation_pvalue(1.0, []))
    with pytest.raises(ValueError, match="alternative"):
        permutation_pvalue(1.0, null, "bigger")


def test_two_sample_permutation_test_matches_the_exact_split_count():
    # 6 units, 3 per group: C(6, 3) = 20 label splits; only the observed one reaches the difference 10
    a, b = [10, 11, 12], [0, 1, 2]
    greater = permutation_test(a, b, n_permutations=20000, seed=0, alternative="greater")
    assert greater.statistic == pytest.approx(10.0)
    assert greater.p_value == pytest.approx(1 / 20, abs=0.006)
    assert permutation_test(a, b, seed=3).p_value == permutation_test(a, b, seed=3).p_value
    same = permutation_test([1, 2, 3, 4], [1, 2, 3, 4], seed=0)
    assert same.p_value == 1.0


def test_binomial_by_hand():
    # 9 of 10 against 0.5: two-sided p = 2 * (C(10,9) + C(10,10)) / 2^10
    assert binomial_test(9, 10, 0.5).p_value == pytest.approx(22 / 1024)
    assert binomial_test(9, 10, 0.5, "greater").p_value == pytest.approx(11 / 1024)
    assert math.isnan(binomial_test(0, 0, 0.5).p_value)
    with pytest.raises(ValueError, match="null rate"):
        binomial_test(1, 2, 1.5)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, np.nan, 0.04])                          # NaN kept and not counted: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])      # capped at 1
    assert holm([]).size == 0
    with pytest.raises(ValueError):
        holm([1.2])

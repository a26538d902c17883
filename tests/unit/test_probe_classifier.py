"""kNN probes: chance on noise, high on signal, no leakage across a list's statements; the score S."""

import math

import numpy as np
import pytest

from hopscope.methods.probe import knn_probe, probing_score


def _lists(n_lists=120, n=8, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_lists), n)
    y = np.tile((np.arange(n) < 2).astype(int), n_lists)  # 2 useful of 8, like k = 2
    return rng, groups, y


def test_random_features_score_near_chance():
    rng, groups, y = _lists()
    fit = knn_probe(rng.random((len(y), 4)), y, groups)
    assert 0.35 < fit.f1 < 0.62
    assert fit.pred.shape == y.shape and fit.proba.shape == (len(y), 2)
    assert np.allclose(fit.proba.sum(1), 1.0)
    assert len(fit.fold_f1) == 5


def test_informative_features_score_high():
    rng, groups, y = _lists()
    X = y[:, None] + 0.1 * rng.standard_normal((len(y), 3))
    assert knn_probe(X, y, groups).f1 > 0.95


def test_folds_never_split_a_list():
    # Every statement of a list has the same features and the same label: if a list's rows were split
    # across folds, distance-0 neighbours would give a perfect score; grouped folds give chance.
    rng = np.random.default_rng(1)
    n_lists, n = 200, 6
    groups = np.repeat(np.arange(n_lists), n)
    X = np.repeat(rng.random((n_lists, 3)), n, axis=0)
    y = np.repeat(rng.integers(0, 2, n_lists), n)
    assert knn_probe(X, y, groups).f1 < 0.7


def test_errors_are_clear():
    with pytest.raises(ValueError, match="two classes"):
        knn_probe(np.zeros((4, 1)), np.ones(4), np.arange(4))
    with pytest.raises(ValueError, match="two prompts"):
        knn_probe(np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.zeros(4))
    with pytest.raises(ValueError, match="differ in length"):
        knn_probe(np.zeros((4, 1)), np.array([0, 1, 0]), np.arange(4))


def test_probing_score():
    assert probing_score(0.89, 0.48) == pytest.approx((0.89 - 0.48) / 0.52)
    assert probing_score(0.5, 0.5) == 0.0
    assert probing_score(1.0, 0.3) == 1.0
    assert math.isnan(probing_score(0.9, 1.0))

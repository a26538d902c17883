"""The probe's kNN: equal to sklearn's, grouped folds, permutations within prompts, bootstrap F1, the score S."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from hopscope.methods.probe import classifier as C


def _data(n_groups=60, per=6, dims=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per)
    y = rng.integers(0, 3, len(groups))
    X = rng.random((len(groups), dims)) + 0.3 * y[:, None]
    return X, y, groups


@pytest.mark.parametrize("distance,p", [("euclidean", 2), ("manhattan", 1)])
def test_predictions_equal_sklearn_knn(distance, p):
    X, y, groups = _data()
    folds = C.make_folds(groups, 5, seed=0)
    nb = C.neighbours(X, folds, 8, distance)
    pred, proba = C.predict(nb, y, 3)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        clf = KNeighborsClassifier(n_neighbors=8, weights="distance", p=p).fit(X[train], y[train])
        assert (clf.predict(X[test]) == pred[test]).all()
        assert np.allclose(clf.predict_proba(X[test]), proba[test])
    assert C.macro_f1(y, pred, 3) == pytest.approx(f1_score(y, pred, average="macro"))


def test_a_row_at_distance_zero_takes_all_the_weight():
    X = np.array([[0.0], [0.0], [1.0], [1.1], [5.0]])
    y = np.array([1, 0, 1, 1, 1])
    nb = C.neighbours(X, [np.array([0]), np.array([1, 2, 3, 4])], k=4)
    assert C.predict(nb, y, 2)[0][0] == 0  # its twin (label 0) is at distance 0, so the three 1s do not count


def test_folds_never_split_a_group():
    _, _, groups = _data()
    folds = C.make_folds(groups, 5, seed=1)
    seen = [set(groups[t]) for t in folds]
    assert sum(len(s) for s in seen) == len(set(groups))
    with pytest.raises(ValueError, match="two theories"):
        C.make_folds(np.zeros(5), 5, 0)


def test_permutations_stay_within_groups():
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    perms = C.permuted_within(groups, 50, seed=0)
    for p in perms:
        assert sorted(p) == list(range(len(groups))) and (groups[p] == groups).all()
    assert len({tuple(p) for p in perms}) > 1


def test_confusion_f1_equals_f1_of_the_rows():
    rng = np.random.default_rng(2)
    y, pred = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    codes = np.repeat(np.arange(10), 4)
    pick = rng.integers(0, 10, 10)
    conf = np.zeros((10, 2, 2))
    np.add.at(conf, (codes, y, pred), 1)
    rows = np.concatenate([np.where(codes == g)[0] for g in pick])
    weights = np.bincount(pick, minlength=10).astype(float)
    assert C.f1_from_confusion(np.einsum("g,gij->ij", weights, conf)) == pytest.approx(
        f1_score(y[rows], pred[rows], average="macro"))


def test_probing_score():
    assert C.probing_score(0.89, 0.48) == pytest.approx((0.89 - 0.48) / 0.52)
    assert C.probing_score(0.5, 0.5) == 0.0
    assert math.isnan(C.probing_score(0.9, 1.0))
    assert np.allclose(C.probing_score(np.array([1.0, 0.5]), np.array([0.5, 0.5])), [1.0, 0.0])

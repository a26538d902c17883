"""The kNN probes of MechanisticProbe, their grouped cross-validation, and the statistics of the score S.

A probe is sklearn's ``KNeighborsClassifier(n_neighbors=8, weights="distance", p=...)`` (Hou et al.'s code),
computed here with numpy so that the neighbour graph of each fold is built once: label permutations and
bootstrap replicates then only re-vote, thousands of them in a second (the test suite checks the
predictions equal sklearn's). Folds never split a group (a theory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.model_selection import GroupKFold

METRICS = {"euclidean": "euclidean", "manhattan": "cityblock"}


def make_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test-row indices of each fold; no group is split (GroupKFold, groups shuffled with ``seed``)."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("grouped cross-validation needs statements from two theories or more")
    folds = GroupKFold(n_splits=min(n_folds, n_groups), shuffle=True, random_state=seed)
    return [test for _, test in folds.split(np.zeros(len(groups)), groups=groups)]


@dataclass
class Neighbours:
    """For every row, its ``k`` nearest rows among the training rows of its fold, with kNN weights."""

    index: np.ndarray    # [n, k] row indices
    weight: np.ndarray   # [n, k]


def neighbours(X: np.ndarray, folds: list[np.ndarray], k: int = 8, distance: str = "euclidean") -> Neighbours:
    """Out-of-fold neighbour graph with sklearn's ``weights="distance"`` (1/d; rows at distance 0 take all
    the weight)."""
    if distance not in METRICS:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(METRICS)}")
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    index = np.zeros((n, k), dtype=np.int64)
    weight = np.zeros((n, k))
    rows = np.arange(n)
    for test in folds:
        train = np.setdiff1d(rows, test)
        kk = min(k, len(train))
        d = cdist(X[test], X[train], metric=METRICS[distance])
        order = np.argsort(d, axis=1, kind="stable")[:, :kk]
        dist = np.take_along_axis(d, order, axis=1)
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        zero = dist == 0
        hit = zero.any(1)
        w[hit] = zero[hit].astype(float)
        index[test, :kk] = train[order]
        weight[test, :kk] = w
    return Neighbours(index, weight)


def vote(nb: Neighbours, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores ``[..., n, n_classes]`` from the neighbours' labels (``labels``: ``[n]`` or ``[P, n]`` of
    class indices)."""
    lab = np.asarray(labels)[..., nb.index]                          # [..., n, k]
    onehot = lab[..., None] == np.arange(n_classes)                  # [..., n, k, C]
    return (onehot * nb.weight[..., None]).sum(-2)


def predict(nb: Neighbours, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class index and class probabilities of every row (ties: the lowest class, as sklearn)."""
    scores = vote(nb, labels, n_classes)
    total = scores.sum(-1, keepdims=True)
    return scores.argmax(-1), scores / np.where(total > 0, total, 1.0)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 over the ``n_classes`` classes (a class with no true nor predicted row scores 0), over the
    last axis (so ``[P, n]`` arrays give ``P`` scores)."""
    y, pred = np.asarray(y), np.asarray(pred)
    f1 = []
    for c in range(n_classes):
        tp = ((y == c) & (pred == c)).sum(-1)
        fp = ((y != c) & (pred == c)).sum(-1)
        fn = ((y == c) & (pred != c)).sum(-1)
        den = 2 * tp + fp + fn
        f1.append(np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0))
    return np.mean(f1, axis=0)


def f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices ``[..., C, C]`` (rows: truth, columns: prediction)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    fp = conf.sum(-2) - tp
    fn = conf.sum(-1) - tp
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0).mean(-1)


def probing_score(f1_model, f1_random):
    """S = (F1_model - F1_random_init) / (1 - F1_random_init) (Hou et al.); NaN where the baseline is perfect."""
    f1_model, f1_random = np.asarray(f1_model, dtype=float), np.asarray(f1_random, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (f1_model - f1_random) / (1.0 - f1_random)
    s = np.where(f1_random >= 1.0, np.nan, s)
    return float(s) if s.ndim == 0 else s


def permuted_within(groups: np.ndarray, n_perm: int, seed: int) -> np.ndarray:
    """``[n_perm, n]`` row permutations that shuffle rows only within their group."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    codes = np.unique(groups, return_inverse=True)[1]
    base = np.lexsort((np.arange(len(groups)), codes))               # rows ordered by group
    out = np.empty((n_perm, len(groups)), dtype=np.int64)
    for p in range(n_perm):
        shuffled = np.lexsort((rng.random(len(groups)), codes))      # same group blocks, shuffled inside
        out[p, base] = shuffled
    return out

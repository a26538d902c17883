"""kNN probes scored by macro-F1 under cross-validation grouped by prompt, and the normalised score S."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier


@dataclass
class ProbeFit:
    """Mean and spread of the per-fold macro-F1, with out-of-fold predictions and class probabilities."""

    f1: float
    f1_std: float
    fold_f1: list[float]
    pred: np.ndarray
    proba: np.ndarray
    classes: np.ndarray


def knn_probe(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_neighbors: int = 8,
    n_splits: int = 5,
    seed: int = 0,
) -> ProbeFit:
    """Distance-weighted kNN probe; folds never split a prompt's statements (GroupKFold on ``groups``)."""
    X, y, groups = np.asarray(X, dtype=np.float64), np.asarray(y), np.asarray(groups)
    if not len(X) == len(y) == len(groups):
        raise ValueError(f"X, y and groups differ in length: {len(X)}, {len(y)}, {len(groups)}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"the probe needs two classes or more, labels are all {classes.tolist()}")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("grouped cross-validation needs statements from two prompts or more")
    folds = GroupKFold(n_splits=min(n_splits, n_groups), shuffle=True, random_state=seed)
    pred = np.empty_like(y)
    proba = np.zeros((len(y), len(classes)))
    scores = []
    for train, test in folds.split(X, y, groups):
        clf = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(train)), weights="distance")
        clf.fit(X[train], y[train])
        pred[test] = clf.predict(X[test])
        cols = np.searchsorted(classes, clf.classes_)
        proba[np.ix_(test, cols)] = clf.predict_proba(X[test])
        scores.append(float(f1_score(y[test], pred[test], average="macro", labels=classes, zero_division=0)))
    return ProbeFit(float(np.mean(scores)), float(np.std(scores)), scores, pred, proba, classes)


def probing_score(f1_model: float, f1_random: float) -> float:
    """S = (F1_model - F1_random_init) / (1 - F1_random_init); NaN when the baseline is already perfect."""
    if f1_random >= 1.0:
        return float("nan")
    return (f1_model - f1_random) / (1.0 - f1_random)

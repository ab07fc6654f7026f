"""Single-row scoring for the model families the project trains, without scikit-learn's per-call cost.

``predict_proba`` on one row pays for input validation, dataframe checks and an OpenMP dispatch per
tree: 2.6 ms for the 120-tree gradient-boosted model, ~0.8 ms for a scaled logistic regression or
MLP, on this 2-core machine (docs/performance-history.md, "Scoring one row"). A runner answers one request at a time, so that
cost is paid per request, by every model. ``compile_scorer`` reads the fitted parameters once and
returns a function of one feature row that does only the arithmetic: the same splits, the same
summation order, the same link function, so its probability equals scikit-learn's (to 1e-12; exactly
for trees, tests/unit/test_compiled.py). An estimator it does not know returns None and the runner
keeps calling scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# probability of class 1 for one row of float features, in the model's feature order
RowScorer = Callable[[Sequence[float]], float]


def compile_scorer(estimator: Any) -> RowScorer | None:
    """A fast equivalent of ``estimator.predict_proba([row])[0, 1]``, or None if the estimator is unknown."""
    from sklearn.pipeline import Pipeline

    scale: tuple[np.ndarray, np.ndarray] | None = None
    final = estimator
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if len(steps) != 2:
            return None
        scale = _standard_scaler(steps[0])
        if scale is None:
            return None
        final = steps[1]
    scorer = _final_scorer(final)
    if scorer is None:
        return None
    if scale is None:
        return scorer
    if not isinstance(scorer, _VectorScorer):
        return None  # a tree behind a scaler: not a shape the project trains
    mean, std = scale
    vector_scorer = scorer

    def scaled(row: Sequence[float]) -> float:
        x = np.asarray(row, dtype=np.float64)
        return vector_scorer((x - mean) / std)

    return scaled


def _standard_scaler(step: Any) -> tuple[np.ndarray, np.ndarray] | None:
    from sklearn.preprocessing import StandardScaler

    if not isinstance(step, StandardScaler) or not (step.with_mean and step.with_std):
        return None
    return np.asarray(step.mean_, dtype=np.float64), np.asarray(step.scale_, dtype=np.float64)


class _VectorScorer:
    """Marks a scorer that takes a float64 numpy row (so a scaler can run in front of it)."""

    def __init__(self, fn: Callable[[np.ndarray], float]) -> None:
        self._fn = fn

    def __call__(self, row: Any) -> float:
        return self._fn(np.asarray(row, dtype=np.float64))


def _final_scorer(est: Any) -> RowScorer | None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    if [int(c) for c in getattr(est, "classes_", [])] != [0, 1]:
        return None
    if type(est) is LogisticRegression:
        return _logistic(est)
    if type(est) is MLPClassifier:
        return _mlp(est)
    if type(est) is DecisionTreeClassifier:
        return _decision_tree(est)
    if type(est) is HistGradientBoostingClassifier:
        return _hist_gradient_boosting(est)
    return None


def _expit(z: float) -> float:
    # scipy.special.expit, which scikit-learn uses, is 1 / (1 + exp(-z)) in double precision.
    try:
        return 1.0 / (1.0 + math.exp(-z))
    except OverflowError:  # exp(-z) is inf in C: 1 / inf
        return 0.0


def _logistic(est: Any) -> RowScorer | None:
    coef = np.asarray(est.coef_, dtype=np.float64)
    if coef.shape[0] != 1:
        return None
    w, b = coef[0], float(est.intercept_[0])
    return _VectorScorer(lambda x: _expit(float(x @ w) + b))


def _mlp(est: Any) -> RowScorer | None:
    if est.activation != "relu" or est.out_activation_ != "logistic":
        return None
    layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
              for w, b in zip(est.coefs_, est.intercepts_, strict=True)]  # fmt: skip
    hidden, (w_out, b_out) = layers[:-1], layers[-1]

    def forward(x: np.ndarray) -> float:
        a = x
        for w, b in hidden:
            a = a @ w
            a += b
            np.maximum(a, 0.0, out=a)
        return _expit(float((a @ w_out + b_out)[0]))

    return _VectorScorer(forward)


def _decision_tree(est: Any) -> RowScorer | None:
    tree = est.tree_
    if tree.n_outputs != 1:
        return None
    left = tree.children_left.tolist()
    right = tree.children_right.tolist()
    feature = tree.feature.tolist()
    threshold = tree.threshold.tolist()
    value = tree.value[:, 0, :]
    total = value.sum(axis=1)
    total[total == 0.0] = 1.0
    proba = (value[:, 1] / total).tolist()

    def walk(row: Sequence[float]) -> float:
        # scikit-learn's trees compare float32 inputs against their thresholds
        x = np.asarray(row, dtype=np.float32).tolist()
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return float(proba[node])

    return walk


def _hist_gradient_boosting(est: Any) -> RowScorer | None:
    if est.n_trees_per_iteration_ != 1 or type(est._loss).__name__ != "HalfBinomialLoss":
        return None
    trees = []
    for (predictor,) in est._predictors:
        nodes = predictor.nodes
        if bool(nodes["is_categorical"].any()):
            return None
        trees.append((
            nodes["is_leaf"].astype(bool).tolist(),
            nodes["feature_idx"].tolist(),
            nodes["num_threshold"].tolist(),
            nodes["missing_go_to_left"].astype(bool).tolist(),
            nodes["left"].tolist(),
            nodes["right"].tolist(),
            nodes["value"].tolist(),
        ))  # fmt: skip
    baseline = float(est._baseline_prediction[0, 0])

    def raw(row: Sequence[float]) -> float:
        total = baseline
        for is_leaf, feat, thr, nan_left, left, right, value in trees:
            node = 0
            while not is_leaf[node]:
                x = row[feat[node]]
                if x != x:  # NaN: the side the training data's missing values went
                    node = left[node] if nan_left[node] else right[node]
                else:
                    node = left[node] if x <= thr[node] else right[node]
            total += value[node]
        return _expit(total)

    return raw

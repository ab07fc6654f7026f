"""runners.compiled: each compiled scorer gives scikit-learn's probability for every row it is given.

The models are the project's own families (runners.train.SPECS builds them), fitted on small synthetic
data so the test stays fast; inputs include values far outside the training range and exact split
thresholds, where a wrong comparison (< for <=, float64 for float32) would show.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from runners import train
from runners.compiled import compile_scorer
from runners.model import COMPILED_MAX_BATCH, ScoringModel

N_FEATURES = 4


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, N_FEATURES))
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=600)) > 0).astype(int)
    return x, y


def _fitted(model_id: str) -> Any:
    spec = next(s for s in train.SPECS if s.model_id == model_id)
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return spec.build(spec.params, 0).fit(x, y)


FAMILIES = ("gbt", "logreg", "tree", "mlp")
EXACT = ("gbt", "tree")  # same comparisons and the same summation order: bit for bit


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    return {m: _fitted(m) for m in FAMILIES}


def _rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.choice([1e-3, 1.0, 10.0, 1e4], size=(2000, N_FEATURES))
    return rng.normal(size=(2000, N_FEATURES)) * scale


@pytest.mark.parametrize("model_id", FAMILIES)
def test_compiled_probability_equals_scikit_learn(fitted: dict[str, Any], model_id: str) -> None:
    est = fitted[model_id]
    scorer = compile_scorer(est)
    assert scorer is not None, f"{model_id}: the project's own family must compile"
    rows = _rows(1)
    expected = est.predict_proba(rows)[:, 1]
    got = np.array([scorer(r) for r in rows.tolist()])
    if model_id in EXACT:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model_id", EXACT)
def test_rows_on_a_split_threshold_go_the_same_way(fitted: dict[str, Any], model_id: str) -> None:
    est = fitted[model_id]
    if model_id == "tree":
        thresholds = est.tree_.threshold[est.tree_.feature >= 0]
    else:
        nodes = np.concatenate([p.nodes for (p,) in est._predictors])
        thresholds = nodes["num_threshold"][~nodes["is_leaf"].astype(bool)]
    rows = np.tile(thresholds[:, None], (1, N_FEATURES))  # every feature sits on some threshold
    scorer = compile_scorer(est)
    assert scorer is not None
    np.testing.assert_array_equal([scorer(r) for r in rows.tolist()], est.predict_proba(rows)[:, 1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=N_FEATURES,
                max_size=N_FEATURES))  # fmt: skip
def test_gradient_boosting_matches_on_any_finite_row(row: list[float]) -> None:
    est = _gbt()
    scorer = compile_scorer(est)
    assert scorer is not None
    assert scorer(row) == est.predict_proba(np.asarray([row]))[0, 1]


@functools.cache
def _gbt() -> Any:
    return _fitted("gbt")


def test_missing_values_follow_the_side_learnt_in_training() -> None:
    x, y = _data(2)
    x[::7, 1] = np.nan  # the booster learns where missing values go
    est = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    rows = _rows(3)
    rows[::3, 1] = np.nan
    scorer = compile_scorer(est)
    assert scorer is not None
    np.testing.assert_array_equal([scorer(r) for r in rows.tolist()], est.predict_proba(rows)[:, 1])


def test_unknown_estimators_are_left_to_scikit_learn() -> None:
    x, y = _data()
    assert compile_scorer(RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)) is None
    assert compile_scorer(make_pipeline(MinMaxScaler(), _fitted("logreg")[-1])) is None
    # a tree behind a scaler is a valid pipeline, but not a shape the project compiles
    assert compile_scorer(make_pipeline(StandardScaler(), DecisionTreeClassifier()).fit(x, y)) is None
    assert compile_scorer(DecisionTreeClassifier().fit(x, x[:, 0] > 0.5)) is not None  # bool classes


def test_scoring_model_uses_the_compiled_scorer_for_small_batches(fitted: dict[str, Any]) -> None:
    est = fitted["gbt"]
    calls = []

    class Counting:
        """Counts scikit-learn calls, to see which path a batch took."""

        classes_ = est.classes_

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return est.predict_proba(x)

    names = tuple(f"f{i}" for i in range(N_FEATURES))
    model = ScoringModel("gbt", "v", names, Counting(), row_scorer=compile_scorer(est))
    rows = [dict(zip(names, r, strict=True)) for r in _rows(4)[: COMPILED_MAX_BATCH + 1].tolist()]
    small = model.score_batch(rows[:COMPILED_MAX_BATCH])
    assert calls == []
    large = model.score_batch(rows)
    assert calls == [COMPILED_MAX_BATCH + 1]
    assert large[:COMPILED_MAX_BATCH] == small

"""ScoringModel and load(): input checks, per-row errors, and the output objects runners send."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from runners.model import META_FILE, MODEL_FILE, THRESHOLD, ScoringModel, load

FEATURES = ("a", "b")


def _estimator() -> LogisticRegression:
    """p(y=1) rises steeply with a + b, so both labels show up on small inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return LogisticRegression().fit(x, y)


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    return ScoringModel("m1", "m1-v1", FEATURES, _estimator())


def _save(path: Path, estimator: Any, meta: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, path / MODEL_FILE)
    (path / META_FILE).write_text(json.dumps(meta))
    return path


def test_outputs_are_label_and_probability_consistent_with_the_estimator(model: ScoringModel) -> None:
    rows = [{"a": 2.0, "b": 1.0}, {"a": -2.0, "b": -1.5}, {"a": 0.1, "b": -0.05}]
    out = model.score_batch(rows)
    expected = model.estimator.predict_proba(np.array([[r["a"], r["b"]] for r in rows]))[:, 1]
    assert len(out) == 3
    for o, p in zip(out, expected, strict=True):
        assert isinstance(o, dict)
        assert set(o) == {"label", "probability"}
        assert type(o["label"]) is int and type(o["probability"]) is float
        assert o["probability"] == pytest.approx(p, abs=1e-6)
        assert o["label"] == int(o["probability"] >= THRESHOLD)
    assert [o["label"] for o in out if isinstance(o, dict)] == [1, 0, 1]


def test_a_bad_row_gets_its_own_error_and_spoils_nothing_else(model: ScoringModel) -> None:
    good = [{"a": 1.0, "b": 2.0}, {"a": -3.0, "b": 0.5}]
    alone = model.score_batch(good)
    mixed = model.score_batch([good[0], {"a": 1.0}, {"a": "x", "b": None}, "nope", good[1]])
    assert mixed[0] == alone[0] and mixed[4] == alone[1]
    assert isinstance(mixed[1], ValueError) and "missing features: b" in str(mixed[1])
    assert isinstance(mixed[2], ValueError)
    assert "non-numeric" in str(mixed[2]) and "a=" in str(mixed[2]) and "b=" in str(mixed[2])
    assert isinstance(mixed[3], ValueError) and "must be an object" in str(mixed[3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.5", None, [1], {"x": 1}])
def test_unusable_values_raise_value_error_from_score_one(model: ScoringModel, bad: Any) -> None:
    with pytest.raises(ValueError, match="a="):
        model.score_one({"a": bad, "b": 0.0})


def test_booleans_count_as_zero_one_and_extra_features_are_ignored(model: ScoringModel) -> None:
    as_bool = model.score_one({"a": True, "b": False, "unused": "text"})
    as_int = model.score_one({"a": 1, "b": 0})
    assert as_bool == as_int


def test_all_rows_bad_or_empty_batch_needs_no_model_call() -> None:
    class Exploding:
        def predict_proba(self, x: Any) -> Any:
            raise AssertionError("must not be called")

    m = ScoringModel("m", "v", FEATURES, Exploding())
    assert m.score_batch([]) == []
    (only,) = m.score_batch([{}])
    assert isinstance(only, ValueError)


def test_probabilities_are_clamped_into_the_unit_interval() -> None:
    class Sloppy:
        def predict_proba(self, x: Any) -> Any:
            return np.array([[-0.1, 1.0000001], [1.2, -0.2]])

    m = ScoringModel("m", "v", FEATURES, Sloppy())
    out = m.score_batch([{"a": 0, "b": 0}, {"a": 0, "b": 0}])
    assert out == [{"label": 1, "probability": 1.0}, {"label": 0, "probability": 0.0}]


def test_a_non_finite_model_output_is_a_row_error_not_bad_json() -> None:
    class Broken:
        def predict_proba(self, x: Any) -> Any:
            return np.array([[0.5, float("nan")], [0.3, 0.7]])

    m = ScoringModel("m", "v", FEATURES, Broken())
    out = m.score_batch([{"a": 0, "b": 0}, {"a": 0, "b": 0}])
    assert isinstance(out[0], ValueError) and "non-finite" in str(out[0])
    assert out[1] == {"label": 1, "probability": 0.7}


def test_load_round_trip(tmp_path: Path) -> None:
    est = _estimator()
    meta = {"model_id": "m7", "model_version": "m7-abc", "features": list(FEATURES), "extra": 1}
    m = load(_save(tmp_path / "m7", est, meta))
    assert (m.model_id, m.model_version, m.features) == ("m7", "m7-abc", FEATURES)
    assert m.meta["extra"] == 1
    out = m.score_one({"a": 0.3, "b": 0.4})
    assert math.isclose(out["probability"], est.predict_proba([[0.3, 0.4]])[0, 1], abs_tol=1e-6)


def test_load_without_meta_says_to_train(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runners.train"):
        load(tmp_path / "nothing")


def test_load_rejects_meta_that_does_not_match_the_model(tmp_path: Path) -> None:
    est = _estimator()
    wrong_features = {"model_id": "m", "model_version": "v", "features": ["a", "b", "c"]}
    with pytest.raises(ValueError, match="2 features"):
        load(_save(tmp_path / "x", est, wrong_features))
    no_version = {"model_id": "m", "features": ["a", "b"]}
    with pytest.raises(ValueError, match="model_version"):
        load(_save(tmp_path / "y", est, no_version))


def test_load_rejects_non_binary_classifiers(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(90, 2))
    est = LogisticRegression().fit(x, np.arange(90) % 3)
    meta = {"model_id": "m", "model_version": "v", "features": ["a", "b"]}
    with pytest.raises(ValueError, match="classes"):
        load(_save(tmp_path / "z", est, meta))

"""The synthetic data set: deterministic, fraud-like balance, and the same distribution for requests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from runners import data
from runners.data import FEATURES, generate, sample_features, sample_many

INT_FEATURES = {"hour", "tx_last_24h", "account_age_days", "is_foreign", "card_present"}


def test_features_are_about_eight_named_numeric_columns() -> None:
    frame, labels = generate(500, seed=1)
    assert tuple(frame.columns) == FEATURES
    assert 6 <= len(FEATURES) <= 10
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in FEATURES)
    assert labels.shape == (500,)
    assert set(np.unique(labels)) <= {0, 1}


def test_same_seed_same_data_other_seed_other_data() -> None:
    a_x, a_y = generate(3000, seed=11)
    b_x, b_y = generate(3000, seed=11)
    c_x, c_y = generate(3000, seed=12)
    pd.testing.assert_frame_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert not a_x.equals(c_x)
    assert not np.array_equal(a_y, c_y)


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_positive_rate_is_fraud_like(seed: int) -> None:
    _, labels = generate(20000, seed)
    assert 0.03 <= labels.mean() <= 0.08


def test_value_ranges_are_plausible() -> None:
    frame, _ = generate(20000, seed=3)
    assert frame["amount"].between(0, 25_000).all()
    assert frame["hour"].between(0, 23).all()
    assert frame["hour"].nunique() == 24
    assert frame["merchant_risk"].between(0, 1).all()
    assert (frame["distance_km"] >= 0).all()
    assert (frame["tx_last_24h"] >= 0).all()
    assert (frame["account_age_days"] >= 1).all()
    for flag in ("is_foreign", "card_present"):
        assert set(frame[flag].unique()) == {0, 1}
    for name in INT_FEATURES:
        assert pd.api.types.is_integer_dtype(frame[name]), name


def test_labels_depend_on_an_interaction_not_only_main_effects() -> None:
    """Night, card-not-present, large purchases are riskier together than their parts suggest."""
    frame, labels = generate(200_000, seed=5)
    night = (frame["hour"] <= 4) | (frame["hour"] >= 23)
    cnp = frame["card_present"] == 0
    big = frame["amount"] > 150
    rate = lambda mask: labels[mask.to_numpy()].mean()  # noqa: E731
    assert rate(night & cnp & big) > 2 * rate(~night & cnp & big)
    assert rate(night & cnp & big) > 2 * rate(night & cnp & ~big)


def test_negative_n_is_rejected_and_zero_is_empty() -> None:
    with pytest.raises(ValueError):
        generate(-1, seed=0)
    frame, labels = generate(0, seed=0)
    assert len(frame) == 0 and len(labels) == 0


def test_sample_features_is_plain_json_ready_python() -> None:
    row = sample_features(np.random.default_rng(0))
    assert tuple(row) == FEATURES
    for name, value in row.items():
        expected = int if name in INT_FEATURES else float
        assert type(value) is expected, (name, type(value))
    assert json.loads(json.dumps(row)) == row


def test_sample_features_is_deterministic_by_rng() -> None:
    a = [sample_features(np.random.default_rng(42)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(42)
    assert sample_features(rng) != sample_features(rng)


def test_samples_follow_the_training_distribution() -> None:
    frame, _ = generate(20000, seed=9)
    sampled = pd.DataFrame(sample_many(np.random.default_rng(9), 20000))
    rng = np.random.default_rng(10)
    one_by_one = pd.DataFrame([sample_features(rng) for _ in range(2000)])
    for name in ("hour", "merchant_risk", "tx_last_24h", "is_foreign", "card_present"):
        assert sampled[name].mean() == pytest.approx(frame[name].mean(), rel=0.08), name
        assert one_by_one[name].mean() == pytest.approx(frame[name].mean(), rel=0.2), name
    # Heavy tails: compare medians, not means.
    for name in ("amount", "distance_km", "account_age_days"):
        assert sampled[name].median() == pytest.approx(frame[name].median(), rel=0.1), name


def test_generate_draws_features_like_sample_many() -> None:
    """generate() and the request sampler share one draw, so the same seed gives the same features."""
    frame, _ = generate(50, seed=4)
    sampled = sample_many(np.random.default_rng(4), 50)
    assert frame.to_dict(orient="records") == sampled
    assert data.DATA_VERSION >= 1

"""A synthetic, fraud-like data set, generated from a seed so training needs no downloads.

The ground truth is deliberately nonlinear (thresholds and interactions) on top of a smooth additive part,
so that gradient boosting beats logistic regression, which beats a depth-3 tree: the demo needs models
that visibly differ in quality, not a realistic fraud model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# Bump when the generator changes: it is part of every model version (see runners.train).
DATA_VERSION = 1

FEATURES: tuple[str, ...] = (
    "amount",
    "hour",
    "merchant_risk",
    "distance_km",
    "tx_last_24h",
    "account_age_days",
    "is_foreign",
    "card_present",
)

# Shifts the logit so that roughly 5% of rows are positive (checked by tests/unit/test_runners_data.py).
_INTERCEPT = -4.3

# Daytime-heavy distribution of the hour of day.
_HOUR_WEIGHTS = np.array(
    [2, 1.5, 1, 1, 1, 1.5, 3, 5, 6, 6, 6, 6, 7, 7, 6, 6, 6, 6, 7, 7, 6, 5, 4, 3], dtype=float
)
_HOUR_CDF = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()


def _round(x: np.ndarray, digits: int) -> np.ndarray:
    """np.round without its Python-level overhead, which dominates the one-row draws."""
    scale = 10.0**digits
    return np.rint(x * scale) / scale


def _draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Draw n rows of features as columns; shared by generate() and sample_features()."""
    card_present = (rng.random(n) < 0.6).astype(np.int64)
    is_foreign = (rng.random(n) < 0.08).astype(np.int64)
    # Card-not-present purchases tend to be larger; foreign ones are far away.
    amount = _round(rng.lognormal(3.4 + 0.4 * (1 - card_present), 1.1, n), 2)
    distance = rng.lognormal(1.5, 1.2, n) + is_foreign * rng.lognormal(6.5, 0.6, n)
    return {
        "amount": np.minimum(amount, 25_000.0),
        # Inverse-CDF rather than rng.choice(p=...): several times faster for the one-row draws.
        "hour": np.minimum(np.searchsorted(_HOUR_CDF, rng.random(n), side="right"), 23).astype(np.int64),
        "merchant_risk": _round(rng.beta(2.0, 6.0, n), 4),
        "distance_km": _round(np.minimum(distance, 20_000.0), 2),
        "tx_last_24h": rng.poisson(2.5, n).astype(np.int64),
        "account_age_days": (np.floor(rng.exponential(700.0, n)) + 1).astype(np.int64),
        "is_foreign": is_foreign,
        "card_present": card_present,
    }


def _logit(c: dict[str, np.ndarray]) -> np.ndarray:
    """The ground truth: a smooth additive part (what a linear model can learn) plus interactions."""
    log_amount = np.log1p(c["amount"])
    log_dist = np.log1p(c["distance_km"])
    hour = c["hour"]
    night = ((hour <= 4) | (hour >= 23)).astype(float)
    new_account = (c["account_age_days"] < 60).astype(float)
    not_present = 1.0 - c["card_present"]
    # Additive, roughly monotone effects.
    z = (
        _INTERCEPT
        + 0.3 * (log_amount - 3.5)
        + 2.0 * c["merchant_risk"]
        + 0.15 * log_dist
        + 0.1 * c["tx_last_24h"]
        - 0.2 * np.log1p(c["account_age_days"]) / np.log(10)
        + 0.4 * c["is_foreign"]
        + 0.5 * not_present
    )
    # Thresholds, non-monotone effects and interactions that only a flexible model picks up.
    z = z + 1.2 * night + 1.8 * night * not_present * (c["amount"] > 150)
    z = z + 2.0 * (c["amount"] < 3)  # card testing: tiny amounts
    z = z + 2.2 * c["is_foreign"] * new_account
    z = z + 2.0 * (c["tx_last_24h"] >= 6) * (c["distance_km"] > 30)
    z = z + 6.0 * np.maximum(c["merchant_risk"] - 0.4, 0.0) * not_present
    z = z - 1.5 * c["card_present"] * (c["amount"] < 40) * (1 - night)
    return z


def generate(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """n rows of features (columns = FEATURES) and 0/1 labels; the same seed gives the same data."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    cols = _draw(rng, n)
    p = 1.0 / (1.0 + np.exp(-_logit(cols)))
    labels = (rng.random(n) < p).astype(np.int64)
    return pd.DataFrame({f: cols[f] for f in FEATURES}), labels


def sample_features(rng: np.random.Generator) -> dict[str, Any]:
    """One request's features as plain Python numbers (JSON-serialisable), same distribution as generate()."""
    return sample_many(rng, 1)[0]


def sample_many(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """n requests' features at once: far cheaper per row than n calls to sample_features()."""
    cols = _draw(rng, n)
    lists = {f: cols[f].tolist() for f in FEATURES}  # tolist() yields Python ints/floats
    return [{f: lists[f][i] for f in FEATURES} for i in range(n)]


def truth_labels(features: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> list[int]:
    """0/1 labels drawn from the generator's true fraud probability for features already sent.

    For requests whose features came from ``sample_many`` (the load generator): the label
    is a fresh draw from the same ground truth that ``generate`` uses, so the models' quality on these
    labels is what it was on the holdout.
    """
    if not features:
        return []
    cols = {f: np.asarray([float(x[f]) for x in features]) for f in FEATURES}
    p = 1.0 / (1.0 + np.exp(-_logit(cols)))
    return [int(y) for y in (rng.random(len(p)) < p)]

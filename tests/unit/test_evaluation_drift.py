"""evaluation.drift: PSI and KS on known data, the config's validation, score and input drift, alerts."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from scipy.stats import ks_2samp

from evaluation.drift import (
    INPUT_DRIFT_COLUMNS,
    SCORE_DRIFT_COLUMNS,
    Alert,
    DriftConfig,
    canary_pairs,
    decision_pairs,
    features_from_archive,
    input_alerts,
    input_drift,
    ks,
    psi,
    quantile_edges,
    score_alerts,
    score_drift,
    score_drift_pairs,
)
from runners.data import FEATURES, generate

ROOT = Path(__file__).resolve().parents[2]
ALERT_SCHEMA = json.loads((ROOT / "schemas" / "alert.schema.json").read_text())
ALERT_VALIDATOR = Draft202012Validator(ALERT_SCHEMA)

# --- PSI and KS ------------------------------------------------------------------------------------------


def test_psi_of_a_sample_with_itself_is_zero_and_a_shift_is_large() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, x + 0.05) < 0.05
    assert psi(x, x + 1.0) > 0.25


def test_psi_binary_feature_by_hand() -> None:
    """0/1 data: the quantile edges collapse to one edge at 0, so two bins: {0} and {1}."""
    ref = np.array([0] * 92 + [1] * 8)
    cur = np.array([0] * 50 + [1] * 50)
    assert quantile_edges(ref).tolist() == [0.0]
    eps = 1e-4
    p = (np.array([0.92, 0.08]) + eps) / (1 + 2 * eps)
    q = (np.array([0.5, 0.5]) + eps) / (1 + 2 * eps)
    assert psi(ref, cur, eps=eps) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi(ref, cur) == pytest.approx(1.026, abs=1e-3)


def test_psi_is_finite_when_recent_leaves_bins_empty() -> None:
    ref = np.arange(1000, dtype=float)
    cur = np.full(100, 5000.0)  # everything in the top bin
    value = psi(ref, cur)
    assert math.isfinite(value) and value > 5
    assert psi(ref, cur, eps=1e-2) < value  # more smoothing, smaller index


def test_psi_and_ks_refuse_empty_input() -> None:
    with pytest.raises(ValueError, match="^recent:"):
        psi([1.0, 2.0], [math.nan])
    with pytest.raises(ValueError, match="^reference:"):
        ks([], [1.0])
    with pytest.raises(ValueError, match="^bins:"):
        psi([1.0, 2.0], [1.0], bins=1)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=80),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=80),
)
def test_psi_non_negative_and_ks_equals_scipy(a: list[float], b: list[float]) -> None:
    assert psi(a, b) >= -1e-12
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    with warnings.catch_warnings():  # scipy's p-value can warn on tiny samples; only the statistic matters
        warnings.simplefilter("ignore")
        expected = ks_2samp(a, b, method="asymp").statistic
    assert ks(a, b) == pytest.approx(expected)
    assert 0.0 <= ks(a, b) <= 1.0


def test_ks_known_values() -> None:
    assert ks([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks([1, 2, 3], [3, 2, 1]) == 0.0
    assert ks([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5


# --- config ----------------------------------------------------------------------------------------------


def test_config_defaults_and_overrides() -> None:
    assert DriftConfig.from_dict(None) == DriftConfig() == DriftConfig.from_dict({})
    cfg = DriftConfig.from_dict({"psi_alert": 1, "min_count": 5, "window_ms": 60_000, "slide_ms": 30_000})
    assert (cfg.psi_alert, cfg.min_count, cfg.window_ms, cfg.slide_ms) == (1.0, 5, 60_000, 30_000)
    assert isinstance(cfg.psi_alert, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.psi_alert = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"psi_alert": 0}, "psi_alert"),
        ({"psi_alert": "high"}, "psi_alert"),
        ({"ks_alert": 1.5}, "ks_alert"),
        ({"agreement_min": -0.1}, "agreement_min"),
        ({"agreement_min": True}, "agreement_min"),
        ({"eps": 0}, "eps"),
        ({"eps": math.inf}, "eps"),
        ({"bins": 1}, "bins"),
        ({"bins": 10.0}, "bins"),
        ({"min_count": 0}, "min_count"),
        ({"window_ms": 0}, "window_ms"),
        ({"slide_ms": -5}, "slide_ms"),
        ({"psi_alarm": 0.2}, "psi_alarm"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        DriftConfig.from_dict(data)


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        DriftConfig.from_dict([1, 2])  # type: ignore[arg-type]


# --- score drift against the canary ----------------------------------------------------------------------


def canary_record(
    i: int, model: str | None, p_official: float | None, p_canary: float | None, at: int
) -> dict[str, Any]:
    official_output = (
        None if p_official is None else {"label": int(p_official >= 0.5), "probability": p_official}
    )
    canary = None
    agree = None
    if p_canary is not None:
        canary = {
            "model_id": "base",
            "model_version": "base-1",
            "status": "ok",
            "output": {"label": int(p_canary >= 0.5), "probability": p_canary},
            "arrived_at_ms": at,
        }
        if official_output is not None:
            agree = (p_official >= 0.5) == (p_canary >= 0.5)  # type: ignore[operator]
    return {
        "request_id": f"r{i}",
        "policy_version": 1,
        "decided_at_ms": at,
        "official": {
            "model_id": model,
            "model_version": None if model is None else f"{model}-1",
            "output": official_output,
            "reason": "no_answer" if model is None else "preferred",
        },
        "canary": canary,
        "agree": agree,
    }


def test_canary_pairs_skip_what_cannot_be_compared() -> None:
    records = [
        canary_record(0, "gbt", 0.9, 0.8, 10),
        canary_record(1, None, None, 0.2, 11),  # no answer
        canary_record(2, "gbt", 0.4, None, 12),  # canary silent
    ]
    pairs = canary_pairs(records)
    assert pairs[["model_id", "p_model", "p_canary", "agree"]].values.tolist() == [
        ["gbt", 0.9, 0.8, 1.0],
        ["official", 0.9, 0.8, 1.0],
    ]


def test_score_drift_finds_the_model_that_moved() -> None:
    """gbt tracks the canary for the first hour and then scores everything high; logreg keeps tracking."""
    rng = np.random.default_rng(1)
    hour = 3_600_000
    records = []
    for i in range(800):
        at = (i // 400) * hour + i  # 400 in hour 0, 400 in hour 1
        c = float(rng.beta(2, 5))
        model = "gbt" if i % 2 == 0 else "logreg"
        drifted = model == "gbt" and at >= hour
        p = min(1.0, c + 0.5) if drifted else float(np.clip(c + rng.normal(0, 0.02), 0, 1))
        records.append(canary_record(i, model, p, c, at))
    cfg = DriftConfig.from_dict({"min_count": 100, "window_ms": hour, "slide_ms": hour})
    drift = score_drift(records, cfg)
    assert list(drift.columns) == list(SCORE_DRIFT_COLUMNS)
    by = drift.set_index(["window_start_ms", "model_id"])
    assert by.loc[(0, "gbt"), "count"] == 200 and by.loc[(0, "official"), "count"] == 400
    assert by.loc[(0, "gbt"), "psi"] < 0.1 and by.loc[(0, "logreg"), "psi"] < 0.1
    assert by.loc[(hour, "gbt"), "psi"] > 1.0 and by.loc[(hour, "gbt"), "ks"] > 0.5
    assert by.loc[(hour, "gbt"), "agreement"] < 0.6
    assert by.loc[(hour, "logreg"), "agreement"] > 0.9
    alerts = score_alerts(drift, cfg, now_ms=2 * hour)
    fired = {(a.kind, a.subject, a.metric, a.window_start_ms) for a in alerts}
    assert ("score_drift", "gbt", "psi", hour) in fired
    assert ("score_drift", "gbt", "ks", hour) in fired
    assert ("canary_agreement", "gbt", "agreement", hour) in fired
    assert not any(a.subject == "logreg" or a.window_start_ms == 0 for a in alerts)
    for a in alerts:
        d = a.to_dict()
        assert list(ALERT_VALIDATOR.iter_errors(d)) == [], d
        assert d["at_ms"] == 2 * hour and d["subject"] in d["message"]
    agreement_alert = next(a for a in alerts if a.metric == "agreement")
    assert agreement_alert.direction == "below" and agreement_alert.threshold == 0.9


def test_small_windows_are_measured_but_not_alerted_on() -> None:
    records = [canary_record(i, "gbt", 0.99, 0.01, i) for i in range(20)]
    cfg = DriftConfig.from_dict({"min_count": 21, "window_ms": 1000, "slide_ms": 1000})
    drift = score_drift(records, cfg)
    assert drift.loc[drift.model_id == "gbt", "agreement"].tolist() == [0.0]
    assert score_alerts(drift, cfg, now_ms=0) == []
    assert (
        len(score_alerts(drift, dataclasses.replace(cfg, min_count=20), now_ms=0)) == 6
    )  # 3 x (gbt, official)


def test_score_drift_empty() -> None:
    assert score_drift([]).empty
    assert list(score_drift_pairs(canary_pairs([])).columns) == list(SCORE_DRIFT_COLUMNS)


def test_decision_pairs_cover_every_model() -> None:
    def s(model: str, status: str = "ok", p: float | None = None, dup: bool = False) -> dict[str, Any]:
        out = None if status != "ok" else {"label": int((p or 0) >= 0.5), "probability": p}
        return {"model_id": model, "status": status, "output": out, "duplicate": dup}

    decisions: list[dict[str, Any]] = [
        {"request_id": "a", "decided_at_ms": 5, "scores": [s("gbt", p=0.7), s("base", p=0.6), s("mlp", p=0.1),
                                                            s("tree", "error"), s("mlp", p=0.9, dup=True)]},
        {"request_id": "b", "decided_at_ms": 6, "scores": [s("gbt", p=0.7), s("base", "error")]},
        {"request_id": "c", "decided_at_ms": None, "scores": [s("gbt", p=0.7), s("base", p=0.6)]},
    ]  # fmt: skip
    pairs = decision_pairs(decisions, "base")
    assert pairs[["request_id", "model_id", "p_model", "p_canary", "agree"]].values.tolist() == [
        ["a", "gbt", 0.7, 0.6, 1.0],
        ["a", "mlp", 0.1, 0.6, 0.0],
    ]


# --- input drift -----------------------------------------------------------------------------------------


def test_input_drift_on_generated_data() -> None:
    reference, _ = generate(5000, seed=1)
    same, _ = generate(3000, seed=2)
    shifted = same.assign(amount=same["amount"] * 4, is_foreign=1)
    cfg = DriftConfig()
    stable = input_drift(reference, same, FEATURES, cfg)
    assert list(stable.columns) == list(INPUT_DRIFT_COLUMNS)
    assert stable["feature"].tolist() == list(FEATURES)
    assert (stable["psi"] < 0.02).all() and (stable["ks"] < 0.05).all()
    assert input_alerts(stable, cfg, now_ms=0) == []
    moved = input_drift(reference, shifted, FEATURES, cfg).set_index("feature")
    assert moved.loc["amount", "psi"] > 0.5 and moved.loc["is_foreign", "psi"] > 1.0
    alerts = input_alerts(moved.reset_index(), cfg, now_ms=42)
    assert {a.subject for a in alerts} == {"amount", "is_foreign"}
    assert all(a.kind == "input_drift" and a.window_start_ms is None for a in alerts)
    assert all(not list(ALERT_VALIDATOR.iter_errors(a.to_dict())) for a in alerts)


def test_input_drift_missing_feature_is_nan() -> None:
    out = input_drift(pd.DataFrame({"a": [1.0, 2.0]}), pd.DataFrame({"a": [1.0], "b": ["x"]}), ["a", "b"])
    assert out.loc[0, "n_recent"] == 1 and math.isnan(out.loc[1, "psi"]) and out.loc[1, "n_recent"] == 0


def test_features_from_archive() -> None:
    archive = pd.DataFrame(
        {"request_id": ["a", "b"], "features": ['{"amount": 3.5, "hour": 2}', '{"amount": 1}']}
    )
    feats = features_from_archive(archive)
    assert feats["amount"].tolist() == [3.5, 1.0]
    assert feats["hour"].tolist()[0] == 2 and math.isnan(feats["hour"].tolist()[1])
    plain = pd.DataFrame({"amount": [1.0]})
    assert features_from_archive(plain) is plain


def test_alert_schema_matches_the_dataclass() -> None:
    Draft202012Validator.check_schema(ALERT_SCHEMA)
    assert ALERT_SCHEMA["$id"] == "urn:rendezvous:schema:alert:1"
    assert set(ALERT_SCHEMA["required"]) == {f.name for f in dataclasses.fields(Alert)}
    bad = Alert("score_drift", "gbt", "auc", 1.0, 0.5, "above", 1, None, None, 0, "x").to_dict()
    assert not ALERT_VALIDATOR.is_valid(bad)

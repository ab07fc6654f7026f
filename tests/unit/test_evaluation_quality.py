"""evaluation.quality: metrics on known data, and sliding windows that match their definition."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from evaluation.quality import (
    METRIC_COLUMNS,
    log_loss,
    metrics,
    paired_auc,
    quality_by_model,
    quality_windows,
    roc_auc,
    window_starts,
)


def test_roc_auc_known_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie is half right
    assert roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))  # one class: undefined, not 0 or 1
    assert math.isnan(roc_auc([], []))
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.5])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=2, max_size=60))
def test_roc_auc_equals_sklearn(pairs: list[tuple[int, int]]) -> None:
    y = [a for a, _ in pairs]
    s = [b / 20 for _, b in pairs]  # few distinct values: many ties
    if len(set(y)) < 2:
        assert math.isnan(roc_auc(y, s))
    else:
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_log_loss_known_values_and_clipping() -> None:
    assert log_loss([1, 0], [0.8, 0.2]) == pytest.approx(-math.log(0.8))
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # a confident miss is finite
    assert log_loss([0, 1, 1], [0.1, 0.6, 0.99]) == pytest.approx(sk_log_loss([0, 1, 1], [0.1, 0.6, 0.99]))
    assert math.isnan(log_loss([], []))


def frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["request_id", "model_id", "probability", "label", "value", "label_true", "decided_at_ms"]
    return pd.DataFrame(rows, columns=cols)


NAN = math.nan


def test_metrics_on_a_hand_built_model() -> None:
    # Probabilities decide the answer where present (threshold 0.5); a label alone otherwise; an error
    # (nothing usable) is counted as missing and left out of the metrics.
    rows = frame(
        [
            ("a", "m", 0.9, 0.0, NAN, 1, 0),  # p says 1, right (the label field is ignored: p wins)
            ("b", "m", 0.2, NAN, NAN, 0, 0),  # right
            ("c", "m", 0.6, NAN, NAN, 0, 0),  # wrong
            ("d", "m", NAN, 1.0, NAN, 1, 0),  # label only: right, not in AUC/log loss
            ("e", "m", NAN, NAN, NAN, 1, 0),  # no answer
        ]
    )
    m = metrics(rows)
    assert {k: m[k] for k in ("count", "answered", "missing", "positives")} == {
        "count": 5,
        "answered": 4,
        "missing": 1,
        "positives": 3,
    }
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["auc"] == pytest.approx(roc_auc_score([1, 0, 0], [0.9, 0.2, 0.6]))
    assert m["log_loss"] == pytest.approx(sk_log_loss([1, 0, 0], [0.9, 0.2, 0.6]))
    assert math.isnan(m["mae"])


def test_metrics_threshold_and_values() -> None:
    rows = frame([("a", "m", 0.4, NAN, 2.0, 1, 0), ("b", "m", 0.3, NAN, 5.0, 0, 0)])
    assert metrics(rows)["accuracy"] == 0.5
    assert metrics(rows, threshold=0.35)["accuracy"] == 1.0
    assert metrics(rows)["mae"] == pytest.approx((1.0 + 5.0) / 2)


def test_quality_by_model_includes_official() -> None:
    rows = frame(
        [
            ("a", "official", 0.9, 1.0, NAN, 1, 0),
            ("b", "official", NAN, NAN, NAN, 0, 0),  # no_answer
            ("a", "gbt", 0.9, 1.0, NAN, 1, 0),
            ("b", "gbt", 0.1, 0.0, NAN, 0, 0),
        ]
    )
    q = quality_by_model(rows)
    assert list(q.columns) == ["model_id", *METRIC_COLUMNS]
    assert q["model_id"].tolist() == ["gbt", "official"]
    gbt, off = q.iloc[0], q.iloc[1]
    assert (gbt["count"], gbt["accuracy"], gbt["auc"]) == (2, 1.0, 1.0)
    assert (off["count"], off["missing"], off["accuracy"]) == (2, 1, 1.0)
    assert math.isnan(off["auc"])  # only one class answered


def test_window_starts_by_hand() -> None:
    w = window_starts(pd.Series([7, 12, 0], index=[10, 11, 12]), window_ms=10, slide_ms=5)
    assert sorted(zip(w["index"], w["start"], strict=True)) == [
        (10, 0),
        (10, 5),
        (11, 5),
        (11, 10),
        (12, -5),
        (12, 0),
    ]
    tumbling = window_starts(pd.Series([0, 9, 10]), 10, 10)
    assert tumbling["start"].tolist() == [0, 0, 10]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=30),
    st.integers(1, 500),
    st.integers(1, 500),
)
def test_window_starts_match_the_definition(times: list[int], window: int, slide: int) -> None:
    """Each time is in exactly the windows [k*slide, k*slide + window) that contain it."""
    w = window_starts(pd.Series(times), window, slide)
    for i, t in enumerate(times):
        got = sorted(w.loc[w["index"] == i, "start"].tolist())
        expected = [
            k * slide
            for k in range((t - window) // slide - 1, t // slide + 2)
            if k * slide <= t < k * slide + window
        ]
        assert got == expected


@pytest.mark.parametrize(
    ("window", "slide", "field"), [(0, 5, "window_ms"), (10, -1, "slide_ms"), (1.5, 1, "window_ms")]
)
def test_bad_windows_name_the_field(window: object, slide: object, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        quality_windows(frame([("a", "m", 0.5, NAN, NAN, 1, 0)]), window, slide)  # type: ignore[arg-type]


def test_quality_windows_on_a_degrading_model() -> None:
    """A model right for the first 100 ms, wrong after: the windows show when quality fell."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        t = i  # one request per ms
        y = int(rng.integers(0, 2))
        good = t < 100
        p = 0.8 if y == good else 0.2
        rows.append((f"r{i}", "m", p, NAN, NAN, y, t))
        rows.append((f"r{i}", "official", 0.7 if y else 0.3, NAN, NAN, y, t))
    q = quality_windows(frame(rows), window_ms=50, slide_ms=50)
    m = q[q.model_id == "m"]
    assert m["window_start_ms"].tolist() == [0, 50, 100, 150]
    assert m["window_end_ms"].tolist() == [50, 100, 150, 200]
    assert m["count"].tolist() == [50, 50, 50, 50]
    assert m["accuracy"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert m["auc"].tolist() == [1.0, 1.0, 0.0, 0.0]
    off = q[q.model_id == "official"]
    assert off["accuracy"].tolist() == [1.0] * 4
    sliding = quality_windows(frame(rows), window_ms=100, slide_ms=50)
    ms = sliding[sliding.model_id == "m"].set_index("window_start_ms")
    assert ms.loc[50, "accuracy"] == pytest.approx(0.5) and ms.loc[50, "count"] == 100
    assert ms.loc[-50, "count"] == 50  # the window that starts before the first row holds its first half


def test_quality_windows_empty_and_custom_time_column() -> None:
    empty = quality_windows(frame([]), 10, 5)
    assert empty.empty and "auc" in empty.columns
    rows = frame([("a", "m", 0.9, NAN, NAN, 1, 0)]).assign(arrived_at_ms=[25])
    q = quality_windows(rows, 10, 10, time_column="arrived_at_ms")
    assert q["window_start_ms"].tolist() == [20]


# --- paired AUC (DeLong) ----------------------------------------------------------------------------


def _two_models(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truths at ~10 % positives and two correlated scorers, the second a little weaker."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(float)
    shared = rng.normal(size=n)  # what both models get wrong alike
    a = 1.2 * y + shared + rng.normal(size=n)
    b = 1.0 * y + shared + rng.normal(size=n)
    return y, a, b


def test_paired_auc_gives_each_models_auc_and_the_rank_placements() -> None:
    y, a, b = _two_models(400, 3)
    r = paired_auc(y, a, b)
    assert (r.n, r.positives) == (400, int(y.sum()))
    assert r.auc_a == pytest.approx(roc_auc_score(y, a)) and r.auc_b == pytest.approx(roc_auc_score(y, b))
    assert r.gain == pytest.approx(r.auc_a - r.auc_b) and r.z == pytest.approx(r.gain / r.se)
    # DeLong's variance of the difference from the placements, computed the slow way.
    pos, neg = a[y == 1], a[y == 0]
    pb, nb = b[y == 1], b[y == 0]

    def placements(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v10 = np.array([((q < x).sum() + 0.5 * (q == x).sum()) / q.size for x in p])
        v01 = np.array([((p > x).sum() + 0.5 * (p == x).sum()) / p.size for x in q])
        return v10, v01

    a10, a01 = placements(pos, neg)
    b10, b01 = placements(pb, nb)
    var = (np.var(a10 - b10, ddof=1) / pos.size) + (np.var(a01 - b01, ddof=1) / neg.size)
    assert r.se == pytest.approx(math.sqrt(var))


def test_the_paired_standard_error_matches_the_spread_of_the_difference_over_samples() -> None:
    """The se DeLong gives on one sample is the sd the difference shows over many samples (within
    20 %), and far below what two independent AUCs' errors would add up to."""
    diffs, ses = [], []
    for seed in range(300):
        r = paired_auc(*_two_models(1000, seed))
        diffs.append(r.gain)
        ses.append(r.se)
    sd = float(np.std(diffs, ddof=1))
    assert float(np.mean(ses)) == pytest.approx(sd, rel=0.2)
    assert float(np.mean(diffs)) > 0  # the first scorer is the better one


def test_paired_auc_edge_cases() -> None:
    y = np.array([0.0, 1.0, 0.0, 1.0])
    same = paired_auc(y, [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8])
    assert (same.gain, same.se, same.z) == (0.0, 0.0, 0.0)
    one_class = paired_auc([1.0, 1.0], [0.2, 0.3], [0.4, 0.5])
    assert math.isnan(one_class.auc_a) and math.isnan(one_class.z)
    with pytest.raises(ValueError, match="differ in length"):
        paired_auc([0.0, 1.0], [0.1], [0.2, 0.3])

"""Model quality from labelled rows: accuracy, ROC AUC, log loss, per model and over sliding windows.

Rows are what ``evaluation.labels.join_labels`` produces: one per (request, model) with the model's
``probability`` / ``label`` / ``value`` (NaN when it did not answer), the truth ``label_true`` and a
time column. The official answer is the pseudo-model ``official``, so "what callers got" is measured
on the same footing as every model.

Classification metrics use rows whose truth is 0 or 1; a row whose model gave no usable prediction
(error, no answer) counts in ``count`` and ``missing`` but not in the metrics, so a model cannot look
better by failing on hard requests without that showing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LOG_LOSS_EPS = 1e-15
METRIC_COLUMNS = (
    "count",
    "answered",
    "missing",
    "positives",
    "accuracy",
    "auc",
    "log_loss",
    "mae",
)


def roc_auc(y_true: Iterable[float], scores: Iterable[float]) -> float:
    """ROC AUC by the rank (Mann-Whitney) formula, ties counted half; NaN with only one class present."""
    y = np.asarray(list(y_true), dtype=float)
    s = np.asarray(list(scores), dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length ({y.size} vs {s.size})")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0 or n_pos + n_neg != y.size:
        return math.nan
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class PairedAuc:
    """Two models' AUCs on the same labelled requests and how sure their difference is (DeLong).

    ``z`` is ``(auc_a - auc_b) / se``: with ~5 % positives, a few thousand requests still leave each
    AUC a few hundredths wide, but both models see the same hard cases, so their difference is much
    narrower than either; ``z`` is what says "a beats b" rather than "a drew a luckier sample"."""

    n: int  # requests with a 0/1 truth and a probability from both
    positives: int
    auc_a: float
    auc_b: float
    se: float  # standard error of auc_a - auc_b; NaN with one class only

    @property
    def gain(self) -> float:
        return self.auc_a - self.auc_b

    @property
    def z(self) -> float:
        if math.isnan(self.se) or math.isnan(self.gain):
            return math.nan
        if self.se == 0.0:
            return 0.0 if self.gain == 0.0 else math.copysign(math.inf, self.gain)
        return self.gain / self.se


def _placements(s: np.ndarray, pos: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: for each positive, the share of negatives scored below
    it; for each negative, the share of positives scored above it (ties count half)."""
    m, n = int(pos.sum()), int((~pos).sum())
    ranks = pd.Series(s).rank(method="average").to_numpy()
    within_pos = pd.Series(s[pos]).rank(method="average").to_numpy()
    within_neg = pd.Series(s[~pos]).rank(method="average").to_numpy()
    v_pos = (ranks[pos] - within_pos) / n
    v_neg = 1.0 - (ranks[~pos] - within_neg) / m
    return float(v_pos.mean()), v_pos, v_neg


def paired_auc(y_true: Iterable[float], scores_a: Iterable[float], scores_b: Iterable[float]) -> PairedAuc:
    """Both AUCs and the standard error of their difference on the same rows (DeLong, DeLong and
    Clarke-Pearson 1988, in the rank form of Sun and Xu 2014); rows must hold 0/1 truths."""
    y = np.asarray(list(y_true), dtype=float)
    a = np.asarray(list(scores_a), dtype=float)
    b = np.asarray(list(scores_b), dtype=float)
    if not y.shape == a.shape == b.shape:
        raise ValueError(f"y_true and scores differ in length ({y.size}, {a.size}, {b.size})")
    pos = y == 1
    m, n = int(pos.sum()), int((y == 0).sum())
    if m == 0 or n == 0 or m + n != y.size:
        return PairedAuc(int(y.size), m, math.nan, math.nan, math.nan)
    auc_a, pa, na = _placements(a, pos)
    auc_b, pb, nb = _placements(b, pos)
    var = 0.0
    for comp, count in ((np.vstack([pa, pb]), m), (np.vstack([na, nb]), n)):
        if count > 1:
            c = np.cov(comp)
            var += float(c[0, 0] + c[1, 1] - 2.0 * c[0, 1]) / count
    return PairedAuc(int(y.size), m, auc_a, auc_b, math.sqrt(max(var, 0.0)))


def log_loss(y_true: Iterable[float], probability: Iterable[float], eps: float = LOG_LOSS_EPS) -> float:
    """Mean negative log likelihood, probabilities clipped to [eps, 1-eps] (a confident miss is finite)."""
    y = np.asarray(list(y_true), dtype=float)
    p = np.clip(np.asarray(list(probability), dtype=float), eps, 1.0 - eps)
    if y.size == 0:
        return math.nan
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def predicted_label(probability: pd.Series, label: pd.Series, threshold: float = 0.5) -> pd.Series:
    """The 0/1 answer: probability >= threshold where there is one, else the model's own label."""
    from_p = (probability >= threshold).astype(float)
    return from_p.where(probability.notna(), label)


def metrics(rows: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Quality of one model's rows (columns probability, label, value, label_true)."""
    truth = rows["label_true"].astype(float)
    binary = truth.isin((0.0, 1.0))
    pred = predicted_label(rows["probability"].astype(float), rows["label"].astype(float), threshold)
    has_value = rows["value"].astype(float).notna()
    answered = pred.notna() | has_value
    cls = binary & pred.notna()
    with_p = binary & rows["probability"].notna()
    out: dict[str, Any] = {
        "count": int(len(rows)),
        "answered": int(answered.sum()),
        "missing": int((~answered).sum()),
        "positives": int((truth[binary] == 1.0).sum()),
        "accuracy": float((pred[cls] == truth[cls]).mean()) if cls.any() else math.nan,
        "auc": roc_auc(truth[with_p], rows["probability"][with_p]),
        "log_loss": log_loss(truth[with_p], rows["probability"][with_p]) if with_p.any() else math.nan,
        "mae": float((rows["value"][has_value] - truth[has_value]).abs().mean())
        if has_value.any()
        else math.nan,
    }
    return out


def quality_by_model(rows: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One line of metrics per model_id (``official`` included when the rows have it), sorted by id."""
    out = [{"model_id": mid, **metrics(g, threshold)} for mid, g in rows.groupby("model_id", sort=True)]
    return pd.DataFrame(out, columns=["model_id", *METRIC_COLUMNS])


def _check_window(window_ms: Any, slide_ms: Any) -> None:
    for name, v in (("window_ms", window_ms), ("slide_ms", slide_ms)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name}: must be a positive integer (milliseconds), got {v!r}")


def window_starts(times_ms: pd.Series, window_ms: int, slide_ms: int) -> pd.DataFrame:
    """Each time once per sliding window that holds it: columns ``index`` (the row's) and ``start``.

    Windows are aligned to the epoch like Flink's: starts are multiples of slide_ms and a window holds
    [start, start + window_ms). With slide_ms == window_ms these are tumbling windows.
    """
    _check_window(window_ms, slide_ms)
    t = times_ms.to_numpy(dtype=np.int64)
    last = np.floor_divide(t, slide_ms)  # the latest window start (in slides) at or before t
    first = np.floor_divide(t - window_ms, slide_ms) + 1  # the earliest whose end is after t
    n = (last - first + 1).astype(np.int64)
    idx = np.repeat(times_ms.index.to_numpy(), n)
    offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    starts = (np.repeat(first, n) + offsets) * slide_ms
    return pd.DataFrame({"index": idx, "start": starts.astype(np.int64)})


def quality_windows(
    rows: pd.DataFrame,
    window_ms: int,
    slide_ms: int,
    time_column: str = "decided_at_ms",
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Metrics per (window, model): columns window_start_ms, window_end_ms, model_id and the metrics."""
    _check_window(window_ms, slide_ms)
    columns = ["window_start_ms", "window_end_ms", "model_id", *METRIC_COLUMNS]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.reset_index(drop=True)
    w = window_starts(rows[time_column], window_ms, slide_ms)
    exploded = rows.loc[w["index"]].assign(window_start_ms=w["start"].to_numpy())
    out = []
    for (start, mid), g in exploded.groupby(["window_start_ms", "model_id"], sort=True):
        out.append(
            {
                "window_start_ms": int(start),
                "window_end_ms": int(start) + window_ms,
                "model_id": mid,
                **metrics(g, threshold),
            }
        )
    return pd.DataFrame(out, columns=columns)

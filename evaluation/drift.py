"""Drift: are the models' answers, or the requests they see, still like what they were?

Two measures, both comparing a recent sample with a reference:

- PSI (population stability index) over bins cut at the reference's quantiles, with epsilon
  smoothing so an empty bin does not make it infinite. Rule of thumb: < 0.1 stable, 0.1-0.25
  moderate, > 0.25 a real shift.
- KS, the two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.

``score_drift`` uses the canary the way the book intends: the canary is frozen, so if a model's scores
drift away from the canary's on the same requests, or stop agreeing with its answers, something moved
(the model, or the world it sees). Agreement is a good alarm; PSI/KS against the canary is a poor one,
because healthy models differ from the canary by design (a tree with 8 leaf probabilities has PSI ~6.5
against it forever). ``self_drift`` compares each model's recent scores with **its own** scores in an
earlier reference period instead: a healthy model's distribution stays put, so the default thresholds
hold. ``input_drift`` compares request features (the decoy archive) with the training sample. Thresholds live in a frozen, validated ``DriftConfig``; crossing one gives an
``Alert`` (``schemas/alert.schema.json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from evaluation.labels import prediction
from evaluation.quality import window_starts
from udfs.mailbox import agreement

OFFICIAL = "official"


# --- measures --------------------------------------------------------------------------------------------


def _finite(values: Iterable[float] | np.ndarray | pd.Series, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError(f"{name}: no finite values to compare")
    return a


def quantile_edges(reference: Iterable[float] | np.ndarray | pd.Series, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles, duplicates dropped (discrete features get fewer bins)."""
    ref = _finite(reference, "reference")
    if bins < 2:
        raise ValueError(f"bins: must be at least 2, got {bins}")
    qs = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


def psi(
    reference: Iterable[float] | np.ndarray | pd.Series,
    recent: Iterable[float] | np.ndarray | pd.Series,
    bins: int = 10,
    eps: float = 1e-4,
) -> float:
    """Population stability index of recent vs reference, bins (-inf, e1], (e1, e2], ..., (ek, inf).

    Each bin's share is smoothed as (share + eps) / (1 + k * eps): never zero, still summing to one.
    """
    ref = _finite(reference, "reference")
    cur = _finite(recent, "recent")
    edges = quantile_edges(ref, bins)
    k = edges.size + 1
    p = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=k) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=k) / cur.size
    p = (p + eps) / (1.0 + k * eps)
    q = (q + eps) / (1.0 + k * eps)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(
    reference: Iterable[float] | np.ndarray | pd.Series, recent: Iterable[float] | np.ndarray | pd.Series
) -> float:
    """Two-sample KS statistic: max over x of |F_ref(x) - F_recent(x)|, in [0, 1]."""
    a = np.sort(_finite(reference, "reference"))
    b = np.sort(_finite(recent, "recent"))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and windows; build it with ``DriftConfig.from_dict`` so every value is checked."""

    psi_alert: float = 0.25  # alert when PSI exceeds this
    ks_alert: float = 0.2  # alert when KS exceeds this
    agreement_min: float = 0.9  # alert when agreement with the canary falls below this
    min_count: int = 200  # fewer observations than this in a window: measured, never alerted on
    bins: int = 10
    eps: float = 1e-4
    window_ms: int = 3_600_000
    slide_ms: int = 3_600_000
    # Self drift: each model against its own scores in the reference period, the first reference_ms of
    # the log (0: one window_ms), with thresholds of their own (the canary ones are often raised).
    self_psi_alert: float = 0.25
    self_ks_alert: float = 0.2
    reference_ms: int = 0
    canary_distribution: bool = True  # false: against the canary only agreement alerts, no PSI/KS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DriftConfig:  # noqa: C901 - a check per field
        """Validate plain data (YAML/JSON); a bad value raises ValueError naming the field."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("drift config: must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(known))})")
        d = asdict(cls()) | dict(data)
        for name in _FLOAT_FIELDS:
            _number(d, name)
            d[name] = float(d[name])
        for name in ("min_count", "bins", "window_ms", "slide_ms", "reference_ms"):
            _integer(d, name)
        if not isinstance(d["canary_distribution"], bool):
            raise ValueError(f"canary_distribution: must be true or false, got {d['canary_distribution']!r}")
        if d["reference_ms"] < 0:
            raise ValueError(
                f"reference_ms: must be >= 0 (milliseconds; 0: one window), got {d['reference_ms']!r}"
            )
        for name in ("psi_alert", "self_psi_alert"):
            if d[name] <= 0:
                raise ValueError(f"{name}: must be > 0, got {d[name]!r}")
        for name in ("ks_alert", "agreement_min", "self_ks_alert"):
            if not 0.0 <= d[name] <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {d[name]!r}")
        if not 0.0 < d["eps"] < 0.1:
            raise ValueError(f"eps: must be in (0, 0.1), got {d['eps']!r}")
        if d["bins"] < 2 or d["bins"] > 1000:
            raise ValueError(f"bins: must be an integer from 2 to 1000, got {d['bins']!r}")
        if d["min_count"] < 1:
            raise ValueError(f"min_count: must be at least 1, got {d['min_count']!r}")
        for name in ("window_ms", "slide_ms"):
            if d[name] < 1:
                raise ValueError(f"{name}: must be a positive integer (milliseconds), got {d[name]!r}")
        return cls(**d)


_FLOAT_FIELDS = ("psi_alert", "ks_alert", "agreement_min", "eps", "self_psi_alert", "self_ks_alert")


def _number(d: Mapping[str, Any], name: str) -> None:
    v = d[name]
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")


def _integer(d: Mapping[str, Any], name: str) -> None:
    v = d[name]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{name}: must be an integer, got {v!r}")


# --- alerts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    kind: str  # score_drift | canary_agreement | input_drift | self_drift
    subject: str  # model id ('official' for the official answers) or feature name
    metric: str  # psi | ks | agreement
    value: float
    threshold: float
    direction: str  # above | below
    count: int
    window_start_ms: int | None
    window_end_ms: int | None
    at_ms: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alert(
    kind: str,
    subject: str,
    metric: str,
    value: float,
    threshold: float,
    count: int,
    window: tuple[int | None, int | None],
    now_ms: int,
) -> Alert:
    direction = "below" if metric == "agreement" else "above"
    what = {
        "score_drift": "scores vs the canary's",
        "canary_agreement": "answers agreeing with the canary",
        "self_drift": "scores vs its own in the reference period",
    }
    where = "" if window[0] is None else f" in [{window[0]}, {window[1]})"
    message = (
        f"{subject}: {metric} {value:.4g} {direction} {threshold:g} "
        f"({what.get(kind, 'recent vs reference')}, n={count}{where})"
    )
    return Alert(
        kind, subject, metric, float(value), float(threshold), direction, int(count), *window, now_ms, message
    )


# --- score drift against the canary ----------------------------------------------------------------------

PAIR_COLUMNS = ("request_id", "model_id", "at_ms", "p_model", "p_canary", "agree")


def canary_pairs(canary_records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per canary record with an answering canary: the official model vs the canary.

    Rows are reported under the official answer's model id and again under ``official``.
    """
    rows = []
    for r in canary_records:
        c = r.get("canary")
        off = r.get("official") or {}
        if c is None or c.get("status") != "ok" or off.get("reason") == "no_answer":
            continue
        p_model, _, _ = prediction(off.get("output"))
        p_canary, _, _ = prediction(c.get("output"))
        agree = r.get("agree")
        for mid in (off.get("model_id"), OFFICIAL):
            rows.append(
                {
                    "request_id": r["request_id"],
                    "model_id": mid,
                    "at_ms": r["decided_at_ms"],
                    "p_model": p_model,
                    "p_canary": p_canary,
                    "agree": math.nan if agree is None else float(agree),
                }
            )
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def decision_pairs(decisions: Iterable[Mapping[str, Any]], canary_id: str) -> pd.DataFrame:
    """Every model's score vs the canary's on the same request, from the decision log.

    The canary topic only pairs the canary with the *official* answer; the decision log has every
    model's score, so shadows and challengers that rarely win are measured too.
    """
    rows = []
    for d in decisions:
        scores = [s for s in d.get("scores", ()) if not s.get("duplicate")]
        canary = next((s for s in scores if s["model_id"] == canary_id and s["status"] == "ok"), None)
        if canary is None or d.get("decided_at_ms") is None:
            continue
        p_canary, _, _ = prediction(canary["output"])
        for s in scores:
            if s["model_id"] == canary_id or s["status"] != "ok":
                continue
            agree = agreement(s["output"], canary)
            rows.append(
                {
                    "request_id": d["request_id"],
                    "model_id": s["model_id"],
                    "at_ms": d["decided_at_ms"],
                    "p_model": prediction(s["output"])[0],
                    "p_canary": p_canary,
                    "agree": math.nan if agree is None else float(agree),
                }
            )
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


SCORE_DRIFT_COLUMNS = (
    "window_start_ms",
    "window_end_ms",
    "model_id",
    "count",
    "agreement",
    "psi",
    "ks",
)


def score_drift_pairs(pairs: pd.DataFrame, config: DriftConfig | None = None) -> pd.DataFrame:
    """Per (window, model): agreement rate with the canary, PSI and KS of the model's vs the canary's
    probabilities (the canary's are the reference). NaN where there is nothing to compare."""
    cfg = config or DriftConfig()
    if pairs.empty:
        return pd.DataFrame(columns=list(SCORE_DRIFT_COLUMNS))
    pairs = pairs.reset_index(drop=True)
    w = window_starts(pairs["at_ms"], cfg.window_ms, cfg.slide_ms)
    exploded = pairs.loc[w["index"]].assign(window_start_ms=w["start"].to_numpy())
    out = []
    for (start, mid), g in exploded.groupby(["window_start_ms", "model_id"], sort=True):
        both = g["p_model"].notna() & g["p_canary"].notna()
        agree = g["agree"].dropna()
        row: dict[str, Any] = {
            "window_start_ms": int(start),
            "window_end_ms": int(start) + cfg.window_ms,
            "model_id": mid,
            "count": int(len(g)),
            "agreement": float(agree.mean()) if len(agree) else math.nan,
            "psi": math.nan,
            "ks": math.nan,
        }
        if both.any():
            row["psi"] = psi(g["p_canary"][both], g["p_model"][both], cfg.bins, cfg.eps)
            row["ks"] = ks(g["p_canary"][both], g["p_model"][both])
        out.append(row)
    return pd.DataFrame(out, columns=list(SCORE_DRIFT_COLUMNS))


def score_drift(
    canary_records: Iterable[Mapping[str, Any]], config: DriftConfig | None = None
) -> pd.DataFrame:
    """``score_drift_pairs`` over the canary topic's records (see ``canary_pairs``)."""
    return score_drift_pairs(canary_pairs(canary_records), config)


def score_alerts(drift: pd.DataFrame, config: DriftConfig, now_ms: int) -> list[Alert]:
    """Alerts for every (window, model) with at least min_count pairs that crosses a threshold."""
    alerts = []
    for r in drift.itertuples(index=False):
        if r.count < config.min_count:
            continue
        window = (int(r.window_start_ms), int(r.window_end_ms))
        n = int(r.count)
        if not math.isnan(r.agreement) and r.agreement < config.agreement_min:
            alerts.append(
                _alert(
                    "canary_agreement",
                    r.model_id,
                    "agreement",
                    r.agreement,
                    config.agreement_min,
                    n,
                    window,
                    now_ms,
                )
            )
        if not config.canary_distribution:
            continue
        if not math.isnan(r.psi) and r.psi > config.psi_alert:
            alerts.append(
                _alert("score_drift", r.model_id, "psi", r.psi, config.psi_alert, n, window, now_ms)
            )
        if not math.isnan(r.ks) and r.ks > config.ks_alert:
            alerts.append(_alert("score_drift", r.model_id, "ks", r.ks, config.ks_alert, n, window, now_ms))
    return alerts


# --- score drift against the model's own past -------------------------------------------------------------

SCORE_COLUMNS = ("request_id", "model_id", "at_ms", "p")


def model_scores(decisions: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Every model's probability on every decided request (first ok score; late ones too), at the
    decision time, from the decision log. Scores without a probability are left out."""
    rows = []
    for d in decisions:
        at = d.get("decided_at_ms")
        if at is None:
            continue
        seen: set[str] = set()
        for s in d.get("scores", ()):
            mid = s.get("model_id")
            if s.get("duplicate") or mid in seen or s.get("status") != "ok":
                continue
            seen.add(mid)
            p = prediction(s.get("output"))[0]
            if not math.isnan(p):
                rows.append({"request_id": d["request_id"], "model_id": mid, "at_ms": int(at), "p": p})
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


SELF_DRIFT_COLUMNS = (
    "window_start_ms",
    "window_end_ms",
    "model_id",
    "count",
    "n_reference",
    "psi",
    "ks",
)


def self_drift(
    scores: pd.DataFrame,
    reference: tuple[int, int],
    windows: Sequence[tuple[int, int]],
    config: DriftConfig | None = None,
) -> pd.DataFrame:
    """Per (window, model): PSI and KS of the model's scores in the window against its own scores in the
    reference period [start, end). NaN where either side is empty."""
    cfg = config or DriftConfig()
    out = []
    if scores.empty:
        return pd.DataFrame(columns=list(SELF_DRIFT_COLUMNS))
    at = scores["at_ms"]
    ref_rows = scores[(at >= reference[0]) & (at < reference[1])]
    for start, end in windows:
        cur_rows = scores[(at >= start) & (at < end)]
        for mid in sorted(set(cur_rows["model_id"])):
            ref = ref_rows.loc[ref_rows["model_id"] == mid, "p"]
            cur = cur_rows.loc[cur_rows["model_id"] == mid, "p"]
            row: dict[str, Any] = {
                "window_start_ms": int(start),
                "window_end_ms": int(end),
                "model_id": mid,
                "count": int(len(cur)),
                "n_reference": int(len(ref)),
                "psi": math.nan,
                "ks": math.nan,
            }
            if len(ref) and len(cur):
                row["psi"] = psi(ref, cur, cfg.bins, cfg.eps)
                row["ks"] = ks(ref, cur)
            out.append(row)
    return pd.DataFrame(out, columns=list(SELF_DRIFT_COLUMNS))


def self_drift_windows(scores: pd.DataFrame, config: DriftConfig | None = None) -> pd.DataFrame:
    """``self_drift`` over a whole log: the reference is its first ``reference_ms`` (0: one window), and
    every window (``window_ms``/``slide_ms``, epoch-aligned) starting at or after the reference's end is
    compared with it."""
    cfg = config or DriftConfig()
    if scores.empty:
        return pd.DataFrame(columns=list(SELF_DRIFT_COLUMNS))
    t0 = int(scores["at_ms"].min())
    ref_end = t0 + (cfg.reference_ms or cfg.window_ms)
    starts = sorted(set(window_starts(scores["at_ms"], cfg.window_ms, cfg.slide_ms)["start"].tolist()))
    windows = [(s, s + cfg.window_ms) for s in starts if s >= ref_end]
    return self_drift(scores, (t0, ref_end), windows, cfg)


def self_alerts(drift: pd.DataFrame, config: DriftConfig, now_ms: int) -> list[Alert]:
    """Alerts for every (window, model) with at least min_count scores on both sides crossing a threshold."""
    alerts = []
    for r in drift.itertuples(index=False):
        if r.count < config.min_count or r.n_reference < config.min_count:
            continue
        window = (int(r.window_start_ms), int(r.window_end_ms))
        n = int(r.count)
        if not math.isnan(r.psi) and r.psi > config.self_psi_alert:
            alerts.append(
                _alert("self_drift", r.model_id, "psi", r.psi, config.self_psi_alert, n, window, now_ms)
            )
        if not math.isnan(r.ks) and r.ks > config.self_ks_alert:
            alerts.append(
                _alert("self_drift", r.model_id, "ks", r.ks, config.self_ks_alert, n, window, now_ms)
            )
    return alerts


# --- input drift -----------------------------------------------------------------------------------------

INPUT_DRIFT_COLUMNS = ("feature", "n_reference", "n_recent", "psi", "ks")


def input_drift(
    reference: pd.DataFrame,
    recent: pd.DataFrame,
    features: Sequence[str],
    config: DriftConfig | None = None,
) -> pd.DataFrame:
    """PSI and KS per feature, recent requests vs the reference (e.g. the training sample).

    A feature missing from either side, or without numeric values there, is reported with NaN.
    """
    cfg = config or DriftConfig()
    out = []
    for f in features:
        ref = pd.to_numeric(reference[f], errors="coerce") if f in reference else pd.Series(dtype=float)
        cur = pd.to_numeric(recent[f], errors="coerce") if f in recent else pd.Series(dtype=float)
        ref = ref[np.isfinite(ref.astype(float))]
        cur = cur[np.isfinite(cur.astype(float))]
        row: dict[str, Any] = {"feature": f, "n_reference": len(ref), "n_recent": len(cur)}
        if len(ref) and len(cur):
            row |= {"psi": psi(ref, cur, cfg.bins, cfg.eps), "ks": ks(ref, cur)}
        else:
            row |= {"psi": math.nan, "ks": math.nan}
        out.append(row)
    return pd.DataFrame(out, columns=list(INPUT_DRIFT_COLUMNS))


def input_alerts(drift: pd.DataFrame, config: DriftConfig, now_ms: int) -> list[Alert]:
    alerts = []
    for r in drift.itertuples(index=False):
        if r.n_recent < config.min_count:
            continue
        n = int(r.n_recent)
        if not math.isnan(r.psi) and r.psi > config.psi_alert:
            alerts.append(
                _alert("input_drift", r.feature, "psi", r.psi, config.psi_alert, n, (None, None), now_ms)
            )
        if not math.isnan(r.ks) and r.ks > config.ks_alert:
            alerts.append(
                _alert("input_drift", r.feature, "ks", r.ks, config.ks_alert, n, (None, None), now_ms)
            )
    return alerts


def features_from_archive(archive: pd.DataFrame) -> pd.DataFrame:
    """Feature columns from decoy archive rows, whose ``features`` column is the JSON text."""
    if "features" not in archive.columns:
        return archive
    parsed = [json.loads(x) if isinstance(x, str) else {} for x in archive["features"]]
    return pd.DataFrame(parsed, index=archive.index)

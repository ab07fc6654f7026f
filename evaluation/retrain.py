"""Retrain from the decoy: the archive's recent requests joined with their labels, a new model version.

The decoy archive keeps every request exactly as production sent it, so the next model is trained on
what the server saw, not on a stale sample. ``rendezvous eval retrain`` reads the requests received in
a window (DuckDB over the archive's Parquet, pruned to the hour partitions the window touches), joins
them with their labels (a labels dump, ``eval collect``), trains a model of a given kind with
``runners.train`` (optionally on top of the kind's previous training sample, when the window alone is
small), and registers it.

**Registry**: a directory (default ``var/registry``) with one subdirectory per registered model,
named by its model id ``<kind>-r<N>``, holding what a runner loads (``runner --model-dir
<registry>/<kind>-r<N>``): ``model.joblib`` and ``meta.json``, with ``model_version``
``<kind>-r<N>-<UTC time, YYYYMMDDTHHMMSSZ>`` and a ``retrain`` block (window, rows, positives, what was
skipped). A model is registered once its ``meta.json`` is there (written last, atomically, by
``runners.train``); N is one more than the highest of that kind in the registry. The model id is new
(not the kind's own) because a policy names models by id and the old runner of the kind may still be
serving.

Pure: ``partitions``, ``archive_sql``, ``join_rows``, ``next_model_id``, ``version_of``,
``with_shadow``, ``shadow_audit``. I/O: ``read_archive``, ``registered``, ``retrain``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.autopilot import APPLIED, AuditRecord, Evidence, ModelEvidence
from evaluation.labels import latest_labels
from ops import archive
from runners.data import FEATURES
from runners.model import META_FILE
from udfs.feedback import Label
from udfs.policy import ModelSpec, Policy

REGISTRY_DIR = archive.REPO_ROOT / "var" / "registry"
_ROUND = re.compile(r"^(?P<kind>.+)-r(?P<n>[0-9]+)\Z")


# --- pure ------------------------------------------------------------------------------------------------


def partitions(since_ms: int, until_ms: int) -> list[tuple[str, int]]:
    """The archive's hour partitions (dt, hour) that can hold a request received in [since, until).

    >>> partitions(1_765_000_000_000, 1_765_000_000_000 + 3_600_000)
    [('2025-12-06', 5), ('2025-12-06', 6)]
    """
    if until_ms <= since_ms:
        return []
    out = []
    start = since_ms - since_ms % archive.HOUR_MS
    for hour_ms in range(start, until_ms, archive.HOUR_MS):
        t = datetime.fromtimestamp(hour_ms / 1000, UTC)
        out.append((f"{t:%Y-%m-%d}", t.hour))
    return out


def archive_sql(since_ms: int, until_ms: int) -> str:
    """The query of the window's requests: a filter on ``dt``/``hour`` first, so DuckDB opens only the
    files of those partitions, then on ``received_at_ms``."""
    hours = partitions(since_ms, until_ms) or [("1970-01-01", -1)]
    pruned = " OR ".join(f"(dt = DATE '{dt}' AND hour = {h})" for dt, h in hours)
    return (
        f"SELECT request_id, received_at_ms, features FROM {archive.TABLE} WHERE ({pruned}) "
        f"AND received_at_ms >= {int(since_ms)} AND received_at_ms < {int(until_ms)} "
        "ORDER BY received_at_ms, request_id"
    )


@dataclass(frozen=True)
class TrainingSet:
    """Rows (columns = ``runners.data.FEATURES``), 0/1 labels, their request ids, and what was left out
    and why (``duplicate``, ``unlabelled``, ``bad_features``, ``label_not_binary``)."""

    x: np.ndarray
    y: np.ndarray
    request_ids: tuple[str, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def positives(self) -> int:
        return int(self.y.sum())


def _row(features: Any) -> list[float] | None:
    """The features' JSON text as a row in FEATURES order; None if one is missing or not a finite number."""
    try:
        obj = json.loads(features) if isinstance(features, str) else features
    except ValueError:
        return None
    if not isinstance(obj, Mapping):
        return None
    row = []
    for name in FEATURES:
        v = obj.get(name)
        if not isinstance(v, int | float) or not math.isfinite(v):
            return None
        row.append(float(v))
    return row


def join_rows(rows: Iterable[tuple[str, int, Any]], labels: Iterable[Label]) -> TrainingSet:
    """(request_id, received_at_ms, features JSON) archive rows joined with their labels: one row per
    request (its first archived copy: a client's retry is archived again), the latest label winning."""
    truth = latest_labels(labels)
    seen: set[str] = set()
    skipped: Counter[str] = Counter()
    x: list[list[float]] = []
    y: list[int] = []
    ids: list[str] = []
    for request_id, _received, features in rows:
        if request_id in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(request_id)
        label = truth.get(request_id)
        if label is None:
            skipped["unlabelled"] += 1
            continue
        if label.truth not in (0, 1):
            skipped["label_not_binary"] += 1
            continue
        row = _row(features)
        if row is None:
            skipped["bad_features"] += 1
            continue
        x.append(row)
        y.append(int(label.truth))
        ids.append(request_id)
    return TrainingSet(
        np.asarray(x, dtype=float).reshape(len(x), len(FEATURES)),
        np.asarray(y, dtype=np.int64),
        tuple(ids),
        dict(sorted(skipped.items())),
    )


def next_model_id(kind: str, registered_ids: Iterable[str]) -> str:
    """``<kind>-r<N>``, N one more than the highest of this kind registered (1 for the first).

    >>> next_model_id("gbt", ["gbt-r1", "gbt-r3", "logreg-r7", "gbt"])
    'gbt-r4'
    """
    rounds = [int(m["n"]) for mid in registered_ids if (m := _ROUND.match(mid)) and m["kind"] == kind]
    return f"{kind}-r{max(rounds, default=0) + 1}"


def version_of(model_id: str, now_ms: int) -> str:
    """The model version: its id and when it was trained (UTC, to the second).

    >>> version_of("gbt-r1", 1_765_000_000_000)
    'gbt-r1-20251206T054640Z'
    """
    return f"{model_id}-{datetime.fromtimestamp(now_ms / 1000, UTC):%Y%m%dT%H%M%SZ}"


def with_shadow(policy: Policy, model_id: str) -> Policy:
    """The next policy version with ``model_id`` added as a shadow (never official: it is measured,
    and the gate may make it a challenger, then the incumbent). Raises ValueError if already there."""
    if any(m.id == model_id for m in policy.models):
        raise ValueError(f"{model_id}: already in policy v{policy.version}")
    return replace(policy, version=policy.version + 1, models=(*policy.models, ModelSpec(model_id, "shadow")))


RETRAIN = "retrain"  # the audit record's action when a retrained model joins the policy as a shadow


def shadow_audit(
    at_ms: int, who: str, old: Policy, new: Policy, meta: Mapping[str, Any], why: Sequence[str]
) -> AuditRecord:
    """The audit record (``schemas/audit.schema.json``, action ``retrain``) of publishing ``new``: the
    policy ``old`` plus a retrained model (its ``meta.json``) as a shadow. The evidence is the training
    window: ``decisions`` the archived requests read, ``labelled`` those trained on."""
    info = meta["retrain"]
    read = int(info["archive_rows"]) + sum(int(n) for k, n in info["skipped"].items() if k != "duplicate")
    new_id = str(meta["model_id"])
    models = tuple(
        ModelEvidence(m.id, old.role_of(m.id) if m.id != new_id else "shadow", m.role, 0, None, 0, None)
        for m in new.models
    )
    reasons = (
        *why,
        f"{new_id}: retrained from the decoy ({meta['model_version']}): {info['archive_rows']} archived requests "
        f"with labels ({info['archive_positives']} positive) + {info['base_rows']} base rows; holdout AUC "
        f"{meta['metrics']['auc']:.4f}; added as a shadow",
    )
    start, end = (int(t) for t in info["window"])
    evidence = Evidence(start, end, start, read, int(info["archive_rows"]), 0, None, models, (), None)
    return AuditRecord(at_ms, who, APPLIED, RETRAIN, None, old.version, new.version,
                       tuple(r[:1024] for r in reasons), evidence)  # fmt: skip


# --- I/O -------------------------------------------------------------------------------------------------


def read_archive(archive_dir: Path, since_ms: int, until_ms: int) -> list[tuple[str, int, Any]]:
    """The window's archived requests (committed files only, the window's partitions only)."""
    _, rows = archive.query(archive_dir, archive_sql(since_ms, until_ms))
    return [(str(r[0]), int(r[1]), r[2]) for r in rows]


def registered(registry: Path) -> dict[str, dict[str, Any]]:
    """model id -> meta.json of every registered model (a directory without meta.json is not one)."""
    out = {}
    for meta_path in sorted(Path(registry).glob(f"*/{META_FILE}")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out[meta_path.parent.name] = meta
    return out


def _base_rows(sample: Path) -> tuple[np.ndarray, np.ndarray]:
    """The kind's previous training sample (``training_sample.parquet``: FEATURES and ``label``)."""
    frame = pd.read_parquet(sample)
    missing = [c for c in (*FEATURES, "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"{sample}: lacks column(s) {', '.join(missing)}")
    return frame[list(FEATURES)].to_numpy(dtype=float), frame["label"].to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class Retrained:
    model_id: str
    model_version: str
    model_dir: Path
    meta: Mapping[str, Any]


def retrain(
    archive_dir: Path,
    labels: Sequence[Label],
    registry: Path,
    kind: str,
    since_ms: int,
    until_ms: int,
    now_ms: int,
    base_sample: Path | None = None,
    seed: int = 7,
) -> Retrained:
    """Train a ``kind`` model on the archive's requests of [since, until) joined with ``labels`` (plus
    ``base_sample``'s rows, if given) and register it; ValueError when the data cannot make one."""
    from runners.train import spec_of, train_one

    spec = spec_of(kind)
    data = join_rows(read_archive(archive_dir, since_ms, until_ms), labels)
    x, y = data.x, data.y
    base_rows = 0
    if base_sample is not None:
        bx, by = _base_rows(base_sample)
        x, y, base_rows = np.vstack([bx, x]), np.concatenate([by, y]), len(by)
    model_id = next_model_id(kind, registered(registry))
    version = version_of(model_id, now_ms)
    extra = {
        "role_hint": "shadow",
        "retrain": {
            "kind": kind,
            "archive_dir": str(archive_dir),
            "window": [since_ms, until_ms],
            "archive_rows": len(data.y),
            "archive_positives": data.positives,
            "skipped": dict(data.skipped),
            "base_sample": None if base_sample is None else str(base_sample),
            "base_rows": base_rows,
        },
    }
    meta = train_one(spec, x, y, Path(registry) / model_id, (model_id, version), seed, extra)
    return Retrained(model_id, version, Path(registry) / model_id, meta)

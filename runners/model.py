"""A trained model as a runner sees it: `load()` a directory, then score feature objects.

This is the pure core; the Kafka loop around it lives in runners.runner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from runners.compiled import RowScorer, compile_scorer

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"

# Batches up to this size are scored row by row by the compiled scorer; larger ones by one
# scikit-learn call, which wins once its per-call cost is spread (~100 rows for the 120-tree model).
COMPILED_MAX_BATCH = 64

# Probabilities on either side of this give label 1 / 0. It matches the canary's agreement rule
# ("probabilities on the same side of 0.5"), so label and probability never disagree.
THRESHOLD = 0.5

Output = dict[str, Any]
# One row's result from score_batch: an output object, or the ValueError that made the row unusable.
Scored = Output | ValueError


@dataclass(frozen=True)
class ScoringModel:
    """A fitted binary classifier plus the identity a score carries (model_id, model_version)."""

    model_id: str
    model_version: str
    features: tuple[str, ...]
    estimator: Any = field(repr=False, compare=False)
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # compile_scorer(estimator): the same probabilities without scikit-learn's per-call cost, or None
    row_scorer: RowScorer | None = field(default=None, repr=False, compare=False)

    def vector(self, features: Any) -> list[float]:
        """The model's input row; ValueError names every missing or unusable feature.

        Booleans count as 0/1 (the wire format allows them); strings, null, NaN and infinities do not.
        Features the model does not use are ignored, so one request can feed models with different inputs.
        """
        if not isinstance(features, Mapping):
            raise ValueError(f"features must be an object, got {type(features).__name__}")
        row: list[float] = []
        missing: list[str] = []
        bad: list[str] = []
        for name in self.features:
            if name not in features:
                missing.append(name)
                continue
            value = features[name]
            # bool is an int subclass, and finite: True/False pass as 1.0/0.0.
            if isinstance(value, int | float) and math.isfinite(value):
                row.append(float(value))
            else:
                bad.append(f"{name}={json.dumps(value, default=repr)[:40]}")
        if missing or bad:
            parts = []
            if missing:
                parts.append("missing features: " + ", ".join(missing))
            if bad:
                parts.append("non-numeric or non-finite features: " + ", ".join(bad))
            raise ValueError("; ".join(parts))
        return row

    def score_one(self, features: Any) -> Output:
        """Score one feature object; raises ValueError when it is unusable."""
        result = self.score_batch([features])[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def score_batch(self, rows: Sequence[Any]) -> list[Scored]:
        """Score many feature objects in one model call, one result per row, in order.

        A bad row does not spoil the batch: its slot holds the ValueError (not raised), so the caller can
        send an error score for that request and ok scores for the rest.
        """
        results: list[Scored | None] = [None] * len(rows)
        good: list[int] = []
        matrix: list[list[float]] = []
        for i, features in enumerate(rows):
            try:
                matrix.append(self.vector(features))
                good.append(i)
            except ValueError as exc:
                results[i] = exc
        if matrix:
            if self.row_scorer is not None and len(matrix) <= COMPILED_MAX_BATCH:
                proba = [self.row_scorer(row) for row in matrix]
            else:
                proba = self.estimator.predict_proba(np.asarray(matrix, dtype=float))[:, 1].tolist()
            for i, raw in zip(good, proba, strict=True):
                if not math.isfinite(raw):  # would otherwise become invalid JSON downstream
                    results[i] = ValueError(f"model returned a non-finite probability: {raw}")
                    continue
                p = min(max(raw, 0.0), 1.0)
                results[i] = {"label": int(p >= THRESHOLD), "probability": round(p, 6)}
        return [r for r in results if r is not None]


def load(model_dir: Path) -> ScoringModel:
    """Read model.joblib + meta.json written by runners.train; fail early and clearly if they disagree."""
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_path} not found: train first (python -m runners.train)") from None
    for key in ("model_id", "model_version", "features"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks {key!r}")
    features = tuple(meta["features"])
    estimator = joblib.load(model_dir / MODEL_FILE)
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(f"{model_dir / MODEL_FILE} is not a probabilistic classifier")
    classes = [int(c) for c in getattr(estimator, "classes_", [])]
    if classes != [0, 1]:
        raise ValueError(f"{model_dir / MODEL_FILE}: expected classes [0, 1], got {classes}")
    n_in = getattr(estimator, "n_features_in_", len(features))
    if n_in != len(features):
        raise ValueError(f"{model_dir}: model takes {n_in} features but meta.json lists {len(features)}")
    return ScoringModel(
        model_id=str(meta["model_id"]),
        model_version=str(meta["model_version"]),
        features=features,
        estimator=estimator,
        meta=meta,
        row_scorer=compile_scorer(estimator),
    )

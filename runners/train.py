"""Train the demo's models on the synthetic data and save one directory per model.

Each directory holds model.joblib + meta.json (runners.model.load reads them). Versions are a hash of
what determines the fitted model, so retraining with the same inputs gives the same versions and
ensure_trained() can skip the work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from runners.data import DATA_VERSION, FEATURES, generate
from runners.model import META_FILE, MODEL_FILE

SAMPLE_FILE = "training_sample.parquet"
HOLDOUT_SHARE = 0.25
MIN_ROWS = 400  # below this the stratified holdout has too few positives to mean anything


@dataclass(frozen=True)
class ModelSpec:
    """What to train for one model id. `params` is JSON and is hashed into the version."""

    model_id: str
    role_hint: str  # the role the demo policy gives it; the policy, not this, is authoritative
    features: tuple[str, ...]
    params: Mapping[str, Any]
    build: Callable[[Mapping[str, Any], int], Any]  # (params, seed) -> unfitted estimator
    cost_tier: str
    # (rows, seed) of a data set fixed for this model, so its version never moves with --rows/--seed.
    frozen_data: tuple[int, int] | None = None


def _gbt(p: Mapping[str, Any], seed: int) -> Any:
    return HistGradientBoostingClassifier(**p, random_state=seed)


def _logreg(p: Mapping[str, Any], seed: int) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(**p, random_state=seed))


def _tree(p: Mapping[str, Any], seed: int) -> Any:
    return DecisionTreeClassifier(**p, random_state=seed)


def _mlp(p: Mapping[str, Any], seed: int) -> Any:
    return make_pipeline(StandardScaler(), MLPClassifier(**p, random_state=seed))


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "gbt",
        "incumbent",
        FEATURES,
        {
            "max_iter": 120,
            "learning_rate": 0.05,
            "max_leaf_nodes": 15,
            "min_samples_leaf": 40,
            "l2_regularization": 1.0,
            "early_stopping": False,
        },
        _gbt,
        "medium",
    ),
    ModelSpec("logreg", "challenger", FEATURES, {"C": 1.0, "max_iter": 1000}, _logreg, "low"),
    ModelSpec("tree", "backstop", FEATURES, {"max_depth": 3}, _tree, "low"),
    # The canary: deliberately simple and frozen (its own fixed data), a stable yardstick.
    ModelSpec(
        "base",
        "canary",
        ("amount", "merchant_risk", "card_present"),
        {"C": 1.0, "max_iter": 1000},
        _logreg,
        "low",
        frozen_data=(5000, 0),
    ),
    # max_iter is capped to keep training fast; the ConvergenceWarning that causes is expected.
    ModelSpec(
        "mlp",
        "shadow",
        FEATURES,
        {"hidden_layer_sizes": [32, 16], "alpha": 0.001, "max_iter": 60},
        _mlp,
        "medium",
    ),
)


def model_version(spec: ModelSpec, rows: int, seed: int) -> str:
    """Deterministic: the same spec, data and scikit-learn version always give the same string."""
    data_rows, data_seed = spec.frozen_data or (rows, seed)
    identity = {
        "model_id": spec.model_id,
        "features": list(spec.features),
        "params": spec.params,
        "rows": data_rows,
        "seed": data_seed,
        "data_version": DATA_VERSION,
        "sklearn": sklearn.__version__,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{spec.model_id}-{digest[:12]}"


def expected_versions(rows: int = 20000, seed: int = 7) -> dict[str, str]:
    """Model id -> the version train_all(rows=rows, seed=seed) would write."""
    return {s.model_id: model_version(s, rows, seed) for s in SPECS}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save(model_dir: Path, estimator: Any, meta: Mapping[str, Any]) -> None:
    """Model first, meta.json last: a meta.json on disk means the model next to it is complete."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{MODEL_FILE}.tmp{os.getpid()}"
    joblib.dump(estimator, tmp)
    os.replace(tmp, model_dir / MODEL_FILE)
    _atomic_write_bytes(model_dir / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def _fit(spec: ModelSpec, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    estimator = spec.build(spec.params, seed)
    # One thread: barely slower on 2 cores, and OpenMP's spinning makes a busy machine far slower.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x, y)
    return estimator


def _columns(spec: ModelSpec) -> list[int]:
    return [FEATURES.index(f) for f in spec.features]


def spec_of(kind: str) -> ModelSpec:
    """The spec of a model kind (a model id of SPECS: gbt, logreg, tree, base, mlp)."""
    for spec in SPECS:
        if spec.model_id == kind:
            return spec
    raise ValueError(f"kind: must be one of {', '.join(s.model_id for s in SPECS)}, got {kind!r}")


def _fit_measured(
    spec: ModelSpec, x: np.ndarray, y: np.ndarray, x_hold: np.ndarray, y_hold: np.ndarray, seed: int
) -> tuple[Any, dict[str, Any]]:
    """Fit, then measure on the holdout: the estimator and its meta.json but for model_id/model_version."""
    started = time.perf_counter()
    estimator = _fit(spec, x, y, seed)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    proba = estimator.predict_proba(x_hold)[:, 1]
    predict_us = (time.perf_counter() - started) * 1e6 / len(x_hold)
    meta = {
        "features": list(spec.features),
        "trained_at_ms": int(time.time() * 1000),
        "role_hint": spec.role_hint,
        "estimator": type(estimator).__name__
        if not hasattr(estimator, "steps")
        else "+".join(type(step).__name__ for _, step in estimator.steps),
        "params": spec.params,
        "train": {
            "rows": len(y),
            "seed": seed,
            "data_version": DATA_VERSION,
            "sklearn": sklearn.__version__,
            "fit_s": round(fit_s, 3),
        },
        "metrics": {
            "auc": round(float(roc_auc_score(y_hold, proba)), 5),
            "log_loss": round(float(log_loss(y_hold, proba, labels=[0, 1])), 5),
            "holdout_rows": len(y_hold),
            "holdout_positive_rate": round(float(np.mean(y_hold)), 5),
        },
        # A hint for routing costs; predict_us_per_row is measured on the holdout batch.
        "cost_hint": {"tier": spec.cost_tier, "predict_us_per_row": round(predict_us, 3)},
    }
    return estimator, meta


def train_one(
    spec: ModelSpec,
    x: np.ndarray,
    y: np.ndarray,
    model_dir: Path,
    identity: tuple[str, str],
    seed: int = 7,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ``spec`` on rows ``x`` (columns = FEATURES) and 0/1 ``y`` given from outside (a retraining
    run), measured on a stratified holdout of them, and save it in ``model_dir`` under ``identity``
    (model id, model version); ``extra`` is merged into meta.json. Returns the meta."""
    if len(y) < MIN_ROWS:
        raise ValueError(f"rows must be >= {MIN_ROWS}, got {len(y)}")
    if len(set(np.asarray(y).tolist())) != 2:
        raise ValueError("labels must hold both classes (0 and 1)")
    idx_train, idx_hold = train_test_split(
        np.arange(len(y)), test_size=HOLDOUT_SHARE, random_state=seed, stratify=y
    )
    cols = _columns(spec)
    estimator, meta = _fit_measured(
        spec, x[idx_train][:, cols], y[idx_train], x[idx_hold][:, cols], y[idx_hold], seed
    )
    meta = {"model_id": identity[0], "model_version": identity[1]} | meta | dict(extra or {})
    _save(Path(model_dir), estimator, meta)
    return meta


def train_all(out_dir: Path, rows: int = 20000, seed: int = 7) -> dict[str, dict[str, Any]]:
    """Train every model in SPECS, save them under out_dir/<model_id>/, return model id -> meta."""
    if rows < MIN_ROWS:
        raise ValueError(f"rows must be >= {MIN_ROWS}, got {rows}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, labels = generate(rows, seed)
    x_all = frame.to_numpy(dtype=float)
    # Arrays, not DataFrames: the runners score plain rows, and no feature-name checks get in the way.
    idx_train, idx_hold = train_test_split(
        np.arange(rows), test_size=HOLDOUT_SHARE, random_state=seed, stratify=labels
    )
    x_train, x_hold, y_train, y_hold = x_all[idx_train], x_all[idx_hold], labels[idx_train], labels[idx_hold]
    metas: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        cols = _columns(spec)
        if spec.frozen_data is None:
            fit_x, fit_y = x_train[:, cols], y_train
        else:
            frozen_frame, fit_y = generate(*spec.frozen_data)
            fit_x = frozen_frame.to_numpy(dtype=float)[:, cols]
        seed_used = seed if spec.frozen_data is None else spec.frozen_data[1]
        estimator, meta = _fit_measured(spec, fit_x, fit_y, x_hold[:, cols], y_hold, seed_used)
        meta = {"model_id": spec.model_id, "model_version": model_version(spec, rows, seed)} | meta
        _save(out_dir / spec.model_id, estimator, meta)
        metas[spec.model_id] = meta
    # Every training row (not the holdout) with its original dtypes: the reference for drift checks and
    # the base a retraining run adds the decoy archive to (a part of it made the retrained model weaker
    # than the one it replaces: docs/evaluation.md).
    keep = np.sort(idx_train)
    sample = frame.iloc[keep].reset_index(drop=True)
    sample["label"] = labels[keep]
    tmp = out_dir / f".{SAMPLE_FILE}.tmp{os.getpid()}"
    sample.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / SAMPLE_FILE)
    return metas


def cached_metas(out_dir: Path, rows: int = 20000, seed: int = 7) -> dict[str, dict[str, Any]] | None:
    """The saved metas if every model and the sample are on disk at the expected versions, else None."""
    out_dir = Path(out_dir)
    if not (out_dir / SAMPLE_FILE).is_file():
        return None
    metas: dict[str, dict[str, Any]] = {}
    for model_id, version in expected_versions(rows, seed).items():
        model_dir = out_dir / model_id
        try:
            meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("model_version") != version or not (model_dir / MODEL_FILE).is_file():
            return None
        metas[model_id] = meta
    return metas


def ensure_trained(out_dir: Path, rows: int = 20000, seed: int = 7) -> dict[str, dict[str, Any]]:
    """train_all() unless everything is already saved at the same versions (so setup can rerun cheaply)."""
    cached = cached_metas(out_dir, rows, seed)
    return cached if cached is not None else train_all(out_dir, rows, seed)


def _describe(meta: Mapping[str, Any], note: str) -> str:
    m = meta["metrics"]
    return (
        f"{meta['model_id']:<7} {meta['model_version']:<20} role={meta.get('role_hint', '?'):<10} "
        f"auc={m['auc']:.4f} log_loss={m['log_loss']:.4f} fit_s={meta['train']['fit_s']:.2f} {note}"
    ).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.train", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for <model_id>/ subdirectories")
    parser.add_argument("--rows", type=int, default=20000, help="rows of synthetic data (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="data and model seed (default 7)")
    parser.add_argument("--force", action="store_true", help="retrain even if the versions are on disk")
    args = parser.parse_args(argv)
    cached = None if args.force else cached_metas(args.out, args.rows, args.seed)
    started = time.perf_counter()
    metas = cached if cached is not None else train_all(args.out, args.rows, args.seed)
    note = "(cached)" if cached is not None else ""
    for meta in metas.values():
        print(_describe(meta, note))
    if cached is None:
        print(f"trained {len(metas)} models in {time.perf_counter() - started:.1f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

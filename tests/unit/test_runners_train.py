"""Training: what lands on disk, deterministic versions, idempotence, and train -> load -> score."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from runners import train
from runners.data import FEATURES, generate, sample_many
from runners.model import META_FILE, MODEL_FILE, load

ROWS, SEED = 2000, 7
MODEL_IDS = {"gbt", "logreg", "tree", "base", "mlp"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("models")
    return out, train.train_all(out, rows=ROWS, seed=SEED)


def test_every_model_is_saved_with_its_meta(trained: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, metas = trained
    assert set(metas) == MODEL_IDS
    for model_id, meta in metas.items():
        assert (out / model_id / MODEL_FILE).is_file()
        on_disk = json.loads((out / model_id / META_FILE).read_text())
        assert on_disk == meta
        assert meta["model_id"] == model_id
        assert re.fullmatch(rf"{model_id}-[0-9a-f]{{12}}", meta["model_version"])
        assert set(meta["features"]) <= set(FEATURES)
        assert isinstance(meta["trained_at_ms"], int) and meta["trained_at_ms"] > 1_600_000_000_000
        m = meta["metrics"]
        assert 0.5 < m["auc"] <= 1.0, model_id
        assert 0.0 < m["log_loss"] < 0.5, model_id
        assert m["holdout_rows"] == ROWS * train.HOLDOUT_SHARE
        assert meta["cost_hint"]["tier"] in {"low", "medium", "high"}
        assert meta["cost_hint"]["predict_us_per_row"] > 0
    assert metas["tree"]["params"]["max_depth"] == 3
    assert len(metas["base"]["features"]) <= 3
    assert metas["gbt"]["estimator"] == "HistGradientBoostingClassifier"
    assert metas["logreg"]["estimator"] == "StandardScaler+LogisticRegression"
    assert metas["mlp"]["estimator"] == "StandardScaler+MLPClassifier"


def test_training_sample_has_features_and_labels(trained: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, _ = trained
    sample = pd.read_parquet(out / train.SAMPLE_FILE)
    assert list(sample.columns) == [*FEATURES, "label"]
    assert len(sample) == ROWS * (1 - train.HOLDOUT_SHARE)  # fewer than SAMPLE_ROWS here: all training rows
    assert set(sample["label"].unique()) == {0, 1}
    assert pd.api.types.is_integer_dtype(sample["hour"])
    # The rows are real training rows: each appears in the generated data set.
    frame, labels = generate(ROWS, SEED)
    frame["label"] = labels
    merged = sample.merge(frame, on=[*FEATURES, "label"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_load_and_score_every_trained_model(trained: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, metas = trained
    requests = sample_many(np.random.default_rng(1), 20)
    for model_id, meta in metas.items():
        model = load(out / model_id)
        assert model.model_version == meta["model_version"]
        scored = model.score_batch(requests)
        assert len(scored) == 20
        for o in scored:
            assert isinstance(o, dict), (model_id, o)
            assert o["label"] in (0, 1) and 0.0 <= o["probability"] <= 1.0
        bad = model.score_batch([{"amount": "lots"}])[0]
        assert isinstance(bad, ValueError)


def test_training_is_reproducible(tmp_path: Path, trained: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    """Same rows and seed give the same versions and the same predictions, not just the same names."""
    out, metas = trained
    again = train.train_all(tmp_path, rows=ROWS, seed=SEED)
    requests = sample_many(np.random.default_rng(2), 50)
    for model_id in MODEL_IDS:
        assert again[model_id]["model_version"] == metas[model_id]["model_version"]
        assert again[model_id]["metrics"]["auc"] == metas[model_id]["metrics"]["auc"]
        assert load(tmp_path / model_id).score_batch(requests) == load(out / model_id).score_batch(requests)


def test_versions_are_deterministic_and_track_their_inputs() -> None:
    base = train.expected_versions(ROWS, SEED)
    assert base == train.expected_versions(ROWS, SEED)
    assert set(base) == MODEL_IDS
    other_seed = train.expected_versions(ROWS, SEED + 1)
    other_rows = train.expected_versions(ROWS + 1, SEED)
    for model_id in MODEL_IDS - {"base"}:
        assert other_seed[model_id] != base[model_id]
        assert other_rows[model_id] != base[model_id]
    # The canary is frozen: its own fixed data, so retraining the others never moves it.
    assert other_seed["base"] == other_rows["base"] == base["base"]


def test_version_changes_with_params_and_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = next(s for s in train.SPECS if s.model_id == "tree")
    v = train.model_version(spec, ROWS, SEED)
    deeper = train.ModelSpec(**{**spec.__dict__, "params": {"max_depth": 4}})
    assert train.model_version(deeper, ROWS, SEED) != v
    monkeypatch.setattr(train.sklearn, "__version__", "0.0.0")
    assert train.model_version(spec, ROWS, SEED) != v


def test_ensure_trained_skips_when_versions_match(trained: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, metas = trained
    mtime = (out / "gbt" / MODEL_FILE).stat().st_mtime_ns
    again = train.ensure_trained(out, rows=ROWS, seed=SEED)
    assert again == metas  # same trained_at_ms: read back, not retrained
    assert (out / "gbt" / MODEL_FILE).stat().st_mtime_ns == mtime


def test_ensure_trained_retrains_when_anything_is_missing_or_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, int, int]] = []

    def fake_train_all(out_dir: Path, rows: int = 0, seed: int = 0) -> dict[str, dict[str, Any]]:
        calls.append((out_dir, rows, seed))
        return {}

    versions = train.expected_versions(ROWS, SEED)
    for model_id, version in versions.items():
        (tmp_path / model_id).mkdir()
        (tmp_path / model_id / MODEL_FILE).write_bytes(b"x")
        (tmp_path / model_id / META_FILE).write_text(json.dumps({"model_version": version}))
    (tmp_path / train.SAMPLE_FILE).write_bytes(b"x")
    monkeypatch.setattr(train, "train_all", fake_train_all)

    assert train.ensure_trained(tmp_path, ROWS, SEED)["gbt"]["model_version"] == versions["gbt"]
    assert calls == []
    train.ensure_trained(tmp_path, ROWS + 1, SEED)  # other rows: other versions
    assert len(calls) == 1
    (tmp_path / "mlp" / MODEL_FILE).unlink()
    train.ensure_trained(tmp_path, ROWS, SEED)
    assert len(calls) == 2
    (tmp_path / "mlp" / MODEL_FILE).write_bytes(b"x")
    (tmp_path / train.SAMPLE_FILE).unlink()
    train.ensure_trained(tmp_path, ROWS, SEED)
    assert calls[-1] == (tmp_path, ROWS, SEED) and len(calls) == 3


def test_too_few_rows_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows"):
        train.train_all(tmp_path, rows=100)


def test_cli_prints_one_line_per_model_and_reuses_the_cache(
    trained: tuple[Path, dict[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, metas = trained
    assert train.main(["--out", str(out), "--rows", str(ROWS), "--seed", str(SEED)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(MODEL_IDS)
    for line in lines:
        model_id = line.split()[0]
        assert metas[model_id]["model_version"] in line
        assert f"auc={metas[model_id]['metrics']['auc']:.4f}" in line
        assert "log_loss=" in line and line.endswith("(cached)")


def test_the_data_separates_the_models_as_intended() -> None:
    """Gradient boosting > logistic regression > depth-3 tree on the default data size."""
    frame, labels = generate(20000, seed=SEED)
    x = frame.to_numpy(dtype=float)
    cut = 15000
    auc = {}
    for spec in train.SPECS:
        if spec.model_id in {"gbt", "logreg", "tree"}:
            est = train._fit(spec, x[:cut], labels[:cut], SEED)
            auc[spec.model_id] = roc_auc_score(labels[cut:], est.predict_proba(x[cut:])[:, 1])
    assert auc["gbt"] > auc["logreg"] + 0.01
    assert auc["logreg"] > auc["tree"] + 0.02

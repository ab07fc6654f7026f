"""Offline trials of the degrade scenario's promotion: is a gbt retrained from the decoy surely better
than logreg, by the gate's paired test, within the traffic the scenario's third phase sends?

    python -m harness.gate_trials [--base all|5000] [--trials 20] [--requests 4000] [--json OUT]

Each trial retrains gbt the way ``eval retrain --base-sample`` does (the base rows plus 2,000 fresh
labelled requests standing for the run's archive, seed 5000 + trial), then scores the same fresh
requests (seed 9000 + trial) with it and with the trained logreg, and tests "gain >= 0.01 at
z >= 1.645" (``evaluation.quality.paired_auc``) every 100 requests from 1,000 on, as the autopilot
tests every second. ``--base 5000`` is the first 5,000 training rows (the training sample before
2026-12-06), ``all`` every training row (``runners.train``'s training_sample.parquet now). Prints a line
per trial and the summary; docs/evaluation.md quotes its figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from evaluation.quality import paired_auc
from runners import data, model, train

ARCHIVE_ROWS = 2000  # the run's labelled requests a retraining adds (two phases of 1,000)
MIN_GAIN, MIN_Z = 0.01, 1.645  # harness/degrade_scenario.AUTOPILOT_CONFIG's gate
FIRST_TEST, TEST_EVERY = 1000, 100  # min_labelled, then a test per ~1 s of the third phase's 100/s


def base_rows(which: str, rows: int = 20000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The training rows of ``runners.train.train_all`` (its split), all or the first 5,000."""
    frame, labels = data.generate(rows, seed)
    idx_train, _ = train_test_split(
        np.arange(rows), test_size=train.HOLDOUT_SHARE, random_state=seed, stratify=labels
    )
    keep = np.sort(idx_train if which == "all" else idx_train[:5000])
    return frame.to_numpy(dtype=float)[keep], labels[keep]


def trial(
    k: int, base: tuple[np.ndarray, np.ndarray], rival: model.ScoringModel, requests: int
) -> dict[str, Any]:
    """One retraining and its sequential paired test against ``rival`` on fresh requests."""
    ax, ay = data.generate(ARCHIVE_ROWS, 5000 + k)
    x = np.vstack([base[0], ax[list(data.FEATURES)].to_numpy(dtype=float)])
    y = np.concatenate([base[1], ay])
    with tempfile.TemporaryDirectory() as d:
        train.train_one(train.spec_of("gbt"), x, y, Path(d), ("gbt-r1", "trial"), seed=7)
        retrained = model.load(Path(d))
    fresh, truth = data.generate(requests, 9000 + k)

    def proba(m: model.ScoringModel) -> np.ndarray:
        return np.asarray(m.estimator.predict_proba(fresh[list(m.features)].to_numpy(dtype=float))[:, 1])

    mine, theirs = proba(retrained), proba(rival)
    passed_at = None
    for n in range(FIRST_TEST, requests + 1, TEST_EVERY):
        r = paired_auc(truth[:n], mine[:n], theirs[:n])
        if passed_at is None and r.gain >= MIN_GAIN and r.z >= MIN_Z:
            passed_at = n
    end = paired_auc(truth, mine, theirs)
    return {"trial": k, "gain": round(end.gain, 4), "z": round(end.z, 2), "passed_at": passed_at}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gate_trials", description=__doc__.split("\n")[0])
    ap.add_argument("--base", choices=("all", "5000"), default="all")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--requests", type=int, default=4000, help="fresh labelled requests per trial")
    ap.add_argument("--models-dir", type=Path, default=Path("var/models"))
    ap.add_argument("--json", type=Path, help="write the trials and the summary here")
    a = ap.parse_args(argv)
    if a.trials < 1 or a.requests < FIRST_TEST:
        ap.error(f"--trials must be >= 1 and --requests >= {FIRST_TEST}")
    train.ensure_trained(a.models_dir)
    rival = model.load(a.models_dir / "logreg")
    base = base_rows(a.base)
    rows = []
    for k in range(a.trials):
        rows.append(trial(k, base, rival, a.requests))
        print(json.dumps(rows[-1]), flush=True)
    gains = [r["gain"] for r in rows]
    summary = {
        "base": a.base,
        "requests": a.requests,
        "trials": a.trials,
        "gain_mean": round(statistics.fmean(gains), 4),
        "gain_sd": round(statistics.pstdev(gains), 4),
        "worse_than_logreg": sum(g < 0 for g in gains),
        "passed": sum(r["passed_at"] is not None for r in rows),
    }
    print(
        f"base {a.base}: gain over logreg on {a.requests} requests {summary['gain_mean']} (sd "
        f"{summary['gain_sd']}), {summary['worse_than_logreg']} of {a.trials} worse; passed gain >= "
        f"{MIN_GAIN} at z >= {MIN_Z} in {summary['passed']} of {a.trials}"
    )
    if a.json is not None:
        a.json.write_text(json.dumps({"summary": summary, "trials": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

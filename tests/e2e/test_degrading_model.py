"""A model that degrades mid-run (harness/degrade_scenario.py, short): metrics, quality, alerts and the gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness import degrade_scenario
from udfs import names
from udfs.policy import parse_policy

pytestmark = pytest.mark.e2e

COUNT = 500  # requests per phase


def test_a_degrading_incumbent_is_detected_and_demoted(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out: Path = tmp_path_factory.mktemp("degrade")
    models = tmp_path_factory.mktemp("models")
    s = degrade_scenario.run(
        out / "run", count=COUNT, rate=50.0, models_dir=models, bootstrap=kafka_bootstrap
    )

    # The job's per-model counters (Prometheus) moved with the traffic: every mailbox of the degraded
    # phase closed with a score or a timeout from each model, and gbt, still the incumbent, kept winning.
    before, after = s["metrics"]["after_healthy"], s["metrics"]["after_degraded"]
    for m in degrade_scenario.MODEL_IDS:
        assert set(after[m]) == set(names.MODEL_METRICS), m

        def closed(d: dict[str, float]) -> float:
            return d["scores"] + d["timeouts"]

        assert closed(after[m]) - closed(before[m]) == COUNT, m
        assert after[m]["scores"] - before[m]["scores"] >= COUNT * 0.8, m  # a loaded machine times some out
    assert after["gbt"]["wins"] - before["gbt"]["wins"] >= COUNT * 0.5

    # Labels show the drop, for gbt and for what callers got; the challenger is unchanged. Noise is a coin
    # toss: accuracy falls from ~0.93 to ~0.5 and log loss rises to ~1. (AUC is not asserted: with ~5%
    # positives, 500 requests hold ~25, and a noise AUC strays to 0.7 now and then.)
    q = s["quality"]
    for m in ("gbt", "official"):
        assert q["healthy"][m]["accuracy"] > 0.85 and q["degraded"][m]["accuracy"] < 0.7, m
        assert q["degraded"][m]["log_loss"] > q["healthy"][m]["log_loss"] + 0.4, m
    assert q["healthy"]["gbt"]["auc"] > 0.7
    assert q["degraded"]["logreg"]["accuracy"] > 0.85

    # Canary agreement and drift against its own past name gbt, at the default thresholds; the healthy
    # models raise no alarm (against the canary's distribution, tree alone had PSI ~6.5 in every window).
    kinds = {(a["kind"], a["subject"]) for a in s["alerts"]}
    assert ("canary_agreement", "gbt") in kinds and ("self_drift", "gbt") in kinds
    assert ("canary_agreement", "official") in kinds
    assert {a["subject"] for a in s["alerts"]} <= {"gbt", "official"}, s["alerts"]
    assert degrade_scenario.DRIFT_CONFIG.keys().isdisjoint(
        {"psi_alert", "ks_alert", "self_psi_alert", "self_ks_alert"}
    )

    # The gate demotes gbt to shadow; the next policy is valid and still has an official model.
    verdicts = {v["model_id"]: v for v in s["gate"]["verdicts"]}
    assert s["gate"]["action"] == "demote"
    assert verdicts["gbt"]["new_role"] == "shadow" and verdicts["gbt"]["verdict"] == "demote"
    nxt = parse_policy(yaml.safe_load(s["gate"]["policy_yaml"]))
    assert nxt.version == 2 and nxt.role_of("gbt") == "shadow"
    assert any(m.role in ("incumbent", "challenger") for m in nxt.models) or nxt.role_of("tree") == "backstop"
    assert Path(s["report"]).stat().st_size > 10_000

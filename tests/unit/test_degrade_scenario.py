"""harness/degrade_scenario.py: how seconds_to_fallback is read from the decision log (no broker)."""

from __future__ import annotations

from typing import Any

from harness.degrade_scenario import fallback_timing
from runners.runner import degraded

T0 = 1_700_000_000_000
PHASE = "deg1-degraded"


def record(i: int, official: str, version: int, bad: bool, decided_offset: int = 2) -> dict[str, Any]:
    """Request i of the phase, received at T0 + 100 i; gbt's score is the runner's noise when ``bad``."""
    rid, received = f"{PHASE}-{i}", T0 + 100 * i
    gbt = {"label": 0, "probability": 0.1}
    if bad:
        gbt = dict(degraded(gbt, rid, 1))
    outputs = {"gbt": gbt, "logreg": {"label": 0, "probability": 0.2}}
    scores = [
        {"model_id": m, "status": "ok", "output": o, "arrived_at_ms": received + 1, "duplicate": False}
        for m, o in outputs.items()
    ]
    result = {"request_id": rid, "model_id": official, "policy_version": version,
              "decided_at_ms": received + decided_offset}  # fmt: skip
    return {"request_id": rid, "result": result, "scores": scores}


def test_the_fallback_is_the_first_answer_after_the_bad_models_last_one_under_a_new_version() -> None:
    log = [record(i, "gbt", 1, bad=i >= 3) for i in range(8)]  # bad from request 3 (T0 + 300)
    log[5] = record(5, "logreg", 1, bad=True)  # a fallback under v1 (gbt late): not the loop closing
    log += [record(i, "logreg", 2, bad=True) for i in range(8, 12)]
    log.append({"request_id": "other-1", "result": {"model_id": "gbt"}, "scores": []})  # another run's
    out = fallback_timing(log, PHASE, "gbt", 1, versions={2})
    assert out["first_degraded_score_at_ms"] == T0 + 301 and out["degraded_scores"] == 9
    assert out["fallback_request_id"] == f"{PHASE}-8" and out["fallback_policy_version"] == 2
    assert out["degraded_official_answers"] == 4  # requests 3, 4, 6, 7
    assert out["seconds_to_fallback"] == (T0 + 802 - (T0 + 301)) / 1000  # 0.501


def test_no_fallback_without_the_autopilots_version() -> None:
    log = [record(i, "gbt", 1, bad=i >= 3) for i in range(8)] + [record(8, "logreg", 1, bad=True)]
    out = fallback_timing(log, PHASE, "gbt", 1, versions={2})
    assert out["fallback_model"] == "logreg" and out["seconds_to_fallback"] is None  # still v1: by chance
    assert fallback_timing(log[:3], PHASE, "gbt", 1, versions={2})["first_degraded_score_at_ms"] is None
    still = fallback_timing([record(i, "gbt", 1, bad=True) for i in range(4)], PHASE, "gbt", 1, {2})
    assert still["seconds_to_fallback"] is None and still["degraded_official_answers"] == 4

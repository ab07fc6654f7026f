"""harness/degrade_scenario.py: how seconds_to_fallback and the closed loop's steps (retrained, shadow,
challenger, promotion) are read from the decision log and the audit (no broker)."""

from __future__ import annotations

from typing import Any

from harness.degrade_scenario import fallback_timing, loop_timing, report_events
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


def _audit(
    version: int, at_ms: int, moves: dict[str, tuple[str, str]], outcome: str = "applied"
) -> dict[str, Any]:
    models = [{"model_id": m, "role": r, "new_role": n} for m, (r, n) in moves.items()]
    return {"outcome": outcome, "new_version": version, "at_ms": at_ms, "evidence": {"models": models}}


def _decision(
    rid: str, official: str, version: int, decided: int, scores: list[tuple[str, str, int]]
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "result": {
            "model_id": official,
            "model_version": f"{official}-v",
            "policy_version": version,
            "decided_at_ms": decided,
        },  # fmt: skip
        "scores": [{"model_id": m, "role": role, "arrived_at_ms": at} for m, role, at in scores],
    }


def test_the_loops_steps_are_timed_from_the_first_degraded_score() -> None:
    bad = T0
    audit = [
        _audit(2, T0 + 4_000, {"gbt": ("incumbent", "shadow")}),
        _audit(4, T0 + 20_000, {"gbt-r1": ("shadow", "shadow")}),  # the retrain's record: no move
        _audit(5, T0 + 40_000, {"gbt-r1": ("shadow", "challenger")}, outcome="refused"),  # not applied
        _audit(5, T0 + 45_000, {"gbt-r1": ("shadow", "challenger")}),
        _audit(
            6, T0 + 51_000, {"gbt-r1": ("challenger", "incumbent"), "logreg": ("incumbent", "challenger")}
        ),
    ]
    log = [
        _decision(
            "a", "logreg", 3, T0 + 21_000, [("gbt-r1", "unknown", T0 + 20_500)]
        ),  # before the shadow policy
        _decision("b", "logreg", 4, T0 + 23_000, [("gbt-r1", "shadow", T0 + 22_000)]),
        _decision(
            "c", "gbt-r1", 5, T0 + 48_000, [("gbt-r1", "challenger", T0 + 47_000)]
        ),  # a fallback, not it
        _decision("d", "gbt-r1", 6, T0 + 53_000, [("gbt-r1", "incumbent", T0 + 52_500)]),
        _decision("e", "gbt-r1", 6, T0 + 52_000, []),
    ]
    out = loop_timing(log, audit, "gbt-r1", bad, T0 + 15_000)
    assert (out["seconds_to_retrained"], out["seconds_to_shadow"]) == (15.0, 22.0)
    assert (out["seconds_to_challenger"], out["seconds_to_promotion"]) == (45.0, 52.0)
    assert out["promotion_version"] == 6 and out["promotion_at_ms"] == T0 + 52_000
    assert out["promotion_model_version"] == "gbt-r1-v"

    not_yet = loop_timing(log[:2], audit[:4], "gbt-r1", bad, T0 + 15_000)
    assert not_yet["seconds_to_challenger"] == 45.0 and not_yet["seconds_to_promotion"] is None
    nothing = loop_timing(log, audit, None, bad, None)
    assert all(nothing[f"seconds_to_{k}"] is None for k in ("retrained", "shadow", "challenger", "promotion"))


def test_the_reports_markers_are_the_steps_that_happened() -> None:
    fallback = {
        "first_degraded_score_at_ms": T0,
        "fallback_decided_at_ms": T0 + 5_000,
        "seconds_to_fallback": 5.0,
    }
    loop = {"model_id": "gbt-r1", "retrained_at_ms": T0 + 15_000, "shadow_at_ms": T0 + 22_000,
            "challenger_at_ms": None, "promotion_at_ms": None}  # fmt: skip
    assert report_events(fallback, loop) == {
        "gbt degrades": T0, "fallback": T0 + 5_000, "gbt-r1 retrained": T0 + 15_000,
        "gbt-r1 shadow": T0 + 22_000, "gbt-r1 challenger": None, "gbt-r1 promoted": None,
    }  # fmt: skip
    assert report_events(fallback | {"seconds_to_fallback": None}, {})["fallback"] is None

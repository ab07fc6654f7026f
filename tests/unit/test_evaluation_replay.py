"""evaluation.replay: a candidate policy re-run offline over the decision log.

The strongest check: replaying the policy that actually ran reproduces, for any arrival order and
timing, exactly what the real mailbox (udfs.mailbox, driven like the Flink adapter drives it) decided.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.labels import Label
from evaluation.replay import NO_MODEL, replay, replay_one
from udfs.policy import Policy, load_policy, parse_policy
from udfs.testing import Harness

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
# The candidate: logreg first (waited for up to 70 ms), then gbt (40 ms), then the backstop.
LOGREG_FIRST = parse_policy(
    DEFAULT.to_dict()
    | {
        "version": 2,
        "models": [
            {"id": "logreg", "role": "incumbent", "wait_ms": 70},
            {"id": "gbt", "role": "challenger", "wait_ms": 40},
            {"id": "tree", "role": "backstop"},
            {"id": "base", "role": "canary"},
        ],
    }
)


def entry(
    model: str, at: int, p: float | None = 0.8, late: bool = False, dup: bool = False
) -> dict[str, Any]:
    ok = p is not None
    return {
        "model_id": model,
        "model_version": f"{model}-v1",
        "role": "x",
        "status": "ok" if ok else "error",
        "output": {"label": int(p >= 0.5), "probability": p} if p is not None else None,
        "error": None if ok else "boom",
        "scored_at_ms": at,
        "latency_ms": 1.0,
        "arrived_at_ms": at,
        "late": late,
        "duplicate": dup,
    }


def record(
    rid: str, received: int, decided: int, model: str | None, scores: list[dict[str, Any]]
) -> dict[str, Any]:
    chosen = next((s for s in scores if s["model_id"] == model), None)
    return {
        "request_id": rid,
        "policy_version": 1,
        "received_at_ms": received,
        "decided_at_ms": decided,
        "closed_at_ms": received + 1100,
        "result": {
            "request_id": rid,
            "model_id": model,
            "model_version": None if model is None else f"{model}-v1",
            "output": None if chosen is None else chosen["output"],
            "reason": "no_answer" if model is None else "preferred",
            "trigger": "score",
            "policy_version": 1,
            "sent_at_ms": received,
            "received_at_ms": received,
            "decided_at_ms": decided,
            "latency_ms": decided - received,
            "answered": [],
            "failed": [],
        },
        "scores": scores,
    }


LOG = [
    # logreg inside its 70 ms wait: the candidate answers with it, as soon as it arrives.
    record("r1", 1000, 1010, "gbt", [entry("gbt", 1010, 0.9), entry("logreg", 1030, 0.2)]),
    # logreg too slow (80 > 70): the candidate waits 70 ms, then takes gbt.
    record("r2", 2000, 2010, "gbt", [entry("gbt", 2010, 0.9), entry("logreg", 2080, 0.2, late=True)]),
    # logreg failed: no waiting for it; gbt as soon as it arrives.
    record("r3", 3000, 3050, "gbt", [entry("logreg", 3005, None), entry("gbt", 3050, 0.7)]),
    # nobody: no answer at the deadline for both.
    record("r4", 4000, 4100, None, []),
    # logreg arrived after the actual decision (late) but within 70 ms: the candidate would have used it.
    record("r5", 5000, 5015, "gbt", [entry("gbt", 5015, 0.9), entry("logreg", 5060, 0.3, late=True),
                                     entry("gbt", 5016, 0.1, dup=True)]),
    # an orphan: no request, skipped.
    {"request_id": "r6", "policy_version": 1, "received_at_ms": None, "decided_at_ms": None,
     "closed_at_ms": 9000, "result": None, "scores": [entry("gbt", 8000)]},
]  # fmt: skip


def test_replay_one_by_hand() -> None:
    got = {d["request_id"]: replay_one(d, LOGREG_FIRST) for d in LOG}
    assert got["r6"] is None
    summary = {k: (r.model_id, r.reason, r.trigger, r.latency_ms) for k, r in got.items() if r is not None}
    assert summary == {
        "r1": ("logreg", "preferred", "score", 30),
        "r2": ("gbt", "fallback", "wait_timer", 70),
        "r3": ("gbt", "fallback", "score", 50),
        "r4": (None, "no_answer", "deadline", 100),
        "r5": ("logreg", "preferred", "score", 60),
    }
    assert got["r5"].output == {"label": 0, "probability": 0.3}  # type: ignore[union-attr]
    assert not any(r.beyond_log for r in got.values() if r is not None)


def test_the_candidate_wins_exactly_where_logreg_answered_within_its_wait() -> None:
    labels = [Label("r1", 0, 9), Label("r2", 1, 9), Label("r5", 0, 9)]
    report = replay(LOG, LOGREG_FIRST, labels=labels, actual_policy=DEFAULT)
    req = report.requests.set_index("request_id")
    assert list(req.index) == ["r1", "r2", "r3", "r4", "r5"]
    assert req.index[req.candidate_model == "logreg"].tolist() == ["r1", "r5"]
    assert req["actual_model"].tolist() == ["gbt", "gbt", "gbt", NO_MODEL, "gbt"]
    s = report.summary.set_index("policy")
    assert s.loc["actual", "requests"] == s.loc["candidate", "requests"] == 5
    assert s.loc["actual", "no_answers"] == s.loc["candidate", "no_answers"] == 1
    # Latencies: actual 10, 10, 50, 100, 15; candidate 30, 70, 50, 100, 60.
    assert s.loc["actual", "latency_p50_ms"] == 15 and s.loc["candidate", "latency_p50_ms"] == 60
    assert s.loc["candidate", "latency_p99_ms"] == pytest.approx(70 + 0.96 * 30)
    assert s.loc["actual", "deadline_misses"] == 0 and s.loc["candidate", "deadline_misses"] == 0
    # Quality on the three labelled requests: actual says 1, 1, 1 (p 0.9): right once; candidate 0, 1, 0.
    assert s.loc["actual", "labelled"] == 3
    assert s.loc["actual", "accuracy"] == pytest.approx(1 / 3)
    assert s.loc["candidate", "accuracy"] == 1.0
    wins = report.wins.set_index(["policy", "model_id"])
    assert wins.loc[("candidate", "logreg"), "count"] == 2 and wins.loc[("candidate", "gbt"), "count"] == 2
    assert wins.loc[("actual", "gbt"), "share"] == pytest.approx(0.8)
    d = report.to_dict()
    assert d["changed"] == 2
    json.dumps(d)  # NaN became null


def test_deadline_misses_and_overrides() -> None:
    slow = record("s1", 0, 130, "gbt", [entry("gbt", 130)])  # the job answered 30 ms past its deadline
    report = replay([slow], DEFAULT, actual_policy=DEFAULT)
    s = report.summary.set_index("policy")
    assert s.loc["actual", "deadline_misses"] == 1 and s.loc["candidate", "deadline_misses"] == 0
    assert report.requests.loc[0, "candidate_reason"] == "no_answer"  # gbt came after the deadline
    longer = replay([slow], DEFAULT, deadlines={"s1": 200})
    assert longer.requests.loc[0, "candidate_model"] == "gbt"
    assert longer.summary.set_index("policy").loc["actual", "deadline_misses"] == 0


def test_scores_before_the_request_count_at_its_arrival() -> None:
    early = record("e1", 500, 500, "gbt", [entry("logreg", 490, 0.4), entry("gbt", 495)])
    r = replay_one(early, LOGREG_FIRST)
    assert r is not None and (r.model_id, r.decided_at_ms, r.trigger) == ("logreg", 500, "score")


def test_a_candidate_deciding_after_the_log_closed_is_flagged() -> None:
    slow_policy = parse_policy(DEFAULT.to_dict() | {"deadline_ms": 5000})
    r = replay_one(record("b1", 0, 100, None, []), slow_policy)
    assert r is not None and r.decided_at_ms == 5000 and r.beyond_log
    report = replay([record("b1", 0, 100, None, [])], slow_policy)
    assert report.summary.set_index("policy").loc["candidate", "beyond_log"] == 1


def test_empty_log() -> None:
    report = replay([], DEFAULT)
    assert report.requests.empty and report.summary["requests"].tolist() == [0, 0]
    assert math.isnan(report.summary.loc[0, "latency_p50_ms"])


# --- replaying the policy that ran reproduces the mailbox ------------------------------------------------


def run_mailbox(
    policy: Policy, received: int, arrivals: list[tuple[int, str, bool, float]]
) -> dict[str, Any]:
    """Drive the mailbox as the job does (``udfs.testing.Harness``): records in time order, timers at
    each wake_at_ms, records at a timer's millisecond before it; return the decision record at close."""
    events: list[tuple[int, int, Any]] = [(received, 0, "request")]
    events += [(a[0], i + 1, a) for i, a in enumerate(arrivals)]
    events.sort(key=lambda e: (e[0], e[1]))
    h = Harness(policy, start_ms=min(e[0] for e in events))
    for t, _i, what in events:
        if t > h.now_ms:
            h.advance_to(t - 1)  # the timers before t
            h.set_clock(t)
        if what == "request":
            h.send_request("q-1", return_address="results", features={"x": 1}, sent_at_ms=received)
        else:
            _, model, ok, p = what
            out = {"label": int(p >= 0.5), "probability": p} if ok else None
            h.send_score("q-1", model, out, status="ok" if ok else "error", error=None if ok else "x",
                         model_version=f"{model}-v1", scored_at_ms=t)  # fmt: skip
        if h.decisions:
            break
    while not h.decisions and h.timers:
        h.advance_to(h.timers[0][0])
    assert len(h.decisions) == 1
    return h.decisions[0]


MODELS = ["gbt", "logreg", "tree", "base", "mlp"]
waits = st.none() | st.integers(0, 100)


@st.composite
def policies(draw: Any) -> Policy:
    mode = draw(st.sampled_from(["first_in_order", "majority_vote", "weighted_average"]))
    official = draw(st.permutations(["gbt", "logreg", "tree"]))
    models = [
        {"id": m, "role": r} for m, r in zip(official, ["incumbent", "challenger", "backstop"], strict=True)
    ]
    for m in models:
        w = draw(waits)
        if w is not None:
            m["wait_ms"] = w
    models += [{"id": "base", "role": "canary"}, {"id": "mlp", "role": "shadow"}]
    return parse_policy(
        {
            "version": 3,
            "deadline_ms": 100,
            "decide": mode,
            "models": models,
            "min_votes": draw(st.integers(1, 3)),
        }
    )


arrival = st.tuples(st.integers(980, 1400), st.sampled_from(MODELS), st.booleans(), st.floats(0, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(arrival, max_size=8))
def test_replaying_the_policy_that_ran_reproduces_the_mailbox(policy: Policy, arrivals: list[Any]) -> None:
    decision = run_mailbox(policy, 1000, arrivals)
    r = replay_one(decision, policy)
    assert r is not None and not r.beyond_log
    res = decision["result"]
    assert (r.model_id, r.reason, r.trigger, r.decided_at_ms, r.output) == (
        res["model_id"],
        res["reason"],
        res["trigger"],
        res["decided_at_ms"],
        res["output"],
    ), (decision, r)

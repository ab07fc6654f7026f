"""The load generator's pure core: schedule, request building, malformed records and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from harness.loadgen import (
    LEG_BACK,
    LEG_IN_JOB,
    LEG_TO_JOB,
    LEGS,
    ReceivedResult,
    SentRequest,
    bad_record_plan,
    build_request,
    compute_report,
    default_return_address,
    encode_request,
    format_legs,
    format_report,
    new_run_id,
    parse_result,
    progress_line,
    request_ids,
    result_legs,
    schedule,
    spread_positions,
)
from ops.latency import LatencySummary, format_summary, percentile, percentiles, quantile_label, summarize

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
REQUEST_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "request.schema.json").read_text()))
SCORE_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "score.schema.json").read_text()))
RESULT_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "result.schema.json").read_text()))

# --- latency helpers ---------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile([7.0], 99.9) == 7.0


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=200))
def test_percentiles_match_numpy(values: list[float]) -> None:
    got = percentiles(values)
    want = np.percentile(np.array(values), [50, 90, 99, 99.9])
    assert list(got) == [50.0, 90.0, 99.0, 99.9]
    for g, w in zip(got.values(), want, strict=True):
        assert math.isclose(g, float(w), rel_tol=1e-9, abs_tol=1e-6)


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert percentiles([]) == {}


def test_summarize_and_format() -> None:
    s = summarize(float(v) for v in range(1, 1001))  # 1..1000
    assert (s.count, s.min, s.max) == (1000, 1.0, 1000.0)
    assert s.mean == 500.5
    assert s.p50 == 500.5
    assert s.p99_9 == pytest.approx(999.001)
    d = s.to_dict()
    assert d["p99.9"] == s.p99_9 and "p99_9" not in d
    line = format_summary(s)
    assert line.startswith("n=1000 p50=500ms") and "p99.9=999ms" in line and line.endswith("max=1000ms")
    assert format_summary(summarize([])) == "n=0 (no samples)"
    assert summarize([]) == LatencySummary(0, None, None, None, None, None, None, None)
    assert quantile_label(99.9) == "p99.9" and quantile_label(50.0) == "p50"


# --- schedule ----------------------------------------------------------------------------------------


def test_schedule_is_evenly_spaced_at_the_rate() -> None:
    t = schedule(5, 100.0, start=2.0)
    assert t == pytest.approx([2.0, 2.01, 2.02, 2.03, 2.04])
    assert schedule(0, 10.0) == []


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.integers(min_value=2, max_value=5000), st.floats(min_value=0.1, max_value=1e5))
def test_schedule_sends_count_requests_in_count_minus_one_intervals(count: int, rate: float) -> None:
    t = schedule(count, rate)
    assert len(t) == count and t[0] == 0.0
    assert t[-1] == pytest.approx((count - 1) / rate)
    assert all(b > a for a, b in zip(t, t[1:], strict=False))


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_schedule_rejects_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError):
        schedule(3, rate)


def test_spread_positions_spreads_evenly() -> None:
    assert spread_positions(3, 100) == [25, 50, 75]
    assert spread_positions(0, 100) == []
    assert spread_positions(2, 0) == [0, 0]
    pos = spread_positions(20, 2000)
    assert pos == sorted(pos) and pos[0] > 0 and pos[-1] < 2000


# --- request building --------------------------------------------------------------------------------


def test_build_request_matches_the_schema() -> None:
    rng = np.random.default_rng(1)
    feats = {"amount": float(rng.lognormal()), "hour": int(rng.integers(24)), "foreign": False, "c": None}
    req = build_request("run-1", "results.load-run", feats, 1_700_000_000_000)
    assert REQUEST_SCHEMA.is_valid(req)
    assert "deadline_ms" not in req
    req = build_request("run-2", "results", feats, 1_700_000_000_000, deadline_ms=250)
    assert req["deadline_ms"] == 250 and REQUEST_SCHEMA.is_valid(req)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": "a b"},
        {"request_id": "x" * 129},
        {"request_id": "ok\n"},
        {"return_address": "bad topic!"},
        {"return_address": ""},
        {"now_ms": -1},
        {"now_ms": 1.5},
        {"now_ms": True},
        {"deadline_ms": 0},
        {"deadline_ms": 600_001},
        {"features": {"x": float("nan")}},
        {"features": {"x": [1]}},
        {"features": {1: 1}},
    ],
)
def test_build_request_refuses_what_the_schema_rejects(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"request_id": "r-1", "return_address": "results", "features": {}, "now_ms": 0}
    with pytest.raises(ValueError):
        build_request(**(args | kwargs))


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(
    st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True),
    st.dictionaries(
        st.text(max_size=10),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        max_size=6,
    ),
    st.integers(min_value=0, max_value=2**53),
    st.none() | st.integers(min_value=1, max_value=600_000),
)
def test_fast_encoder_is_byte_identical_to_the_builder(
    rid: str, topic: str, feats: dict[str, Any], now: int, deadline: int | None
) -> None:
    """The send loop's encoder must produce exactly what build_request + json would."""
    want = json.dumps(build_request(rid, topic, feats, now, deadline), separators=(",", ":")).encode()
    got = encode_request(rid, topic, json.dumps(feats, separators=(",", ":")), now, deadline)
    assert got == want
    assert REQUEST_SCHEMA.is_valid(json.loads(got))


def test_run_ids_and_request_ids_fit_the_wire_rules() -> None:
    run = new_run_id()
    assert run != new_run_id()
    ids = request_ids(run, 3)
    assert ids == [f"{run}-0", f"{run}-1", f"{run}-2"]
    for rid in ids:
        assert REQUEST_SCHEMA.is_valid(build_request(rid, default_return_address(run), {}, 0))


def test_default_features_come_from_runners_data() -> None:
    """The default feature function makes schema-valid requests (runners.data owns the distribution)."""
    from harness.loadgen import _default_features_fn

    fn = _default_features_fn()
    rng = np.random.default_rng(0)
    for i in range(20):
        assert REQUEST_SCHEMA.is_valid(build_request(f"r-{i}", "results", fn(rng), 0, 100))


# --- malformed records -------------------------------------------------------------------------------


def test_bad_record_plan_covers_every_kind_on_both_topics() -> None:
    plan = bad_record_plan(24, run_id="run", return_address="results.x", now_ms=1000)
    assert len(plan) == 24
    req = [b for b in plan if b.topic == "requests"]
    sc = [b for b in plan if b.topic == "scores"]
    assert len(req) == 16 and len(sc) == 8
    assert {b.kind for b in req} == {
        "not_utf8", "not_json", "not_object", "missing_field",
        "bad_field", "bad_request_id", "unknown_field", "bad_return_address",
    }  # fmt: skip
    assert {b.kind for b in sc} == {"not_json", "missing_field", "bad_output", "bad_field"}
    assert len({b.key for b in plan}) == 24
    # Even a handful reaches both topics.
    assert {b.topic for b in bad_record_plan(3, run_id="r", return_address="x", now_ms=0)} == {
        "requests",
        "scores",
    }


def test_every_bad_record_breaks_its_topics_schema() -> None:
    plan = bad_record_plan(
        12, run_id="run", return_address="res", now_ms=1000, requests_topic="rq", scores_topic="sc"
    )
    for b in plan:
        schema = REQUEST_SCHEMA if b.topic == "rq" else SCORE_SCHEMA
        try:
            text = b.value.decode("utf-8")
        except UnicodeDecodeError:
            assert b.kind == "not_utf8"
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            assert b.kind == "not_json"
            continue
        assert b.kind not in ("not_utf8", "not_json"), b
        assert not schema.is_valid(obj), b
        assert b.key == f"run-bad-{plan.index(b)}".encode()


def test_bad_records_only_on_requests_when_asked() -> None:
    plan = bad_record_plan(10, run_id="run", return_address="res", now_ms=0, with_scores=False)
    assert {b.topic for b in plan} == {"requests"}
    with pytest.raises(UnicodeDecodeError):
        next(b for b in plan if b.kind == "not_utf8").value.decode()


# --- the report --------------------------------------------------------------------------------------


def result(rid: str, model: str | None = "gbm", reason: str = "preferred", label: int = 1) -> dict[str, Any]:
    return {
        "request_id": rid,
        "model_id": model,
        "model_version": None if model is None else "1",
        "output": None if model is None else {"label": label},
        "reason": reason,
        "trigger": "deadline" if model is None else "score",
        "policy_version": 1,
        "sent_at_ms": 0,
        "received_at_ms": 1,
        "decided_at_ms": 2,
        "latency_ms": 1,
        "answered": [] if model is None else [model],
        "failed": [],
    }


def rec(at: float, record: dict[str, Any] | None) -> ReceivedResult:
    return ReceivedResult(consumed_ms=at, record=record)


def report(sent: list[SentRequest], received: list[ReceivedResult], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "run_id": "run",
        "requests_topic": "requests",
        "return_address": "res",
        "target_rate": 100,
    }
    return compute_report(sent, received, **(args | kw))


def test_report_counts_duplicates_and_conflicts_separately() -> None:
    sent = [SentRequest(f"r-{i}", 1000.0 + 10 * i) for i in range(5)]
    got = [
        rec(1005, result("r-0")),
        rec(1006, result("r-0")),  # identical duplicate
        rec(1020, result("r-1")),
        rec(1030, result("r-1", model="logreg", reason="fallback")),  # conflicting
        rec(1031, {**result("r-1"), "decided_at_ms": 99}),  # same answer, other timestamps: not a conflict
        rec(1040, result("r-2", model=None, reason="no_answer")),
        rec(1041, result("r-2", model=None, reason="no_answer")),
        rec(1042, result("r-2", label=0)),  # a model answer after no_answer: conflicting
        rec(1050, result("other-9")),  # foreign
        rec(1051, None),  # malformed
        rec(1052, {"request_id": 7}),  # malformed
    ]
    r = report(sent, got)
    assert (r.sent, r.answered, r.unanswered) == (5, 3, 2)
    assert r.unanswered_sample == ["r-3", "r-4"]
    assert r.results_received == 11
    assert (r.duplicates, r.conflicting) == (3, 2)
    assert (r.foreign, r.malformed_results) == (1, 2)
    assert r.invalid_results is None
    # Wins, reasons and latency come from the first result of each request.
    assert r.wins_by_model == {"gbm": 2, "(none)": 1}
    assert r.by_reason == {"preferred": 2, "no_answer": 1}
    assert r.by_trigger == {"score": 2, "deadline": 1}
    assert r.latency_ms.count == 3
    assert (r.latency_ms.min, r.latency_ms.p50, r.latency_ms.max) == (5.0, 10.0, 20.0)


def test_report_keeps_the_lead_in_latency_apart_but_counts_its_answers() -> None:
    # Sent in this order; the first two are the lead-in (a new rate's first seconds).
    sent = [SentRequest(f"r-{i}", 1000.0 + 10 * i, deadline_ms=100) for i in range(5)]
    got = [
        rec(1300, result("r-0")),  # 300 ms: the JIT at work
        rec(1210, result("r-1")),  # 200 ms
        rec(1025, result("r-2")),  # 5 ms
        rec(1045, result("r-3")),  # 15 ms
        rec(1045, result("r-3", model="logreg", reason="fallback")),  # a conflict: counted whatever its time
    ]
    r = report(sent, got, lead_in=2, budget_ms=100)
    assert (r.sent, r.answered, r.unanswered, r.conflicting) == (5, 4, 1, 1)
    assert r.wins_by_model == {"gbm": 4}  # every answer, the lead-in's too
    assert r.latency_ms.count == 2 and (r.latency_ms.min, r.latency_ms.max) == (5.0, 15.0)
    assert r.lead_in == 2
    assert r.lead_in_latency_ms is not None
    assert (r.lead_in_latency_ms.count, r.lead_in_latency_ms.min, r.lead_in_latency_ms.max) == (
        2,
        200.0,
        300.0,
    )
    # Late answers, deadlines and the legs are the measured window's only.
    assert (r.over_budget, r.deadline_checked, r.deadline_misses) == (0, 2, 0)
    assert r.legs_ms["to the job"].count == 2
    assert r.to_dict()["lead_in_latency_ms"]["max"] == 300.0
    assert (
        report(sent, got).lead_in_latency_ms is None
        and report(sent, got).to_dict()["lead_in_latency_ms"] is None
    )


def test_report_uses_the_earliest_result_even_if_listed_later() -> None:
    r = report([SentRequest("a", 100.0)], [rec(180, result("a", "late")), rec(130, result("a", "early"))])
    assert r.wins_by_model == {"early": 1}
    assert r.latency_ms.max == 30.0


def test_report_deadline_misses() -> None:
    sent = [
        SentRequest("a", 0.0, deadline_ms=50),
        SentRequest("b", 0.0, deadline_ms=50),
        SentRequest("c", 0.0, deadline_ms=50),
        SentRequest("d", 0.0, deadline_ms=None),  # no deadline: not checked
        SentRequest("e", 0.0, deadline_ms=50),  # unanswered: counted as unanswered, not as a miss
    ]
    got = [rec(49.9, result("a")), rec(50.0, result("b")), rec(50.1, result("c")), rec(500, result("d"))]
    r = report(sent, got)
    assert (r.deadline_checked, r.deadline_misses) == (3, 1)
    assert "deadline misses: 1 of 3 answered" in format_report(r)


def test_report_counts_answers_over_a_budget_without_request_deadlines() -> None:
    sent = [SentRequest(k, 0.0) for k in "abcd"]  # no per-request deadline was sent
    got = [rec(99.0, result("a")), rec(100.0, result("b")), rec(100.5, result("c"))]
    r = report(sent, got, budget_ms=100)
    assert r.over_budget == 1  # only c; d is unanswered, not over budget
    assert (r.deadline_checked, r.deadline_misses) == (0, 0)
    assert report(sent, got).over_budget is None


def test_report_percentiles_from_many_results() -> None:
    sent = [SentRequest(f"r-{i}", 0.0) for i in range(1000)]
    got = [rec(float(i + 1), result(f"r-{i}")) for i in range(1000)]  # latencies 1..1000 ms
    r = report(sent, got)
    assert r.latency_ms.p50 == 500.5
    assert r.latency_ms.p90 == pytest.approx(900.1)
    assert r.latency_ms.p99 == pytest.approx(990.01)
    assert r.latency_ms.p99_9 == pytest.approx(999.001)
    assert r.latency_ms.max == 1000.0


def test_report_send_rate_and_lag() -> None:
    t = schedule(101, 200.0)
    sent = [SentRequest(f"r-{i}", 5000.0 + s * 1000, lag_ms=0.1) for i, s in enumerate(t)]
    sent[-1] = SentRequest("r-100", sent[-1].sent_ms, lag_ms=12.5)
    r = report(sent, [], target_rate=200.0, send_errors=2)
    assert r.achieved_rate == pytest.approx(200.0)
    assert r.send_duration_s == pytest.approx(0.5)
    assert r.max_send_lag_ms == 12.5
    assert r.p99_send_lag_ms == pytest.approx(0.1)  # 1 lagging send in 101 is beyond the 99th percentile
    assert r.send_errors == 2
    assert report([SentRequest("x", 1.0)], []).achieved_rate is None
    empty = report([], [])
    assert (empty.sent, empty.achieved_rate, empty.max_send_lag_ms, empty.latency_ms.count) == (
        0,
        None,
        0.0,
        0,
    )


def test_report_checks_results_against_the_schema_when_asked() -> None:
    sent = [SentRequest("a", 0.0), SentRequest("b", 0.0)]
    got = [rec(1, result("a")), rec(2, {**result("b"), "reason": "fastest"}), rec(3, result("zz"))]
    r = report(sent, got, is_valid_result=RESULT_SCHEMA.is_valid)
    assert r.invalid_results == 1  # foreign results are not judged


def test_report_counts_bad_records_per_topic_and_kind() -> None:
    plan = bad_record_plan(6, run_id="run", return_address="res", now_ms=0)
    r = report([], [], bad=plan)
    assert r.bad_sent == {"requests": 4, "scores": 2}
    assert sum(r.bad_sent_by_kind.values()) == 6
    assert r.bad_sent_by_kind["scores:not_json"] == 1


def test_report_to_dict_is_json_and_the_summary_names_the_numbers() -> None:
    sent = [SentRequest(f"r-{i}", 0.0, deadline_ms=100) for i in range(3)]
    r = report(sent, [rec(5, result("r-0")), rec(6, result("r-0", label=0))], elapsed_s=1.5)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["latency_ms"]["p99.9"] == 5.0 and d["conflicting"] == 1 and d["unanswered"] == 2
    text = format_report(r)
    assert "1/3 answered, 2 unanswered, 1 duplicated (1 conflicting)" in text
    assert "unanswered e.g.: r-1, r-2" in text


def test_parse_result_counts_garbage_instead_of_failing() -> None:
    assert parse_result(b'{"request_id": "a"}', 5.0).request_id == "a"
    for raw in (b"not json", b"\xff\xfe", b"[1]", b"null", None):
        r = parse_result(raw, 5.0)
        assert r.record is None and r.request_id is None
    assert parse_result(b'{"request_id": 5}', 0).request_id is None


def test_progress_line() -> None:
    assert progress_line(10, 5, 10, 1.25, width=10) == "[#####.....] sent 10/10 answered 5 1.2s"
    assert progress_line(0, 0, 0, 0.0, width=4).startswith("[####]")


def test_report_splits_each_answer_into_its_three_legs() -> None:
    sent = [SentRequest("a", 100.0, deadline_ms=50), SentRequest("b", 100.0, deadline_ms=50)]
    got = [
        rec(130.0, {**result("a"), "received_at_ms": 104, "decided_at_ms": 120}),  # 30 ms: on time
        rec(190.0, {**result("b"), "received_at_ms": 110, "decided_at_ms": 180}),  # 90 ms: late, in the job
        rec(195.0, {**result("b"), "received_at_ms": 101, "decided_at_ms": 102}),  # a later copy: not used
    ]
    r = report(sent, got)
    assert {leg: (s.min, s.max) for leg, s in r.legs_ms.items()} == {
        LEG_TO_JOB: (4.0, 10.0),
        LEG_IN_JOB: (16.0, 70.0),
        LEG_BACK: (10.0, 10.0),
    }
    assert {leg: s.count for leg, s in r.late_legs_ms.items()} == dict.fromkeys(LEGS, 1)
    assert r.late_legs_ms[LEG_IN_JOB].max == 70.0
    assert format_legs(r.late_legs_ms) == (
        "to the job p50 10.0 / p99 10.0 ms; in the job p50 70.0 / p99 70.0 ms; "
        "back to the client p50 10.0 / p99 10.0 ms"
    )
    assert "where it went: to the job p50" in format_report(r)
    assert r.to_dict()["legs_ms"][LEG_IN_JOB]["max"] == 70.0


def test_a_result_without_timestamps_has_no_legs() -> None:
    record = {k: v for k, v in result("a").items() if k != "decided_at_ms"}
    assert result_legs(0.0, 10.0, record) is None
    r = report([SentRequest("a", 0.0)], [rec(10.0, record)])
    assert r.legs_ms == {} and r.latency_ms.count == 1
    assert format_legs(r.legs_ms) == "-"

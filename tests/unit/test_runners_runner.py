"""The runner's pure core (parsing, fault injection, scheduling) and its loop with fake Kafka clients."""

from __future__ import annotations

import gc
import io
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runners import runner as runner_mod
from runners.model import Scored, ScoringModel
from runners.runner import (
    INJECTED_FAILURE,
    Fate,
    Faults,
    MalformedRequest,
    Scheduler,
    decide,
    degraded,
    parse_request,
    poll_timeout_ms,
    run,
    settle_in,
)

SCORE_SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "score.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCORE_SCHEMA)


def _ok_scorer(rows: list[Any]) -> list[Scored]:
    """A stand-in model: probability = x, and rows without a numeric x are bad."""
    out: list[Scored] = []
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get("x"), int | float):
            out.append({"label": int(r["x"] >= 0.5), "probability": float(r["x"])})
        else:
            out.append(ValueError("missing features: x"))
    return out


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def _ids(n: int, prefix: str = "req") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


# --- parse_request ------------------------------------------------------------------------------


def test_parse_request_returns_id_and_features() -> None:
    raw = json.dumps(
        {"request_id": "a:1", "return_address": "results", "sent_at_ms": 1, "features": {"x": 1}}
    )
    assert parse_request(raw.encode()) == ("a:1", {"x": 1})


def test_parse_request_passes_unusable_features_on_for_an_error_score() -> None:
    assert parse_request(b'{"request_id": "r", "features": "oops"}') == ("r", "oops")
    assert parse_request(b'{"request_id": "r", "features": null}') == ("r", None)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"just a string"',
        b'{"features": {}}',
        b'{"request_id": 5, "features": {}}',
        b'{"request_id": "", "features": {}}',
        b'{"request_id": "has space", "features": {}}',
        b'{"request_id": "r\\n", "features": {}}',
        json.dumps({"request_id": "r" * 129, "features": {}}).encode(),
        b'{"request_id": "r"}',
    ],
)
def test_parse_request_rejects_non_requests(raw: bytes | None) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(raw)


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_ms": -1},
        {"jitter_ms": -0.1},
        {"fail_rate": 1.5},
        {"drop_rate": -0.1},
        {"fail_rate": 0.6, "drop_rate": 0.5},
        {"hang_after": -1},
        {"degrade_after": -1},
    ],
)
def test_faults_reject_impossible_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)


def test_fail_and_drop_shares_match_the_rates() -> None:
    faults = Faults(fail_rate=0.2, drop_rate=0.1, seed=3)
    fates = [decide(r, faults)[0] for r in _ids(20000)]
    assert fates.count(Fate.FAIL) / len(fates) == pytest.approx(0.2, abs=0.015)
    assert fates.count(Fate.DROP) / len(fates) == pytest.approx(0.1, abs=0.015)
    assert fates.count(Fate.OK) / len(fates) == pytest.approx(0.7, abs=0.015)


def test_fates_are_reproducible_by_seed_and_differ_across_seeds() -> None:
    ids = _ids(2000)

    def failed(seed: int) -> set[str]:
        return {r for r in ids if decide(r, Faults(fail_rate=0.3, seed=seed))[0] is Fate.FAIL}

    assert failed(1) == failed(1)
    assert failed(1) != failed(2)


def test_no_faults_means_every_request_is_ok_and_immediate() -> None:
    assert {decide(r, Faults()) for r in _ids(500)} == {(Fate.OK, 0.0)}
    assert {decide(r, Faults(fail_rate=1.0))[0] for r in _ids(50)} == {Fate.FAIL}
    assert {decide(r, Faults(drop_rate=1.0))[0] for r in _ids(50)} == {Fate.DROP}


def test_jitter_is_bounded_spread_and_deterministic() -> None:
    faults = Faults(latency_ms=5, jitter_ms=10, seed=9)
    delays = [decide(r, faults)[1] for r in _ids(2000)]
    assert all(5 <= d < 15 for d in delays)
    assert min(delays) < 6 and max(delays) > 14
    assert delays == [decide(r, faults)[1] for r in _ids(2000)]


# --- Scheduler ----------------------------------------------------------------------------------


def _admit(s: Scheduler, clock: FakeClock, ids: list[str], x: float = 0.7, model_ms: float = 0.0) -> None:
    def score(rows: list[Any]) -> list[Scored]:
        clock.t += model_ms  # the model takes this long
        return _ok_scorer(rows)

    s.admit([(r, {"x": x}) for r in ids], clock(), score, clock)


def test_scores_wait_for_their_latency_and_are_released_in_due_order() -> None:
    clock = FakeClock()
    s = Scheduler("m", "m-v1", Faults(latency_ms=5, jitter_ms=20, seed=1))
    start = clock()
    ids = _ids(200)
    _admit(s, clock, ids, model_ms=2.0)
    due = {r: start + 2.0 + decide(r, s.faults)[1] for r in ids}
    assert s.release(start + 6.9) == []  # nothing is due before model time + latency
    released: list[tuple[str, dict[str, Any]]] = []
    for step in range(0, 40):
        now = start + 7 + step
        batch = s.release(now)
        assert all(due[r] <= now for r, _ in batch)
        released.extend(batch)
    assert [r for r, _ in released] == sorted(ids, key=lambda r: (due[r], ids.index(r)))
    assert s.pending() == 0 and s.next_due_ms() is None


def test_released_scores_match_the_wire_format_and_measure_latency() -> None:
    clock = FakeClock()
    s = Scheduler("gbt", "gbt-abc", Faults(latency_ms=5))
    received = clock()
    _admit(s, clock, ["r1"], x=0.25, model_ms=1.5)
    assert s.next_due_ms() == received + 6.5
    ((rid, record),) = s.release(received + 8.0)
    assert rid == "r1"
    VALIDATOR.validate(record)
    assert record == {
        "request_id": "r1",
        "model_id": "gbt",
        "model_version": "gbt-abc",
        "status": "ok",
        "output": {"label": 0, "probability": 0.25},
        "scored_at_ms": int(received + 8.0),
        "latency_ms": 8.0,
    }


def test_injected_failures_and_bad_features_give_error_scores() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults(fail_rate=0.5, seed=4))
    ids = _ids(100)
    scored_rows: list[Any] = []

    def score(rows: list[Any]) -> list[Scored]:
        scored_rows.extend(rows)
        return _ok_scorer(rows)

    s.admit([(r, {"x": 0.9} if i % 2 else {"y": 1}) for i, r in enumerate(ids)], clock(), score, clock)
    out = dict(s.release(clock()))
    injected = {r for r in ids if decide(r, s.faults)[0] is Fate.FAIL}
    assert set(out) == set(ids)
    assert len(scored_rows) == 100 - len(injected)  # injected failures never reach the model
    for i, r in enumerate(ids):
        VALIDATOR.validate(out[r])
        if r in injected:
            assert out[r]["status"] == "error" and out[r]["error"] == INJECTED_FAILURE
        elif i % 2 == 0:
            assert out[r]["status"] == "error" and out[r]["error"].startswith("bad features: missing")
        else:
            assert out[r]["status"] == "ok"
    assert s.counts["fail"] == len(injected)


def test_dropped_requests_get_no_score_and_are_not_scored() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults(drop_rate=0.3, seed=5))
    ids = _ids(1000)
    _admit(s, clock, ids)
    sent = {r for r, _ in s.release(clock())}
    dropped = {r for r in ids if decide(r, s.faults)[0] is Fate.DROP}
    assert sent == set(ids) - dropped
    assert 0.25 < len(dropped) / len(ids) < 0.35
    assert s.counts["drop"] == len(dropped)


def test_hang_after_answers_only_the_first_n_requests_across_batches() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults(hang_after=5))
    _admit(s, clock, _ids(3, "a"))
    _admit(s, clock, _ids(4, "b"))
    _admit(s, clock, _ids(2, "c"))
    sent = [r for r, _ in s.release(clock())]
    assert sent == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    assert s.counts["hang"] == 4


def test_degrade_after_answers_with_seeded_noise_after_n_requests() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults(degrade_after=3, seed=7))
    rows = [(f"r-{i}", {"x": 0.9}) for i in range(400)]
    s.admit(rows[:2], clock(), _ok_scorer, clock)
    s.admit(rows[2:], clock(), _ok_scorer, clock)  # the count runs across batches
    out = [r for _, r in s.release(clock())]
    assert all(VALIDATOR.is_valid(r) for r in out)
    assert [r["output"] for r in out[:3]] == [{"label": 1, "probability": 0.9}] * 3
    noisy = [r["output"]["probability"] for r in out[3:]]
    assert s.counts["degraded"] == len(noisy) == 397
    assert 0.4 < sum(p >= 0.5 for p in noisy) / len(noisy) < 0.6  # noise: about half say 1
    assert all(r["output"]["label"] == int(r["output"]["probability"] >= 0.5) for r in out[3:])
    # The same seed gives the same noise for the same request; another seed, different noise.
    again = Scheduler("m", "v", Faults(degrade_after=3, seed=7))
    again.admit(rows, clock(), _ok_scorer, clock)
    assert [r["output"] for _, r in again.release(clock())] == [r["output"] for r in out]
    other = Scheduler("m", "v", Faults(degrade_after=3, seed=8))
    other.admit(rows, clock(), _ok_scorer, clock)
    assert [r["output"] for _, r in other.release(clock())][3:] != [r["output"] for r in out[3:]]


def test_degrade_leaves_errors_and_outputs_without_probability_alone() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults(degrade_after=0, fail_rate=0.5, seed=1))
    rows = [(f"r-{i}", {"x": 0.2}) for i in range(50)] + [("bad", {"y": 1})]
    s.admit(rows, clock(), _ok_scorer, clock)
    out = dict(s.release(clock()))
    assert out["bad"]["status"] == "error"
    errors = [r for r in out.values() if r["status"] == "error" and r["request_id"] != "bad"]
    assert errors and all(r["error"] == INJECTED_FAILURE for r in errors)
    assert s.counts["degraded"] == len(out) - len(errors) - 1
    assert degraded({"label": "cat"}, "r", 1) == {"label": "cat"}


def test_a_crashing_model_costs_error_scores_not_the_runner() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults())

    def broken(rows: list[Any]) -> list[Scored]:
        raise RuntimeError("boom")

    s.admit([("r1", {}), ("r2", {})], clock(), broken, clock)
    out = s.release(clock())
    assert [r["status"] for _, r in out] == ["error", "error"]
    assert all(r["error"] == "model error: RuntimeError: boom" for _, r in out)
    assert s.counts["model_errors"] == 1


def test_long_errors_are_cut_to_the_schema_limit() -> None:
    clock = FakeClock()
    s = Scheduler("m", "v", Faults())
    s.admit([("r", {})], clock(), lambda rows: [ValueError("x" * 5000)], clock)
    ((_, record),) = s.release(clock())
    assert len(record["error"]) == 1024
    VALIDATOR.validate(record)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    fail=st.floats(0, 0.5),
    drop=st.floats(0, 0.5),
    hang=st.none() | st.integers(0, 80),
    seed=st.integers(0, 2**31),
    latency=st.floats(0, 50),
    jitter=st.floats(0, 50),
)
def test_each_request_gets_at_most_one_score_exactly_when_not_dropped_or_hung(
    n: int, fail: float, drop: float, hang: int | None, seed: int, latency: float, jitter: float
) -> None:
    faults = Faults(latency, jitter, fail, drop, hang, seed)
    clock = FakeClock()
    s = Scheduler("m", "v", faults)
    ids = _ids(n)
    _admit(s, clock, ids)
    out = s.release(clock() + 101)
    sent = [r for r, _ in out]
    assert len(sent) == len(set(sent))
    expected = {
        r for i, r in enumerate(ids) if (hang is None or i < hang) and decide(r, faults)[0] is not Fate.DROP
    }
    assert set(sent) == expected
    for _, record in out:
        VALIDATOR.validate(record)


def test_poll_timeout_waits_for_the_next_due_score_but_never_long() -> None:
    assert poll_timeout_ms(None, 100.0) == 50
    assert poll_timeout_ms(103.2, 100.0) == 4
    assert poll_timeout_ms(99.0, 100.0) == 0
    assert poll_timeout_ms(10_000.0, 100.0, idle_ms=20) == 20


# --- run() with fake Kafka clients ----------------------------------------------------------------


@dataclass
class FakeRecord:
    """A confluent-kafka Message as run() reads it: a record (no error) with a value."""

    _value: bytes | None

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


@dataclass
class FakeConsumer:
    """Serves scripted batches; each consume advances the fake clock by its timeout (an idle wait).

    ``timeouts`` are in ms (consume() takes seconds)."""

    clock: FakeClock
    batches: list[list[bytes | None]]
    stop: threading.Event
    timeouts: list[int] = field(default_factory=list)
    assigned_after: int = 1
    batch_ms: float = 0.0  # fake time a poll that returns records takes
    polls: int = 0
    closed: bool = False

    def consume(self, num_messages: int, timeout: float) -> list[FakeRecord]:
        if timeout == 0:  # kafka_client.consume_ready's look at what is queued: records come to waits
            return []
        self.polls += 1
        timeout_ms = round(timeout * 1000)
        self.timeouts.append(timeout_ms)
        if self.batches:
            self.clock.t += self.batch_ms
            return [FakeRecord(v) for v in self.batches.pop(0)]
        self.clock.t += timeout_ms
        return []

    def assignment(self) -> list[str]:
        return ["tp"] if self.polls >= self.assigned_after else []

    def subscription(self) -> list[str]:
        return ["requests-t"]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeProducer:
    """produce/poll/flush as confluent-kafka's; ``fail`` keys get a failed delivery report at poll()."""

    clock: FakeClock
    sent: list[tuple[str, bytes, dict[str, Any], float]] = field(default_factory=list)
    flushed: bool = False
    fail: set[bytes] = field(default_factory=set)
    polls: int = 0
    _reports: list[tuple[Any, bytes]] = field(default_factory=list)

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        self.sent.append((topic, key, json.loads(value), self.clock()))
        self._reports.append((on_delivery, key))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        reports, self._reports = self._reports, []
        for callback, key in reports:
            if callback is not None:
                callback("Broker: Message timed out" if key in self.fail else None, None)
        return len(reports)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        self.flushed = True
        return 0


class TinyEstimator:
    def predict_proba(self, x: Any) -> Any:
        import numpy as np

        p = np.clip(np.asarray(x)[:, 0], 0, 1)
        return np.column_stack([1 - p, p])


def _request(rid: str, x: Any = 0.8) -> bytes:
    return json.dumps(
        {"request_id": rid, "return_address": "results", "sent_at_ms": 1, "features": {"x": x}}
    ).encode()


def _run(
    batches: list[list[bytes | None]], faults: Faults, max_seconds: float = 1.0, **kw: Any
) -> tuple[FakeConsumer, FakeProducer, str, str, Any]:
    clock = FakeClock()
    stop = threading.Event()
    consumer = FakeConsumer(clock, batches, stop, **kw)
    producer = FakeProducer(clock)
    out, err = io.StringIO(), io.StringIO()
    model = ScoringModel("tiny", "tiny-v1", ("x",), TinyEstimator())
    counts = run(
        model,
        consumer,
        producer,
        scores_topic="scores-t",
        faults=faults,
        stop=stop,
        max_seconds=max_seconds,
        clock=clock,
        out=out,
        err=err,
    )
    return consumer, producer, out.getvalue(), err.getvalue(), counts


def test_run_scores_requests_skips_malformed_and_reports_ready_once() -> None:
    batches: list[list[bytes | None]] = [
        [_request("r1"), b"garbage", None, _request("r2", x="high")],
        [_request("r3", x=0.1), b'{"request_id": "r4"}'],
    ]
    consumer, producer, out, err, counts = _run(batches, Faults(), assigned_after=2)
    assert out == "runner tiny ready\n"
    assert [(t, k) for t, k, _, _ in producer.sent] == [
        ("scores-t", b"r1"),
        ("scores-t", b"r2"),
        ("scores-t", b"r3"),
    ]
    by_id = {v["request_id"]: v for _, _, v, _ in producer.sent}
    assert by_id["r1"]["output"] == {"label": 1, "probability": 0.8}
    assert by_id["r2"]["status"] == "error" and "x=" in by_id["r2"]["error"]
    assert by_id["r3"]["output"]["label"] == 0
    for v in by_id.values():
        VALIDATOR.validate(v)
    assert counts["malformed"] == 3 and counts["consumed"] == 6 and counts["sent"] == 3
    assert producer.flushed
    assert "runner tiny final:" in err and "malformed=3" in err


def test_run_counts_and_shows_scores_that_were_not_delivered() -> None:
    """librdkafka reports a failed delivery in a callback served by poll(): it is counted, not lost."""
    clock = FakeClock()
    stop = threading.Event()
    consumer = FakeConsumer(clock, [[_request("r1"), _request("r2"), _request("r3")]], stop)
    producer = FakeProducer(clock, fail={b"r2"})
    err = io.StringIO()
    model = ScoringModel("tiny", "tiny-v1", ("x",), TinyEstimator())
    counts = run(model, consumer, producer, scores_topic="s", faults=Faults(), stop=stop, max_seconds=1,
                 clock=clock, out=io.StringIO(), err=err)  # fmt: skip
    assert counts["sent"] == 3 and counts["send_errors"] == 1
    assert "runner tiny: a score was not delivered: Broker: Message timed out" in err.getvalue()
    assert "send_errors=1" in err.getvalue().splitlines()[-1]
    assert producer.polls >= consumer.polls  # every turn of the loop serves the delivery callbacks


def test_run_says_it_is_still_waiting_for_partitions() -> None:
    """A runner that gets no assignment says so on stderr every 10 s, so a stalled start is visible."""
    # Idle polls advance the fake clock 50 ms each: 500 polls are 25 s without an assignment.
    consumer, _, out, err, _ = _run([], Faults(), max_seconds=30, assigned_after=500)
    notes = [line for line in err.splitlines() if "no partitions assigned yet" in line]
    assert [n.split(" after ")[1] for n in notes] == [
        "10 s (subscribed to ['requests-t'])",
        "20 s (subscribed to ['requests-t'])",
    ]
    assert out == "runner tiny ready\n"


def test_run_replaces_a_consumer_that_never_gets_partitions() -> None:
    """A consumer whose group join went wrong (kafka-python lost its coordinator for good) is not
    waited on forever: after 30 s without partitions a new consumer takes over."""
    clock = FakeClock()
    stop = threading.Event()
    stuck = FakeConsumer(clock, [], stop, assigned_after=10**9)
    fresh = FakeConsumer(clock, [[_request("r1")]], stop, assigned_after=1)
    producer = FakeProducer(clock)
    out, err = io.StringIO(), io.StringIO()
    model = ScoringModel("tiny", "tiny-v1", ("x",), TinyEstimator())
    counts = run(model, stuck, producer, scores_topic="s", faults=Faults(), stop=stop, max_seconds=40,
                 clock=clock, out=out, err=err, reconnect=lambda: fresh)  # fmt: skip
    assert stuck.closed and fresh.closed  # the replacement is closed by run(), the original too
    assert counts["consumer_replaced"] == 1
    assert "no partitions after 30 s; replacing the consumer" in err.getvalue()
    assert out.getvalue() == "runner tiny ready\n"
    assert [k for _, k, _, _ in producer.sent] == [b"r1"]


def test_run_delays_scores_without_blocking_the_loop() -> None:
    """With 5 ms latency the loop keeps polling (short timeouts) and sends each score when due."""
    batches: list[list[bytes | None]] = [[_request(f"r{i}") for i in range(50)], [_request("late")]]
    consumer, producer, _, _, counts = _run(batches, Faults(latency_ms=5))
    assert counts["sent"] == 51
    assert all(v["latency_ms"] >= 5 for _, _, v, _ in producer.sent)
    assert all(v["latency_ms"] < 5 + 1 for _, _, v, _ in producer.sent)  # sent as soon as due, not later
    # Idle, the loop polls with the idle timeout; with scores pending, only until the next one is due.
    assert consumer.timeouts[0] == 50
    assert consumer.timeouts[1] == 5  # the next batch is read while the first batch's scores wait
    assert consumer.timeouts[2] == 5 and consumer.timeouts[3] == 50  # all sent at t0+5: idle again


def test_run_returns_promptly_once_stop_is_set_and_flushes() -> None:
    clock = FakeClock()
    stop = threading.Event()

    class StoppingConsumer(FakeConsumer):
        def consume(self, num_messages: int, timeout: float) -> list[FakeRecord]:
            batch = super().consume(num_messages, timeout)
            if self.polls == 2:
                stop.set()  # as the SIGTERM handler would
            return batch

    more: list[list[bytes | None]] = [[_request(f"later{i}")] for i in range(5)]
    consumer = StoppingConsumer(clock, [[_request("a")], [_request("b")], *more], stop)
    producer = FakeProducer(clock)
    model = ScoringModel("tiny", "v", ("x",), TinyEstimator())
    counts = run(
        model,
        consumer,
        producer,
        scores_topic="s",
        faults=Faults(),
        stop=stop,
        clock=clock,
        out=io.StringIO(),
        err=io.StringIO(),
    )
    assert consumer.polls == 2
    assert [k for _, k, _, _ in producer.sent] == [b"a", b"b"]  # what was taken is answered, nothing more
    assert counts["discarded_at_stop"] == 0 and producer.flushed


def test_run_discards_scores_still_waiting_at_stop() -> None:
    consumer, producer, _, err, counts = _run([[_request("r1")]], Faults(latency_ms=10_000), max_seconds=0.5)
    assert producer.sent == []
    assert counts["discarded_at_stop"] == 1
    assert "discarded_at_stop=1" in err


def test_run_prints_stats_every_five_seconds_while_busy_and_a_heartbeat_when_idle() -> None:
    _, _, _, err, _ = _run([[_request("r1")]], Faults(), max_seconds=130.0)
    stats = [line for line in err.splitlines() if " stats:" in line]
    assert len(stats) == 3  # ~5 s (after the request), then idle heartbeats at ~65 s and ~125 s
    assert "sent=1" in stats[0] and "pending=0" in stats[0]
    # 400 polls x 50 ms: busy for 20 s, then idle.
    busy: list[list[bytes | None]] = [[_request(f"r{i}")] for i in range(400)]
    _, _, _, err, _ = _run(busy, Faults(latency_ms=100), max_seconds=30.0, batch_ms=50)
    stats = [line for line in err.splitlines() if " stats:" in line]
    # At 5, 10, 15, 20 s, at 25 s for the last scores sent after 20 s, then nothing while idle.
    assert len(stats) == 5
    assert all("rate=20/s" in line for line in stats[1:4])
    assert "sent=400" in stats[4] and "pending=0" in stats[4]


def test_cli_rejects_impossible_fault_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from runners.runner import main

    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", "x", "--bootstrap", "b:1", "--fail-rate", "0.7", "--drop-rate", "0.7"])
    assert exc.value.code == 2
    assert "fail_rate + drop_rate" in capsys.readouterr().err


def test_every_runner_spec_flag_is_one_the_runner_accepts() -> None:
    """harness.stack.RunnerSpec builds the runner's command line: the runner must parse it to the same faults."""
    from pathlib import Path

    from harness.stack import RunnerSpec
    from runners.runner import _parse_args

    spec = RunnerSpec(
        "gbt", latency_ms=2, jitter_ms=1, fail_rate=0.1, drop_rate=0.2, seed=5, degrade_after=7, hang_after=9
    )
    argv = spec.argv(Path("/models"), "127.0.0.1:1", "req", "sc")
    assert argv[1:3] == ["-m", "runners.runner"]
    args, faults = _parse_args(argv[3:])
    assert (args.model_dir, args.requests_topic, args.scores_topic) == (Path("/models/gbt"), "req", "sc")
    assert faults == Faults(
        latency_ms=2, jitter_ms=1, fail_rate=0.1, drop_rate=0.2, seed=5, degrade_after=7, hang_after=9
    )
    _, plain = _parse_args(RunnerSpec("tree").argv(Path("/m"), "b", "r", "s")[3:])
    assert plain.degrade_after is None and plain.hang_after is None
    assert _parse_args(RunnerSpec("tree").argv(Path("/m"), "b", "r", "s")[3:])[0].model_ids == ()
    assert _parse_args(RunnerSpec("tree").argv(Path("/m"), "b", "r", "s")[3:])[0].instance_id is None
    static = RunnerSpec("tree", instance_id="tree-0").argv(Path("/m"), "b", "r", "s")
    assert _parse_args(static[3:])[0].instance_id == "tree-0"


@pytest.mark.parametrize("bad", ["", "has space", "a/b", ".", "..", "x" * 250])
def test_an_instance_id_kafka_would_refuse_fails_at_start_with_one_line(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from runners.runner import _parse_args

    with pytest.raises(SystemExit) as exc:
        _parse_args(["--model-dir", "x", "--bootstrap", "b:1", "--instance-id", bad])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's usage, then the one line
    assert last.startswith("python -m runners.runner: error: argument --instance-id:")
    assert "group.instance.id" in last


# --- --model-ids: one process, many models -----------------------------------------------------------


def test_a_scheduler_serving_several_ids_sends_each_score_once_per_id() -> None:
    clock = FakeClock()
    s = Scheduler("logreg", "lr-1", Faults(fail_rate=0.5, seed=4), model_ids=("a", "b", "c"))
    ids = _ids(10)
    _admit(s, clock, ids)
    released = s.release(clock())
    assert [(r, v["model_id"]) for r, v in released] == [(r, m) for r in ids for m in ("a", "b", "c")]
    for r in ids:  # the same fate and output under every id: one scoring, copied
        mine = [{k: v for k, v in rec.items() if k != "model_id"} for rid, rec in released if rid == r]
        assert mine[0] == mine[1] == mine[2]
    for _, record in released:
        VALIDATOR.validate(record)
    errors = sum(1 for _, v in released if v["status"] == "error")
    assert 0 < errors < 30 and s.counts["error"] + s.counts["ok_sent"] == 30


def test_run_with_model_ids_writes_one_score_per_id_and_request() -> None:
    clock = FakeClock()
    stop = threading.Event()
    consumer = FakeConsumer(clock, [[_request("r1"), _request("r2")]], stop)
    producer = FakeProducer(clock)
    model = ScoringModel("tiny", "tiny-v1", ("x",), TinyEstimator())
    counts = run(model, consumer, producer, scores_topic="s", faults=Faults(), stop=stop, max_seconds=1,
                 clock=clock, out=io.StringIO(), err=io.StringIO(), model_ids=("m1", "m2"))  # fmt: skip
    assert [(k, v["model_id"]) for _, k, v, _ in producer.sent] == [
        (b"r1", "m1"), (b"r1", "m2"), (b"r2", "m1"), (b"r2", "m2")
    ]  # fmt: skip
    assert counts["consumed"] == 2 and counts["sent"] == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [("a,,b", None), ("a,bad id", "'bad id'"), ("a,b,a", "listed twice"), (",", "got ','"), ("x" * 65, "x")],
)
def test_model_ids_are_checked_as_a_scores_model_id(
    text: str, message: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    from runners.runner import _parse_args

    if message is None:
        args, _ = _parse_args(["--model-dir", "m", "--bootstrap", "b:1", "--model-ids", text])
        assert args.model_ids == ("a", "b")
        return
    with pytest.raises(SystemExit):
        _parse_args(["--model-dir", "m", "--bootstrap", "b:1", "--model-ids", text])
    last = capsys.readouterr().err.splitlines()[-1]
    assert "--model-ids" in last and message in last


# --- --also: several models, one process ------------------------------------------------------------


def test_run_with_also_reads_each_request_once_and_scores_it_with_every_model() -> None:
    """Two models in one loop, each with its own latency: one consumer, each request scored by both,
    each score released at its own model's due time, and the counters summed."""
    from runners.runner import Served

    clock = FakeClock()
    stop = threading.Event()
    consumer = FakeConsumer(clock, [[_request("r1"), _request("r2")]], stop)
    producer = FakeProducer(clock)
    fast = ScoringModel("fast", "fast-v1", ("x",), TinyEstimator())
    slow = ScoringModel("slow", "slow-v1", ("x",), TinyEstimator())
    counts = run(fast, consumer, producer, scores_topic="s", faults=Faults(latency_ms=1), stop=stop,
                 max_seconds=1, clock=clock, out=io.StringIO(), err=io.StringIO(),
                 also=[Served(slow, Faults(latency_ms=30, fail_rate=1.0))])  # fmt: skip
    sent = [(k, v["model_id"], v["status"], v["latency_ms"]) for _, k, v, _ in producer.sent]
    assert sorted(sent) == sorted(
        [(b"r1", "fast", "ok", sent[0][3]), (b"r2", "fast", "ok", sent[1][3])]
        + [(b"r1", "slow", "error", sent[2][3]), (b"r2", "slow", "error", sent[3][3])]
    )
    assert [m for _, m, _, _ in sent] == ["fast", "fast", "slow", "slow"]  # each at its own due time
    assert all(lat >= 30 for _, m, _, lat in sent if m == "slow")
    assert all(lat < 30 for _, m, _, lat in sent if m == "fast")
    for _, _, record, _ in producer.sent:
        VALIDATOR.validate(record)
    assert counts["consumed"] == 2 and counts["sent"] == 4
    assert counts["ok_sent"] == 2 and counts["fail"] == 2  # the slow model's counters summed in


def test_also_values_parse_to_a_model_dir_and_its_faults() -> None:
    from pathlib import Path

    from runners.runner import parse_also

    assert parse_also("m/tree,latency_ms=40,jitter_ms=40,seed=3") == (
        Path("m/tree"),
        Faults(latency_ms=40, jitter_ms=40, seed=3),
    )
    assert parse_also("m/base") == (Path("m/base"), Faults())
    for bad, message in (
        ("", "starts with the model directory"),
        ("m,latency=3", "'latency=3' is not key=value"),
        ("m,seed=x", "seed must be a number"),
        ("m,fail_rate=0.7,drop_rate=0.7", "fail_rate + drop_rate"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_also(bad)


def test_a_runner_spec_with_also_is_one_process_the_runner_accepts() -> None:
    from pathlib import Path

    from harness.stack import RunnerSpec
    from runners.runner import _parse_args

    pod = RunnerSpec("gbt", latency_ms=2, seed=1, also=(RunnerSpec("tree", latency_ms=40, jitter_ms=40,
                     seed=3, degrade_after=5), RunnerSpec("base", seed=4)))  # fmt: skip
    assert pod.name == "gbt+tree+base"
    args, faults = _parse_args(pod.argv(Path("/m"), "b:1", "r", "s")[3:])
    assert faults == Faults(latency_ms=2, seed=1)
    assert args.also == [
        (Path("/m/tree"), Faults(latency_ms=40, jitter_ms=40, seed=3, degrade_after=5)),
        (Path("/m/base"), Faults(seed=4)),
    ]


class CountingEstimator(TinyEstimator):
    """TinyEstimator that counts the rows it scores."""

    def __init__(self) -> None:
        self.rows = 0

    def predict_proba(self, x: Any) -> Any:
        self.rows += len(x)
        return super().predict_proba(x)


def test_settling_in_warms_every_model_and_freezes_what_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    estimators = [CountingEstimator(), CountingEstimator()]
    models = [ScoringModel(f"m{i}", "v1", ("x",), e) for i, e in enumerate(estimators)]
    limits: list[Any] = []  # recorded, not applied: the limit would outlive the test in pytest's process
    monkeypatch.setattr(runner_mod, "threadpool_limits", lambda **kw: limits.append(kw))
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        settle_in(models)
        assert limits == [{"limits": 1}]
        assert [e.rows for e in estimators] == [1, 1]  # one dummy row each, before the first request
        assert gc.get_freeze_count() > 0  # out of full collections, with what was loaded before it
    finally:
        gc.unfreeze()

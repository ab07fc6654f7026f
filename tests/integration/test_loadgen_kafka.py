"""The load generator against a real broker, with a tiny echo thread standing in for the rendezvous job."""

from __future__ import annotations

import gc
import heapq
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from jsonschema import Draft202012Validator

from harness.loadgen import run_load
from ops import kafka_admin, kafka_client

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
REQUEST_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "request.schema.json").read_text()))


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's real broker (tests/conftest.py), or RDV_TEST_BOOTSTRAP's."""
    return kafka_bootstrap


def unique(prefix: str) -> str:
    """Topic names no other test (or earlier run) uses, so the shared broker needs no cleanup."""
    return f"test.{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(bootstrap: str, topic: str) -> None:
    kafka_admin.create_topics(bootstrap, [topic])


def count_records(bootstrap: str, topic: str) -> int:
    """Records in a topic (all partitions), from the watermarks: what really reached the broker."""
    consumer = kafka_client.consumer(bootstrap, client_id="test-loadgen")
    try:
        total = 0
        for p in kafka_client.partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            total += high - low
        return total
    finally:
        consumer.close()


def echo_result(req: dict[str, Any], model: str = "echo", reason: str = "preferred") -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "request_id": req["request_id"],
        "model_id": model,
        "model_version": "1",
        "output": {"label": 0, "probability": 0.25},
        "reason": reason,
        "trigger": "score",
        "policy_version": 1,
        "sent_at_ms": req["sent_at_ms"],
        "received_at_ms": now,
        "decided_at_ms": now,
        "latency_ms": 0,
        "answered": [model],
        "failed": [],
    }


class EchoRendezvous:
    """Answers every schema-valid request on its return address; misbehaves on request by sequence number.

    `<run>-<seq>`: seq % duplicate_every == 0 gets the same answer twice, seq % conflict_every == 0 a second,
    different answer, seq % skip_every == 0 none, seq % delay_every == 0 its answer delay_ms late.
    """

    def __init__(
        self,
        bootstrap: str,
        requests_topic: str,
        *,
        duplicate_every: int = 0,
        conflict_every: int = 0,
        skip_every: int = 0,
        delay_every: int = 0,
        delay_ms: int = 0,
    ) -> None:
        self.rules = (duplicate_every, conflict_every, skip_every, delay_every)
        self.delay_ms = delay_ms
        self.valid = self.invalid = self.results_sent = 0
        create_topic(bootstrap, requests_topic)
        self._consumer = kafka_client.consumer(bootstrap, client_id="test-echo")
        self._consumer.assign_all([requests_topic])
        self._producer = kafka_client.producer(bootstrap, client_id="test-echo", linger_ms=0)
        self._stop = threading.Event()
        self._pending: list[tuple[float, int, str, bytes, bytes]] = []  # (due, tiebreak, topic, key, value)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="echo-rendezvous", daemon=True)

    def __enter__(self) -> EchoRendezvous:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._producer.finish(timeout_s=10)
        self._consumer.close()

    def _hit(self, seq: int, every: int) -> bool:
        return every > 0 and seq % every == 0

    def _emit(self, req: dict[str, Any], result: dict[str, Any], delay_ms: float = 0.0) -> None:
        due = time.monotonic() + delay_ms / 1000.0
        value = json.dumps(result).encode()
        item = (due, self.results_sent, req["return_address"], req["request_id"].encode(), value)
        heapq.heappush(self._pending, item)
        self.results_sent += 1

    def _handle(self, raw: bytes | None) -> None:
        try:
            req = json.loads((raw or b"").decode("utf-8"))
        except ValueError:  # includes UnicodeDecodeError
            self.invalid += 1
            return
        if not REQUEST_SCHEMA.is_valid(req):
            self.invalid += 1
            return
        self.valid += 1
        duplicate_every, conflict_every, skip_every, delay_every = self.rules
        seq = int(req["request_id"].rsplit("-", 1)[1])
        if self._hit(seq, skip_every):
            return
        delay = self.delay_ms if self._hit(seq, delay_every) else 0.0
        self._emit(req, echo_result(req), delay)
        if self._hit(seq, duplicate_every):
            self._emit(req, echo_result(req), delay)
        if self._hit(seq, conflict_every):
            self._emit(req, echo_result(req, model="echo-b", reason="fallback"), delay)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for rec in self._consumer.take(1000, 0.01):
                    self._handle(rec.value())
                now = time.monotonic()
                while self._pending and self._pending[0][0] <= now:
                    _, _, topic, key, value = heapq.heappop(self._pending)
                    self._producer.send(topic, value, key)
                self._producer.poll(0)
        except BaseException as e:
            self.error = e


def test_every_request_answered_once_and_the_numbers_add_up(bootstrap: str) -> None:
    requests_topic, scores_topic = unique("lg-requests"), unique("lg-scores")
    create_topic(bootstrap, scores_topic)
    calls: list[tuple[int, int, float]] = []
    kept: dict[str, Any] = {}
    with EchoRendezvous(bootstrap, requests_topic) as echo:
        report = run_load(
            bootstrap,
            count=200,
            rate=200,
            keep=lambda sent, received: kept.update(sent=sent, received=received),
            requests_topic=requests_topic,
            scores_topic=scores_topic,
            deadline_ms=10_000,
            bad_records=12,
            progress=lambda s, a, t: calls.append((s, a, t)),
            settle_ms=5000,
            features_fn=lambda rng: {"amount": float(rng.lognormal()), "hour": int(rng.integers(24))},
            seed=7,
        )
    assert echo.error is None
    assert (report.sent, report.answered, report.unanswered) == (200, 200, 0)
    assert (report.duplicates, report.conflicting, report.foreign, report.malformed_results) == (0, 0, 0, 0)
    assert report.invalid_results == 0
    assert report.results_received == 200 == echo.results_sent
    assert report.wins_by_model == {"echo": 200} and report.by_reason == {"preferred": 200}
    lat = report.latency_ms
    assert lat.count == 200 and lat.p50 is not None and lat.max is not None and 0 < lat.p50 <= lat.max
    assert report.deadline_checked == 200
    assert report.send_errors == 0
    assert report.achieved_rate is not None and 150 < report.achieved_rate < 250
    assert report.return_address == f"results.load-{report.run_id}"
    # The malformed records really went out, to the right topics, and the echo saw the request ones.
    assert report.bad_sent == {requests_topic: 8, scores_topic: 4}
    assert echo.valid == 200 and echo.invalid == 8
    assert count_records(bootstrap, requests_topic) == 208
    assert count_records(bootstrap, scores_topic) == 4
    assert count_records(bootstrap, report.return_address) == 200
    # Progress ends with the final numbers.
    assert calls and calls[-1][:2] == (200, 200)
    # The garbage collector, off while the run measured, is on again.
    assert gc.isenabled()
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    # `keep` saw every request as sent and every result as received, the report's own.
    assert len(kept["sent"]) == 200 and len(kept["received"]) == 200
    assert {r.request_id for r in kept["received"]} == {s.request_id for s in kept["sent"]}


def test_duplicates_and_conflicts_are_told_apart(bootstrap: str) -> None:
    requests_topic = unique("lg-requests")
    with EchoRendezvous(bootstrap, requests_topic, duplicate_every=10, conflict_every=25) as echo:
        report = run_load(
            bootstrap,
            count=100,
            rate=200,
            requests_topic=requests_topic,
            grace_ms=1500,
            features_fn=lambda rng: {"x": 1},
        )
    assert echo.error is None
    # Duplicated: seq 0, 10, ..., 90 (identical repeat) plus 25 and 75 (conflict only); 0 and 50 get both.
    assert (report.answered, report.duplicates, report.conflicting) == (100, 12, 4)
    assert report.results_received == 100 + 10 + 4
    assert report.wins_by_model == {"echo": 100}  # the first answer counts


def test_missing_and_late_answers(bootstrap: str) -> None:
    requests_topic = unique("lg-requests")
    with EchoRendezvous(bootstrap, requests_topic, skip_every=50, delay_every=10, delay_ms=400) as echo:
        started = time.monotonic()
        report = run_load(
            bootstrap,
            count=100,
            rate=200,
            requests_topic=requests_topic,
            deadline_ms=200,
            settle_ms=1000,
            features_fn=lambda rng: {"x": 1},
        )
        took = time.monotonic() - started
    assert echo.error is None
    assert (report.answered, report.unanswered) == (98, 2)
    assert report.unanswered_sample == [f"{report.run_id}-0", f"{report.run_id}-50"]
    # 10, 20, 30, 40, 60, 70, 80, 90 answered 400 ms late against a 200 ms deadline (others may miss too
    # on a loaded machine, so at least).
    assert report.deadline_checked == 98 and report.deadline_misses >= 8
    assert report.latency_ms.max is not None and report.latency_ms.max >= 400
    # With answers missing it waits settle + deadline after the last send (0.5 s of sending), no more.
    assert 1.6 <= took < 10


def test_existing_return_address_reads_only_new_results(bootstrap: str) -> None:
    requests_topic, results_topic = unique("lg-requests"), unique("lg-results")
    run_id = "it-" + uuid.uuid4().hex[:8]
    create_topic(bootstrap, results_topic)
    stale = echo_result({"request_id": f"{run_id}-0", "sent_at_ms": 0}, model="stale")
    producer = kafka_client.producer(bootstrap, client_id="test-loadgen")
    producer.send_tracked(results_topic, json.dumps(stale).encode()).get(30)
    producer.finish()
    with EchoRendezvous(bootstrap, requests_topic) as echo:
        report = run_load(
            bootstrap,
            count=50,
            rate=200,
            requests_topic=requests_topic,
            return_address=results_topic,
            run_id=run_id,
            features_fn=lambda rng: {"x": 1},
        )
    assert echo.error is None
    assert report.return_address == results_topic
    assert (report.answered, report.duplicates, report.results_received) == (50, 0, 50)
    assert report.wins_by_model == {"echo": 50}


def test_rejects_bad_arguments_before_touching_kafka() -> None:
    with pytest.raises(ValueError):
        run_load("127.0.0.1:1", count=10, rate=0, features_fn=lambda rng: {})
    with pytest.raises(ValueError):
        run_load("127.0.0.1:1", count=10, rate=10, run_id="no spaces", features_fn=lambda rng: {})
    with pytest.raises(ValueError):
        run_load("127.0.0.1:1", count=10, rate=10, return_address="bad topic!", features_fn=lambda rng: {})


@pytest.fixture
def _no_leftover_threads() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    time.sleep(0.2)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {n for n in leftover if n.startswith("loadgen")}, leftover


@pytest.mark.usefixtures("_no_leftover_threads")
def test_cli_prints_a_summary_and_writes_json(bootstrap: str, tmp_path: Path, capsys: Any) -> None:
    from harness.loadgen import main

    requests_topic = unique("lg-requests")
    out = tmp_path / "report.json"
    with EchoRendezvous(bootstrap, requests_topic):
        code = main(
            ["--bootstrap", bootstrap, "--count", "40", "--rate", "100", "--requests-topic", requests_topic,
             "--deadline-ms", "5000", "--json", str(out), "--check"]
        )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "40/40 answered, 0 unanswered" in captured.out
    assert "sent 40/40 answered 40" in captured.err
    data = json.loads(out.read_text())
    assert data["answered"] == 40 and data["latency_ms"]["count"] == 40

"""The labeller's pure half: deterministic labels from the generator's truth, released after a delay."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
import pytest

from evaluation.labels import parse_label
from runners.data import generate, sample_many
from runners.labeller import LabelScheduler, label_for, run


def test_labels_are_deterministic_per_request_and_follow_the_truth() -> None:
    frame, truth = generate(1500, seed=11)
    rows = frame.to_dict("records")
    labels = [label_for(f"r-{i}", f, seed=3) for i, f in enumerate(rows)]
    assert labels == [label_for(f"r-{i}", f, seed=3) for i, f in enumerate(rows)]
    assert set(labels) == {0, 1}
    # The same base rate as the generator's own draws (~5%), and far more positives where it says so.
    assert abs(np.mean(labels) - truth.mean()) < 0.03
    assert [label_for(f"r-{i}", f, seed=4) for i, f in enumerate(rows)] != labels


@pytest.mark.parametrize(
    "features", [{}, None, "x", {"amount": 1.0}, {**sample_many(np.random.default_rng(0), 1)[0], "hour": "x"}]
)
def test_features_that_are_not_the_generators_get_no_label(features: Any) -> None:
    assert label_for("r", features, 0) is None


def test_scheduler_releases_after_the_delay_in_order_and_records_validate() -> None:
    s = LabelScheduler(delay_ms=2000, seed=1)
    feats = sample_many(np.random.default_rng(5), 3)
    s.admit("a", feats[0], 1000)
    s.admit("b", feats[1], 1500)
    s.admit("probe", {}, 1500)
    assert s.counts["unlabellable"] == 1 and s.next_due_ms() == 3000
    assert s.release(2999) == []
    first = s.release(3000)
    assert [r["request_id"] for r in first] == ["a"] and first[0]["labelled_at_ms"] == 3000
    assert [r["request_id"] for r in s.release(10_000)] == ["b"]
    for rec in first:
        assert not hasattr(parse_label(rec), "reason")  # a Label, not a dead letter
    with pytest.raises(ValueError):
        LabelScheduler(-1)


class _Record:
    """A confluent-kafka Message as run() reads it."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class _Consumer:
    def __init__(self, batches: list[list[bytes]], stop: threading.Event) -> None:
        self.batches, self.stop = batches, stop

    def assignment(self) -> list[int]:
        return [0]

    def consume(self, num_messages: int, timeout: float) -> list[_Record]:
        if timeout == 0:  # kafka_client.consume_ready's look at what is queued: records come to waits
            return []
        if not self.batches:
            self.stop.set()
            return []
        return [_Record(v) for v in self.batches.pop(0)]


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_run_labels_requests_skips_junk_and_sends_pending_labels_at_stop() -> None:
    stop = threading.Event()
    feats = sample_many(np.random.default_rng(2), 2)
    reqs = [json.dumps({"request_id": f"q-{i}", "features": f}).encode() for i, f in enumerate(feats)]
    consumer = _Consumer(
        [reqs, [b"not json", json.dumps({"request_id": "p", "features": {}}).encode()]], stop
    )
    producer = _Producer()
    out = io.StringIO()
    counts = run(
        consumer, producer, labels_topic="labels", scheduler=LabelScheduler(60_000), stop=stop,
        out=out, err=io.StringIO(),
    )  # fmt: skip
    assert out.getvalue() == "labeller ready\n"
    assert counts["consumed"] == 4 and counts["malformed"] == 1 and counts["unlabellable"] == 1
    assert [(t, k) for t, k, _ in producer.sent] == [("labels", b"q-0"), ("labels", b"q-1")]

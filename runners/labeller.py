"""The labeller: the truth about generated requests, published some seconds after each request.

In production a label arrives when the world says so (a chargeback, a customer complaint); here the
traffic comes from ``runners.data``, whose generator knows the true fraud probability of any features,
so the labeller reads every request from Kafka and, ``--delay-s`` later, writes
``{request_id, label, labelled_at_ms}`` (``schemas/label.schema.json``) to the labels topic. The label
is a draw from that true probability (``runners.data.truth_labels``) with a generator seeded by
(seed, request id): the same request always gets the same label, across restarts and replays.

Requests whose features are not the generator's (probes, malformed records) get no label and are
counted. Like the model runner, the pure half (``LabelScheduler``) is driven with explicit times and
the thin half (``run``/``main``) moves bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from ops import kafka_admin, kafka_client
from runners.data import FEATURES, truth_labels
from runners.runner import MalformedRequest, now_ms, parse_request
from udfs.names import GROUP_LABELLER, TOPIC_LABELS, TOPIC_REQUESTS

IDLE_POLL_MS = 100
STATS_EVERY_S = 5.0


def label_for(request_id: str, features: Any, seed: int) -> int | None:
    """0/1: a draw from the generator's true probability for these features, fixed by (seed, request id).

    None when the features are not the generator's (missing or non-numeric fields).
    """
    if not isinstance(features, Mapping):
        return None
    for f in FEATURES:
        v = features.get(f)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
    digest = hashlib.blake2b(f"{seed}\0label\0{request_id}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "big"))
    return truth_labels([features], rng)[0]


class LabelScheduler:
    """Pure: requests in (with the time they were read), label records out once they are due."""

    def __init__(self, delay_ms: float, seed: int = 0) -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.delay_ms = delay_ms
        self.seed = seed
        self.counts: Counter[str] = Counter()
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0

    def admit(self, request_id: str, features: Any, now_ms: float) -> None:
        label = label_for(request_id, features, self.seed)
        if label is None:
            self.counts["unlabellable"] += 1
            return
        self._seq += 1
        heapq.heappush(self._heap, (now_ms + self.delay_ms, self._seq, request_id, label))

    def next_due_ms(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        return len(self._heap)

    def release(self, now_ms: float, everything: bool = False) -> list[dict[str, Any]]:
        """Label records due at or before now_ms (all of them if ``everything``), in due order,
        stamped ``labelled_at_ms = now``."""
        out = []
        while self._heap and (everything or self._heap[0][0] <= now_ms):
            _, _, request_id, label = heapq.heappop(self._heap)
            out.append({"request_id": request_id, "label": label, "labelled_at_ms": int(now_ms)})
            self.counts["labelled"] += 1
            self.counts[f"label_{label}"] += 1
        return out


def run(  # noqa: C901 - the poll loop; the decisions are LabelScheduler's
    consumer: Any,
    producer: Any,
    *,
    labels_topic: str,
    scheduler: LabelScheduler,
    stop: threading.Event,
    clock: Callable[[], float] = now_ms,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> Counter[str]:
    """Poll requests, admit them, send due labels, until ``stop``; pending labels are sent at stop
    (a label early is better than none for a scenario that is ending).

    ``consumer`` and ``producer`` are confluent-kafka clients (or fakes with consume/assignment and
    produce/poll/flush); the producer is polled every turn, so failed deliveries are counted
    (``send_errors``)."""
    counts = scheduler.counts
    ready = False
    last_stats = clock()
    events = kafka_client.ClientErrors("labeller consumer", err)

    def on_delivery(error: Any, msg: Any) -> None:
        if error is not None:
            counts["send_errors"] += 1
            if counts["send_errors"] <= 5:
                print(f"labeller: a label was not delivered: {error}", file=err, flush=True)

    def send(records: list[dict[str, Any]]) -> None:
        for rec in records:
            value = json.dumps(rec, separators=(",", ":")).encode()
            producer.produce(labels_topic, value, rec["request_id"].encode(), on_delivery=on_delivery)
        producer.poll(0)

    while not stop.is_set():
        due = scheduler.next_due_ms()
        wait = IDLE_POLL_MS if due is None else max(0, min(IDLE_POLL_MS, int(due - clock())))
        batch = kafka_client.consume_ready(consumer, 1000, wait / 1000.0)
        if not ready and consumer.assignment():
            ready = True
            print("labeller ready", file=out, flush=True)
        received = clock()
        for record in kafka_client.records(batch, events):
            counts["consumed"] += 1
            try:
                rid, features = parse_request(record.value())
            except MalformedRequest:
                counts["malformed"] += 1
                continue
            scheduler.admit(rid, features, received)
        send(scheduler.release(clock()))
        if clock() - last_stats >= STATS_EVERY_S * 1000.0:
            last_stats = clock()
            print(f"labeller stats: {_stats(counts, scheduler.pending())}", file=err, flush=True)
    send(scheduler.release(clock(), everything=True))
    producer.flush(timeout=10)
    print(f"labeller final: {_stats(counts, 0)}", file=err, flush=True)
    return counts


def _stats(counts: Mapping[str, int], pending: int) -> str:
    keys = ("consumed", "malformed", "unlabellable", "labelled", "label_1", "send_errors")
    return " ".join(f"{k}={counts.get(k, 0)}" for k in keys) + f" pending={pending}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runners.labeller", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--requests-topic", default=TOPIC_REQUESTS)
    p.add_argument("--labels-topic", default=TOPIC_LABELS)
    p.add_argument("--group", default=GROUP_LABELLER, help=f"consumer group (default: {GROUP_LABELLER})")
    p.add_argument(
        "--delay-s", type=float, default=5.0, help="publish each label this long after its request"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the label draws")
    kafka_client.add_config_argument(p)
    a = p.parse_args(argv)
    if a.delay_s < 0:
        p.error("--delay-s must be >= 0")

    kafka_client.use_config_file(a.kafka_config, "labeller")
    kafka_admin.require_broker(a.bootstrap, "labeller")
    kafka_admin.create_topics(a.bootstrap, [a.labels_topic])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    bootstrap = ",".join(s.strip() for s in a.bootstrap.split(",") if s.strip())
    consumer = kafka_client.consumer(
        bootstrap, a.group, topics=[a.requests_topic], client_id="labeller", enable_auto_commit=True
    )
    producer = kafka_client.producer(bootstrap, client_id="labeller", linger_ms=5)
    try:
        run(
            consumer,
            producer,
            labels_topic=a.labels_topic,
            scheduler=LabelScheduler(a.delay_s * 1000, a.seed),
            stop=stop,
        )
    finally:
        producer.finish(timeout_s=10)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The autopilot's Kafka side (the decisions of ``evaluation.autopilot`` are pure): read, publish, audit.

- ``Tail``: one consumer of its own (assigned, no group, nothing committed) on the decisions, labels and
  canary topics from ``keep_ms`` before the start (so the first round has a full window) and on the
  policies topic from its beginning (the versions in force). Each round takes what has arrived, without
  waiting; a record that cannot be read is counted and skipped, never fatal. A labels or policies topic
  missing at the start is not read (``missing``): no labels means canary agreement only, no policies
  topic means the file's version is in force.
- ``Publisher``: the next policy as ``rendezvous policy publish`` writes it (``ops.policy_cli``: acks=all,
  keyed ``v<version>``), after checking that no higher version was published meanwhile; audit records
  (``schemas/audit.schema.json``) to the audit topic, keyed ``v<new version>``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from evaluation.autopilot import (
    AuditRecord,
    Autopilot,
    AutopilotConfig,
    RecordBuffer,
    Snapshot,
    audit_json,
    run_autopilot,
)
from ops import kafka_admin, kafka_client, policy_cli
from udfs import names
from udfs.feedback import Label, parse_label
from udfs.policy import Policy, PolicyError
from udfs.policy_registry import parse_document
from udfs.wire_in import Source

DECISION_FIELDS = ("request_id", "received_at_ms", "decided_at_ms", "result", "scores")


@dataclass(frozen=True)
class Topics:
    decisions: str = names.TOPIC_DECISIONS
    labels: str = names.TOPIC_LABELS
    canary: str = names.TOPIC_CANARY
    policies: str = names.TOPIC_POLICIES
    audit: str = names.TOPIC_AUDIT


def _record(value: bytes | None, required: Iterable[str]) -> dict[str, Any] | None:
    """A JSON object with the required fields, an integer ``decided_at_ms`` and, if it has the field, an
    integer ``received_at_ms``; else None (counted by the caller)."""
    try:
        obj = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        return None
    times = [obj["decided_at_ms"], *([obj["received_at_ms"]] if "received_at_ms" in obj else [])]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
        return None
    return obj


def _has_no_answer(value: bytes | None) -> bool:
    try:
        obj = json.loads(value or b"")
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("result", 0) is None


class Tail:
    """The records since ``now_ms - keep_ms`` and every policy version, read incrementally."""

    def __init__(self, bootstrap: str, topics: Topics, keep_ms: int, now_ms: int, timeout_s: float = 30.0):
        self.topics = topics
        self.buffer = RecordBuffer(keep_ms)
        self.counts: Counter[str] = Counter()
        self.missing: list[str] = []
        self.consumer = kafka_client.consumer(bootstrap, client_id="autopilot")
        try:
            assigned = self._positions(topics, now_ms - keep_ms, timeout_s)
            self.consumer.assign(assigned)
        except BaseException:
            self.consumer.close()
            raise

    def _positions(self, topics: Topics, since_ms: int, timeout_s: float) -> list[TopicPartition]:
        c = self.consumer
        out = []
        for t in (topics.decisions, topics.labels, topics.canary):
            parts = kafka_client.partitions(c, t, timeout_s, wait=t != topics.labels)
            if not parts:
                self.missing.append(t)
                continue
            found = c.offsets_for_times([TopicPartition(t, p, since_ms) for p in parts], timeout=timeout_s)
            for tp in found:
                if tp.offset < 0:  # nothing at or after since_ms: start at the end, resolved now
                    high = c.get_watermark_offsets(TopicPartition(t, tp.partition), timeout=timeout_s)[1]
                    tp = TopicPartition(t, tp.partition, high)
                out.append(tp)
        parts = kafka_client.partitions(c, topics.policies, timeout_s)
        if not parts:
            self.missing.append(topics.policies)
        out += [TopicPartition(topics.policies, p, kafka_client.OFFSET_BEGINNING) for p in parts]
        return out

    def read(self, now_ms: int) -> Snapshot:
        """Everything that has arrived (no waiting), into the buffer; new policy versions returned."""
        policies: list[tuple[Policy, int]] = []
        while True:
            batch = self.consumer.take(5000, 0)
            if not batch:
                break
            for m in batch:
                seen = self._one(m)
                if seen is not None:
                    policies.append(seen)
        self.buffer.prune(now_ms)
        return Snapshot(self.buffer.window(), policies)

    def _one(self, m: Message) -> tuple[Policy, int] | None:
        topic, value = m.topic(), m.value()
        if topic == self.topics.decisions:
            d = _record(value, DECISION_FIELDS)
            if d is None and _has_no_answer(value):
                self.counts["decisions_without_answer"] += 1  # nothing to judge, nothing wrong
                return None
            self._count("decisions", d)
            if d is not None:
                self.buffer.add_decision(d)
        elif topic == self.topics.canary:
            c = _record(value, ("request_id", "agree"))
            self._count("canary", c)
            if c is not None:
                self.buffer.add_canary(c)
        elif topic == self.topics.labels:
            parsed = parse_label(value or b"", Source(topic, m.partition(), m.offset()))
            label = parsed if isinstance(parsed, Label) else None  # a bad label: counted, skipped
            self._count("labels", label)
            if label is not None:
                self.buffer.add_label(label)
        elif topic == self.topics.policies:
            try:
                policy = parse_document(value)
            except PolicyError:
                self.counts["policies_unreadable"] += 1
                return None
            return policy, int(m.timestamp()[1])
        return None

    def _count(self, kind: str, parsed: Mapping[str, Any] | Label | None) -> None:
        self.counts[kind if parsed is not None else f"{kind}_unreadable"] += 1

    def close(self) -> None:
        self.consumer.close()


class Publisher:
    """Policies to the live policies topic, audit records to the audit topic."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.producer = kafka_client.producer(bootstrap, client_id="autopilot", linger_ms=0)

    def policy(self, policy: Policy) -> None:
        newest = policy_cli.newest_version(policy_cli.read_topic(self.bootstrap, self.topics.policies))
        if newest is not None and newest >= policy.version:
            raise RuntimeError(
                f"v{newest} is on {self.topics.policies} already: v{policy.version} would be refused as "
                f"{names.REASON_STALE_POLICY_VERSION} (published meanwhile; the next round starts from it)"
            )
        policy_cli.publish(self.bootstrap, policy, self.topics.policies)

    def audit(self, record: AuditRecord) -> None:
        key = f"v{record.new_version}".encode()
        done = self.producer.send_tracked(self.topics.audit, audit_json(record), key)
        done.get(30.0)  # the record is the trail of a change: wait for the broker's acknowledgement

    def close(self) -> None:
        self.producer.finish(timeout_s=10)


def serve(
    bootstrap: str,
    topics: Topics,
    policy: Policy,
    config: AutopilotConfig,
    watcher: str,
    *,
    dry_run: bool = False,
    iterations: int | None = None,
) -> int:
    """Run the watcher on a broker until SIGTERM, Ctrl-C or ``iterations`` rounds; returns the rounds."""
    kafka_admin.require_broker(bootstrap, "autopilot")
    if not dry_run:  # a dry run writes nothing, topics included
        policy_cli.ensure_policies_topic(bootstrap, topics.policies)
        kafka_admin.create_topics(bootstrap, [topics.audit])
    now = time.time_ns() // 1_000_000
    try:
        tail = Tail(bootstrap, topics, config.window_ms, now)
    except (RuntimeError, KafkaException) as e:  # a topic missing or refused: one line, no traceback
        raise SystemExit(f"error: autopilot: {e}") from None
    publisher = None if dry_run else Publisher(bootstrap, topics)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pilot = Autopilot(policy, config, watcher, dry_run=dry_run)
    mode = "dry run: reports only, publishes nothing" if dry_run else f"publishes to {topics.policies}"
    if tail.missing:
        print(f"autopilot: not reading {', '.join(tail.missing)} (no such topic at the start)", flush=True)
    print(
        f"autopilot ready: {watcher}, policy v{policy.version}, every {config.every_ms} ms over "
        f"{config.window_ms} ms (canary {config.canary_window_ms} ms); {mode}; audit -> {topics.audit}",
        flush=True,
    )
    try:
        return run_autopilot(
            pilot,
            tail.read,
            publish_policy=publisher.policy if publisher is not None else _never,
            publish_audit=publisher.audit if publisher is not None else (lambda _r: None),
            stop=stop,
            iterations=iterations,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        print(f"autopilot read: {dict(sorted(tail.counts.items()))}", flush=True)
        tail.close()
        if publisher is not None:
            publisher.close()


def _never(policy: Policy) -> None:
    raise AssertionError("a dry run publishes no policy")

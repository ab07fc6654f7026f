"""The project's Kafka client (ops/kafka_client.py) on the real broker: keys land where Java puts them,
failed deliveries are counted, readers stop at the end (read_committed: the last stable offset)."""

from __future__ import annotations

import uuid

import pytest

from ops import kafka_admin, kafka_client
from tests.unit.test_kafka_client import JAVA_MURMUR2

pytestmark = pytest.mark.integration


def _topic(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:8]}"


def _placed(bootstrap: str, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """Produce one record per key with the project's producer (the runners', the load generator's)
    and read back the partition each landed in."""
    producer = kafka_client.producer(bootstrap, client_id="test-placement")
    deliveries = [producer.send_tracked(topic, b"v", key) for key in keys]
    try:
        assert producer.flush(30) == 0
    finally:
        producer.finish()
    assert producer.delivery_errors.count == 0
    on_broker = {m.key(): m.partition() for m in kafka_client.read_to_end(bootstrap, [topic])}
    assert {k: d.partition for k, d in zip(keys, deliveries, strict=True)} == on_broker
    return {k: p for k, p in on_broker.items() if k is not None and p is not None}


def test_keyed_records_land_in_the_partitions_javas_murmur2_picks(kafka_bootstrap: str) -> None:
    four, seven, twelve = _topic("murmur4"), _topic("murmur7"), _topic("murmur12")
    kafka_admin.create_topics(kafka_bootstrap, [four], partitions=4)
    kafka_admin.create_topics(kafka_bootstrap, [seven], partitions=7)
    kafka_admin.create_topics(kafka_bootstrap, [twelve], partitions=12)
    keys = sorted(JAVA_MURMUR2)
    # Against results computed by Java (kafka-clients 3.9.2 Utils.murmur2, toPositive, % partitions).
    assert _placed(kafka_bootstrap, four, keys) == {k: JAVA_MURMUR2[k][1] for k in keys}
    assert _placed(kafka_bootstrap, seven, keys) == {k: JAVA_MURMUR2[k][2] for k in keys}
    # Request-id-like keys, many: every partition is used, each key where Java's murmur2 puts it.
    ids = [f"20261123-053800-{uuid.uuid4().hex[:6]}-{i}".encode() for i in range(300)]
    placed = _placed(kafka_bootstrap, twelve, ids)
    assert placed == {k: kafka_client.java_partition(k, 12) for k in ids}
    assert set(placed.values()) == set(range(12))
    kafka_admin.delete_topics(kafka_bootstrap, [four, seven, twelve])


def test_a_failed_delivery_is_counted_not_dropped(kafka_bootstrap: str) -> None:
    topic = _topic("too-large")
    kafka_admin.create_topics(kafka_bootstrap, [topic], configs={"max.message.bytes": "1024"})
    producer = kafka_client.producer(kafka_bootstrap, client_id="test-delivery")
    producer.send(topic, b"x" * 4096)  # the broker refuses it: the topic takes 1 KiB at most
    producer.flush(30)
    ok = producer.send_tracked(topic, b"small")  # after the flush: not in the refused batch
    producer.flush(30)
    producer.finish()
    assert producer.delivery_errors.count == 1
    assert (
        producer.delivery_errors.last is not None
        and "too large" in producer.delivery_errors.last.str().lower()
    )
    assert ok.get(1).offset is not None and ok.error is None
    kafka_admin.delete_topics(kafka_bootstrap, [topic])


def test_read_to_end_stops_at_the_last_stable_offset(kafka_bootstrap: str) -> None:
    topic = _topic("txn")
    kafka_admin.create_topics(kafka_bootstrap, [topic], partitions=2)
    producer = kafka_client.producer(kafka_bootstrap, client_id="test-txn", transactional_id=topic)
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, b"committed", f"k{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, b"open", f"k{i}".encode())
    producer.flush(30)  # written, not committed: a read_committed reader ends before them
    committed = kafka_client.read_to_end(kafka_bootstrap, [topic], timeout_s=20)
    everything = kafka_client.read_to_end(kafka_bootstrap, [topic], 20, kafka_client.READ_UNCOMMITTED)
    producer.abort_transaction(30)
    producer.finish()
    assert [m.value() for m in committed] == [b"committed"] * 5
    assert sorted(m.value() or b"" for m in everything) == [b"committed"] * 5 + [b"open"] * 3
    kafka_admin.delete_topics(kafka_bootstrap, [topic])

"""The project's Kafka client: confluent-kafka (librdkafka), with the project's settings in one place.

Every producer, consumer and admin client of the runners, the labeller, the load generator, the bench,
the fault suite, the demo and the tests is made here, so one change of a setting reaches all of them:

- ``partitioner: murmur2_random``: a keyed record lands in the partition Java's default partitioner
  (``Utils.toPositive(Utils.murmur2(key)) % partitions``) picks, like the Flink Kafka sink's ticks
  and every Java client; librdkafka's own default (``consistent_random``, CRC32) would not.
  ``java_partition`` computes the same placement in Python, for tests and checks.
- ``linger.ms: 1`` (producers): less added latency when the load is light (docs/performance.md).
- ``fetch.wait.max.ms: 100`` (consumers): the broker answers a waiting fetch as soon as a record
  arrives (``fetch.min.bytes`` 1), so this bounds the idle fetch rate (10 a second per consumer), not
  the latency; librdkafka's 500 ms would only slow down re-fetches after an assignment changes.
- ``enable.partition.eof: false``; ``isolation.level`` ``read_uncommitted`` unless a reader asks for
  ``read_committed`` (librdkafka's default is read_committed; Java's and kafka-python's is not).

librdkafka semantics the callers must keep: a producer's delivery callbacks run only inside
``poll()``/``flush()`` (``Producer.send`` polls after each record; long-lived producers must keep
polling or flush); ``Consumer.consume(n, timeout)`` returns records and events (errors, EOF) mixed
(``records()`` separates them); consumers must be ``close()``d to commit and leave their group.
A failed delivery is never dropped silently: it is counted on ``producer.delivery_errors`` and logged.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

PARTITIONER = "murmur2_random"
LINGER_MS = 1
FETCH_WAIT_MAX_MS = 100
# A subscribed topic missing from the first metadata answer is found at the next refresh (5 min by
# default); 10 s bounds that for a consumer started before its topic.
METADATA_REFRESH_MS = 10_000
READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"
OFFSET_BEGINNING = confluent_kafka.OFFSET_BEGINNING
OFFSET_END = confluent_kafka.OFFSET_END
ERROR_NOTE_EVERY_S = 60.0  # the same client error is printed at most this often (with a count)
DELIVERY_ERRORS_LOGGED = 5  # the first failed deliveries are printed one by one, later ones counted

_COMMON: dict[str, Any] = {
    # The broker closes idle connections after 10 min; librdkafka reconnects when needed and would
    # print a line each time.
    "log.connection.close": False,
}


# --- Java's partitioner, in Python ----------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (signed 32-bit), as the Java clients and the Flink sink hash keys."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and ``murmur2_random``) picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- errors are counted and shown, never dropped ---------------------------------------------------


class ClientErrors:
    """librdkafka's ``error_cb``: counts every client error and prints each kind at most once a minute.

    Most are transient (librdkafka reconnects and retries by itself: a broker restarting, all brokers
    down); a fatal one is printed every time.
    """

    def __init__(self, name: str, out: TextIO | None = None, quiet: bool = False) -> None:
        self.name = name
        self.out = out
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self.last: KafkaError | None = None
        self._noted: dict[str, tuple[float, int]] = {}  # kind -> (when printed, count then)

    def __call__(self, error: KafkaError) -> None:
        kind = error.name()
        self.counts[kind] += 1
        self.last = error
        if self.quiet:
            return
        now = time.monotonic()
        noted = self._noted.get(kind)
        if noted is not None and now - noted[0] < ERROR_NOTE_EVERY_S and not error.fatal():
            return
        since = "" if noted is None else f" ({self.counts[kind] - noted[1]} of this kind since the last note)"
        self._noted[kind] = (now, self.counts[kind])
        print(f"kafka {self.name}: {error.str()}{since}", file=self.out or sys.stderr, flush=True)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DeliveryErrors:
    """A producer's default delivery callback: counts failed deliveries and prints the first few."""

    def __init__(self, name: str, out: TextIO | None = None) -> None:
        self.name = name
        self.out = out
        self.count = 0
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            return
        self.count += 1
        self.last = error
        if self.count <= DELIVERY_ERRORS_LOGGED or self.count % 1000 == 0:
            print(
                f"kafka {self.name}: delivery to {msg.topic()} failed: {error.str()} "
                f"({self.count} failed so far)",
                file=self.out or sys.stderr,
                flush=True,
            )


class Delivery:
    """What became of one record sent with ``Producer.send_tracked``: filled in by its callback."""

    __slots__ = ("_producer", "done", "error", "topic", "partition", "offset", "timestamp_ms")

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.done = False
        self.error: KafkaError | None = None
        self.topic: str | None = None
        self.partition: int | None = None
        self.offset: int | None = None
        self.timestamp_ms: int | None = None

    def _report(self, error: KafkaError | None, msg: Message) -> None:
        self.done = True
        self.error = error
        self.topic, self.partition, self.offset = msg.topic(), msg.partition(), msg.offset()
        self.timestamp_ms = msg.timestamp()[1]
        if error is not None:
            self._producer.delivery_errors(error, msg)

    def get(self, timeout_s: float = 30.0) -> Delivery:
        """Wait for the broker's answer; KafkaException if the record was not delivered."""
        deadline = time.monotonic() + timeout_s
        while not self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no delivery report for a record to {self.topic} within {timeout_s:.0f} s"
                )
            self._producer.poll(min(left, 0.1))
        if self.error is not None:
            raise KafkaException(self.error)
        return self


# --- clients -------------------------------------------------------------------------------------


def _config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides as librdkafka keys: ``linger_ms=0`` is ``linger.ms``."""
    return {k.replace("_", "."): v for k, v in overrides.items()}


class Producer(confluent_kafka.Producer):
    """A confluent-kafka producer with the project's settings; see ``producer()``."""

    def __init__(self, config: dict[str, Any], name: str, errors_out: TextIO | None = None) -> None:
        self.name = name
        self.delivery_errors = DeliveryErrors(name, errors_out)
        self.client_errors = ClientErrors(name, errors_out)
        super().__init__({"on_delivery": self.delivery_errors, "error_cb": self.client_errors, **config})

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        on_delivery: Any = None,
    ) -> None:
        """``produce()``, waiting (and serving callbacks) while librdkafka's local queue is full, then
        serving the delivery callbacks that are due."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self.produce(topic, value, key, **kwargs)
                break
            except BufferError:  # queue.buffering.max.messages in flight: let some go out
                self.poll(0.05)
        self.poll(0)

    def send_tracked(self, topic: str, value: bytes | None, key: bytes | None = None, **kw: Any) -> Delivery:
        """``send()`` that returns the record's ``Delivery`` (its partition and offset once acknowledged)."""
        delivery = Delivery(self)
        self.send(topic, value, key, on_delivery=delivery._report, **kw)
        return delivery

    def finish(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued within ``timeout_s``, drop the rest (counted as delivery errors) and
        close. Returns how many records were not delivered."""
        left = self.flush(timeout_s)
        if left:
            self.purge(in_queue=True, in_flight=True, blocking=False)
            self.flush(1.0)  # serves the purged records' delivery reports
        self.close()
        return left


def producer_config(bootstrap: str, client_id: str = "rendezvous", **overrides: Any) -> dict[str, Any]:
    """The project's producer settings (librdkafka keys); ``overrides`` use ``_`` for ``.``."""
    return {
        **_COMMON,
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "partitioner": PARTITIONER,
        "linger.ms": LINGER_MS,
        "acks": "all",
        **_config(overrides),
    }


def producer(
    bootstrap: str, *, client_id: str = "rendezvous", errors_out: TextIO | None = None, **overrides: Any
) -> Producer:
    """A producer with the project's settings (``producer_config``); ``overrides`` are librdkafka
    settings with ``_`` for ``.`` (``linger_ms=0``)."""
    return Producer(producer_config(bootstrap, client_id, **overrides), client_id, errors_out)


def consume_ready(consumer: Any, max_records: int, timeout_s: float) -> list[Message]:
    """What ``consumer.consume(max_records, timeout_s)`` reads, but returned as soon as one record (or
    event) is there, with whatever else is queued then. ``consume(n, t)`` itself waits until it has n
    records or t has passed: with n = 1000 and t = 50 ms that added up to 50 ms to every hop whenever
    fewer than 1000 records were waiting (measured: one hop p50 59 ms against 25 ms, and 206 ms at
    t = 200 ms)."""
    batch: list[Message] = consumer.consume(max_records, 0)
    if batch or timeout_s <= 0:
        return batch
    batch = consumer.consume(1, timeout_s)
    if batch and max_records > 1:
        batch += consumer.consume(max_records - 1, 0)
    return batch


class Consumer(confluent_kafka.Consumer):
    """A confluent-kafka consumer with the project's settings; see ``consumer()``."""

    def __init__(self, config: dict[str, Any], name: str, errors_out: TextIO | None = None) -> None:
        self.name = name
        self.client_errors = ClientErrors(name, errors_out)
        self._subscribed: list[str] = []
        super().__init__({"error_cb": self.client_errors, **config})

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None:
        self._subscribed = list(topics)
        super().subscribe(list(topics), *args, **kwargs)

    def subscription(self) -> list[str]:
        """The topics passed to ``subscribe()`` (librdkafka does not say)."""
        return list(self._subscribed)

    def take(self, max_records: int = 1000, timeout_s: float = 0.1) -> list[Message]:
        """``consume_ready()`` without the events: the records only (see ``records()``)."""
        return records(consume_ready(self, max_records, timeout_s), self.client_errors)

    def assign_all(
        self, topics: Iterable[str], offset: int = OFFSET_BEGINNING, timeout_s: float = 30.0
    ) -> list[TopicPartition]:
        """Assign every partition of ``topics`` (waiting up to ``timeout_s`` for each to exist), from
        ``offset`` (OFFSET_BEGINNING, OFFSET_END, or a number)."""
        tps = [
            TopicPartition(t, p, offset) for t in topics for p in partitions(self, t, timeout_s, wait=True)
        ]
        self.assign(tps)
        return tps

    def assign_at_end(self, topics: Iterable[str], timeout_s: float = 30.0) -> list[TopicPartition]:
        """Assign every partition of ``topics`` at its end offset now, resolved before returning: a
        record written after this call is never skipped (OFFSET_END would resolve at the first fetch)."""
        tps = []
        for t in topics:
            for p in partitions(self, t, timeout_s, wait=True):
                high = self.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s, cached=False)[1]
                tps.append(TopicPartition(t, p, high))
        self.assign(tps)
        return tps


def consumer_config(
    bootstrap: str,
    group_id: str | None = None,
    client_id: str = "rendezvous",
    isolation: str = READ_UNCOMMITTED,
    offset_reset: str = "earliest",
    **overrides: Any,
) -> dict[str, Any]:
    """The project's consumer settings (librdkafka keys); see ``consumer()``."""
    if isolation not in (READ_COMMITTED, READ_UNCOMMITTED):
        raise ValueError(f"isolation must be {READ_COMMITTED} or {READ_UNCOMMITTED}, got {isolation!r}")
    return {
        **_COMMON,
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "group.id": group_id or f"rendezvous-assigned-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": group_id is not None,
        "auto.offset.reset": offset_reset,
        "isolation.level": isolation,
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "enable.partition.eof": False,
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **_config(overrides),
    }


def consumer(
    bootstrap: str,
    group_id: str | None = None,
    *,
    topics: Sequence[str] = (),
    client_id: str = "rendezvous",
    isolation: str = READ_UNCOMMITTED,
    offset_reset: str = "earliest",
    errors_out: TextIO | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with the project's settings (``consumer_config``), subscribed to ``topics`` if given.

    Without ``group_id`` it is for ``assign()`` only (``assign_all``): librdkafka needs a group id, so
    it gets a throw-away one and commits nothing.
    """
    config = consumer_config(bootstrap, group_id, client_id, isolation, offset_reset, **overrides)
    c = Consumer(config, client_id, errors_out)
    if topics:
        c.subscribe(list(topics))
    return c


def admin(bootstrap: str, *, quiet: bool = False, client_id: str = "rendezvous-admin") -> AdminClient:
    """An admin client; ``quiet``: librdkafka prints nothing (a start-up probe says one line itself)."""
    config: dict[str, Any] = {
        **_COMMON,
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "error_cb": ClientErrors(client_id, quiet=quiet),
    }
    if quiet:
        config["log_level"] = 0
    return AdminClient(config)


# --- reading -------------------------------------------------------------------------------------


def records(messages: Sequence[Message], errors: Callable[[KafkaError], None] | None = None) -> list[Message]:
    """The messages that are records; consumer events (partition EOF, a missing topic, transport
    errors: librdkafka recovers from those) go to ``errors``. A fatal error raises KafkaException."""
    out = []
    for m in messages:
        error = m.error()
        if error is None:
            out.append(m)
            continue
        if error.fatal():
            raise KafkaException(error)
        if errors is not None and error.code() != KafkaError._PARTITION_EOF:
            errors(error)
    return out


def partitions(client: Any, topic: str, timeout_s: float = 10.0, wait: bool = False) -> list[int]:
    """The topic's partition ids ([] if it does not exist); ``wait``: until it has some, up to
    ``timeout_s`` (then RuntimeError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        meta = client.list_topics(topic, timeout=left).topics.get(topic)
        found = sorted(meta.partitions) if meta is not None and meta.error is None else []
        if found or not wait:
            return found
        if time.monotonic() >= deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s (does it exist?)")
        time.sleep(0.2)


def read_to_end(
    bootstrap: str,
    topics: Iterable[str],
    timeout_s: float = 30.0,
    isolation: str = READ_COMMITTED,
) -> list[Message]:
    """Every record now in ``topics`` (all partitions), from the beginning to where each partition ends
    (for read_committed, its last stable offset), in each partition's order."""
    c = consumer(bootstrap, isolation=isolation, client_id="rendezvous-reader", enable_partition_eof=True)
    out: list[Message] = []
    try:
        pending = {(tp.topic, tp.partition) for tp in c.assign_all(topics, timeout_s=timeout_s)}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {sorted({t for t, _ in pending})} on {bootstrap} did not reach the end "
                    f"within {timeout_s:.0f} s"
                )
            for m in c.consume(1000, 0.2):
                error = m.error()
                if error is None:
                    out.append(m)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic() or "", m.partition() or 0))
                else:
                    records([m], c.client_errors)
    finally:
        c.close()
    return out


def end_offsets(
    client: Any, tps: Iterable[TopicPartition], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the high watermark (for a read_committed consumer, the last stable offset)."""
    out = {}
    for tp in tps:
        query = TopicPartition(tp.topic, tp.partition)
        low_high = client.get_watermark_offsets(query, timeout=timeout_s, cached=False)
        out[(tp.topic, tp.partition)] = low_high[1]
    return out

"""The project's Kafka client settings and helpers (ops/kafka_client.py), without a broker."""

from __future__ import annotations

import io
import json
import re
import socket
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from ops import kafka_client

# Java: org.apache.kafka.common.utils.Utils.murmur2(key.getBytes(UTF_8)) from kafka-clients 3.9.2 (the
# first six are also Kafka's own UtilsTest vectors), and toPositive(h) % 4, % 7.
JAVA_MURMUR2 = {
    b"21": (-973932308, 0, 3),
    b"foobar": (-790332482, 2, 0),
    b"a-little-bit-long-string": (-985981536, 0, 1),
    b"a-little-bit-longer-string": (-1486304829, 3, 0),
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": (-58897971, 1, 3),
    b"abc": (479470107, 3, 4),
    b"": (275646681, 1, 2),
    b"a": (-1563381124, 0, 5),
    b"run-0": (979196777, 1, 6),
    b"run-1": (637533037, 1, 1),
    b"req-1": (-1653804885, 3, 4),
    b"20260101-000000-abcdef-12345": (435488365, 1, 4),
    b"tick-xyz-0123": (-185609995, 1, 5),
}


@pytest.mark.parametrize("key", sorted(JAVA_MURMUR2))
def test_murmur2_and_the_partition_are_javas(key: bytes) -> None:
    h, p4, p7 = JAVA_MURMUR2[key]
    assert kafka_client.murmur2(key) == h
    assert (kafka_client.java_partition(key, 4), kafka_client.java_partition(key, 7)) == (p4, p7)
    assert kafka_client.java_partition(key, 1) == 0


@given(st.binary(max_size=64))
def test_murmur2_matches_kafka_pythons_for_any_key(key: bytes) -> None:
    """kafka-python's DefaultPartitioner (the project's partitioner before) hashes the same way."""
    default = pytest.importorskip("kafka.partitioner.default")
    assert kafka_client.murmur2(key) & 0x7FFFFFFF == default.murmur2(key) & 0x7FFFFFFF


def test_producer_settings_place_keys_like_java_and_linger_1_ms() -> None:
    conf = kafka_client.producer_config("b:1", "runner-gbt")
    assert conf["partitioner"] == "murmur2_random"  # librdkafka's default (CRC32) would not be Java's
    assert conf["linger.ms"] == 1 and conf["acks"] == "all" and conf["client.id"] == "runner-gbt"
    assert conf["bootstrap.servers"] == "b:1"
    over = kafka_client.producer_config("b:1", linger_ms=0, message_max_bytes=2**20)
    assert over["linger.ms"] == 0 and over["message.max.bytes"] == 2**20
    assert over["partitioner"] == "murmur2_random"


def test_consumer_settings() -> None:
    conf = kafka_client.consumer_config("b:1", "runner-gbt")
    assert conf["group.id"] == "runner-gbt" and conf["enable.auto.commit"] is True
    assert conf["enable.partition.eof"] is False and conf["fetch.wait.max.ms"] == 100
    assert conf["isolation.level"] == "read_uncommitted" and conf["auto.offset.reset"] == "earliest"
    assigned = kafka_client.consumer_config("b:1", isolation="read_committed")
    assert assigned["enable.auto.commit"] is False and assigned["group.id"].startswith("rendezvous-assigned-")
    assert assigned["group.id"] != kafka_client.consumer_config("b:1")["group.id"]
    assert assigned["isolation.level"] == "read_committed"
    with pytest.raises(ValueError, match="isolation"):
        kafka_client.consumer_config("b:1", isolation="committed")


class _Msg:
    def __init__(self, value: bytes | None = b"v", error: KafkaError | None = None) -> None:
        self._value, self._error = value, error

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return "t"


def test_records_keeps_records_and_hands_events_on() -> None:
    eof = KafkaError(KafkaError._PARTITION_EOF)
    missing = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Subscribed topic not available")
    seen: list[KafkaError] = []
    got = kafka_client.records([_Msg(b"a"), _Msg(None, eof), _Msg(None, missing), _Msg(b"b")], seen.append)  # type: ignore[list-item]
    assert [m.value() for m in got] == [b"a", b"b"]
    assert [e.code() for e in seen] == [KafkaError.UNKNOWN_TOPIC_OR_PART]  # EOF is not an error
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    with pytest.raises(KafkaException):
        kafka_client.records([_Msg(None, fatal)])  # type: ignore[list-item]
    # What a fenced static member's consume() gave (measured): the code _FATAL, with fatal() False.
    fenced = KafkaError(KafkaError._FATAL, "Static consumer fenced by other consumer")
    assert not fenced.fatal()
    with pytest.raises(KafkaException):
        kafka_client.records([_Msg(None, fenced)], seen.append)  # type: ignore[list-item]


def test_client_errors_are_counted_and_each_kind_shown_once_a_minute(monkeypatch: Any) -> None:
    now = [1000.0]
    monkeypatch.setattr(kafka_client.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    errors = kafka_client.ClientErrors("runner-gbt", out)
    down = KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9092 failed")
    for _ in range(5):
        errors(down)
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    now[0] += 61
    errors(down)
    lines = out.getvalue().splitlines()
    assert errors.counts["_TRANSPORT"] == 6 and errors.total == 7
    assert lines == [
        "kafka runner-gbt: Connect to ipv4#127.0.0.1:9092 failed",
        "kafka runner-gbt: 1/1 brokers are down",
        "kafka runner-gbt: Connect to ipv4#127.0.0.1:9092 failed (5 of this kind since the last note)",
    ]


def test_librdkafka_log_lines_each_facility_once_a_minute(monkeypatch: Any) -> None:
    now = [1000.0]
    monkeypatch.setattr(kafka_client.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    log = kafka_client.LibrdkafkaLog("runner-gbt", out)
    refused = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
    for _ in range(40):  # what librdkafka logs while a broker is down for ~4 s
        log.log(3, "%s [%s] %s", "FAIL", "runner-gbt#consumer-1", refused)
    log.log(4, "%s [%s] %s", "METADATAUPDATE", "runner-gbt#consumer-1", "new leader not found")
    now[0] += 61
    log.log(3, "%s [%s] %s", "FAIL", "runner-gbt#consumer-1", refused)
    assert log.counts == {"FAIL": 41, "METADATAUPDATE": 1}
    assert out.getvalue().splitlines() == [
        f"kafka runner-gbt: [FAIL] {refused}",
        "kafka runner-gbt: [METADATAUPDATE] new leader not found",
        f"kafka runner-gbt: [FAIL] {refused} (40 of this kind since the last note)",
    ]


def test_a_client_with_no_broker_prints_a_few_lines_not_one_per_reconnect(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The real librdkafka, pointed at a port nobody listens on: it logs a refused connection on every
    reconnect attempt (dozens in two seconds); through LibrdkafkaLog and ClientErrors they are a few lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = kafka_client.consumer(f"127.0.0.1:{port}", "g", topics=["t"], reconnect_backoff_ms=10)
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            c.consume(10, 0.1)
    finally:
        c.close()
    err = capfd.readouterr().err
    assert c.log.counts["FAIL"] >= 10, c.log.counts  # librdkafka did log every attempt ...
    assert err.count("Connect to") <= 4, err  # ... and this many lines reached stderr
    assert "%3|" not in err  # none printed by librdkafka itself


def test_failed_deliveries_are_counted_and_the_first_ones_shown() -> None:
    out = io.StringIO()
    errors = kafka_client.DeliveryErrors("loadgen", out)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "Message timed out")
    errors(None, _Msg())  # type: ignore[arg-type]
    for _ in range(kafka_client.DELIVERY_ERRORS_LOGGED + 3):
        errors(timed_out, _Msg())  # type: ignore[arg-type]
    assert errors.count == kafka_client.DELIVERY_ERRORS_LOGGED + 3
    lines = out.getvalue().splitlines()
    assert len(lines) == kafka_client.DELIVERY_ERRORS_LOGGED
    assert lines[0] == "kafka loadgen: delivery to t failed: Message timed out (1 failed so far)"


class _Queued:
    """A consumer whose records are all queued already, or arrive one per wait; logs each call."""

    def __init__(self, queued: list[str], arriving: list[str]) -> None:
        self.queued, self.arriving, self.calls = queued, arriving, []

    def consume(self, num: int, timeout: float) -> list[str]:
        self.calls.append((num, timeout))
        if self.queued:
            out, self.queued = self.queued[:num], self.queued[num:]
            return out
        if timeout > 0 and self.arriving:
            self.queued = self.arriving[1:]  # the rest lands while the first is handed over
            return [self.arriving[0]]
        return []


def test_consume_ready_returns_what_is_queued_without_waiting() -> None:
    c = _Queued(["a", "b"], [])
    assert kafka_client.consume_ready(c, 1000, 0.05) == ["a", "b"]
    assert c.calls == [(1000, 0)]


def test_consume_ready_waits_for_one_record_only_then_takes_the_rest_queued() -> None:
    c = _Queued([], ["a", "b", "c"])
    assert kafka_client.consume_ready(c, 1000, 0.05) == ["a", "b", "c"]
    # Never consume(1000, 0.05): librdkafka would wait the whole 50 ms for 1000 records.
    assert c.calls == [(1000, 0), (1, 0.05), (999, 0)]
    assert kafka_client.consume_ready(_Queued([], []), 10, 0.05) == []


def _stats(*sources: str) -> str:
    """librdkafka's statistics JSON, its ``brokers`` only (the shape the real broker test checks)."""
    brokers = {
        f"b{i}": {"name": f"b{i}", "nodeid": i, "source": s, "state": "UP"} for i, s in enumerate(sources)
    }
    return json.dumps({"name": "c#producer-1", "brokers": brokers, "topics": {}})


def test_the_broker_watch_fails_a_client_that_has_known_no_broker_for_a_while() -> None:
    now = [0.0]
    watch = kafka_client.BrokerWatch("producer p", fatal_after_s=15.0, clock=lambda: now[0])
    watch(_stats("configured", "internal"))  # before the first answer: the bootstrap address
    watch(_stats("learned", "logical", "internal"))  # a broker down is still known
    assert watch.none_since is None and watch.brokers == 1
    now[0] = 100.0
    watch(_stats("internal", "logical"))  # every broker dropped (librdkafka 2.13-2.16)
    now[0] = 110.0
    watch(_stats("internal", "logical"))  # 10 s: not yet
    now[0] = 115.0
    with pytest.raises(KafkaException) as raised:
        watch(_stats("internal", "logical"))
    error = raised.value.args[0]
    assert error.fatal() and "producer p has known no broker for 15 s" in error.str()
    assert kafka_client.is_fatal(raised.value)
    now[0] = 116.0
    watch(_stats("configured", "internal"))  # found one again (a librdkafka that re-bootstraps): forgiven
    now[0] = 200.0
    watch(_stats("internal"))
    assert watch.none_since == 200.0


def test_is_fatal_tells_the_errors_a_client_will_not_recover_from() -> None:
    assert kafka_client.is_fatal(KafkaException(KafkaError(KafkaError._FATAL)))  # a fenced static member
    assert kafka_client.is_fatal(KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True)))
    assert not kafka_client.is_fatal(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not kafka_client.is_fatal(RuntimeError("fatal"))


def test_librdkafka_reports_to_the_project_clients_broker_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch is librdkafka's statistics callback: a client's statistics reach it, and they count the
    bootstrap address (``configured``) before any answer, here from a port nobody listens on."""
    monkeypatch.setattr(kafka_client, "BROKER_WATCH_EVERY_MS", 100)
    p = kafka_client.producer("127.0.0.1:9", client_id="w")
    c = kafka_client.consumer("127.0.0.1:9", "g", topics=[], client_id="w")
    try:
        end = time.monotonic() + 10.0
        while (p.broker_watch.updates < 2 or c.broker_watch.updates < 2) and time.monotonic() < end:
            p.poll(0.05)
            c.take(1, 0.05)
        for watch in (p.broker_watch, c.broker_watch):
            assert watch.updates >= 2, watch.name
            assert watch.brokers == 1 and watch.none_since is None, watch.name
    finally:
        p.close()
        c.close()


def test_a_debug_log_takes_every_line_of_the_contexts_asked_with_its_time(tmp_path: Any) -> None:
    path = tmp_path / "debug" / "client.log"
    settings = kafka_client.debug_settings("broker", path)
    p = kafka_client.producer("127.0.0.1:9", client_id="dbg", **settings)
    try:
        end = time.monotonic() + 10.0
        while (
            "Added new broker" not in (path.read_text() if path.exists() else "") and time.monotonic() < end
        ):
            p.poll(0.05)
    finally:
        p.close()
    assert settings["logger"] is p.log and p.log.file.closed  # the client owns its log, and closes it
    lines = path.read_text().splitlines()
    assert any("127.0.0.1:9/bootstrap: Added new broker" in ln for ln in lines), lines[:5]
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} \d+ [A-Z]+ ", ln) for ln in lines), lines[:5]


def test_an_unknown_debug_context_is_refused_in_librdkafka_s_words(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"debug contexts 'metadata,bogus': Invalid value \"bogus\""):
        kafka_client.debug_settings("metadata,bogus", tmp_path / "never.log")
    assert not (tmp_path / "never.log").exists()
    kafka_client.check_debug_contexts("metadata,broker,protocol")  # known ones pass

"""The broker we run for development and tests: start, serve, keep data across restarts, stop cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Message

from ops import broker as broker_mod
from ops import kafka_admin, kafka_client, procs
from ops.broker import BrokerError, KafkaBroker
from udfs.names import ALL_TOPICS

pytestmark = pytest.mark.integration


def _topic(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:8]}"


def _produce(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    producer = kafka_client.producer(bootstrap, client_id="test-broker")
    try:
        producer.send_tracked(topic, value, key).get(30)
    finally:
        producer.finish()


def _consume(
    bootstrap: str, topic: str, expected: int, group: str | None = None, timeout_s: float = 30
) -> list[Message]:
    """Read from the beginning (through a consumer group if given) until `expected` records arrived."""
    consumer = kafka_client.consumer(bootstrap, group, client_id="test-broker")
    if group is None:
        consumer.assign_all([topic])
    else:
        consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer.take(100, 0.5))
    finally:
        consumer.close()
    return records


def _partition_count(bootstrap: str, topic: str) -> int:
    return kafka_admin.partition_counts(bootstrap, [topic])[topic]


def _gone(pid: int) -> bool:
    return not procs.pid_alive(pid)


# --- on the session broker --------------------------------------------------------------------


def test_session_fixture_exports_its_address(kafka_broker):
    assert os.environ["RDV_TEST_BOOTSTRAP"] == kafka_broker.bootstrap


def test_produce_and_consume_through_a_consumer_group(kafka_bootstrap):
    topic = _topic("roundtrip")
    kafka_admin.create_topics(kafka_bootstrap, [topic])
    _produce(kafka_bootstrap, topic, b'{"hello": "world"}', key=b"req-1")

    (record,) = _consume(kafka_bootstrap, topic, expected=1, group=_topic("group"))

    assert (record.key(), record.value()) == (b"req-1", b'{"hello": "world"}')


def test_producing_to_an_unknown_topic_creates_it_with_one_partition(kafka_bootstrap):
    topic = _topic("auto")
    _produce(kafka_bootstrap, topic, b"x")
    assert topic in kafka_admin.list_topics(kafka_bootstrap)
    assert _partition_count(kafka_bootstrap, topic) == 1


def test_create_topics_is_idempotent_and_delete_removes_them(kafka_bootstrap):
    names = [_topic("a"), _topic("b")]

    assert sorted(kafka_admin.create_topics(kafka_bootstrap, names, partitions=3)) == sorted(names)
    assert kafka_admin.create_topics(kafka_bootstrap, names, partitions=3) == []
    assert kafka_admin.create_topics(kafka_bootstrap, names + names, partitions=1) == []  # left as is
    assert all(_partition_count(kafka_bootstrap, name) == 3 for name in names)
    kafka_admin.wait_topics(kafka_bootstrap, names, timeout_s=5)

    assert sorted(kafka_admin.delete_topics(kafka_bootstrap, names + ["never-existed"])) == sorted(names)
    assert not set(names) & kafka_admin.list_topics(kafka_bootstrap)
    assert kafka_admin.delete_topics(kafka_bootstrap, names) == []


def test_ensure_default_topics_creates_every_rendezvous_topic(kafka_bootstrap):
    kafka_admin.ensure_default_topics(kafka_bootstrap)
    assert set(ALL_TOPICS) <= kafka_admin.list_topics(kafka_bootstrap)
    assert kafka_admin.ensure_default_topics(kafka_bootstrap) == []


def test_wait_topics_times_out_naming_the_topic(kafka_bootstrap):
    missing = _topic("missing")
    with pytest.raises(TimeoutError, match=missing):
        kafka_admin.wait_topics(kafka_bootstrap, [missing], timeout_s=1)


# --- brokers of their own -----------------------------------------------------------------------


def _poll_until(client, condition, what, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        client.poll(0.1)


def test_restart_keeps_data_and_stop_leaves_no_process(tmp_path):
    data_dir = tmp_path / "broker"
    port, controller_port = procs.free_port(), procs.free_port()
    first = KafkaBroker.start(data_dir, port=port, controller_port=controller_port)
    try:
        assert first.bootstrap == f"127.0.0.1:{port}"
        assert first.is_running()
        assert first.log_path == data_dir.resolve() / "broker.log" and first.log_path.stat().st_size > 0
        state = json.loads((data_dir / "broker.json").read_text())
        assert (state["pid"], state["port"], state["controller_port"]) == (first.pid, port, controller_port)
        cluster_id = (data_dir / "kraft-logs" / "meta.properties").read_text()
        topic = _topic("durable")
        _produce(first.bootstrap, topic, b"kept across restarts")
        # The project's client tells its broker watch which brokers it knows (librdkafka's statistics).
        watched = kafka_client.producer(first.bootstrap, client_id="test-watch", statistics_interval_ms=300)
        _poll_until(watched, lambda: watched.broker_watch.brokers >= 1, "the watch sees the broker")
    finally:
        first.stop()

    assert _gone(first.pid)
    # A broker down stays known (learned): an outage is not the stuck client the watch fails.
    seen = watched.broker_watch.updates
    _poll_until(
        watched, lambda: watched.broker_watch.updates >= seen + 3, "three statistics while it is down"
    )
    assert watched.broker_watch.brokers == 1 and watched.broker_watch.none_since is None
    watched.close()
    assert not first.is_running()
    assert not (data_dir / "broker.pid").exists()
    assert json.loads((data_dir / "broker.json").read_text())["pid"] is None

    second = KafkaBroker.start(data_dir)  # no ports given: the previous ones are reused
    try:
        assert second.pid != first.pid
        assert second.bootstrap == first.bootstrap
        assert (data_dir / "kraft-logs" / "meta.properties").read_text() == cluster_id  # not reformatted
        assert [r.value() for r in _consume(second.bootstrap, topic, expected=1)] == [b"kept across restarts"]

        # A later, separate call finds the broker through the data dir and stops it by PID.
        attached = KafkaBroker.attach(data_dir)
        assert attached is not None and attached.pid == second.pid and attached.is_running()
        assert KafkaBroker.start(data_dir).pid == second.pid  # starting again returns the running one
        with pytest.raises(BrokerError, match="stop it first"):
            KafkaBroker.start(data_dir, port=procs.free_port())
        attached.stop()
        assert _gone(second.pid)
    finally:
        second.stop()


def test_cli_start_status_stop(tmp_path):
    data_dir = tmp_path / "cli-broker"
    env = {**os.environ, "PYTHONPATH": str(procs.repo_root())}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.broker", *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=procs.repo_root(),
            timeout=120,
            check=False,
        )

    assert cli("status").returncode == 1
    started = cli("start")
    assert started.returncode == 0, started.stderr
    lines = dict(line.split(": ", 1) for line in started.stdout.splitlines())
    pid = int(lines["pid"])
    try:
        assert Path(lines["log"]).is_file()
        assert cli("status").returncode == 0
        assert set(ALL_TOPICS) <= kafka_admin.list_topics(lines["bootstrap"])
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    procs.wait_for(lambda: _gone(pid), 10, f"CLI-started broker pid {pid} to disappear")
    assert cli("status").returncode == 1


def test_missing_jars_say_run_make_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(broker_mod, "JARS_DIR", tmp_path / "no-jars-here")
    with pytest.raises(BrokerError, match="run `make setup`"):
        KafkaBroker.start(tmp_path / "broker")
    assert not (tmp_path / "broker" / "broker.json").exists()


def test_a_broker_that_dies_at_start_shows_its_log(tmp_path):
    with pytest.raises(BrokerError, match=r"(?si)exited.*last 30 lines.*heap"):
        KafkaBroker.start(tmp_path / "broker", heap="1k")  # the JVM refuses such a heap


# --- process helpers the broker relies on -------------------------------------------------------


def test_stop_pidfile_leaves_a_process_whose_cmdline_no_longer_matches(tmp_path):
    pid_file = tmp_path / "sleep.pid"
    proc = procs.ManagedProcess.start(["sleep", "60"], tmp_path / "sleep.log", pid_file=pid_file)
    try:
        procs.wait_for(lambda: procs.read_cmdline(proc.pid) == proc.argv, 5, "sleep to show its cmdline")
        record = json.loads(pid_file.read_text())
        # As if the PID had been reused by another program:
        pid_file.write_text(json.dumps({**record, "argv": ["something", "else"]}))
        assert procs.stop_pidfile(pid_file) is False
        assert proc.is_running()

        procs.ManagedProcess(proc.pid, proc.argv, proc.log_path).write_pid_file(pid_file)
        assert procs.stop_pidfile(pid_file) is True
        assert _gone(proc.pid) and not pid_file.exists()
    finally:
        proc.stop(grace_s=1)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    log = tmp_path / "stubborn.log"
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = procs.ManagedProcess.start([sys.executable, "-c", script], log)
    procs.wait_for(lambda: "ready" in log.read_text(), 10, "the stubborn process to ignore SIGTERM")
    assert proc.stop(grace_s=0.5) is True
    assert _gone(proc.pid)


def test_wait_for_names_what_it_waited_for():
    with pytest.raises(TimeoutError, match="the moon"):
        procs.wait_for(lambda: False, 0.3, "the moon")


def test_admin_calls_without_a_broker_say_how_to_start_one():
    with pytest.raises(TimeoutError, match="ops.broker start"):
        kafka_admin.list_topics(f"127.0.0.1:{procs.free_port()}", timeout_s=1)

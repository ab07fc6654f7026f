"""The secured broker (`rendezvous broker start --secure`) on the real Kafka: who is refused, with which
error, and the positive control of each role, so every test can fail both ways.

One broker for the module, started --secure in its own tmp data dir on free ports and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from ops import kafka_admin, kafka_client, kafka_security, policy_cli, procs
from ops.broker import JARS_DIR, BrokerError, KafkaBroker, create_default_topics
from ops.kafka_client import ClientSecurity
from udfs import names
from udfs.policy import load_policy

pytestmark = pytest.mark.integration

REPO = procs.repo_root()
POLICY = REPO / "policies" / "default.yaml"
PLAINTEXT = ClientSecurity("", kafka_client.PLAINTEXT)  # no authentication at all


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    b = KafkaBroker.start(
        tmp_path_factory.mktemp("secure-broker"), port=procs.free_port(), controller_port=procs.free_port(),
        secure=True,
    )  # fmt: skip
    try:
        create_default_topics(b)
        yield b
    finally:
        b.stop()
        assert not procs.pid_alive(b.pid)


def role(broker: KafkaBroker, name: str) -> ClientSecurity:
    security = broker.client_security(name)
    assert security is not None
    return security


def produce(broker: KafkaBroker, security: ClientSecurity, topic: str, value: bytes = b"{}") -> None:
    """One record, acknowledged; KafkaException with the broker's error otherwise."""
    p = kafka_client.producer(broker.bootstrap, client_id="test-secure", security=security, linger_ms=0,
                              message_timeout_ms=10_000)  # fmt: skip
    try:
        p.send_tracked(topic, value, b"k").get(15)
    finally:
        p.finish(timeout_s=2)


def error_code(exc: pytest.ExceptionInfo[KafkaException]) -> int:
    return int(exc.value.args[0].code())


def read_assigned(
    broker: KafkaBroker, security: ClientSecurity, topic: str, timeout_s: float = 10
) -> list[bytes]:
    """The records now in ``topic``, read from the beginning with assigned partitions (no group), as the
    project's readers do; KafkaException TOPIC_AUTHORIZATION_FAILED from the assignment if ``security``'s
    principal may not read it."""
    c = kafka_client.consumer(broker.bootstrap, client_id="test-secure", security=security)
    got: list[bytes] = []
    try:
        c.assign_all([topic], timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not got:
            got += [m.value() or b"" for m in c.take(100, 0.5)]
        assert not c.client_errors.counts, c.client_errors.counts  # e.g. the group's coordinator refused
    finally:
        c.close()
    return got


# --- the files ------------------------------------------------------------------------------------------


def test_one_file_per_role_readable_by_its_owner_only_and_no_password_in_argv_or_logs(
    broker: KafkaBroker,
) -> None:
    clients = broker.data_dir / "clients"
    assert {p.name for p in clients.iterdir()} >= {f"{r}.properties" for r in names.ROLES}
    passwords = []
    for path in [
        *clients.iterdir(),
        broker.data_dir / "admin.properties",
        broker.data_dir / "server.properties",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for r in names.ROLES:
        security = role(broker, r)
        assert (security.username, security.mechanism, security.protocol) == (
            r,
            "SCRAM-SHA-512",
            "SASL_PLAINTEXT",
        )
        passwords.append(security.password)
    admin = broker.admin_security
    assert admin is not None
    passwords.append(admin.password)
    cmdline = " ".join(procs.read_cmdline(broker.pid) or [])
    assert "kafka.Kafka" in cmdline
    log = broker.log_path.read_text(errors="replace")
    leftovers = list(broker.data_dir.glob("*.args"))
    assert not leftovers  # the storage format's argument file is gone
    for pw in passwords:
        assert pw and pw not in cmdline and pw not in log


# --- refusals, each with its positive control -----------------------------------------------------------


REFUSED_UNAUTHENTICATED = "Unexpected Kafka request of type METADATA during SASL handshake"


def test_an_unauthenticated_client_is_refused(broker: KafkaBroker) -> None:
    refused_before = broker.log_path.read_text(errors="replace").count(REFUSED_UNAUTHENTICATED)
    with kafka_client.security_context(None), pytest.raises(TimeoutError) as timeout:
        kafka_admin.list_topics(broker.bootstrap, timeout_s=5)
    assert str(timeout.value) == (
        f"the server at {broker.bootstrap} accepts connections but did not answer a Kafka client without authentication "
        "within 5s (still starting? a broker started with --secure needs --kafka-config FILE, "
        "<data-dir>/clients/<role>.properties)"
    )
    with pytest.raises(KafkaException) as e:
        produce(broker, PLAINTEXT, names.TOPIC_REQUESTS)
    assert error_code(e) == KafkaError._MSG_TIMED_OUT  # never delivered: every connection was closed
    # the broker's side: each attempt was an authentication failure (INFO, by its SocketServer)
    log = broker.log_path.read_text(errors="replace")
    assert log.count(REFUSED_UNAUTHENTICATED) > refused_before
    assert "Failed authentication with /127.0.0.1" in log
    # the same call with credentials goes through
    with kafka_client.security_context(role(broker, names.ROLE_OPERATOR)):
        assert names.TOPIC_REQUESTS in kafka_admin.list_topics(broker.bootstrap, timeout_s=10)


def test_a_runner_cannot_write_results_or_policies(broker: KafkaBroker) -> None:
    runner = role(broker, names.ROLE_RUNNER)
    for topic in (names.TOPIC_RESULTS_DEFAULT, names.TOPIC_POLICIES):
        with pytest.raises(KafkaException) as e:
            produce(broker, runner, topic)
        assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, e.value)
    produce(broker, runner, names.TOPIC_SCORES)  # what a runner is for
    # ... and it reads requests through its group
    produce(broker, role(broker, names.ROLE_CLIENT), names.TOPIC_REQUESTS, b'{"from": "client"}')
    c = kafka_client.consumer(broker.bootstrap, names.runner_group("t"), topics=[names.TOPIC_REQUESTS],
                              client_id="test-runner", security=runner)  # fmt: skip
    try:
        deadline, got = time.monotonic() + 30, []
        while not got and time.monotonic() < deadline:
            got = c.take(10, 0.5)
    finally:
        c.close()
    assert got
    with pytest.raises(KafkaException) as e:
        read_assigned(broker, runner, names.TOPIC_POLICIES)
    assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_only_the_operator_changes_a_policy(broker: KafkaBroker) -> None:
    policy = load_policy(POLICY)
    for r in (names.ROLE_JOB, names.ROLE_CLIENT, names.ROLE_LABELLER):
        with kafka_client.security_context(role(broker, r)), pytest.raises(KafkaException) as e:
            policy_cli.publish(broker.bootstrap, policy, timeout_s=15)
        assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED, r
    with kafka_client.security_context(role(broker, names.ROLE_OPERATOR)):
        done = policy_cli.publish(broker.bootstrap, policy, timeout_s=15)
        assert done.topic == names.TOPIC_POLICIES
    with kafka_client.security_context(role(broker, names.ROLE_JOB)):  # the job reads them
        assert policy.version in [r.version for r in policy_cli.read_topic(broker.bootstrap)]


def test_a_client_cannot_read_another_clients_prefix(broker: KafkaBroker) -> None:
    path = kafka_security.add_client(broker.data_dir, broker.bootstrap, "client-7")
    assert path == broker.data_dir / "clients" / "client-7.properties"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seven = kafka_client.load_client_properties(path)
    client = role(broker, names.ROLE_CLIENT)
    theirs = f"{names.client_results_prefix('client-7')}inbox"
    ours = f"{names.client_results_prefix('client')}inbox"
    for security, topic in ((seven, theirs), (client, ours)):
        with kafka_client.security_context(security):
            assert kafka_admin.create_topics(broker.bootstrap, [topic]) == [topic]  # its own prefix
    job = role(broker, names.ROLE_JOB)
    produce(broker, job, theirs, b"answer for client-7")  # the job writes every results topic
    produce(broker, job, ours, b"answer for client")

    with pytest.raises(KafkaException) as e:
        read_assigned(broker, client, theirs)
    assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    with (
        kafka_client.security_context(client),
        pytest.raises(RuntimeError, match="TOPIC_AUTHORIZATION_FAILED"),
    ):
        kafka_admin.create_topics(broker.bootstrap, [f"{names.client_results_prefix('client-7')}mine-now"])
    assert read_assigned(broker, client, ours) == [b"answer for client"]  # the control: its own prefix
    assert read_assigned(broker, seven, theirs) == [b"answer for client-7"]
    with pytest.raises(KafkaException) as e:  # nor the shared default results topic
        read_assigned(broker, client, names.TOPIC_RESULTS_DEFAULT)
    assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_client_writes_requests_only(broker: KafkaBroker) -> None:
    client = role(broker, names.ROLE_CLIENT)
    produce(broker, client, names.TOPIC_REQUESTS)
    for topic in (names.TOPIC_SCORES, names.TOPIC_POLICIES, names.TOPIC_RESULTS_DEFAULT):
        with pytest.raises(KafkaException) as e:
            produce(broker, client, topic)
        assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic


def test_the_job_writes_its_outputs_and_any_results_topic_but_not_requests(broker: KafkaBroker) -> None:
    job = role(broker, names.ROLE_JOB)
    fresh = f"results.new-{uuid.uuid4().hex[:6]}"  # created by the write, as the job's sink does
    for topic in (
        names.TOPIC_SCORES,
        names.TOPIC_CANARY,
        names.TOPIC_DECISIONS,
        names.TOPIC_DEAD_LETTERS,
        fresh,
    ):
        produce(broker, job, topic)
    for topic in (names.TOPIC_REQUESTS, names.TOPIC_LABELS, "elsewhere"):
        with pytest.raises(KafkaException) as e:
            produce(broker, job, topic)
        assert error_code(e) == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic


def test_the_jobs_transactions_are_under_its_prefix_only(broker: KafkaBroker) -> None:
    job = role(broker, names.ROLE_JOB)
    ok = names.transactional_id_prefix(names.GROUP_RENDEZVOUS, names.UID_KAFKA_OUT_EXACTLY_ONCE) + "-0-0"
    p = kafka_client.producer(broker.bootstrap, security=job, transactional_id=ok)
    p.init_transactions(20)
    p.begin_transaction()
    p.send(names.TOPIC_DECISIONS, b"{}", b"k")
    p.commit_transaction(20)
    p.close()
    other = kafka_client.producer(broker.bootstrap, security=job, transactional_id="someone-else-0")
    with pytest.raises(KafkaException) as e:
        other.init_transactions(20)
    assert error_code(e) == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    with contextlib.suppress(KafkaException):  # the producer is in a fatal state: closing says so again
        other.close()


def test_a_wrong_password_is_refused_with_one_clear_line(broker: KafkaBroker, tmp_path: Path) -> None:
    good = role(broker, names.ROLE_RUNNER)
    bad = tmp_path / "runner.properties"
    kafka_client.write_client_properties(bad, kafka_security.scram_security("runner", "not-the-password"))
    with kafka_client.security_context(kafka_client.load_client_properties(bad)):
        started = time.monotonic()
        with pytest.raises(SystemExit) as e:
            kafka_admin.require_broker(broker.bootstrap, "runner")
        assert time.monotonic() - started < 10  # refused at once, not after the start-up probe's timeout
    message = str(e.value)
    assert message.startswith(
        f"error: runner: Kafka at {broker.bootstrap} refused the credentials of user 'runner'"
    )
    assert str(bad) in message and "\n" not in message and "not-the-password" not in message
    assert "Authentication failed" in message
    # the same command line, as a user runs it: one line on stderr, exit code not 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "ops.policy_cli",
        "show",
        "--bootstrap",
        broker.bootstrap,
        "--kafka-config",
        str(bad),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [message.replace("error: runner:", "error: rendezvous policy:")]
    assert good.password is not None and good.password not in run.stderr
    # and with the right file the command works
    cmd[-1] = str(broker.client_config(names.ROLE_OPERATOR))
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "newest valid version" in ok.stdout


def test_kafkas_console_tools_take_the_files_as_they_are(broker: KafkaBroker) -> None:
    java = [procs.java_bin(), "-cp", f"{JARS_DIR}/*"]
    operator = str(broker.client_config(names.ROLE_OPERATOR))
    topics = subprocess.run(
        [*java, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", broker.bootstrap,
         "--command-config", operator, "--list"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert topics.returncode == 0, topics.stderr[-2000:]
    assert names.TOPIC_POLICIES in topics.stdout.split()
    value = f"console-{uuid.uuid4().hex[:6]}"
    produced = subprocess.run(
        [*java, "kafka.tools.ConsoleProducer", "--bootstrap-server", broker.bootstrap, "--topic",
         names.TOPIC_REQUESTS, "--producer.config", str(broker.client_config(names.ROLE_CLIENT))],
        input=value + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr[-2000:]
    c = kafka_client.consumer(broker.bootstrap, names.runner_group("console"), topics=[names.TOPIC_REQUESTS],
                              security=role(broker, names.ROLE_RUNNER))  # fmt: skip
    try:
        deadline, seen = time.monotonic() + 30, []
        while value.encode() not in seen and time.monotonic() < deadline:
            seen += [m.value() for m in c.take(100, 0.5)]
    finally:
        c.close()
    assert value.encode() in seen


def test_a_restart_keeps_the_users_and_refuses_to_drop_security(broker: KafkaBroker) -> None:
    with pytest.raises(BrokerError, match="--secure"):
        KafkaBroker.start(broker.data_dir)  # started without --secure: refused, before anything runs
    assert broker.is_running()


# --- TLS ------------------------------------------------------------------------------------------------


def attempt(bootstrap: str, security: ClientSecurity, topic: str) -> tuple[int | None, set[str]]:
    """Send one record: (the delivery's error code or None, the kinds of client errors librdkafka saw)."""
    p = kafka_client.producer(bootstrap, client_id="test-tls", security=security, linger_ms=0,
                              message_timeout_ms=8_000)  # fmt: skip
    try:
        p.send_tracked(topic, b"{}", b"k").get(15)
        code = None
    except KafkaException as e:
        code = int(e.args[0].code())
    finally:
        p.finish(timeout_s=2)
    return code, set(p.client_errors.counts)


def test_a_tls_broker_serves_its_clients_over_sasl_ssl_with_its_own_ca(tmp_path: Path) -> None:
    b = KafkaBroker.start(tmp_path / "tls-broker", port=procs.free_port(), controller_port=procs.free_port(),
                          secure=True, tls=True)  # fmt: skip
    try:
        create_default_topics(b)
        tls = kafka_security.tls_files(b.data_dir)
        assert stat.S_IMODE(tls.ca_file.stat().st_mode) == 0o644  # public: what clients trust
        for private in (tls.keystore, tls.ca_store, tls.password_file, b.data_dir / "server.properties"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        client = role(b, names.ROLE_CLIENT)
        assert client.protocol == "SASL_SSL" and client.ca_file == str(tls.ca_file)
        assert (
            f"ssl.truststore.location={tls.ca_file}"
            in (b.data_dir / "clients" / "client.properties").read_text()
        )

        assert attempt(b.bootstrap, client, names.TOPIC_REQUESTS)[0] is None  # the control
        # the same credentials without TLS: the listener speaks TLS only
        plain = kafka_security.scram_security("client", client.password or "")
        code, _ = attempt(b.bootstrap, plain, names.TOPIC_REQUESTS)
        assert code == KafkaError._MSG_TIMED_OUT
        # TLS without the broker's CA: the certificate is not trusted
        untrusted = ClientSecurity("", "SASL_SSL", client.mechanism, client.username, client.password)
        code, seen = attempt(b.bootstrap, untrusted, names.TOPIC_REQUESTS)
        assert code == KafkaError._MSG_TIMED_OUT and "_SSL" in seen, seen
        # the ACLs hold over TLS as well
        assert attempt(b.bootstrap, role(b, names.ROLE_RUNNER), names.TOPIC_POLICIES)[0] == (
            KafkaError.TOPIC_AUTHORIZATION_FAILED
        )
        # Kafka's console tools take the file as it is (a PEM trust store)
        listed = subprocess.run(
            [procs.java_bin(), "-cp", f"{JARS_DIR}/*", "org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
             b.bootstrap, "--command-config", str(b.client_config(names.ROLE_OPERATOR)), "--list"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert names.TOPIC_REQUESTS in listed.stdout.split()
        store_password = tls.store_password()
        assert store_password not in " ".join(procs.read_cmdline(b.pid) or [])
        assert store_password not in b.log_path.read_text(errors="replace")
        with pytest.raises(BrokerError, match="was started with --tls"):
            KafkaBroker.start(b.data_dir, secure=True)
    finally:
        b.stop()

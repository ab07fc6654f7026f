"""docker/compose.yaml's broker without Docker: its configuration started by the same steps, here.

No Docker engine runs where the tests do, so the containers' steps run as processes, each with what
compose would give it, and only the addresses changed (free ports on 127.0.0.1, a temporary data dir):
``kafka-secrets`` (ops/kafka_init.py), ``kafka-format`` (docker/kafka-format.sh, with the kafka service's
environment), the apache/kafka image's own configuration step (``kafka.docker.KafkaDockerWrapper setup``
from the same Kafka 3.9.2 jars: the mounted server.properties, then the KAFKA_* variables, then a format
that must find the storage formatted), the broker on the configuration it wrote, the image's health check
and ``kafka-setup``. Then each role's file does what its role may and no more, and a client without
credentials gets nothing. Not covered: the images themselves, their users and volumes, the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException

from ops import kafka_admin, kafka_client, kafka_init, procs
from ops.broker import JARS_DIR
from udfs import names

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
LOG4J = (
    "log4j.rootLogger=INFO, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
    "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
)


def _here(env: dict[str, str], base: Path, ports: dict[str, int]) -> dict[str, str]:
    """The kafka service's environment with this machine's addresses: each listener on 127.0.0.1 and a
    free port, the log dir under ``base``."""
    out = dict(env)
    compose_ports = {"INTERNAL": "9092", "HOST": "29092", "CONTROLLER": "9093"}
    for name, port in compose_ports.items():
        here = f"127.0.0.1:{ports[name]}"
        out["KAFKA_LISTENERS"] = out["KAFKA_LISTENERS"].replace(f"{name}://:{port}", f"{name}://{here}")
        out["KAFKA_LISTENERS"] = out["KAFKA_LISTENERS"].replace(
            f"{name}://127.0.0.1:{port}", f"{name}://{here}"
        )
    out["KAFKA_ADVERTISED_LISTENERS"] = (
        out["KAFKA_ADVERTISED_LISTENERS"]
        .replace("kafka:9092", f"127.0.0.1:{ports['INTERNAL']}")
        .replace("127.0.0.1:29092", f"127.0.0.1:{ports['HOST']}")
    )
    out["KAFKA_CONTROLLER_QUORUM_VOTERS"] = out["KAFKA_CONTROLLER_QUORUM_VOTERS"].replace(
        ":9093", f":{ports['CONTROLLER']}"
    )
    out["KAFKA_LOG_DIRS"] = str(base / "data")
    assert "://:" not in out["KAFKA_LISTENERS"] and "kafka:" not in out["KAFKA_ADVERTISED_LISTENERS"], out
    return out


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)


def start_compose_broker(
    base: Path, insecure: bool = False
) -> tuple[procs.ManagedProcess, str, kafka_init.Layout]:
    """The broker as docker/compose.yaml (with docker/compose.insecure.yaml) starts it; (process, the
    INTERNAL listener's bootstrap, the secrets)."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    kafka_env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    format_env = {k: str(v) for k, v in services["kafka-format"]["environment"].items()}
    if insecure:
        override = yaml.safe_load((DOCKER / "compose.insecure.yaml").read_text())["services"]["kafka"]
        kafka_env.update({k: str(v) for k, v in override["environment"].items()})
    ports = {name: procs.free_port() for name in ("INTERNAL", "HOST", "CONTROLLER")}
    plain = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    layout = kafka_init.Layout(base / "secrets")

    # kafka-secrets
    command = services["kafka-secrets"]["command"]
    assert command[0] == "kafka-secrets"
    done = _run([sys.executable, "-m", "ops.kafka_init", "secrets", "--dir", str(layout.root), *command[1:]])
    assert done.returncode == 0, done.stderr

    # kafka-format, in a stand-in for the image's /opt/kafka (its libs and tools' log4j file)
    home = base / "kafka-home"
    (home / "config").mkdir(parents=True)
    (home / "libs").symlink_to(JARS_DIR)
    (home / "config" / "tools-log4j.properties").write_text(LOG4J.replace("INFO", "WARN"))
    env = {
        **plain,
        **_here(format_env, base, ports),
        "CONFIG_DIR": str(layout.broker_dir),
        "KAFKA_HOME": str(home),
    }
    done = _run(["bash", str(DOCKER / "kafka-format.sh")], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "formatted with every principal's SCRAM credential" in done.stdout
    assert not (layout.broker_dir / kafka_init.SCRAM_ARGS).exists()  # the credentials' file is gone
    for security in kafka_init.load_or_create(layout).roles.values():
        assert security.password and security.password not in done.stdout + done.stderr

    # the image's own step: server.properties from the mounted file and the variables, then its format
    defaults, final = base / "image-defaults", base / "image-config"
    defaults.mkdir()
    final.mkdir()
    (defaults / "log4j.properties").write_text(LOG4J)
    (defaults / "tools-log4j.properties").write_text(LOG4J.replace("INFO", "WARN"))
    java = procs.java_bin()
    env = {**plain, **_here(kafka_env, base, ports)}
    done = _run([java, "-cp", f"{JARS_DIR}/*", "kafka.docker.KafkaDockerWrapper", "setup",
                 "--default-configs-dir", str(defaults), "--mounted-configs-dir", str(layout.broker_dir),
                 "--final-configs-dir", str(final)], env)  # fmt: skip
    # what the image's launch script accepts (it greps for this when the format step fails)
    assert done.returncode == 0 or "already formatted" in (done.stdout + done.stderr).lower(), done.stdout

    broker = procs.ManagedProcess.start(
        [java, "-Xmx512m", f"-Dlog4j.configuration=file:{final / 'log4j.properties'}", "-cp", f"{JARS_DIR}/*",
         "kafka.Kafka", str(final / "server.properties")],
        base / "broker.log",
    )  # fmt: skip
    return broker, f"127.0.0.1:{ports['INTERNAL']}", layout


def healthy(bootstrap: str, command_config: Path | None) -> bool:
    """The kafka service's health check (kafka-broker-api-versions.sh, the same class)."""
    extra = ["--command-config", str(command_config)] if command_config else []
    argv = [procs.java_bin(), "-cp", f"{JARS_DIR}/*", "kafka.admin.BrokerApiVersionsCommand",
            "--bootstrap-server", bootstrap, *extra]  # fmt: skip
    return _run(argv).returncode == 0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, kafka_init.Layout]]:
    broker, bootstrap, layout = start_compose_broker(tmp_path_factory.mktemp("compose-broker"))
    try:
        health = layout.broker_dir / f"{kafka_init.ADMIN_DIR}.properties"
        procs.wait_for(
            lambda: not broker.is_running() or healthy(bootstrap, health), 90, "the broker's health check"
        )
        assert broker.is_running(), broker.log_tail(40)
        admin = kafka_init.ADMIN_DIR
        done = _run([sys.executable, "-m", "ops.kafka_init", "setup", "--bootstrap", bootstrap,
                     "--admin-config", str(layout.role_dir(admin) / f"{admin}.properties")])  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield bootstrap, layout
    finally:
        broker.stop()


def _write(bootstrap: str, security: kafka_client.ClientSecurity | None, topic: str) -> str:
    """'ok', or the error the broker answered a write to ``topic`` with."""
    p = kafka_client.producer(
        bootstrap, linger_ms=0, message_timeout_ms=6000, security=security, errors_out=None
    )
    p.client_errors.quiet = True
    try:
        p.send_tracked(topic, b"{}", b"k").get(10)
        return "ok"
    except KafkaException as e:
        return str(e.args[0].name())
    except TimeoutError:
        return "timeout"
    finally:
        p.finish(2)


def test_each_role_writes_where_its_acls_allow_and_nowhere_else(secured: tuple[str, Any]) -> None:
    bootstrap, layout = secured
    role = {r: kafka_client.load_client_properties(layout.role_file(r)) for r in names.ROLES}
    allowed = [
        (names.ROLE_RUNNER, names.TOPIC_SCORES),
        (names.ROLE_CLIENT, names.TOPIC_REQUESTS),
        (names.ROLE_OPERATOR, names.TOPIC_POLICIES),
        (names.ROLE_LABELLER, names.TOPIC_LABELS),
        (names.ROLE_JOB, names.TOPIC_CANARY),
    ]
    for r, topic in allowed:
        assert _write(bootstrap, role[r], topic) == "ok", (r, topic)
    refused = [
        (names.ROLE_RUNNER, names.TOPIC_RESULTS_DEFAULT),
        (names.ROLE_RUNNER, names.TOPIC_POLICIES),
        (names.ROLE_CLIENT, names.TOPIC_SCORES),
        (names.ROLE_JOB, names.TOPIC_POLICIES),
    ]
    for r, topic in refused:
        assert _write(bootstrap, role[r], topic) == "TOPIC_AUTHORIZATION_FAILED", (r, topic)
    # every topic is there, the policies topic compacted, made by kafka-setup as the admin
    admin = kafka_client.load_client_properties(layout.admin_file)
    with kafka_client.security_context(admin):
        counts = kafka_admin.partition_counts(
            bootstrap, [*names.ALL_TOPICS, names.TOPIC_POLICIES, names.TOPIC_LABELS]
        )
    assert all(counts.values()), counts


def test_a_client_without_credentials_gets_nothing(secured: tuple[str, Any]) -> None:
    bootstrap, _ = secured
    assert _write(bootstrap, None, names.TOPIC_REQUESTS) in ("timeout", "_MSG_TIMED_OUT", "_TRANSPORT")
    assert not healthy(bootstrap, None)


def test_the_insecure_override_starts_a_plaintext_broker(tmp_path: Path) -> None:
    broker, bootstrap, _ = start_compose_broker(tmp_path, insecure=True)
    try:
        procs.wait_for(
            lambda: not broker.is_running() or healthy(bootstrap, None), 90, "the broker's health check"
        )
        assert broker.is_running(), broker.log_tail(40)
        done = _run([sys.executable, "-m", "ops.kafka_init", "setup", "--bootstrap", bootstrap])
        assert done.returncode == 0 and "kafka-setup: topics ready" in done.stdout, done.stderr
        assert _write(bootstrap, None, names.TOPIC_RESULTS_DEFAULT) == "ok"
    finally:
        broker.stop()

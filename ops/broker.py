"""A real single-node Kafka broker (KRaft, combined broker+controller) run from the jars `make setup` fetched.

Everything lives in one data dir: the configs we generate, the KRaft logs, the broker log, a pid file and
broker.json (pid, ports, started_at) so that `start` and `stop` can be separate CLI calls.

    python -m ops.broker start --data-dir var/broker [--port 9092] [--secure]
    python -m ops.broker status --data-dir var/broker
    python -m ops.broker stop --data-dir var/broker
    python -m ops.broker add-client --data-dir var/broker --name client-7     (secured broker only)

``--secure``: SASL/SCRAM-SHA-512 and ACLs, one principal per role, one client properties file per role
under <data-dir>/clients/ (ops/kafka_security.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import kafka_admin, kafka_client, kafka_security, policy_cli, procs
from udfs import names

JARS_DIR = procs.repo_root() / "build" / "jars" / "kafka"
STATE_FILE = "broker.json"
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
SERVER_PROPERTIES = "server.properties"
LOG4J_PROPERTIES = "log4j.properties"
KRAFT_LOG_DIR = "kraft-logs"
NODE_ID = 1
READY_TIMEOUT_S = 60.0
LOOPBACK = kafka_security.LOOPBACK

LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be set up, started or stopped; the message says what to do."""


def classpath() -> str:
    """The broker classpath (a JVM wildcard over the jars dir); fails early if `make setup` never ran."""
    if not JARS_DIR.is_dir() or not any(JARS_DIR.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"Kafka broker jars not found in {JARS_DIR}; run `make setup` "
            "(it fetches them with Maven from deps/pom.xml)"
        )
    return str(JARS_DIR / "*")


def server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    admin: kafka_client.ClientSecurity | None = None,
    host: str = LOOPBACK,
    tls: kafka_security.TlsFiles | None = None,
) -> str:
    """Combined-mode KRaft config for one node on loopback, tuned for our jobs rather than throughput;
    with ``admin`` (the broker's own principal), secured (``kafka_security.server_settings``: the
    clients' listener on ``host``, with TLS if ``tls``)."""
    settings: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": data_dir.resolve() / KRAFT_LOG_DIR,
        # One node: every replication factor is 1.
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        # Internal topics are created on first use; fewer partitions make that quick on a laptop.
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.num.partitions": 4,
        # Flink's exactly-once sink holds transactions open across checkpoints (up to 15 min).
        "transaction.max.timeout.ms": 900_000,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "num.partitions": 1,
        "log.retention.hours": 24,
        "log.segment.bytes": 16 * 1024 * 1024,
        "log.retention.check.interval.ms": 60_000,
        # Request threads for a machine of a few cores (Kafka's defaults, 3 network and 8 I/O threads,
        # are sized for a server): every request is handed between fewer threads, which cost the broker
        # 12-17 % less CPU under the stack at 250-500 requests/s (docs/performance-history.md).
        "num.network.threads": 1,
        "num.io.threads": 2,
    }
    if admin is not None:
        settings.update(kafka_security.server_settings(port, controller_port, admin, host, tls))
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def new_cluster_id() -> str:
    """A Kafka-style cluster id (URL-safe base64 of a random UUID), without starting a JVM for it."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cluster_id


@dataclass
class KafkaBroker:
    """A broker process (on 127.0.0.1 unless a secured one with TLS was given another ``host``) plus the
    data dir that lets later calls find it again."""

    data_dir: Path
    port: int
    controller_port: int
    pid: int
    started_at: float
    process: procs.ManagedProcess | None = None
    secure: bool = False
    host: str = LOOPBACK
    tls: bool = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_security(self) -> kafka_client.ClientSecurity | None:
        """The broker's own principal (a super user) on a secured broker; None on an unsecured one."""
        if not self.secure:
            return None
        return kafka_security.Credentials.load_or_create(self.data_dir, formatted=True).admin

    def client_config(self, role: str) -> Path | None:
        """The Kafka client properties file of ``role`` (or of a client added later) on a secured broker,
        for ``--kafka-config``; None on an unsecured one."""
        if not self.secure:
            return None
        path = kafka_security.client_properties_path(self.data_dir, role)
        if not path.exists():
            raise BrokerError(f"no client properties for {role!r}: {path} does not exist")
        return path

    def client_security(self, role: str) -> kafka_client.ClientSecurity | None:
        """``client_config(role)``, read."""
        path = self.client_config(role)
        return None if path is None else kafka_client.load_client_properties(path)

    @contextmanager
    def as_admin(self) -> Iterator[None]:
        """The clients made inside the block act as the broker's own principal (on a secured broker)."""
        with kafka_client.security_context(self.admin_security or kafka_client.current_security()):
            yield

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @classmethod
    def start(
        cls,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        timeout_s: float = READY_TIMEOUT_S,
        secure: bool = False,
        tls: bool = False,
        host: str = LOOPBACK,
    ) -> KafkaBroker:
        """Start a broker on data_dir (or return the one already running there) and wait until it serves.

        Ports default to the ones this data dir used last time if still free, else to free ones.
        Storage is formatted only once, so a restart keeps the data. ``secure``: SASL/SCRAM and ACLs
        (ops/kafka_security.py); ``tls``: its clients' listener over TLS, which a ``host`` other than
        127.0.0.1 needs. A data dir stays what it was first started as.
        """
        data_dir = Path(data_dir).resolve()
        jars = classpath()
        formatted = (data_dir / KRAFT_LOG_DIR / "meta.properties").exists()
        _check_security_flags(data_dir, secure, tls, host)
        running = cls.attach(data_dir)
        if running is not None and running.is_running():
            if port not in (None, running.port) or controller_port not in (None, running.controller_port):
                raise BrokerError(
                    f"a broker already runs on {data_dir} at {running.bootstrap} (pid {running.pid}); "
                    f"stop it first: python -m ops.broker stop --data-dir {data_dir}"
                )
            return running
        previous = _read_state(data_dir)
        port = port or _reuse_port(previous.get("port"))
        controller_port = controller_port or _reuse_port(previous.get("controller_port"), avoid=port)
        for p in (port, controller_port):
            # The JVM binds with SO_REUSEADDR: a broker restarted on its ports right after a stop
            # (harness/faults.py) must not wait a minute for the stop's TIME_WAIT connections to clear.
            if not procs.port_is_free(p, reuse_addr=True):
                raise BrokerError(f"port {p} is already in use; pick another one (or omit it for a free one)")

        data_dir.mkdir(parents=True, exist_ok=True)
        credentials = None
        if secure:
            credentials = _secure_config(data_dir, formatted, port, controller_port, host, tls)
        else:
            (data_dir / SERVER_PROPERTIES).write_text(server_properties(data_dir, port, controller_port))
        (data_dir / LOG4J_PROPERTIES).write_text(LOG4J)
        _format_storage_once(data_dir, credentials)

        argv = [
            procs.java_bin(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{data_dir / LOG4J_PROPERTIES}",
            "-cp",
            jars,
            "kafka.Kafka",
            str(data_dir / SERVER_PROPERTIES),
        ]
        with open(data_dir / LOG_FILE, "a") as log:
            log.write(f"\n===== rendezvous: starting broker at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        proc = procs.ManagedProcess.start(
            argv, data_dir / LOG_FILE, pid_file=data_dir / PID_FILE, cwd=data_dir
        )
        broker = cls(
            data_dir,
            port,
            controller_port,
            proc.pid,
            proc.started_at,
            proc,
            secure=secure,
            host=host,
            tls=tls,
        )
        broker._write_state()
        try:
            with broker.as_admin():
                broker.wait_ready(timeout_s)
                if credentials is not None:
                    kafka_security.set_up_acls(broker.bootstrap, credentials, timeout_s)
                kafka_admin.warm_up_group_coordinator(broker.bootstrap, timeout_s)
        except BaseException:
            broker.stop(timeout_s=10)
            raise
        return broker

    @classmethod
    def attach(cls, data_dir: Path) -> KafkaBroker | None:
        """The broker an earlier call started on data_dir (running or not), or None if none was."""
        data_dir = Path(data_dir).resolve()
        state = _read_state(data_dir)
        if not state.get("pid"):
            return None
        return cls(
            data_dir,
            int(state["port"]),
            int(state["controller_port"]),
            int(state["pid"]),
            float(state["started_at"]),
            procs.ManagedProcess.from_pid_file(data_dir / PID_FILE),
            secure=kafka_security.is_secured(data_dir),
            host=str(state.get("host") or LOOPBACK),
            tls=kafka_security.uses_tls(data_dir),
        )

    def is_running(self) -> bool:
        """True if our JVM is alive (checked by PID and cmdline, so a reused PID does not count)."""
        return self.process is not None and self.process.pid == self.pid and self.process.is_running()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the broker answers a metadata call listing itself; on failure show its log tail."""
        deadline = time.monotonic() + timeout_s
        try:
            procs.wait_for(
                lambda: self._check_alive() and procs.port_accepts(self.host, self.port),
                timeout_s,
                f"the broker to listen on {self.bootstrap}",
            )
            brokers: list[int] = []
            while not brokers:
                self._check_alive()
                brokers = kafka_admin.cluster_brokers(
                    self.bootstrap, timeout_s=max(1.0, deadline - time.monotonic())
                )
                if not brokers and time.monotonic() >= deadline:
                    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for the broker to register")
                time.sleep(0.1)
        except (TimeoutError, BrokerError) as exc:
            raise BrokerError(
                f"Kafka broker on {self.bootstrap} did not become ready: {exc}\n"
                f"--- last 30 lines of {self.log_path} ---\n{procs.tail(self.log_path, 30)}"
            ) from exc

    def _check_alive(self) -> bool:
        if not self.is_running():
            code = self.process.returncode() if self.process else None
            how = f" with code {code}" if code else ""
            raise BrokerError(f"the broker JVM (pid {self.pid}) exited{how}")
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Clean stop by PID: SIGTERM (Kafka shuts down in order), SIGKILL if still up after timeout_s."""
        if self.process is not None and self.process.pid == self.pid:
            self.process.stop(grace_s=timeout_s)
        else:
            procs.stop_pidfile(self.data_dir / PID_FILE, grace_s=timeout_s)
        state = _read_state(self.data_dir)
        if state.get("pid") == self.pid:
            state.update(pid=None, stopped_at=time.time())
            _write_json(self.data_dir / STATE_FILE, state)

    def _write_state(self) -> None:
        _write_json(
            self.data_dir / STATE_FILE,
            {
                "pid": self.pid,
                "port": self.port,
                "controller_port": self.controller_port,
                "bootstrap": self.bootstrap,
                "started_at": self.started_at,
                "log_path": str(self.log_path),
                "secure": self.secure,
                "host": self.host,
                "tls": self.tls,
            },
        )


def _check_security_flags(data_dir: Path, secure: bool, tls: bool, host: str) -> None:
    """A data dir keeps the security it was first started with; TLS needs SASL; no plain listener
    leaves the machine."""
    if tls and not secure:
        raise BrokerError("--tls goes with --secure (TLS for the authenticated listener)")
    if host != LOOPBACK and not tls:
        raise BrokerError(f"a listener on {host}, beyond 127.0.0.1, needs --secure --tls")
    if kafka_security.is_secured(data_dir) and not secure:
        raise BrokerError(
            f"the broker in {data_dir} was started with --secure; start it with --secure again "
            "(without it the data would be served to anyone)"
        )
    if kafka_security.is_secured(data_dir) and kafka_security.uses_tls(data_dir) != tls:
        was = "with" if kafka_security.uses_tls(data_dir) else "without"
        raise BrokerError(f"the broker in {data_dir} was started {was} --tls; start it the same way")


def _secure_config(
    data_dir: Path, formatted: bool, port: int, controller_port: int, host: str, tls: bool
) -> kafka_security.Credentials:
    """The secured broker's credentials (and TLS files) and its server.properties (mode 0600)."""
    try:
        tls_files = kafka_security.make_tls(data_dir, [host]) if tls else None
        credentials = kafka_security.Credentials.load_or_create(data_dir, formatted, tls_files)
    except kafka_security.SecurityError as exc:
        raise BrokerError(str(exc)) from None
    text = server_properties(data_dir, port, controller_port, credentials.admin, host, tls_files)
    kafka_client.write_secret(data_dir / SERVER_PROPERTIES, text)
    return credentials


def _read_state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _reuse_port(previous: object, avoid: int | None = None) -> int:
    """Keep the address stable across restarts when we can; otherwise any free port."""
    if isinstance(previous, int) and previous != avoid and procs.port_is_free(previous, reuse_addr=True):
        return previous
    while True:
        port = procs.free_port()
        if port != avoid:
            return port


def _format_storage_once(data_dir: Path, credentials: kafka_security.Credentials | None = None) -> None:
    """Format the KRaft log dir on first start only: reformatting would throw the data away. With
    ``credentials``, every principal's SCRAM credential goes into the new metadata (KIP-900), through a
    JVM argument file: never on a command line."""
    if (data_dir / KRAFT_LOG_DIR / "meta.properties").exists():
        return
    head = [
        procs.java_bin(),
        f"-Dlog4j.configuration=file:{data_dir / LOG4J_PROPERTIES}",
        "-cp",
        classpath(),
    ]
    tail = [
        "kafka.tools.StorageTool",
        "format",
        "-t",
        new_cluster_id(),
        "-c",
        str(data_dir / SERVER_PROPERTIES),
    ]
    if credentials is None:
        result = subprocess.run([*head, *tail], capture_output=True, text=True, check=False, timeout=120)
    else:
        tail += credentials.scram_arguments()
        result = kafka_security.run_with_argument_file(head, tail, data_dir / ".storage-format.args")
    if result.returncode != 0:
        output = f"{result.stdout}{result.stderr}"
        if credentials is not None:  # the tool may echo an argument it could not parse
            for security in (credentials.admin, *credentials.roles.values()):
                output = output.replace(security.password or "\0", "***")
        raise BrokerError(
            f"formatting Kafka storage in {data_dir / KRAFT_LOG_DIR} failed (exit {result.returncode}):\n{output}"
        )


def create_default_topics(broker: KafkaBroker, partitions: int = 1) -> list[str]:
    """Every topic rendezvous uses (``udfs.names.ALL_TOPICS``) with ``partitions`` partitions (a job of
    parallelism N reads N at once); on a secured broker also the policies (compacted, one partition)
    and labels topics, which the roles that use them may not create. Returns the new ones; a topic that
    exists keeps its partitions."""
    with broker.as_admin():
        return ensure_topics(broker.bootstrap, partitions, every=broker.secure)


def ensure_topics(bootstrap: str, partitions: int = 1, every: bool = False) -> list[str]:
    """``create_default_topics`` on any broker, as this process's principal (a secured broker's admin);
    ``every``: the policies and labels topics too. Also run by docker/compose.yaml's set-up (ops/kafka_init.py)."""
    created = kafka_admin.ensure_default_topics(bootstrap, partitions=partitions)
    if every:
        if policy_cli.ensure_policies_topic(bootstrap):
            created.append(names.TOPIC_POLICIES)
        created += kafka_admin.create_topics(bootstrap, [names.TOPIC_LABELS])
    return created


def _print_secure(broker: KafkaBroker) -> None:
    files = sorted(kafka_security.clients_dir(broker.data_dir).glob("*.properties"))
    protocol = "SASL_SSL" if broker.tls else "SASL_PLAINTEXT"
    print(f"security: {protocol}, SCRAM-SHA-512, ACLs (no allow.everyone)")
    if broker.tls:
        print(f"CA certificate (what clients trust): {kafka_security.tls_files(broker.data_dir).ca_file}")
    for f in files:
        print(f"client properties ({f.stem}): {f}")


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901 - one branch per subcommand
    """CLI: start | stop | status | add-client a broker kept in --data-dir."""
    parser = argparse.ArgumentParser(prog="python -m ops.broker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_p = sub.add_parser("start", help="start the broker (if not running) and create the default topics")
    stop_p = sub.add_parser("stop", help="stop the broker started on --data-dir")
    status_p = sub.add_parser("status", help="exit 0 if the broker runs, 1 if not")
    add_p = sub.add_parser(
        "add-client",
        help="secured broker: one more client principal with its own results prefix "
        "(results.<name>.) and its file <data-dir>/clients/<name>.properties",
    )
    add_p.add_argument("--name", required=True, help="the client principal, e.g. client-7")
    for p in (start_p, stop_p, status_p, add_p):
        p.add_argument("--data-dir", type=Path, default=Path("var/broker"), help="default: var/broker")
    start_p.add_argument("--port", type=int, default=None, help="client port (default: last used, else free)")
    start_p.add_argument("--controller-port", type=int, default=None, help="KRaft controller port")
    start_p.add_argument("--heap", default="512m", help="JVM heap, e.g. 512m or 1g")
    start_p.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for ready")
    start_p.add_argument(
        "--secure",
        action="store_true",
        help="SASL/SCRAM-SHA-512 authentication and ACLs: one principal per role (client, runner, job, "
        "operator, labeller), each with its Kafka client properties file under <data-dir>/clients/ "
        "(for --kafka-config and Kafka's console tools); a data dir stays what it was first started as",
    )
    start_p.add_argument(
        "--tls",
        action="store_true",
        help="with --secure: the clients' listener over TLS (SASL_SSL), with a CA and certificate made for "
        "this data dir under <data-dir>/tls/ (clients trust tls/ca.pem; their files name it)",
    )
    start_p.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions of each topic it creates (default 1; at least the job's parallelism); topics "
        "that exist keep theirs",
    )
    start_p.add_argument(
        "--host",
        default=LOOPBACK,
        help="the address the clients' listener binds to and advertises (default 127.0.0.1; another one "
        "needs --secure --tls); the controller stays on 127.0.0.1",
    )
    args = parser.parse_args(argv)
    if getattr(args, "partitions", 1) < 1:
        parser.error(f"--partitions: at least 1, got {args.partitions}")

    if args.command == "start":
        try:
            broker = KafkaBroker.start(
                args.data_dir, args.port, args.controller_port, args.heap, timeout_s=args.timeout,
                secure=args.secure, tls=args.tls, host=args.host,
            )  # fmt: skip
            create_default_topics(broker, args.partitions)
        except (BrokerError, RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"bootstrap: {broker.bootstrap}\npid: {broker.pid}\nlog: {broker.log_path}")
        if broker.secure:
            _print_secure(broker)
        return 0

    broker_or_none = KafkaBroker.attach(args.data_dir)
    if args.command == "add-client":
        if broker_or_none is None or not broker_or_none.is_running() or not broker_or_none.secure:
            print(f"error: no secured broker running on {args.data_dir}", file=sys.stderr)
            return 1
        try:
            path = kafka_security.add_client(broker_or_none.data_dir, broker_or_none.bootstrap, args.name)
        except (kafka_security.SecurityError, RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"client {args.name}: results topics {names.client_results_prefix(args.name)}*; properties: {path}"
        )
        return 0
    running = broker_or_none is not None and broker_or_none.is_running()
    if args.command == "status":
        if broker_or_none is not None and running:
            print(f"running: {broker_or_none.bootstrap} pid {broker_or_none.pid}")
            return 0
        print(f"not running (data dir {args.data_dir})")
        return 1
    # stop
    if broker_or_none is None or not running:
        print(f"no broker running on {args.data_dir}")
        if broker_or_none is not None:
            broker_or_none.stop()  # tidy a stale pid file / state
        return 0
    broker_or_none.stop()
    print(f"stopped pid {broker_or_none.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

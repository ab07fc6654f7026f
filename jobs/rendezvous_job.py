"""The rendezvous job: builds the topology from a config and runs it. Nothing runs at import.

    requests ─ parse ─┐
                      ├─ union ─ key_by(request_id) ─┐
    scores ── parse ─┘                               ├─ mailbox ─ route ─┬─ results  -> each request's return address
    policies ─ broadcast (policy documents) ─────────┘                   ├─ canary   -> canary topic
                                                                         ├─ decisions-> decisions topic
      (parse errors, mailbox rejects, refused policies) ─────────────────┼─ dead letters -> dead-letters topic
                                                                         ├─ decoy archive -> Parquet files (on checkpoint)
                                                                         └─ ticks    -> scores topic (--clock log)

Ticks (``--clock log``, the default): when a wait or deadline runs out, the mailbox writes a tick into
the scores topic under the request's key, i.e. into the partition of its scores, and decides when it
reads the tick back. A decision then depends only on the order of records in Kafka, so the replay after
a restart (from the last checkpoint) decides every request as the first run did, and every score that
reached Kafka before the tick counts, however far behind the job is (docs/guarantees.md).

Label feedback (``decide: thompson``): labels and the job's own decisions topic, read back, are parsed
and joined by request id (``label join``); its reward events are unioned with the (tagged) policy
documents into the one broadcast input of the mailbox, which keeps the posteriors in broadcast state.

Kafka I/O uses the Flink Kafka connector through Table DDL: the source exposes partition and
offset (dead letters point back at the record) and the sink takes a per-record topic (the
return address) and key. Processing is DataStream Python with explicit uids.
``build_pipeline`` takes the raw streams and returns the outputs, so tests can swap the Kafka ends
for collections. The policies topic is read from the earliest offset on a fresh start (so a job started
without a savepoint still ends up on the newest valid published policy) and from its checkpointed
offset on a restore, consistent with the broadcast state restored next to it. The data topics
(requests, scores, labels, decisions read back) start where ``--start-from`` says on a fresh start: by
default the consumer group's committed offsets, else the end, so a new job does not answer history
again (``earliest`` or a time replays it); a restore continues from the checkpoint's offsets.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops import archive, background_priority, kafka_admin, kafka_client, policy_cli, procs
from ops.flink_conf import FlinkConfError, read_conf
from udfs import flink_compat, names
from udfs import mailbox as mbx
from udfs.policy import Policy, PolicyError, load_policy
from udfs.wire_in import TOPIC_PATTERN

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLINK_CONF = REPO_ROOT / "flink-conf" / "config.yaml"
CONNECTOR_JARS_DIR = REPO_ROOT / "build" / "jars" / "flink"
# Exactly-once sinks hold a Kafka transaction open from one checkpoint to the next and, after a crash,
# until the restored job commits or aborts it. The connector's default (1 h) exceeds the broker's
# transaction.max.timeout.ms (15 min, ops/broker.py), which makes the producer fail at start; a
# transaction that times out before its commit is lost, so this is the broker's maximum.
KAFKA_TRANSACTION_TIMEOUT_MS = 900_000
# Which Kafka outputs are delivered how unless a --<output>-delivery flag says otherwise. Results are
# at-least-once by default: an exactly-once result is visible only when the next checkpoint completes
# (docs/guarantees.md: the measured latency cost and what each mode promises under faults).
DEFAULT_DELIVERY = dict.fromkeys(names.KAFKA_OUTPUTS, names.DELIVERY_AT_LEAST_ONCE)
# How long the Kafka sink's producer waits to fill a batch (linger.ms). 0 sends each record in a produce
# request of its own whenever the sender thread is free; a short linger lets one request carry the
# records a burst emits (a result, a decision, a canary record, ticks), which costs the job's producer
# thread and the broker far less per record (docs/performance-history.md) and a result at most this long.
DEFAULT_SINK_LINGER_MS = 1
MAX_SINK_LINGER_MS = 1000  # a linger near the deadline would make every answer late
# The decoy archive's part files are compacted every this many checkpoints (--archive-compact-every):
# each partition's files of those checkpoints, from every subtask, become one file before they are
# committed. 1 keeps rows queryable one checkpoint after they arrive, as before compaction, and leaves
# one file per partition and checkpoint (360 an hour at 10 s checkpoints) whatever the parallelism.
DEFAULT_ARCHIVE_COMPACT_EVERY = 1
MAX_ARCHIVE_COMPACT_EVERY = 360  # an hour of checkpoints at the shipped 10 s interval


@dataclass(frozen=True)
class StartFrom:
    """Where the data sources (requests, scores, labels, decisions read back) start reading when the job
    has no restored state (``--start-from``): a restore from a checkpoint or savepoint always continues
    from the offsets in it. ``position`` is one of ``names.START_POSITIONS``, or ``names.START_TIMESTAMP``
    with ``timestamp_ms`` (the first record at or after it, by the records' Kafka timestamps)."""

    position: str = names.START_COMMITTED
    timestamp_ms: int | None = None

    def __post_init__(self) -> None:
        if self.position not in (*names.START_POSITIONS, names.START_TIMESTAMP):
            raise ValueError(f"unknown start position {self.position!r}")
        if (self.position == names.START_TIMESTAMP) != (self.timestamp_ms is not None):
            raise ValueError(f"a time goes with the {names.START_TIMESTAMP} position only: {self!r}")

    @property
    def replays(self) -> bool:
        """Whether a fresh start reads records written before it (and so answers requests again)."""
        return self.position in (names.START_EARLIEST, names.START_TIMESTAMP)

    def __str__(self) -> str:
        if self.timestamp_ms is None:
            return self.position
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


START_TIME_EXAMPLE = "2026-12-05T10:00:00Z"


def parse_start_from(text: str, now_ms: int | None = None) -> StartFrom:
    """``--start-from``'s value: a position name, or an ISO 8601 time with a zone (``Z`` or ``+01:00``)
    that is not in the future. ValueError with a one-line reason otherwise."""
    if text in names.START_POSITIONS:
        return StartFrom(text)
    expected = (
        f"expected {', '.join(names.START_POSITIONS[:-1])} or {names.START_POSITIONS[-1]}, "
        f"or an ISO 8601 time with a zone such as {START_TIME_EXAMPLE}"
    )
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{expected}; got {text!r}") from None
    if when.tzinfo is None or "T" not in text.upper():
        raise ValueError(f"{expected} (a date and a time, with its zone); got {text!r}")
    ms = int(when.timestamp() * 1000)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ms < 0:
        raise ValueError(f"{text!r} is before 1970")
    if ms > now_ms:
        raise ValueError(f"{text!r} is in the future: there is nothing to replay from it (use latest)")
    return StartFrom(names.START_TIMESTAMP, ms)


# The policies topic on a fresh start, whatever --start-from says: the newest valid published policy must
# be found by a job started without a savepoint.
POLICIES_START = StartFrom(names.START_EARLIEST)


@dataclass(frozen=True)
class JobConfig:
    policy: Policy
    bootstrap: str
    archive_dir: Path
    state_dir: Path
    requests_topic: str = names.TOPIC_REQUESTS
    scores_topic: str = names.TOPIC_SCORES
    canary_topic: str = names.TOPIC_CANARY
    decisions_topic: str = names.TOPIC_DECISIONS
    dead_letters_topic: str = names.TOPIC_DEAD_LETTERS
    policies_topic: str = names.TOPIC_POLICIES
    labels_topic: str | None = None  # None: no label feedback (no label join; thompson refused)
    label_join_ttl_ms: int = 600_000
    group_id: str = names.GROUP_RENDEZVOUS
    flink_conf: Path = DEFAULT_FLINK_CONF
    flink_overrides: dict[str, str] = field(default_factory=dict)
    delivery: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DELIVERY))  # output -> guarantee
    clock: str = names.CLOCK_LOG
    sink_linger_ms: int = DEFAULT_SINK_LINGER_MS
    start_from: StartFrom = StartFrom()  # the data sources' position on a fresh start (parse_start_from)
    # A Kafka client properties file (--kafka-config; a secured broker's job.properties): its settings go
    # into every Kafka table's options. Read when the DDL is made: the password is kept in no field.
    kafka_config: Path | None = None
    return_address_prefix: str = ""  # every request's return address must start with it ("": any topic)
    # The decoy archive: compact each partition's part files every this many checkpoints (0: never), and
    # whether there is one at all (False only to measure what it costs: harness/bench_archive.py).
    archive_compact_every: int = DEFAULT_ARCHIVE_COMPACT_EVERY
    archive: bool = True
    # The nice value of the JVM's checkpoint and archive threads (ops/background_priority.py; 0: unchanged).
    background_nice: int = background_priority.DEFAULT_NICE


@dataclass(frozen=True)
class Outputs:
    """What the pipeline emits. ``kafka``: every Kafka record of the mailbox, rows of
    ``flink_fn.MAILBOX_OUT_TYPE`` (kind, key, value, topic),
    with the label join's parsers' dead letters, if any; ``archive``: the decoy archive's JSON lines."""

    kafka: Any
    archive: Any


SINK_CONTEXT_JAR = "rendezvous-kafka-sink-context.jar"
# The decoy archive's Parquet writer, compactor and hour partitioning (deps/archive-parquet).
ARCHIVE_JAR = archive.ARCHIVE_JAR.name


def connector_jars() -> list[Path]:
    """The job's ``pipeline.jars``: the project's sink-context class first, then the archive's Parquet
    sink (deps/archive-parquet), then the Kafka connector.

    The job's class loader looks through them in this order, so the connector's
    ``DefaultKafkaSinkContext`` (a new producer per new topic, on the task thread) gives way to the
    project's (deps/kafka-sink-context: one lookup producer; docs/performance-history.md).
    """
    connector = sorted(CONNECTOR_JARS_DIR.glob("flink-sql-connector-kafka-*.jar"))
    fix = CONNECTOR_JARS_DIR / SINK_CONTEXT_JAR
    parquet = CONNECTOR_JARS_DIR / ARCHIVE_JAR
    for missing in (
        "flink-sql-connector-kafka-*.jar" if not connector else None,
        fix.name if not fix.is_file() else None,
        parquet.name if not parquet.is_file() else None,
    ):
        if missing:
            raise SystemExit(f"error: no {missing} in {CONNECTOR_JARS_DIR}; run `make setup` first")
    return [fix, parquet, *connector]


CHANGELOG_ENABLED_KEY = "state.changelog.enabled"
CHANGELOG_STORAGE_KEY = "state.changelog.storage"
CHANGELOG_PATH_KEY = "state.changelog.dstl.dfs.base-path"


def flink_configuration(cfg: JobConfig) -> dict[str, str]:
    """The project's flink-conf, plus what only the running process knows (paths, interpreter)."""
    try:
        conf = read_conf(cfg.flink_conf)
    except FlinkConfError as e:
        raise SystemExit(f"error: {e}") from None
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    conf.update(
        {
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            # Thread mode runs Python inside the JVM; it needs the venv and the project on its path.
            "python.pythonpath": f"{site_packages}:{REPO_ROOT}",
            "pipeline.jars": ";".join(p.resolve().as_uri() for p in connector_jars()),
            "execution.checkpointing.dir": (cfg.state_dir / "checkpoints").resolve().as_uri(),
            "execution.checkpointing.savepoint-dir": (cfg.state_dir / "savepoints").resolve().as_uri(),
        }
    )
    conf.update(cfg.flink_overrides)
    # The changelog state backend (a candidate against the full heap snapshot every checkpoint, see
    # docs/performance-history.md) needs a place for its log; beside the checkpoints unless one is given.
    if conf.get(CHANGELOG_ENABLED_KEY, "").lower() == "true":  # Flink reads booleans in any case
        conf.setdefault(CHANGELOG_STORAGE_KEY, "filesystem")
        conf.setdefault(CHANGELOG_PATH_KEY, (cfg.state_dir / "changelog").resolve().as_uri())
    return conf


PROMETHEUS_PORT_KEY = "metrics.reporter.prom.port"
PROMETHEUS_HOST_KEY = "metrics.reporter.prom.host"
# Flink's PrometheusReporterFactory listens on every interface (it has no host option); the project's
# (deps/metrics-prometheus) serves the same metrics on one address, loopback unless told otherwise.
PROMETHEUS_FACTORY = "io.github.rendezvous.metrics.BoundPrometheusReporterFactory"
DEFAULT_METRICS_HOST = "127.0.0.1"
METRICS_REPORTER_JAR = "rendezvous-metrics-prometheus.jar"
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")  # a DNS name, not resolved here


def prometheus_reporter(ports: str, host: str = DEFAULT_METRICS_HOST) -> dict[str, str]:
    """Flink settings for a Prometheus reporter on a port or range ("9249", "9250-9260") of ``host``.

    It serves every metric of the job (the mailbox's per-model counters included) at
    ``http://<host>:<port>/metrics``, without authentication: on loopback by default, on every
    interface with ``0.0.0.0`` (what a scraper in another container or pod needs).
    """
    if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", ports):
        raise ValueError(f"--metrics-port: expected PORT or PORT-PORT, got {ports!r}")
    if not _is_host(host):
        raise ValueError(f"--metrics-host: expected an IP address or a host name, got {host!r}")
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        PROMETHEUS_HOST_KEY: host,
        PROMETHEUS_PORT_KEY: ports,
    }


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _HOSTNAME.fullmatch(text) is not None
    return True


def put_prometheus_reporter_on_classpath() -> None:
    """The mini cluster finds reporter factories on the JVM's system class path only.

    Its metric registry ignores the plugins directory (the log says "Available factories: []") and
    ``pipeline.jars`` is the job's user class loader. The apache-flink wheel ships Flink's reporter jar in
    ``pyflink/plugins/metrics-prometheus/``; the project's bound reporter (deps/metrics-prometheus, built
    by ``make setup``) extends it and must share its class loader. PyFlink's gateway launcher appends
    ``HADOOP_CLASSPATH`` to the ``-cp`` of the JVM it starts, so both jars go there, before the gateway
    starts.
    """
    import pyflink

    plugin_dir = Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus"
    jars = sorted(plugin_dir.glob("flink-metrics-prometheus-*.jar"))
    if not jars:
        raise SystemExit(f"error: no flink-metrics-prometheus jar in {plugin_dir} (needed by --metrics-port)")
    bound = CONNECTOR_JARS_DIR / METRICS_REPORTER_JAR
    if not bound.is_file():
        raise SystemExit(
            f"error: no {bound.name} in {CONNECTOR_JARS_DIR} (needed by --metrics-port); run `make setup` first"
        )
    current = os.environ.get("HADOOP_CLASSPATH", "")
    os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(p for p in (current, str(jars[-1]), str(bound)) if p)


def build_pipeline(
    requests: Any,
    scores: Any,
    policy: Policy,
    policies: Any = None,
    labels: Any = None,
    decisions_in: Any = None,
    label_join_ttl_ms: int = 600_000,
    clock: str = names.CLOCK_LOG,
    topics: Any = None,
) -> Outputs:
    """Union, key by request id, run the mailbox (which parses each record once) with the policies
    broadcast.

    ``requests`` and ``scores``: rows of ``flink_fn.KEYED_RECORD_TYPE``: the routing key and the record
    as read from Kafka (key, value bytes, source, partition, offset), the source being
    ``SOURCE_REQUESTS`` or ``SOURCE_SCORES``; ``topics``
    (``flink_fn.Topics``, None: the defaults) names what they are read from and written to. ``policies`` carries policy documents (None:
    an empty stream, so only the startup ``policy`` applies). ``labels`` and ``decisions_in`` (the job's
    own decisions topic, read back) feed the label join, whose reward events share the broadcast input
    with the policies (None: no label join, and no thompson policy is accepted). Under ``clock`` log the
    caller must write the mailbox's ticks into the topic ``scores`` comes from (tests that feed
    collections use local, which needs no loop).
    """
    from udfs import flink_fn  # imports pyflink

    if policies is None:
        # No policies source (tests from collections): an empty stream in its place.
        policies = requests.filter(lambda _row: False).name("no policies")
    tagged_policies = (
        policies.map(flink_fn.TagPolicies(), output_type=flink_fn.BROADCAST_TYPE)
        .uid(names.UID_TAG_POLICIES)
        .name("tag policies")
    )
    # Label feedback is off by default: reading every decision back and holding a join entry per
    # request costs every job CPU, and only decide: thompson uses it.
    feedback = labels is not None and decisions_in is not None
    broadcast_in = tagged_policies
    extra_dead_letters: tuple[Any, ...] = ()
    if feedback:
        rewards, extra_dead_letters = _label_feedback(
            labels, decisions_in, label_join_ttl_ms, (topics or flink_fn.Topics()).dead_letters
        )
        broadcast_in = tagged_policies.union(rewards)
    mailbox = (
        # The routing key is a column of the sources' queries (Java): keyed without a Python call.
        flink_compat.key_by_first_field(requests.union(scores), flink_fn.RECORD_TYPE)
        .connect(broadcast_in.broadcast(flink_fn.POLICIES_STATE, flink_fn.BANDIT_STATE))
        .process(
            flink_fn.MailboxFunction(
                policy, feedback=feedback, clock=clock, topics=topics or flink_fn.Topics()
            ),
            output_type=flink_fn.MAILBOX_OUT_TYPE,
        )
        .uid(names.UID_MAILBOX)
        .name("rendezvous mailbox")
    )
    # One stream for every Kafka record: the sink converts it to a table once (two conversions under one
    # sink's uid prefix would share the uid "<prefix>-source" and fail the job graph).
    kafka = mailbox.union(*extra_dead_letters) if extra_dead_letters else mailbox
    return Outputs(kafka=kafka, archive=mailbox.get_side_output(flink_fn.ARCHIVE))


def _parse(raw: Any, kind: str, uid: str, name: str, dead_letters_topic: str) -> Any:
    """Raw Kafka rows -> parsed labels or decisions; bad records to the DEAD_LETTERS side output."""
    from udfs import flink_fn

    fn = flink_fn.ParseFunction(kind, dead_letters_topic)
    return raw.process(fn, output_type=flink_fn.PARSED_TYPE).uid(uid).name(name)


def _label_feedback(
    labels: Any, decisions_in: Any, label_join_ttl_ms: int, dead_letters_topic: str
) -> tuple[Any, tuple[Any, ...]]:
    """Labels and decisions read back, parsed and joined by request id: (reward events, dead letters
    as ``flink_fn.MAILBOX_OUT_TYPE`` rows)."""
    from pyflink.common import Types

    from udfs import flink_fn

    parsed_labels = _parse(
        labels, flink_fn.KIND_LABEL, names.UID_PARSE_LABELS, "parse labels", dead_letters_topic
    )
    parsed_decisions = _parse(
        decisions_in, flink_fn.KIND_DECISION, names.UID_PARSE_DECISIONS, "parse decisions", dead_letters_topic
    )
    rewards = (
        parsed_labels.union(parsed_decisions)
        .key_by(lambda row: row[1], key_type=Types.STRING())
        .process(flink_fn.LabelJoinFunction(label_join_ttl_ms), output_type=flink_fn.BROADCAST_TYPE)
        .uid(names.UID_LABEL_JOIN)
        .name("label join")
    )
    return rewards, (
        parsed_labels.get_side_output(flink_fn.DEAD_LETTERS),
        parsed_decisions.get_side_output(flink_fn.DEAD_LETTERS),
    )


def _startup_options(start: StartFrom) -> str:
    """The Kafka source's WITH options for where it starts without restored state."""
    if start.position == names.START_COMMITTED:
        # The group's committed offsets; a partition without one starts at its end (Kafka's
        # auto.offset.reset, which the connector reads for this mode only), not at its beginning.
        return """'scan.startup.mode' = 'group-offsets',
          'properties.auto.offset.reset' = 'latest'"""
    if start.position == names.START_LATEST:
        return "'scan.startup.mode' = 'latest-offset'"
    if start.position == names.START_EARLIEST:
        return "'scan.startup.mode' = 'earliest-offset'"
    # names.START_TIMESTAMP, with its time (StartFrom checks): the first record at or after it, per
    # partition (the end of a partition with none).
    return f"""'scan.startup.mode' = 'timestamp',
          'scan.startup.timestamp-millis' = '{start.timestamp_ms}'"""


def kafka_security_options(cfg: JobConfig) -> dict[str, str]:
    """The Kafka tables' ``properties.*`` options of ``cfg.kafka_config`` (authentication), with the
    login module under the connector's shaded package; none without a file. Flink masks the values of
    keys it deems sensitive (``sasl.jaas.config`` among them) wherever it shows table options."""
    if cfg.kafka_config is None:
        return {}
    try:
        return kafka_client.load_client_properties(cfg.kafka_config).flink_table_options()
    except kafka_client.KafkaConfigError as e:
        raise SystemExit(f"error: rendezvous job: {e}") from None


def _with_options(options: dict[str, str]) -> str:
    """``'key' = 'value',`` lines for a WITH clause (SQL string literals: a quote doubled)."""
    return "".join(f"\n          '{k}' = '{v.replace(chr(39), chr(39) * 2)}'," for k, v in options.items())


def _kafka_source_ddl(
    table: str, topic: str, cfg: JobConfig, start: StartFrom | None = None, keyed: bool = False
) -> str:
    """A raw-bytes Kafka source; ``keyed`` adds the record's key as the STRING column ``k`` (and drops
    the topic column: the query names its source). ``start`` (None: ``cfg.start_from``) applies only
    without restored state: a restore always continues from the offsets in the checkpoint or savepoint."""
    if keyed:
        columns = "`k` STRING, `value` BYTES"
        formats = """'key.format' = 'raw',
          'key.fields' = 'k',
          'value.format' = 'raw',
          'value.fields-include' = 'EXCEPT_KEY'"""
    else:
        columns = "`value` BYTES, `topic` STRING METADATA VIRTUAL"
        formats = "'format' = 'raw'"
    return f"""
        CREATE TEMPORARY TABLE `{table}` (
          {columns},
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{cfg.bootstrap}',{_with_options(kafka_security_options(cfg))}
          'properties.group.id' = '{cfg.group_id}',
          'properties.isolation.level' = 'read_committed',
          {_startup_options(cfg.start_from if start is None else start)},
          {formats}
        )"""


def _delivery_options(delivery: str, transactional_id_prefix: str) -> str:
    """The sink's WITH options for one delivery guarantee (names.DELIVERIES)."""
    if delivery == names.DELIVERY_AT_LEAST_ONCE:
        return f"'sink.delivery-guarantee' = '{delivery}'"
    if delivery != names.DELIVERY_EXACTLY_ONCE:
        raise ValueError(f"delivery must be one of {names.DELIVERIES}, got {delivery!r}")
    # POOLING reuses a few transactional ids per subtask instead of one new id per checkpoint (the
    # default), which would pile up producer-id state on the broker at every checkpoint; it needs the
    # ListTransactions API (Kafka >= 3.0; the project's broker is 3.9).
    return f"""'sink.delivery-guarantee' = '{delivery}',
          'sink.transactional-id-prefix' = '{transactional_id_prefix}',
          'sink.transaction-naming-strategy' = 'POOLING',
          'properties.transaction.timeout.ms' = '{KAFKA_TRANSACTION_TIMEOUT_MS}'"""


def _kafka_sink_ddl(table: str, cfg: JobConfig, uid: str, delivery: str) -> str:
    """The Kafka sink of rows (k, v, topic): each record goes to the topic its row names."""
    options = _delivery_options(delivery, names.transactional_id_prefix(cfg.group_id, uid))
    return f"""
        CREATE TEMPORARY TABLE `{table}` (`k` STRING, `v` BYTES, `topic` STRING METADATA) WITH (
          'connector' = 'kafka',
          'topic-pattern' = '{TOPIC_PATTERN}',
          'properties.bootstrap.servers' = '{cfg.bootstrap}',{_with_options(kafka_security_options(cfg))}
          'properties.linger.ms' = '{cfg.sink_linger_ms}',
          'key.format' = 'raw',
          'key.fields' = 'k',
          'value.format' = 'raw',
          'value.fields-include' = 'EXCEPT_KEY',
          {options}
        )"""


# A record's routing key (flink_fn.KEYED_RECORD_TYPE): its Kafka key (the request id, as this project's
# producers key), or for a record without one the request_id in its value, or "" (the mailbox then
# makes it a dead letter). CASE, so the value is read as JSON only for a record without a key.
ROUTING_KEY_SQL = (
    "CASE WHEN `k` IS NOT NULL THEN `k` "
    "ELSE COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.request_id'), '') END"
)


def source_ddls(cfg: JobConfig) -> dict[str, str]:
    """The CREATE TABLE of every Kafka source the job reads, by table name.

    Requests and scores (and, with label feedback, labels and the decisions read back) start at
    ``cfg.start_from``, all at the same position: scores read from further back than their requests
    would open mailboxes for requests that never come, and decisions from further back than their labels
    would wait in the label join for nothing. Policies start from the earliest offset whatever
    ``--start-from`` says: the newest valid published version wins (documents at or below the version in
    force are refused as stale, again, as dead letters)."""
    ddls = {
        "requests_in": _kafka_source_ddl("requests_in", cfg.requests_topic, cfg, keyed=True),
        "scores_in": _kafka_source_ddl("scores_in", cfg.scores_topic, cfg, keyed=True),
        "policies_in": _kafka_source_ddl("policies_in", cfg.policies_topic, cfg, POLICIES_START),
    }
    if cfg.labels_topic is not None:
        ddls["labels_in"] = _kafka_source_ddl("labels_in", cfg.labels_topic, cfg)
        ddls["decisions_in"] = _kafka_source_ddl("decisions_in", cfg.decisions_topic, cfg)
    return ddls


def build_job(env: Any, cfg: JobConfig) -> None:
    """The whole topology on ``env``: Kafka in, the pipeline, Kafka and files out."""
    from pyflink.table import StreamTableEnvironment

    from udfs import flink_fn  # imports pyflink

    t_env = StreamTableEnvironment.create(env)
    ddls = source_ddls(cfg)

    def read(table: str, uid: str) -> Any:
        t_env.execute_sql(ddls[table])
        _uid_prefix(t_env, uid)
        return t_env.to_data_stream(
            t_env.sql_query(f"SELECT `value`, `topic`, `partition`, `offset` FROM `{table}`")
        )

    def read_keyed(table: str, uid: str, source: int) -> Any:
        t_env.execute_sql(ddls[table])
        _uid_prefix(t_env, uid)
        query = t_env.sql_query(
            f"SELECT {ROUTING_KEY_SQL} AS `key`, "
            f"ROW(`k`, `value`, {source}, `partition`, `offset`) AS `record` FROM `{table}`"
        )
        return flink_compat.typed_rows(t_env.to_data_stream(query), flink_fn.KEYED_RECORD_TYPE)

    requests = read_keyed("requests_in", names.UID_KAFKA_REQUESTS_IN, flink_fn.SOURCE_REQUESTS)
    scores = read_keyed("scores_in", names.UID_KAFKA_SCORES_IN, flink_fn.SOURCE_SCORES)
    policies = read("policies_in", names.UID_KAFKA_POLICIES_IN)  # from the earliest offset (source_ddls)
    # Label feedback for `decide: thompson`: labels, and the job's own decision records read back (the
    # mailbox cannot feed its own broadcast input inside one job graph; Kafka closes the loop).
    labels = decisions_in = None
    if cfg.labels_topic is not None:
        labels = read("labels_in", names.UID_KAFKA_LABELS_IN)
        decisions_in = read("decisions_in", names.UID_KAFKA_DECISIONS_IN)

    topics = flink_fn.Topics(
        cfg.requests_topic,
        cfg.scores_topic,
        cfg.canary_topic,
        cfg.decisions_topic,
        cfg.dead_letters_topic,
        results_prefix=cfg.return_address_prefix,
    )
    out = build_pipeline(
        requests, scores, cfg.policy, policies, labels, decisions_in, cfg.label_join_ttl_ms, cfg.clock, topics
    )
    for uid, delivery, kinds in kafka_sinks(cfg):
        table = uid.replace("-", "_")
        t_env.execute_sql(_kafka_sink_ddl(table, cfg, uid, delivery))
        _uid_prefix(t_env, uid)  # one statement set per sink: each is translated under its own prefix
        statements = t_env.create_statement_set()
        statements.add_insert(table, kafka_rows(t_env, out, kinds))
        statements.attach_as_datastream()
    if cfg.archive:
        _archive_sink(out.archive, cfg.archive_dir, cfg.archive_compact_every)


# Which of the mailbox's output kinds (udfs.mailbox) each --<output>-delivery flag governs. Ticks have
# no flag: always at-least-once (a tick in a transaction would wait for the next checkpoint, and one
# written twice changes nothing).
def _kinds_of(output: str) -> str:
    return {
        names.OUTPUT_RESULTS: mbx.RESULT,
        names.OUTPUT_CANARY: mbx.CANARY,
        names.OUTPUT_DECISIONS: mbx.DECISION,
        names.OUTPUT_DEAD_LETTERS: mbx.DEAD_LETTER,
    }[output]


def kafka_sinks(cfg: JobConfig) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(uid, delivery, mailbox output kinds or None for all) of each Kafka sink: one at-least-once sink,
    and a transactional one for the outputs whose delivery is exactly-once, if any."""
    exactly_once = tuple(
        _kinds_of(o) for o in names.KAFKA_OUTPUTS if cfg.delivery.get(o) == names.DELIVERY_EXACTLY_ONCE
    )
    if not exactly_once:
        return [(names.UID_KAFKA_OUT, names.DELIVERY_AT_LEAST_ONCE, None)]
    everything = (mbx.RESULT, mbx.CANARY, mbx.DECISION, mbx.DEAD_LETTER, mbx.TICK)
    at_least_once = tuple(k for k in everything if k not in exactly_once)
    return [
        (names.UID_KAFKA_OUT, names.DELIVERY_AT_LEAST_ONCE, at_least_once),
        (names.UID_KAFKA_OUT_EXACTLY_ONCE, names.DELIVERY_EXACTLY_ONCE, exactly_once),
    ]


def kafka_rows(t_env: Any, out: Outputs, kinds: tuple[str, ...] | None) -> Any:
    """The table (k, v, topic) one Kafka sink writes: the Kafka records of ``kinds`` (None: all, with no
    filter), converted to the table once, in Java."""
    from pyflink.table.expressions import col, lit

    table = t_env.from_data_stream(out.kafka)
    if kinds is not None:
        table = table.filter(col("tag").in_(*(lit(k) for k in kinds)))
    return table.select(col("k"), col("v"), col("topic"))


def _archive_sink(lines: Any, archive_dir: Path, compact_every: int) -> None:
    """The decoy archive: the mailbox's JSON lines as Parquet in Hive partitions of the request's hour
    (``dt=YYYY-MM-DD/hour=HH``), files committed on checkpoints and compacted every ``compact_every``
    checkpoints (deps/archive-parquet's ``ArchiveSink``, in Java: PyFlink has no Parquet writer for
    a Python stream without Flink's Parquet format, which is not to be had here)."""
    from pyflink.datastream.connectors.file_system import FileSink
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    # pipeline.jars reach the tasks' class loader; the sink is built here, in the client's gateway.
    add_jars_to_context_class_loader([(CONNECTOR_JARS_DIR / ARCHIVE_JAR).resolve().as_uri()])
    j_sink = get_gateway().jvm.io.github.rendezvous.archive.ArchiveSink.build(
        str(archive_dir.resolve()), compact_every
    )
    lines.sink_to(FileSink(j_sink)).uid(names.UID_SINK_ARCHIVE).name(
        names.OPERATOR_ARCHIVE
    ).disable_chaining()


def _uid_prefix(t_env: Any, prefix: str) -> None:
    """Operators the planner translates next get uids "<prefix>-<transformation>", not numbered ones."""
    t_env.get_config().set("table.exec.uid.format", names.table_uid_format(prefix))


def make_env(cfg: JobConfig) -> Any:
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    conf = Configuration()
    for k, v in flink_configuration(cfg).items():
        conf.set_string(k, v)
    return StreamExecutionEnvironment.get_execution_environment(conf)


def _start_from_or_exit(ap: argparse.ArgumentParser, text: str) -> StartFrom:
    """``--start-from``, validated once, here; a bad value stops the job with one line naming the flag."""
    try:
        return parse_start_from(text)
    except ValueError as e:
        ap.exit(2, f"error: --start-from: {e}\n")


def parse_args(argv: list[str] | None) -> JobConfig:
    ap = argparse.ArgumentParser(prog="rendezvous-job", description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, type=Path, help="policy YAML file")
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    ap.add_argument("--archive-dir", type=Path, default=REPO_ROOT / "var" / "archive")
    ap.add_argument("--state-dir", type=Path, default=REPO_ROOT / "var" / "flink")
    ap.add_argument("--flink-conf", type=Path, default=DEFAULT_FLINK_CONF)
    ap.add_argument("--group-id", default=names.GROUP_RENDEZVOUS)
    ap.add_argument("--requests-topic", default=names.TOPIC_REQUESTS)
    ap.add_argument("--scores-topic", default=names.TOPIC_SCORES)
    ap.add_argument("--canary-topic", default=names.TOPIC_CANARY)
    ap.add_argument("--decisions-topic", default=names.TOPIC_DECISIONS)
    ap.add_argument("--dead-letters-topic", default=names.TOPIC_DEAD_LETTERS)
    ap.add_argument(
        "--policies-topic",
        default=names.TOPIC_POLICIES,
        help="live policy documents (`rendezvous policy publish`); created if missing",
    )
    ap.add_argument(
        "--labels-topic",
        default=None,
        help="turn on label feedback for decide: thompson: labels from this topic (`rendezvous labeller` "
        f"writes {names.TOPIC_LABELS!r}) are joined with the decisions topic, read back, into the bandit's "
        "rewards; created if missing. Off by default: it costs every request CPU",
    )
    ap.add_argument(
        "--label-join-ttl-ms",
        type=int,
        default=600_000,
        help="how long the label join holds a decision waiting for its label (or a label for its "
        "decision); later labels teach the bandit nothing (default: 600000)",
    )
    for output in names.KAFKA_OUTPUTS:
        ap.add_argument(
            f"--{output}-delivery",
            choices=names.DELIVERIES,
            default=DEFAULT_DELIVERY[output],
            help=f"the {output} sink's guarantee (default %(default)s); exactly-once output is visible to "
            "read_committed consumers when the checkpoint after it completes",
        )
    ap.add_argument(
        "--clock",
        choices=names.CLOCKS,
        default=names.CLOCK_LOG,
        help="log (default): a wait or deadline that runs out is written into the scores topic as a tick "
        "and acted on when read back, so a replay after a restart decides every request the same way (a job "
        "that falls behind answers late, from the queued scores); local: acted on in the timer, a Kafka "
        "round trip sooner and no_answer at the deadline under overload, but a replay can answer differently",
    )
    ap.add_argument(
        "--metrics-port",
        metavar="PORT[-PORT]",
        help="serve the job's metrics for Prometheus on this port (or the first free one of a range); "
        "off by default",
    )
    ap.add_argument(
        "--metrics-host",
        metavar="ADDRESS",
        help=f"the address the --metrics-port endpoint listens on (default {DEFAULT_METRICS_HOST}: this "
        "machine only; 0.0.0.0: every interface, e.g. for a scraper in another container). It has no "
        "authentication",
    )
    ap.add_argument(
        "--sink-linger-ms",
        type=int,
        default=DEFAULT_SINK_LINGER_MS,
        help="the Kafka sink's producer linger.ms: how long a record may wait for others to share its "
        "produce request (default %(default)s)",
    )
    ap.add_argument(
        "--start-from",
        default=names.START_COMMITTED,
        metavar="{" + ",".join(names.START_POSITIONS) + ",TIME}",
        help="where the requests and scores topics (and, with --labels-topic, the labels and decisions "
        "topics) are read from when the job starts WITHOUT a checkpoint or savepoint; a restore from one "
        "always continues from the offsets in it. committed (default): the consumer group's committed "
        "offsets (Flink commits them at each completed checkpoint), and the end of the topics for a group "
        "without any, so a new --group-id answers only requests sent after the job is up; latest: the end, "
        "whatever the group committed; earliest, or a TIME in ISO 8601 with a zone (e.g. "
        f"{START_TIME_EXAMPLE}: the first records written at or after it): a REPLAY that answers the "
        "requests already in the topics again, a second answer to each one a job answered before. The "
        "policies topic is always read from its beginning",
    )
    ap.add_argument(
        "--archive-compact-every",
        type=int,
        default=DEFAULT_ARCHIVE_COMPACT_EVERY,
        metavar="N",
        help="compact the decoy archive every N checkpoints: each hour partition's part files of those "
        "checkpoints, from every parallel instance, become one Parquet file before they are committed; rows "
        "become queryable N checkpoints after they arrive (default %(default)s; 0: no compaction, one file "
        "per instance, partition and checkpoint)",
    )
    ap.add_argument(
        "--background-nice",
        type=int,
        default=background_priority.DEFAULT_NICE,
        metavar="N",
        help="the nice value (CPU priority, Linux) of the embedded JVM's background threads: checkpoint "
        "snapshots, the decoy archive's writing and compaction; they then take CPU the answers do not use "
        f"(default %(default)s; 0: leave them at the job's priority; at most {background_priority.MAX_NICE})",
    )
    ap.add_argument(
        "--no-archive",
        action="store_true",
        help="write no decoy archive (only to measure what it costs: requests are then not archived)",
    )
    kafka_client.add_config_argument(ap)
    ap.add_argument(
        "--return-address-prefix",
        default=None,
        metavar="PREFIX",
        help="refuse (as dead letters, reason bad_return_address) every request whose return address does "
        "not start with PREFIX; default: any topic, or with --kafka-config "
        f"{names.RESULTS_PREFIX!r}, the results topics the job role of a secured broker may write",
    )
    ap.add_argument(
        "-D",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Flink configuration override (repeatable)",
    )
    a = ap.parse_args(argv)
    if a.label_join_ttl_ms < 1:
        ap.error(f"--label-join-ttl-ms: must be positive, got {a.label_join_ttl_ms}")
    _in_range(ap, "--sink-linger-ms", a.sink_linger_ms, MAX_SINK_LINGER_MS)
    _in_range(ap, "--archive-compact-every", a.archive_compact_every, MAX_ARCHIVE_COMPACT_EVERY)
    _in_range(ap, "--background-nice", a.background_nice, background_priority.MAX_NICE)
    start_from = _start_from_or_exit(ap, a.start_from)
    try:
        policy = load_policy(a.policy)
    except PolicyError as e:
        ap.exit(2, f"error: invalid policy: {e}\n")
    if policy.decide == "thompson" and a.labels_topic is None:
        ap.exit(
            2,
            f"error: {a.policy}: decide: thompson learns from labels; start the job with --labels-topic "
            f"(e.g. --labels-topic {names.TOPIC_LABELS}, the topic `rendezvous labeller` writes)\n",
        )
    overrides = {}
    if a.metrics_port is not None:
        try:
            host = DEFAULT_METRICS_HOST if a.metrics_host is None else a.metrics_host
            overrides.update(prometheus_reporter(a.metrics_port, host))
        except ValueError as e:
            ap.error(str(e))
    elif a.metrics_host is not None:
        ap.error("--metrics-host: needs --metrics-port (no metrics endpoint without it)")
    for item in a.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"-D expects KEY=VALUE, got {item!r}")
        overrides[key] = value
    return JobConfig(
        policy=policy,
        bootstrap=a.bootstrap,
        archive_dir=a.archive_dir,
        state_dir=a.state_dir,
        requests_topic=a.requests_topic,
        scores_topic=a.scores_topic,
        canary_topic=a.canary_topic,
        decisions_topic=a.decisions_topic,
        dead_letters_topic=a.dead_letters_topic,
        policies_topic=a.policies_topic,
        labels_topic=a.labels_topic,
        label_join_ttl_ms=a.label_join_ttl_ms,
        group_id=a.group_id,
        flink_conf=a.flink_conf,
        flink_overrides=overrides,
        delivery={o: getattr(a, f"{o.replace('-', '_')}_delivery") for o in names.KAFKA_OUTPUTS},
        clock=a.clock,
        sink_linger_ms=a.sink_linger_ms,
        start_from=start_from,
        kafka_config=a.kafka_config,
        return_address_prefix=_return_address_prefix(ap, a.return_address_prefix, a.kafka_config),
        archive_compact_every=a.archive_compact_every,
        archive=not a.no_archive,
        background_nice=a.background_nice,
    )


def _in_range(ap: argparse.ArgumentParser, flag: str, value: int, most: int) -> None:
    if not 0 <= value <= most:
        ap.error(f"{flag}: must be 0 to {most}, got {value}")


def _return_address_prefix(ap: argparse.ArgumentParser, given: str | None, kafka_config: Path | None) -> str:
    if given is None:
        return names.RESULTS_PREFIX if kafka_config is not None else ""
    if given and not re.fullmatch(TOPIC_PATTERN, given):
        ap.error(f"--return-address-prefix: not the start of a topic name ({TOPIC_PATTERN}): {given!r}")
    return given


def prepare(argv: list[str] | None) -> tuple[Any, JobConfig]:
    """Parse, check the broker, set up the environment and build the topology, without running it.

    Shared by ``main`` and the savepoint upgrade's staged client (``ops/upgrade.py``), which builds
    the new job while the old one still serves and submits it later.
    """
    cfg = parse_args(argv)
    # The file is read (and checked) once here, for the job's own admin calls; the Kafka tables read it
    # again for their options (kafka_security_options).
    kafka_client.use_config_file(cfg.kafka_config, "rendezvous job")
    kafka_admin.require_broker(cfg.bootstrap, "rendezvous job")  # one clear line, not a Java stack trace
    # The Kafka source fails on a topic that does not exist; nobody may have published a policy yet.
    policy_cli.ensure_policies_topic(cfg.bootstrap, cfg.policies_topic)
    # The label join's two sources, likewise: nobody may have labelled or decided anything yet.
    if cfg.labels_topic is not None:
        kafka_admin.create_topics(cfg.bootstrap, [cfg.labels_topic, cfg.decisions_topic])
    if PROMETHEUS_PORT_KEY in cfg.flink_overrides:
        put_prometheus_reporter_on_classpath()
    # PyFlink's launcher logs to one file inside site-packages by default: concurrent local jobs
    # would overwrite each other's log. Each job logs under its own state dir instead.
    log_dir = (cfg.state_dir / "log").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(log_dir))
    env = make_env(cfg)
    build_job(env, cfg)
    return env, cfg


def main(argv: list[str] | None = None) -> None:
    env, cfg = prepare(argv)
    replay = (
        " (a replay: requests already in the topics are answered again)" if cfg.start_from.replays else ""
    )
    print(
        f"rendezvous job: policy v{cfg.policy.version} ({cfg.policy.decide}), Kafka {cfg.bootstrap}, "
        f"start from {cfg.start_from} without restored state{replay}",
        flush=True,
    )
    if cfg.background_nice:
        # The embedded mini cluster runs in the JVM the environment started, a child of this process.
        background_priority.BackgroundPriority(
            lambda: procs.jvm_of(os.getpid()), cfg.background_nice, lambda m: print(m, flush=True)
        ).start()
    env.execute(f"rendezvous policy-v{cfg.policy.version}")


if __name__ == "__main__":
    main()

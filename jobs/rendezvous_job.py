"""The rendezvous job: builds the topology from a config and runs it. Nothing runs at import.

    requests ─ parse ─┐
                      ├─ union ─ key_by(request_id) ─┐
    scores ── parse ─┘                               ├─ mailbox ─ route ─┬─ results  -> each request's return address
    policies ─ broadcast (policy documents) ─────────┘                   ├─ canary   -> canary topic
                                                                         ├─ decisions-> decisions topic
      (parse errors, mailbox rejects, refused policies) ─────────────────┼─ dead letters -> dead-letters topic
                                                                         ├─ decoy archive -> JSONL files (on checkpoint)
                                                                         └─ ticks    -> scores topic (--clock log)

Ticks (``--clock log``, the default): when a wait or deadline runs out, the mailbox writes a tick into
the scores topic under the request's key, i.e. into the partition of its scores, and decides when it
reads the tick back. A decision then depends only on the order of records in Kafka, so the replay after
a restart (from the last checkpoint) decides every request as the first run did, and every score that
reached Kafka before the tick counts, however far behind the job is (README "Guarantees").

Label feedback (``decide: thompson``): labels and the job's own decisions topic, read back, are parsed
and joined by request id (``label join``); its reward events are unioned with the (tagged) policy
documents into the one broadcast input of the mailbox, which keeps the posteriors in broadcast state.

Kafka I/O uses the Flink Kafka connector through Table DDL: the source exposes partition and
offset (dead letters point back at the record) and the sink takes a per-record topic (the
return address) and key. Processing is DataStream Python with explicit uids.
``build_pipeline`` takes the raw streams and returns the outputs, so tests can swap the Kafka ends
for collections. The policies topic is read from the earliest offset on a fresh start (so a job started
without a savepoint still ends up on the newest valid published policy) and from its checkpointed
offset on a restore, consistent with the broadcast state restored next to it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udfs import names
from udfs.policy import Policy, PolicyError, load_policy
from udfs.wire import TOPIC_PATTERN

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
# (README "Guarantees": the measured latency cost and what each mode promises under faults).
DEFAULT_DELIVERY = dict.fromkeys(names.KAFKA_OUTPUTS, names.DELIVERY_AT_LEAST_ONCE)


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


@dataclass(frozen=True)
class Outputs:
    results: Any  # DataStream of Row(k, v, topic)
    canary: Any  # DataStream of Row(k, v)
    decisions: Any
    dead_letters: Any
    archive: Any  # DataStream of str (JSON lines)
    ticks: Any = None  # DataStream of Row(k, v) for the scores topic (--clock log), else None


def flatten_conf(data: Any, prefix: str = "") -> dict[str, str]:
    """Flink's YAML nests keys; Configuration wants 'a.b.c' strings."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_conf(v, f"{prefix}{k}."))
    elif isinstance(data, list):
        out[prefix[:-1]] = ";".join(str(x) for x in data)
    elif isinstance(data, bool):
        out[prefix[:-1]] = "true" if data else "false"
    elif data is not None:
        out[prefix[:-1]] = str(data)
    return out


def connector_jars() -> list[Path]:
    jars = sorted(CONNECTOR_JARS_DIR.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise SystemExit(
            f"error: no Flink Kafka connector jar in {CONNECTOR_JARS_DIR}; run `make setup` first"
        )
    return jars


def flink_configuration(cfg: JobConfig) -> dict[str, str]:
    """The project's flink-conf, plus what only the running process knows (paths, interpreter)."""
    conf = flatten_conf(yaml.safe_load(cfg.flink_conf.read_text(encoding="utf-8")) or {})
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
    return conf


PROMETHEUS_PORT_KEY = "metrics.reporter.prom.port"


def prometheus_reporter(ports: str) -> dict[str, str]:
    """Flink settings for its Prometheus reporter on a port or range ("9249", "9250-9260").

    It serves every metric of the job (the mailbox's per-model counters included) at
    ``http://<host>:<port>/metrics``, on every interface: the reporter has no host option.
    """
    if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", ports):
        raise ValueError(f"--metrics-port: expected PORT or PORT-PORT, got {ports!r}")
    return {
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        PROMETHEUS_PORT_KEY: ports,
    }


def put_prometheus_reporter_on_classpath() -> None:
    """The mini cluster finds reporter factories on the JVM's system class path only.

    Its metric registry ignores the plugins directory (the log says "Available factories: []") and
    ``pipeline.jars`` is the job's user class loader. The apache-flink wheel ships the reporter jar in
    ``pyflink/plugins/metrics-prometheus/``; PyFlink's gateway launcher appends ``HADOOP_CLASSPATH`` to
    the ``-cp`` of the JVM it starts, so the jar goes there, before the gateway starts.
    """
    import pyflink

    plugin_dir = Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus"
    jars = sorted(plugin_dir.glob("flink-metrics-prometheus-*.jar"))
    if not jars:
        raise SystemExit(f"error: no flink-metrics-prometheus jar in {plugin_dir} (needed by --metrics-port)")
    current = os.environ.get("HADOOP_CLASSPATH", "")
    os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(p for p in (current, str(jars[-1])) if p)


def build_pipeline(
    requests: Any,
    scores: Any,
    policy: Policy,
    policies: Any = None,
    labels: Any = None,
    decisions_in: Any = None,
    label_join_ttl_ms: int = 600_000,
    clock: str = names.CLOCK_LOG,
) -> Outputs:
    """Parse, union, key by request id, run the mailbox with the policies broadcast, route its output.

    Inputs: Row(value bytes, topic, partition, offset); ``policies`` carries policy documents (None: an
    empty stream, so only the startup ``policy`` applies). ``labels`` and ``decisions_in`` (the job's
    own decisions topic, read back) feed the label join, whose reward events share the broadcast input
    with the policies (None: no label join, and no thompson policy is accepted). Under ``clock`` log
    the caller must write ``Outputs.ticks`` into the topic ``scores`` comes from (tests that feed
    collections use local, which needs no loop).
    """
    from pyflink.common import Types

    from udfs import flink_fn

    parsed_requests = _parse(requests, flink_fn.KIND_REQUEST, names.UID_PARSE_REQUESTS, "parse requests")
    parsed_scores = _parse(scores, flink_fn.KIND_SCORE, names.UID_PARSE_SCORES, "parse scores")
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
    extra_dead_letters: list[Any] = []
    if feedback:
        rewards, extra_dead_letters = _label_feedback(labels, decisions_in, label_join_ttl_ms)
        broadcast_in = tagged_policies.union(rewards)
    mailbox = (
        parsed_requests.union(parsed_scores)
        .key_by(lambda row: row[1], key_type=Types.STRING())
        .connect(broadcast_in.broadcast(flink_fn.POLICIES_STATE, flink_fn.BANDIT_STATE))
        .process(
            flink_fn.MailboxFunction(policy, feedback=feedback, clock=clock),
            output_type=flink_fn.MAILBOX_OUT_TYPE,
        )
        .uid(names.UID_MAILBOX)
        .name("rendezvous mailbox")
    )
    routed = (
        mailbox.process(flink_fn.RouteFunction(), output_type=flink_fn.ROUTED_RECORD_TYPE)
        .uid(names.UID_ROUTE_MAILBOX)
        .name("route mailbox outputs")
    )
    dead_letters = parsed_requests.get_side_output(flink_fn.DEAD_LETTERS).union(
        parsed_scores.get_side_output(flink_fn.DEAD_LETTERS),
        routed.get_side_output(flink_fn.DEAD_LETTERS),
        *extra_dead_letters,
    )
    return Outputs(
        results=routed,
        canary=routed.get_side_output(flink_fn.CANARY),
        decisions=routed.get_side_output(flink_fn.DECISIONS),
        dead_letters=dead_letters,
        archive=routed.get_side_output(flink_fn.ARCHIVE),
        ticks=routed.get_side_output(flink_fn.TICKS) if clock == names.CLOCK_LOG else None,
    )


def _parse(raw: Any, kind: str, uid: str, name: str) -> Any:
    """Raw Kafka rows -> parsed rows of one kind; bad records to the DEAD_LETTERS side output."""
    from udfs import flink_fn

    return raw.process(flink_fn.ParseFunction(kind), output_type=flink_fn.PARSED_TYPE).uid(uid).name(name)


def _label_feedback(labels: Any, decisions_in: Any, label_join_ttl_ms: int) -> tuple[Any, list[Any]]:
    """Labels and decisions read back, parsed and joined by request id: (reward events, dead letters)."""
    from pyflink.common import Types

    from udfs import flink_fn

    parsed_labels = _parse(labels, flink_fn.KIND_LABEL, names.UID_PARSE_LABELS, "parse labels")
    parsed_decisions = _parse(
        decisions_in, flink_fn.KIND_DECISION, names.UID_PARSE_DECISIONS, "parse decisions"
    )
    rewards = (
        parsed_labels.union(parsed_decisions)
        .key_by(lambda row: row[1], key_type=Types.STRING())
        .process(flink_fn.LabelJoinFunction(label_join_ttl_ms), output_type=flink_fn.BROADCAST_TYPE)
        .uid(names.UID_LABEL_JOIN)
        .name("label join")
    )
    return rewards, [
        parsed_labels.get_side_output(flink_fn.DEAD_LETTERS),
        parsed_decisions.get_side_output(flink_fn.DEAD_LETTERS),
    ]


def _kafka_source_ddl(table: str, topic: str, cfg: JobConfig, startup: str = "group-offsets") -> str:
    """A raw-bytes Kafka source. ``startup`` applies only without restored state: a restore always
    continues from the offsets in the checkpoint or savepoint."""
    return f"""
        CREATE TEMPORARY TABLE `{table}` (
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{cfg.bootstrap}',
          'properties.group.id' = '{cfg.group_id}',
          'properties.isolation.level' = 'read_committed',
          'scan.startup.mode' = '{startup}',
          'properties.auto.offset.reset' = 'earliest',
          'format' = 'raw'
        )"""


def _delivery_options(delivery: str, transactional_id_prefix: str) -> str:
    """The sink's WITH options for one delivery guarantee (names.DELIVERIES)."""
    if delivery == names.DELIVERY_AT_LEAST_ONCE:
        return f"'sink.delivery-guarantee' = '{delivery}'"
    if delivery != names.DELIVERY_EXACTLY_ONCE:
        raise ValueError(f"delivery must be one of {names.DELIVERIES}, got {delivery!r}")
    # POOLING reuses a few transactional ids per subtask instead of one new id per checkpoint (the
    # default), which would pile up producer-id state on the broker every 2 s; it needs the
    # ListTransactions API (Kafka >= 3.0; the project's broker is 3.9).
    return f"""'sink.delivery-guarantee' = '{delivery}',
          'sink.transactional-id-prefix' = '{transactional_id_prefix}',
          'sink.transaction-naming-strategy' = 'POOLING',
          'properties.transaction.timeout.ms' = '{KAFKA_TRANSACTION_TIMEOUT_MS}'"""


def _kafka_sink_ddl(
    table: str,
    cfg: JobConfig,
    topic: str | None,
    uid: str,
    output: str,
) -> str:
    routed = topic is None
    columns = "`k` STRING, `v` STRING" + (", `topic` STRING METADATA" if routed else "")
    target = f"'topic-pattern' = '{TOPIC_PATTERN}'" if routed else f"'topic' = '{topic}'"
    delivery = _delivery_options(
        cfg.delivery.get(output, names.DELIVERY_AT_LEAST_ONCE),
        names.transactional_id_prefix(cfg.group_id, uid),
    )
    return f"""
        CREATE TEMPORARY TABLE `{table}` ({columns}) WITH (
          'connector' = 'kafka',
          {target},
          'properties.bootstrap.servers' = '{cfg.bootstrap}',
          'properties.linger.ms' = '0',
          'key.format' = 'raw',
          'key.fields' = 'k',
          'value.format' = 'raw',
          'value.fields-include' = 'EXCEPT_KEY',
          {delivery}
        )"""


def build_job(env: Any, cfg: JobConfig) -> None:
    """The whole topology on ``env``: Kafka in, the pipeline, Kafka and files out."""
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import FileSink, OutputFileConfig, RollingPolicy
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(env)

    def read(table: str, topic: str, uid: str, startup: str = "group-offsets") -> Any:
        t_env.execute_sql(_kafka_source_ddl(table, topic, cfg, startup))
        _uid_prefix(t_env, uid)
        return t_env.to_data_stream(
            t_env.sql_query(f"SELECT `value`, `topic`, `partition`, `offset` FROM `{table}`")
        )

    requests = read("requests_in", cfg.requests_topic, names.UID_KAFKA_REQUESTS_IN)
    scores = read("scores_in", cfg.scores_topic, names.UID_KAFKA_SCORES_IN)
    # Policies from the earliest offset on a fresh start: the newest valid published version wins
    # (documents at or below the version in force are refused as stale, again, as dead letters).
    policies = read("policies_in", cfg.policies_topic, names.UID_KAFKA_POLICIES_IN, "earliest-offset")
    # Label feedback for `decide: thompson`: labels, and the job's own decision records read back (the
    # mailbox cannot feed its own broadcast input inside one job graph; Kafka closes the loop).
    labels = decisions_in = None
    if cfg.labels_topic is not None:
        labels = read("labels_in", cfg.labels_topic, names.UID_KAFKA_LABELS_IN)
        decisions_in = read("decisions_in", cfg.decisions_topic, names.UID_KAFKA_DECISIONS_IN)

    out = build_pipeline(
        requests, scores, cfg.policy, policies, labels, decisions_in, cfg.label_join_ttl_ms, cfg.clock
    )

    archive_sink = (
        FileSink.for_row_format(str(cfg.archive_dir.resolve()), Encoder.simple_string_encoder())
        .with_output_file_config(
            OutputFileConfig.builder().with_part_prefix("part").with_part_suffix(".jsonl").build()
        )
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .build()
    )
    out.archive.sink_to(archive_sink).uid(names.UID_SINK_ARCHIVE).name("decoy archive")

    sinks = [
        ("results_out", None, out.results, names.UID_KAFKA_RESULTS_OUT, names.OUTPUT_RESULTS),
        ("canary_out", cfg.canary_topic, out.canary, names.UID_KAFKA_CANARY_OUT, names.OUTPUT_CANARY),
        (
            "decisions_out",
            cfg.decisions_topic,
            out.decisions,
            names.UID_KAFKA_DECISIONS_OUT,
            names.OUTPUT_DECISIONS,
        ),
        (
            "dead_letters_out",
            cfg.dead_letters_topic,
            out.dead_letters,
            names.UID_KAFKA_DEAD_LETTERS_OUT,
            names.OUTPUT_DEAD_LETTERS,
        ),
    ]
    if out.ticks is not None:
        # Into the scores topic, keyed by request id like the scores (the same partition); always
        # at-least-once (the output name has no delivery flag): a tick in a transaction would wait for
        # the next checkpoint, and one written twice changes nothing.
        sinks.append(
            ("ticks_out", cfg.scores_topic, out.ticks, names.UID_KAFKA_TICKS_OUT, names.OUTPUT_TICKS)
        )
    for table, topic, stream, uid, output in sinks:
        t_env.execute_sql(_kafka_sink_ddl(table, cfg, topic, uid, output))
        _uid_prefix(t_env, uid)  # one statement set per sink: each is translated under its own prefix
        statements = t_env.create_statement_set()
        statements.add_insert(table, t_env.from_data_stream(stream))
        statements.attach_as_datastream()


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
            overrides.update(prometheus_reporter(a.metrics_port))
        except ValueError as e:
            ap.error(str(e))
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
    )


def prepare(argv: list[str] | None) -> tuple[Any, JobConfig]:
    """Parse, check the broker, set up the environment and build the topology, without running it.

    Shared by ``main`` and the savepoint upgrade's staged client (``ops/upgrade.py``), which builds
    the new job while the old one still serves and submits it later.
    """
    cfg = parse_args(argv)
    from ops import kafka_admin

    kafka_admin.require_broker(cfg.bootstrap, "rendezvous job")  # one clear line, not a Java stack trace
    # The Kafka source fails on a topic that does not exist; nobody may have published a policy yet.
    from ops.policy_cli import ensure_policies_topic

    ensure_policies_topic(cfg.bootstrap, cfg.policies_topic)
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
    print(
        f"rendezvous job: policy v{cfg.policy.version} ({cfg.policy.decide}), Kafka {cfg.bootstrap}",
        flush=True,
    )
    env.execute(f"rendezvous policy-v{cfg.policy.version}")


if __name__ == "__main__":
    main()

"""The project's replacement of the Kafka connector's ``DefaultKafkaSinkContext`` (deps/kafka-sink-context).

Pinned here: the upstream class still makes a producer per new topic (the day it stops, the first test
fails and the module goes); the job's ``pipeline.jars`` order makes the job load the project's class;
and the class answers what the connector's does (each topic's partitions, sorted), from a cache the
second time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs import rendezvous_job
from ops import kafka_admin

PROBE = Path(__file__).parent / "java" / "SinkContextProbe.java"
UPSTREAM_CLASS = "org.apache.flink.connector.kafka.sink.DefaultKafkaSinkContext"
KAFKA_JARS = rendezvous_job.REPO_ROOT / "build" / "jars" / "kafka"

pytestmark = pytest.mark.skipif(shutil.which("javap") is None, reason="needs a JDK (javap, java)")


def _connector_jar() -> Path:
    return next(p for p in rendezvous_job.connector_jars() if p.name.startswith("flink-sql-connector-kafka-"))


def _javap(jar: Path, *flags: str) -> str:
    return subprocess.run(
        ["javap", *flags, "-cp", str(jar), UPSTREAM_CLASS], check=True, capture_output=True, text=True
    ).stdout


def test_upstream_context_still_makes_and_closes_a_producer_per_new_topic() -> None:
    """If this fails, the connector no longer does it: drop deps/kafka-sink-context and SINK_CONTEXT_JAR."""
    code = _javap(_connector_jar(), "-c", "-p")
    fetch = code[code.index("fetchPartitionsForTopic(java.lang.String);") :]
    assert 'producer/KafkaProducer."<init>"' in fetch
    assert "Producer.close" in fetch


def test_the_replacement_has_the_upstream_signatures() -> None:
    """Same public and protected members: the connector's writer builds and calls it unchanged."""

    def members(jar: Path) -> set[str]:
        lines = _javap(jar, "-protected").splitlines()
        return {line.strip() for line in lines if line.strip().endswith(";")}

    fix = rendezvous_job.CONNECTOR_JARS_DIR / rendezvous_job.SINK_CONTEXT_JAR
    upstream = members(_connector_jar())
    assert "public int[] getPartitionsForTopic(java.lang.String);" in upstream
    assert members(fix) == upstream


def test_the_jobs_jars_put_the_replacement_first() -> None:
    jars = [p.name for p in rendezvous_job.connector_jars()]
    assert jars[0] == rendezvous_job.SINK_CONTEXT_JAR
    assert [n for n in jars if n.startswith("flink-sql-connector-kafka-")]  # after it: it gives way
    assert rendezvous_job.ARCHIVE_JAR in jars  # the archive's Parquet sink, which shares no class with either


def _probe(bootstrap: str, class_path: list[Path], topics: list[str]) -> tuple[str, list[tuple[str, str]]]:
    slf4j = sorted(KAFKA_JARS.glob("slf4j-api-*.jar"))
    cp = ":".join(str(p) for p in [*class_path, *slf4j])
    out = subprocess.run(
        ["java", "-cp", cp, str(PROBE), bootstrap, *topics],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    source = re.search(r"^source (\S+)$", out, re.M)
    assert source is not None, out
    answers = re.findall(r"^topic (\S+) (\[[^\]]*\]) \d+$", out, re.M)
    return source.group(1), answers


def test_the_replacement_serves_the_job_and_answers_each_topics_partitions(kafka_bootstrap: str) -> None:
    kafka_admin.create_topics(kafka_bootstrap, ["sink-context-three"], partitions=3)
    kafka_admin.create_topics(kafka_bootstrap, ["sink-context-one"], partitions=1)
    topics = ["sink-context-three", "sink-context-one"]
    expected = [("sink-context-three", "[0, 1, 2]"), ("sink-context-one", "[0]")] * 2

    source, answers = _probe(kafka_bootstrap, rendezvous_job.connector_jars(), topics)
    assert source.endswith(rendezvous_job.SINK_CONTEXT_JAR)
    assert answers == expected

    # The connector's own class, alone on the class path, gives the same answers.
    source, answers = _probe(kafka_bootstrap, [_connector_jar()], topics)
    assert source.endswith(_connector_jar().name)
    assert answers == expected

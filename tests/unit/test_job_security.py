"""The job on a secured broker, without Flink or a broker: ``--kafka-config`` reaches every Kafka table's
options (with the connector's shaded login module), nothing changes without it, and a return address
outside the results topics the job role may write becomes a dead letter, not a refused write.
On the real broker: tests/integration/test_secure_broker.py and tests/e2e/test_secure_stack.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs import rendezvous_job as rj
from ops import kafka_client, kafka_security
from udfs import names
from udfs.rendezvous_logic import Topics
from udfs.testing import Harness

POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
SHADED_SCRAM = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"


def cfg(*args: str) -> rj.JobConfig:
    return rj.parse_args(["--policy", str(POLICY), "--bootstrap", "127.0.0.1:9", *args])


@pytest.fixture
def job_properties(tmp_path: Path) -> Path:
    path = tmp_path / "job.properties"
    kafka_client.write_client_properties(path, kafka_security.scram_security("job", "it's-secret"))
    return path


def all_ddls(c: rj.JobConfig) -> list[str]:
    sinks = [rj._kafka_sink_ddl(uid, c, uid, delivery) for uid, delivery, _ in rj.kafka_sinks(c)]
    return [*rj.source_ddls(c).values(), *sinks]


def options(ddl: str) -> dict[str, str]:
    return {k: v.replace("''", "'") for k, v in re.findall(r"'([\w.-]+)' = '((?:[^']|'')*)'", ddl)}


def test_every_kafka_table_authenticates_with_the_files_credentials(job_properties: Path) -> None:
    c = cfg(
        "--kafka-config",
        str(job_properties),
        "--labels-topic",
        "labels",
        "--results-delivery",
        "exactly-once",
    )
    ddls = all_ddls(c)
    assert len(ddls) == 7  # requests, scores, policies, labels, decisions in; two sinks
    for ddl in ddls:
        opts = options(ddl)
        assert opts["properties.security.protocol"] == "SASL_PLAINTEXT"
        assert opts["properties.sasl.mechanism"] == "SCRAM-SHA-512"
        assert opts["properties.sasl.jaas.config"] == (
            f'{SHADED_SCRAM} required username="job" password="it\'s-secret";'
        )
    assert c.kafka_config == job_properties
    assert "it's-secret" not in repr(c)  # the config keeps the file's path, not the password


def test_without_a_file_the_tables_are_what_they_were(job_properties: Path) -> None:
    for ddl in all_ddls(cfg()):
        assert "security.protocol" not in ddl and "sasl" not in ddl
    plain, secured = cfg(), cfg("--kafka-config", str(job_properties))
    strip = re.compile(r"\n\s*'properties\.(security|sasl)[^\n]*")
    assert [strip.sub("", d) for d in all_ddls(secured)] == all_ddls(plain)


def test_the_return_address_prefix_defaults_to_the_results_topics_with_a_file(job_properties: Path) -> None:
    assert cfg().return_address_prefix == ""
    assert cfg("--kafka-config", str(job_properties)).return_address_prefix == names.RESULTS_PREFIX
    assert (
        cfg("--kafka-config", str(job_properties), "--return-address-prefix", "").return_address_prefix == ""
    )
    assert cfg("--return-address-prefix", "answers.").return_address_prefix == "answers."
    with pytest.raises(SystemExit):
        cfg("--return-address-prefix", "no spaces")


def test_a_bad_file_stops_the_job_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "job.properties"
    bad.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-1\n")
    c = cfg("--kafka-config", str(bad))
    with pytest.raises(SystemExit) as e:
        rj.source_ddls(c)
    assert str(
        e.value
    ) == f"error: rendezvous job: {bad}: sasl.mechanism: unknown mechanism 'SCRAM-SHA-1' " + (
        "(one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN)"
    )


def test_a_return_address_outside_the_prefix_is_a_dead_letter_not_a_write() -> None:
    h = Harness({"version": 1, "deadline_ms": 100, "models": [{"id": "m", "role": "incumbent"}]},
                topics=Topics(results_prefix="results"))  # fmt: skip
    h.send_request("r-ok", return_address="results.client.x")
    h.send_request("r-bad", return_address="policies")
    h.send_score("r-ok", "m", {"label": 1})
    h.send_score("r-bad", "m", {"label": 1})
    h.advance_by(2_000)
    assert [r["request_id"] for r in h.results] == ["r-ok"]
    (dead,) = [d for d in h.dead_letters if d["request_id"] == "r-bad" and d["source_topic"] == "requests"]
    assert dead["reason"] == names.REASON_BAD_RETURN_ADDRESS
    assert "must start with 'results'" in dead["detail"]
    assert '"return_address":"policies"' in dead["raw"].replace(" ", "")


def test_without_a_prefix_any_return_address_is_answered() -> None:
    h = Harness({"version": 1, "deadline_ms": 100, "models": [{"id": "m", "role": "incumbent"}]})
    h.send_request("r-1", return_address="policies")
    h.send_score("r-1", "m", {"label": 1})
    assert [r["request_id"] for r in h.results] == ["r-1"]

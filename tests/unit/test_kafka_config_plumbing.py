"""``--kafka-config`` reaches the Kafka clients of the commands beyond the job, runners, load generator,
labeller and policy CLI: ``eval collect``, ``eval drift --every --bootstrap`` and ``cluster upgrade``'s
check of the policies topic; and ``make demo TLS=1``'s flag reaches the broker. No broker: each client
call is replaced by one that records the security it would have used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluation import cli as eval_cli
from harness import demo
from ops import cluster, kafka_client, kafka_security, upgrade
from udfs import names


@pytest.fixture(autouse=True)
def _no_process_security() -> Any:
    """Each command sets the process's security from its file; put it back after each test."""
    with kafka_client.security_context(None):
        yield


def role_file(tmp_path: Path, role: str) -> Path:
    path = tmp_path / f"{role}.properties"
    kafka_client.write_client_properties(path, kafka_security.scram_security(role, f"{role}-secret"))
    return path


def test_eval_collect_reads_the_topics_as_the_files_principal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str | None]] = []

    def read(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        security = kafka_client.current_security()
        seen.append((topic, security.username if security else None))
        return [{"request_id": "r-1"}]

    monkeypatch.setattr(eval_cli, "read_json_topic", read)
    operator = role_file(tmp_path, names.ROLE_OPERATOR)
    argv = ["collect", "--bootstrap", "b:9", "--out", str(tmp_path / "out"), "--kafka-config", str(operator)]
    assert eval_cli.main(argv) == 0
    topics = (names.TOPIC_DECISIONS, names.TOPIC_CANARY, names.TOPIC_LABELS)
    assert seen == [(t, names.ROLE_OPERATOR) for t in topics]
    # the operator role may read each of them on a secured broker
    readable = {g.name for g in kafka_security.role_grants(names.ROLE_OPERATOR) if "READ" in g.operations}
    assert set(topics) <= readable
    seen.clear()
    with kafka_client.security_context(None):
        assert eval_cli.main(argv[:-2]) == 0
    assert seen == [(t, None) for t in topics]


def test_eval_drift_watch_publishes_alerts_as_the_files_principal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    def publisher(bootstrap: str, topic: str) -> Any:
        security = kafka_client.current_security()
        seen.append(security.username if security else None)
        return (lambda _alerts: None), (lambda: None)

    monkeypatch.setattr(eval_cli, "alert_publisher", publisher)
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("")
    operator = role_file(tmp_path, names.ROLE_OPERATOR)
    argv = ["drift", "--every", "1s", "--iterations", "1", "--decisions", str(decisions),
            "--bootstrap", "b:9", "--kafka-config", str(operator)]  # fmt: skip
    assert eval_cli.main(argv) == 0
    assert seen == [names.ROLE_OPERATOR]
    writable = {g.name for g in kafka_security.role_grants(names.ROLE_OPERATOR) if "WRITE" in g.operations}
    assert names.TOPIC_ALERTS in writable


def test_eval_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-1\n")
    with pytest.raises(SystemExit) as e:
        eval_cli.main(["collect", "--bootstrap", "b:9", "--out", str(tmp_path), "--kafka-config", str(bad)])
    assert str(e.value) == (
        f"error: rendezvous eval collect: {bad}: sasl.mechanism: unknown mechanism 'SCRAM-SHA-1' "
        "(one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN)"
    )


def test_the_upgrade_reads_the_policies_topic_with_its_own_file_else_the_jobs(tmp_path: Path) -> None:
    job, operator = role_file(tmp_path, names.ROLE_JOB), role_file(tmp_path, names.ROLE_OPERATOR)
    assert upgrade.policies_reader(["--group-id", "g"]) is None  # a broker without authentication
    from_job = upgrade.policies_reader(["--kafka-config", str(job), "--group-id", "g"])
    assert from_job is not None and from_job.username == names.ROLE_JOB
    assert upgrade.policies_reader([f"--kafka-config={job}"]) == from_job
    with kafka_client.security_context(kafka_client.load_client_properties(operator)):
        mine = upgrade.policies_reader(["--kafka-config", str(job)])
    assert mine is not None and mine.username == names.ROLE_OPERATOR
    with pytest.raises(
        upgrade.UpgradeRefused, match=r"the running job's --kafka-config: .*missing\.properties"
    ):
        upgrade.policies_reader(["--kafka-config", str(tmp_path / "missing.properties")])


def test_cluster_upgrade_takes_kafka_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def main_upgrade(
        cl: Any, policy: Path, flink_conf: Any, extra: list[str], check: bool, as_json: bool
    ) -> int:
        security = kafka_client.current_security()
        seen.append((security.username if security else None, extra, check))
        return 0

    monkeypatch.setattr(upgrade, "main_upgrade", main_upgrade)
    operator = role_file(tmp_path, names.ROLE_OPERATOR)
    argv = [
        "upgrade",
        "--dir",
        str(tmp_path),
        "--policy",
        "p.yaml",
        "--check",
        "--kafka-config",
        str(operator),
    ]
    assert cluster.main([*argv, "-D", "x=1"]) == 0
    assert seen == [(names.ROLE_OPERATOR, ["-D", "x=1"], True)]


def test_the_demos_tls_flag_goes_with_secure(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    runs: list[dict[str, Any]] = []

    def run(*_args: Any, **kw: Any) -> int:
        runs.append(kw)
        return 0

    monkeypatch.setattr(demo, "run", run)
    assert demo.main(["--secure", "--tls"]) == 0
    assert demo.main(["--runners", "processes"]) == 0
    assert runs == [
        {"secure": True, "tls": True, "runners": "one"},
        {"secure": False, "tls": False, "runners": "processes"},
    ]
    with pytest.raises(SystemExit):
        demo.main(["--tls"])
    assert "--tls goes with --secure" in capsys.readouterr().err

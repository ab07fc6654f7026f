"""The job's per-model counters, scraped from its Prometheus endpoint (``--metrics-port``), which
listens on loopback only unless ``--metrics-host`` says otherwise."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness import degrade_scenario, stack
from ops import kafka_admin, kafka_client, procs
from tests.e2e.conftest import TopicReader, request_record, score_record
from udfs import model_metrics

pytestmark = pytest.mark.e2e

MODELS = ("gbt", "logreg", "tree", "base")
POLICY = {
    "version": 1,
    "deadline_ms": 1500,
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 600},
        {"id": "logreg", "role": "challenger", "wait_ms": 1000},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
    "late_window_ms": 300,
    "dedupe_retention_ms": 1200,  # its expiry timer flushes the batched counters after the last close
}


@pytest.fixture(scope="module")
def job(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tag = uuid.uuid4().hex[:8]
    base: Path = tmp_path_factory.mktemp(f"metrics-{tag}")
    topics = {
        k: f"{k}-{tag}" for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters")
    }
    kafka_admin.create_topics(kafka_bootstrap, list(topics.values()))
    (base / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    port = procs.free_port()
    processes = stack.Processes()
    try:
        p = stack.start_job(
            base / "policy.yaml", kafka_bootstrap, base / "archive", base / "flink", base / "job.log", processes,
            extra_args=[
                "--requests-topic", topics["requests"], "--scores-topic", topics["scores"],
                "--canary-topic", topics["canary"], "--decisions-topic", topics["decisions"],
                "--dead-letters-topic", topics["dead-letters"], "--group-id", f"rendezvous-{tag}",
                "--metrics-port", str(port),
            ],
        )  # fmt: skip
        stack.wait_until_answering(kafka_bootstrap, p, requests_topic=topics["requests"])
        yield {"port": port, "topics": topics, "job": p}
    finally:
        processes.stop_all()


def test_per_model_counters_match_the_decision_log(kafka_bootstrap: str, job: dict) -> None:
    topics, port = job["topics"], job["port"]
    producer = kafka_client.producer(kafka_bootstrap, client_id="test-metrics", linger_ms=0)

    def send(topic: str, rec: dict) -> None:
        producer.send(topics[topic], key=rec["request_id"].encode(), value=json.dumps(rec).encode())

    run = uuid.uuid4().hex[:6]
    # r0..r3: gbt answers first (wins), the others after it (late); r4: gbt fails, logreg wins;
    # r5: nobody answers (no_answer, a timeout for every model).
    for i in range(4):
        rid = f"{run}-r{i}"
        send("requests", request_record(rid, topics["results"]))
        producer.flush()
        time.sleep(0.05)
        for m in MODELS:
            send("scores", score_record(rid, m, probability=0.8))
        producer.flush()
    rid = f"{run}-r4"
    send("requests", request_record(rid, topics["results"]))
    send("scores", score_record(rid, "gbt", status="error"))
    send("scores", score_record(rid, "logreg", probability=0.3))
    send("requests", request_record(f"{run}-r5", topics["results"]))
    producer.flush()
    producer.finish()

    decisions = TopicReader(kafka_bootstrap, topics["decisions"])
    try:
        decisions.wait_for(
            lambda recs: sum(str(r["request_id"]).startswith(run) for r in recs) == 6, 60, "6 decisions"
        )
        decisions.settle(1.0)
        ours = [d for d in decisions.records if str(d["request_id"]).startswith(run)]
        # Everything the job closed (probes included) is what the counters must show.
        expected = model_metrics.totals(decisions.records, MODELS)
    finally:
        decisions.close()

    mine = model_metrics.totals(ours, MODELS)
    assert [mine[m]["wins"] for m in MODELS] == [4, 1, 0, 0]
    assert mine["gbt"]["errors"] == 1 and mine["tree"]["timeouts"] == 2 and mine["base"]["timeouts"] == 2
    assert mine["logreg"]["late"] == 4 and mine["gbt"]["late"] == 0

    scraped = degrade_scenario.wait_for_metrics(
        port,
        MODELS,
        lambda m: all(m[k] == {n: float(v) for n, v in expected[k].items()} for k in MODELS),
        30.0,
    )
    for m in MODELS:
        assert scraped[m] == {n: float(v) for n, v in expected[m].items()}, m


def listening_on(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses a TCP socket listens on at ``port``, from /proc/net/tcp and tcp6 (an
    IPv4-mapped IPv6 address, as Java binds 127.0.0.1, is read as the IPv4 one; "every interface" is
    0.0.0.0 or ::)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words, each in the host's byte order
            if sys.byteorder == "little":
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            found.add(ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip)
    return found


def test_the_endpoint_listens_on_loopback_only(job: dict) -> None:
    """Started with --metrics-port and no --metrics-host: 127.0.0.1 and nothing else (Flink's own
    reporter would listen on every interface). The test above scrapes the counters there."""
    port = job["port"]
    assert listening_on(port) == {ipaddress.ip_address("127.0.0.1")}
    # From this machine's address on its network, if it has one, the port is closed.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the route picks the address
            outside = s.getsockname()[0]
    except OSError:
        outside = "127.0.0.1"
    if not ipaddress.ip_address(outside).is_loopback:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            assert s.connect_ex((outside, port)) != 0, f"metrics reachable on {outside}:{port}"

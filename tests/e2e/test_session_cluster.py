"""The rendezvous job on a Flink standalone session cluster (ops/cluster.py), on the real broker.

One cluster for this test only, in a tmp dir on free ports: up, submit, answer a scripted request,
status, cancel, down, and no JobManager/TaskManager PID left behind. Slow (~1-2 min on 2 cores).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from ops import cluster as cluster_mod
from ops import kafka_admin, kafka_client, procs
from tests.e2e.conftest import TopicReader, request_record, score_record

pytestmark = pytest.mark.e2e

POLICY = {
    "version": 11,
    "deadline_ms": 1500,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 400},
        {"id": "logreg", "role": "challenger", "wait_ms": 800},
        {"id": "tree", "role": "backstop"},
    ],
    "on_no_answer": {"output": {"label": 0}},
}


def _request(rid: str, return_address: str) -> bytes:
    return json.dumps(request_record(rid, return_address)).encode()


def _score(rid: str, model_id: str, probability: float = 0.9, status: str = "ok") -> bytes:
    return json.dumps(score_record(rid, model_id, probability, status)).encode()


def test_session_cluster_up_submit_answer_cancel_down(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {
        k: f"{k}-{tag}" for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters")
    }
    kafka_admin.create_topics(kafka_bootstrap, list(topics.values()))
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(POLICY))
    ports = {opt: procs.free_port() for opt in cluster_mod.PORT_KEYS}
    assert len(set(ports.values())) == len(ports)
    cl = cluster_mod.Cluster(tmp_path / "cluster")
    recorded: set[int] = set()
    producer = kafka_client.producer(kafka_bootstrap, client_id="test-session", linger_ms=0)
    results = TopicReader(kafka_bootstrap, topics["results"])
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        try:
            cl.up(ports)
        finally:
            recorded.update(p for ps in cl.pids().values() for p in ps)
        timings["up"] = time.monotonic() - t0
        assert len(cl.live_pids()) == 2  # one JobManager, one TaskManager

        t0 = time.monotonic()
        job_id = cl.submit(
            policy_path, kafka_bootstrap,
            ["--requests-topic", topics["requests"], "--scores-topic", topics["scores"],
             "--canary-topic", topics["canary"], "--decisions-topic", topics["decisions"],
             "--dead-letters-topic", topics["dead-letters"], "--group-id", f"rendezvous-{tag}",
             # Fresh topics, and the records below are sent before the job is RUNNING: a replay from
             # the beginning (the default would start at the end of the topics and miss them).
             "--start-from", "earliest"],
        )  # fmt: skip
        timings["submit"] = time.monotonic() - t0
        assert len(job_id) == 32

        # The job reads from the earliest offset (--start-from earliest), so records sent before it is
        # RUNNING still count.
        preferred, fallback = f"preferred-{tag}", f"fallback-{tag}"
        producer.send(
            topics["requests"], key=preferred.encode(), value=_request(preferred, topics["results"])
        )
        producer.send(topics["scores"], key=preferred.encode(), value=_score(preferred, "gbt", 0.8))
        producer.flush()
        results.wait_for(lambda _: bool(results.for_id(preferred)), 180.0, f"a result for {preferred}")
        timings["first_answer"] = time.monotonic() - t0
        res = results.for_id(preferred)[0]
        assert (res["model_id"], res["reason"], res["trigger"]) == ("gbt", "preferred", "score")
        assert res["output"] == {"label": 1, "probability": 0.8}
        assert res["policy_version"] == POLICY["version"]

        # Warm: the incumbent fails, the challenger answers at once.
        producer.send(topics["requests"], key=fallback.encode(), value=_request(fallback, topics["results"]))
        producer.send(topics["scores"], key=fallback.encode(), value=_score(fallback, "gbt", status="error"))
        producer.send(topics["scores"], key=fallback.encode(), value=_score(fallback, "logreg", 0.3))
        producer.flush()
        results.wait_for(lambda _: bool(results.for_id(fallback)), 30.0, f"a result for {fallback}")
        res = results.for_id(fallback)[0]
        assert (res["model_id"], res["reason"]) == ("logreg", "fallback")
        assert res["failed"] == ["gbt"]

        states = {j["jid"]: j["state"] for j in cl.jobs()}
        assert states.get(job_id) == "RUNNING", states

        cl.cancel(job_id)
        procs.wait_for(
            lambda: {j["jid"]: j["state"] for j in cl.jobs()}.get(job_id) == "CANCELED", 60.0, "job CANCELED"
        )

        t0 = time.monotonic()
        stopped = cl.down()
        timings["down"] = time.monotonic() - t0
        assert set(stopped) == recorded
        assert not [p for p in recorded if procs.pid_alive(p)]
        print(f"session cluster timings (s): {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}")
    except Exception:
        print(cl.log_tail(60))
        raise
    finally:
        producer.finish()
        results.close()
        if any(cl.ours(p) for p in recorded):
            try:
                cl.down()
            except Exception as e:  # fall through to stopping our own PIDs
                print(f"cluster down failed: {e}")
        for pid in recorded:  # only the JVMs this test started (their cmdline names our conf dir)
            if cl.ours(pid):
                procs.stop_pid(pid, grace_s=10.0)
    assert not [p for p in recorded if procs.pid_alive(p)]

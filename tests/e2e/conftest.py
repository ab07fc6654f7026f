"""End-to-end fixtures: the real rendezvous job (PyFlink mini cluster) on the real broker.

Each test module gets its own job on its own topics, so modules never see each other's records.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import stack
from ops import kafka_admin, kafka_client, policy_cli

# The tests' jobs checkpoint every 2 s, not every 10 s (flink-conf/): the archive (and exactly-once output)
# shows at a checkpoint, and a test that checks it waits for one. What flink-conf/ ships runs in
# `make demo`, `make bench`, `make faults` and the session-cluster tests.
CHECKPOINT_INTERVAL = "2s"

# The default policy's models with generous waits: the stack tests are about answers, once, and the
# archive, not about speed, and must hold on a busy 2-core CI machine.
STACK_POLICY: dict[str, Any] = {
    "version": 2,
    "deadline_ms": 2000,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 800},
        {"id": "logreg", "role": "challenger", "wait_ms": 1400},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
}


def now_ms() -> int:
    """This machine's wall clock in whole milliseconds (what the producer stamps records with)."""
    return time.time_ns() // 1_000_000


def request_record(rid: str, return_address: str, **extra: Any) -> dict[str, Any]:
    """A well-formed request, as a client would send it."""
    return {"request_id": rid, "return_address": return_address, "sent_at_ms": int(time.time() * 1000),
            "features": {"amount": 12.5}, **extra}  # fmt: skip


def score_record(rid: str, model_id: str, probability: float = 0.9, status: str = "ok") -> dict[str, Any]:
    """A scripted model's score: ok with a label and probability, or an error."""
    score: dict[str, Any] = {
        "request_id": rid, "model_id": model_id, "model_version": f"{model_id}-test",
        "status": status, "scored_at_ms": int(time.time() * 1000), "latency_ms": 1.0,
    }  # fmt: skip
    if status == "ok":
        score["output"] = {"label": int(probability >= 0.5), "probability": probability}
    else:
        score["error"] = "scripted failure"
    return score


# Topics a job test creates for itself (suffix: the test's tag), and the job flag naming each.
JOB_TOPICS = ("requests", "scores", "results", "canary", "decisions", "dead-letters", "policies")
TOPIC_FLAGS = {k: f"--{k}-topic" for k in (*JOB_TOPICS, "labels") if k != "results"}  # results: per request


def fresh_topics(bootstrap: str, tag: str, *extra: str, partitions: int = 1) -> dict[str, str]:
    """Create the job's topics (and ``extra`` ones) for ``tag``, each with ``partitions`` partitions;
    the policies topic compacted, with one, as the job's."""
    topics = {k: f"{k}-{tag}" for k in (*JOB_TOPICS, *extra)}
    kafka_admin.create_topics(bootstrap, [t for k, t in topics.items() if k != "policies"], partitions)
    policy_cli.ensure_policies_topic(bootstrap, topics["policies"])
    return topics


def topic_args(topics: dict[str, str], group: str) -> list[str]:
    """The job arguments that point it at ``topics`` with its own consumer group."""
    args = [a for k, t in topics.items() if k in TOPIC_FLAGS for a in (TOPIC_FLAGS[k], t)]
    return [*args, "--group-id", group]


@dataclass
class RunningJob:
    bootstrap: str
    tag: str
    requests: str
    scores: str
    results: str
    canary: str
    decisions: str
    dead_letters: str
    archive_dir: Path
    job: Any
    processes: stack.Processes
    producer: kafka_client.Producer
    policies: str = ""  # its own live policies topic

    def send_request(self, rid: str, **extra: Any) -> dict[str, Any]:
        req = request_record(rid, self.results, **extra)
        self.producer.send(self.requests, json.dumps(req).encode(), rid.encode())
        self.producer.flush(30)
        return req

    def send_score(self, rid: str, model_id: str, probability: float = 0.9, status: str = "ok") -> None:
        score = score_record(rid, model_id, probability, status)
        self.producer.send(self.scores, json.dumps(score).encode(), rid.encode())
        self.producer.flush(30)

    def send_raw(self, topic: str, value: bytes) -> None:
        self.producer.send(topic, value)
        self.producer.flush(30)


class TopicReader:
    """Reads one topic from the beginning and remembers everything, keyed by request id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = kafka_client.consumer(
            bootstrap, client_id="test-reader", isolation=kafka_client.READ_COMMITTED
        )
        self.consumer.assign_all([topic])
        self.records: list[dict[str, Any]] = []

    def poll(self) -> None:
        self.records.extend(json.loads(m.value() or b"") for m in self.consumer.take(1000, 0.2))

    def for_id(self, rid: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("request_id") == rid]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if predicate(self.records):
                return
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; saw {self.records[-5:]}")

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Readers:
    """A job's results, decisions and dead letters, each read from the beginning (``TopicReader``)."""

    results: TopicReader
    decisions: TopicReader
    dead_letters: TopicReader

    @classmethod
    def open(cls, bootstrap: str, results: str, decisions: str, dead_letters: str) -> Readers:
        return cls(*(TopicReader(bootstrap, t) for t in (results, decisions, dead_letters)))

    def poll(self) -> None:
        for r in (self.results, self.decisions, self.dead_letters):
            r.poll()

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()

    def close(self) -> None:
        for r in (self.results, self.decisions, self.dead_letters):
            r.close()


def new_rid(name: str) -> str:
    """A request id no other test (or earlier run on the same broker) has used."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def one_result(results: TopicReader, rid: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The first result for ``rid``, waiting for it."""
    results.wait_for(lambda _: len(results.for_id(rid)) >= 1, timeout_s, f"a result for {rid}")
    return results.for_id(rid)[0]


@pytest.fixture(scope="module")
def rendezvous_job_factory(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunningJob]]:
    """Start the real job with a given policy on fresh topics (``partitions`` each); everything is
    stopped at module end."""
    started: list[RunningJob] = []

    def start(policy: dict[str, Any], partitions: int = 1, answer_probes: bool = False) -> RunningJob:
        """``answer_probes``: the policy's models score the readiness probes at once (a policy with a
        long deadline would answer them only then)."""
        tag = uuid.uuid4().hex[:8]
        base = tmp_path_factory.mktemp(f"job-{tag}")
        topics = fresh_topics(kafka_bootstrap, tag, partitions=partitions)
        policy_path = base / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        processes = stack.Processes()
        job = stack.start_job(
            policy_path, kafka_bootstrap, base / "archive", base / "flink", base / "job.log", processes,
            extra_args=[*topic_args(topics, f"rendezvous-{tag}"), *stack.checkpoint_every(CHECKPOINT_INTERVAL)],
        )  # fmt: skip
        running = RunningJob(
            kafka_bootstrap, tag, topics["requests"], topics["scores"], topics["results"], topics["canary"],
            topics["decisions"], topics["dead-letters"], base / "archive", job, processes,
            kafka_client.producer(kafka_bootstrap, client_id="test-e2e", linger_ms=0), topics["policies"],
        )  # fmt: skip
        started.append(running)
        try:
            models = [m["id"] for m in policy["models"]] if answer_probes else []
            stack.wait_until_answering(
                kafka_bootstrap, job, requests_topic=topics["requests"], answered_by=models,
                scores_topic=topics["scores"],
            )  # fmt: skip
        except Exception:
            print(job.log_tail(60))
            raise
        return running

    yield start
    for running in started:
        running.producer.finish()
        running.processes.stop_all()

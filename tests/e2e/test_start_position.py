"""Where a job started without a checkpoint or savepoint reads from (``--start-from``), on the real broker
and the real job (issue 13, item 6: a fresh start with a new ``--group-id`` answered every request
already in the topics again).

History first, with no job running: requests with their incumbent's score, in two batches a couple of
seconds apart, and scores for requests that never come (orphans). Then, each on its own consumer group,
state and archive dirs, and its own policy version (every result carries ``policy_version``, so each job's
answers are told apart in the shared results topic):

- the default (the group's committed offsets; a new group has none, so the end of the topics) answers
  none of the history, and no old score opens a mailbox, while a request sent once the job answers is
  answered;
- ``--start-from earliest`` answers every old request, and the orphan scores come out as dead letters;
- ``--start-from <time between the batches>`` answers the second batch only.

Each job takes ~1 min to start on 2 cores.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import stack
from ops import kafka_client, procs
from tests.e2e.conftest import (
    Readers,
    fresh_topics,
    now_ms,
    one_result,
    request_record,
    score_record,
    topic_args,
)
from udfs import names

pytestmark = pytest.mark.e2e

PER_BATCH = 12
ORPHANS = 4
DEADLINE_MS = 1500
ORPHAN_TIMEOUT_MS = 1500
# After the new request's answer: longer than anything a replayed record could still be waiting for
# (a deadline, an orphan timeout, the late window), although replayed records come before the probes.
SETTLE_S = (DEADLINE_MS + ORPHAN_TIMEOUT_MS) / 1000 + 3.0


def policy(version: int) -> dict[str, Any]:
    return {
        "version": version,
        "deadline_ms": DEADLINE_MS,
        "decide": "first_in_order",
        "models": [
            {"id": "gbt", "role": "incumbent", "wait_ms": 400},
            {"id": "logreg", "role": "challenger", "wait_ms": 800},
            {"id": "tree", "role": "backstop"},
        ],
        "on_no_answer": {"output": {"label": 0}},
        "late_window_ms": 300,
        "orphan_timeout_ms": ORPHAN_TIMEOUT_MS,
    }


@dataclass
class History:
    bootstrap: str
    tag: str
    topics: dict[str, str]
    first: list[str]  # requests (each with gbt's score) written first
    second: list[str]  # ... and after ``between_ms``
    orphans: list[str]  # request ids with a score and no request
    between_ms: int  # a time between the two batches' records

    @property
    def old(self) -> list[str]:
        return [*self.first, *self.second]


@pytest.fixture(scope="module")
def history(kafka_bootstrap: str) -> History:
    tag = uuid.uuid4().hex[:8]
    topics = fresh_topics(kafka_bootstrap, tag)
    producer = kafka_client.producer(kafka_bootstrap, client_id="test-start-position", linger_ms=0)

    def send(topic: str, record: dict[str, Any]) -> None:
        rid = record["request_id"]
        producer.send(topics[topic], json.dumps(record).encode(), rid.encode())

    def batch(name: str) -> list[str]:
        rids = [f"old{name}-{tag}-{i}" for i in range(PER_BATCH)]
        for rid in rids:
            send("requests", request_record(rid, topics["results"]))
            send("scores", score_record(rid, "gbt", 0.8))
        producer.flush(30)
        return rids

    try:
        orphans = [f"orphan-{tag}-{i}" for i in range(ORPHANS)]
        for rid in orphans:
            send("scores", score_record(rid, "logreg", 0.4))
        first = batch("a")
        time.sleep(1.5)  # record timestamps are the producer's clock (CreateTime): this machine's
        between_ms = now_ms()
        time.sleep(1.5)
        second = batch("b")
    finally:
        producer.finish()
    return History(kafka_bootstrap, tag, topics, first, second, orphans, between_ms)


@pytest.fixture
def readers(history: History) -> Iterator[Readers]:
    r = Readers.open(
        history.bootstrap, *(history.topics[k] for k in ("results", "decisions", "dead-letters"))
    )
    yield r
    r.close()


@dataclass
class Job:
    process: procs.ManagedProcess
    version: int
    started_ms: int  # before the job process started: anything it wrote is stamped later


@pytest.fixture
def start_job(history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start the real job on the history's topics with a new consumer group and ``extra`` arguments,
    and wait until it answers a probe; every job is stopped (by PID) at the test's end."""
    processes = stack.Processes()

    def start(version: int, *extra: str) -> Job:
        base: Path = tmp_path_factory.mktemp(f"start-v{version}")
        (base / "policy.yaml").write_text(yaml.safe_dump(policy(version)))
        started_ms = now_ms()
        p = stack.start_job(
            base / "policy.yaml", history.bootstrap, base / "archive", base / "flink", base / "job.log", processes,
            extra_args=[*topic_args(history.topics, f"rendezvous-{history.tag}-v{version}"), *extra],
        )  # fmt: skip
        try:
            stack.wait_until_answering(history.bootstrap, p, requests_topic=history.topics["requests"])
        except Exception:
            print(p.log_tail(60))
            raise
        return Job(p, version, started_ms)

    yield start
    processes.stop_all()


def answers(readers: Readers, job: Job) -> dict[str, list[dict[str, Any]]]:
    """Results the job decided (its policy version), by request id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in readers.results.records:
        if r.get("policy_version") == job.version:
            out.setdefault(str(r["request_id"]), []).append(r)
    return out


def test_a_fresh_job_answers_only_what_is_sent_after_it_starts(
    history: History, readers: Readers, start_job: Any
) -> None:
    job = start_job(1)  # the default: --start-from committed, and the new group has committed nothing

    new = f"new-{history.tag}"
    producer = kafka_client.producer(history.bootstrap, client_id="test-start-position", linger_ms=0)
    try:
        producer.send(
            history.topics["requests"],
            json.dumps(request_record(new, history.topics["results"])).encode(),
            new.encode(),
        )
        producer.send(
            history.topics["scores"], json.dumps(score_record(new, "gbt", 0.7)).encode(), new.encode()
        )
        producer.flush(30)
    finally:
        producer.finish()
    res = one_result(readers.results, new, timeout_s=60.0)
    assert (res["model_id"], res["reason"], res["policy_version"]) == ("gbt", "preferred", 1)
    assert res["output"] == {"label": 1, "probability": 0.7}
    readers.settle(SETTLE_S)

    old = set(history.old)
    answered = answers(readers, job)
    assert not old & set(answered), f"old requests answered again: {sorted(old & set(answered))[:5]}"
    assert new in answered and len(answered[new]) == 1
    # Nothing of the history reached a mailbox: no decision for an old request, and no old score (an old
    # request's or an orphan's) waited for its request and came out as a dead letter.
    decided = {str(d["request_id"]) for d in readers.decisions.records if d.get("policy_version") == 1}
    assert new in decided
    assert not old & decided
    late_letters = [d for d in readers.dead_letters.records if int(d.get("at_ms", 0)) >= job.started_ms]
    assert not [d for d in late_letters if d.get("request_id") in old | set(history.orphans)], late_letters[
        :5
    ]


def test_start_from_earliest_replays_the_history(history: History, readers: Readers, start_job: Any) -> None:
    job = start_job(2, "--start-from", names.START_EARLIEST)
    old = set(history.old)
    readers.results.wait_for(
        lambda _: old <= set(answers(readers, job)), 90.0, "an answer to every old request from the replay"
    )
    for rid in history.old:
        (res,) = answers(readers, job)[rid]
        assert (res["model_id"], res["reason"], res["output"]) == (
            "gbt", "preferred", {"label": 1, "probability": 0.8},
        ), res  # fmt: skip
    # The old scores were read too: the orphans' waited for requests that never came.
    orphans = set(history.orphans)
    readers.dead_letters.wait_for(
        lambda recs: (
            orphans
            <= {
                str(d.get("request_id"))
                for d in recs
                if d.get("reason") == names.REASON_ORPHAN_SCORE and int(d.get("at_ms", 0)) >= job.started_ms
            }
        ),
        30.0,
        "an orphan_score dead letter for every orphan score",
    )


def test_start_from_a_time_replays_what_was_written_from_then_on(
    history: History, readers: Readers, start_job: Any
) -> None:
    when = datetime.fromtimestamp(history.between_ms / 1000, UTC).isoformat(timespec="milliseconds")
    job = start_job(3, "--start-from", when)
    second = set(history.second)
    readers.results.wait_for(
        lambda _: second <= set(answers(readers, job)), 90.0, "an answer to every request after the time"
    )
    readers.settle(SETTLE_S)
    answered = set(answers(readers, job))
    assert not set(history.first) & answered, sorted(set(history.first) & answered)[:5]

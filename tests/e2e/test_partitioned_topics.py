"""The log clock on topics with several partitions: a request's ticks land in its scores' partition.

Under ``--clock log`` a decision depends only on the order of one request's scores and ticks, which
holds only while both sit in one partition. Scores are keyed by request id and placed by Kafka's
murmur2 partitioner (ops.kafka_client's producer: librdkafka's murmur2_random, like the runners'); the
ticks sink uses the Flink connector's default partitioner (Java's murmur2) on the same key. Here the job reads four-partition topics and every decision needs
ticks: the test checks the answers and where each tick went.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ops import kafka_client
from tests.e2e.conftest import RunningJob, TopicReader, new_rid

pytestmark = pytest.mark.e2e

PARTITIONS = 4
POLICY = {
    "version": 1,
    "deadline_ms": 1200,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 300},
        {"id": "logreg", "role": "challenger", "wait_ms": 600},
        {"id": "tree", "role": "backstop"},
    ],
    "on_no_answer": {"output": {"label": 0}},
}
# What each request gets, and the answer it must lead to: every one waits for a tick.
CASES = {
    "logreg": ("logreg", "fallback", "wait_timer"),  # gbt's wait runs out
    "tree": ("tree", "backstop", "wait_timer"),  # both waits run out
    "none": (None, "no_answer", "deadline"),  # the deadline runs out
}
PER_CASE = 8


@pytest.fixture(scope="module")
def job(rendezvous_job_factory: Callable[..., RunningJob]) -> RunningJob:
    return rendezvous_job_factory(POLICY, partitions=PARTITIONS)


@pytest.fixture(scope="module")
def results(job: RunningJob) -> Iterator[TopicReader]:
    reader = TopicReader(job.bootstrap, job.results)
    yield reader
    reader.close()


def _key_partition(rid: str) -> int:
    return kafka_client.java_partition(rid.encode(), PARTITIONS)


def _scores_topic(
    job: RunningJob, want_ticks: set[str], timeout_s: float
) -> list[tuple[int, dict[str, Any]]]:
    """(partition, record) for everything in the scores topic, once every id in ``want_ticks`` has a tick."""
    consumer = kafka_client.consumer(job.bootstrap, client_id="test-partitioned")
    consumer.assign_all([job.scores])
    seen: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            seen.extend((m.partition() or 0, json.loads(m.value() or b"")) for m in consumer.take(1000, 0.2))
            if want_ticks <= {r["request_id"] for _, r in seen if "tick_due_ms" in r}:
                return seen
    finally:
        consumer.close()
    raise AssertionError(
        f"no tick in the scores topic within {timeout_s:.0f} s for some of {sorted(want_ticks)}"
    )


def test_timer_decisions_on_four_partitions_and_ticks_beside_their_scores(
    job: RunningJob, results: TopicReader
) -> None:
    sent: dict[str, str] = {}
    for i in range(PER_CASE):
        for case in CASES:
            rid = new_rid(f"part-{case}-{i}")
            job.send_request(rid)
            if case != "none":
                job.send_score(rid, case, 0.7)
            sent[rid] = case
    assert len({_key_partition(rid) for rid in sent}) > 1, "the ids must spread over several partitions"

    results.wait_for(lambda _: all(results.for_id(rid) for rid in sent), 90.0, "an answer to every request")
    results.settle(2.0)  # a second answer, if any, would show here
    got = {rid: results.for_id(rid) for rid in sent}
    assert all(len(rs) == 1 for rs in got.values()), {rid: len(rs) for rid, rs in got.items() if len(rs) != 1}
    wrong = {
        rid: (r[0]["model_id"], r[0]["reason"], r[0]["trigger"])
        for rid, r in got.items()
        if (r[0]["model_id"], r[0]["reason"], r[0]["trigger"]) != CASES[sent[rid]]
    }
    assert not wrong, wrong
    assert all(r[0]["latency_ms"] >= 300 for r in got.values())  # none decided before a wait ran out

    records = _scores_topic(job, set(sent), 30.0)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for partition, record in records:
        if record.get("request_id") in sent:
            partitions_of[record["request_id"]].add(partition)
    # Each request's scores and ticks in one partition: the one its key hashes to.
    assert {rid: sorted(ps) for rid, ps in partitions_of.items() if ps != {_key_partition(rid)}} == {}
    ticks = Counter(p for p, r in records if "tick_due_ms" in r and r["request_id"] in sent)
    assert len(ticks) > 1, f"ticks went to one partition only: {ticks}"

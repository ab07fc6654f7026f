"""The rendezvous job on a real broker, with the test itself playing the models (scripted scores).

Timings are generous (waits of hundreds of ms) so the scenarios are about policy, not speed; where
the order of events matters, the test waits for the job's answer before sending the next event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest

from ops import archive, procs
from tests.e2e.conftest import RunningJob, TopicReader, new_rid, one_result

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DEADLINE_MS = 1500
POLICY = {
    "version": 7,
    "deadline_ms": DEADLINE_MS,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 400},
        {"id": "logreg", "role": "challenger", "wait_ms": 800},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
        {"id": "mlp", "role": "shadow"},
    ],
    "on_no_answer": {"output": {"label": 0}},
    "late_window_ms": 1000,
}


@pytest.fixture(scope="module")
def job(rendezvous_job_factory: Callable[[dict[str, Any]], RunningJob]) -> RunningJob:
    return rendezvous_job_factory(POLICY)


@pytest.fixture(scope="module")
def results(job: RunningJob) -> Iterator[TopicReader]:
    reader = TopicReader(job.bootstrap, job.results)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def decisions(job: RunningJob) -> Iterator[TopicReader]:
    reader = TopicReader(job.bootstrap, job.decisions)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def dead_letters(job: RunningJob) -> Iterator[TopicReader]:
    reader = TopicReader(job.bootstrap, job.dead_letters)
    yield reader
    reader.close()


def _validate(record: dict[str, Any], schema: str) -> None:
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / schema).read_text())).validate(record)


def test_incumbent_in_time_wins_at_once(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("in-time")
    job.send_request(rid)
    job.send_score(rid, "gbt", 0.8)
    job.send_score(rid, "logreg", 0.3)
    res = one_result(results, rid)
    _validate(res, "result.schema.json")
    assert (res["model_id"], res["reason"], res["trigger"]) == ("gbt", "preferred", "score")
    assert res["output"] == {"label": 1, "probability": 0.8}
    assert res["policy_version"] == 7
    # Decided the moment gbt answered, not at gbt's 400 ms wait.
    assert res["latency_ms"] < 400


def test_slow_incumbent_falls_back_to_challenger_after_its_wait(
    job: RunningJob, results: TopicReader
) -> None:
    rid = new_rid("slow")
    job.send_request(rid)
    job.send_score(rid, "logreg", 0.2)
    res = one_result(results, rid)
    assert (res["model_id"], res["reason"], res["trigger"]) == ("logreg", "fallback", "wait_timer")
    assert res["latency_ms"] >= 400  # not before the incumbent's wait ran out
    job.send_score(rid, "gbt", 0.9)  # the incumbent, too late: must not change anything
    results.settle(1.5)
    assert len(results.for_id(rid)) == 1


def test_failed_incumbent_does_not_make_anyone_wait(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("failed")
    job.send_request(rid)
    job.send_score(rid, "gbt", status="error")
    job.send_score(rid, "logreg", 0.6)
    res = one_result(results, rid)
    assert (res["model_id"], res["reason"]) == ("logreg", "fallback")
    assert res["failed"] == ["gbt"]
    assert res["latency_ms"] < 400


def test_backstop_answers_when_the_others_do_not(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("backstop")
    job.send_request(rid)
    job.send_score(rid, "tree", 0.4)
    res = one_result(results, rid)
    assert (res["model_id"], res["reason"], res["trigger"]) == ("tree", "backstop", "wait_timer")
    assert res["latency_ms"] >= 800  # after both the incumbent's and the challenger's waits


def test_nobody_answers_gives_no_answer_at_the_deadline(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("silent")
    job.send_request(rid)
    res = one_result(results, rid)
    assert (res["model_id"], res["reason"], res["trigger"]) == (None, "no_answer", "deadline")
    assert res["output"] == {"label": 0}  # the policy's on_no_answer
    assert res["latency_ms"] >= DEADLINE_MS


def test_per_request_deadline_override(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("short")
    job.send_request(rid, deadline_ms=200)
    res = one_result(results, rid)
    assert res["reason"] == "no_answer"
    assert 200 <= res["latency_ms"] < DEADLINE_MS


def test_scores_before_their_request_are_kept(
    job: RunningJob, results: TopicReader, decisions: TopicReader
) -> None:
    rid = new_rid("early")
    job.send_score(rid, "gbt", 0.7)
    job.send_score(rid, "base", 0.6)
    results.settle(1.0)  # the job has long read both scores before the request exists
    assert results.for_id(rid) == []
    job.send_request(rid)
    res = one_result(results, rid)
    assert (res["model_id"], res["reason"]) == ("gbt", "preferred")
    assert res["latency_ms"] < 100  # nothing to wait for: decided on arrival
    decisions.wait_for(lambda _: bool(decisions.for_id(rid)), 20, "the decision log record")
    record = decisions.for_id(rid)[0]
    _validate(record, "decision.schema.json")
    gbt = next(s for s in record["scores"] if s["model_id"] == "gbt")
    assert gbt["arrived_at_ms"] < record["received_at_ms"]


def test_duplicates_and_late_scores_never_make_a_second_result(
    job: RunningJob, results: TopicReader, decisions: TopicReader, dead_letters: TopicReader
) -> None:
    rid = new_rid("dups")
    job.send_request(rid)
    job.send_score(rid, "gbt", 0.9)
    job.send_score(rid, "gbt", 0.1)  # the same model again, with another answer
    job.send_request(rid)  # the same request again
    first = one_result(results, rid)
    job.send_score(rid, "mlp", 0.5)  # after the decision: late
    job.send_score(rid, "unknown-model", 0.5)  # not in the policy
    results.settle(2.0)
    assert results.for_id(rid) == [first]
    assert first["output"]["probability"] == 0.9

    decisions.wait_for(lambda _: bool(decisions.for_id(rid)), 20, "the decision log record")
    scores = decisions.for_id(rid)[0]["scores"]
    gbt = [s for s in scores if s["model_id"] == "gbt"]
    assert [s["duplicate"] for s in gbt] == [False, True]
    assert next(s for s in scores if s["model_id"] == "mlp")["late"] is True
    assert next(s for s in scores if s["model_id"] == "unknown-model")["role"] == "unknown"

    dead_letters.wait_for(
        lambda _: any(d["reason"] == "duplicate_request" for d in dead_letters.for_id(rid)), 20,
        "the duplicate request's dead letter",
    )  # fmt: skip


def test_canary_record_pairs_official_and_canary(job: RunningJob, results: TopicReader) -> None:
    rid = new_rid("canary")
    job.send_request(rid)
    job.send_score(rid, "base", 0.1)
    job.send_score(rid, "gbt", 0.95)
    one_result(results, rid)
    canary = TopicReader(job.bootstrap, job.canary)
    try:
        canary.wait_for(lambda _: bool(canary.for_id(rid)), 20, "the canary record")
        rec = canary.for_id(rid)[0]
        _validate(rec, "canary.schema.json")
        assert rec["official"]["model_id"] == "gbt"
        assert rec["canary"]["model_id"] == "base"
        assert rec["agree"] is False  # 0.95 vs 0.1: opposite sides
    finally:
        canary.close()


def test_malformed_records_become_dead_letters_and_the_job_keeps_answering(
    job: RunningJob, results: TopicReader, dead_letters: TopicReader
) -> None:
    marker = uuid.uuid4().hex[:8]
    job.send_raw(job.requests, f"not json {marker}".encode())
    job.send_raw(job.requests, b"\xff\xfe\x00" + marker.encode())
    job.send_raw(job.requests, json.dumps({"request_id": f"bad-{marker}", "features": {}}).encode())
    job.send_raw(job.scores, json.dumps({"request_id": f"bad-{marker}", "model_id": "gbt"}).encode())
    job.send_raw(job.scores, b'{"request_id": "x", "probability": NaN}')
    dead_letters.wait_for(
        lambda recs: (
            sum(1 for d in recs if marker in d.get("raw", "") or d.get("request_id") == f"bad-{marker}") >= 3
        ),
        20,
        "dead letters for the malformed records",
    )
    mine = [
        d
        for d in dead_letters.records
        if marker in d.get("raw", "") or d.get("request_id") == f"bad-{marker}"
    ]
    for d in dead_letters.records:
        _validate(d, "dead_letter.schema.json")
        assert isinstance(d["offset"], int) and d["source_topic"] in (job.requests, job.scores)
    assert {"not_json", "missing_field"} <= {d["reason"] for d in mine}
    assert any(d["reason"] == "not_utf8" for d in dead_letters.records)
    # And the job still answers.
    rid = new_rid("after-garbage")
    job.send_request(rid)
    job.send_score(rid, "gbt", 0.5)
    assert one_result(results, rid)["model_id"] == "gbt"


def test_every_request_is_in_the_decoy_archive(job: RunningJob, results: TopicReader) -> None:
    rids = [new_rid("archived") for _ in range(20)]
    sent = {rid: job.send_request(rid) for rid in rids}
    for rid in rids:
        job.send_score(rid, "gbt", 0.5)
    results.wait_for(lambda _: all(results.for_id(r) for r in rids), 30, "results for 20 requests")
    deadline_s = 40.0  # a checkpoint (every 10 s) commits the part file
    found: dict[str, str] = {}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and len(found) < len(rids):
        _, rows = archive.query(
            job.archive_dir, "SELECT request_id, raw FROM decoy WHERE request_id LIKE 'archived-%'"
        )
        found = dict(rows)
        time.sleep(1.0)  # rows appear when a checkpoint commits the part file
    assert set(found) == set(rids)
    for rid, raw in found.items():
        assert json.loads(raw) == sent[rid]  # exactly as it arrived

    # Parquet files in the Hive partition of each request's hour (received_at_ms, UTC), typed columns.
    hours: dict[str, set[str]] = {}
    for f in archive.committed_files(job.archive_dir):
        table = pq.read_table(f)
        assert table.schema.equals(archive.ARCHIVE_SCHEMA, check_metadata=False), (f, table.schema)
        partition = f.parent.relative_to(job.archive_dir).as_posix()
        for rid, ms in zip(table["request_id"].to_pylist(), table["received_at_ms"].to_pylist(), strict=True):
            assert archive.partition_of(ms) == partition, (rid, ms, f)
            if rid in sent:
                hours.setdefault(partition, set()).add(rid)
    assert set().union(*hours.values()) == set(rids)
    # A filter on the partition columns reads that hour's files only (DuckDB's partition pruning) and
    # finds the same rows.
    busiest = max(hours, key=lambda h: len(hours[h]))
    dt, hour = busiest[3:13], int(busiest[-2:])
    in_hour = f"FROM decoy WHERE dt = DATE '{dt}' AND hour = {hour} AND request_id LIKE 'archived-%'"
    assert {r for (r,) in archive.query(job.archive_dir, f"SELECT request_id {in_hour}")[1]} == hours[busiest]
    read, total = archive.files_read(job.archive_dir, f"SELECT request_id {in_hour}")
    assert read == len(list((job.archive_dir / busiest).glob(archive.FILE_GLOB))) and read <= total

    # The same table in Flink SQL (what a cluster user runs in the SQL client) sees the same rows, and
    # its planner prunes the partitions too.
    _, flink_rows = archive.query_flink(
        job.archive_dir, "SELECT request_id, `raw` FROM decoy WHERE request_id LIKE 'archived-%'"
    )
    assert dict(flink_rows) == found
    flink_hour = f"FROM decoy WHERE dt = '{dt}' AND `hour` = {hour} AND request_id LIKE 'archived-%'"
    _, flink_in_hour = archive.query_flink(job.archive_dir, f"SELECT request_id {flink_hour}")
    assert {r for (r,) in flink_in_hour} == hours[busiest]
    _, plan = archive.query_flink(job.archive_dir, f"EXPLAIN SELECT request_id {flink_hour}")
    assert f"partitions=[{{dt={dt}, hour={busiest[-2:]}}}]" in str(plan[0][0])


def test_the_job_runs_with_the_tests_jvm_flags(job: RunningJob, flink_jvm_args: str) -> None:
    """The session's JVM_ARGS (tests/conftest.py) reach the mini cluster's JVM below the job's Python."""
    if not flink_jvm_args:
        pytest.skip("RDV_TEST_JVM_ARGS is empty: the tests' JVMs have no flags of their own to find")
    jvm = procs.jvm_of(job.job.pid)
    assert jvm is not None
    cmdline = procs.read_cmdline(jvm) or []
    assert all(flag in cmdline for flag in flink_jvm_args.split()), (flink_jvm_args, cmdline[:8])

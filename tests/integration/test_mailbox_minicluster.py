"""The Flink adapter on the PyFlink mini cluster, fed from collections instead of Kafka.

Bounded inputs end before processing-time timers fire (a mini-cluster trait), so these tests cover
what is decided on arrival: preferred answers, scores before requests, duplicates, parse errors
and the archive side output. Timer-driven paths are covered end to end on the real broker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs.rendezvous_job import build_pipeline, kafka_rows
from udfs import flink_fn, names
from udfs.policy import parse_policy

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY = parse_policy(
    {
        "version": 3,
        "deadline_ms": 60_000,
        "decide": "first_in_order",
        "models": [
            {"id": "gbt", "role": "incumbent", "wait_ms": 30_000},
            {"id": "tree", "role": "backstop"},
            {"id": "base", "role": "canary"},
        ],
    }
)


def _request(rid: str) -> bytes:
    return json.dumps(
        {"request_id": rid, "return_address": "answers", "sent_at_ms": 1, "features": {"x": 1.0}}
    ).encode()


def _score(rid: str, model: str, p: float) -> bytes:
    return json.dumps(
        {
            "request_id": rid, "model_id": model, "model_version": f"{model}-1", "status": "ok",
            "output": {"label": int(p >= 0.5), "probability": p}, "scored_at_ms": 2, "latency_ms": 0.5,
        }
    ).encode()  # fmt: skip


def _key(value: bytes) -> str | None:
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    return obj.get("request_id") if isinstance(obj, dict) else None


def _run(requests: list[bytes], scores: list[bytes]) -> dict[str, list[Any]]:
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    for k, v in {
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.pythonpath": f"{site_packages}:{REPO_ROOT}",
        "rest.port": "0",
        "parallelism.default": "1",
    }.items():
        conf.set_string(k, v)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env)

    def rows(source: int, values: list[bytes]) -> Any:
        from pyflink.common import Row

        # Keyed by request id as a producer of this project keys them; garbage has no key (routed by "").
        return env.from_collection(
            [Row(_key(v) or "", Row(_key(v), v, source, 0, i)) for i, v in enumerate(values)],
            type_info=flink_fn.KEYED_RECORD_TYPE,
        )

    out = build_pipeline(
        rows(flink_fn.SOURCE_REQUESTS, requests),
        rows(flink_fn.SOURCE_SCORES, scores),
        POLICY,
        clock=names.CLOCK_LOCAL,
    )
    # The job's own Kafka rows (k, v, topic) as its one Kafka sink gets them, and the archive.
    kafka = t_env.to_data_stream(kafka_rows(t_env, out, None))
    tagged = (
        kafka.map(lambda r: json.dumps([r[2], r[2], json.loads(r[1])]), output_type=Types.STRING())
        .union(out.archive.map(lambda s: json.dumps(["archive", None, json.loads(s)]), output_type=Types.STRING()))
    )  # fmt: skip
    collected: dict[str, list[Any]] = {"result": [], "dead": [], "archive": []}
    with tagged.execute_and_collect() as it:
        for item in it:
            kind, topic, record = json.loads(item)
            if kind == "archive":
                collected["archive"].append(record)
            elif kind == names.TOPIC_DEAD_LETTERS:
                collected["dead"].append(record)
            else:
                collected["result"].append((topic, record))
    return collected


def test_adapter_decides_routes_and_rejects_on_the_mini_cluster() -> None:
    requests = [_request("r1"), _request("r2"), b"{not json", _request("r1")]
    scores = [_score("r1", "gbt", 0.9), _score("r2", "tree", 0.2), _score("r2", "gbt", 0.4), b"[1, 2]"]
    out = _run(requests, scores)

    results = {rec["request_id"]: (topic, rec) for topic, rec in out["result"]}
    assert sorted(results) == ["r1", "r2"]  # one result each, despite the duplicate request r1
    assert len(out["result"]) == 2
    topic, r1 = results["r1"]
    assert topic == "answers"  # routed to the request's return address
    assert (r1["model_id"], r1["reason"], r1["policy_version"]) == ("gbt", "preferred", 3)
    assert results["r2"][1]["model_id"] == "gbt"  # the incumbent, whatever order the scores came in

    reasons = sorted(d["reason"] for d in out["dead"])
    assert reasons == ["duplicate_request", "not_json", "not_object"]
    assert all(d["partition"] == 0 and isinstance(d["offset"], int) for d in out["dead"])

    assert sorted(a["request_id"] for a in out["archive"]) == ["r1", "r2"]  # each request archived once
    assert {a["raw"] for a in out["archive"]} == {_request("r1").decode(), _request("r2").decode()}

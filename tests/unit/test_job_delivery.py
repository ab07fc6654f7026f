"""The job's delivery flags and what they put into the Kafka sink DDL (no Flink, no broker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs import rendezvous_job as rj
from ops import broker
from udfs import names

POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def cfg(*args: str) -> rj.JobConfig:
    return rj.parse_args(["--policy", str(POLICY), "--bootstrap", "127.0.0.1:9", *args])


def sink_ddl(c: rj.JobConfig, output: str, uid: str) -> str:
    topic = None if output == names.OUTPUT_RESULTS else f"{output}-t"
    return rj._kafka_sink_ddl(f"{output}_out", c, topic, uid, output)


def option(ddl: str, key: str) -> str | None:
    m = re.search(rf"'{re.escape(key)}' = '([^']*)'", ddl)
    return m.group(1) if m else None


def test_every_output_is_at_least_once_by_default() -> None:
    c = cfg()
    assert c.delivery == dict.fromkeys(names.KAFKA_OUTPUTS, names.DELIVERY_AT_LEAST_ONCE)
    ddl = sink_ddl(c, names.OUTPUT_RESULTS, names.UID_KAFKA_RESULTS_OUT)
    assert option(ddl, "sink.delivery-guarantee") == "at-least-once"
    assert option(ddl, "sink.transactional-id-prefix") is None


def test_exactly_once_results_use_transactions_within_the_brokers_timeout() -> None:
    c = cfg("--results-delivery", "exactly-once", "--group-id", "job-a")
    assert c.delivery[names.OUTPUT_RESULTS] == names.DELIVERY_EXACTLY_ONCE
    assert c.delivery[names.OUTPUT_DECISIONS] == names.DELIVERY_AT_LEAST_ONCE
    ddl = sink_ddl(c, names.OUTPUT_RESULTS, names.UID_KAFKA_RESULTS_OUT)
    assert option(ddl, "sink.delivery-guarantee") == "exactly-once"
    assert option(ddl, "sink.transactional-id-prefix") == f"job-a.{names.UID_KAFKA_RESULTS_OUT}"
    timeout = int(option(ddl, "properties.transaction.timeout.ms") or 0)
    props = broker.server_properties(Path("/tmp/x"), 1, 2)
    m = re.search(r"^transaction.max.timeout.ms=(\d+)$", props, re.M)
    assert m is not None
    broker_max = int(m.group(1))
    assert 0 < timeout <= broker_max  # above it, the broker refuses the producer


def test_transactional_ids_differ_per_sink_and_per_job() -> None:
    flags = [x for o in names.KAFKA_OUTPUTS for x in (f"--{o}-delivery", "exactly-once")]
    uids = {
        names.OUTPUT_RESULTS: names.UID_KAFKA_RESULTS_OUT,
        names.OUTPUT_CANARY: names.UID_KAFKA_CANARY_OUT,
        names.OUTPUT_DECISIONS: names.UID_KAFKA_DECISIONS_OUT,
        names.OUTPUT_DEAD_LETTERS: names.UID_KAFKA_DEAD_LETTERS_OUT,
    }
    prefixes = set()
    for group in ("job-a", "job-b"):
        c = cfg(*flags, "--group-id", group)
        for output, uid in uids.items():
            ddl = sink_ddl(c, output, uid)
            assert option(ddl, "sink.delivery-guarantee") == "exactly-once"
            prefixes.add(option(ddl, "sink.transactional-id-prefix"))
    assert len(prefixes) == 2 * len(uids)


def test_an_unknown_guarantee_is_refused() -> None:
    with pytest.raises(SystemExit):
        cfg("--results-delivery", "at-most-once")
    with pytest.raises(ValueError, match="delivery must be one of"):
        rj._delivery_options("at-most-once", "p")

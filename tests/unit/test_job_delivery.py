"""The job's delivery flags and what they put into the Kafka sink DDL (no Flink, no broker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs import rendezvous_job as rj
from ops import broker
from udfs import mailbox as mbx
from udfs import names

POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def cfg(*args: str) -> rj.JobConfig:
    return rj.parse_args(["--policy", str(POLICY), "--bootstrap", "127.0.0.1:9", *args])


def sink_ddls(c: rj.JobConfig) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """{sink uid: (its DDL, the mailbox output kinds it takes, None for all)}."""
    return {uid: (rj._kafka_sink_ddl(uid, c, uid, d), kinds) for uid, d, kinds in rj.kafka_sinks(c)}


def option(ddl: str, key: str) -> str | None:
    m = re.search(rf"'{re.escape(key)}' = '([^']*)'", ddl)
    return m.group(1) if m else None


def test_every_output_is_at_least_once_by_default_through_one_sink() -> None:
    c = cfg()
    assert c.delivery == dict.fromkeys(names.KAFKA_OUTPUTS, names.DELIVERY_AT_LEAST_ONCE)
    ((uid, (ddl, kinds)),) = sink_ddls(c).items()
    assert (uid, kinds) == (names.UID_KAFKA_OUT, None)  # every kind, no filter
    assert option(ddl, "sink.delivery-guarantee") == "at-least-once"
    assert option(ddl, "sink.transactional-id-prefix") is None
    assert option(ddl, "topic-pattern") is not None  # each row names its topic


def test_exactly_once_results_use_transactions_within_the_brokers_timeout() -> None:
    c = cfg("--results-delivery", "exactly-once", "--group-id", "job-a")
    assert c.delivery[names.OUTPUT_RESULTS] == names.DELIVERY_EXACTLY_ONCE
    assert c.delivery[names.OUTPUT_DECISIONS] == names.DELIVERY_AT_LEAST_ONCE
    sinks = sink_ddls(c)
    ddl, kinds = sinks[names.UID_KAFKA_OUT_EXACTLY_ONCE]
    assert kinds == (mbx.RESULT,)
    assert option(ddl, "sink.delivery-guarantee") == "exactly-once"
    assert option(ddl, "sink.transactional-id-prefix") == f"job-a.{names.UID_KAFKA_OUT_EXACTLY_ONCE}"
    # The rest, ticks included (they have no flag), stay at-least-once.
    ddl, kinds = sinks[names.UID_KAFKA_OUT]
    assert option(ddl, "sink.delivery-guarantee") == "at-least-once"
    assert kinds == (mbx.CANARY, mbx.DECISION, mbx.DEAD_LETTER, mbx.TICK)
    timeout = int(
        option(sinks[names.UID_KAFKA_OUT_EXACTLY_ONCE][0], "properties.transaction.timeout.ms") or 0
    )
    props = broker.server_properties(Path("/tmp/x"), 1, 2)
    m = re.search(r"^transaction.max.timeout.ms=(\d+)$", props, re.M)
    assert m is not None
    broker_max = int(m.group(1))
    assert 0 < timeout <= broker_max  # above it, the broker refuses the producer


def test_every_kind_goes_to_exactly_one_sink_whatever_the_flags() -> None:
    everything = {mbx.RESULT, mbx.CANARY, mbx.DECISION, mbx.DEAD_LETTER, mbx.TICK}
    for n in range(len(names.KAFKA_OUTPUTS) + 1):
        flags = [x for o in names.KAFKA_OUTPUTS[:n] for x in (f"--{o}-delivery", "exactly-once")]
        sinks = sink_ddls(cfg(*flags))
        taken = [k for _, kinds in sinks.values() for k in (kinds or everything)]
        assert sorted(taken) == sorted(everything), flags
        if n == len(names.KAFKA_OUTPUTS):
            assert sinks[names.UID_KAFKA_OUT][1] == (mbx.TICK,)  # ticks are never transactional


def test_transactional_ids_differ_per_job() -> None:
    prefixes = set()
    for group in ("job-a", "job-b"):
        c = cfg("--canary-delivery", "exactly-once", "--group-id", group)
        ddl, _ = sink_ddls(c)[names.UID_KAFKA_OUT_EXACTLY_ONCE]
        prefixes.add(option(ddl, "sink.transactional-id-prefix"))
    assert len(prefixes) == 2


def test_an_unknown_guarantee_is_refused() -> None:
    with pytest.raises(SystemExit):
        cfg("--results-delivery", "at-most-once")
    with pytest.raises(ValueError, match="delivery must be one of"):
        rj._delivery_options("at-most-once", "p")


def test_the_sink_linger_is_the_flag_in_every_sink_and_bounded() -> None:
    default = sink_ddls(cfg())[names.UID_KAFKA_OUT][0]
    assert option(default, "properties.linger.ms") == str(rj.DEFAULT_SINK_LINGER_MS)
    for ddl, _ in sink_ddls(cfg("--sink-linger-ms", "7", "--results-delivery", "exactly-once")).values():
        assert option(ddl, "properties.linger.ms") == "7"
    for bad in ("-1", str(rj.MAX_SINK_LINGER_MS + 1)):
        with pytest.raises(SystemExit):
            cfg("--sink-linger-ms", bad)

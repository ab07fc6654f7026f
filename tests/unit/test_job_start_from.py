"""Where a job without restored state starts reading (``--start-from``): the flag, its validation, and
the Kafka source DDL each position gives (no Flink, no broker). The behaviour on the real broker and job:
tests/e2e/test_start_position.py."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs import rendezvous_job as rj
from udfs import names

POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
DATA_TABLES = ("requests_in", "scores_in", "labels_in", "decisions_in")
WHEN = "2026-12-05T10:00:00Z"
WHEN_MS = int(datetime(2026, 12, 5, 10, tzinfo=UTC).timestamp() * 1000)
NOW_MS = WHEN_MS + 3_600_000  # parse_start_from's "now" in these tests: an hour after WHEN


def cfg(*args: str) -> rj.JobConfig:
    return rj.parse_args(["--policy", str(POLICY), "--bootstrap", "127.0.0.1:9", *args])


def option(ddl: str, key: str) -> str | None:
    found = re.findall(rf"'{re.escape(key)}' = '([^']*)'", ddl)
    assert len(found) <= 1, (key, ddl)
    return found[0] if found else None


def startup(ddl: str) -> tuple[str | None, str | None, str | None]:
    """(scan.startup.mode, properties.auto.offset.reset, scan.startup.timestamp-millis) of one source."""
    return (
        option(ddl, "scan.startup.mode"),
        option(ddl, "properties.auto.offset.reset"),
        option(ddl, "scan.startup.timestamp-millis"),
    )


# --- the flag ----------------------------------------------------------------------------------------


def test_the_default_is_the_groups_committed_offsets() -> None:
    assert cfg().start_from == rj.StartFrom(names.START_COMMITTED)
    assert not cfg().start_from.replays


@pytest.mark.parametrize("position", names.START_POSITIONS)
def test_each_named_position_parses_into_the_frozen_config(position: str) -> None:
    c = cfg("--start-from", position)
    assert c.start_from == rj.StartFrom(position)
    assert c.start_from.replays is (position == names.START_EARLIEST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.start_from = rj.StartFrom()  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [WHEN, "2026-12-05T10:00:00+00:00", "2026-12-05T11:00:00+01:00", "2026-12-05T05:00:00-05:00"],
)
def test_a_time_with_a_zone_is_a_timestamp_replay(text: str) -> None:
    start = rj.parse_start_from(text, now_ms=NOW_MS)
    assert start == rj.StartFrom(names.START_TIMESTAMP, WHEN_MS)
    assert start.replays
    assert str(start) == "2026-12-05T10:00:00.000+00:00"


def test_milliseconds_are_kept_and_a_time_in_the_past_parses_through_the_flag() -> None:
    assert rj.parse_start_from("2026-12-05T10:00:00.250Z", now_ms=NOW_MS).timestamp_ms == WHEN_MS + 250
    c = cfg("--start-from", "2020-01-01T00:00:00Z")
    assert c.start_from == rj.StartFrom(names.START_TIMESTAMP, 1_577_836_800_000)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("beginning", "expected committed, latest or earliest"),
        ("EARLIEST", "expected committed, latest or earliest"),
        ("", "expected committed, latest or earliest"),
        ("1733392800000", "ISO 8601"),  # epoch milliseconds: not the syntax
        ("2026-12-05", "a date and a time, with its zone"),
        ("2026-12-05T10:00:00", "a date and a time, with its zone"),  # no zone: whose 10 o'clock?
        ("2026-12-05 10:00:00Z", "a date and a time, with its zone"),
        ("2026-13-05T10:00:00Z", "ISO 8601"),
        ("1969-12-31T23:59:59Z", "before 1970"),
        ("2026-12-05T11:00:00.001Z", "in the future"),  # NOW_MS + 1 ms
    ],
)
def test_anything_else_is_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        rj.parse_start_from(text, now_ms=NOW_MS)


def test_a_bad_value_stops_the_job_with_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cfg("--start-from", "yesterday")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --start-from: "), err
    assert "'yesterday'" in err and "earliest" in err and rj.START_TIME_EXAMPLE in err


def test_a_time_in_the_future_is_refused_by_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cfg("--start-from", "2999-01-01T00:00:00Z")
    assert "in the future" in capsys.readouterr().err


def test_a_start_position_cannot_be_built_inconsistent() -> None:
    with pytest.raises(ValueError):
        rj.StartFrom("beginning")
    with pytest.raises(ValueError):
        rj.StartFrom(names.START_TIMESTAMP)  # a timestamp position needs its time
    with pytest.raises(ValueError):
        rj.StartFrom(names.START_EARLIEST, WHEN_MS)  # and only it takes one


def test_the_help_calls_earliest_and_a_time_a_replay_and_a_restore_its_checkpoints_offsets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        rj.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--start-from {committed,latest,earliest,TIME}" in text
    for phrase in (
        "WITHOUT a checkpoint or savepoint",
        "always continues from the offsets in it",
        "committed (default)",
        "the end of the topics for a group without any",
        "a REPLAY that answers the requests already in the topics again",
        "The policies topic is always read from its beginning",
    ):
        assert phrase in text, phrase


# --- the source DDL --------------------------------------------------------------------------------------


EXPECTED = {
    names.START_COMMITTED: ("group-offsets", "latest", None),
    names.START_LATEST: ("latest-offset", None, None),
    names.START_EARLIEST: ("earliest-offset", None, None),
    WHEN: ("timestamp", None, str(WHEN_MS)),
}


@pytest.mark.parametrize("flag", list(EXPECTED))
def test_every_data_source_starts_at_the_flags_position_and_policies_at_the_earliest(flag: str) -> None:
    c = dataclasses.replace(
        cfg("--labels-topic", "labels-x", "--group-id", "g1"),
        start_from=(rj.parse_start_from(flag, now_ms=NOW_MS)),
    )
    ddls = rj.source_ddls(c)
    assert set(ddls) == {*DATA_TABLES, "policies_in"}
    for table in DATA_TABLES:
        assert startup(ddls[table]) == EXPECTED[flag], table
        assert option(ddls[table], "properties.group.id") == "g1"
    assert startup(ddls["policies_in"]) == ("earliest-offset", None, None)
    topics = {t: option(d, "topic") for t, d in ddls.items()}
    assert topics == {
        "requests_in": names.TOPIC_REQUESTS,
        "scores_in": names.TOPIC_SCORES,
        "labels_in": "labels-x",
        "decisions_in": names.TOPIC_DECISIONS,
        "policies_in": names.TOPIC_POLICIES,
    }


def test_without_label_feedback_the_job_reads_requests_scores_and_policies() -> None:
    assert set(rj.source_ddls(cfg())) == {"requests_in", "scores_in", "policies_in"}


def test_no_source_falls_back_to_the_beginning_of_a_topic_unless_asked() -> None:
    """The bug of issue 13 (item 6): a new group id fell back to ``auto.offset.reset = earliest``."""
    for flag in (names.START_COMMITTED, names.START_LATEST):
        for table, ddl in rj.source_ddls(cfg("--start-from", flag, "--labels-topic", "l")).items():
            if table != "policies_in":
                assert "earliest" not in ddl, (flag, table)

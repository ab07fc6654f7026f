"""Live policy versions (udfs/policy_registry.py): accept or refuse documents, which policy decides a mailbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import names
from udfs.policy import parse_policy
from udfs.policy_registry import (
    MAX_DOCUMENT_BYTES,
    MAX_KEPT_VERSIONS,
    Accepted,
    PolicyRegistry,
    Refused,
    dead_letter,
    parse_document,
    read_state_value,
    state_value,
)
from udfs.wire_in import Source

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def doc(version: int, **extra: Any) -> dict[str, Any]:
    return {
        "version": version,
        "deadline_ms": 100,
        "models": [{"id": "gbt", "role": "incumbent", "wait_ms": 40}, {"id": "tree", "role": "backstop"}],
        **extra,
    }


def raw(version: int, **extra: Any) -> bytes:
    return json.dumps(doc(version, **extra)).encode()


BASE = parse_policy(doc(5))


# --- parse_document ---------------------------------------------------------------------------------------


def test_a_valid_document_is_the_same_policy_as_the_file_would_give() -> None:
    assert parse_document(raw(5)) == BASE
    assert parse_document(json.dumps(doc(5))) == BASE  # text as well as bytes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(None, "document: empty", id="no value"),
        pytest.param(b"\xff\xfe{}", "document: not UTF-8", id="not utf-8"),
        pytest.param(b"{nope", "document: not JSON", id="not json"),
        pytest.param(b'{"version": NaN}', "document: not JSON", id="NaN"),
        pytest.param(b"[1, 2]", "policy: must be a mapping", id="not an object"),
        pytest.param(raw(6, deadline_ms=0), "deadline_ms: must be an integer", id="bad field"),
        pytest.param(raw(6, colour="red"), "colour: unknown field", id="unknown field"),
        pytest.param(b" " * (MAX_DOCUMENT_BYTES + 1), "over the limit", id="too large"),
    ],
)
def test_a_bad_document_is_refused_with_a_message_naming_the_problem(data: Any, message: str) -> None:
    reg = PolicyRegistry(BASE)
    verdict = reg.offer(data)
    assert isinstance(verdict, Refused) and verdict.reason == names.REASON_BAD_POLICY
    assert message in verdict.detail
    assert reg.current is BASE and reg.versions == (5,)


def test_a_refused_document_names_its_version_when_it_has_one() -> None:
    bad = PolicyRegistry(BASE).offer(raw(9, deadline_ms=-1))
    assert isinstance(bad, Refused) and bad.version == 9
    assert PolicyRegistry(BASE).offer(b"{x").version is None  # type: ignore[union-attr]


# --- offer, current, policy_for -------------------------------------------------------------------------------


def test_only_a_higher_version_is_accepted() -> None:
    reg = PolicyRegistry(BASE)
    for v in (5, 4, 1):
        verdict = reg.offer(raw(v))
        assert isinstance(verdict, Refused) and verdict.reason == names.REASON_STALE_POLICY_VERSION
        assert "higher than the version in force (5)" in verdict.detail and verdict.version == v
    accepted = reg.offer(raw(7))
    assert isinstance(accepted, Accepted) and accepted.previous_version == 5 and accepted.evicted == ()
    assert reg.current.version == 7 and reg.versions == (5, 7)
    assert isinstance(reg.offer(raw(6)), Refused)  # between the two: still below the one in force
    assert isinstance(reg.offer(raw(7)), Refused)  # the same version again


def test_a_mailbox_is_decided_by_the_version_it_recorded() -> None:
    reg = PolicyRegistry(BASE)
    reg.offer(raw(6, deadline_ms=200))
    reg.offer(raw(8, deadline_ms=300))
    assert reg.policy_for(5) is BASE
    assert reg.policy_for(6).deadline_ms == 200
    assert reg.policy_for(None).version == 8  # no request yet: the version in force
    assert reg.policy_for(7).version == 8  # unknown (evicted, or an older job's file): the one in force
    assert reg.policies == (BASE, reg.policy_for(6), reg.policy_for(8))


def test_a_newer_base_file_wins_over_older_live_versions() -> None:
    # A savepoint upgrade with file v10 over a job that had accepted v6 and v8 live.
    live = [parse_policy(doc(6)), parse_policy(doc(8))]
    reg = PolicyRegistry(parse_policy(doc(10)), live)
    assert reg.current.version == 10 and reg.policy_for(8).version == 8
    assert isinstance(reg.offer(raw(9)), Refused)
    # And the reverse: an older file does not undo a newer live version.
    assert PolicyRegistry(parse_policy(doc(3)), live).current.version == 8


def test_only_the_newest_versions_are_kept() -> None:
    reg = PolicyRegistry(BASE)
    evicted: list[int] = []
    for v in range(6, 6 + MAX_KEPT_VERSIONS + 3):
        verdict = reg.offer(raw(v))
        assert isinstance(verdict, Accepted)
        evicted += verdict.evicted
    assert evicted == [6, 7, 8]
    assert len(reg.to_state()) == MAX_KEPT_VERSIONS
    assert reg.policy_for(6).version == reg.current.version  # evicted: the one in force
    assert reg.policy_for(5) is BASE  # the base is always kept


# --- broadcast state ---------------------------------------------------------------------------------------------


def test_state_round_trip_and_unreadable_entries_are_skipped() -> None:
    reg = PolicyRegistry(BASE)
    reg.offer(raw(6))
    reg.offer(raw(9, decide="majority_vote", on_no_answer={"output": {"label": 0}}))
    entries = [*reg.to_state().items(), ("7", "{broken"), ("8", json.dumps({"format": 99, "policy": doc(8)}))]
    again = PolicyRegistry.from_state(BASE, entries)
    assert again.versions == reg.versions == (5, 6, 9)
    assert again.policies == reg.policies
    assert read_state_value(None) is None
    assert read_state_value(json.dumps({"format": 1, "policy": {"version": "x"}})) is None


# --- dead letters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, b"{nope", b"\xff" * 5000, "x" * 5000, raw(1)],
    ids=["null", "text", "binary", "long text", "stale"],
)
def test_refusals_are_schema_valid_dead_letters(data: Any) -> None:
    verdict = PolicyRegistry(BASE).offer(data)
    assert isinstance(verdict, Refused)
    record = dead_letter(verdict, data, Source("policies", 0, 12), 1_000)
    schema = json.loads((SCHEMAS / "dead_letter.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(record)
    assert record["reason"] == verdict.reason and record["offset"] == 12 and record["request_id"] is None
    if isinstance(data, bytes) and data.startswith(b"\xff"):
        assert record["raw_encoding"] == "base64" and record["raw_truncated"]
    if isinstance(data, str):
        assert record["raw_truncated"] and len(record["raw"]) == 4096


def test_policy_reasons_are_dead_letter_reasons() -> None:
    assert set(names.POLICY_REASONS) <= set(names.DEAD_LETTER_REASONS)
    assert len(set(names.DEAD_LETTER_REASONS)) == len(names.DEAD_LETTER_REASONS)


# --- properties -----------------------------------------------------------------------------------------------------

models = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["gbt", "logreg", "tree", "mlp", "base"]),
            "role": st.sampled_from(["incumbent", "challenger", "backstop", "shadow", "canary"]),
        },
        optional={"weight": st.floats(0.1, 10.0), "wait_ms": st.integers(0, 100)},
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda m: m["id"],
)
documents = st.fixed_dictionaries(
    {"version": st.integers(1, 40), "deadline_ms": st.integers(100, 1000), "models": models},
    optional={
        "decide": st.sampled_from(["first_in_order", "majority_vote", "weighted_average"]),
        "late_window_ms": st.integers(0, 5000),
        "threshold": st.floats(0.0, 1.0),
        "on_no_answer": st.sampled_from(
            [{"output": None}, {"output": {"label": 0}}, {"output": {"value": 1.5}}]
        ),
    },
)
offers = st.one_of(
    documents.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=30),
    st.integers(1, 40).map(lambda v: raw(v, deadline_ms=-1)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(offers, max_size=30))
def test_any_sequence_of_documents_moves_the_version_up_only_through_valid_documents(
    docs: list[bytes],
) -> None:
    reg = PolicyRegistry(BASE)
    in_force = BASE.version
    for data in docs:
        try:
            expected = parse_document(data)
        except ValueError:
            expected = None
        verdict = reg.offer(data)
        if expected is not None and expected.version > in_force:
            assert isinstance(verdict, Accepted) and verdict.policy == expected
            in_force = expected.version
        else:
            assert isinstance(verdict, Refused)
            assert verdict.reason == (
                names.REASON_BAD_POLICY if expected is None else names.REASON_STALE_POLICY_VERSION
            )
        assert reg.current.version == in_force
        assert reg.policy_for(in_force) is reg.current
        assert len(reg.versions) <= MAX_KEPT_VERSIONS + 1
    # What the broadcast state holds rebuilds the same registry (as after a restore).
    assert PolicyRegistry.from_state(BASE, reg.to_state().items()).policies == reg.policies


@settings(max_examples=200, deadline=None)
@given(documents)
def test_a_stored_policy_reads_back_equal(document: dict[str, Any]) -> None:
    try:
        policy = parse_policy(document)
    except ValueError:
        return  # e.g. no official model: refused, never stored
    assert read_state_value(state_value(policy)) == policy


# --- the command (ops/policy_cli.py), without a broker ------------------------------------------------------------


def test_policy_check_and_a_bad_file_is_refused_before_any_broker_is_contacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops import policy_cli

    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(doc(6)))  # JSON is YAML
    assert policy_cli.main(["check", str(good)]) == 0
    assert "version 6" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(doc(6, deadline_ms="soon")))
    for argv in (["check", str(bad)], ["publish", "--bootstrap", "127.0.0.1:1", str(bad)]):
        with pytest.raises(SystemExit) as exc:
            policy_cli.main(argv)
        assert exc.value.code == policy_cli.EXIT_REFUSED
        assert "deadline_ms: must be an integer" in capsys.readouterr().err


def test_the_published_document_is_what_the_job_accepts() -> None:
    from ops import policy_cli

    policy = parse_policy(doc(6, decide="weighted_average", threshold=0.3))
    assert parse_document(policy_cli.document(policy)) == policy
    records = [
        policy_cli.TopicRecord(0, 6, None),
        policy_cli.TopicRecord(1, None, "x"),
        policy_cli.TopicRecord(2, 4, None),
    ]
    assert policy_cli.newest_version(records) == 6 and policy_cli.newest_version([]) is None


def test_a_thompson_document_is_refused_when_the_job_has_no_label_feedback() -> None:
    thompson = raw(9, decide="thompson")
    refused = PolicyRegistry(BASE, feedback=False).offer(thompson)
    assert isinstance(refused, Refused) and refused.reason == names.REASON_BAD_POLICY
    assert "--labels-topic" in refused.detail and refused.version == 9
    assert isinstance(PolicyRegistry(BASE, feedback=True).offer(thompson), Accepted)
    assert isinstance(PolicyRegistry(BASE, feedback=False).offer(raw(9)), Accepted)  # other modes: fine

"""The JSON Schemas in schemas/ are the wire contract: they must be valid, and say what the README says."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from evaluation.autopilot import GUARDS, OUTCOMES, AuditRecord, Evidence, ModelEvidence, ReplayEvidence
from harness.loadgen import build_request
from ops.policy_cli import document as policy_document
from udfs import fastjson, mailbox, wire_out
from udfs.feedback import Answers, Label, on_answers, on_label, parse_decision, parse_label
from udfs.policy import PolicyError, load_policy, parse_policy
from udfs.policy_registry import Accepted, PolicyRegistry
from udfs.wire_in import Request, Score, Source, Tick

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NAMES = (
    "request",
    "score",
    "tick",
    "result",
    "canary",
    "decision",
    "dead_letter",
    "archive_row",
    "label",
    "alert",
    "audit",
    "policy",
    "reward",
)


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


VALIDATORS = {n: Draft202012Validator(load(n)) for n in NAMES}


def errors(name: str, instance: Any) -> list[str]:
    return [e.message for e in VALIDATORS[name].iter_errors(instance)]


def ok(name: str, instance: Any) -> None:
    assert errors(name, instance) == [], instance


def bad(name: str, instance: Any) -> None:
    assert errors(name, instance), f"{name} accepted {instance!r}"


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def patched(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Deep copy of d with d[a][b]... (path 'a.b') set to value."""
    out = copy.deepcopy(d)
    *parents, last = path.split(".")
    cur = out
    for p in parents:
        cur = cur[p]
    cur[last] = value
    return out


# --- the files themselves ----------------------------------------------------------------------------


def test_every_schema_in_the_readme_table_exists_and_nothing_else() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    listed = set(re.findall(r"`(\w+)\.schema\.json`", readme))
    on_disk = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert listed == on_disk == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:rendezvous:schema:{name}:1"
    assert schema["type"] == "object"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_self_contained(name: str) -> None:
    """Every $ref is local, so each file can be used alone (no registry, no network)."""
    schema = load(name)
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"]


def test_shared_definitions_do_not_drift() -> None:
    """The output object is copied into several files, the result into decision: the copies must match."""
    output = load("score")["$defs"]["output"]
    for name in ("result", "canary", "decision", "policy"):
        assert load(name)["$defs"]["output"] == output, name
    result = load("result")
    body = {k: v for k, v in result.items() if not k.startswith("$") and k not in ("title", "description")}
    assert load("decision")["$defs"]["result"] == body


# --- the types of the records the job writes (udfs/wire_out.py) --------------------------------------

RECORD_TYPES: dict[str, Any] = {
    "tick": wire_out.TickRecord,
    "dead_letter": wire_out.DeadLetterRecord,
    "result": wire_out.ResultRecord,
    "canary": wire_out.CanaryRecord,
    "decision": wire_out.DecisionRecord,
    "archive_row": wire_out.ArchiveRow,
    "reward": wire_out.RewardEvent,
}


@pytest.mark.parametrize("name", RECORD_TYPES)
def test_each_record_the_job_writes_is_typed_once_with_the_schema_fields(name: str) -> None:
    schema = load(name)
    record_type = RECORD_TYPES[name]
    assert list(record_type.__annotations__) == schema["required"] == list(schema["properties"])
    assert record_type.__required_keys__ == frozenset(schema["required"])


def test_the_canary_record_views_are_typed_with_the_schema_fields() -> None:
    props = load("canary")["properties"]
    assert list(wire_out.OfficialView.__annotations__) == props["official"]["required"]
    [view] = [v for v in props["canary"]["anyOf"] if v.get("type") == "object"]
    assert list(wire_out.CanaryView.__annotations__) == view["required"]


def test_the_records_the_mailbox_writes_have_the_fields_of_their_type_in_order() -> None:
    """What goes on the topics: the keys of each record, in the order the type (and schema) lists them."""
    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "default.yaml")
    src = Source("requests", 0, 1)
    req = Request("r-1", "results", 5, {"x": 1})
    step = mailbox.on_request(None, req, "{}", src, policy, 10)
    outputs = list(step.outputs)
    mb = step.mailbox
    for model in ("gbt", "base", "gbt"):  # the incumbent, the canary, a duplicate
        score = Score("r-1", model, "3", "ok", {"label": 1}, None, 10, 1.0)
        step = mailbox.on_score(mb, score, Source("scores", 0, 2), policy, 20)
        outputs += step.outputs
        mb = step.mailbox
    while mb is not None and not mb.closed:
        assert mb.wake_at_ms is not None
        step = mailbox.on_timer(mb, policy, mb.wake_at_ms)
        outputs += step.outputs
        mb = step.mailbox
    step = mailbox.on_request(mb, req, "{}", src, policy, 5000)  # a duplicate: a dead letter
    outputs += step.outputs
    kinds = {mailbox.RESULT: "result", mailbox.CANARY: "canary", mailbox.DECISION: "decision",
             mailbox.ARCHIVE: "archive_row", mailbox.DEAD_LETTER: "dead_letter"}  # fmt: skip
    assert {o.kind for o in outputs} == set(kinds)
    for out in outputs:
        name = kinds[out.kind]
        assert list(out.record) == list(RECORD_TYPES[name].__annotations__), name
        ok(name, out.record)
    tick = wire_out.tick_to_dict(Tick("r-1", 40, 1, 9))
    assert list(tick) == list(wire_out.TickRecord.__annotations__)
    ok("tick", tick)


# --- request -----------------------------------------------------------------------------------------

REQUEST = {
    "request_id": "load-1:abc.DEF_9",
    "return_address": "results",
    "sent_at_ms": 1_700_000_000_000,
    "features": {"amount": 12.5, "hour": 3, "country": "NL", "card_present": True, "note": None},
}


def test_request_valid_examples() -> None:
    ok("request", REQUEST)
    ok("request", {**REQUEST, "deadline_ms": 1, "routing_key": ""})
    ok("request", {**REQUEST, "deadline_ms": 600_000, "routing_key": "k" * 256, "features": {}})
    ok("request", {**REQUEST, "request_id": "x" * 128, "return_address": "r" * 249})


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(without(REQUEST, "return_address"), id="no return_address"),
        pytest.param(without(REQUEST, "request_id"), id="no request_id"),
        pytest.param(without(REQUEST, "sent_at_ms"), id="no sent_at_ms"),
        pytest.param(without(REQUEST, "features"), id="no features"),
        pytest.param({**REQUEST, "priority": 1}, id="extra field"),
        pytest.param({**REQUEST, "request_id": ""}, id="empty id"),
        pytest.param({**REQUEST, "request_id": "x" * 129}, id="id too long"),
        pytest.param({**REQUEST, "request_id": "a b"}, id="id with space"),
        pytest.param({**REQUEST, "request_id": "a/b"}, id="id with slash"),
        pytest.param({**REQUEST, "request_id": "abc\n"}, id="id with trailing newline"),
        pytest.param({**REQUEST, "request_id": 17}, id="id not a string"),
        pytest.param({**REQUEST, "return_address": "bad topic!"}, id="bad topic name"),
        pytest.param({**REQUEST, "return_address": "a:b"}, id="colon not allowed in topics"),
        pytest.param({**REQUEST, "return_address": "r" * 250}, id="topic too long"),
        pytest.param({**REQUEST, "return_address": "results\n"}, id="topic with trailing newline"),
        pytest.param({**REQUEST, "sent_at_ms": "now"}, id="sent_at_ms string"),
        pytest.param({**REQUEST, "sent_at_ms": 1.5}, id="sent_at_ms fractional"),
        pytest.param({**REQUEST, "sent_at_ms": True}, id="sent_at_ms bool"),
        pytest.param({**REQUEST, "deadline_ms": 0}, id="deadline 0"),
        pytest.param({**REQUEST, "deadline_ms": 600_001}, id="deadline too big"),
        pytest.param({**REQUEST, "deadline_ms": None}, id="deadline null"),
        pytest.param({**REQUEST, "routing_key": "k" * 257}, id="routing key too long"),
        pytest.param({**REQUEST, "features": [1, 2]}, id="features not an object"),
        pytest.param({**REQUEST, "features": {"a": [1]}}, id="feature is a list"),
        pytest.param({**REQUEST, "features": {"a": {"b": 1}}}, id="feature is an object"),
        pytest.param([REQUEST], id="not an object"),
    ],
)
def test_request_invalid_examples(instance: Any) -> None:
    bad("request", instance)


# --- score -------------------------------------------------------------------------------------------

SCORE_OK = {
    "request_id": "r-1",
    "model_id": "gbm.v2-fast",
    "model_version": "2024-06-01+sha.abc",
    "status": "ok",
    "output": {"label": 1, "probability": 0.93},
    "scored_at_ms": 1_700_000_000_010,
    "latency_ms": 3.2,
}
SCORE_ERROR = {
    "request_id": "r-1",
    "model_id": "logreg",
    "model_version": "1",
    "status": "error",
    "error": "feature 'amount' missing",
    "scored_at_ms": 1_700_000_000_010,
    "latency_ms": 0,
}


def test_score_valid_examples() -> None:
    ok("score", SCORE_OK)
    ok("score", SCORE_ERROR)
    ok("score", {**SCORE_ERROR, "output": None, "error": "e" * 1024})
    for output in (
        {"label": "fraud"},
        {"label": False},
        {"probability": 0},
        {"probability": 1},
        {"value": -1e9},
    ):
        ok("score", {**SCORE_OK, "output": output})
    ok("score", {**SCORE_OK, "output": {"label": 0, "probability": 0.2, "value": 0.2}})


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(without(SCORE_OK, "output"), id="ok without output"),
        pytest.param({**SCORE_OK, "output": None}, id="ok with null output"),
        pytest.param({**SCORE_OK, "output": {}}, id="empty output"),
        pytest.param({**SCORE_OK, "output": {"probability": 1.5}}, id="probability 1.5"),
        pytest.param({**SCORE_OK, "output": {"probability": -0.01}}, id="negative probability"),
        pytest.param({**SCORE_OK, "output": {"probability": "0.5"}}, id="probability string"),
        pytest.param({**SCORE_OK, "output": {"label": 1.5}}, id="fractional label"),
        pytest.param({**SCORE_OK, "output": {"label": None}}, id="null label"),
        pytest.param({**SCORE_OK, "output": {"value": float("inf")}}, id="infinite value"),
        pytest.param({**SCORE_OK, "output": {"label": 1, "confidence": 0.9}}, id="extra output field"),
        pytest.param(without(SCORE_ERROR, "error"), id="error without error text"),
        pytest.param({**SCORE_ERROR, "error": None}, id="error with null error text"),
        pytest.param({**SCORE_ERROR, "error": "e" * 1025}, id="error text too long"),
        pytest.param({**SCORE_ERROR, "output": {"label": 1}}, id="error with an output"),
        pytest.param({**SCORE_OK, "status": "maybe"}, id="unknown status"),
        pytest.param(without(SCORE_OK, "status"), id="no status"),
        pytest.param(without(SCORE_OK, "scored_at_ms"), id="no scored_at_ms"),
        pytest.param(without(SCORE_OK, "latency_ms"), id="no latency_ms"),
        pytest.param({**SCORE_OK, "latency_ms": -1}, id="negative latency"),
        pytest.param({**SCORE_OK, "latency_ms": float("inf")}, id="infinite latency"),
        pytest.param({**SCORE_OK, "model_id": "m" * 65}, id="model_id too long"),
        pytest.param({**SCORE_OK, "model_id": "gbm:v2"}, id="colon in model_id"),
        pytest.param({**SCORE_OK, "model_id": ""}, id="empty model_id"),
        pytest.param({**SCORE_OK, "model_version": ""}, id="empty model_version"),
        pytest.param({**SCORE_OK, "model_version": "v" * 129}, id="model_version too long"),
        pytest.param({**SCORE_OK, "request_id": "a b"}, id="bad request_id"),
    ],
)
def test_score_invalid_examples(instance: Any) -> None:
    bad("score", instance)


# --- tick (the job's own record in the scores topic) --------------------------------------------------

TICK = {"request_id": "r-1", "tick_due_ms": 40, "policy_version": 3, "written_at_ms": 1_700_000_000_050}


def test_tick_valid_examples_and_the_parser_agrees() -> None:
    from udfs.wire_in import Source, Tick, parse_score_or_tick

    for tick in (TICK, {**TICK, "tick_due_ms": 0}, {**TICK, "tick_due_ms": 600_000}):
        ok("tick", tick)
        parsed = parse_score_or_tick(json.dumps(tick).encode(), Source("scores", 0, 1))
        assert isinstance(parsed, Tick) and wire_out.tick_to_dict(parsed) == tick
    # A score is still a score on the same topic.
    assert parse_score_or_tick(json.dumps(SCORE_OK).encode(), Source("scores", 0, 2)).request_id == "r-1"


def test_the_schemas_bound_deadlines_and_ticks_as_the_parsers_do() -> None:
    """One bound, udfs.wire_in.MAX_DEADLINE_MS, for a request's deadline, a policy's and a tick's due time."""
    from udfs.wire_in import MAX_DEADLINE_MS

    assert load("request")["properties"]["deadline_ms"]["maximum"] == MAX_DEADLINE_MS
    assert load("tick")["properties"]["tick_due_ms"]["maximum"] == MAX_DEADLINE_MS


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**TICK, "tick_due_ms": -1}, id="negative due"),
        pytest.param({**TICK, "tick_due_ms": 600_001}, id="due past the longest deadline"),
        pytest.param({**TICK, "tick_due_ms": 4.5}, id="fractional due"),
        pytest.param({**TICK, "policy_version": 0}, id="policy version 0"),
        pytest.param(without(TICK, "written_at_ms"), id="no written_at_ms"),
        pytest.param({**TICK, "model_id": "gbt"}, id="a score field"),
        pytest.param({**TICK, "request_id": "a b"}, id="bad request_id"),
    ],
)
def test_tick_invalid_examples_are_dead_letters_too(instance: Any) -> None:
    from udfs.wire_in import DeadLetter, Source, parse_score_or_tick

    bad("tick", instance)
    assert isinstance(parse_score_or_tick(json.dumps(instance).encode(), Source("scores", 0, 3)), DeadLetter)


# --- result ------------------------------------------------------------------------------------------

RESULT = {
    "request_id": "r-1",
    "model_id": "gbm",
    "model_version": "3",
    "output": {"label": 1, "probability": 0.93},
    "reason": "preferred",
    "trigger": "score",
    "policy_version": 7,
    "sent_at_ms": 1_700_000_000_000,
    "received_at_ms": 1_700_000_000_002,
    "decided_at_ms": 1_700_000_000_012,
    "latency_ms": 10,
    "answered": ["gbm", "logreg"],
    "failed": [],
}
NO_ANSWER = {
    **RESULT,
    "model_id": None,
    "model_version": None,
    "output": None,
    "reason": "no_answer",
    "trigger": "deadline",
    "answered": [],
    "failed": ["gbm"],
}
ENSEMBLE = {**RESULT, "model_id": "ensemble", "model_version": "7", "reason": "ensemble", "trigger": "score"}


def test_result_valid_examples() -> None:
    ok("result", RESULT)
    ok("result", NO_ANSWER)
    ok("result", {**NO_ANSWER, "output": {"label": 0}, "trigger": "all_failed"})  # on_no_answer.output
    ok("result", ENSEMBLE)
    for reason in ("fallback", "backstop"):
        for trigger in ("wait_timer", "deadline"):
            ok("result", {**RESULT, "reason": reason, "trigger": trigger})


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**RESULT, "reason": "fastest"}, id="unknown reason"),
        pytest.param({**RESULT, "trigger": "timeout"}, id="unknown trigger"),
        pytest.param({**RESULT, "model_id": None}, id="model answer without model_id"),
        pytest.param({**RESULT, "model_version": None}, id="model answer without model_version"),
        pytest.param({**RESULT, "output": None}, id="model answer without output"),
        pytest.param({**NO_ANSWER, "model_id": "gbm"}, id="no_answer naming a model"),
        pytest.param({**ENSEMBLE, "model_id": "gbm"}, id="ensemble not named ensemble"),
        pytest.param({**RESULT, "output": {"probability": 1.5}}, id="probability 1.5"),
        pytest.param({**RESULT, "output": {"label": 1, "extra": 2}}, id="extra output field"),
        pytest.param({**RESULT, "answered": ["gbm", "gbm"]}, id="answered not a set"),
        pytest.param({**RESULT, "failed": ["bad model!"]}, id="bad model id in failed"),
        pytest.param({**RESULT, "latency_ms": -1}, id="negative latency"),
        pytest.param({**RESULT, "policy_version": "7"}, id="policy_version string"),
        pytest.param(without(RESULT, "trigger"), id="no trigger"),
        pytest.param(without(RESULT, "answered"), id="no answered"),
        pytest.param(without(RESULT, "received_at_ms"), id="no received_at_ms"),
    ],
)
def test_result_invalid_examples(instance: Any) -> None:
    bad("result", instance)


# --- canary ------------------------------------------------------------------------------------------

CANARY = {
    "request_id": "r-1",
    "policy_version": 7,
    "decided_at_ms": 1_700_000_000_012,
    "official": {"model_id": "gbm", "model_version": "3", "output": {"label": 1}, "reason": "preferred"},
    "canary": {
        "model_id": "gbm-next",
        "model_version": "4",
        "status": "ok",
        "output": {"label": 1, "probability": 0.7},
        "arrived_at_ms": 1_700_000_000_020,
    },
    "agree": True,
}


def test_canary_valid_examples() -> None:
    ok("canary", CANARY)
    ok("canary", {**CANARY, "canary": None, "agree": None})
    ok("canary", patched(patched(CANARY, "canary.status", "error"), "canary.output", None) | {"agree": None})
    no_answer = {"model_id": None, "model_version": None, "output": None, "reason": "no_answer"}
    ok("canary", {**CANARY, "official": no_answer, "agree": None})


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**CANARY, "canary": None, "agree": True}, id="agreement with an absent canary"),
        pytest.param(patched(CANARY, "canary.output", None), id="ok canary without output"),
        pytest.param(patched(CANARY, "canary.status", "error"), id="error canary with output"),
        pytest.param(patched(CANARY, "canary.output", {"probability": 1.5}), id="probability 1.5"),
        pytest.param(patched(CANARY, "official.reason", "canary"), id="unknown official reason"),
        pytest.param({**CANARY, "agree": "yes"}, id="agree not boolean"),
        pytest.param(without(CANARY, "canary"), id="no canary field"),
        pytest.param(without(CANARY, "official"), id="no official"),
    ],
)
def test_canary_invalid_examples(instance: Any) -> None:
    bad("canary", instance)


# --- decision ----------------------------------------------------------------------------------------

SCORE_ENTRY = {
    "model_id": "gbm",
    "model_version": "3",
    "role": "primary",
    "status": "ok",
    "output": {"label": 1, "probability": 0.93},
    "error": None,
    "scored_at_ms": 1_700_000_000_010,
    "latency_ms": 3.5,
    "arrived_at_ms": 1_700_000_000_011,
    "late": False,
    "duplicate": False,
}
DECISION = {
    "request_id": "r-1",
    "policy_version": 7,
    "received_at_ms": 1_700_000_000_002,
    "decided_at_ms": 1_700_000_000_012,
    "closed_at_ms": 1_700_000_001_000,
    "result": RESULT,
    "scores": [
        SCORE_ENTRY,
        {
            **SCORE_ENTRY,
            "model_id": "logreg",
            "status": "error",
            "output": None,
            "error": "boom",
            "late": True,
        },
    ],
}
ORPHAN = {**DECISION, "received_at_ms": None, "decided_at_ms": None, "result": None,
          "scores": [{**SCORE_ENTRY, "role": "unknown"}]}  # fmt: skip


def test_decision_valid_examples() -> None:
    ok("decision", DECISION)
    ok("decision", ORPHAN)
    ok("decision", {**DECISION, "result": NO_ANSWER, "scores": []})


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**ORPHAN, "result": RESULT}, id="orphan with a result"),
        pytest.param({**DECISION, "result": {**RESULT, "reason": "fastest"}}, id="invalid embedded result"),
        pytest.param({**DECISION, "scores": [without(SCORE_ENTRY, "late")]}, id="score without late"),
        pytest.param({**DECISION, "scores": [{**SCORE_ENTRY, "output": None}]}, id="ok score without output"),
        pytest.param({**DECISION, "scores": [{**SCORE_ENTRY, "status": "error"}]}, id="error score no text"),
        pytest.param({**DECISION, "scores": [{**SCORE_ENTRY, "role": ""}]}, id="empty role"),
        pytest.param({**DECISION, "scores": {}}, id="scores not a list"),
        pytest.param(without(DECISION, "closed_at_ms"), id="no closed_at_ms"),
    ],
)
def test_decision_invalid_examples(instance: Any) -> None:
    bad("decision", instance)


# --- dead letter -------------------------------------------------------------------------------------

DEAD_LETTER = {
    "reason": "not_json",
    "detail": "Expecting value: line 1 column 1 (char 0)",
    "source_topic": "requests",
    "partition": 0,
    "offset": 42,
    "request_id": None,
    "raw": "this is not json {",
    "raw_truncated": False,
    "raw_encoding": "utf-8",
    "at_ms": 1_700_000_000_000,
}


def test_dead_letter_valid_examples() -> None:
    ok("dead_letter", DEAD_LETTER)
    ok("dead_letter", {**DEAD_LETTER, "reason": "not_utf8", "raw": "//4=", "raw_encoding": "base64"})
    ok("dead_letter", {**DEAD_LETTER, "reason": "orphan_score", "partition": None, "offset": None,
                       "request_id": "r-1", "raw": "x" * 4096, "raw_truncated": True})  # fmt: skip


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**DEAD_LETTER, "reason": "weird"}, id="unknown reason"),
        pytest.param({**DEAD_LETTER, "raw": "x" * 4097}, id="raw not cut"),
        pytest.param({**DEAD_LETTER, "raw_encoding": "latin-1"}, id="unknown encoding"),
        pytest.param({**DEAD_LETTER, "offset": "42"}, id="offset string"),
        pytest.param({**DEAD_LETTER, "partition": -1}, id="negative partition"),
        pytest.param(without(DEAD_LETTER, "request_id"), id="request_id absent (must be null)"),
        pytest.param(without(DEAD_LETTER, "detail"), id="no detail"),
    ],
)
def test_dead_letter_invalid_examples(instance: Any) -> None:
    bad("dead_letter", instance)


# --- archive row -------------------------------------------------------------------------------------

ARCHIVE_ROW = {
    "request_id": "r-1",
    "received_at_ms": 1_700_000_000_002,
    "sent_at_ms": 1_700_000_000_000,
    "return_address": "results",
    "source_topic": "requests",
    "partition": 0,
    "offset": 7,
    "features": json.dumps(REQUEST["features"]),
    "raw": json.dumps(REQUEST),
}


def test_archive_row_valid_example() -> None:
    ok("archive_row", ARCHIVE_ROW)


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**ARCHIVE_ROW, "features": REQUEST["features"]}, id="features not a JSON string"),
        pytest.param({**ARCHIVE_ROW, "offset": None}, id="null offset"),
        pytest.param({**ARCHIVE_ROW, "return_address": "bad topic!"}, id="bad return address"),
        pytest.param(without(ARCHIVE_ROW, "raw"), id="no raw"),
    ],
)
def test_archive_row_invalid_examples(instance: Any) -> None:
    bad("archive_row", instance)


# --- label (evaluation) ------------------------------------------------------------------------------

LABEL = {"request_id": "r-1", "label": 1, "labelled_at_ms": 1_700_000_000_000}


def test_label_valid_examples() -> None:
    ok("label", LABEL)
    ok("label", {**LABEL, "label": True})
    ok("label", {**LABEL, "label": 0.5})  # a value model's truth


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**LABEL, "label": "1"}, id="label string"),
        pytest.param({**LABEL, "label": None}, id="label null"),
        pytest.param({**LABEL, "extra": 1}, id="extra field"),
        pytest.param({**LABEL, "labelled_at_ms": -1}, id="negative time"),
        *(pytest.param(without(LABEL, k), id=f"no {k}") for k in LABEL),
    ],
)
def test_label_invalid_examples(instance: Any) -> None:
    bad("label", instance)


# --- alert (evaluation) ------------------------------------------------------------------------------

ALERT = {
    "kind": "score_drift", "subject": "gbt", "metric": "psi", "value": 0.4, "threshold": 0.25,
    "direction": "above", "count": 500, "window_start_ms": 0, "window_end_ms": 3_600_000, "at_ms": 1,
    "message": "gbt scores drifted from the canary's",
}  # fmt: skip


def test_alert_valid_examples() -> None:
    ok("alert", ALERT)
    ok("alert", {**ALERT, "kind": "input_drift", "subject": "amount", "metric": "ks",
                 "window_start_ms": None, "window_end_ms": None})  # fmt: skip


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**ALERT, "metric": "auc"}, id="unknown metric"),
        pytest.param({**ALERT, "direction": "up"}, id="unknown direction"),
        pytest.param(without(ALERT, "message"), id="no message"),
    ],
)
def test_alert_invalid_examples(instance: Any) -> None:
    bad("alert", instance)


# --- audit (evaluation.autopilot) ------------------------------------------------------------------

AUDIT = AuditRecord(
    at_ms=1_700_000_063_000, watcher="autopilot@host", outcome="applied", action="demote", guard=None,
    old_version=1, new_version=2, reasons=("gbt: demoted to shadow: drift alert: ...", "replay: ..."),
    evidence=Evidence(
        window_start_ms=1_700_000_003_000, window_end_ms=1_700_000_063_000,
        canary_window_start_ms=1_700_000_058_000, decisions=2900, labelled=2650, canary_records=150,
        official_agreement=0.75,
        models=(ModelEvidence("gbt", "incumbent", "shadow", 2650, 0.81, 150, 0.75),
                ModelEvidence("base", "canary", "canary", 2650, float("nan"), 0, None)),
        alerts=("gbt: agreement 0.75 below 0.9 (...)",),
        replay=ReplayEvidence(1_700_000_058_000, 150, 0, False, None, None, 0, 0, 150),
    ),
).to_dict()  # fmt: skip


def test_the_audit_record_is_typed_once_with_the_schema_fields() -> None:
    """The typed twin (frozen dataclasses, evaluation/autopilot.py) has the schema's fields, in order."""
    schema = load("audit")
    for record_type, node in (
        (AuditRecord, schema),
        (Evidence, schema["$defs"]["evidence"]),
        (ModelEvidence, schema["$defs"]["model"]),
        (ReplayEvidence, schema["$defs"]["replay"]),
    ):
        names = [f.name for f in dataclasses.fields(record_type)]
        assert names == node["required"] == list(node["properties"]), record_type.__name__
        assert node["additionalProperties"] is False
    props = schema["properties"]
    assert tuple(props["outcome"]["enum"]) == OUTCOMES
    assert tuple(props["guard"]["anyOf"][1]["enum"]) == GUARDS


def test_audit_valid_examples() -> None:
    ok("audit", AUDIT)
    assert list(AUDIT) == load("audit")["required"]
    assert AUDIT["evidence"]["models"][1]["auc"] is None  # NaN is written as null
    ok("audit", patched(patched(AUDIT, "outcome", "refused"), "guard", "min_interval"))
    ok("audit", patched(patched(AUDIT, "evidence.replay", None), "outcome", "dry_run"))


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(patched(AUDIT, "outcome", "done"), id="unknown outcome"),
        pytest.param(patched(AUDIT, "guard", "mood"), id="unknown guard"),
        pytest.param(patched(AUDIT, "action", "keep"), id="keep is never audited"),
        pytest.param(patched(AUDIT, "new_version", 0), id="version 0"),
        pytest.param(patched(AUDIT, "evidence.official_agreement", 1.5), id="agreement over 1"),
        pytest.param(patched(AUDIT, "evidence.replay.judged", "no"), id="judged not a boolean"),
        pytest.param(AUDIT | {"extra": 1}, id="extra field"),
        pytest.param(patched(AUDIT, "evidence.models", [{"model_id": "gbt"}]), id="model evidence cut short"),
        *(pytest.param(without(AUDIT, k), id=f"no {k}") for k in AUDIT),
    ],
)
def test_audit_invalid_examples(instance: Any) -> None:
    bad("audit", instance)


# --- policy document (topic policies) ------------------------------------------------------------------

POLICY_FILES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
POLICY = {
    "version": 3,
    "deadline_ms": 100,
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 40},
        {"id": "logreg", "role": "challenger", "wait_ms": 70, "weight": 2},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
        {"id": "mlp", "role": "shadow"},
    ],
}
THOMPSON = {
    **POLICY,
    "decide": "thompson",
    "bandit": {"prior": [2, 1.5], "discount": 0.999},
    "models": [{"id": "gbt", "role": "incumbent"}, {"id": "logreg", "role": "challenger"}],
}


def accepted_by_the_job(doc: Any) -> bool:
    """What the job does with the document (udfs.policy.parse_policy, as udfs.policy_registry calls it)."""
    try:
        parse_policy(doc)
    except PolicyError:
        return False
    return True


@pytest.mark.parametrize("path", POLICY_FILES, ids=[p.name for p in POLICY_FILES])
def test_published_documents_of_the_policy_files_validate(path: Path) -> None:
    """What `rendezvous policy publish` writes for every policy file in the repository."""
    doc = json.loads(policy_document(load_policy(path)))
    ok("policy", doc)
    newer = policy_document(parse_policy({**doc, "version": doc["version"] + 1}))
    assert isinstance(PolicyRegistry(parse_policy(doc)).offer(newer), Accepted)  # and the job takes it


def test_policy_valid_examples() -> None:
    for doc in (
        POLICY,
        THOMPSON,
        {**THOMPSON, "bandit": None},
        without(THOMPSON, "bandit"),
        {**POLICY, "decide": "majority_vote", "min_votes": 3, "threshold": 0},
        {**POLICY, "on_no_answer": {"output": {"label": 0, "probability": 0.5}}},
        {**POLICY, "on_no_answer": {"output": None}, "late_window_ms": 0, "dedupe_retention_ms": 0},
        {**POLICY, "on_no_answer": {}},
        patched(POLICY, "models", [{"id": "gbt", "role": "backstop", "wait_ms": None}]),
        patched(
            POLICY,
            "models",
            [{"id": "gbt", "role": "incumbent"}, {"id": "x", "role": "shadow", "wait_ms": None}],
        ),
    ):
        ok("policy", doc)
        assert accepted_by_the_job(doc), doc
        ok("policy", json.loads(policy_document(parse_policy(doc))))  # and as published, defaults explicit


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(without(POLICY, "version"), id="no version"),
        pytest.param(without(POLICY, "deadline_ms"), id="no deadline_ms"),
        pytest.param(without(POLICY, "models"), id="no models"),
        pytest.param({**POLICY, "version": 0}, id="version 0"),
        pytest.param({**POLICY, "version": "3"}, id="version string"),
        pytest.param({**POLICY, "version": True}, id="version bool"),
        pytest.param({**POLICY, "version": 2**31}, id="version beyond 32 bits"),
        pytest.param({**POLICY, "deadline_ms": 600_001}, id="deadline too long"),
        pytest.param({**POLICY, "decide": "fastest"}, id="unknown decide"),
        pytest.param({**POLICY, "priority": 1}, id="unknown field"),
        pytest.param({**POLICY, "models": []}, id="no model"),
        pytest.param({**POLICY, "models": [{"id": "base", "role": "canary"}]}, id="no official model"),
        pytest.param(
            patched(POLICY, "models", POLICY["models"] + [{"id": "c2", "role": "canary"}]), id="two canaries"
        ),
        pytest.param(
            patched(POLICY, "models", POLICY["models"] + [{"id": "i2", "role": "incumbent"}]),
            id="two incumbents",
        ),
        pytest.param(patched(POLICY, "models", [{"id": "gbt"}]), id="model without role"),
        pytest.param(patched(POLICY, "models", [{"id": "gbt", "role": "boss"}]), id="unknown role"),
        pytest.param(patched(POLICY, "models", [{"id": "bad id!", "role": "incumbent"}]), id="bad model id"),
        pytest.param(
            patched(POLICY, "models", [{"id": "x" * 65, "role": "incumbent"}]), id="model id too long"
        ),
        pytest.param(
            patched(POLICY, "models", [{"id": "gbt", "role": "incumbent", "prio": 1}]),
            id="unknown model field",
        ),
        pytest.param(
            patched(POLICY, "models", [{"id": "gbt", "role": "incumbent", "wait_ms": -1}]), id="negative wait"
        ),
        pytest.param(
            patched(POLICY, "models", [{"id": "gbt", "role": "incumbent", "weight": 0}]), id="weight 0"
        ),
        pytest.param(
            patched(POLICY, "models", [{"id": "gbt", "role": "incumbent", "weight": 1e7}]), id="weight 1e7"
        ),
        pytest.param(
            patched(
                POLICY,
                "models",
                [{"id": "gbt", "role": "incumbent"}, {"id": "m", "role": "shadow", "wait_ms": 5}],
            ),
            id="shadow with a wait",
        ),
        pytest.param({**POLICY, "on_no_answer": None}, id="on_no_answer null"),
        pytest.param({**POLICY, "on_no_answer": {"output": {}}}, id="empty no-answer output"),
        pytest.param(
            {**POLICY, "on_no_answer": {"output": {"probability": 2}}}, id="no-answer probability 2"
        ),
        pytest.param({**POLICY, "on_no_answer": {"output": None, "label": 1}}, id="on_no_answer extra field"),
        pytest.param({**POLICY, "late_window_ms": -1}, id="negative late window"),
        pytest.param({**POLICY, "orphan_timeout_ms": 0}, id="orphan timeout 0"),
        pytest.param({**POLICY, "dedupe_retention_ms": 7 * 86_400_000 + 1}, id="retention over a week"),
        pytest.param({**POLICY, "min_votes": 0}, id="min_votes 0"),
        pytest.param({**POLICY, "threshold": 1.5}, id="threshold 1.5"),
        pytest.param({**POLICY, "threshold": True}, id="threshold bool"),
        pytest.param({**POLICY, "bandit": {"prior": [1, 1]}}, id="bandit without thompson"),
        pytest.param(
            {**POLICY, "decide": "first_in_order", "bandit": None}, id="null bandit without thompson"
        ),
        pytest.param({**THOMPSON, "bandit": {"prior": [1]}}, id="prior of one number"),
        pytest.param({**THOMPSON, "bandit": {"prior": [0, 1]}}, id="prior 0"),
        pytest.param({**THOMPSON, "bandit": {"discount": 0.4}}, id="discount 0.4"),
        pytest.param({**THOMPSON, "bandit": {"decay": 0.9}}, id="unknown bandit field"),
        pytest.param({**THOMPSON, "bandit": []}, id="bandit a list"),
    ],
)
def test_policy_invalid_examples(instance: Any) -> None:
    bad("policy", instance)
    assert not accepted_by_the_job(instance)


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(
            patched(
                POLICY, "models", [{"id": "gbt", "role": "incumbent"}, {"id": "gbt", "role": "backstop"}]
            ),
            id="an id twice",
        ),
        pytest.param(
            patched(POLICY, "models", [{"id": "gbt", "role": "incumbent", "wait_ms": 101}]),
            id="wait beyond the deadline",
        ),
        pytest.param({**POLICY, "min_votes": 4}, id="more votes than official models"),
    ],
)
def test_what_only_the_parser_refuses(instance: Any) -> None:
    """The schema cannot say these (its $comment lists them): the job refuses them all the same."""
    ok("policy", instance)
    assert not accepted_by_the_job(instance)


POLICY_VALUES = (
    None, True, 0, 1, 2, 40, 100, 600_000, 600_001, -1, 2**31, 0.5, 10**6, 10**7, "", "gbt", "a b", [], [2, 3],
    [0.5, 0], {}, {"output": None}, {"output": {"label": 1}}, {"output": {"value": "x"}}, "thompson",
    "majority_vote", "shadow", "canary", "incumbent", "backstop",
)  # fmt: skip
# No float with an integral value (1e6): JSON Schema counts it as an integer, the job's parsers (Python's
# isinstance) do not. A difference shared by every schema here, and by no record the job writes.
_DELETE = object()


def _policy_gap(doc: Any) -> bool:
    """A document the schema cannot judge (``test_what_only_the_parser_refuses``)."""
    models = doc.get("models")
    if not isinstance(models, list):
        return False
    ids = [m.get("id") for m in models if isinstance(m, dict)]
    if len(ids) != len(set(map(repr, ids))):
        return True
    deadline = doc.get("deadline_ms")
    waits = [m.get("wait_ms") for m in models if isinstance(m, dict)]
    if isinstance(deadline, int) and any(isinstance(w, int) and w > deadline for w in waits):
        return True
    official = sum(
        1 for m in models if isinstance(m, dict) and m.get("role") in ("incumbent", "challenger", "backstop")
    )
    votes = doc.get("min_votes")
    return isinstance(votes, int) and not isinstance(votes, bool) and votes > max(1, official)


@st.composite
def mutated_policies(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from([POLICY, THOMPSON, {**POLICY, "decide": "weighted_average"}])))
    for _ in range(draw(st.integers(1, 3))):
        value = draw(st.sampled_from((*POLICY_VALUES, _DELETE)))
        where = draw(st.sampled_from(["top", "model", "bandit"]))
        if where == "model" and isinstance(doc.get("models"), list) and doc["models"]:
            target = doc["models"][draw(st.integers(0, len(doc["models"]) - 1))]
            if not isinstance(target, dict):
                continue
            key = draw(st.sampled_from(["id", "role", "wait_ms", "weight", "extra"]))
        elif where == "bandit" and isinstance(doc.get("bandit"), dict):
            target, key = doc["bandit"], draw(st.sampled_from(["prior", "discount", "extra"]))
        else:
            target, key = doc, draw(st.sampled_from(sorted(load("policy")["properties"]) + ["extra"]))
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)
    return doc


@settings(max_examples=500, deadline=None)
@given(mutated_policies())
def test_the_policy_schema_agrees_with_the_job(doc: dict[str, Any]) -> None:
    """Any document: the schema accepts it exactly when the job does (bar what the schema cannot say)."""
    if _policy_gap(doc):
        assert not accepted_by_the_job(doc)
        return
    assert VALIDATORS["policy"].is_valid(doc) == accepted_by_the_job(doc), doc


# --- reward event (inside the job: label join -> mailbox) ---------------------------------------------


def _reward_events(decision: dict[str, Any], label: Any) -> list[dict[str, Any]]:
    """What the job's label join makes of a decision record and a label (udfs/feedback.py)."""
    answers = parse_decision(json.dumps(decision).encode(), Source("decisions", 0, 1))
    parsed = parse_label({"request_id": decision["request_id"], "label": label, "labelled_at_ms": 5})
    assert isinstance(answers, Answers) and isinstance(parsed, Label)
    step = on_answers(None, answers, 0, 1000)
    return on_label(step.entry, parsed, 1, 1000).rewards


def test_reward_events_the_label_join_makes_validate() -> None:
    events = _reward_events(DECISION, 1)  # gbm answered 1 (right), logreg failed (wrong)
    assert events == [
        {
            "request_id": "r-1",
            "policy_version": 7,
            "labelled_at_ms": 5,
            "rewards": {"gbm": 1.0, "logreg": 0.0},
        }
    ]
    for label in (0, 1, True, False):
        for decision in (DECISION, {**DECISION, "policy_version": None}, ORPHAN):
            for event in _reward_events(decision, label):
                assert list(event) == list(wire_out.RewardEvent.__annotations__)
                ok("reward", event)
                ok("reward", json.loads(fastjson.dumps_bytes(event)))  # as it travels


def test_a_label_that_rewards_nobody_sends_no_event() -> None:
    assert _reward_events(DECISION, 0.5) == []  # a value model's truth: no classifier reward


REWARD = {"request_id": "r-1", "policy_version": 7, "labelled_at_ms": 5, "rewards": {"gbm": 1.0, "logreg": 0}}


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param({**REWARD, "rewards": {}}, id="no model"),
        pytest.param({**REWARD, "rewards": {"gbm": 1.5}}, id="reward above 1"),
        pytest.param({**REWARD, "rewards": {"gbm": -0.5}}, id="negative reward"),
        pytest.param({**REWARD, "rewards": {"gbm": True}}, id="boolean reward"),
        pytest.param({**REWARD, "rewards": {"": 1}}, id="empty model id"),
        pytest.param({**REWARD, "policy_version": "7"}, id="policy_version string"),
        pytest.param({**REWARD, "request_id": "a b"}, id="bad request id"),
        pytest.param({**REWARD, "labelled_at_ms": -1}, id="negative time"),
        pytest.param({**REWARD, "label": 1}, id="extra field"),
        *(pytest.param(without(REWARD, k), id=f"no {k}") for k in REWARD),
    ],
)
def test_reward_invalid_examples(instance: Any) -> None:
    bad("reward", instance)


# --- the load generator's requests always satisfy the contract -----------------------------------------

ids = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
topics = st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
features = st.dictionaries(st.text(max_size=20), scalars, max_size=10)
now_ms = st.integers(min_value=0, max_value=2**53)
deadlines = st.none() | st.integers(min_value=1, max_value=600_000)


@settings(max_examples=300, deadline=None)
@given(ids, topics, features, now_ms, deadlines)
def test_built_requests_always_validate(
    rid: str, topic: str, feats: dict[str, Any], now: int, deadline: int | None
) -> None:
    req = build_request(rid, topic, feats, now, deadline)
    ok("request", req)
    ok("request", json.loads(json.dumps(req)))  # and still after the wire round trip


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=140) | ids,
    st.text(max_size=260) | topics,
    st.integers(min_value=-5, max_value=2**53),
    st.none() | st.integers(min_value=-5, max_value=700_000),
)
def test_builder_agrees_with_the_schema(rid: str, topic: str, now: int, deadline: int | None) -> None:
    """The builder raises ValueError exactly when the schema would reject the request: never junk."""
    candidate: dict[str, Any] = {
        "request_id": rid,
        "return_address": topic,
        "sent_at_ms": now,
        "features": {},
    }
    if deadline is not None:
        candidate["deadline_ms"] = deadline
    try:
        req = build_request(rid, topic, {}, now, deadline)
    except ValueError:
        assert not VALIDATORS["request"].is_valid(candidate), candidate
        return
    assert req == candidate
    ok("request", req)

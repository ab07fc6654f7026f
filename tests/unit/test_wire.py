"""udfs.wire_in: every record parses to a record or a DeadLetter with a known reason; never an exception.

The JSON Schema files in schemas/ are the contract; parsed records and dead letters must validate.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from udfs import names
from udfs.wire_in import (
    MAX_ERROR_CHARS,
    MAX_RECORD_BYTES,
    RAW_PREFIX_CHARS,
    REQUEST_FIELDS,
    SCORE_FIELDS,
    DeadLetter,
    Request,
    Score,
    Source,
    Tick,
    parse_request,
    parse_score,
    parse_score_or_tick,
)
from udfs.wire_out import dead_letter_to_dict, request_to_dict, score_to_dict, tick_to_dict

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
REASONS = set(names.PARSE_REASONS)
SRC_REQ = Source("requests", 3, 1234)
SRC_SCORE = Source("scores", 0, 7)
AT = 1_700_000_000_000
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validator(name: str) -> Any:
    path = SCHEMAS / f"{name}.schema.json"
    if not path.exists():
        return None
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(path.read_text()))


_VALIDATORS = {n: _validator(n) for n in ("request", "score", "tick", "dead_letter")}


def schema_errors(name: str, instance: Any) -> list[str]:
    v = _VALIDATORS[name]
    if v is None:
        pytest.skip(f"schemas/{name}.schema.json is missing")
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(instance)]


def assert_valid(name: str, instance: Any) -> None:
    errs = schema_errors(name, instance)
    assert errs == [], (name, instance, errs)


def good_request(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "request_id": "req-1",
        "return_address": "results",
        "sent_at_ms": 1_700_000_000_000,
        "features": {"x": 1.5, "n": 3, "s": "a", "b": True, "z": None},
    }
    d.update(over)
    return d


def good_score(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "request_id": "req-1",
        "model_id": "gbt",
        "model_version": "2024-01-01.3",
        "status": "ok",
        "output": {"label": 1, "probability": 0.9},
        "scored_at_ms": 1_700_000_000_010,
        "latency_ms": 3.25,
    }
    d.update(over)
    return d


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def dead(parsed: object, reason: str) -> DeadLetter:
    assert isinstance(parsed, DeadLetter), parsed
    assert parsed.reason == reason, (parsed.reason, parsed.detail)
    return parsed


# --- valid records ---------------------------------------------------------------------------------


def test_valid_request_parses_with_every_field() -> None:
    d = good_request(deadline_ms=250, routing_key="user-17")
    r = parse_request(enc(d), SRC_REQ)
    assert r == Request("req-1", "results", 1_700_000_000_000, d["features"], 250, "user-17")
    assert request_to_dict(r) == d
    assert_valid("request", d)
    assert_valid("request", request_to_dict(r))


def test_valid_request_minimal_and_str_input() -> None:
    d = good_request(features={})
    r = parse_request(json.dumps(d), SRC_REQ)  # str input (already decoded) is accepted too
    assert isinstance(r, Request)
    assert (r.deadline_ms, r.routing_key, r.features) == (None, None, {})
    assert request_to_dict(r) == d


def test_valid_ok_score_parses() -> None:
    s = parse_score(enc(good_score()), SRC_SCORE)
    assert s == Score(
        "req-1", "gbt", "2024-01-01.3", "ok", {"label": 1, "probability": 0.9}, None, 1_700_000_000_010, 3.25
    )
    assert isinstance(s, Score) and s.ok
    assert_valid("score", score_to_dict(s))


def test_ok_score_drops_an_error_text() -> None:
    s = parse_score(enc(good_score(error="ignored")), SRC_SCORE)
    assert isinstance(s, Score) and s.error is None


@pytest.mark.parametrize("output", [{"output": None}, {}])
def test_error_score_parses_with_null_or_absent_output(output: dict[str, Any]) -> None:
    d = without(good_score(status="error", error="model timed out"), "output") | output
    s = parse_score(enc(d), SRC_SCORE)
    assert isinstance(s, Score)
    assert (s.ok, s.output, s.error) == (False, None, "model timed out")
    assert_valid("score", score_to_dict(s))


def test_error_text_is_cut_to_the_limit() -> None:
    d = without(good_score(status="error", error="e" * 5000), "output")
    s = parse_score(enc(d), SRC_SCORE)
    assert isinstance(s, Score) and s.error == "e" * MAX_ERROR_CHARS
    assert_valid("score", score_to_dict(s))


@pytest.mark.parametrize(
    "output",
    [
        {"label": "cat"},
        {"label": True},
        {"label": -3},
        {"probability": 0},
        {"probability": 1.0},
        {"value": -1e300},
        {"label": 0, "probability": 0.5, "value": 12},
    ],
)
def test_every_output_shape_is_accepted(output: dict[str, Any]) -> None:
    s = parse_score(enc(good_score(output=output)), SRC_SCORE)
    assert isinstance(s, Score) and s.output == output
    assert_valid("score", score_to_dict(s))


def test_integer_latency_becomes_float() -> None:
    s = parse_score(enc(good_score(latency_ms=0)), SRC_SCORE)
    assert isinstance(s, Score) and s.latency_ms == 0.0 and isinstance(s.latency_ms, float)


def test_request_id_boundaries() -> None:
    for rid in ("a", "A.b_c:d-9", "x" * 128):
        assert isinstance(parse_request(enc(good_request(request_id=rid)), SRC_REQ), Request)
    dead(parse_request(enc(good_request(request_id="x" * 129)), SRC_REQ), "bad_request_id")


def test_deadline_boundaries() -> None:
    for ok in (1, 600_000):
        assert isinstance(parse_request(enc(good_request(deadline_ms=ok)), SRC_REQ), Request)
    for bad in (0, 600_001, -5, 1.5, "100", True):
        dead(parse_request(enc(good_request(deadline_ms=bad)), SRC_REQ), "bad_field")


def test_record_size_limit_counts_bytes_not_characters() -> None:
    base = enc(good_request(features={"pad": ""}))
    exact = enc(good_request(features={"pad": "p" * (MAX_RECORD_BYTES - len(base))}))
    assert len(exact) == MAX_RECORD_BYTES
    assert isinstance(parse_request(exact, SRC_REQ), Request)
    over = enc(good_request(features={"pad": "p" * (MAX_RECORD_BYTES - len(base) + 1)}))
    dead(parse_request(over, SRC_REQ), "too_large")
    # 2-byte characters: fewer characters than the limit, more bytes; same as text or as bytes.
    text = json.dumps(good_request(features={"pad": "é" * (MAX_RECORD_BYTES // 2)}), ensure_ascii=False)
    assert len(text) < MAX_RECORD_BYTES < len(text.encode())
    dead(parse_request(text, SRC_REQ), "too_large")
    dead(parse_request(text.encode(), SRC_REQ), "too_large")


# --- dead letters: every reason reachable, source carried ----------------------------------------------

REQ_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("not utf-8", b'{"request_id": "a\xff"}', "not_utf8", None),
    ("truncated json", b'{"request_id": "r9", ', "not_json", None),
    ("empty", b"", "not_json", None),
    ("NaN", enc(good_request()).replace(b"1.5", b"NaN"), "not_json", None),
    ("Infinity", enc(good_request()).replace(b"1.5", b"Infinity"), "not_json", None),
    ("-Infinity", enc(good_request()).replace(b"1.5", b"-Infinity"), "not_json", None),
    ("array", b"[1, 2]", "not_object", None),
    ("string", b'"req-1"', "not_object", None),
    ("null", b"null", "not_object", None),
    ("too large", enc(good_request(features={"p": "x" * MAX_RECORD_BYTES})), "too_large", None),
    ("no return_address", enc(without(good_request(), "return_address")), "missing_field", "req-1"),
    ("no sent_at_ms", enc(without(good_request(), "sent_at_ms")), "missing_field", "req-1"),
    ("no features", enc(without(good_request(), "features")), "missing_field", "req-1"),
    ("no request_id", enc(without(good_request(), "request_id")), "missing_field", None),
    ("sent_at_ms string", enc(good_request(sent_at_ms="1")), "bad_field", "req-1"),
    ("sent_at_ms negative", enc(good_request(sent_at_ms=-1)), "bad_field", "req-1"),
    ("sent_at_ms float", enc(good_request(sent_at_ms=1.0)), "bad_field", "req-1"),
    ("sent_at_ms bool", enc(good_request(sent_at_ms=True)), "bad_field", "req-1"),
    ("features list", enc(good_request(features=[1])), "bad_field", "req-1"),
    ("feature object", enc(good_request(features={"a": {"b": 1}})), "bad_field", "req-1"),
    ("feature list", enc(good_request(features={"a": [1]})), "bad_field", "req-1"),
    ("feature 1e999", enc(good_request()).replace(b"1.5", b"1e999"), "bad_field", "req-1"),
    ("feature huge int", enc(good_request()).replace(b"1.5", b"9" * 400), "bad_field", "req-1"),
    ("routing_key long", enc(good_request(routing_key="k" * 257)), "bad_field", "req-1"),
    ("routing_key int", enc(good_request(routing_key=5)), "bad_field", "req-1"),
    ("deadline zero", enc(good_request(deadline_ms=0)), "bad_field", "req-1"),
    ("unknown field", enc(good_request(priority=1)), "unknown_field", "req-1"),
    ("request_id int", enc(good_request(request_id=5)), "bad_request_id", None),
    ("request_id empty", enc(good_request(request_id="")), "bad_request_id", None),
    ("request_id space", enc(good_request(request_id="a b")), "bad_request_id", None),
    ("request_id newline", enc(good_request(request_id="req-1\n")), "bad_request_id", None),
    ("return_address slash", enc(good_request(return_address="a/b")), "bad_return_address", "req-1"),
    ("return_address empty", enc(good_request(return_address="")), "bad_return_address", "req-1"),
    ("return_address long", enc(good_request(return_address="t" * 250)), "bad_return_address", "req-1"),
    ("return_address newline", enc(good_request(return_address="results\n")), "bad_return_address", "req-1"),
    ("return_address null", enc(good_request(return_address=None)), "bad_return_address", "req-1"),
]


@pytest.mark.parametrize(("data", "reason", "rid"), [c[1:] for c in REQ_CASES], ids=[c[0] for c in REQ_CASES])
def test_bad_request_dead_letter(data: bytes, reason: str, rid: str | None) -> None:
    d = dead(parse_request(data, SRC_REQ), reason)
    assert d.request_id == rid
    assert d.detail
    out = dead_letter_to_dict(d, AT)
    assert (out["source_topic"], out["partition"], out["offset"], out["at_ms"]) == ("requests", 3, 1234, AT)
    assert (out["reason"], out["request_id"]) == (reason, rid)
    if reason != "not_utf8":
        assert out["raw_encoding"] == "utf-8"
        assert out["raw"] == data.decode()[:RAW_PREFIX_CHARS]
        assert out["raw_truncated"] == (len(data.decode()) > RAW_PREFIX_CHARS)
    assert_valid("dead_letter", out)


def _ok_score_with_output(raw_output: str) -> bytes:
    return enc(good_score(output="OUT")).replace(b'"OUT"', raw_output.encode())


SCORE_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("not utf-8", b"\xc3\x28", "not_utf8", None),
    ("not json", b"{'single': 'quotes'}", "not_json", None),
    ("NaN probability", _ok_score_with_output('{"probability": NaN}'), "not_json", None),
    ("Infinity value", _ok_score_with_output('{"value": Infinity}'), "not_json", None),
    (
        "NaN latency",
        enc(good_score(latency_ms=1)).replace(b'"latency_ms": 1', b'"latency_ms": NaN'),
        "not_json",
        None,
    ),
    ("number", b"42", "not_object", None),
    ("too large", enc(good_score(model_version="v" * (MAX_RECORD_BYTES + 1))), "too_large", None),
    ("no model_id", enc(without(good_score(), "model_id")), "missing_field", "req-1"),
    ("no model_version", enc(without(good_score(), "model_version")), "missing_field", "req-1"),
    ("no status", enc(without(good_score(), "status")), "missing_field", "req-1"),
    ("no scored_at_ms", enc(without(good_score(), "scored_at_ms")), "missing_field", "req-1"),
    ("no latency", enc(without(good_score(), "latency_ms")), "missing_field", "req-1"),
    ("ok without output", enc(without(good_score(), "output")), "missing_field", "req-1"),
    ("ok with null output", enc(good_score(output=None)), "missing_field", "req-1"),
    ("error without error", enc(good_score(status="error", output=None)), "missing_field", "req-1"),
    (
        "error with empty error",
        enc(good_score(status="error", output=None, error="")),
        "missing_field",
        "req-1",
    ),
    ("model_id space", enc(good_score(model_id="g b")), "bad_field", "req-1"),
    ("model_id newline", enc(good_score(model_id="gbt\n")), "bad_field", "req-1"),
    ("model_id long", enc(good_score(model_id="m" * 65)), "bad_field", "req-1"),
    ("model_version empty", enc(good_score(model_version="")), "bad_field", "req-1"),
    ("model_version int", enc(good_score(model_version=3)), "bad_field", "req-1"),
    ("status other", enc(good_score(status="OK")), "bad_field", "req-1"),
    ("scored_at_ms float", enc(good_score(scored_at_ms=1.5)), "bad_field", "req-1"),
    ("latency negative", enc(good_score(latency_ms=-0.1)), "bad_field", "req-1"),
    ("latency string", enc(good_score(latency_ms="3")), "bad_field", "req-1"),
    (
        "latency 1e999",
        enc(good_score(latency_ms=1)).replace(b'"latency_ms": 1', b'"latency_ms": 1e999'),
        "bad_field",
        "req-1",
    ),
    (
        "latency huge int",
        enc(good_score(latency_ms=1)).replace(b'"latency_ms": 1', b'"latency_ms": ' + b"9" * 400),
        "bad_field",
        "req-1",
    ),
    ("unknown field", enc(good_score(confidence=1)), "unknown_field", "req-1"),
    ("request_id missing", enc(without(good_score(), "request_id")), "missing_field", None),
    ("request_id list", enc(good_score(request_id=["a"])), "bad_request_id", None),
    ("output not object", enc(good_score(output=[1])), "bad_output", "req-1"),
    ("output empty", enc(good_score(output={})), "bad_output", "req-1"),
    ("output unknown key", enc(good_score(output={"label": 1, "score": 2})), "bad_output", "req-1"),
    ("probability > 1", enc(good_score(output={"probability": 1.01})), "bad_output", "req-1"),
    ("probability < 0", enc(good_score(output={"probability": -0.01})), "bad_output", "req-1"),
    ("probability bool", enc(good_score(output={"probability": True})), "bad_output", "req-1"),
    ("value string", enc(good_score(output={"value": "3"})), "bad_output", "req-1"),
    ("value 1e999", _ok_score_with_output('{"value": 1e999}'), "bad_output", "req-1"),
    ("value huge int", _ok_score_with_output('{"value": ' + "9" * 400 + "}"), "bad_output", "req-1"),
    ("label float", enc(good_score(output={"label": 1.5})), "bad_output", "req-1"),
    ("label list", enc(good_score(output={"label": [1]})), "bad_output", "req-1"),
    ("label too long", enc(good_score(output={"label": "l" * 257})), "bad_output", "req-1"),
    ("label null", enc(good_score(output={"label": None})), "bad_output", "req-1"),
    ("probability null", enc(good_score(output={"label": 1, "probability": None})), "bad_output", "req-1"),
    ("error with output", enc(good_score(status="error", error="boom")), "bad_output", "req-1"),
]


@pytest.mark.parametrize(
    ("data", "reason", "rid"), [c[1:] for c in SCORE_CASES], ids=[c[0] for c in SCORE_CASES]
)
def test_bad_score_dead_letter(data: bytes, reason: str, rid: str | None) -> None:
    d = dead(parse_score(data, SRC_SCORE), reason)
    assert d.request_id == rid
    out = dead_letter_to_dict(d, AT)
    assert (out["source_topic"], out["partition"], out["offset"]) == ("scores", 0, 7)
    assert out["reason"] == reason
    assert_valid("dead_letter", out)


def test_every_reason_code_is_reachable() -> None:
    reached = {c[2] for c in REQ_CASES} | {c[2] for c in SCORE_CASES} | {"null_value"}  # see below
    assert reached == REASONS


@pytest.mark.parametrize("parse", [parse_request, parse_score])
def test_a_record_without_a_value_is_a_dead_letter(parse: Any) -> None:
    # A Kafka tombstone (null value) reaches the parser as None through Flink's raw format.
    d = dead(parse(None, SRC_REQ), "null_value")
    out = dead_letter_to_dict(d, AT)
    assert (out["raw"], out["raw_truncated"], out["request_id"], out["offset"]) == ("", False, None, 1234)
    assert_valid("dead_letter", out)


def test_the_schema_lists_exactly_the_reason_codes_in_names() -> None:
    schema = json.loads((SCHEMAS / "dead_letter.schema.json").read_text())
    assert schema["properties"]["reason"]["enum"] == list(names.DEAD_LETTER_REASONS)


def test_source_without_partition_and_offset() -> None:
    out = dead_letter_to_dict(dead(parse_request(b"{}", Source("requests")), "missing_field"), 5)
    assert (out["source_topic"], out["partition"], out["offset"], out["at_ms"]) == ("requests", None, None, 5)
    assert_valid("dead_letter", out)


# --- raw prefix -------------------------------------------------------------------------------------------


def test_raw_is_cut_to_4096_characters() -> None:
    text = "[" + "1," * 3000 + "1]"  # not an object, longer than the prefix
    d = dead(parse_request(text.encode(), SRC_REQ), "not_object")
    assert (len(d.raw), d.raw_truncated, d.raw) == (RAW_PREFIX_CHARS, True, text[:RAW_PREFIX_CHARS])
    short = dead(parse_request(b"[1]", SRC_REQ), "not_object")
    assert (short.raw, short.raw_truncated) == ("[1]", False)
    exact = "[" + "1" * (RAW_PREFIX_CHARS - 2) + "]"
    d = dead(parse_request(exact, SRC_REQ), "not_object")
    assert (d.raw, d.raw_truncated) == (exact, False)


def test_too_large_raw_is_a_prefix() -> None:
    data = enc(good_request(features={"p": "x" * MAX_RECORD_BYTES}))
    d = dead(parse_request(data, SRC_REQ), "too_large")
    assert (len(d.raw), d.raw_truncated) == (RAW_PREFIX_CHARS, True)
    assert d.raw == data.decode()[:RAW_PREFIX_CHARS]
    assert str(len(data)) in d.detail


def test_not_utf8_raw_is_base64_of_a_prefix() -> None:
    data = b"\xff" + b"x" * 10_000
    d = dead(parse_request(data, SRC_REQ), "not_utf8")
    assert d.raw_encoding == "base64" and d.raw_truncated
    assert len(d.raw) <= RAW_PREFIX_CHARS
    decoded = base64.b64decode(d.raw)
    assert data.startswith(decoded) and len(decoded) == RAW_PREFIX_CHARS * 3 // 4
    small = dead(parse_score(b"\x80abc", SRC_SCORE), "not_utf8")
    assert (base64.b64decode(small.raw), small.raw_truncated) == (b"\x80abc", False)
    assert_valid("dead_letter", dead_letter_to_dict(d, AT))


# --- properties -------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.integers().map(lambda i: i * 10**350)  # integers too big for a float
    | st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN / Infinity tokens
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
_ALNUM = "ABCXYZabcxyz0189"
req_ids = st.text(_ALNUM + "._:-", min_size=1, max_size=12) | st.just("r" * 128)
topics = st.text(_ALNUM + "._-", min_size=1, max_size=12) | st.just("t" * 249)
model_ids = st.text(_ALNUM + "._-", min_size=1, max_size=12) | st.just("m" * 64)
finite = st.floats(allow_nan=False, allow_infinity=False)
feature_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | finite | st.text(max_size=30)
_OUTPUT_FIELDS = {
    "label": st.integers(-5, 5) | st.booleans() | st.text(max_size=8) | st.just("l" * 256),
    "probability": st.floats(0, 1),
    "value": finite,
}
outputs = st.sets(st.sampled_from(sorted(_OUTPUT_FIELDS)), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: _OUTPUT_FIELDS[k] for k in sorted(keys)})
)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    d = {
        "request_id": draw(req_ids),
        "return_address": draw(topics),
        "sent_at_ms": draw(st.integers(0, 2**62)),
        "features": draw(st.dictionaries(st.text(max_size=12), feature_values, max_size=6)),
    }
    if draw(st.booleans()):
        d["deadline_ms"] = draw(st.integers(1, 600_000))
    if draw(st.booleans()):
        d["routing_key"] = draw(st.text(max_size=8) | st.just("k" * 256))
    return d


@st.composite
def valid_scores(draw: st.DrawFn) -> dict[str, Any]:
    d = {
        "request_id": draw(req_ids),
        "model_id": draw(model_ids),
        "model_version": draw(st.text(min_size=1, max_size=8) | st.just("v" * 128)),
        "scored_at_ms": draw(st.integers(0, 2**62)),
        "latency_ms": draw(st.integers(0, 10**6) | st.floats(0, 1e9)),
    }
    if draw(st.booleans()):
        d |= {"status": "ok", "output": draw(outputs)}
    else:
        d |= {
            "status": "error",
            "error": draw(st.text(min_size=1, max_size=8) | st.just("e" * MAX_ERROR_CHARS)),
        }
        if draw(st.booleans()):
            d["output"] = None
    return d


# Wrong values that the schema and the parser both refuse, whatever the field (integral floats, huge
# integers, explicit nulls of optional fields and empty error texts are deliberately not in here:
# see known_gray below).
wrong_values = st.sampled_from(
    [
        "",
        "x" * 300,
        "a b",
        "a\n",
        -1,
        0,
        1.5,
        -2.5,
        True,
        False,
        [],
        [1],
        {},
        {"a": 1},
        700_000,
        "ok",
        "error",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    d = dict(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "set", "add", "output"]))
        keys = sorted(d)
        if op == "drop" and keys:
            d.pop(draw(st.sampled_from(keys)))
        elif op == "set" and keys:
            d[draw(st.sampled_from(keys))] = draw(wrong_values | json_values)
        elif op == "add":
            d[draw(st.sampled_from(["extra", "label", "output", "error", "deadline_ms", "Request_id"]))] = (
                draw(wrong_values)
            )
        elif op == "output" and isinstance(d.get("output"), dict):
            d["output"] = dict(d["output"]) | {
                draw(st.sampled_from(["label", "probability", "value", "p"])): draw(
                    wrong_values | json_values
                )
            }
    return d


def check_parse_result(parsed: object, kind: type, schema: str) -> None:
    assert isinstance(parsed, kind | DeadLetter)
    if isinstance(parsed, DeadLetter):
        assert parsed.reason in REASONS
        assert len(parsed.raw) <= RAW_PREFIX_CHARS
        assert_valid("dead_letter", dead_letter_to_dict(parsed, AT))
    elif isinstance(parsed, Request):
        assert_valid(schema, request_to_dict(parsed))
    else:
        assert isinstance(parsed, Score)
        assert_valid(schema, score_to_dict(parsed))


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check_parse_result(parse_request(data, SRC_REQ), Request, "request")
    check_parse_result(parse_score(data, SRC_SCORE), Score, "score")


@FAST
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    data = json.dumps(value).encode()
    check_parse_result(parse_request(data, SRC_REQ), Request, "request")
    check_parse_result(parse_score(data, SRC_SCORE), Score, "score")


@FAST
@given(valid_requests())
def test_valid_requests_round_trip(d: dict[str, Any]) -> None:
    assert_valid("request", d)
    r = parse_request(enc(d), SRC_REQ)
    assert isinstance(r, Request), r
    assert request_to_dict(r) == d


@FAST
@given(valid_scores())
def test_valid_scores_round_trip(d: dict[str, Any]) -> None:
    assert_valid("score", d)
    s = parse_score(enc(d), SRC_SCORE)
    assert isinstance(s, Score), s
    assert score_to_dict(s) == {"output": None, "error": None} | d | {"latency_ms": float(d["latency_ms"])}


valid_ticks = st.fixed_dictionaries(
    {
        "request_id": req_ids,
        "tick_due_ms": st.integers(0, 600_000),
        "policy_version": st.integers(1, 2**31 - 1),
        "written_at_ms": st.integers(0, 2**62),
    }
)


@FAST
@given(valid_ticks, st.sampled_from(["tick_due_ms", "policy_version", "written_at_ms"]), wrong_values)
def test_ticks_round_trip_and_the_parser_agrees_with_the_schema(
    d: dict[str, Any], key: str, wrong: Any
) -> None:
    assert_valid("tick", d)
    t = parse_score_or_tick(enc(d), SRC_SCORE)
    assert isinstance(t, Tick) and tick_to_dict(t) == d
    damaged = d | {key: wrong}
    if _not_plain_json(wrong):
        return  # not JSON at all: the garbage tests cover it
    parsed = parse_score_or_tick(enc(damaged), SRC_SCORE)
    assert isinstance(parsed, Tick | DeadLetter)
    assert (schema_errors("tick", damaged) == []) == isinstance(parsed, Tick), (damaged, parsed)


def _not_plain_json(v: Any) -> bool:
    """NaN/Infinity (no JSON at all) or an integer too large for a float (the parser refuses those)."""
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) > sys.float_info.max
    if isinstance(v, dict):
        return any(_not_plain_json(x) for x in v.values())
    if isinstance(v, list):
        return any(_not_plain_json(x) for x in v)
    return False


def _integral_float(v: Any) -> bool:
    # JSON Schema's "integer" also accepts 5.0; the parser wants a real integer.
    return isinstance(v, float) and v.is_integer()


def known_gray(d: Any, kind: str) -> bool:
    """Records where the parser is deliberately more lenient or stricter than the JSON Schema."""
    if not isinstance(d, dict):
        return False
    if _not_plain_json(d):
        return True
    if kind == "request":
        if any(_integral_float(d.get(k)) for k in ("sent_at_ms", "deadline_ms")):
            return True
        # Explicit null for an optional field: accepted by the parser, refused by the schema.
        return any(k in d and d[k] is None for k in ("deadline_ms", "routing_key"))
    err = d.get("error")
    if (
        d.get("status") == "ok"
        and "error" in d
        and not (err is None or isinstance(err, str) and 1 <= len(err) <= 1024)
    ):
        return True  # the parser ignores `error` on an ok score (the schema refuses "" there too)
    if d.get("status") == "error" and isinstance(err, str) and (err == "" or len(err) > MAX_ERROR_CHARS):
        return True  # the parser refuses an empty error and cuts a long one
    if _integral_float(d.get("scored_at_ms")):
        return True
    out = d.get("output")
    if isinstance(out, dict) and _integral_float(out.get("label")):
        return True
    return isinstance(out, dict) and isinstance(out.get("label"), str) and len(out["label"]) > 256


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(valid_requests()))
def test_request_parser_agrees_with_schema(d: dict[str, Any]) -> None:
    assume(not known_gray(d, "request"))
    parsed = parse_request(enc(d), SRC_REQ)
    check_parse_result(parsed, Request, "request")
    schema_ok = not schema_errors("request", d)
    assert isinstance(parsed, Request) == schema_ok, (d, parsed)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(valid_scores()))
def test_score_parser_agrees_with_schema(d: dict[str, Any]) -> None:
    assume(not known_gray(d, "score"))
    parsed = parse_score(enc(d), SRC_SCORE)
    check_parse_result(parsed, Score, "score")
    schema_ok = not schema_errors("score", d)
    assert isinstance(parsed, Score) == schema_ok, (d, parsed)


def test_score_schema_refuses_unknown_fields_like_the_parser() -> None:
    d = good_score(confidence=0.3)
    dead(parse_score(enc(d), SRC_SCORE), "unknown_field")
    assert schema_errors("score", d)


# --- the fast paths (udfs.wire_in._score_fast, _request_fast) agree with every rule ----------------

# Values near every rule's edge, of every JSON type (and the Python types json.loads can give).
_edgy = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 10**30, 600_000, 600_001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, 1.0000001, 1e308]),
    st.text(max_size=3),
    st.sampled_from(["ok", "error", "gbt", "r1", "a" * 129, "a" * 257, "bad id", "results.x", "x\n"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(["label", "probability", "value", "other"]), st.integers(0, 1) | st.none()
    ),
)


def _checked(build: Any, obj: dict[str, Any]) -> Any:
    from udfs.wire_in import _Bad

    try:
        return build(obj)
    except _Bad:
        return "refused"


@settings(max_examples=1000, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {
            "request_id": st.just("r1"), "model_id": st.just("gbt"), "model_version": st.just("v1"),
            "status": st.just("ok"), "output": st.just({"label": 1, "probability": 0.5}),
            "scored_at_ms": st.just(1), "latency_ms": st.just(1.0),
        }
    ),
    changes=st.dictionaries(st.sampled_from(sorted(SCORE_FIELDS | {"extra"})), _edgy, max_size=2),
    drop=st.sets(st.sampled_from(sorted(SCORE_FIELDS)), max_size=1),
    # Mostly the valid output, so the other fields' edges reach the fast path.
    output=st.none() | st.none() | st.dictionaries(
        st.sampled_from(["label", "probability", "value", "x"]),
        _edgy | st.sampled_from(["a" * 256, "a" * 257, 0.9999, -1e-9]),
        max_size=2,
    ),
)  # fmt: skip
def test_the_fast_score_path_accepts_only_what_every_rule_accepts_and_builds_the_same(
    base: dict[str, Any], changes: dict[str, Any], drop: set[str], output: dict[str, Any] | None
) -> None:
    from udfs.wire_in import _score_checked, _score_fast

    obj = {k: v for k, v in {**base, "output": output or base["output"], **changes}.items() if k not in drop}
    fast = _score_fast(obj)
    if fast is not None:
        assert _checked(_score_checked, obj) == fast


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(REQUEST_FIELDS | {"extra"})), _edgy, max_size=3),
    drop=st.sets(st.sampled_from(sorted(REQUEST_FIELDS)), max_size=2),
    features=st.dictionaries(st.text(max_size=2), _edgy, max_size=3),
)
def test_the_fast_request_path_accepts_only_what_every_rule_accepts_and_builds_the_same(
    changes: dict[str, Any], drop: set[str], features: dict[str, Any]
) -> None:
    from udfs.wire_in import _request_checked, _request_fast

    base = {"request_id": "r1", "return_address": "results", "sent_at_ms": 1, "features": features}
    obj = {k: v for k, v in {**base, **changes}.items() if k not in drop}
    fast = _request_fast(obj)
    if fast is not None:
        assert _checked(_request_checked, obj) == fast


def test_well_formed_records_take_the_fast_paths() -> None:
    from udfs.wire_in import _request_fast, _score_fast

    score = {
        "request_id": "r1", "model_id": "gbt", "model_version": "v1", "status": "ok",
        "output": {"label": 1, "probability": 0.7, "value": -2.5}, "scored_at_ms": 1, "latency_ms": 0,
    }  # fmt: skip
    assert _score_fast(score) == Score("r1", "gbt", "v1", "ok", score["output"], None, 1, 0.0)
    request = {
        "request_id": "r1",
        "return_address": "results",
        "sent_at_ms": 0,
        "features": {"a": 1, "b": None},
    }
    assert _request_fast(request) == Request("r1", "results", 0, request["features"])
    assert _score_fast(score | {"status": "error", "error": "x", "output": None}) is None  # the checked path

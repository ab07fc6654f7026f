"""Garbage at the parsing layer: whatever arrives, parse returns a record or a dead letter, never raises.

tests/unit/test_wire.py holds the contract (each reason code, schema agreement for field-level
mutations). This file throws what a broken or hostile producer might send: arbitrary bytes and text
(surrogates included), byte-level damage to valid records (flipped bits, cuts, splices, inserted
bytes), the wrong kind of record, deep nesting, oversized and null values, from any topic, partition
and offset. Every dead letter must validate against schemas/dead_letter.schema.json, carry the exact
source and a bounded raw prefix, and name a request id only when it is a valid one.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.test_wire import assert_valid, json_values, valid_requests, valid_scores
from udfs import names
from udfs.wire_in import (
    MAX_RECORD_BYTES,
    RAW_PREFIX_CHARS,
    REQUEST_ID_RE,
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

AT = 1_700_000_000_000
GARBAGE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sources = st.builds(
    Source,
    st.text("abcXYZ019._-", min_size=1, max_size=249),
    st.none() | st.integers(0, 2**31 - 1),
    st.none() | st.integers(0, 2**63 - 1),
)
any_text = st.text(st.characters(exclude_categories=()), max_size=300)  # lone surrogates too


def check(parsed: object, data: bytes | str | None, source: Source) -> None:
    """The invariants every parse result keeps, whatever the input."""
    if isinstance(parsed, Request):
        assert_valid("request", request_to_dict(parsed))
        return
    if isinstance(parsed, Score):
        assert_valid("score", score_to_dict(parsed))
        return
    if isinstance(parsed, Tick):
        assert_valid("tick", tick_to_dict(parsed))
        return
    assert isinstance(parsed, DeadLetter), type(parsed)
    out = dead_letter_to_dict(parsed, AT)
    assert_valid("dead_letter", out)
    assert parsed.reason in names.PARSE_REASONS
    assert parsed.detail  # a human-readable reason, always
    assert (out["source_topic"], out["partition"], out["offset"]) == (
        source.topic,
        source.partition,
        source.offset,
    )
    assert parsed.request_id is None or REQUEST_ID_RE.match(parsed.request_id)
    assert len(parsed.raw) <= RAW_PREFIX_CHARS
    if data is None:
        assert (parsed.reason, parsed.raw) == ("null_value", "")
    elif parsed.raw_encoding == "base64":
        assert parsed.reason == "not_utf8" and isinstance(data, bytes)
        assert data.startswith(base64.b64decode(parsed.raw))
    else:
        text = data if isinstance(data, str) else data.decode("utf-8")
        assert parsed.raw == text[:RAW_PREFIX_CHARS]
        assert parsed.raw_truncated == (len(text) > RAW_PREFIX_CHARS)
    json.dumps(out)  # what the adapter writes: always serialisable (ensure_ascii escapes surrogates)


def both(data: bytes | str | None, source: Source) -> None:
    for parse in (parse_request, parse_score, parse_score_or_tick):
        first = parse(data, source)
        check(first, data, source)
        assert parse(data, source) == first  # deterministic: a replay gives the same outcome


@GARBAGE
@given(st.binary(max_size=2000), sources)
@example(None, Source("requests", 0, 0))
@example(b"\xef\xbb\xbf{}", Source("t"))  # a UTF-8 byte order mark
@example(b"[" * 100_000, Source("t"))  # nesting deeper than the JSON decoder's recursion limit
@example(b'{"request_id": "a", "request_id": 5}', Source("t"))  # duplicate keys: the last wins
@example(b"x" * (MAX_RECORD_BYTES + 1), Source("t", 1, 2))
def test_arbitrary_bytes_from_any_source(data: bytes | None, source: Source) -> None:
    both(data, source)


@GARBAGE
@given(any_text, sources)
def test_arbitrary_text_including_lone_surrogates(text: str, source: Source) -> None:
    both(text, source)


@GARBAGE
@given(json_values, sources)
def test_arbitrary_json_values_from_any_source(value: Any, source: Source) -> None:
    both(json.dumps(value).encode(), source)
    both(json.dumps({"request_id": "r1", "x": value}).encode(), source)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid request or score, then damaged at the byte level."""
    record = draw(valid_requests() | valid_scores())
    data = bytearray(json.dumps(record, ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "splice", "repeat"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b'"', b",", b"}", b"NaN"]))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "splice":
            data[i:i] = json.dumps(draw(json_values)).encode()
        elif op == "repeat":
            data += data[i:]
    return bytes(data)


@GARBAGE
@given(damaged(), sources)
def test_byte_level_damage_to_valid_records(data: bytes, source: Source) -> None:
    both(data, source)


@GARBAGE
@given(valid_requests(), valid_scores(), sources)
def test_the_wrong_kind_of_record_is_a_dead_letter(
    req: dict[str, Any], score: dict[str, Any], src: Source
) -> None:
    as_score = parse_score(json.dumps(req).encode(), src)
    as_request = parse_request(json.dumps(score).encode(), src)
    check(as_score, json.dumps(req).encode(), src)
    check(as_request, json.dumps(score).encode(), src)
    assert isinstance(as_score, DeadLetter) and isinstance(as_request, DeadLetter)
    # The id is read even from the wrong kind, so an operator can find the request.
    assert (as_score.request_id, as_request.request_id) == (req["request_id"], score["request_id"])


@GARBAGE
@given(valid_requests(), st.integers(0, 3 * MAX_RECORD_BYTES), sources)
def test_any_size_is_either_parsed_or_too_large(req: dict[str, Any], pad: int, source: Source) -> None:
    req["features"] = {"pad": "é" * (pad // 2)}  # 2 bytes each: the limit is in bytes, not characters
    data = json.dumps(req, ensure_ascii=False).encode()
    parsed = parse_request(data, source)
    check(parsed, data, source)
    assert isinstance(parsed, Request) == (len(data) <= MAX_RECORD_BYTES)
    if isinstance(parsed, DeadLetter):
        assert parsed.reason == "too_large" and parsed.raw_truncated

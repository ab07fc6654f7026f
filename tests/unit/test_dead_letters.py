"""udfs.wire_in.dead_letter: the one builder of a dead letter, and every part of the job that makes one.

Each part used to build its dead letters by hand (parsing, the mailbox, policy documents); the builder
keeps the records they made. Its rules, asserted directly: the record has the schema's fields in the
schema's order; a text is cut to its first 4096 characters, ``raw_truncated`` saying whether anything was
cut; bytes are decoded as UTF-8, and bytes that are not UTF-8 travel as base64 of their first 3072 bytes
(4096 base64 characters), ``raw_encoding`` ``base64``; a record without a value has an empty ``raw``. One
oddity is pinned too: an orphan score's dead letter is cut before the builder sees it, so it is never
flagged as truncated.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from udfs import fastjson, names
from udfs.mailbox import DEAD_LETTER, on_request, on_score, on_timer
from udfs.policy import load_policy
from udfs.policy_registry import PolicyRegistry, Refused
from udfs.policy_registry import dead_letter as policy_dead_letter
from udfs.wire_in import (
    MAX_RECORD_BYTES,
    RAW_PREFIX_CHARS,
    DeadLetter,
    Request,
    Score,
    Source,
    dead_letter,
    parse_request,
    parse_score,
)
from udfs.wire_out import dead_letter_to_dict, score_to_dict

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "dead_letter.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
AT = 1_700_000_000_000
SRC = Source("requests", 3, 1234)
TEXT_CHARS = 4096  # what a dead letter keeps of a text
BASE64_BYTES = 3072  # what it keeps of bytes that are not UTF-8: 4096 characters once in base64


# --- the rules, as assertions -------------------------------------------------------------------------


def assert_record(
    record: Any, reason: str, detail: str, source: Source, request_id: str | None, at_ms: int
) -> None:
    """The schema's fields in its order, with what the dead letter is about."""
    assert list(record) == SCHEMA["required"]
    assert VALIDATOR.is_valid(record), record
    assert (record["reason"], record["detail"], record["request_id"], record["at_ms"]) == (
        reason,
        detail,
        request_id,
        at_ms,
    )
    assert (record["source_topic"], record["partition"], record["offset"]) == (
        source.topic,
        source.partition,
        source.offset,
    )


def assert_text_kept(record: Any, text: str) -> None:
    """A text: its first 4096 characters, flagged as truncated exactly when it was longer."""
    assert record["raw_encoding"] == "utf-8"
    assert record["raw"] == text[:TEXT_CHARS]
    assert record["raw_truncated"] is (len(text) > TEXT_CHARS)


def assert_base64_kept(record: Any, data: bytes) -> None:
    """Bytes that are not UTF-8: base64 of their first 3072 bytes, truncated exactly when longer."""
    assert record["raw_encoding"] == "base64"
    assert base64.b64decode(record["raw"], validate=True) == data[:BASE64_BYTES]
    assert len(record["raw"]) <= TEXT_CHARS
    assert record["raw_truncated"] is (len(data) > BASE64_BYTES)


def assert_raw_kept(record: Any, raw: bytes | bytearray | str | None) -> None:
    """Whatever was read: no value, a text, UTF-8 bytes (as their text) or other bytes (base64)."""
    if raw is None:
        assert (record["raw"], record["raw_truncated"], record["raw_encoding"]) == ("", False, "utf-8")
    elif isinstance(raw, str):
        assert_text_kept(record, raw)
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            assert_base64_kept(record, bytes(raw))
        else:
            assert_text_kept(record, text)


def wire_bytes(record: dict[str, Any]) -> bytes:
    """The record's value on the dead-letters topic (what the Flink adapter writes)."""
    return fastjson.dumps_bytes(record)


# --- the builder ----------------------------------------------------------------------------------------


def test_the_record_has_exactly_the_schema_fields_in_their_order() -> None:
    record = dead_letter_to_dict(dead_letter("not_json", "not valid JSON", SRC, "{", "r-1"), AT)
    assert list(record) == SCHEMA["required"]
    assert set(record) == set(SCHEMA["properties"])
    assert VALIDATOR.is_valid(record)
    assert RAW_PREFIX_CHARS == TEXT_CHARS and RAW_PREFIX_CHARS * 3 // 4 == BASE64_BYTES
    assert wire_bytes(record) == (
        b'{"reason":"not_json","detail":"not valid JSON","source_topic":"requests","partition":3,'
        b'"offset":1234,"request_id":"r-1","raw":"{","raw_truncated":false,"raw_encoding":"utf-8",'
        b'"at_ms":1700000000000}'
    )


texts = st.text(max_size=50) | st.builds(
    lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(4090, 4100)
)
request_ids = st.none() | st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
sources = st.builds(
    Source,
    st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True),
    st.none() | st.integers(0, 2**31 - 1),
    st.none() | st.integers(0, 2**63 - 1),
)


@settings(max_examples=300, deadline=None)
@given(texts, request_ids, sources)
def test_text_is_cut_as_the_parser_and_the_mailbox_cut_it(text: str, rid: str | None, source: Source) -> None:
    got = dead_letter_to_dict(dead_letter("bad_field", "detail", source, text, rid), AT)
    assert_record(got, "bad_field", "detail", source, rid, AT)
    assert_text_kept(got, text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000) | st.binary(min_size=3070, max_size=3075), sources)
def test_bytes_are_decoded_or_base64_as_the_parser_did(data: bytes, source: Source) -> None:
    got = dead_letter_to_dict(dead_letter("not_utf8", "detail", source, data), AT)
    assert_record(got, "not_utf8", "detail", source, None, AT)
    assert_raw_kept(got, data)
    assert dead_letter_to_dict(dead_letter("not_utf8", "detail", source, bytearray(data)), AT) == got


def test_bytes_that_are_not_utf8_keep_their_first_3072_bytes_in_base64() -> None:
    for n, truncated in ((BASE64_BYTES - 1, False), (BASE64_BYTES, False), (BASE64_BYTES + 1, True)):
        data = b"\xff" + bytes(range(256)) * 13
        data = data[:n]
        d = dead_letter("not_utf8", "detail", SRC, data, "r-1")
        assert (d.raw_encoding, d.raw_truncated, d.request_id) == ("base64", truncated, "r-1")
        assert d.raw == base64.b64encode(data[:BASE64_BYTES]).decode("ascii")
    assert len(dead_letter("not_utf8", "detail", SRC, b"\xff" * 5000).raw) == TEXT_CHARS
    # UTF-8 bytes are their text, cut by characters (not bytes): 4096 two-byte characters fit.
    d = dead_letter("bad_field", "detail", SRC, ("é" * 5000).encode())
    assert (d.raw, d.raw_truncated, d.raw_encoding) == ("é" * TEXT_CHARS, True, "utf-8")
    d = dead_letter("bad_field", "detail", SRC, "x" * TEXT_CHARS)
    assert (len(d.raw), d.raw_truncated) == (TEXT_CHARS, False)


@settings(max_examples=300, deadline=None)
@given(
    st.none() | texts | st.binary(max_size=5000) | texts.map(str.encode) | st.binary().map(bytearray),
    st.sampled_from(names.POLICY_REASONS),
    sources,
)
def test_policy_documents_give_the_record_they_always_gave(
    raw: bytes | bytearray | str | None, reason: str, source: Source
) -> None:
    refused = Refused(reason, "policy refused: version: required")
    got = policy_dead_letter(refused, raw, source, AT)
    assert_record(got, reason, "policy refused: version: required", source, None, AT)
    assert_raw_kept(got, raw)


def test_a_record_without_a_value_has_an_empty_raw() -> None:
    d = dead_letter("null_value", "record has no value (null)", SRC, None)
    assert d == DeadLetter("null_value", "record has no value (null)", SRC, "")


# --- every part of the job that makes one ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xfe" + b"x" * 5000, id="not utf-8"),
        pytest.param(b"[" * 10, id="not json"),
        pytest.param(json.dumps({"request_id": "r-1", "x": "y" * 5000}).encode(), id="long, with an id"),
        pytest.param(b"x" * (MAX_RECORD_BYTES + 1), id="too large"),
        pytest.param(json.dumps({"request_id": "r-1", "x": "y" * 5000}), id="text"),
    ],
)
def test_the_parser(data: bytes | str) -> None:
    for parse in (parse_request, parse_score):
        d = parse(data, SRC)
        assert isinstance(d, DeadLetter)
        record = dead_letter_to_dict(d, AT)
        assert_record(record, d.reason, d.detail, SRC, d.request_id, AT)
        assert_raw_kept(record, data)
        assert (d.reason == "not_utf8") is (record["raw_encoding"] == "base64")


def _score(rid: str = "r-1", model: str = "gbt", error: str | None = None) -> Score:
    if error is not None:
        return Score(rid, model, "3", "error", None, error, AT, 2.0)
    return Score(rid, model, "3", "ok", {"label": 1, "probability": 0.9}, None, AT, 2.0)


def _dead_letters(outputs: list[Any]) -> list[dict[str, Any]]:
    return [o.record for o in outputs if o.kind == DEAD_LETTER]


@pytest.mark.parametrize("size", [10, 5000])
def test_the_mailbox_refusing_a_duplicate_request(size: int) -> None:
    req = Request("r-1", "results", AT, {"x": "y" * size})
    raw = json.dumps(
        {"request_id": "r-1", "return_address": "results", "sent_at_ms": AT, "features": req.features}
    )
    first = on_request(None, req, raw, SRC, DEFAULT, AT).mailbox
    [got] = _dead_letters(on_request(first, req, raw, SRC, DEFAULT, AT + 1).outputs)
    detail = "a request with this id was already received; the first one is answered"
    assert_record(got, names.REASON_DUPLICATE_REQUEST, detail, SRC, "r-1", AT + 1)
    assert_text_kept(got, raw)
    assert got["raw_truncated"] is (size > TEXT_CHARS)


@pytest.mark.parametrize("error", [None, "boom", "é" * 1024])
def test_the_mailbox_refusing_a_score_after_close(error: str | None) -> None:
    src = Source("scores", 1, 9)
    mb = on_request(None, Request("r-1", "results", AT, {}), "{}", SRC, DEFAULT, AT).mailbox
    assert mb is not None
    while mb is not None and not mb.closed:
        assert mb.wake_at_ms is not None
        mb = on_timer(mb, DEFAULT, mb.wake_at_ms).mailbox
    score = _score(error=error)
    [got] = _dead_letters(on_score(mb, score, src, DEFAULT, AT + 10_000).outputs)
    detail = "score from gbt arrived after the mailbox closed"
    assert_record(got, names.REASON_SCORE_AFTER_CLOSE, detail, src, "r-1", AT + 10_000)
    assert_text_kept(got, json.dumps(score_to_dict(score)))


ORPHAN_DETAIL = (
    "no request with this id arrived within the orphan timeout (score from gbt); held for the dedupe "
    f"retention ({DEFAULT.dedupe_retention_ms} ms after the orphan timeout) in case the request still comes"
)


@pytest.mark.parametrize("error", [None, "boom", "é" * 1024])
@pytest.mark.parametrize("when", ["at the timeout", "after the timeout"])
def test_the_mailbox_giving_up_on_orphans(error: str | None, when: str) -> None:
    """The dead letter of an orphan score: made when the orphan timeout runs out for the scores held
    then, and at once for a score arriving into the mailbox after it (still held, for the request)."""
    src = Source("scores", 1, 9)
    if when == "at the timeout":
        mb = on_score(None, _score(error=error), src, DEFAULT, AT).mailbox
        assert mb is not None and mb.wake_at_ms is not None
        at = mb.wake_at_ms
        [got] = _dead_letters(on_timer(mb, DEFAULT, at).outputs)
        held = mb.scores[0]
    else:
        mb = on_score(None, _score(model="logreg"), Source("scores", 1, 8), DEFAULT, AT).mailbox
        assert mb is not None and mb.wake_at_ms is not None
        mb = on_timer(mb, DEFAULT, mb.wake_at_ms).mailbox
        assert mb is not None and mb.orphaned
        at = AT + DEFAULT.orphan_timeout_ms + 1
        [got] = _dead_letters(on_score(mb, _score(error=error), src, DEFAULT, at).outputs)
        held = mb.scores[1]
    public = json.dumps({k: v for k, v in held.items() if k not in ("src", "request_id")})
    assert_record(got, names.REASON_ORPHAN_SCORE, ORPHAN_DETAIL, src, "r-1", at)
    assert (got["raw"], got["raw_encoding"]) == (public[:TEXT_CHARS], "utf-8")
    # Cut before the builder, as it always was: never flagged, even when the score's JSON was longer.
    assert got["raw_truncated"] is False
    assert (len(public) > TEXT_CHARS) is (error == "é" * 1024)  # json.dumps escapes é: 6 characters


def test_the_policy_registry() -> None:
    registry = PolicyRegistry(DEFAULT)
    for raw in (b"\xff" * 5000, b"{" * 5000, json.dumps({"version": 1}).encode(), None):
        refused = registry.offer(raw)
        assert isinstance(refused, Refused)
        got = policy_dead_letter(refused, raw, Source("policies", 0, 1), AT)
        assert_record(got, refused.reason, refused.detail, Source("policies", 0, 1), None, AT)
        assert_raw_kept(got, raw)

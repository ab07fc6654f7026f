"""udfs.wire.dead_letter: the one builder of a dead letter, and every part of the job that makes one.

Each part used to build its dead letters by hand (parsing, the mailbox, policy documents). The
``legacy_*`` functions below are those hand-built versions, copied as they were; the builder must give
byte for byte the same record (the same fields, in the same order, with the same values), so the
dead-letters topic does not change.
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
from udfs.wire import (
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

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "dead_letter.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
AT = 1_700_000_000_000
SRC = Source("requests", 3, 1234)


# --- the hand-built dead letters, as they were --------------------------------------------------------


def legacy_text(reason: str, detail: str, source: Source, text: str, request_id: str | None) -> DeadLetter:
    """wire._dead, mailbox.on_request (duplicate) and mailbox._refuse_score: the text cut to 4096."""
    return DeadLetter(
        reason,
        detail,
        source,
        text[:RAW_PREFIX_CHARS],
        raw_truncated=len(text) > RAW_PREFIX_CHARS,
        request_id=request_id,
    )


def legacy_not_utf8(detail: str, source: Source, data: bytes) -> DeadLetter:
    """wire._decode for bytes that are not UTF-8."""
    prefix = data[: RAW_PREFIX_CHARS * 3 // 4]
    return DeadLetter(
        "not_utf8",
        detail,
        source,
        base64.b64encode(prefix).decode("ascii"),
        raw_truncated=len(prefix) < len(data),
        raw_encoding="base64",
    )


def legacy_orphan(detail: str, source: Source, text: str, request_id: str) -> DeadLetter:
    """mailbox._orphan_letters: cut before the record was made, so never flagged as truncated."""
    return DeadLetter("orphan_score", detail, source, text[:RAW_PREFIX_CHARS], request_id=request_id)


def legacy_policy(refused: Refused, raw: bytes | bytearray | str | None, source: Source, now_ms: int) -> Any:
    """policy_registry.dead_letter."""
    if raw is None:
        text, encoding, truncated = "", "utf-8", False
    elif isinstance(raw, str):
        text, encoding, truncated = raw[:RAW_PREFIX_CHARS], "utf-8", len(raw) > RAW_PREFIX_CHARS
    else:
        try:
            full = bytes(raw).decode("utf-8")
            text, encoding, truncated = full[:RAW_PREFIX_CHARS], "utf-8", len(full) > RAW_PREFIX_CHARS
        except UnicodeDecodeError:
            prefix = bytes(raw[: RAW_PREFIX_CHARS * 3 // 4])
            text, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
            truncated = len(prefix) < len(raw)
    return DeadLetter(refused.reason, refused.detail, source, text, truncated, encoding).to_dict(now_ms)


def wire_bytes(record: dict[str, Any]) -> bytes:
    """The record's value on the dead-letters topic (what the Flink adapter writes)."""
    return fastjson.dumps_bytes(record)


# --- the builder ----------------------------------------------------------------------------------------


def test_the_record_has_exactly_the_schema_fields_in_their_order() -> None:
    record = dead_letter("not_json", "not valid JSON", SRC, "{", "r-1").to_dict(AT)
    assert list(record) == SCHEMA["required"]
    assert set(record) == set(SCHEMA["properties"])
    assert VALIDATOR.is_valid(record)
    assert wire_bytes(record) == (
        b'{"reason":"not_json","detail":"not valid JSON","source_topic":"requests","partition":3,'
        b'"offset":1234,"request_id":"r-1","raw":"{","raw_truncated":false,"raw_encoding":"utf-8",'
        b'"at_ms":1700000000000}'
    )


texts = st.text(max_size=50) | st.builds(lambda c, n: c * n, st.characters(), st.integers(4090, 4100))
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
    got = dead_letter("bad_field", "detail", source, text, rid).to_dict(AT)
    want = legacy_text("bad_field", "detail", source, text, rid).to_dict(AT)
    assert wire_bytes(got) == wire_bytes(want)
    assert VALIDATOR.is_valid(got)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000) | st.binary(min_size=3070, max_size=3075), sources)
def test_bytes_are_decoded_or_base64_as_the_parser_did(data: bytes, source: Source) -> None:
    got = dead_letter("not_utf8", "detail", source, data).to_dict(AT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        want = legacy_not_utf8("detail", source, data).to_dict(AT)
    else:
        want = legacy_text("not_utf8", "detail", source, text, None).to_dict(AT)
    assert wire_bytes(got) == wire_bytes(want)
    assert wire_bytes(dead_letter("not_utf8", "detail", source, bytearray(data)).to_dict(AT)) == wire_bytes(
        want
    )


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
    assert wire_bytes(policy_dead_letter(refused, raw, source, AT)) == wire_bytes(
        legacy_policy(refused, raw, source, AT)
    )


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
        if d.reason == "not_utf8":
            assert isinstance(data, bytes)
            want = legacy_not_utf8(d.detail, SRC, data)
        else:
            text = data if isinstance(data, str) else data.decode()
            want = legacy_text(d.reason, d.detail, SRC, text, d.request_id)
        assert wire_bytes(d.to_dict(AT)) == wire_bytes(want.to_dict(AT))


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
    want = legacy_text(
        names.REASON_DUPLICATE_REQUEST,
        "a request with this id was already received; the first one is answered",
        SRC,
        raw,
        "r-1",
    ).to_dict(AT + 1)
    assert wire_bytes(got) == wire_bytes(want)


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
    want = legacy_text(
        names.REASON_SCORE_AFTER_CLOSE,
        "score from gbt arrived after the mailbox closed",
        src,
        json.dumps(score.to_dict()),
        "r-1",
    ).to_dict(AT + 10_000)
    assert wire_bytes(got) == wire_bytes(want)


@pytest.mark.parametrize("error", [None, "boom", "é" * 1024])
def test_the_mailbox_giving_up_on_orphans(error: str | None) -> None:
    src = Source("scores", 1, 9)
    mb = on_score(None, _score(error=error), src, DEFAULT, AT).mailbox
    assert mb is not None and mb.wake_at_ms is not None
    [got] = _dead_letters(on_timer(mb, DEFAULT, mb.wake_at_ms).outputs)
    public = {k: v for k, v in mb.scores[0].items() if k not in ("src", "request_id")}
    want = legacy_orphan(
        "no request with this id arrived within the orphan timeout (score from gbt)",
        src,
        json.dumps(public),
        "r-1",
    ).to_dict(mb.wake_at_ms)
    assert wire_bytes(got) == wire_bytes(want)
    assert got["raw_truncated"] is False  # as it always was, even when the cut text was longer


def test_the_policy_registry() -> None:
    registry = PolicyRegistry(DEFAULT)
    for raw in (b"\xff" * 5000, b"{" * 5000, json.dumps({"version": 1}).encode(), None):
        refused = registry.offer(raw)
        assert isinstance(refused, Refused)
        got = policy_dead_letter(refused, raw, Source("policies", 0, 1), AT)
        assert wire_bytes(got) == wire_bytes(legacy_policy(refused, raw, Source("policies", 0, 1), AT))
        assert VALIDATOR.is_valid(got)

"""What the job reads (see schemas/): one class per record, and the parsers. Pure Python, no pyflink.

Bad input is data: every parse returns either a record (``Request``, ``Score``, ``Tick``) or a
``DeadLetter`` with a reason code, never raises; the rules mirror the JSON Schema files in ``schemas/``,
and tests hold the two together. A dead letter is what a parse gives back, so ``dead_letter``, the one
builder of one for every part of the job, is here too. What the job writes (the type of every record,
the encoders) is ``udfs.wire_out``, which imports this module, never the reverse. Labels are parsed in
``udfs.feedback`` and policy documents in ``udfs.policy``, with the rules of this module.

>>> req = parse_request(b'{"request_id":"r-1","return_address":"results","sent_at_ms":5,"features":{}}',
...                     Source("requests", 0, 7))
>>> req.request_id, req.return_address, req.deadline_ms
('r-1', 'results', None)
>>> bad = parse_request(b'{"request_id":"r-1"}', Source("requests", 0, 8))
>>> bad.reason, bad.detail, bad.request_id
('missing_field', "missing field 'return_address'", 'r-1')
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

MAX_RECORD_BYTES = 64 * 1024
RAW_PREFIX_CHARS = 4096
MAX_ERROR_CHARS = 1024
# The longest deadline a request or a policy may set (udfs.policy uses it too), so also the latest a tick
# can be due; schemas/request.schema.json and tick.schema.json carry the same maximum.
MAX_DEADLINE_MS = 600_000

T = TypeVar("T")

# \Z, not $: "$" also matches before a trailing newline, so "abc\n" would pass.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
# Same character class as Kafka's own topic-name rule; the results sink is built with the
# same pattern, so a request can never name a topic the sink would refuse.
TOPIC_PATTERN = r"[A-Za-z0-9._-]{1,249}"
TOPIC_RE = re.compile(f"^{TOPIC_PATTERN}\\Z")
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")

REQUEST_FIELDS = frozenset(
    {"request_id", "return_address", "sent_at_ms", "deadline_ms", "routing_key", "features"}
)
SCORE_FIELDS = frozenset(
    {"request_id", "model_id", "model_version", "status", "output", "error", "scored_at_ms", "latency_ms"}
)
OUTPUT_FIELDS = frozenset({"label", "probability", "value"})
# A tick (--clock log): the mailbox's own record in the scores topic, told apart by ``tick_due_ms``.
TICK_FIELDS = frozenset({"request_id", "tick_due_ms", "policy_version", "written_at_ms"})


# --- Records: one typed class per format (schemas/<name>.schema.json) ---------------------------------


@dataclass(frozen=True)
class Source:
    """Where a record came from: kept so a dead letter can point back at it."""

    topic: str
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Request:
    """A request (schemas/request.schema.json), read from the requests topic."""

    request_id: str
    return_address: str
    sent_at_ms: int
    features: dict[str, Any]
    deadline_ms: int | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class Score:
    """A model's score (schemas/score.schema.json), read from the scores topic."""

    request_id: str
    model_id: str
    model_version: str
    status: str  # "ok" | "error"
    output: dict[str, Any] | None
    error: str | None
    scored_at_ms: int
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Tick:
    """A wait or deadline of one request that ran out, as the job wrote it into the scores topic.

    ``due_ms`` is logical: milliseconds after the request's arrival, not a wall-clock time, so the tick
    means the same to a job that reads the request again after a restart (schemas/tick.schema.json).
    """

    request_id: str
    due_ms: int
    policy_version: int
    written_at_ms: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tick:
        """A tick from ``udfs.wire_out.tick_to_dict``'s output, already validated (``tick_from_obj``
        validates)."""
        return cls(d["request_id"], d["tick_due_ms"], d["policy_version"], d["written_at_ms"])


@dataclass(frozen=True)
class DeadLetter:
    """A record the job cannot use (schemas/dead_letter.schema.json), written to the dead-letters topic.

    Made by ``dead_letter`` (which cuts or encodes ``raw``); ``udfs.wire_out.dead_letter_to_dict`` is the
    record as it travels.
    """

    reason: str
    detail: str
    source: Source
    raw: str
    raw_truncated: bool = False
    raw_encoding: str = "utf-8"
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- Dead letters: the one builder (parsing, the mailbox, policy documents, the label join) ---------


def dead_letter(
    reason: str,
    detail: str,
    source: Source,
    raw: str | bytes | bytearray | None,
    request_id: str | None = None,
) -> DeadLetter:
    """The one builder of a dead letter (parsing, the mailbox, policy documents, the label join).

    ``raw`` is the record as it was read: its text, its bytes, or None for a record without a value.
    The dead letter keeps the first ``RAW_PREFIX_CHARS`` characters of the text (of the bytes decoded
    as UTF-8), or, for bytes that are not UTF-8, base64 of their first ``RAW_PREFIX_CHARS * 3 // 4``
    bytes; ``raw_truncated`` says whether anything was cut. Only bad records come here: no hot path.

    >>> d = dead_letter("not_json", "not valid JSON", Source("requests", 0, 7), '{"request_id": "r-1"')
    >>> d.reason, d.raw, d.raw_truncated, d.raw_encoding, d.request_id
    ('not_json', '{"request_id": "r-1"', False, 'utf-8', None)
    >>> d = dead_letter("not_utf8", "not UTF-8", Source("scores"), b"\\xff\\xfe{}")
    >>> d.raw, d.raw_encoding, d.raw_truncated
    ('//57fQ==', 'base64', False)
    >>> d = dead_letter("too_large", "too large", Source("scores"), "x" * 5000, request_id="r-1")
    >>> len(d.raw), d.raw_truncated, d.request_id
    (4096, True, 'r-1')
    >>> dead_letter("null_value", "no value", Source("requests"), None).raw
    ''
    """
    if raw is None:
        return DeadLetter(reason, detail, source, "", request_id=request_id)
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            prefix = bytes(raw[: RAW_PREFIX_CHARS * 3 // 4])
            return DeadLetter(
                reason,
                detail,
                source,
                base64.b64encode(prefix).decode("ascii"),
                raw_truncated=len(prefix) < len(raw),
                raw_encoding="base64",
                request_id=request_id,
            )
    return DeadLetter(
        reason,
        detail,
        source,
        text[:RAW_PREFIX_CHARS],
        raw_truncated=len(text) > RAW_PREFIX_CHARS,
        request_id=request_id,
    )


# --- Parsing (bytes from a topic -> a record, or a DeadLetter) --------------------------------------


class _Bad(ValueError):
    """Internal: one validation failure, turned into a DeadLetter at the boundary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer literal too large for a float (e.g. 400 digits)
        return False


def _decode(data: bytes | str | None, source: Source) -> tuple[str | None, DeadLetter | None]:
    if data is None:  # a Kafka record without a value (a tombstone): the raw format gives null
        return None, dead_letter("null_value", "record has no value (null)", source, None)
    if isinstance(data, str):
        text = data
        size = len(text.encode("utf-8", "surrogatepass"))
    else:
        size = len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            detail = f"record is not UTF-8 ({e.reason} at byte {e.start})"
            return None, dead_letter("not_utf8", detail, source, data)
    if size > MAX_RECORD_BYTES:
        detail = f"record is {size} bytes, the limit is {MAX_RECORD_BYTES}"
        return None, dead_letter("too_large", detail, source, text)
    return text, None


def _load_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise _Bad("not_json", f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _Bad("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; they are not JSON and no model output may be NaN.
    raise ValueError(f"{name} is not allowed")


def _require(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise _Bad("missing_field", f"missing field '{name}'")
    return obj[name]


def _check_unknown(obj: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _Bad("unknown_field", f"unknown field(s): {', '.join(unknown[:5])}")


def _request_id(obj: dict[str, Any]) -> str:
    rid = _require(obj, "request_id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        raise _Bad("bad_request_id", "request_id must be 1-128 characters of [A-Za-z0-9._:-]")
    return rid


def _safe_request_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        rid = obj.get("request_id")
        if isinstance(rid, str) and REQUEST_ID_RE.match(rid):
            return rid
    return None


def key_mismatch(key: str | None, request_id: str, source: Source, text: str) -> DeadLetter | None:
    """A dead letter for a record whose Kafka key is not its request_id (None: the key fits, or the
    record has none). The key picks the record's partition and mailbox; another id's is the wrong one.

    >>> key_mismatch("r-1", "r-1", Source("scores"), "{}") is None
    True
    >>> key_mismatch("r-2", "r-1", Source("scores"), "{}").reason
    'key_mismatch'
    """
    if key is None or key == request_id:
        return None
    detail = f"the record's Kafka key {key[:128]!r} is not its request_id (the key must be the request id)"
    return dead_letter("key_mismatch", detail, source, text, request_id)


def parse_request(data: bytes | str | None, source: Source) -> Request | DeadLetter:
    """A request record, or the reason it is not one."""
    return _parse(data, source, _request_from_obj)


def _parse(data: bytes | str | None, source: Source, build: Callable[[dict[str, Any]], T]) -> T | DeadLetter:
    """Decode, load a JSON object and build a record from it; any failure becomes a dead letter.

    The fast path (orjson, no decoding to text) takes bytes that it reads as a JSON object; anything
    else, and every check's order and message, is the slow path's (``_parse_checked``)."""
    if isinstance(data, bytes) and len(data) <= MAX_RECORD_BYTES:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            try:
                return build(obj)
            except _Bad as bad:  # orjson read it, so it is UTF-8
                return dead_letter(
                    bad.reason, bad.detail, source, data.decode("utf-8"), _safe_request_id(obj)
                )
    return _parse_checked(data, source, build)


def _parse_checked(
    data: bytes | str | None, source: Source, build: Callable[[dict[str, Any]], T]
) -> T | DeadLetter:
    text, dead = _decode(data, source)
    if dead is not None:
        return dead
    assert text is not None
    obj: dict[str, Any] | None = None
    try:
        obj = _load_object(text)
        return build(obj)
    except _Bad as bad:
        return dead_letter(bad.reason, bad.detail, source, text, _safe_request_id(obj))


def _request_fast(obj: dict[str, Any]) -> Request | None:
    """The request a record well within every rule is (None: let ``_request_from_obj`` decide)."""
    if not obj.keys() <= REQUEST_FIELDS:
        return None
    rid, ret, sent = obj.get("request_id"), obj.get("return_address"), obj.get("sent_at_ms")
    features, deadline, routing = obj.get("features"), obj.get("deadline_ms"), obj.get("routing_key")
    if not (
        type(rid) is str
        and type(ret) is str
        and type(sent) is int
        and sent >= 0
        and type(features) is dict
        and (deadline is None or (type(deadline) is int and 1 <= deadline <= MAX_DEADLINE_MS))
        and (routing is None or (type(routing) is str and len(routing) <= 256))
        and REQUEST_ID_RE.match(rid)
        and TOPIC_RE.match(ret)
    ):
        return None
    for v in features.values():
        t = type(v)
        if not (v is None or t is str or t is bool or _finite_number(v)):
            return None
    return Request(rid, ret, sent, features, deadline, routing)


def _request_from_obj(obj: dict[str, Any]) -> Request:
    return _request_fast(obj) or _request_checked(obj)


def _request_checked(obj: dict[str, Any]) -> Request:
    """Every rule of schemas/request.schema.json, in order, each with its own reason."""
    rid = _request_id(obj)
    _check_unknown(obj, REQUEST_FIELDS)
    ret = _require(obj, "return_address")
    if not isinstance(ret, str) or not TOPIC_RE.match(ret):
        raise _Bad("bad_return_address", "return_address must be a Kafka topic name ([A-Za-z0-9._-]{1,249})")
    sent = _require(obj, "sent_at_ms")
    if not _is_int(sent) or sent < 0:
        raise _Bad("bad_field", "sent_at_ms must be a non-negative integer (epoch milliseconds)")
    features = _require(obj, "features")
    if not isinstance(features, dict):
        raise _Bad("bad_field", "features must be an object")
    for k, v in features.items():
        if v is not None and not isinstance(v, str | bool) and not _is_number(v):
            raise _Bad("bad_field", f"features.{k[:64]} must be a number, string, boolean or null")
    deadline = obj.get("deadline_ms")
    if deadline is not None and (not _is_int(deadline) or not 1 <= deadline <= MAX_DEADLINE_MS):
        raise _Bad("bad_field", f"deadline_ms must be an integer from 1 to {MAX_DEADLINE_MS}")
    routing = obj.get("routing_key")
    if routing is not None and (not isinstance(routing, str) or len(routing) > 256):
        raise _Bad("bad_field", "routing_key must be a string of at most 256 characters")
    return Request(rid, ret, sent, features, deadline, routing)


def parse_score(data: bytes | str | None, source: Source) -> Score | DeadLetter:
    """A score record, or the reason it is not one."""
    return _parse(data, source, score_from_obj)


def parse_score_or_tick(data: bytes | str | None, source: Source) -> Score | Tick | DeadLetter:
    """A record of the scores topic: a model's score or the job's own tick (``--clock log``).

    >>> parse_score_or_tick(b'{"request_id":"r-1","tick_due_ms":40,"policy_version":1,"written_at_ms":9}',
    ...                     Source("scores", 0, 1))
    Tick(request_id='r-1', due_ms=40, policy_version=1, written_at_ms=9)
    >>> s = parse_score_or_tick(b'{"request_id":"r-1","model_id":"gbt","model_version":"3","status":"ok",'
    ...                         b'"output":{"label":1},"scored_at_ms":5,"latency_ms":2}', Source("scores", 0, 2))
    >>> s.ok, s.output, s.latency_ms, s.error
    (True, {'label': 1}, 2.0, None)
    """
    return _parse(data, source, score_or_tick_from_obj)


def score_or_tick_from_obj(obj: dict[str, Any]) -> Score | Tick:
    """A tick is told apart by ``tick_due_ms``, which no score has."""
    return tick_from_obj(obj) if "tick_due_ms" in obj else score_from_obj(obj)


def tick_from_obj(obj: dict[str, Any]) -> Tick:
    rid = _request_id(obj)
    _check_unknown(obj, TICK_FIELDS)
    due = _require(obj, "tick_due_ms")
    if not _is_int(due) or not 0 <= due <= MAX_DEADLINE_MS:
        raise _Bad("bad_field", f"tick_due_ms must be an integer from 0 to {MAX_DEADLINE_MS}")
    version = _require(obj, "policy_version")
    if not _is_int(version) or version < 1:
        raise _Bad("bad_field", "policy_version must be a positive integer")
    written = _require(obj, "written_at_ms")
    if not _is_int(written) or written < 0:
        raise _Bad("bad_field", "written_at_ms must be a non-negative integer (epoch milliseconds)")
    return Tick(rid, due, version, written)


def _finite_number(v: Any) -> bool:
    """``_is_number`` for the fast paths: a float that is finite, or an int a float holds exactly."""
    t = type(v)
    return (t is float and math.isfinite(v)) or (t is int and -(2**53) <= v <= 2**53)


def _output_fast(output: Any) -> bool:
    """True only for an output ``check_output`` accepts as it is (the common case, checked cheaply)."""
    if type(output) is not dict or not output or not output.keys() <= OUTPUT_FIELDS:
        return False
    label = output.get("label", _ABSENT)
    if label is not _ABSENT and not (
        (type(label) is str and len(label) <= 256) or type(label) is int or type(label) is bool
    ):
        return False
    p = output.get("probability", _ABSENT)
    if p is not _ABSENT and not (_finite_number(p) and 0.0 <= p <= 1.0):
        return False
    v = output.get("value", _ABSENT)
    return v is _ABSENT or _finite_number(v)


_ABSENT = object()


def _score_fast(obj: dict[str, Any]) -> Score | None:
    """The score an ``ok`` record well within every rule is (None: let ``score_from_obj`` decide).

    Never accepts what ``score_from_obj`` refuses, and builds the same Score (tests/unit/test_wire.py)."""
    if obj.get("status") != "ok" or not obj.keys() <= SCORE_FIELDS:
        return None
    rid, mid, version = obj.get("request_id"), obj.get("model_id"), obj.get("model_version")
    scored, output = obj.get("scored_at_ms"), obj.get("output")
    latency: Any = obj.get("latency_ms")
    if (
        type(rid) is str
        and type(mid) is str
        and type(version) is str
        and 1 <= len(version) <= 128
        and type(scored) is int
        and scored >= 0
        and _finite_number(latency)
        and latency >= 0
        and _output_fast(output)
        and REQUEST_ID_RE.match(rid)
        and MODEL_ID_RE.match(mid)
    ):
        assert isinstance(output, dict)  # _output_fast checked it
        return Score(rid, mid, version, "ok", dict(output), None, scored, float(latency))
    return None


def score_from_obj(obj: dict[str, Any]) -> Score:
    return _score_fast(obj) or _score_checked(obj)


def _score_checked(obj: dict[str, Any]) -> Score:
    """Every rule of schemas/score.schema.json, in order, each with its own reason."""
    rid = _request_id(obj)
    _check_unknown(obj, SCORE_FIELDS)
    model_id = _require(obj, "model_id")
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
        raise _Bad("bad_field", "model_id must be 1-64 characters of [A-Za-z0-9._-]")
    version = _require(obj, "model_version")
    if not isinstance(version, str) or not 1 <= len(version) <= 128:
        raise _Bad("bad_field", "model_version must be a string of 1-128 characters")
    status = _require(obj, "status")
    if status not in ("ok", "error"):
        raise _Bad("bad_field", "status must be 'ok' or 'error'")
    scored = _require(obj, "scored_at_ms")
    if not _is_int(scored) or scored < 0:
        raise _Bad("bad_field", "scored_at_ms must be a non-negative integer (epoch milliseconds)")
    latency = _require(obj, "latency_ms")
    if not _is_number(latency) or latency < 0:
        raise _Bad("bad_field", "latency_ms must be a finite number >= 0")
    output = obj.get("output")
    error = obj.get("error")
    if status == "ok":
        if output is None:
            raise _Bad("missing_field", "missing field 'output' (required when status is 'ok')")
        output = check_output(output)
        error = None
    else:
        if not isinstance(error, str) or not error:
            raise _Bad("missing_field", "missing field 'error' (required when status is 'error')")
        if output is not None:
            raise _Bad("bad_output", "output must be null when status is 'error'")
        error = error[:MAX_ERROR_CHARS]
    return Score(rid, model_id, version, status, output, error, scored, float(latency))


def check_output(output: Any) -> dict[str, Any]:
    """An output object: label, probability in [0,1], finite value; at least one of them.

    >>> check_output({"label": "fraud", "probability": 0.9})
    {'label': 'fraud', 'probability': 0.9}
    >>> try:
    ...     check_output({"probability": 1.5})
    ... except ValueError as e:  # the parser turns it into a dead letter (bad_output)
    ...     print(e)
    output.probability must be a finite number in [0, 1]
    """
    if not isinstance(output, dict):
        raise _Bad("bad_output", "output must be an object")
    unknown = set(output) - OUTPUT_FIELDS
    if unknown:
        raise _Bad("bad_output", f"output has unknown field(s): {', '.join(sorted(unknown)[:5])}")
    if not output:
        raise _Bad("bad_output", "output needs at least one of label, probability, value")
    nulls = sorted(k for k, v in output.items() if v is None)
    if nulls:
        raise _Bad("bad_output", f"output.{nulls[0]} must not be null (leave the field out instead)")
    label = output.get("label")
    if label is not None and not isinstance(label, str | bool | int):
        raise _Bad("bad_output", "output.label must be an integer, string or boolean")
    if isinstance(label, str) and len(label) > 256:
        raise _Bad("bad_output", "output.label must be at most 256 characters")
    p = output.get("probability")
    if p is not None and (not _is_number(p) or not 0.0 <= p <= 1.0):
        raise _Bad("bad_output", "output.probability must be a finite number in [0, 1]")
    v = output.get("value")
    if v is not None and not _is_number(v):
        raise _Bad("bad_output", "output.value must be a finite number")
    return dict(output)

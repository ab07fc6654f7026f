"""Label feedback for the bandit: labels joined with decision records into per-model rewards. Pure Python.

The truth about a request (a label, ``schemas/label.schema.json``) arrives seconds to minutes after the
request, long after its mailbox closed; the decision record (the mailbox at close, on the decisions
topic) holds every model's answer. The job reads both topics back, keys them by request id and joins
them here; each match gives one reward event: for every model that answered, 1 if its answer was right
and 0 if not (an error score counts as wrong; a model that never answered gives no evidence). Every
model's answer counts, not only the official one's: every model scores every request in the rendezvous.

Rewards are defined for classifiers (a label of 0/1 or false/true); a model's answer is its ``label``,
or ``probability >= 0.5`` without one. Value models give no reward (a label that is another number
matches nothing here); string class labels give none either.

A join entry lives in keyed state as versioned JSON and always has a timer: it is cleared ``ttl_ms``
after it was opened, or after the match (kept that long to refuse a second delivery of the same
decision or label: the decisions sink is at-least-once, and a label may be corrected later; only the
first match counts). Parsing follows ``udfs.wire_in``: a bad record is a ``DeadLetter``, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from udfs import names
from udfs.wire_in import (
    DeadLetter,
    Source,
    _Bad,
    _check_unknown,
    _is_int,
    _is_number,
    _parse,
    _request_id,
    _require,
)
from udfs.wire_out import RewardEvent

LABEL_FIELDS = frozenset({"request_id", "label", "labelled_at_ms"})
STATE_VERSION = 1
DEFAULT_TTL_MS = 600_000
ERROR = None  # a model's answer that was an error score: counted as wrong

# Counters the join reports (names in udfs/names.py).
MATCHED = names.METRIC_LABELS_MATCHED
UNMATCHED = names.METRIC_LABELS_UNMATCHED
UNLABELLED = names.METRIC_DECISIONS_UNLABELLED
DUPLICATE = names.METRIC_FEEDBACK_DUPLICATES


# --- labels --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    request_id: str
    label: bool | int | float
    labelled_at_ms: int

    @property
    def truth(self) -> float:
        """The label as a number (true -> 1.0), the form quality metrics compare with."""
        return float(self.label)

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "label": self.label, "labelled_at_ms": self.labelled_at_ms}


def _label_from_obj(obj: dict[str, Any]) -> Label:
    rid = _request_id(obj)
    _check_unknown(obj, LABEL_FIELDS)
    value = _require(obj, "label")
    if not isinstance(value, bool) and not _is_number(value):
        raise _Bad("bad_field", "label must be 0/1, true/false or a finite number")
    at = _require(obj, "labelled_at_ms")
    if not _is_int(at) or at < 0:
        raise _Bad("bad_field", "labelled_at_ms must be a non-negative integer (epoch milliseconds)")
    return Label(rid, value, at)


def parse_label(data: bytes | str | Mapping[str, Any], source: Source | None = None) -> Label | DeadLetter:
    """A label record, or a dead letter saying why it is not one (the job's parse reason codes).

    >>> parse_label(b'{"request_id": "r-1", "label": 1, "labelled_at_ms": 5}')
    Label(request_id='r-1', label=1, labelled_at_ms=5)
    >>> parse_label({"request_id": "r-1", "label": "1", "labelled_at_ms": 5}).reason
    'bad_field'
    """
    src = source or Source(names.TOPIC_LABELS)
    if isinstance(data, Mapping):
        data = json.dumps(dict(data), allow_nan=True)  # NaN survives the dump, so the parser rejects it
    return _parse(data, src, _label_from_obj)


# --- decision records, read back -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answers:
    """What a decision record says each model answered: model id -> its label, or ERROR."""

    request_id: str
    policy_version: int | None
    answers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "policy_version": self.policy_version, "answers": self.answers}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Answers:
        return cls(d["request_id"], d["policy_version"], dict(d["answers"]))


def answered_label(output: Any) -> Any:
    """A classifier's answer: its label, or probability >= 0.5 as 0/1; None when it has neither.

    >>> answered_label({"label": True, "probability": 0.2}), answered_label({"probability": 0.7})
    (True, 1)
    >>> answered_label({"value": 3.5}) is None
    True
    """
    if not isinstance(output, Mapping):
        return None
    label = output.get("label")
    if label is not None:
        return label
    p = output.get("probability")
    if p is not None and _is_number(p):
        return int(float(p) >= 0.5)
    return None


def _answers_from_obj(obj: dict[str, Any]) -> Answers:
    rid = _request_id(obj)
    scores = obj.get("scores")
    if "result" not in obj or not isinstance(scores, list):
        raise _Bad(names.REASON_BAD_DECISION, "not a decision record: needs result and a list of scores")
    version = obj.get("policy_version")
    if version is not None and not _is_int(version):
        raise _Bad(names.REASON_BAD_DECISION, "policy_version must be an integer or null")
    answers: dict[str, Any] = {}
    for i, s in enumerate(scores):
        if not isinstance(s, dict) or not isinstance(s.get("model_id"), str) or not s["model_id"]:
            raise _Bad(names.REASON_BAD_DECISION, f"scores[{i}]: needs a model_id")
        mid = s["model_id"]
        if s.get("duplicate") or s.get("role") == "unknown" or mid in answers:
            continue  # a model's first score counts; models the policy does not list are not contenders
        if s.get("status") != "ok":
            answers[mid] = ERROR
            continue
        label = answered_label(s.get("output"))
        if label is not None:
            answers[mid] = label
    return Answers(rid, version, answers)


def parse_decision(data: bytes | str | None, source: Source) -> Answers | DeadLetter:
    """A decision record (``schemas/decision.schema.json``) reduced to each model's answer."""
    return _parse(data, source, _answers_from_obj)


def _as_class(v: Any) -> float | None:
    """0/1 (or false/true) as 0.0/1.0; anything else None: not a classifier's label."""
    if isinstance(v, bool):
        return float(v)
    if _is_number(v) and v in (0, 1):
        return float(v)
    return None


def rewards(answers: Mapping[str, Any], truth: Any) -> dict[str, float]:
    """Per model: 1.0 if its answer matches the truth, 0.0 if not or if it failed; models whose answer
    cannot be compared (a string label, a value label) are left out.

    >>> rewards({"gbt": 1, "tree": 0, "lr": ERROR, "txt": "fraud"}, True)
    {'gbt': 1.0, 'tree': 0.0, 'lr': 0.0}
    >>> rewards({"gbt": 1}, 0.5)  # a value model's truth: nothing to reward
    {}
    """
    t = _as_class(truth)
    if t is None:
        return {}
    out = {}
    for mid, answer in answers.items():
        if answer is ERROR:
            out[mid] = 0.0
            continue
        a = _as_class(answer)
        if a is not None:
            out[mid] = 1.0 if a == t else 0.0
    return out


# --- the join --------------------------------------------------------------------------------------------


@dataclass
class JoinEntry:
    """One request's side of the join in keyed state: what has arrived, and when it is cleared."""

    answers: dict[str, Any] | None = None  # Answers.to_dict
    label: dict[str, Any] | None = None  # Label.to_dict
    matched: bool = False
    wake_at_ms: int = 0

    def to_json(self) -> str:
        d = {
            "v": STATE_VERSION,
            "a": self.answers,
            "l": self.label,
            "m": self.matched,
            "wake": self.wake_at_ms,
        }
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JoinEntry:
        d = json.loads(text)
        if d.get("v") != STATE_VERSION:
            raise ValueError(
                f"label join state version {d.get('v')!r} is not supported (expected {STATE_VERSION})"
            )
        return cls(d["a"], d["l"], d["m"], d["wake"])


@dataclass
class JoinStep:
    """What one join transition did: the entry to keep (None: clear), reward events out, counters."""

    entry: JoinEntry | None
    rewards: list[RewardEvent] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)


def _match(entry: JoinEntry, now_ms: int, ttl_ms: int) -> JoinStep:
    assert entry.answers is not None and entry.label is not None
    ans = Answers.from_dict(entry.answers)
    label = entry.label
    entry.matched = True
    entry.wake_at_ms = now_ms + ttl_ms
    given = rewards(ans.answers, label["label"])
    events: list[RewardEvent] = []
    if given:
        events.append(
            {
                "request_id": ans.request_id,
                "policy_version": ans.policy_version,
                "labelled_at_ms": label["labelled_at_ms"],
                "rewards": given,
            }
        )
    # The entry keeps only the flag from now on: enough to refuse a second delivery.
    entry.answers, entry.label = None, None
    return JoinStep(entry, events, [MATCHED])


def on_answers(entry: JoinEntry | None, answers: Answers, now_ms: int, ttl_ms: int) -> JoinStep:
    """A decision record arrives (the first one counts; a re-delivery is a duplicate)."""
    if entry is not None and (entry.matched or entry.answers is not None):
        return JoinStep(entry, counts=[DUPLICATE])
    entry = entry or JoinEntry(wake_at_ms=now_ms + ttl_ms)
    entry.answers = answers.to_dict()
    if entry.label is not None:
        return _match(entry, now_ms, ttl_ms)
    return JoinStep(entry)


def on_label(entry: JoinEntry | None, label: Label, now_ms: int, ttl_ms: int) -> JoinStep:
    """A label arrives: matched at once if its decision is here, else held until it comes or ttl_ms."""
    if entry is not None and entry.matched:
        return JoinStep(entry, counts=[DUPLICATE])
    if entry is not None and entry.label is not None:
        # Two labels before the decision: the later-labelled one (a correction) is kept.
        if label.labelled_at_ms >= entry.label["labelled_at_ms"]:
            entry.label = label.to_dict()
        return JoinStep(entry, counts=[DUPLICATE])
    entry = entry or JoinEntry(wake_at_ms=now_ms + ttl_ms)
    entry.label = label.to_dict()
    if entry.answers is not None:
        return _match(entry, now_ms, ttl_ms)
    return JoinStep(entry)


def on_timer(entry: JoinEntry, now_ms: int) -> JoinStep:
    """Time passed: an entry past its wake time is cleared, counted by what it was still waiting for."""
    if now_ms < entry.wake_at_ms:
        return JoinStep(entry)
    counts = []
    if not entry.matched:
        counts.append(UNMATCHED if entry.label is not None else UNLABELLED)
    return JoinStep(None, counts=counts)

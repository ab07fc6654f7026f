"""What the job writes (see schemas/): the type of every record, and the encoders. Pure Python, no pyflink.

Every record the job writes is typed once, here: one ``TypedDict`` per schema file, its keys in the
order of the schema's ``required`` (which lists every property; tests/unit/test_schemas.py holds the two
together). Types only: the records are plain dicts, built where they are decided (``udfs.mailbox``,
``udfs.feedback``) or by the encoders below from the classes of ``udfs.wire_in`` (which never imports
this module). schemas/README.md lists every file and who writes it.

>>> req = Request("r-1", "results", 5, {})
>>> request_to_dict(req)
{'request_id': 'r-1', 'return_address': 'results', 'sent_at_ms': 5, 'features': {}}
"""

from __future__ import annotations

from typing import Any, TypedDict

from udfs.wire_in import DeadLetter, Request, Score, Tick

# --- Types: one per schema file of a record the job writes ------------------------------------------


class TickRecord(TypedDict):
    """schemas/tick.schema.json (topic scores): ``tick_to_dict``."""

    request_id: str
    tick_due_ms: int
    policy_version: int
    written_at_ms: int


class DeadLetterRecord(TypedDict):
    """schemas/dead_letter.schema.json (topic dead-letters): ``dead_letter_to_dict``."""

    reason: str
    detail: str
    source_topic: str
    partition: int | None
    offset: int | None
    request_id: str | None
    raw: str
    raw_truncated: bool
    raw_encoding: str  # "utf-8" | "base64"
    at_ms: int


class ResultRecord(TypedDict):
    """schemas/result.schema.json (topic: the request's return address): ``udfs.mailbox._result``."""

    request_id: str
    model_id: str | None
    model_version: str | None
    output: Any  # an output object, or on_no_answer's output (null too)
    reason: str  # preferred | fallback | backstop | ensemble | no_answer
    trigger: str  # score | wait_timer | deadline | all_failed
    policy_version: int
    sent_at_ms: int | None
    received_at_ms: int
    decided_at_ms: int
    latency_ms: int
    answered: list[str]
    failed: list[str]


class OfficialView(TypedDict):
    """A canary record's ``official``: what the result said."""

    model_id: str | None
    model_version: str | None
    output: Any
    reason: str


class CanaryView(TypedDict):
    """A canary record's ``canary``: the canary model's first score."""

    model_id: str
    model_version: str
    status: str
    output: dict[str, Any] | None
    arrived_at_ms: int


class CanaryRecord(TypedDict):
    """schemas/canary.schema.json (topic canary): ``udfs.mailbox._canary_record``."""

    request_id: str
    policy_version: int | None
    decided_at_ms: int
    official: OfficialView
    canary: CanaryView | None
    agree: bool | None


class DecisionRecord(TypedDict):
    """schemas/decision.schema.json (topic decisions): ``udfs.mailbox._decision_record``."""

    request_id: str
    policy_version: int | None
    received_at_ms: int | None
    decided_at_ms: int | None
    closed_at_ms: int
    result: ResultRecord | None
    scores: list[dict[str, Any]]  # each: schemas/decision.schema.json $defs


class ArchiveRow(TypedDict):
    """schemas/archive_row.schema.json (the decoy archive's files): ``udfs.mailbox._archive_row``."""

    request_id: str
    received_at_ms: int
    sent_at_ms: int
    return_address: str
    source_topic: str
    partition: int | None
    offset: int | None
    features: str  # the features object as JSON text
    raw: str


class RewardEvent(TypedDict):
    """schemas/reward.schema.json (inside the job: label join -> mailbox): ``udfs.feedback._match``."""

    request_id: str
    policy_version: int | None
    labelled_at_ms: int
    rewards: dict[str, float]


# --- Encoders: a record -> what goes on a topic -----------------------------------------------------


def request_to_dict(req: Request) -> dict[str, Any]:
    """A request as it travels on the requests topic (the fields it has; no nulls)."""
    d: dict[str, Any] = {
        "request_id": req.request_id,
        "return_address": req.return_address,
        "sent_at_ms": req.sent_at_ms,
        "features": req.features,
    }
    if req.deadline_ms is not None:
        d["deadline_ms"] = req.deadline_ms
    if req.routing_key is not None:
        d["routing_key"] = req.routing_key
    return d


def score_to_dict(score: Score) -> dict[str, Any]:
    """A score as it travels (schemas/score.schema.json); a decision record's ``scores`` entries start
    from it.

    >>> s = Score("r-1", "gbt", "3", "ok", {"label": 1}, None, 5, 2.0)
    >>> score_to_dict(s)  # doctest: +NORMALIZE_WHITESPACE
    {'request_id': 'r-1', 'model_id': 'gbt', 'model_version': '3', 'status': 'ok', 'output': {'label': 1},
     'error': None, 'scored_at_ms': 5, 'latency_ms': 2.0}
    """
    return {
        "request_id": score.request_id,
        "model_id": score.model_id,
        "model_version": score.model_version,
        "status": score.status,
        "output": score.output,
        "error": score.error,
        "scored_at_ms": score.scored_at_ms,
        "latency_ms": score.latency_ms,
    }


def tick_to_dict(tick: Tick) -> TickRecord:
    """A tick as the job writes it into the scores topic (``--clock log``).

    >>> tick_to_dict(Tick("r-1", 40, 1, 9))
    {'request_id': 'r-1', 'tick_due_ms': 40, 'policy_version': 1, 'written_at_ms': 9}
    """
    return {
        "request_id": tick.request_id,
        "tick_due_ms": tick.due_ms,
        "policy_version": tick.policy_version,
        "written_at_ms": tick.written_at_ms,
    }


def dead_letter_to_dict(dead: DeadLetter, at_ms: int) -> DeadLetterRecord:
    """A dead letter (``udfs.wire_in.dead_letter`` builds it) as it travels, written at ``at_ms``.

    >>> from udfs.wire_in import Source, dead_letter
    >>> d = dead_letter("not_json", "not valid JSON", Source("requests", 0, 7), '{"request_id": "r-1"')
    >>> dead_letter_to_dict(d, at_ms=1_700_000_000_000)  # doctest: +NORMALIZE_WHITESPACE
    {'reason': 'not_json', 'detail': 'not valid JSON', 'source_topic': 'requests', 'partition': 0,
     'offset': 7, 'request_id': None, 'raw': '{"request_id": "r-1"', 'raw_truncated': False,
     'raw_encoding': 'utf-8', 'at_ms': 1700000000000}
    """
    return {
        "reason": dead.reason,
        "detail": dead.detail,
        "source_topic": dead.source.topic,
        "partition": dead.source.partition,
        "offset": dead.source.offset,
        "request_id": dead.request_id,
        "raw": dead.raw,
        "raw_truncated": dead.raw_truncated,
        "raw_encoding": dead.raw_encoding,
        "at_ms": at_ms,
    }

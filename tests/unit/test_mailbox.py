"""udfs.mailbox: per-request transitions, driven the way the Flink adapter drives them.

`Flink` below is a tiny stand-in for the keyed process function: it keeps the mailbox only as the JSON
text from `Mailbox.to_json` (as the ValueState does), registers a timer at every step's `wake_at_ms`
(and never deletes one, as Flink does not), and calls `on_timer` with now = the timer's time. Records
arriving at the same millisecond as a timer are processed first.

Under ``--clock log`` (``Flink(..., via_log=True)``) it also plays the request's partition of the scores
topic: a tick the mailbox writes reaches the partition behind every score that reached it first, the job
reads the partition in order, and ``on_tick`` acts on the tick when the job reads it back.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from udfs import names
from udfs.mailbox import (
    ARCHIVE,
    CANARY,
    DEAD_LETTER,
    DECISION,
    MAX_EXTRA_SCORES,
    READABLE_STATE_VERSIONS,
    RESULT,
    STATE_VERSION,
    TICK,
    TICK_RESEND_MS,
    TOMBSTONE_PREFIX,
    Mailbox,
    Out,
    Step,
    agreement,
    on_request,
    on_score,
    on_tick,
    on_timer,
    request_id_of,
)
from udfs.policy import Decided, Policy, ScoreView, decide, load_policy, parse_policy
from udfs.wire_in import REQUEST_ID_RE, Request, Score, Source, Tick

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RID = "req-1"


def _validator(name: str) -> Any:
    path = ROOT / "schemas" / f"{name}.schema.json"
    if not path.exists():
        return None
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(path.read_text()))


SCHEMA_OF = {
    RESULT: "result",
    ARCHIVE: "archive_row",
    DECISION: "decision",
    CANARY: "canary",
    DEAD_LETTER: "dead_letter",
    TICK: "tick",
}
_VALIDATORS = {n: _validator(n) for n in SCHEMA_OF.values()}


def assert_valid(kind: str, record: dict[str, Any]) -> None:
    v = _VALIDATORS[SCHEMA_OF[kind]]
    if v is None:
        pytest.skip(f"schemas/{SCHEMA_OF[kind]}.schema.json is missing")
    errs = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(record)]
    assert errs == [], (kind, record, errs)


def policy_with(**over: Any) -> Policy:
    return parse_policy(DEFAULT.to_dict() | over)


def make_request(t: int = 0, rid: str = RID, offset: int = 0, **over: Any) -> tuple[Request, str, Source]:
    d: dict[str, Any] = {
        "request_id": rid,
        "return_address": "results",
        "sent_at_ms": max(t - 2, 0),
        "features": {"b": 2, "a": "x"},
    } | over
    req = Request(
        d["request_id"],
        d["return_address"],
        d["sent_at_ms"],
        d["features"],
        d.get("deadline_ms"),
        d.get("routing_key"),
    )
    return req, json.dumps(d), Source("requests", 1, offset)


def make_score(
    model: str, status: str = "ok", output: Any = None, rid: str = RID, t: int = 0, version: str | None = None
) -> Score:
    if status == "ok":
        output = output if output is not None else {"label": 1, "probability": 0.75}
        error = None
    else:
        output, error = None, f"{model} failed"
    return Score(rid, model, version or f"{model}-v1", status, output, error, t, 1.5)


@dataclass
class Flink:
    policy: Policy
    state: str | None = None
    timers: set[int] = field(default_factory=set)
    now: int = -1
    outs: list[tuple[int, Out]] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)
    # --clock log: a timer's tick goes out to the scores partition and comes back through on_tick. Per tick
    # written, in order: (ms until it reaches the partition, ms more until the job reads it); then (0, 0).
    via_log: bool = False
    tick_delays: Sequence[tuple[int, int]] = ()
    in_flight: list[tuple[int, int, Tick]] = field(default_factory=list)  # (in the partition at, readable at)
    partition: list[tuple[int, Score | Tick, Source | None]] = field(default_factory=list)  # unread, in order
    ticks: list[tuple[int, int, int]] = field(default_factory=list)  # (written at, read at, due_ms) per tick

    def load(self) -> Mailbox | None:
        return None if self.state is None else Mailbox.from_json(self.state)

    def apply(self, t: int, step: Step) -> None:
        mb = step.mailbox
        if mb is None:
            if self.state is not None:
                self.cleared.append(t)
            self.state = None
        else:
            text = mb.to_json()
            again = Mailbox.from_json(text)
            assert again == mb and again.to_json() == text  # what Flink restores is what was stored
            self.state = text
            if mb.wake_at_ms is not None:
                assert mb.wake_at_ms >= t, (mb.wake_at_ms, t)
                self.timers.add(mb.wake_at_ms)
        for o in step.outputs:
            if o.kind == TICK:
                assert self.via_log, "a tick under the local clock"
                k = sum(kind == TICK for kind in self.kinds())
                to_kafka, to_read = self.tick_delays[k] if k < len(self.tick_delays) else (0, 0)
                # One producer: ticks reach the partition in the order they were written.
                at = max([t + to_kafka] + [a for a, _, _ in self.in_flight[-1:]])
                self.in_flight.append((at, at + to_read, Tick.from_dict(o.record)))
            self.outs.append((t, o))
        self.counts.extend(step.counts)
        # The live-mailbox metric (opened - cleared) is exactly the keyed state this key holds.
        live = self.counts.count(names.METRIC_MAILBOXES_OPENED) - self.counts.count(
            names.METRIC_MAILBOXES_CLEARED
        )
        assert live == (self.state is not None), (live, self.state)

    def advance(self, t: int) -> None:
        """Everything before t happens (records at t come before timers at t)."""
        while self.next_thing(until=t - 1):
            pass
        assert t >= self.now, "time only moves forward"
        self.now = t

    def next_thing(self, until: int | None) -> bool:
        """Do the next thing due by ``until`` (None: whatever comes next), False if none is: a tick reaches
        the partition, the job reads the partition's next record, or a timer fires (in this order at one
        ms: a tick that reaches the partition at t is read at t, after the scores of t, before the timers)."""
        due = []
        if self.in_flight:
            due.append((self.in_flight[0][0], 0))
        if self.partition:
            due.append((max(self.partition[0][0], self.now), 1))
        if self.timers:
            due.append((min(self.timers), 2))
        if not due or (until is not None and min(due)[0] > until):
            return False
        t, what = min(due)
        if what == 0:
            _, readable, tick = self.in_flight.pop(0)
            self.partition.append((readable, tick, None))
        elif what == 1:
            self.now = t
            self.read()
        else:
            self.fire()
        return True

    def read(self) -> None:
        """The job reads the next record of the scores partition, now."""
        _, rec, src = self.partition.pop(0)
        if isinstance(rec, Tick):
            self.ticks.append((rec.written_at_ms, self.now, rec.due_ms))
            self.apply(self.now, on_tick(self.load(), rec, self.policy, self.now))
        else:
            assert src is not None
            self.apply(self.now, on_score(self.load(), rec, src, self.policy, self.now))

    def fire(self) -> None:
        tm = min(self.timers)
        self.timers.discard(tm)
        self.fired.append(tm)
        # A mailbox that keeps asking for a timer at a time already passed would spin Flink forever. Under
        # the log clock a timer may fire again at one ms for every due time passed and every score read then
        # (each writes a tick, and a tick without delay is back within the ms).
        assert self.fired.count(tm) <= 3 + 20 * self.via_log, (
            f"timer at {tm} keeps firing: the mailbox never moves on"
        )
        assert len(self.fired) <= 1000, "timers keep coming: the mailbox never settles"
        now = max(tm, self.now)
        self.now = now
        mb = self.load()
        if mb is not None:  # as the adapter: a timer for state that is gone does nothing
            self.apply(now, on_timer(mb, self.policy, now, via_log=self.via_log))

    def request(self, t: int, req: Request, raw: str, src: Source) -> None:
        self.advance(t)
        self.apply(t, on_request(self.load(), req, raw, src, self.policy, t))

    def score(self, t: int, s: Score, src: Source | None = None) -> None:
        """A score reaches the partition at t; the job reads it at once, unless a tick ahead of it is not
        readable yet (under the local clock the partition holds nothing else: it is read at once)."""
        self.advance(t)
        self.partition.append((t, s, src or Source("scores", 2, t)))
        while self.partition and self.partition[0][0] <= t:
            self.read()

    def drain(self, until: int | None = None) -> None:
        while self.next_thing(until):
            pass

    def of(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        return [(t, o.record) for t, o in self.outs if o.kind == kind]

    def kinds(self) -> list[str]:
        return [o.kind for _, o in self.outs]


# --- by hand: the default policy -------------------------------------------------------------------------


def test_happy_path_records() -> None:
    f = Flink(DEFAULT)
    req, raw, src = make_request(1000, routing_key="u1")
    f.request(1000, req, raw, src)
    assert f.kinds() == [ARCHIVE]
    assert f.load().wake_at_ms == 1040  # type: ignore[union-attr]
    f.score(1010, make_score("base", output={"label": 0}))  # the canary answers: nothing official yet
    f.score(1012, make_score("gbt", output={"label": 1, "probability": 0.75}))
    assert f.kinds() == [ARCHIVE, RESULT]
    t, result = f.of(RESULT)[0]
    assert t == 1012 and f.outs[1][1].topic == "results"
    assert result == {
        "request_id": RID,
        "model_id": "gbt",
        "model_version": "gbt-v1",
        "output": {"label": 1, "probability": 0.75},
        "reason": "preferred",
        "trigger": "score",
        "policy_version": 1,
        "sent_at_ms": 998,
        "received_at_ms": 1000,
        "decided_at_ms": 1012,
        "latency_ms": 12,
        "answered": ["base", "gbt"],
        "failed": [],
    }
    f.score(1030, make_score("logreg", "error"))
    assert f.load().wake_at_ms == 1000 + 100 + 1000  # type: ignore[union-attr]  # deadline + late window
    f.drain(until=2099)
    assert f.kinds() == [ARCHIVE, RESULT]
    f.drain(until=2100)
    assert f.kinds() == [ARCHIVE, RESULT, DECISION, CANARY]
    (tc, decision), (_, canary) = f.of(DECISION)[0], f.of(CANARY)[0]
    assert tc == 2100 and decision["closed_at_ms"] == 2100 and decision["decided_at_ms"] == 1012
    assert decision["result"] == result
    assert [(s["model_id"], s["role"], s["late"], s["duplicate"]) for s in decision["scores"]] == [
        ("base", "canary", False, False),
        ("gbt", "incumbent", False, False),
        ("logreg", "challenger", True, False),
    ]
    assert (
        decision["scores"][2]["error"] == "logreg failed" and decision["scores"][2]["arrived_at_ms"] == 1030
    )
    assert "src" not in decision["scores"][0] and "request_id" not in decision["scores"][0]
    assert canary == {
        "request_id": RID,
        "policy_version": 1,
        "decided_at_ms": 1012,
        "official": {
            "model_id": "gbt",
            "model_version": "gbt-v1",
            "output": {"label": 1, "probability": 0.75},
            "reason": "preferred",
        },
        "canary": {
            "model_id": "base",
            "model_version": "base-v1",
            "status": "ok",
            "output": {"label": 0},
            "arrived_at_ms": 1010,
        },
        "agree": False,
    }
    archive = f.of(ARCHIVE)[0][1]
    assert archive == {
        "request_id": RID,
        "received_at_ms": 1000,
        "sent_at_ms": 998,
        "return_address": "results",
        "source_topic": "requests",
        "partition": 1,
        "offset": 0,
        "features": '{"a":"x","b":2}',
        "raw": raw,
    }
    tomb = f.load()
    assert tomb is not None and tomb.closed and tomb.scores == [] and tomb.result is None
    assert tomb.wake_at_ms == 2100 + DEFAULT.dedupe_retention_ms
    f.drain()
    assert f.state is None and f.cleared == [2100 + DEFAULT.dedupe_retention_ms]
    for _, o in f.outs:
        assert_valid(o.kind, o.record)
    assert sorted(f.counts) == sorted(
        [
            names.METRIC_REQUESTS,
            names.METRIC_SCORES,
            names.METRIC_SCORES,
            names.METRIC_RESULTS,
            names.METRIC_SCORES,
            names.METRIC_LATE_SCORES,
            names.METRIC_MAILBOXES_OPENED,
            names.METRIC_MAILBOXES_CLEARED,
        ]
    )


def test_fallback_by_wait_timer_and_backstop() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.score(5, make_score("tree", output={"value": 3.5}))
    f.score(6, make_score("logreg", "error"))
    f.drain(until=39)
    assert f.of(RESULT) == []
    f.drain(until=40)
    ((t, result),) = f.of(RESULT)
    assert (t, result["model_id"], result["reason"], result["trigger"]) == (
        40,
        "tree",
        "backstop",
        "wait_timer",
    )
    assert (result["answered"], result["failed"], result["received_at_ms"]) == (["tree"], ["logreg"], 0)


def test_request_received_at_time_zero_still_times_out_waits() -> None:
    # Regression: received_at_ms == 0 was read as "missing" and the waits restarted from the timer's time.
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.score(10, make_score("logreg"))
    f.drain(until=40)
    ((t, result),) = f.of(RESULT)
    assert (t, result["model_id"], result["trigger"]) == (40, "logreg", "wait_timer")


def test_no_answer_at_deadline_with_request_deadline_override() -> None:
    p = policy_with(on_no_answer={"output": {"label": -1}})
    f = Flink(p)
    f.request(100, *make_request(100, deadline_ms=25))
    f.score(110, make_score("mlp"))  # a shadow: never official
    f.drain(until=124)
    assert f.of(RESULT) == []
    f.drain(until=125)
    ((t, result),) = f.of(RESULT)
    assert (t, result["reason"], result["trigger"], result["output"], result["model_id"]) == (
        125,
        "no_answer",
        "deadline",
        {"label": -1},
        None,
    )
    assert result["answered"] == ["mlp"]  # every ok score present, official or not
    assert f.load().wake_at_ms == 125 + p.late_window_ms  # type: ignore[union-attr]
    f.drain(until=125 + p.late_window_ms)
    canary = f.of(CANARY)[0][1]
    assert (canary["canary"], canary["agree"]) == (None, None)
    assert names.METRIC_NO_ANSWER in f.counts


def test_all_failed_decides_at_once() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    for i, m in enumerate(("tree", "gbt", "logreg")):
        f.score(1 + i, make_score(m, "error"))
    ((t, result),) = f.of(RESULT)
    assert (t, result["reason"], result["trigger"], result["failed"]) == (
        3,
        "no_answer",
        "all_failed",
        ["tree", "gbt", "logreg"],
    )


def test_scores_before_the_request_are_used_at_once() -> None:
    f = Flink(DEFAULT)
    f.score(0, make_score("logreg"))
    f.score(1, make_score("gbt", output={"label": 0}))
    assert f.kinds() == [] and f.load().wake_at_ms == DEFAULT.orphan_timeout_ms  # type: ignore[union-attr]
    f.request(7, *make_request(7))
    assert f.kinds() == [ARCHIVE, RESULT]
    result = f.of(RESULT)[0][1]
    assert (result["model_id"], result["trigger"], result["decided_at_ms"], result["latency_ms"]) == (
        "gbt",
        "score",
        7,
        0,
    )
    f.drain(until=DEFAULT.orphan_timeout_ms)  # the stale orphan timer fires: nothing happens
    assert f.kinds() == [ARCHIVE, RESULT, DECISION, CANARY]
    assert f.of(DEAD_LETTER) == []


def test_a_duplicate_score_does_not_trigger_a_decision() -> None:
    # At 40 the incumbent's wait runs out; a duplicate arriving at that ms (before the timer) changes
    # nothing, so the decision is the timer's, not a score's.
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.score(10, make_score("logreg"))
    f.score(40, make_score("logreg", output={"label": 5}))
    assert f.of(RESULT) == []
    f.drain(until=40)
    ((t, result),) = f.of(RESULT)
    assert (t, result["model_id"], result["trigger"], result["output"]) == (
        40,
        "logreg",
        "wait_timer",
        {"label": 1, "probability": 0.75},
    )


def test_duplicate_score_is_flagged_and_ignored() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.score(1, make_score("gbt", "error"))
    f.score(2, make_score("gbt", output={"label": 9}))  # a second score from gbt cannot override its error
    f.score(3, make_score("logreg", output={"label": 4}))
    result = f.of(RESULT)[0][1]
    assert (result["model_id"], result["failed"], result["answered"]) == ("logreg", ["gbt"], ["logreg"])
    f.drain(until=2000)
    scores = f.of(DECISION)[0][1]["scores"]
    assert [(s["model_id"], s["duplicate"], s["late"]) for s in scores] == [
        ("gbt", False, False),
        ("gbt", True, False),
        ("logreg", False, False),
    ]
    assert f.counts.count(names.METRIC_DUPLICATES) == 1


def test_duplicate_request_before_and_after_decision_and_after_close() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.request(5, *make_request(5, offset=1, return_address="elsewhere", deadline_ms=1))
    before = f.load()
    f.score(10, make_score("gbt"))
    f.request(20, *make_request(20, offset=2))
    f.drain(until=1100)
    f.request(1200, *make_request(1200, offset=3))
    results = f.of(RESULT)
    assert len(results) == 1 and f.outs[[o.kind for _, o in f.outs].index(RESULT)][1].topic == "results"
    letters = f.of(DEAD_LETTER)
    assert [(t, d["reason"], d["offset"], d["request_id"]) for t, d in letters] == [
        (5, "duplicate_request", 1, RID),
        (20, "duplicate_request", 2, RID),
        (1200, "duplicate_request", 3, RID),
    ]
    assert json.loads(letters[0][1]["raw"])["return_address"] == "elsewhere"
    assert before is not None and before.deadline_ms is None and before.return_address == "results"
    for _, d in letters:
        assert_valid(DEAD_LETTER, d)
    assert f.counts.count(names.METRIC_DUPLICATES) == 3 and f.counts.count(names.METRIC_REQUESTS) == 1


def test_score_after_close() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.drain(until=1100)
    assert f.kinds() == [ARCHIVE, RESULT, DECISION, CANARY]
    f.score(1101, make_score("gbt"), Source("scores", 4, 77))
    ((t, d),) = f.of(DEAD_LETTER)
    assert (t, d["reason"], d["request_id"], d["source_topic"], d["partition"], d["offset"], d["at_ms"]) == (
        1101,
        "score_after_close",
        RID,
        "scores",
        4,
        77,
        1101,
    )
    assert json.loads(d["raw"])["model_id"] == "gbt" and not d["raw_truncated"]
    assert_valid(DEAD_LETTER, d)
    assert f.of(RESULT)[0][1]["reason"] == "no_answer"


def test_orphan_scores_become_dead_letters_and_still_wait_for_their_request() -> None:
    p = policy_with(orphan_timeout_ms=50, dedupe_retention_ms=500)
    f = Flink(p)
    f.score(10, make_score("gbt", "error"), Source("scores", 0, 1))
    f.score(30, make_score("gbt"), Source("scores", 1, 2))
    f.drain(until=59)
    assert f.kinds() == [] and f.state is not None
    f.drain(until=60)
    letters = f.of(DEAD_LETTER)
    assert [(t, d["reason"], d["partition"], d["offset"], d["request_id"]) for t, d in letters] == [
        (60, "orphan_score", 0, 1, RID),
        (60, "orphan_score", 1, 2, RID),
    ]
    assert [json.loads(d["raw"])["duplicate"] for _, d in letters] == [False, True]
    assert letters[0][1]["detail"] == (
        "no request with this id arrived within the orphan timeout (score from gbt); held for the dedupe "
        "retention (500 ms after the orphan timeout) in case the request still comes"
    )
    for _, d in letters:
        assert_valid(DEAD_LETTER, d)
    # Reported, not dropped: the mailbox keeps the scores for the dedupe retention, flagged orphaned.
    assert f.counts.count(names.METRIC_ORPHANS) == 1 and f.cleared == []
    mb = f.load()
    assert mb is not None and mb.orphaned and mb.wake_at_ms == 60 + 500 and len(mb.scores) == 2
    assert '"orphaned":true' in f.state
    # A score arriving now is held as well, and reported at once (one dead letter per orphan score).
    f.score(80, make_score("logreg", output={"label": 0}), Source("scores", 0, 3))
    assert [(t, d["reason"], d["offset"]) for t, d in f.of(DEAD_LETTER)[2:]] == [(80, "orphan_score", 3)]
    assert f.counts.count(names.METRIC_ORPHANS) == 1  # per mailbox
    # The request comes after all: answered over the held scores at once, as if it had come before the
    # timeout (gbt's first score failed and its second is a duplicate: logreg's is the answer).
    f.request(100, *make_request(100))
    mb = f.load()
    assert mb is not None and not mb.orphaned and '"orphaned"' not in f.state
    f.drain()
    ((t, result),) = f.of(RESULT)
    assert (t, result["model_id"], result["reason"], result["failed"]) == (100, "logreg", "fallback", ["gbt"])
    ((_, decision),) = f.of(DECISION)
    assert [s["model_id"] for s in decision["scores"]] == ["gbt", "gbt", "logreg"]
    assert len(f.of(DEAD_LETTER)) == 3 and f.state is None


def test_an_orphan_is_dropped_after_the_retention_and_a_later_request_is_a_new_one() -> None:
    p = policy_with(orphan_timeout_ms=50, dedupe_retention_ms=500)
    f = Flink(p)
    f.score(10, make_score("gbt"), Source("scores", 0, 1))
    f.drain(until=559)
    assert [t for t, _ in f.of(DEAD_LETTER)] == [60] and f.state is not None and f.cleared == []
    assert on_timer(f.load(), p, 559).mailbox == f.load()  # type: ignore[arg-type]  # a stale timer: nothing
    f.drain(until=560)
    assert f.state is None and f.cleared == [560] and len(f.of(DEAD_LETTER)) == 1  # no second letter
    assert f.counts.count(names.METRIC_ORPHANS) == 1
    # The request after the retention: a fresh mailbox, the orphans are gone (as a duplicate after the
    # retention is answered again).
    f.request(600, *make_request(600))
    fresh = f.load()
    assert fresh is not None and fresh.scores == [] and fresh.first_seen_ms == 600
    f.drain()
    assert f.of(RESULT)[0][1]["reason"] == "no_answer"


def test_without_dedupe_retention_an_orphan_is_dropped_at_its_timeout() -> None:
    p = policy_with(orphan_timeout_ms=50, dedupe_retention_ms=0)
    f = Flink(p)
    f.score(10, make_score("gbt"), Source("scores", 0, 1))
    f.drain(until=60)
    ((t, letter),) = f.of(DEAD_LETTER)
    assert (t, letter["reason"]) == (60, "orphan_score")
    assert letter["detail"] == "no request with this id arrived within the orphan timeout (score from gbt)"
    assert f.state is None and f.cleared == [60]


def test_ticks_before_their_request_are_kept_past_the_orphan_timeout() -> None:
    """A tick read before its request (a replay reading the scores topic ahead of the requests) is kept
    as scores are: the orphan timeout reports nothing (a tick is not a score), and a request after it is
    answered as one before it."""
    p = policy_with(orphan_timeout_ms=50, dedupe_retention_ms=500)
    tick = Tick(RID, 100, p.version, 0)  # the deadline ran out in the first run
    answers = []
    for request_at in (20, 70):  # before the orphan timeout, after it
        f = Flink(p)
        f.score(0, make_score("tree"), Source("scores", 0, 1))
        f.advance(5)
        f.apply(5, on_tick(f.load(), tick, p, 5))  # read after the score
        f.drain(until=request_at - 1)
        mb = f.load()
        assert mb is not None and mb.ticks == [[1, 100]] and mb.orphaned is (request_at > 50)
        assert [t for t, _ in f.of(DEAD_LETTER)] == ([50] if request_at > 50 else [])
        f.request(request_at, *make_request(request_at))
        ((t, result),) = f.of(RESULT)
        assert t == request_at
        answers.append((result["model_id"], result["reason"], result["trigger"]))
    assert answers[0] == answers[1] and answers[0][0] == "tree"

    # Only ticks, and no request ever: kept through the orphan timeout without a dead letter, then dropped.
    f = Flink(p)
    f.apply(0, on_tick(None, tick, p, 0))
    f.drain(until=50)
    assert f.outs == [] and f.load().orphaned and f.load().wake_at_ms == 550  # type: ignore[union-attr]
    assert names.METRIC_ORPHANS not in f.counts
    f.drain()
    assert f.state is None and f.cleared == [550] and f.outs == []
    assert f.counts.count(names.METRIC_TICKS_IGNORED) == 1


def test_the_orphaned_flag_is_kept_in_state_only_when_set() -> None:
    p = policy_with(orphan_timeout_ms=50)
    mb = on_score(None, make_score("gbt"), Source("scores", 0, 1), p, 0).mailbox
    assert mb is not None and not mb.orphaned
    text = mb.to_json()
    assert '"orphaned"' not in text  # what state written before the flag existed looks like
    assert Mailbox.from_json(text).orphaned is False and Mailbox.from_json(text) == mb
    orphaned = on_timer(mb, p, 50).mailbox
    assert orphaned is not None and orphaned.orphaned and not orphaned.is_tombstone
    again = Mailbox.from_json(orphaned.to_json())
    assert again == orphaned and again.orphaned and again.to_json() == orphaned.to_json()


def test_no_dedupe_retention_clears_at_close() -> None:
    p = policy_with(dedupe_retention_ms=0, late_window_ms=0)
    f = Flink(p)
    f.request(0, *make_request(0))
    f.score(3, make_score("gbt"))
    f.drain()
    assert f.state is None and f.cleared == [100]  # decided at 3, closed at the deadline
    assert f.kinds() == [ARCHIVE, RESULT, DECISION, CANARY]
    # With nothing kept, a replay is a new request (the documented cost of retention 0).
    f.request(200, *make_request(200))
    assert f.kinds()[-1] == ARCHIVE


def test_tombstone_expires_after_retention() -> None:
    p = policy_with(dedupe_retention_ms=500, late_window_ms=0)
    f = Flink(p)
    f.request(0, *make_request(0))
    f.drain(until=100)  # decided and closed at the deadline (late window 0)
    assert f.load().closed and f.load().wake_at_ms == 600  # type: ignore[union-attr]
    f.request(599, *make_request(599))
    assert f.kinds()[-1] == DEAD_LETTER
    f.drain(until=600)
    assert f.state is None and f.cleared == [600]


def test_late_window_zero_closes_when_decided_at_deadline() -> None:
    p = policy_with(late_window_ms=0)
    f = Flink(p)
    f.request(0, *make_request(0))
    f.drain(until=100)
    assert f.kinds() == [ARCHIVE, RESULT, DECISION, CANARY]
    assert f.of(DECISION)[0][1]["closed_at_ms"] == 100


def test_early_timers_do_nothing() -> None:
    mb = on_request(None, *make_request(0), DEFAULT, 0).mailbox
    assert mb is not None and mb.wake_at_ms == 40
    step = on_timer(mb, DEFAULT, 10)  # a stale timer while undecided: re-evaluates, same wait
    assert step.outputs == [] and step.mailbox is mb and mb.wake_at_ms == 40
    decided = on_score(mb, make_score("gbt"), Source("scores"), DEFAULT, 20).mailbox
    assert decided is not None and decided.result is not None
    step = on_timer(decided, DEFAULT, 40)
    assert step.outputs == [] and step.mailbox is decided
    orphan = on_score(None, make_score("gbt"), Source("scores"), DEFAULT, 0).mailbox
    assert orphan is not None
    step = on_timer(orphan, DEFAULT, DEFAULT.orphan_timeout_ms - 1)
    assert step.outputs == [] and step.mailbox is orphan


def test_state_version_is_checked() -> None:
    mb = on_request(None, *make_request(0), DEFAULT, 0).mailbox
    assert mb is not None
    d = json.loads(mb.to_json())
    assert d["v"] == STATE_VERSION
    with pytest.raises(ValueError, match="state version"):
        Mailbox.from_json(json.dumps(d | {"v": STATE_VERSION + 1}))


@pytest.mark.parametrize(
    ("official", "canary", "agree"),
    [
        ({"label": 1}, {"status": "ok", "output": {"label": 1}}, True),
        ({"label": "a"}, {"status": "ok", "output": {"label": "b"}}, False),
        ({"label": 1}, {"status": "ok", "output": {"label": True}}, False),  # JSON 1 is not true
        ({"label": "1"}, {"status": "ok", "output": {"label": 1}}, False),
        ({"label": 1.0}, {"status": "ok", "output": {"label": 1}}, False),  # JSON 1.0 is written apart
        ({"label": [1, "a"]}, {"status": "ok", "output": {"label": [1, "a"]}}, True),
        ({"label": [1]}, {"status": "ok", "output": {"label": [True]}}, False),  # nested, as above
        ({"label": {"k": 0}}, {"status": "ok", "output": {"label": {"k": False}}}, False),
        ({"probability": 0.7}, {"status": "ok", "output": {"probability": 0.5}}, True),
        ({"probability": 0.2}, {"status": "ok", "output": {"probability": 0.5}}, False),
        ({"label": 1, "probability": 0.2}, {"status": "ok", "output": {"probability": 0.1}}, True),
        ({"value": 3}, {"status": "ok", "output": {"value": 3}}, None),
        ({"label": 1}, {"status": "error", "output": None}, None),
        (None, {"status": "ok", "output": {"label": 1}}, None),
        ({"label": 1}, None, None),
    ],
)
def test_agreement(official: Any, canary: Any, agree: bool | None) -> None:
    assert agreement(official, canary) is agree


# --- properties -------------------------------------------------------------------------------------------

OFFICIAL_ROLES = ("incumbent", "challenger", "backstop")


@st.composite
def policies(draw: st.DrawFn, min_retention_ms: int = 21) -> Policy:
    deadline = draw(st.integers(1, 120))
    roles = draw(st.lists(st.sampled_from(["challenger", "challenger", "backstop"]), min_size=1, max_size=3))
    if draw(st.booleans()):
        roles[0] = "incumbent"
    roles += draw(st.sampled_from([[], ["canary"], ["shadow"], ["canary", "shadow"]]))
    models = []
    for i, role in enumerate(draw(st.permutations(roles))):
        m: dict[str, Any] = {"id": f"m{i}", "role": role}
        if role in OFFICIAL_ROLES:
            wait = draw(st.integers(0, deadline) | st.integers(0, deadline) | st.none())
            if wait is not None:
                m["wait_ms"] = wait
            m["weight"] = draw(st.sampled_from([1, 2, 0.5]))
        models.append(m)
    return parse_policy(
        {
            "version": draw(st.integers(1, 9)),
            "deadline_ms": deadline,
            "decide": draw(
                st.sampled_from(["first_in_order", "first_in_order", "majority_vote", "weighted_average"])
            ),
            "models": models,
            "on_no_answer": draw(st.sampled_from([{"output": None}, {"output": {"label": "none"}}])),
            "late_window_ms": draw(st.integers(0, 150)),
            "orphan_timeout_ms": draw(st.integers(31, 10_000)),  # longer than any wait for the request below
            # The tombstone outlives every record below (lifecycles: min_retention_ms).
            "dedupe_retention_ms": draw(st.integers(min_retention_ms, 5_000)),
            "min_votes": draw(st.integers(1, sum(r in OFFICIAL_ROLES for r in roles))),
        }
    )


score_outputs = st.sets(st.sampled_from(["label", "probability", "value"]), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries(
        {
            k: {
                "label": st.sampled_from(["a", "b", 0, 1]),
                "probability": st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
                "value": st.integers(-50, 50),
            }[k]
            for k in sorted(keys)
        }
    )
)


@dataclass(frozen=True)
class Ev:
    t: int
    kind: str  # "request" | "score"
    req: Request | None = None
    raw: str = ""
    score: Score | None = None
    src: Source = Source("x")


@st.composite
def lifecycles(
    draw: st.DrawFn, min_retention_ms: int = 21, after_edges_ms: int = 0
) -> tuple[Policy, list[Ev]]:
    """One request, maybe duplicates of it, and scores (some before it) up to 20 ms after its close; the
    tombstone outlives them all (``min_retention_ms``, at least 20), so nothing opens a second mailbox.
    ``after_edges_ms``: some scores also come up to that long after a wait or the deadline ran out."""
    policy = draw(policies(min_retention_ms))
    r = draw(st.integers(0, 30))
    own_deadline = draw(st.none() | st.integers(1, 150))
    horizon = r + (own_deadline or policy.deadline_ms) + policy.late_window_ms + 20
    own: dict[str, Any] = {} if own_deadline is None else {"deadline_ms": own_deadline}
    req, raw, src = make_request(r, offset=0, **own)
    evs = [Ev(r, "request", req=req, raw=raw, src=src)]
    for k in range(draw(st.integers(0, 2))):  # duplicates of the request, maybe with other content
        t = draw(st.integers(r, horizon))
        address = draw(st.sampled_from(["results", "r2"]))
        # Same deadline as the original: at the same ms either may come first, and the horizon below
        # (which the tombstone must outlive) is worked out from that deadline.
        dreq, dup_raw, dsrc = make_request(t, offset=k + 1, return_address=address, **own)
        evs.append(Ev(t, "request", req=dreq, raw=dup_raw, src=dsrc))
    deadline_at = r + (own_deadline or policy.deadline_ms)
    close = deadline_at + policy.late_window_ms
    # Mostly before the deadline, some at the very ms a timer fires, some late or after close.
    edges = {r + m.wait_ms for m in policy.official if m.wait_ms is not None} | {
        r,
        deadline_at,
        close,
        close + 1,
    }
    # A model's wait can outlast a request's own shorter deadline: keep edges inside the horizon,
    # which the tombstone (dedupe_retention_ms >= 21) is sized to outlive.
    edges = {e for e in edges if e <= horizon}
    times = st.integers(0, deadline_at) | st.sampled_from(sorted(edges)) | st.integers(0, horizon)
    if after_edges_ms:  # --clock log: while the tick of a wait or the deadline is on its way
        after = st.sampled_from(sorted(edges)).flatmap(
            lambda e: st.integers(e, min(e + after_edges_ms, horizon))
        )
        times |= after | after  # twice: half the scores, most of them inside some tick's delay
    official = [m.id for m in policy.official]
    ids = [m.id for m in policy.models] + ["ghost"]
    for k in range(draw(st.integers(0, 8))):
        mid = draw(st.sampled_from(official) | st.sampled_from(ids))
        t = draw(times)
        ok = draw(st.booleans() | st.just(True))
        s = make_score(
            mid, "ok" if ok else "error", draw(score_outputs) if ok else None, t=t, version=f"{mid}-v{k}"
        )
        evs.append(Ev(t, "score", score=s, src=Source("scores", k % 3, 100 + k)))
    order = draw(st.permutations(range(len(evs))))  # ties at the same ms in any order
    evs = [evs[i] for i in order]
    evs.sort(key=lambda e: e.t)  # stable: keeps the drawn order within a millisecond
    return policy, evs


def public(s: Score, arrived: int, policy: Policy, late: bool, duplicate: bool) -> dict[str, Any]:
    return {
        "model_id": s.model_id,
        "model_version": s.model_version,
        "status": s.status,
        "output": s.output,
        "error": s.error,
        "scored_at_ms": s.scored_at_ms,
        "latency_ms": s.latency_ms,
        "arrived_at_ms": arrived,
        "role": policy.role_of(s.model_id),
        "duplicate": duplicate,
        "late": late,
    }


def expect_agree(result: dict[str, Any], canary: dict[str, Any] | None) -> bool | None:
    if canary is None or canary["status"] != "ok" or result["reason"] == "no_answer":
        return None
    a, b = result["output"], canary["output"]
    if not isinstance(a, dict):
        return None
    if "label" in a and "label" in b:
        return json.dumps(a["label"]) == json.dumps(b["label"])
    if "probability" in a and "probability" in b:
        return (a["probability"] >= 0.5) == (b["probability"] >= 0.5)
    return None


def run(
    policy: Policy, evs: list[Ev], via_log: bool = False, tick_delays: Sequence[tuple[int, int]] = ()
) -> Flink:
    f = Flink(policy, via_log=via_log, tick_delays=tick_delays)
    for e in evs:
        if e.kind == "request":
            assert e.req is not None
            f.request(e.t, e.req, e.raw, e.src)
        else:
            assert e.score is not None
            f.score(e.t, e.score, e.src)
    f.drain()
    return f


MAX_TICK_DELAY_MS = 30


@st.composite
def tick_delays(draw: st.DrawFn) -> list[tuple[int, int]]:
    """--clock log, per tick written, in order: ms until it reaches the partition and ms more until the job
    reads it (nothing behind it is read before). Mostly none; else up to MAX_TICK_DELAY_MS, split."""
    delays = []
    for _ in range(8):  # more than a request writes here but for a rare run of duplicate ticks: then none
        total = draw(st.just(0) | st.integers(1, MAX_TICK_DELAY_MS))
        to_kafka = draw(st.integers(0, total))
        delays.append((to_kafka, total - to_kafka))
    return delays


class Verdicts:
    """``decide`` over one request's scores as the mailbox reads them: the first score per model, every
    score in order, and the first decision (when, what, and the scores it saw)."""

    def __init__(self, policy: Policy, received_at: int, deadline_at: int) -> None:
        self.policy, self.r, self.deadline_at = policy, received_at, deadline_at
        self.present: dict[str, ScoreView] = {}  # first score per model, as decide sees it
        self.seen: list[tuple[int, Score]] = []  # every score in the mailbox, in order
        self.decided: tuple[int, Decided, list[tuple[int, Score]]] | None = None

    def add(self, t: int, s: Score | None) -> bool:
        """A score read at t; True if it is its model's first (a duplicate never triggers a decision)."""
        assert s is not None
        fresh = s.model_id not in self.present
        if fresh:
            self.present[s.model_id] = ScoreView(s.ok, s.output, s.model_version)
        self.seen.append((t, s))
        return fresh

    def decide(self, t: int, clock: int, by_timer: bool) -> int | None:
        """Decide at wall time t, the policy's clock at ``clock``; None, or the due time it waits for."""
        if self.decided is not None:
            return None
        v = decide(self.policy, self.present, self.r, self.deadline_at, clock, by_timer)
        if isinstance(v, Decided):
            self.decided = (t, v, list(self.seen))
            return None
        return v.wake_at_ms


@dataclass
class Expected:
    """What should have happened, worked out from the events (and the ticks' delays) alone."""

    decided_at: int
    verdict: Decided
    before: list[tuple[int, Score]]  # the scores the decision saw
    read_at: list[int]  # per event: when the job read it (a score; a request: its time)
    ticks: list[tuple[int, int, int]] = field(default_factory=list)  # (written at, read at, due_ms)
    ticks_read: int = 0  # ticks that moved the clock; the others are ignored


def the_request(policy: Policy, evs: list[Ev]) -> tuple[int, int, int]:
    """The index of the request the mailbox takes (the first), its arrival, and its deadline."""
    first = next(i for i, e in enumerate(evs) if e.kind == "request")
    req = evs[first].req
    assert req is not None
    return first, evs[first].t, evs[first].t + (req.deadline_ms or policy.deadline_ms)


def expect_local(policy: Policy, evs: list[Ev]) -> Expected:
    """--clock local: the policy's clock moves only when a timer fires, to the due time it was set for
    (a wait or the deadline that decide asked to be woken at), never by a record or a passing ms; a timer
    at t fires after the records of t, and one set for a passed due time fires at once."""
    first, r, deadline_at = the_request(policy, evs)
    v = Verdicts(policy, r, deadline_at)
    clock = r
    due: int | None = None  # while undecided: the due time decide waits for; its timer at max(now, due)
    timer: int | None = None

    def evaluate(t: int, by_timer: bool) -> None:
        nonlocal due, timer
        nxt = v.decide(t, clock, by_timer)
        if nxt is not None:
            due, timer = nxt, max(t, nxt)

    # Scores held before the request count one by one, in the order they came, as if the request had
    # come first: where the request falls among them must not change the decision (a replay moves it).
    evaluate(r, False)
    for e in evs[:first]:
        if v.add(e.t, e.score):
            evaluate(r, False)
    i = first + 1
    for t in range(r, deadline_at + 1):
        while i < len(evs) and evs[i].t == t:
            if evs[i].kind == "score" and v.add(t, evs[i].score):
                evaluate(t, False)
            i += 1
        while v.decided is None and timer is not None and timer <= t:
            assert due is not None
            clock = max(clock, due)
            evaluate(t, True)
    assert v.decided is not None
    return Expected(*v.decided, read_at=[e.t for e in evs])


def expect_log(policy: Policy, evs: list[Ev], delays: Sequence[tuple[int, int]]) -> Expected:
    """--clock log: the policy's clock moves only when the job reads a tick back from the scores partition.

    A brute force over every ms of that partition: scores reach it at their times; a tick its delay after
    the timer wrote it (ticks in the order written), behind every score that reached it by then; the job
    reads it in order, a tick no sooner than its read delay and nothing behind a tick before the tick. So
    the decision sees the scores ahead of the tick, at the time the job reads the tick.
    """
    first, r, deadline_at = the_request(policy, evs)
    v = Verdicts(policy, r, deadline_at)
    read_at = [e.t for e in evs]
    clock = r  # the due time of the newest tick applied, or the request's arrival
    due: int | None = None  # while undecided: the due time the mailbox waits for, and its timer
    timer: int | None = None
    ticks: list[list[int]] = []  # per tick written: [written at, read at, due_ms]
    ticks_read = 0

    def evaluate(t: int, by_timer: bool) -> None:
        nonlocal due, timer
        nxt = v.decide(t, clock, by_timer)
        if nxt is not None:
            # Each evaluation sets the timer: at the due time, or now if that passed (a tick for it may be
            # in flight already: then another is written, and ignored when read).
            due, timer = nxt, max(t, nxt)

    # Before the request no tick exists: the scores held are read as they came, and count as above.
    evaluate(r, False)
    for e in evs[:first]:
        if v.add(e.t, e.score):
            evaluate(r, False)
    coming = [i for i in range(first + 1, len(evs)) if evs[i].kind == "score"]
    partition: list[tuple[int, int, bool]] = []  # unread: (readable at, event or tick index, is a tick)
    in_flight: list[tuple[int, int, int]] = []  # ticks written: (reach the partition at, readable at, index)
    t = r
    while coming or in_flight or partition or v.decided is None:
        assert t <= r + TICK_RESEND_MS, "the oracle never settles"
        while coming and evs[coming[0]].t == t:
            i = coming.pop(0)
            partition.append((t, i, False))
        while True:  # at t: ticks reach the partition (after the scores of t), records are read, timers fire
            if in_flight and in_flight[0][0] <= t:
                _, readable, k = in_flight.pop(0)
                partition.append((readable, k, True))
            elif partition and partition[0][0] <= t:
                _, i, is_tick = partition.pop(0)
                if not is_tick:
                    read_at[i] = t
                    if v.decided is None and v.add(t, evs[i].score):
                        evaluate(t, False)
                else:
                    ticks[i][1] = t
                    if v.decided is None and r + ticks[i][2] > clock:  # else ignored: decided, or passed
                        clock = r + ticks[i][2]
                        ticks_read += 1
                        evaluate(t, True)
            elif v.decided is None and timer is not None and timer <= t:
                assert due is not None
                to_kafka, to_read = delays[len(ticks)] if len(ticks) < len(delays) else (0, 0)
                at = max([t + to_kafka] + [a for a, _, _ in in_flight[-1:]])
                in_flight.append((at, at + to_read, len(ticks)))
                ticks.append([t, -1, due - r])
                timer = t + TICK_RESEND_MS  # until the tick is back (never needed here: none is lost)
            else:
                break
        t += 1
    assert v.decided is not None
    return Expected(
        *v.decided, read_at=read_at, ticks=[(w, rd, d) for w, rd, d in ticks], ticks_read=ticks_read
    )


def check_lifecycle(
    policy: Policy, evs: list[Ev], via_log: bool = False, delays: Sequence[tuple[int, int]] = ()
) -> Expected:
    """Run one request's events through the mailbox and check every record, counter and the state against
    what the events (and under the log clock the ticks' delays) alone say should happen."""
    f = run(policy, evs, via_log, delays)
    for _, o in f.outs:
        assert_valid(o.kind, o.record)
    exp = expect_log(policy, evs, delays) if via_log else expect_local(policy, evs)
    first, r, deadline_at = the_request(policy, evs)
    req = evs[first]
    assert req.req is not None
    T, verdict, before = exp.decided_at, exp.verdict, exp.before
    # _evaluate: the late window runs from the decision or the deadline, whichever is later (under the log
    # clock a tick read late can decide after the deadline).
    close = max(T, deadline_at) + policy.late_window_ms
    scores = [(exp.read_at[i], e) for i, e in enumerate(evs) if e.kind == "score"]
    in_box = [(t, e) for t, e in scores if t <= close]
    after_close = [(t, e) for t, e in scores if t > close]
    dup_requests = [e for j, e in enumerate(evs) if e.kind == "request" and j != first]
    # What lifecycles() promises: the tombstone outlives every record and tick, nothing opens a second mailbox.
    expiry = close + policy.dedupe_retention_ms
    assert all(t <= expiry for t, _ in scores) and all(t <= expiry for _, t, _ in exp.ticks)

    # The result ---------------------------------------------------------------------------------------
    results = [(t, o) for t, o in f.outs if o.kind == RESULT]
    assert len(results) == 1
    t_res, out = results[0]
    res = out.record
    assert out.topic == req.req.return_address
    assert t_res == T == res["decided_at_ms"]
    counted = [s for _, s in before if s is not None]
    firsts: dict[str, Score] = {}
    for s in counted:
        firsts.setdefault(s.model_id, s)
    assert res == {
        "request_id": RID,
        "model_id": verdict.model_id,
        "model_version": verdict.model_version,
        "output": verdict.output,
        "reason": verdict.reason,
        "trigger": verdict.trigger,
        "policy_version": policy.version,
        "sent_at_ms": req.req.sent_at_ms,
        "received_at_ms": r,
        "decided_at_ms": T,
        "latency_ms": T - r,
        "answered": [m for m, s in firsts.items() if s.ok],
        "failed": [m for m, s in firsts.items() if not s.ok],
    }

    # Archive, decision log, canary -----------------------------------------------------------------------
    archives = f.of(ARCHIVE)
    assert [(t, a["raw"], a["offset"]) for t, a in archives] == [(r, req.raw, req.src.offset)]
    decisions = f.of(DECISION)
    assert len(decisions) == 1
    t_close, dec = decisions[0]
    assert t_close == close == dec["closed_at_ms"] and dec["result"] == res and dec["received_at_ms"] == r
    seen_models: set[str] = set()
    want_scores = []
    for t, e in in_box:
        assert e.score is not None
        late = not any(e.score is s for _, s in before)
        want_scores.append(public(e.score, t, policy, late, e.score.model_id in seen_models))
        seen_models.add(e.score.model_id)
    assert dec["scores"] == want_scores
    canaries = f.of(CANARY)
    if policy.canary is None:
        assert canaries == []
    else:
        ((t_can, can),) = canaries
        c_first = next(
            (w for w in want_scores if w["model_id"] == policy.canary.id and not w["duplicate"]), None
        )
        want_view = (
            None
            if c_first is None
            else {k: c_first[k] for k in ("model_id", "model_version", "status", "output", "arrived_at_ms")}
        )
        assert (t_can, can["canary"], can["decided_at_ms"]) == (close, want_view, T)
        assert can["official"] == {k: res[k] for k in ("model_id", "model_version", "output", "reason")}
        assert can["agree"] is expect_agree(res, c_first)

    # Ticks: each written when its wait or the deadline ran out, read back after its delays ---------------
    assert f.of(TICK) == [
        (w, {"request_id": RID, "tick_due_ms": d, "policy_version": policy.version, "written_at_ms": w})
        for w, _, d in exp.ticks
    ]
    assert f.ticks == exp.ticks
    written, read, ignored = (
        f.counts.count(m)
        for m in (names.METRIC_TICKS_WRITTEN, names.METRIC_TICKS_READ, names.METRIC_TICKS_IGNORED)
    )
    assert (written, read, ignored) == (len(exp.ticks), exp.ticks_read, len(exp.ticks) - exp.ticks_read)

    # Dead letters: duplicates of the request, scores after close; nothing else --------------------------
    letters = f.of(DEAD_LETTER)
    want_letters = sorted(
        [(e.t, "duplicate_request", e.src.offset) for e in dup_requests]
        + [(t, "score_after_close", e.src.offset) for t, e in after_close]
    )
    assert sorted((t, d["reason"], d["offset"]) for t, d in letters) == want_letters
    assert all(d["request_id"] == RID for _, d in letters)
    assert sorted(f.kinds()) == sorted(
        [RESULT, ARCHIVE, DECISION]
        + [CANARY] * (policy.canary is not None)
        + [DEAD_LETTER] * len(want_letters)
        + [TICK] * len(exp.ticks)
    )

    # State: a tombstone until the retention ran out, then nothing --------------------------------------
    assert f.cleared == [expiry]
    assert f.state is None
    assert f.counts.count(names.METRIC_RESULTS) == 1 and f.counts.count(names.METRIC_REQUESTS) == 1
    assert f.counts.count(names.METRIC_SCORES) == len(in_box)
    assert f.counts.count(names.METRIC_NO_ANSWER) == (verdict.reason == "no_answer")
    return exp


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lifecycles())
def test_one_request_lifecycle(case: tuple[Policy, list[Ev]]) -> None:
    """--clock local: a due wait or deadline decides at once, when its timer fires."""
    check_lifecycle(*case)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lifecycles(min_retention_ms=2 * MAX_TICK_DELAY_MS, after_edges_ms=MAX_TICK_DELAY_MS), tick_delays())
def test_one_request_lifecycle_log_clock(
    case: tuple[Policy, list[Ev]], delays: list[tuple[int, int]]
) -> None:
    """--clock log: a due wait or deadline writes a tick; the mailbox decides when it reads the tick back,
    over the scores ahead of it in the partition. The tombstone outlives the ticks too: a tick is read at
    most two delays after the decision (one tick's delay to the partition, the next one's to the job)."""
    policy, evs = case
    exp = check_lifecycle(policy, evs, via_log=True, delays=delays)
    _, r, deadline_at = the_request(policy, evs)
    if any(t > e.t for t, e in zip(exp.read_at, evs, strict=True)):
        event("log: a score read later than it reached the partition (behind a tick)")
    if any(w < t < rd for w, rd, _ in exp.ticks for t in exp.read_at):
        event("log: a score read while a tick was in flight")
    if exp.decided_at > deadline_at:
        event("log: decided after the deadline")
    if any(w < rd for w, rd, _ in exp.ticks):
        event("log: a tick read back later than written")
    event(f"log: ticks written {len(exp.ticks)}, ignored {len(exp.ticks) - exp.ticks_read}")


@st.composite
def orphan_cases(draw: st.DrawFn) -> tuple[Policy, list[Ev]]:
    policy = policy_with(
        orphan_timeout_ms=draw(st.integers(1, 100)), dedupe_retention_ms=draw(st.integers(0, 150))
    )
    evs = []
    for k in range(draw(st.integers(1, 8))):
        mid = draw(st.sampled_from(["gbt", "logreg", "base", "mlp", "ghost"]))
        s = make_score(mid, draw(st.sampled_from(["ok", "error"])), t=0, version=f"v{k}")
        evs.append(Ev(draw(st.integers(0, 300)), "score", score=s, src=Source("scores", 0, k)))
    evs.sort(key=lambda e: e.t)
    return policy, evs


@PROPS
@given(orphan_cases())
def test_scores_without_a_request_are_orphans(case: tuple[Policy, list[Ev]]) -> None:
    policy, evs = case
    f = run(policy, evs)
    # Group the scores by mailbox: one opens at a score with no mailbox; its orphan timeout runs out
    # orphan_timeout_ms later and reports the scores held then; it is cleared dedupe_retention_ms after
    # that, and a score arriving in between is held and reported at once. (Records at a timer's ms come
    # first: a score at the timeout is reported by it, one at the clearing is held and reported.)
    groups: list[tuple[int, int, list[Ev]]] = []  # (orphan timeout, cleared at, scores)
    want = []
    for e in evs:
        if not groups or e.t > groups[-1][1]:
            timeout = e.t + policy.orphan_timeout_ms
            groups.append((timeout, timeout + policy.dedupe_retention_ms, []))
        timeout, _, group = groups[-1]
        group.append(e)
        want.append((max(timeout, e.t), e.src.offset, "orphan_score"))
    got = [(t, d["offset"], d["reason"]) for t, d in f.of(DEAD_LETTER)]
    assert got == want
    assert f.kinds() == [DEAD_LETTER] * len(evs)
    assert f.cleared == [cleared for _, cleared, _ in groups] and f.state is None
    assert f.counts.count(names.METRIC_ORPHANS) == len(groups)
    if any(e.t > timeout for timeout, _, g in groups for e in g):
        event("a score into an orphaned mailbox")
    for (_, d), e in zip(f.of(DEAD_LETTER), evs, strict=True):
        assert e.score is not None
        assert d["request_id"] == RID and d["source_topic"] == "scores"
        assert json.loads(d["raw"])["model_id"] == e.score.model_id
        assert_valid(DEAD_LETTER, d)


# --- bad input: counts and bounds ------------------------------------------------------------------------


def test_unknown_model_scores_are_kept_flagged_and_counted() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.score(1, make_score("ghost"))  # not in the policy: recorded for evaluation, never official
    f.score(2, make_score("gbt"))
    f.drain(until=1200)
    assert f.of(RESULT)[0][1]["model_id"] == "gbt"
    roles = {s["model_id"]: s["role"] for s in f.of(DECISION)[0][1]["scores"]}
    assert roles == {"ghost": "unknown", "gbt": "incumbent"}
    assert f.counts.count(names.METRIC_UNKNOWN_MODEL_SCORES) == 1
    assert f.of(DEAD_LETTER) == []


def test_duplicate_metrics_tell_requests_from_scores() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    f.request(1, *make_request(1, offset=1))
    f.score(2, make_score("logreg"))
    f.score(3, make_score("logreg"))
    f.score(4, make_score("logreg"))
    assert f.counts.count(names.METRIC_DUPLICATE_REQUESTS) == 1
    assert f.counts.count(names.METRIC_DUPLICATE_SCORES) == 2
    assert f.counts.count(names.METRIC_DUPLICATES) == 3


def test_a_flood_of_extra_scores_is_capped_but_policy_models_still_count() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    for k in range(MAX_EXTRA_SCORES + 5):  # a stuck runner resending, and unknown models
        f.score(1, make_score("logreg" if k % 2 else f"ghost{k}"), Source("scores", 0, k))
    mb = f.load()
    assert mb is not None
    extra = [s for s in mb.scores if s["duplicate"] or s["role"] == "unknown"]
    assert len(extra) == MAX_EXTRA_SCORES and len(mb.scores) == MAX_EXTRA_SCORES + 1  # + logreg's first
    letters = f.of(DEAD_LETTER)
    # Offsets 0..16 are kept (logreg's first at 1 is not an extra), the rest refused, each pointing back.
    assert [d["offset"] for _, d in letters] == list(range(MAX_EXTRA_SCORES + 1, MAX_EXTRA_SCORES + 5))
    assert {d["reason"] for _, d in letters} == {"too_many_scores"}
    for _, d in letters:
        assert_valid(DEAD_LETTER, d)
        assert d["request_id"] == RID and json.loads(d["raw"])["request_id"] == RID
    # The first score of a policy model is never refused, however full the mailbox.
    f.score(2, make_score("gbt"))
    assert f.of(RESULT)[0][1]["model_id"] == "gbt"
    f.drain()
    assert f.state is None


def test_the_cap_applies_to_orphans_too() -> None:
    f = Flink(policy_with(orphan_timeout_ms=50))
    for k in range(MAX_EXTRA_SCORES + 3):
        f.score(1, make_score("gbt"), Source("scores", 0, k))
    f.drain(until=51)
    reasons = [d["reason"] for _, d in f.of(DEAD_LETTER)]
    assert reasons.count("too_many_scores") == 2  # gbt's first + 16 duplicates kept
    assert reasons.count("orphan_score") == MAX_EXTRA_SCORES + 1
    # Also once the orphan timeout ran out: one more duplicate is refused (not held, so no orphan letter);
    # the first score of another policy model is held and reported as an orphan.
    f.score(60, make_score("gbt"), Source("scores", 0, 100))
    f.score(61, make_score("logreg"), Source("scores", 0, 101))
    assert [(d["reason"], d["offset"]) for _, d in f.of(DEAD_LETTER)[-2:]] == [
        ("too_many_scores", 100),
        ("orphan_score", 101),
    ]
    assert len(f.load().scores) == MAX_EXTRA_SCORES + 2  # type: ignore[union-attr]
    f.drain()
    assert f.state is None and len(f.of(DEAD_LETTER)) == MAX_EXTRA_SCORES + 5


@pytest.mark.parametrize(
    "text",
    [
        # What the job stored before version 4: a string state (1, 2), a Row(String) key (3). Flink
        # cannot restore either as version 4's state: READABLE_STATE_VERSIONS, and the upgrade refuses it.
        '{"v":1,"id":"req-1","first":5,"pv":1,"ra":"results","sent":3,"dl":null,"recv":5,'
        '"scores":[],"result":null,"closed":false,"wake":45}',
        '{"v":2,"id":"req-1","first":5,"pv":1,"ra":"results","sent":3,"dl":null,"recv":5,'
        '"scores":[],"result":null,"closed":false,"wake":45}',
        '{"v":3,"id":"req-1","first":5,"pv":1,"ra":"results","sent":3,"dl":null,"recv":5,'
        '"scores":[],"result":null,"closed":false,"wake":45}',
    ],
)
def test_state_of_an_older_version_is_refused_with_the_versions_this_code_reads(text: str) -> None:
    assert READABLE_STATE_VERSIONS == (STATE_VERSION,) == (4,)
    with pytest.raises(ValueError, match=r"mailbox state version \d is not supported \(this code reads 4\)"):
        Mailbox.from_json(text)
    with pytest.raises(ValueError, match=r"mailbox state version \d is not supported"):
        request_id_of(text)  # not version 4's prefix: parsed whole, and refused the same way
    for line in ("t2,req-1,5,3,6,600106", "t3,req-1,5,3,6,600106"):  # versions 2 and 3's tombstone lines
        with pytest.raises(ValueError, match=f"neither a 't4,' line nor JSON: '{line[:3]}req-1"):
            Mailbox.from_json(line)
        with pytest.raises(ValueError, match="neither a 't4,' line nor JSON"):
            request_id_of(line)


@PROPS
@given(
    st.from_regex(REQUEST_ID_RE),
    st.booleans(),
    st.integers(0, 10**13),
    st.one_of(st.none(), st.integers(0, 10**13)),
)
def test_the_request_id_of_a_stored_mailbox_is_its_own(
    request_id: str, closed: bool, first_seen_ms: int, received_at_ms: int | None
) -> None:
    """What a timer reads its key from (udfs/flink_compat.py item 3): the tombstone line and the JSON."""
    mb = Mailbox(
        request_id,
        first_seen_ms,
        received_at_ms=received_at_ms,
        closed=closed,
        wake_at_ms=first_seen_ms + 5,
        return_address=None if closed else "results",
    )
    text = mb.to_json()
    assert text.startswith(TOMBSTONE_PREFIX) == closed
    assert request_id_of(text) == request_id == Mailbox.from_json(text).request_id


def test_a_request_id_with_an_escape_is_read_by_the_whole_parse() -> None:
    """Ids the wire refuses never reach state; if one did, its JSON escape is read right, not cut."""
    assert request_id_of(Mailbox('odd"id', 5).to_json()) == 'odd"id'
    assert request_id_of(Mailbox("odd\\id", 5).to_json()) == "odd\\id"


def test_a_tombstone_line_loads_and_refuses_as_the_json_one_does() -> None:
    text = "t4,req-1,5,3,6,600106"
    mb = Mailbox.from_json(text)
    assert mb.is_tombstone
    assert (mb.request_id, mb.first_seen_ms, mb.policy_version, mb.received_at_ms) == ("req-1", 5, 3, 6)
    assert mb.to_json() == text
    as_json = Mailbox(
        "req-1", 5, policy_version=3, received_at_ms=6, closed=True, wake_at_ms=600106, return_address="r"
    )
    # A duplicate request and a late score are refused by it as by the JSON one.
    for closed in (mb, as_json):
        assert on_request(closed, *make_request(0), DEFAULT, 10).outputs[0].record["reason"] == (
            "duplicate_request"
        )
        assert on_score(closed, make_score("gbt"), Source("scores"), DEFAULT, 10).outputs[0].record[
            "reason"
        ] == ("score_after_close")


def test_the_tombstone_a_close_keeps_is_a_short_line() -> None:
    f = Flink(DEFAULT)
    f.request(0, *make_request(0))
    for model in ("gbt", "logreg", "tree", "base", "mlp"):
        f.score(1, make_score(model))
    closes_at = DEFAULT.deadline_ms + DEFAULT.late_window_ms  # the request came at 0
    f.drain(until=closes_at + 1)
    assert f.state is not None and f.state.startswith(TOMBSTONE_PREFIX)
    assert len(f.state) < 60  # small times here; the JSON of the same tombstone: ~130 characters
    mb = Mailbox.from_json(f.state)
    assert (mb.closed, mb.received_at_ms, mb.wake_at_ms) == (True, 0, closes_at + DEFAULT.dedupe_retention_ms)


def test_a_closed_mailbox_with_more_than_a_tombstone_stays_json() -> None:
    mb = Mailbox("req-1", 5, closed=True, wake_at_ms=9, return_address="results")
    assert not mb.is_tombstone and mb.to_json().startswith("{")
    assert Mailbox.from_json(mb.to_json()) == mb
    assert not Mailbox("req-1", 5, closed=True).is_tombstone  # no expiry: nothing to write in the line


@pytest.mark.parametrize("line", ["t4,req-1,5,1,6", "t4,req-1,five,1,6,7", "t4,"])
def test_a_broken_tombstone_line_is_refused_with_its_text(line: str) -> None:
    with pytest.raises(ValueError, match="not a tombstone line"):
        Mailbox.from_json(line)


@st.composite
def floods(draw: st.DrawFn) -> tuple[bool, list[tuple[int, str]]]:
    with_request = draw(st.booleans())
    models = st.sampled_from(["gbt", "logreg", "tree", "base", "mlp", "ghost", "ghost2"])
    return with_request, draw(st.lists(st.tuples(st.integers(0, 1500), models), max_size=60))


@PROPS
@given(floods())
def test_any_flood_of_scores_keeps_the_mailbox_bounded_and_every_score_accounted(
    case: tuple[bool, list[tuple[int, str]]],
) -> None:
    with_request, scores = case
    f = Flink(policy_with(orphan_timeout_ms=2000))
    if with_request:
        f.request(0, *make_request(0))
    biggest = 0
    for k, (t, mid) in enumerate(sorted(scores)):
        f.score(t, make_score(mid), Source("scores", 0, k))
        mb = f.load()
        if mb is not None:
            biggest = max(biggest, len(mb.scores))
            assert len(mb.scores) <= len(DEFAULT.models) + MAX_EXTRA_SCORES
    f.drain()
    decisions = [d for _, d in f.of(DECISION)]
    in_log = [s["model_id"] for d in decisions for s in d["scores"]]
    letters = [d for _, d in f.of(DEAD_LETTER)]
    # Every score is in exactly one place: the decision log, or a dead letter pointing at its offset.
    assert len(in_log) + len(letters) == len(scores)
    assert len({d["offset"] for d in letters}) == len(letters)
    assert {d["reason"] for d in letters} <= {"too_many_scores", "orphan_score", "score_after_close"}
    if not with_request:
        assert decisions == [] and all(d["reason"] != "score_after_close" for d in letters)
    assert f.state is None  # and nothing is left once the timers ran


def test_sustained_load_keeps_state_bounded() -> None:
    """1000 requests/s for 8 simulated seconds with orphans, duplicates and late scores, all keys in one
    keyed state: the live-mailbox count levels off at rate x lifetime and returns to zero."""
    policy = policy_with(deadline_ms=100, late_window_ms=100, dedupe_retention_ms=1000, orphan_timeout_ms=300)
    states: dict[str, str] = {}
    timers: list[tuple[int, str]] = []  # a heap of (time, key), as Flink's timer service
    live = 0  # the adapter's mailboxes_live: opened - cleared
    samples: list[tuple[int, int, int]] = []  # (time, live mailboxes, state bytes)

    def apply(t: int, key: str, step: Step) -> None:
        nonlocal live
        live += step.counts.count(names.METRIC_MAILBOXES_OPENED)
        live -= step.counts.count(names.METRIC_MAILBOXES_CLEARED)
        if step.mailbox is None:
            states.pop(key, None)
        else:
            wake = step.mailbox.wake_at_ms
            if wake is not None and (key not in states or Mailbox.from_json(states[key]).wake_at_ms != wake):
                heapq.heappush(timers, (wake, key))  # as the adapter: a timer only when the wake changes
            states[key] = step.mailbox.to_json()
        assert live == len(states)

    def advance(t: int) -> None:
        while timers and timers[0][0] < t:
            tm, key = heapq.heappop(timers)
            if key in states:
                apply(tm, key, on_timer(Mailbox.from_json(states[key]), policy, tm))

    seconds, rate = 8, 1000
    for t in range(seconds * 1000):  # one request per ms
        advance(t)
        rid = f"r{t}"
        req, raw, src = make_request(t, rid=rid, offset=t)
        key = rid
        apply(t, key, on_request(Mailbox.from_json(states[key]) if key in states else None, req, raw, src,
                                 policy, t))  # fmt: skip
        events: list[tuple[str, Score]] = []
        if t % 2 == 0:
            events.append((rid, make_score("gbt", rid=rid, t=t)))
        if t % 10 == 0:
            events.append((rid, make_score("gbt", rid=rid, t=t)))  # duplicate
        if t % 20 == 0:
            events.append((f"orphan{t}", make_score("logreg", rid=f"orphan{t}", t=t)))
        if t % 25 == 0 and t >= 50:
            events.append((f"r{t - 50}", make_score("mlp", rid=f"r{t - 50}", t=t)))  # late
        if t % 50 == 0 and t >= 1000:
            events.append((f"r{t - 1000}", make_score("tree", rid=f"r{t - 1000}", t=t)))  # after close
        for k, s in events:
            prev = Mailbox.from_json(states[k]) if k in states else None
            apply(t, k, on_score(prev, s, Source("scores", 0, t), policy, t))
        if t % 100 == 0:
            samples.append((t, live, sum(len(v) for v in states.values())))
    advance(10**9)
    assert states == {} and live == 0  # everything expires

    # Lifetime of a request's state: deadline + late window + tombstone retention; orphans: the timeout and
    # the retention after it (held for a request that comes late).
    bound = rate * (100 + 100 + 1000) // 1000 + (rate // 20) * (300 + 1000) // 1000 + 10
    steady = [n for t, n, _ in samples if t >= 2000]
    assert max(n for _, n, _ in samples) <= bound
    assert max(steady) - min(steady) <= 20  # flat: the state does not creep up under sustained load
    size = [b for t, _, b in samples if t >= 2000]
    assert max(size) <= 1.1 * min(size)
    print(f"steady state: {min(steady)}-{max(steady)} live mailboxes, {min(size)}-{max(size)} bytes of JSON")


# --- decide: thompson: the choice is drawn once, when the request arrives ------------------------------------


def test_a_thompson_request_keeps_the_choice_it_drew_on_arrival() -> None:
    from udfs import bandit

    pol = policy_with(decide="thompson")
    sure = bandit.new_state(["gbt", "logreg"])
    sure = {**sure, "arms": {"gbt": [1.0, 500.0], "logreg": [500.0, 1.0]}}  # logreg is right, gbt never
    req, raw, src = make_request(0)
    step = on_request(None, req, raw, src, pol, 0, sure)
    mb = step.mailbox
    assert mb is not None and mb.choice == "logreg"
    assert Mailbox.from_json(mb.to_json()).choice == "logreg"
    # gbt answers first: under first_in_order it would win at once; here logreg is waited for.
    step = on_score(mb, make_score("gbt", t=1), Source("scores", 0, 1), pol, 1)
    assert [o.kind for o in step.outputs] == []
    step = on_score(mb, make_score("logreg", output={"label": 0}, t=2), Source("scores", 0, 2), pol, 2)
    result = step.outputs[0].record
    assert (result["model_id"], result["reason"]) == ("logreg", "preferred")
    assert_valid(RESULT, result)
    # Without posteriors every contender is at the prior: the draw still lands on a contender.
    picks = {on_request(None, *make_request(0, rid=f"r{i}"), pol, 0).mailbox.choice for i in range(40)}  # type: ignore[union-attr]
    assert picks == {"gbt", "logreg"}
    # A first_in_order policy never draws.
    assert on_request(None, req, raw, src, DEFAULT, 0, sure).mailbox.choice is None  # type: ignore[union-attr]


def test_mailbox_state_without_a_choice_still_reads() -> None:
    """State written before the choice existed (no "choice" key) restores with choice None."""
    req, raw, src = make_request(0)
    text = on_request(None, req, raw, src, DEFAULT, 0).mailbox.to_json()  # type: ignore[union-attr]
    assert '"choice"' not in text and Mailbox.from_json(text).choice is None

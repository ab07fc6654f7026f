"""The per-request mailbox and its transitions. Pure Python, no pyflink; time is an argument.

A mailbox lives in Flink keyed state (keyed by request id) as versioned JSON text (a built-in ``str``),
never as a pickled project object, so module renames cannot break a restore. Its life:

    open (request and/or scores arriving) -> decided (official result out; late scores still
    recorded) -> closed (decision log and canary records out; a small tombstone stays for
    ``dedupe_retention_ms`` so a replayed or duplicate request never gets a second answer) -> gone.

Scores (and ticks) that arrive before their request wait in the mailbox for it. When it has not come
within ``orphan_timeout_ms`` (a processing-time timer), each score held is reported as a dead letter
(``orphan_score``), and so is every score that arrives after that while the request still has not come;
but the mailbox, now ``orphaned``, keeps them for ``dedupe_retention_ms`` more, and a request that comes
in that time is answered over them exactly as if it had come before the timeout (``_fold``). So the
timeout only reports: it never changes an answer, although a replay after a crash runs it out at another
place among the records than the first run did. Then the mailbox is dropped, and a request after that
is a new one, answered without them (as a duplicate after the retention is answered again); with a
retention of 0, which promises no dedupe either, it is dropped at the timeout.

Time, for the policy, is logical: ``clock_ms`` counts milliseconds after the request arrived and moves
only by ticks (``on_tick``). When a wait or the deadline runs out (a processing-time timer at
``wake_at_ms``), ``on_timer`` either emits a ``TICK`` record that the job writes into the request's
partition of the scores topic and acts on when it reads it back (``via_log``, ``--clock log``), or
applies the tick at once (``--clock local``). Through the log, a decision is a function of the order of
the request's scores and ticks in that partition alone: a replay after a crash, which reads the same
partition again, decides the same way, wherever the request itself falls in the replay (``_fold``), and
every score that reached Kafka before the tick counts, however late the job reads it.

State stays bounded: every mailbox always has a timer that ends in clearing it (the decision, the
close, the tombstone's expiry; without a request, the orphan timeout and then its retention), and a
mailbox keeps at most the first score of each policy model plus ``MAX_EXTRA_SCORES`` others
(duplicates, unknown models); more are dead letters (``too_many_scores``). Each step counts
``mailboxes_opened`` / ``mailboxes_cleared`` so the adapter can report the live mailboxes (keyed state
entries) as a metric.
Each transition returns the records to emit and sets ``wake_at_ms``, the next time the mailbox
needs a timer; the Flink adapter only stores state, registers that timer and routes the records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from udfs import bandit, fastjson, names
from udfs.policy import Decided, Policy, ScoreView, decide
from udfs.wire_in import RAW_PREFIX_CHARS, Request, Score, Source, Tick, dead_letter
from udfs.wire_out import (
    ArchiveRow,
    CanaryRecord,
    CanaryView,
    DecisionRecord,
    ResultRecord,
    dead_letter_to_dict,
    score_to_dict,
    tick_to_dict,
)

# The state format this code writes, and the ones it reads (a savepoint of any of them restores: the
# upgrade's refusal rules, ops/upgrade.py, compare against READABLE_STATE_VERSIONS).
# 1: every mailbox as JSON in a string state. 2: open mailboxes as JSON (v 2), closed ones as a compact
# tombstone line (TOMBSTONE_PREFIX), ~60 bytes instead of ~170: tombstones are most of the state a
# checkpoint writes. 3: the same texts (v 3, "t3,") in a byte-array state (udfs/flink_compat.py item 6),
# which a checkpoint writes in one call per value instead of one per character. 4: the same texts
# (v 4, "t4,") under a String key instead of a Row(String) one (flink_compat item 3); each text starts
# with its request id (``request_id_of``), since the keyed operator cannot give the key back. Flink
# cannot restore state of another key or value type, so 4 reads only 4 (docs/operations.md: crossing
# a mailbox state format).
STATE_VERSION = 4
READABLE_STATE_VERSIONS = (4,)
TOMBSTONE_PREFIX = "t4,"  # never the start of JSON; request ids hold no comma (udfs/wire_in.py)
# An open mailbox's JSON starts with this and its request id, which holds no '"' (wire_in.REQUEST_ID_RE).
_JSON_ID_PREFIX = f'{{"v":{STATE_VERSION},"id":"'
# Scores a mailbox keeps beyond the first one of each policy model: duplicates and unknown models.
MAX_EXTRA_SCORES = 16
UNKNOWN_ROLE = "unknown"  # Policy.role_of for a model id the policy does not list

# Output kinds; the adapter maps each to a Kafka topic, side output or file sink.
RESULT = "result"
ARCHIVE = "archive"
CANARY = "canary"
DECISION = "decision"
DEAD_LETTER = "dead_letter"
TICK = "tick"  # --clock log: a wait or deadline ran out; written to the scores topic, read back by on_tick

# A tick written to Kafka that has not come back after this long is written again (a tick is
# idempotent): a mailbox always has a timer that ends in a decision, even if a write went missing.
TICK_RESEND_MS = 10_000
# Ticks held for a request not yet seen (a replay that reads the scores topic ahead of the requests).
MAX_BUFFERED_TICKS = 16


@dataclass(frozen=True)
class Out:
    kind: str
    record: Mapping[str, Any]  # the kind's record type in udfs.wire_out (ResultRecord, ...)
    topic: str | None = None  # only for results: the request's return address


@dataclass
class Mailbox:
    request_id: str
    first_seen_ms: int
    policy_version: int | None = None  # fixed when the request arrives: one policy per request
    return_address: str | None = None
    sent_at_ms: int | None = None
    deadline_ms: int | None = None  # the request's own override, if any
    received_at_ms: int | None = None
    scores: list[dict[str, Any]] = field(default_factory=list)
    result: ResultRecord | None = None
    closed: bool = False
    wake_at_ms: int | None = None
    # decide: thompson: the model the bandit chose when the request arrived (fixed for the request, so
    # rewards arriving meanwhile never change a decision half-way). Absent from older state: None.
    choice: str | None = None
    # Logical time (ms after the request arrived) of the newest tick applied; of the next wait or deadline
    # (the tick pending); and ticks read before the request, as [scores held when it came, due]. Absent
    # from older state: 0, derived from wake_at_ms, none.
    clock_ms: int = 0
    due_ms: int | None = None
    ticks: list[list[int]] = field(default_factory=list)
    # No request yet and the orphan timeout ran out: the scores held were reported as dead letters (and
    # every score arriving now is at once); still held for a request that comes late. Absent: False.
    orphaned: bool = False

    @property
    def has_request(self) -> bool:
        return self.received_at_ms is not None

    def deadline_for(self, policy: Policy) -> int:
        """The request's deadline in ms after its arrival: its own override, else the policy's."""
        return self.deadline_ms or policy.deadline_ms

    def deadline_at_ms(self, policy: Policy) -> int:
        assert self.received_at_ms is not None
        return self.received_at_ms + self.deadline_for(policy)

    def to_json(self) -> str:
        """The mailbox as stored in keyed state: a tombstone line when it is one, else JSON."""
        if self.is_tombstone:
            pv = "" if self.policy_version is None else self.policy_version
            recv = "" if self.received_at_ms is None else self.received_at_ms
            return f"{TOMBSTONE_PREFIX}{self.request_id},{self.first_seen_ms},{pv},{recv},{self.wake_at_ms}"
        return fastjson.dumps(
            {
                "v": STATE_VERSION,
                "id": self.request_id,
                "first": self.first_seen_ms,
                "pv": self.policy_version,
                "ra": self.return_address,
                "sent": self.sent_at_ms,
                "dl": self.deadline_ms,
                "recv": self.received_at_ms,
                "scores": self.scores,
                "result": self.result,
                "closed": self.closed,
                "wake": self.wake_at_ms,
                **({"choice": self.choice} if self.choice is not None else {}),
                **({"clk": self.clock_ms} if self.clock_ms else {}),
                **({"due": self.due_ms} if self.due_ms is not None else {}),
                **({"ticks": self.ticks} if self.ticks else {}),
                **({"orphaned": True} if self.orphaned else {}),
            }
        )

    @property
    def is_tombstone(self) -> bool:
        """Closed, with nothing but what refusing duplicates needs (what ``_close`` keeps)."""
        return (
            self.closed
            and self.wake_at_ms is not None
            and "," not in self.request_id
            and self
            == Mailbox(
                self.request_id,
                self.first_seen_ms,
                policy_version=self.policy_version,
                received_at_ms=self.received_at_ms,
                closed=True,
                wake_at_ms=self.wake_at_ms,
            )
        )

    @classmethod
    def from_json(cls, text: str) -> Mailbox:
        """A mailbox from keyed state of any of ``READABLE_STATE_VERSIONS``."""
        if text.startswith(TOMBSTONE_PREFIX):
            try:
                rid, first, pv, recv, wake = text[len(TOMBSTONE_PREFIX) :].split(",")
                return cls(
                    rid,
                    int(first),
                    policy_version=int(pv) if pv else None,
                    received_at_ms=int(recv) if recv else None,
                    closed=True,
                    wake_at_ms=int(wake),
                )
            except ValueError as e:
                raise ValueError(f"mailbox state: not a tombstone line: {text[:80]!r}") from e
        if not text.startswith("{"):  # e.g. version 2's "t2," line
            raise ValueError(f"mailbox state: neither a {TOMBSTONE_PREFIX!r} line nor JSON: {text[:80]!r}")
        d = fastjson.loads(text)
        if d.get("v") not in READABLE_STATE_VERSIONS:
            raise ValueError(
                f"mailbox state version {d.get('v')!r} is not supported (this code reads "
                f"{', '.join(map(str, READABLE_STATE_VERSIONS))})"
            )
        return cls(
            request_id=d["id"],
            first_seen_ms=d["first"],
            policy_version=d["pv"],
            return_address=d["ra"],
            sent_at_ms=d["sent"],
            deadline_ms=d["dl"],
            received_at_ms=d["recv"],
            scores=d["scores"],
            result=d["result"],
            closed=d["closed"],
            wake_at_ms=d["wake"],
            choice=d.get("choice"),  # an optional key: state written before it existed still reads
            clock_ms=d.get("clk", 0),
            due_ms=d.get("due"),
            ticks=d.get("ticks", []),
            orphaned=d.get("orphaned", False),
        )


def request_id_of(text: str) -> str:
    """The request id of a mailbox stored as ``text``, without parsing the rest (a timer's key: item 3
    of udfs/flink_compat.py). Any other text is parsed whole, and refused as ``Mailbox.from_json`` does.

    >>> request_id_of("t4,req-1,5,3,6,600106"), request_id_of(Mailbox("req-2", 5).to_json())
    ('req-1', 'req-2')
    """
    if text.startswith(TOMBSTONE_PREFIX):
        end = text.find(",", len(TOMBSTONE_PREFIX))
        if end > len(TOMBSTONE_PREFIX):
            return text[len(TOMBSTONE_PREFIX) : end]
    elif text.startswith(_JSON_ID_PREFIX):
        end = text.find('"', len(_JSON_ID_PREFIX))
        rid = text[len(_JSON_ID_PREFIX) : end]
        if end > len(_JSON_ID_PREFIX) and "\\" not in rid:  # an escape: the whole parse reads it right
            return rid
    return Mailbox.from_json(text).request_id


@dataclass
class Step:
    """What one transition did: the mailbox to keep (None: clear state), records, counters."""

    mailbox: Mailbox | None
    outputs: list[Out] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)


def on_request(
    mb: Mailbox | None,
    req: Request,
    raw: str,
    source: Source,
    policy: Policy,
    now_ms: int,
    posteriors: dict[str, Any] | None = None,
) -> Step:
    """A request arrives: archive it (once), then decide if the scores already there allow it.

    Under ``decide: thompson`` the bandit chooses the request's first model here, once, by a draw from
    ``posteriors`` (``udfs.bandit`` state; None: every model at the policy's prior) seeded by the
    request id and policy version.
    """
    if mb is not None and (mb.has_request or mb.closed):
        detail = "a request with this id was already received; the first one is answered"
        dead = dead_letter(names.REASON_DUPLICATE_REQUEST, detail, source, raw, req.request_id)
        counts = [names.METRIC_DUPLICATES, names.METRIC_DUPLICATE_REQUESTS]
        return Step(mb, [Out(DEAD_LETTER, dead_letter_to_dict(dead, now_ms))], counts)
    opened = mb is None
    if mb is None:
        mb = Mailbox(req.request_id, now_ms)
    mb.policy_version = policy.version
    mb.return_address = req.return_address
    mb.sent_at_ms = req.sent_at_ms
    mb.deadline_ms = req.deadline_ms
    mb.received_at_ms = now_ms
    mb.orphaned = False  # a request after the orphan timeout: answered as one before it (_fold)
    if policy.bandit is not None:
        state = posteriors or bandit.new_state(prior=policy.bandit.prior, discount=policy.bandit.discount)
        mb.choice = bandit.choose_for_request(state, policy.bandit_arms, req.request_id, str(policy.version))
    step = Step(mb, [Out(ARCHIVE, _archive_row(req, raw, source, now_ms))], [names.METRIC_REQUESTS])
    if opened:
        step.counts.append(names.METRIC_MAILBOXES_OPENED)
    _fold(step, mb, policy, now_ms)
    return step


def _fold(step: Step, mb: Mailbox, policy: Policy, now_ms: int) -> None:
    """Decide over what came before the request as if the request had come first: the scores and ticks
    one by one, in the order they were read (the partition's order), stopping at the first decision.

    So the decision does not depend on where the request fell among them, which differs between a run
    and its replay (the requests and scores topics are read independently).
    """
    ticks, mb.ticks = mb.ticks, []
    held = len(mb.scores)
    next_tick = 0
    _evaluate(step, mb, policy, now_ms, by_timer=False, upto=0)
    for k in range(held + 1):
        while mb.result is None and next_tick < len(ticks) and ticks[next_tick][0] <= k:
            mb.clock_ms = max(mb.clock_ms, ticks[next_tick][1])
            next_tick += 1
            step.counts.append(names.METRIC_TICKS_READ)
            _evaluate(step, mb, policy, now_ms, by_timer=True, upto=k)
        if mb.result is not None:
            for s in mb.scores[k:]:  # read after the point of decision: late, as if they had come after it
                s["late"] = True
                step.counts.append(names.METRIC_LATE_SCORES)
            return
        if k < held and not mb.scores[k]["duplicate"]:
            _evaluate(step, mb, policy, now_ms, by_timer=False, upto=k + 1)


def on_score(mb: Mailbox | None, score: Score, source: Source, policy: Policy, now_ms: int) -> Step:
    """A score arrives: record it (flagged late or duplicate if so) and decide if it settles things."""
    if mb is not None and mb.closed:
        detail = f"score from {score.model_id} arrived after the mailbox closed"
        metrics = [names.METRIC_LATE_SCORES]
        return _refuse_score(mb, score, source, names.REASON_SCORE_AFTER_CLOSE, detail, metrics, now_ms)
    role = policy.role_of(score.model_id)
    duplicate = mb is not None and any(s["model_id"] == score.model_id for s in mb.scores)
    if mb is not None and (duplicate or role == UNKNOWN_ROLE):
        extra = sum(1 for s in mb.scores if s["duplicate"] or s["role"] == UNKNOWN_ROLE)
        if extra >= MAX_EXTRA_SCORES:
            detail = (
                f"the mailbox already holds {extra} duplicate or unknown-model scores "
                f"(limit {MAX_EXTRA_SCORES}); this one from {score.model_id} is not kept"
            )
            metrics = (
                [names.METRIC_DUPLICATES, names.METRIC_DUPLICATE_SCORES]
                if duplicate
                else [names.METRIC_UNKNOWN_MODEL_SCORES]
            )
            return _refuse_score(mb, score, source, names.REASON_TOO_MANY_SCORES, detail, metrics, now_ms)
    step = Step(mb, counts=[names.METRIC_SCORES])
    if mb is None:
        mb = step.mailbox = Mailbox(score.request_id, now_ms)
        mb.wake_at_ms = now_ms + policy.orphan_timeout_ms
        step.counts.append(names.METRIC_MAILBOXES_OPENED)
    entry = score_to_dict(score)
    entry["arrived_at_ms"] = now_ms
    entry["role"] = role
    entry["duplicate"] = duplicate
    entry["late"] = mb.result is not None
    entry["src"] = [source.topic, source.partition, source.offset]
    mb.scores.append(entry)
    if duplicate:
        step.counts += [names.METRIC_DUPLICATES, names.METRIC_DUPLICATE_SCORES]
    if role == UNKNOWN_ROLE:
        step.counts.append(names.METRIC_UNKNOWN_MODEL_SCORES)
    if entry["late"]:
        step.counts.append(names.METRIC_LATE_SCORES)
    if mb.has_request and mb.result is None and not entry["duplicate"]:
        _evaluate(step, mb, policy, now_ms, by_timer=False)
    elif mb.orphaned:  # no request yet: held for it all the same, and reported at once as the others were
        step.outputs.append(_orphan_letter(mb, entry, policy, now_ms))
    return step


def _refuse_score(
    mb: Mailbox, score: Score, source: Source, reason: str, detail: str, metrics: list[str], now_ms: int
) -> Step:
    """A score the mailbox does not keep: a dead letter; the mailbox is unchanged."""
    dead = dead_letter(reason, detail, source, json.dumps(score_to_dict(score)), score.request_id)
    return Step(mb, [Out(DEAD_LETTER, dead_letter_to_dict(dead, now_ms))], metrics)


def on_tick(mb: Mailbox | None, tick: Tick, policy: Policy, now_ms: int) -> Step:
    """A tick read back (``--clock log``): the request's logical clock reaches ``tick.due_ms``.

    Before the request it waits in the mailbox with its place among the scores (``_fold``); for a
    decided or closed mailbox, or a time already passed (a tick written twice), it changes nothing.
    """
    if mb is None:
        mb = Mailbox(tick.request_id, now_ms, wake_at_ms=now_ms + policy.orphan_timeout_ms)
        mb.ticks.append([0, tick.due_ms])
        return Step(mb, counts=[names.METRIC_MAILBOXES_OPENED])
    if mb.closed or mb.result is not None:
        return Step(mb, counts=[names.METRIC_TICKS_IGNORED])
    if not mb.has_request:
        if len(mb.ticks) >= MAX_BUFFERED_TICKS or any(due >= tick.due_ms for _, due in mb.ticks):
            return Step(mb, counts=[names.METRIC_TICKS_IGNORED])
        mb.ticks.append([len(mb.scores), tick.due_ms])
        return Step(mb)
    if tick.due_ms <= mb.clock_ms:
        return Step(mb, counts=[names.METRIC_TICKS_IGNORED])
    step = Step(mb, counts=[names.METRIC_TICKS_READ])
    mb.clock_ms = tick.due_ms
    _evaluate(step, mb, policy, now_ms, by_timer=True)
    return step


def on_timer(mb: Mailbox, policy: Policy, now_ms: int, via_log: bool = False) -> Step:
    """Time passed: a wait or the deadline ran out (a tick, written out ``via_log`` or applied at once),
    the mailbox closes, or state expires. A timer before ``wake_at_ms`` (one not deleted) does nothing."""
    step = _on_timer(mb, policy, now_ms, via_log)
    if step.mailbox is None:
        step.counts.append(names.METRIC_MAILBOXES_CLEARED)
    return step


def _on_timer(mb: Mailbox, policy: Policy, now_ms: int, via_log: bool) -> Step:
    step = Step(mb)
    if mb.wake_at_ms is None or now_ms < mb.wake_at_ms:
        return step
    if mb.closed:
        step.mailbox = None
        return step
    if not mb.has_request:
        _orphan_timer(step, mb, policy, now_ms)
        return step
    if mb.result is not None:
        _close(step, mb, policy, now_ms)
        return step
    assert mb.received_at_ms is not None
    if mb.due_ms is None:  # state from before logical time: its timer was set for the wall-clock due time
        mb.due_ms = max(mb.wake_at_ms - mb.received_at_ms, 0)
    if via_log:
        assert mb.policy_version is not None
        tick = Tick(mb.request_id, mb.due_ms, mb.policy_version, now_ms)
        step.outputs.append(Out(TICK, tick_to_dict(tick)))
        step.counts.append(names.METRIC_TICKS_WRITTEN)
        mb.wake_at_ms = now_ms + TICK_RESEND_MS  # until it comes back (on_tick sets the next wake)
        return step
    # Applied at once; a timer that fired late catches up through every due time it passed, in order.
    while mb.result is None and mb.due_ms is not None and mb.wake_at_ms <= now_ms:
        mb.clock_ms = max(mb.clock_ms, mb.due_ms)
        _evaluate(step, mb, policy, now_ms, by_timer=True)
    return step


def _orphan_timer(step: Step, mb: Mailbox, policy: Policy, now_ms: int) -> None:
    """No request yet. At the orphan timeout: the scores held become dead letters, and the mailbox keeps
    them (and any ticks) for ``dedupe_retention_ms`` in case the request still comes, so that the timeout,
    a processing-time timer, never changes an answer. When that runs out too (or there is none): gone."""
    if not mb.orphaned:
        if mb.scores:
            step.outputs.extend(_orphan_letter(mb, s, policy, now_ms) for s in mb.scores)
            step.counts.append(names.METRIC_ORPHANS)
        if policy.dedupe_retention_ms > 0:
            mb.orphaned = True
            mb.wake_at_ms = now_ms + policy.dedupe_retention_ms
            return
    step.counts.extend([names.METRIC_TICKS_IGNORED] * len(mb.ticks))
    step.mailbox = None


def _evaluate(
    step: Step, mb: Mailbox, policy: Policy, now_ms: int, by_timer: bool, upto: int | None = None
) -> None:
    """Decide at the logical time ``clock_ms`` over the scores held (the first ``upto`` of them), or
    set the next due time and the wall-clock timer for it."""
    held = mb.scores if upto is None else mb.scores[:upto]
    views = {
        s["model_id"]: ScoreView(s["status"] == "ok", s["output"], s["model_version"])
        for s in held
        if not s["duplicate"] and not s["late"]
    }
    assert mb.received_at_ms is not None  # 0 is a valid time: never `received_at_ms or now_ms`
    verdict = decide(policy, views, 0, mb.deadline_for(policy), mb.clock_ms, by_timer, mb.choice)
    if isinstance(verdict, Decided):
        mb.result = _result(mb, verdict, policy, now_ms, held)
        assert mb.return_address is not None
        step.outputs.append(Out(RESULT, mb.result, mb.return_address))
        step.counts.append(names.METRIC_RESULTS)
        if verdict.reason == "no_answer":
            step.counts.append(names.METRIC_NO_ANSWER)
        mb.due_ms = None
        mb.wake_at_ms = max(now_ms, mb.deadline_at_ms(policy)) + policy.late_window_ms
    else:
        mb.due_ms = verdict.wake_at_ms
        mb.wake_at_ms = max(now_ms, mb.received_at_ms + verdict.wake_at_ms)


def _result(mb: Mailbox, d: Decided, policy: Policy, now_ms: int, held: list[dict[str, Any]]) -> ResultRecord:
    assert mb.received_at_ms is not None
    current = [s for s in held if not s["duplicate"]]
    return {
        "request_id": mb.request_id,
        "model_id": d.model_id,
        "model_version": d.model_version,
        "output": d.output,
        "reason": d.reason,
        "trigger": d.trigger,
        "policy_version": policy.version,
        "sent_at_ms": mb.sent_at_ms,
        "received_at_ms": mb.received_at_ms,
        "decided_at_ms": now_ms,
        "latency_ms": now_ms - mb.received_at_ms,
        "answered": [s["model_id"] for s in current if s["status"] == "ok"],
        "failed": [s["model_id"] for s in current if s["status"] != "ok"],
    }


def _close(step: Step, mb: Mailbox, policy: Policy, now_ms: int) -> None:
    assert mb.result is not None
    step.outputs.append(Out(DECISION, _decision_record(mb, now_ms)))
    if policy.canary is not None:
        step.outputs.append(Out(CANARY, _canary_record(mb, policy.canary.id)))
    if policy.dedupe_retention_ms == 0:
        step.mailbox = None
        return
    # Keep only a tombstone: enough to refuse duplicates, small enough for a long retention.
    step.mailbox = Mailbox(
        mb.request_id,
        mb.first_seen_ms,
        policy_version=mb.policy_version,
        received_at_ms=mb.received_at_ms,
        closed=True,
        wake_at_ms=now_ms + policy.dedupe_retention_ms,
    )


def _public_score(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in ("src", "request_id")}


def _decision_record(mb: Mailbox, now_ms: int) -> DecisionRecord:
    assert mb.result is not None
    return {
        "request_id": mb.request_id,
        "policy_version": mb.policy_version,
        "received_at_ms": mb.received_at_ms,
        "decided_at_ms": mb.result["decided_at_ms"],
        "closed_at_ms": now_ms,
        "result": mb.result,
        "scores": [_public_score(s) for s in mb.scores],
    }


def _canary_record(mb: Mailbox, canary_id: str) -> CanaryRecord:
    assert mb.result is not None
    res = mb.result
    canary = next((s for s in mb.scores if s["model_id"] == canary_id and not s["duplicate"]), None)
    canary_view: CanaryView | None = None
    if canary is not None:
        canary_view = {
            "model_id": canary["model_id"],
            "model_version": canary["model_version"],
            "status": canary["status"],
            "output": canary["output"],
            "arrived_at_ms": canary["arrived_at_ms"],
        }
    return {
        "request_id": mb.request_id,
        "policy_version": mb.policy_version,
        "decided_at_ms": res["decided_at_ms"],
        "official": {
            "model_id": res["model_id"],
            "model_version": res["model_version"],
            "output": res["output"],
            "reason": res["reason"],
        },
        "canary": canary_view,
        "agree": agreement(res["output"] if res["reason"] != "no_answer" else None, canary),
    }


def agreement(official: Any, canary: dict[str, Any] | None) -> bool | None:
    """Same label, or probabilities on the same side of 0.5; None when there is nothing to compare.

    >>> canary = {"status": "ok", "output": {"label": 1, "probability": 0.4}}
    >>> agreement({"label": 1}, canary), agreement({"label": True}, canary)  # 1 and true differ
    (True, False)
    >>> agreement({"probability": 0.3}, {"status": "ok", "output": {"probability": 0.45}})
    True
    >>> agreement({"label": 1}, {"status": "error", "output": None}) is None
    True
    """
    if canary is None or canary["status"] != "ok" or not isinstance(official, dict):
        return None
    other = canary["output"] or {}
    if official.get("label") is not None and other.get("label") is not None:
        # As JSON values: 1, true and "1" are different labels (Python has 1 == True).
        a, b = official["label"], other["label"]
        if type(a) is not type(b) or a != b:
            return False
        # Equal scalars of one type are one JSON value; a list or object may hide 1 against true inside.
        return isinstance(a, str | int | float) or fastjson.dumps(a) == fastjson.dumps(b)
    p, q = official.get("probability"), other.get("probability")
    if p is not None and q is not None:
        same_side: bool = (p >= 0.5) == (q >= 0.5)
        return same_side
    return None


def _orphan_letter(mb: Mailbox, s: dict[str, Any], policy: Policy, now_ms: int) -> Out:
    """The dead letter of a score held in a mailbox whose orphan timeout ran out without the request."""
    topic, partition, offset = s["src"]
    detail = f"no request with this id arrived within the orphan timeout (score from {s['model_id']})"
    if policy.dedupe_retention_ms > 0:
        detail += (
            f"; held for the dedupe retention ({policy.dedupe_retention_ms} ms after the orphan timeout) "
            "in case the request still comes"
        )
    # Cut here, before the builder, as it always was: so raw_truncated stays false even for the rare
    # score whose JSON is longer (an error text of non-ASCII characters, which json.dumps escapes).
    raw = json.dumps(_public_score(s))[:RAW_PREFIX_CHARS]
    dead = dead_letter(
        names.REASON_ORPHAN_SCORE, detail, Source(topic, partition, offset), raw, mb.request_id
    )
    return Out(DEAD_LETTER, dead_letter_to_dict(dead, now_ms))


def _archive_row(req: Request, raw: str, source: Source, now_ms: int) -> ArchiveRow:
    return {
        "request_id": req.request_id,
        "received_at_ms": now_ms,
        "sent_at_ms": req.sent_at_ms,
        "return_address": req.return_address,
        "source_topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "features": fastjson.dumps(req.features, sort_keys=True),
        "raw": raw,
    }

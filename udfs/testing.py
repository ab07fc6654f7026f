"""An in-memory driver for ``udfs.rendezvous_logic.RendezvousLogic``: the job without Flink or Kafka.

``Harness`` carries out the logic's ``Effects`` exactly as the Flink adapter (``udfs.flink_fn``) does, on
a keyed-state dict, a timer queue and a clock that moves only when told: ``advance_to(ms)`` fires every
timer due by then, in time order, each at its own time, as Flink's processing-time timers fire. Records
go in as JSON through the same parsers as in the job (``send_request``, ``send_score``, ``send``), policy
documents as published (``publish_policy``), rewards as the label join emits them (``send_reward``); what
comes out is collected by kind (``results``, ``decisions``, ``canary``, ``dead_letters``, ``archive``,
``ticks``), decoded. The tests use it, and so can anyone writing a policy.

>>> h = Harness({"version": 1, "deadline_ms": 100, "models": [{"id": "gbt", "role": "incumbent"}]})
>>> _ = h.send_request("r1", return_address="answers")
>>> h.advance_to(5)
[]
>>> out = h.send_score("r1", "gbt", {"label": 1, "probability": 0.9})
>>> [(o.kind, o.topic, o.record["model_id"], o.record["reason"]) for o in out]
[('result', 'answers', 'gbt', 'preferred')]
>>> len(h.results), h.results[0]["output"]
(1, {'label': 1, 'probability': 0.9})
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

from udfs import fastjson, names
from udfs import mailbox as mbx
from udfs.policy import Policy, parse_policy
from udfs.rendezvous_logic import (
    MAILBOX_METRICS,
    SOURCE_REQUESTS,
    SOURCE_SCORES,
    BatchedCounters,
    Effects,
    PolicyEffects,
    RendezvousLogic,
    Topics,
)

DEFAULT_TOPICS = Topics()


class Output(NamedTuple):
    """One record out: its kind (``udfs.mailbox`` RESULT, ARCHIVE, ...), Kafka key, decoded value, topic
    (None for the archive, a file sink's line)."""

    kind: str
    key: str | None
    record: dict[str, Any]
    topic: str | None


class RecordingCounter:
    """A Flink counter that keeps its value."""

    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n

    def dec(self, n: int = 1) -> None:
        self.count -= n


class RecordingGroup:
    """A metric group that keeps its counters (Flink's, in the job); like Flink's, it takes each name once."""

    def __init__(self) -> None:
        self.counters: dict[str, RecordingCounter] = {}

    def counter(self, name: str) -> RecordingCounter:
        assert name not in self.counters, f"counter {name} registered twice"
        return self.counters.setdefault(name, RecordingCounter())

    def counts(self) -> dict[str, int]:
        """The nonzero counters' values."""
        return {k: c.count for k, c in self.counters.items() if c.count}


class Harness:
    """One parallel instance of the mailbox operator, driven by hand; time starts at ``start_ms``.

    ``clock``: ``local`` (the default here) acts when a timer fires; ``log`` emits a tick, which the
    harness writes back at once, at the same time, as the next record of the scores topic (the job's
    loop through Kafka with no delay: ``ticks`` lists them).
    """

    def __init__(
        self,
        policy: Policy | Mapping[str, Any],
        *,
        clock: str = names.CLOCK_LOCAL,
        feedback: bool = True,
        topics: Topics = DEFAULT_TOPICS,
        start_ms: int = 0,
    ) -> None:
        if clock not in names.CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(names.CLOCKS)}, got {clock!r}")
        self.policy = policy if isinstance(policy, Policy) else parse_policy(policy)
        self.logic = RendezvousLogic(
            self.policy, feedback=feedback, via_log=clock == names.CLOCK_LOG, topics=topics
        )
        self.topics = topics
        self.now_ms = start_ms
        self.state: dict[str, str] = {}  # keyed state: request id -> the mailbox's text
        self.broadcast: dict[str, str] = {}  # the policies' broadcast state: version -> policy JSON
        self.posteriors_text: str | None = None  # the bandit's broadcast state
        self.outputs: list[Output] = []  # everything out, in order
        self._timers: dict[tuple[str, int], int] = {}  # (key, time) -> registration order
        self._queue: list[tuple[int, int, str]] = []  # (time, order, key); deleted entries stay, skipped
        self._order = 0
        self._offsets = {SOURCE_REQUESTS: 0, SOURCE_SCORES: 0}
        self._group = RecordingGroup()
        self.counters = BatchedCounters(self._group, MAILBOX_METRICS, self.logic.tally)
        self._policy_effects(self.logic.policies_changed())

    # --- records in ----------------------------------------------------------------------------------

    def send_request(
        self,
        request_id: str,
        *,
        return_address: str = "answers",
        features: Mapping[str, Any] | None = None,
        sent_at_ms: int | None = None,
        **fields: Any,
    ) -> list[Output]:
        """A request (schemas/request.schema.json) read from the requests topic now."""
        record = {
            "request_id": request_id,
            "return_address": return_address,
            "sent_at_ms": self.now_ms if sent_at_ms is None else sent_at_ms,
            "features": dict(features or {}),
            **fields,
        }
        return self.send(record, SOURCE_REQUESTS)

    def send_score(
        self,
        request_id: str,
        model_id: str,
        output: Mapping[str, Any] | None,
        *,
        status: str = "ok",
        error: str | None = None,
        model_version: str = "1",
        latency_ms: float = 1.0,
        scored_at_ms: int | None = None,
    ) -> list[Output]:
        """A model's score (schemas/score.schema.json) read from the scores topic now."""
        record: dict[str, Any] = {
            "request_id": request_id,
            "model_id": model_id,
            "model_version": model_version,
            "status": status,
            "output": None if output is None else dict(output),
            "scored_at_ms": self.now_ms if scored_at_ms is None else scored_at_ms,
            "latency_ms": latency_ms,
        }
        if error is not None:
            record["error"] = error
        return self.send(record, SOURCE_SCORES)

    def send(
        self, value: Mapping[str, Any] | bytes | None, source: int, key: str | None = "", partition: int = 0
    ) -> list[Output]:
        """Any record read now from the requests (``SOURCE_REQUESTS``) or scores topic, as JSON or raw
        bytes; ``key``: its Kafka key ("": the request id in it, as producers set it)."""
        data = value if value is None or isinstance(value, bytes) else json.dumps(value).encode()
        if key == "":
            key = value.get("request_id") if isinstance(value, Mapping) else None
        offset = self._offsets[source]
        self._offsets[source] = offset + 1
        # The job routes a record by its Kafka key, else by the request id in its value.
        routing = key or _request_id(data)
        effects = self.logic.on_record(
            key, data, source, partition, offset, self.now_ms, partial(self.state.get, routing)
        )
        return self._carry_out(effects, routing)

    def publish_policy(self, document: Mapping[str, Any] | str | bytes) -> list[Output]:
        """A policy document read now from the policies topic (a mapping is sent as JSON)."""
        data = document.encode() if isinstance(document, str) else document
        if isinstance(data, Mapping):
            data = json.dumps(data).encode()
        offset = self._offsets.setdefault(-1, 0)
        self._offsets[-1] = offset + 1
        return self._policy_effects(self.logic.on_policy(data, names.TOPIC_POLICIES, 0, offset, self.now_ms))

    def send_reward(self, rewards: Mapping[str, float], request_id: str = "r") -> bool:
        """A reward event from the label join (model -> reward); False if the logic ignored it."""
        text = self.logic.on_reward(
            fastjson.dumps_bytes({"request_id": request_id, "rewards": dict(rewards)})
        )
        if text is None:
            return False
        self.posteriors_text = text
        self.counters.add(names.METRIC_BANDIT_REWARDS, self.now_ms)
        return True

    # --- time ----------------------------------------------------------------------------------------

    def advance_to(self, ms: int) -> list[Output]:
        """Move the clock to ``ms`` (never back), firing every timer due by then in time order, each with
        the clock at its time; what they emitted."""
        if ms < self.now_ms:
            raise ValueError(f"the clock does not go back: at {self.now_ms}, asked for {ms}")
        out: list[Output] = []
        while self._queue and self._queue[0][0] <= ms:
            t, order, key = heapq.heappop(self._queue)
            if self._timers.get((key, t)) != order:
                continue  # deleted (or set again later: that entry fires)
            del self._timers[(key, t)]
            self.now_ms = max(self.now_ms, t)
            effects = self.logic.on_timer(self.now_ms, partial(self.state.get, key))
            if effects is not None:
                out += self._carry_out(effects, key)
        self.now_ms = ms
        return out

    def set_clock(self, ms: int) -> None:
        """Move the clock to ``ms`` without firing the timers due by then: a record sent now goes before
        them (Flink orders a record and a timer of the same millisecond either way); the next
        ``advance_to`` fires them, at this time."""
        if ms < self.now_ms:
            raise ValueError(f"the clock does not go back: at {self.now_ms}, asked for {ms}")
        self.now_ms = ms

    def advance_by(self, ms: int) -> list[Output]:
        return self.advance_to(self.now_ms + ms)

    @property
    def timers(self) -> list[tuple[int, str]]:
        """The timers set, as (time, request id), soonest first."""
        return sorted((t, k) for k, t in self._timers)

    # --- what came out -------------------------------------------------------------------------------

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o.record for o in self.outputs if o.kind == kind]

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.RESULT)

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.DECISION)

    @property
    def canary(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.CANARY)

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.DEAD_LETTER)

    @property
    def archive(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.ARCHIVE)

    @property
    def ticks(self) -> list[dict[str, Any]]:
        return self.of_kind(mbx.TICK)

    def metrics(self) -> dict[str, int]:
        """Every counter's value now (nonzero ones), as the job's metric reporter would show them."""
        self.counters.flush(self.now_ms)
        return self._group.counts()

    # --- carrying out effects, as udfs.flink_fn does -------------------------------------------------

    def _carry_out(self, effects: Effects, key: str) -> list[Output]:
        if effects.state is not None:
            self.state[key] = effects.state
        elif effects.clear:
            self.state.pop(key, None)
        if effects.delete_timer is not None:
            self._timers.pop((key, effects.delete_timer), None)
        if effects.set_timer is not None:
            self._order += 1
            self._timers[(key, effects.set_timer)] = self._order
            heapq.heappush(self._queue, (effects.set_timer, self._order, key))
        self.counters.add_each(effects.counts, self.now_ms)
        out = [_output(o) for o in effects.outputs]
        self.outputs += out
        for o in list(out):
            if o.kind == mbx.TICK and self.logic.via_log:  # written to the scores topic, read back
                out += self.send(o.record, SOURCE_SCORES, key=o.key)
        return out

    def _policy_effects(self, effects: PolicyEffects) -> list[Output]:
        if effects.put is not None:
            self.broadcast[effects.put[0]] = effects.put[1]
        for k in effects.remove:
            self.broadcast.pop(k, None)
        self.counters.register(effects.register)
        for name, n in effects.counts:
            self.counters.add(name, self.now_ms, n)
        out = [_output(o) for o in effects.outputs]
        self.outputs += out
        return out


def _request_id(data: bytes | None) -> str:
    """The request id in a record's value, as the Kafka source's query finds it ("": none)."""
    try:
        rid = json.loads(data or b"").get("request_id")
    except (ValueError, AttributeError):
        return ""
    return rid if isinstance(rid, str) else ""


def _output(row: Any) -> Output:
    if row[0] == mbx.ARCHIVE:
        return Output(mbx.ARCHIVE, None, json.loads(row[1]), None)
    kind, key, value, topic = row
    return Output(kind, key, json.loads(value), topic)

"""The thin Flink adapter: maps the pure mailbox onto keyed state, timers and side outputs.

Everything that decides anything lives in ``udfs.rendezvous_logic`` (over ``udfs.mailbox`` /
``udfs.policy`` / ``udfs.wire_in`` / ``udfs.wire_out`` / ``udfs.feedback``); this module only moves
data between it and PyFlink. Records crossing Java and Python are rows of plain strings and integers
(no pickled project classes: the mailbox's state is a built-in ``str`` in a byte-array state), so module
renames never break state.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    MapFunction,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from udfs import fastjson, feedback, flink_compat, names
from udfs import mailbox as mbx
from udfs.policy import Policy
from udfs.policy_registry import PolicyRegistry
from udfs.rendezvous_logic import (
    JOIN_METRICS,
    MAILBOX_METRICS,
    BatchedCounters,
    Effects,
    LabelJoinLogic,
    PolicyEffects,
    RendezvousLogic,
    Topics,
)
from udfs.rendezvous_logic import KIND_DECISION as KIND_DECISION  # re-exported: the job's and tests' names
from udfs.rendezvous_logic import KIND_LABEL as KIND_LABEL
from udfs.rendezvous_logic import SOURCE_REQUESTS as SOURCE_REQUESTS  # re-exported: the job's and tests' name
from udfs.rendezvous_logic import SOURCE_SCORES as SOURCE_SCORES
from udfs.wire_in import DeadLetter, Source
from udfs.wire_out import dead_letter_to_dict

# What the mailbox's broadcast input carries: policy documents and reward events.
KIND_POLICY = "policy"
KIND_REWARD = "reward"

# A Kafka record of the requests or scores topic on its way to the mailbox, as the Kafka source reads it
# (nothing parsed yet: the mailbox parses each record once): its key (the request id), value, which of
# the two topics it came from (SOURCE_REQUESTS / SOURCE_SCORES, a constant the source's query adds), and
# where in that topic.
RECORD_TYPE = Types.ROW_NAMED(
    ["k", "value", "source", "partition", "offset"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.INT(), Types.LONG()],
)
# The same record with the key it is routed to its mailbox by, worked out in the Kafka source's query
# (Java): the Kafka key, or for a record without one (a foreign producer), the request_id in its value
# ("" when there is none: it becomes a dead letter). The job keys the stream by that first field in
# Java (``udfs.flink_compat.key_by_first_field``): no Python call per record to find the key.
KEYED_RECORD_TYPE = Types.ROW_NAMED(["key", "record"], [Types.STRING(), RECORD_TYPE])
# A parsed label or decision record on its way to the label join: kind, request id, the record's
# compact JSON, and where it came from.
PARSED_TYPE = Types.ROW_NAMED(
    ["kind", "request_id", "text", "topic", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.INT(), Types.LONG()],
)
# Every Kafka record the mailbox emits, on its one main output: the output kind (udfs.mailbox RESULT,
# CANARY, DECISION, DEAD_LETTER, TICK), key, value (UTF-8 JSON bytes), and the topic it goes to (a
# result's return address, else ``Topics``). One Kafka sink writes them all (jobs/rendezvous_job.py); the kind only picks the
# rows of a second, transactional sink when some output is exactly-once.
MAILBOX_OUT_TYPE = Types.ROW_NAMED(
    ["tag", "k", "v", "topic"],
    [Types.STRING(), Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING()],
)
# The mailbox's broadcast input: policy documents (as read: value bytes, topic, partition, offset) and
# reward events from the label join (value: the event's JSON; where the label came from), told apart by
# ``kind``. One stream: a keyed-broadcast function has one broadcast input.
BROADCAST_TYPE = Types.ROW_NAMED(
    ["value", "topic", "partition", "offset", "kind"],
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.STRING()],
)
# The accepted live policies, in the mailbox operator's broadcast state: version -> versioned JSON.
POLICIES_STATE = MapStateDescriptor(names.STATE_POLICIES, Types.STRING(), Types.STRING())
# The bandit's posteriors, in the mailbox operator's broadcast state: POSTERIORS_KEY -> udfs.bandit JSON.
BANDIT_STATE = MapStateDescriptor(names.STATE_BANDIT, Types.STRING(), Types.STRING())
POSTERIORS_KEY = "posteriors"

# The label join's parsers' bad records, as the mailbox's dead letters (``MAILBOX_OUT_TYPE``): the job
# unions them into the one Kafka stream, so the sink converts one stream (jobs/rendezvous_job.py).
DEAD_LETTERS = OutputTag(names.TAG_DEAD_LETTERS, MAILBOX_OUT_TYPE)
# The decoy archive's lines: a side output of the mailbox, yielded only from ``process_element`` (a
# request arrives), where thread mode routes side outputs (``udfs.flink_compat``, item 2).
ARCHIVE = OutputTag(names.TAG_ARCHIVE, Types.STRING())


def _json(record: Mapping[str, Any]) -> str:
    return fastjson.dumps(record)


def _value(record: Mapping[str, Any]) -> bytes:
    """A Kafka record's value (``MAILBOX_OUT_TYPE``'s ``v``): UTF-8 JSON, as bytes all the way to the
    sink (as text it would be decoded here, made a Java string, and encoded again per record out)."""
    return fastjson.dumps_bytes(record)


def _now_ms() -> int:
    """Processing time from Python's clock: the same system clock Flink's timer service reads,
    without a call into the JVM (each such call costs tens of microseconds in thread mode)."""
    return time.time_ns() // 1_000_000


DEFAULT_TOPICS = Topics()


class ParseFunction(ProcessFunction):
    """Raw Kafka rows (value bytes, topic, partition, offset) of the label join's inputs -> parsed rows
    (``PARSED_TYPE``: labels and decision records as the compact JSON the join keeps), or dead letters.
    """

    KINDS = (KIND_LABEL, KIND_DECISION)

    def __init__(self, kind: str, dead_letters_topic: str = names.TOPIC_DEAD_LETTERS) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.dead_letters_topic = dead_letters_topic

    def open(self, runtime_context: RuntimeContext) -> None:
        reasons = names.PARSE_REASONS + (names.FEEDBACK_REASONS if self.kind == KIND_DECISION else ())
        per_reason = tuple(names.dead_letter_metric(r) for r in reasons)
        self.counters = BatchedCounters(
            runtime_context.get_metrics_group(), (names.METRIC_DEAD_LETTERS, *per_reason)
        )

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        data, topic, partition, offset = value[0], value[1], value[2], value[3]
        source = Source(topic, partition, offset)
        parse = feedback.parse_label if self.kind == KIND_LABEL else feedback.parse_decision
        parsed = parse(data, source)
        if isinstance(parsed, DeadLetter):
            now = _now_ms()
            self.counters.add(names.METRIC_DEAD_LETTERS, now)
            self.counters.add(names.dead_letter_metric(parsed.reason), now)
            record = _value(dead_letter_to_dict(parsed, now))
            yield DEAD_LETTERS, Row(mbx.DEAD_LETTER, parsed.request_id, record, self.dead_letters_topic)
            return
        yield Row(self.kind, parsed.request_id, _json(parsed.to_dict()), topic, partition, offset)


class TagPolicies(MapFunction):
    """Policy documents as read -> ``BROADCAST_TYPE`` rows of kind policy (to share the broadcast input)."""

    def map(self, value: Row) -> Row:
        return Row(value[0], value[1], value[2], value[3], KIND_POLICY)


class LabelJoinFunction(KeyedProcessFunction):
    """Labels joined with decision records by request id (``udfs.rendezvous_logic.LabelJoinLogic``, over
    ``udfs.feedback``), emitting reward events as ``BROADCAST_TYPE`` rows of kind reward. Keyed state: one
    entry of versioned JSON per request, with one processing-time timer that clears it ``ttl_ms`` after
    it opened or matched."""

    def __init__(self, ttl_ms: int = feedback.DEFAULT_TTL_MS) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms: must be positive, got {ttl_ms}")
        self.ttl_ms = ttl_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor(names.STATE_LABEL_JOIN, Types.STRING()))
        self.logic = LabelJoinLogic(self.ttl_ms, row=_reward_row)
        self.counters = BatchedCounters(runtime_context.get_metrics_group(), JOIN_METRICS)

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        kind, _rid, text, topic, partition, offset = value
        now = _now_ms()
        return self._carry_out(
            self.logic.on_record(kind, text, topic, partition, offset, now, self.state.value), ctx, now
        )

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        now = max(int(timestamp), _now_ms())
        effects = self.logic.on_timer(now, self.state.value)
        return iter(()) if effects is None else self._carry_out(effects, ctx, now)

    def _carry_out(self, effects: Effects, ctx: Any, now: int) -> Iterator[Any]:
        """Keyed state, timers and counters as the logic says, now; its rows as the caller iterates."""
        _write(self.state, effects, ctx)
        for name in effects.counts:
            self.counters.add(name, now)
        return iter(effects.outputs)


def _reward_row(value: bytes, topic: str | None, partition: int | None, offset: int | None) -> Row:
    return Row(value, topic, partition, offset, KIND_REWARD)


def _write(state: Any, effects: Effects, ctx: Any) -> None:
    """A keyed callback's effects on its state and timers, in the order the logic lists them."""
    if effects.state is not None:
        state.update(effects.state)
    elif effects.clear:
        state.clear()
    delete, register = effects.delete_timer, effects.set_timer
    if delete is not None or register is not None:
        timers = ctx.timer_service()
        if delete is not None:
            timers.delete_processing_time_timer(delete)
        if register is not None:
            timers.register_processing_time_timer(register)


class MailboxFunction(KeyedBroadcastProcessFunction):
    """One mailbox per request id in a ValueState of versioned JSON; the policy in force comes from the
    startup file or, live, from the broadcast policies stream.

    What it decides, ``udfs.rendezvous_logic.RendezvousLogic`` decides (``self.logic``, one per parallel
    instance: the policy registry, the bandit's posteriors, metric names, output topics, timers); this
    function reads keyed and broadcast state for it, calls it with the time, and carries out what it
    returns: writes state, sets and deletes timers, yields rows, bumps counters.

    Clock (``names.CLOCKS``): processing-time timers mark when a wait or deadline runs out. Under
    ``log`` the timer only emits a tick, which the job writes into the scores topic and which comes
    back here as a record of kind tick; the mailbox acts on it then (``udfs.mailbox.on_tick``), so its
    decisions depend on the order of records in Kafka alone. Under ``local`` the timer acts at once.

    Everything it emits goes to its one main output as ``MAILBOX_OUT_TYPE`` rows tagged with the
    output kind, which the job splits per sink in Java (``udfs.flink_compat``, item 2: why not side
    outputs).

    Atomic per request: a mailbox is decided under the policy version it recorded when its request
    arrived (``udfs.policy_registry``). Accepted policies live in broadcast state (operator state,
    checkpointed with the mailboxes) and, as parsed objects, in the logic's registry, rebuilt from that
    state on the first callback after a (re)start.

    The broadcast input also carries reward events from the label join: they update the Thompson
    sampling posteriors (``udfs.bandit``), kept in broadcast state too (only the broadcast side may
    write it; every instance applies every event, so all hold the same posteriors) and in the logic,
    from which a ``decide: thompson`` request's first model is drawn.
    """

    def __init__(
        self,
        policy: Policy,
        feedback: bool = True,
        clock: str = names.CLOCK_LOG,
        topics: Topics = DEFAULT_TOPICS,
    ) -> None:
        if clock not in names.CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(names.CLOCKS)}, got {clock!r}")
        self.policy = policy
        self.topics = topics
        self.feedback = feedback  # label feedback wired in: thompson documents may be accepted
        self.via_log = clock == names.CLOCK_LOG

    def open(self, runtime_context: RuntimeContext) -> None:
        # The mailbox's text as one byte array (since state version 3): not a string written char by char.
        mailbox_state = ValueStateDescriptor(names.STATE_MAILBOX, flink_compat.text_state_type())
        self.state = runtime_context.get_state(mailbox_state)
        self.logic = RendezvousLogic(
            self.policy,
            feedback=self.feedback,
            via_log=self.via_log,
            topics=self.topics,
            # Every parallel instance sees every policy document; one of them reports refusals.
            reports_policies=flink_compat.subtask_index(runtime_context) == 0,
            row=Row,
            archive=ARCHIVE,
        )
        self._restored = False
        self.counters = BatchedCounters(
            runtime_context.get_metrics_group(), MAILBOX_METRICS, self.logic.tally
        )
        self._policy_effects(self.logic.policies_changed(), _now_ms(), None)
        # What the interpreter holds now (PyFlink, the policy, this function) lives as long as the job:
        # out of the garbage collector's full collections, which took 48-92 ms over it at 833/s.
        gc.freeze()

    @property
    def registry(self) -> PolicyRegistry:
        return self.logic.registry

    @property
    def posteriors(self) -> dict[str, Any] | None:
        return self.logic.posteriors

    # --- policies ---------------------------------------------------------------------------------

    def _policy_effects(self, effects: PolicyEffects, now: int, ctx: Any) -> list[Any]:
        if effects.put is not None or effects.remove:
            state = ctx.get_broadcast_state(POLICIES_STATE)
            if effects.put is not None:
                state.put(*effects.put)
            for key in effects.remove:
                state.remove(key)
        self.counters.register(effects.register)
        for name, n in effects.counts:
            self.counters.add(name, now, n)
        return effects.outputs

    def _restore(self, ctx: Any) -> None:
        """Once per (re)start: the accepted policies and the posteriors from broadcast state."""
        if self._restored:
            return
        self._restored = True
        get = getattr(ctx, "get_broadcast_state", None)  # contexts without one: no live policies
        if get is None:
            return
        changed = self.logic.restore(list(get(POLICIES_STATE).items()), get(BANDIT_STATE).get(POSTERIORS_KEY))
        if changed is not None:
            self._policy_effects(changed, _now_ms(), ctx)

    def process_broadcast_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """A policy document (accepted into broadcast state, or a dead letter) or a reward event."""
        self._restore(ctx)
        if len(value) > 4 and value[4] == KIND_REWARD:
            text = self.logic.on_reward(value[0])
            if text is not None:
                ctx.get_broadcast_state(BANDIT_STATE).put(POSTERIORS_KEY, text)
                self.counters.add(names.METRIC_BANDIT_REWARDS, _now_ms())
            return
        now = _now_ms()
        yield from self._policy_effects(
            self.logic.on_policy(value[0], value[1], value[2], value[3], now), now, ctx
        )

    # --- requests, scores, timers ---------------------------------------------------------------------

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """One Kafka record (``RECORD_TYPE``), for the logic to parse and apply."""
        self._restore(ctx)
        now = _now_ms()
        effects = self.logic.on_record(
            value[0], value[1], value[2], value[3], value[4], now, self.state.value
        )
        return self._carry_out(effects, ctx, now)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self._restore(ctx)
        now = max(int(timestamp), _now_ms())
        effects = self.logic.on_timer(now, self.state.value)
        return iter(()) if effects is None else self._carry_out(effects, ctx, now)

    def _carry_out(self, effects: Effects, ctx: Any, now: int) -> Iterator[Any]:
        """Keyed state, timers and counters as the logic says, now; its rows as the caller iterates."""
        _write(self.state, effects, ctx)
        self.counters.add_each(effects.counts, now)
        return iter(effects.outputs)

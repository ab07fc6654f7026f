"""The thin Flink adapter: maps the pure mailbox onto keyed state, timers and side outputs.

Everything that decides anything lives in ``udfs.mailbox`` / ``udfs.policy`` / ``udfs.wire``;
this module only moves data between them and PyFlink. Records crossing Java and Python are rows
of plain strings and integers (no pickled project classes), so module renames never break state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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

from udfs import bandit, fastjson, feedback, flink_compat, model_metrics, names
from udfs import mailbox as mbx
from udfs.policy import BanditSpec, Policy
from udfs.policy_registry import Accepted, PolicyRegistry, state_key, state_value
from udfs.policy_registry import dead_letter as policy_dead_letter
from udfs.wire import (
    DeadLetter,
    Request,
    Score,
    Source,
    Tick,
    key_mismatch,
    parse_request,
    parse_score_or_tick,
)

KIND_LABEL = "label"
KIND_DECISION = "decision"
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
SOURCE_REQUESTS = 0
SOURCE_SCORES = 1
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
# request arrives), where thread mode routes side outputs (``udfs.flink_compat``, item 3).
ARCHIVE = OutputTag(names.TAG_ARCHIVE, Types.STRING())


@dataclass(frozen=True)
class Topics:
    """The topics the mailbox reads (for dead letters and the archive, which point back at a record)
    and writes (every Kafka output but results, which go to the request's return address)."""

    requests: str = names.TOPIC_REQUESTS
    scores: str = names.TOPIC_SCORES  # also where ticks go: the partition of the request's scores
    canary: str = names.TOPIC_CANARY
    decisions: str = names.TOPIC_DECISIONS
    dead_letters: str = names.TOPIC_DEAD_LETTERS

    def of_source(self, source: int) -> str:
        return self.requests if source == SOURCE_REQUESTS else self.scores

    def of_output(self) -> dict[str, str]:
        return {
            mbx.CANARY: self.canary,
            mbx.DECISION: self.decisions,
            mbx.DEAD_LETTER: self.dead_letters,
            mbx.TICK: self.scores,
        }


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


class _BatchedCounters:
    """Metric counters incremented in Python and pushed to Flink at most once a second.

    ``add`` takes a signed delta: a counter that goes down is flushed with ``dec``. ``mailboxes_live``
    is derived at flush from ``mailboxes_opened`` and ``mailboxes_cleared``, and ``tally`` (per-model
    counters from closed mailboxes) is drained into the counters then. All counters of one operator
    share one instance, so any event flushes them all.
    """

    FLUSH_EVERY_MS = 1000

    def __init__(self, group: Any, metric_names: tuple[str, ...]) -> None:
        self._group = group
        self._counters = {name: group.counter(name) for name in metric_names}
        self._pending = dict.fromkeys(self._counters, 0)
        self._totals = dict.fromkeys(self._counters, 0)
        self._next_flush_ms = 0
        self.tally = model_metrics.Tally()
        self._model_metric_names: dict[tuple[str, str], str] = {}

    def register(self, metric_names: tuple[str, ...]) -> None:
        """More counters after open (e.g. for a model a live policy deploys); known names are skipped."""
        for name in metric_names:
            if name not in self._counters:
                self._counters[name] = self._group.counter(name)
                self._pending[name] = 0
                self._totals[name] = 0

    def total(self, name: str) -> int:
        """Everything added to ``name`` so far, flushed or not."""
        return self._totals[name] + self._pending[name]

    def add(self, name: str, now_ms: int, delta: int = 1) -> None:
        self._pending[name] += delta
        if now_ms >= self._next_flush_ms:
            self.flush(now_ms)

    def add_each(self, metric_names: list[str], now_ms: int) -> None:
        """One for each name (a name listed twice counts twice)."""
        pending = self._pending
        for name in metric_names:
            pending[name] += 1
        if now_ms >= self._next_flush_ms:
            self.flush(now_ms)

    def flush(self, now_ms: int) -> None:
        pending = self._pending
        live = names.METRIC_MAILBOXES_LIVE
        if live in pending:
            pending[live] += pending[names.METRIC_MAILBOXES_OPENED] - pending[names.METRIC_MAILBOXES_CLEARED]
        for key, n in self.tally.drain().items():
            name = self._model_metric_names.get(key)
            if name is None:
                name = self._model_metric_names[key] = names.model_metric(*key)
            if name in pending:  # a model no policy lists any more has no counters
                pending[name] += n
        for name, n in pending.items():
            if n:
                self._totals[name] += n
                if n > 0:
                    self._counters[name].inc(n)
                else:
                    self._counters[name].dec(-n)
                pending[name] = 0
        self._next_flush_ms = now_ms + self.FLUSH_EVERY_MS


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
        self.counters = _BatchedCounters(
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
            record = _value(parsed.to_dict(now))
            yield DEAD_LETTERS, Row(mbx.DEAD_LETTER, parsed.request_id, record, self.dead_letters_topic)
            return
        yield Row(self.kind, parsed.request_id, _json(parsed.to_dict()), topic, partition, offset)


class TagPolicies(MapFunction):
    """Policy documents as read -> ``BROADCAST_TYPE`` rows of kind policy (to share the broadcast input)."""

    def map(self, value: Row) -> Row:
        return Row(value[0], value[1], value[2], value[3], KIND_POLICY)


class LabelJoinFunction(KeyedProcessFunction):
    """Labels joined with decision records by request id (``udfs.feedback``), emitting reward events
    as ``BROADCAST_TYPE`` rows of kind reward. Keyed state: one entry of versioned JSON per request,
    with one processing-time timer that clears it ``ttl_ms`` after it opened or matched."""

    def __init__(self, ttl_ms: int = feedback.DEFAULT_TTL_MS) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms: must be positive, got {ttl_ms}")
        self.ttl_ms = ttl_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor(names.STATE_LABEL_JOIN, Types.STRING()))
        self.counters = _BatchedCounters(
            runtime_context.get_metrics_group(),
            (
                names.METRIC_LABELS_MATCHED,
                names.METRIC_LABELS_UNMATCHED,
                names.METRIC_DECISIONS_UNLABELLED,
                names.METRIC_FEEDBACK_DUPLICATES,
            ),
        )

    def _load(self) -> feedback.JoinEntry | None:
        text = self.state.value()
        return None if text is None else feedback.JoinEntry.from_json(text)

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        kind, _rid, text, topic, partition, offset = value
        now = _now_ms()
        entry = self._load()
        previous_wake = None if entry is None else entry.wake_at_ms
        obj = json.loads(text)  # written by ParseFunction upstream
        if kind == KIND_LABEL:
            label = feedback.Label(obj["request_id"], obj["label"], obj["labelled_at_ms"])
            step = feedback.on_label(entry, label, now, self.ttl_ms)
        else:
            step = feedback.on_answers(entry, feedback.Answers.from_dict(obj), now, self.ttl_ms)
        yield from self._apply(step, ctx, previous_wake, now, (topic, partition, offset))

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        entry = self._load()
        if entry is None:
            return
        now = max(int(timestamp), _now_ms())
        yield from self._apply(feedback.on_timer(entry, now), ctx, entry.wake_at_ms, now, (None, None, None))

    def _apply(
        self,
        step: feedback.JoinStep,
        ctx: Any,
        previous_wake: int | None,
        now: int,
        source: tuple[Any, Any, Any],
    ) -> Iterator[Any]:
        timers = ctx.timer_service()
        if step.entry is None:
            self.state.clear()
            if previous_wake is not None and previous_wake > now:
                timers.delete_processing_time_timer(previous_wake)
        else:
            self.state.update(step.entry.to_json())
            if step.entry.wake_at_ms != previous_wake:
                if previous_wake is not None and previous_wake > now:
                    timers.delete_processing_time_timer(previous_wake)
                timers.register_processing_time_timer(step.entry.wake_at_ms)
        for name in step.counts:
            self.counters.add(name, now)
        for event in step.rewards:
            yield Row(_value(event), source[0], source[1], source[2], KIND_REWARD)


class MailboxFunction(KeyedBroadcastProcessFunction):
    """One mailbox per request id in a ValueState of versioned JSON; the policy in force comes from the
    startup file or, live, from the broadcast policies stream.

    Clock (``names.CLOCKS``): processing-time timers mark when a wait or deadline runs out. Under
    ``log`` the timer only emits a tick, which the job writes into the scores topic and which comes
    back here as a record of kind tick; the mailbox acts on it then (``udfs.mailbox.on_tick``), so its
    decisions depend on the order of records in Kafka alone. Under ``local`` the timer acts at once.

    Everything it emits goes to its one main output as ``MAILBOX_OUT_TYPE`` rows tagged with the
    output kind, which the job splits per sink in Java (``udfs.flink_compat``, item 3: why not side
    outputs).

    Atomic per request: a mailbox is decided under the policy version it recorded when its request
    arrived (``udfs.policy_registry``). Accepted policies live in broadcast state (operator state,
    checkpointed with the mailboxes) and, as parsed objects, in ``self.registry``, rebuilt from that
    state on the first callback after a (re)start.

    The broadcast input also carries reward events from the label join: they update the Thompson
    sampling posteriors (``udfs.bandit``), kept in broadcast state too (only the broadcast side may
    write it; every instance applies every event, so all hold the same posteriors) and in
    ``self.posteriors``, from which a ``decide: thompson`` request's first model is drawn.
    """

    def __init__(
        self,
        policy: Policy,
        feedback: bool = True,
        clock: str = names.CLOCK_LOG,
        topics: Topics = Topics(),
    ) -> None:
        if clock not in names.CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(names.CLOCKS)}, got {clock!r}")
        self.policy = policy
        self.topics = topics
        self.feedback = feedback  # label feedback wired in: thompson documents may be accepted
        self.via_log = clock == names.CLOCK_LOG

    def open(self, runtime_context: RuntimeContext) -> None:
        self._output_topics = self.topics.of_output()
        self.state = runtime_context.get_state(ValueStateDescriptor(names.STATE_MAILBOX, Types.STRING()))
        # Open mailboxes by request id, as last written to state: a record of an open mailbox is applied
        # without reading and parsing its state again. Empty after every (re)start: state is the truth.
        self._open: dict[str, mbx.Mailbox] = {}
        self.registry = PolicyRegistry(self.policy, feedback=self.feedback)
        self.posteriors: dict[str, Any] | None = None
        self._restored = False
        # Every parallel instance sees every policy document; one of them reports refusals.
        self._reports_policies = flink_compat.subtask_index(runtime_context) == 0
        self._model_ids: dict[int, tuple[str, ...]] = {}
        self._metered_models: set[str] = set()
        self.counters = _BatchedCounters(
            runtime_context.get_metrics_group(),
            (
                names.METRIC_REQUESTS,
                names.METRIC_SCORES,
                names.METRIC_RESULTS,
                names.METRIC_NO_ANSWER,
                names.METRIC_LATE_SCORES,
                names.METRIC_DUPLICATES,
                names.METRIC_DUPLICATE_REQUESTS,
                names.METRIC_DUPLICATE_SCORES,
                names.METRIC_UNKNOWN_MODEL_SCORES,
                names.METRIC_ORPHANS,
                names.METRIC_DEAD_LETTERS,
                *(
                    names.dead_letter_metric(r)
                    for r in names.PARSE_REASONS + names.MAILBOX_REASONS + names.POLICY_REASONS
                ),
                names.METRIC_MAILBOXES_OPENED,
                names.METRIC_MAILBOXES_CLEARED,
                names.METRIC_MAILBOXES_LIVE,
                names.METRIC_POLICIES_ACCEPTED,
                names.METRIC_POLICIES_REFUSED,
                names.METRIC_POLICY_VERSION,
                names.METRIC_BANDIT_REWARDS,
                names.METRIC_BANDIT_CHOICES,
                names.METRIC_TICKS_WRITTEN,
                names.METRIC_TICKS_READ,
                names.METRIC_TICKS_IGNORED,
            ),
        )
        self._on_policies_changed(_now_ms())

    # --- policies ---------------------------------------------------------------------------------

    def _on_policies_changed(self, now: int) -> None:
        """Per-model counters for every model of every known policy (udfs/model_metrics.py); the
        ``policy_version`` counter is kept equal to the version in force (a counter, not a gauge: no
        Python callback on the metric reporter's thread)."""
        new = []
        for p in self.registry.policies:
            ids = self._model_ids.setdefault(p.version, tuple(m.id for m in p.models))
            new += [mid for mid in ids if mid not in self._metered_models]
        for mid in dict.fromkeys(new):
            self._metered_models.add(mid)
            self.counters.register(tuple(names.model_metric(mid, n) for n in names.MODEL_METRICS))
        shown = self.counters.total(names.METRIC_POLICY_VERSION)
        self.counters.add(names.METRIC_POLICY_VERSION, now, self.registry.current.version - shown)

    def _restore(self, ctx: Any) -> None:
        """Once per (re)start: the accepted policies and the posteriors from broadcast state."""
        if self._restored:
            return
        self._restored = True
        get = getattr(ctx, "get_broadcast_state", None)  # contexts without one: no live policies
        if get is None:
            return
        entries = list(get(POLICIES_STATE).items())
        if entries:
            self.registry = PolicyRegistry.from_state(self.policy, entries, feedback=self.feedback)
            self._on_policies_changed(_now_ms())
        text = get(BANDIT_STATE).get(POSTERIORS_KEY)
        if text is not None:
            try:
                self.posteriors = bandit.loads(text)
            except ValueError as e:  # a state this code cannot read: start from the prior, loudly
                print(f"rendezvous mailbox: bandit posteriors not restored: {e}", flush=True)
                return
            print(f"rendezvous mailbox: bandit posteriors restored: {_summary(self.posteriors)}", flush=True)

    def process_broadcast_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """A policy document (accepted into broadcast state, or a dead letter) or a reward event."""
        self._restore(ctx)
        if len(value) > 4 and value[4] == KIND_REWARD:
            self._reward(value[0], ctx)
            return
        data, topic, partition, offset = value[0], value[1], value[2], value[3]
        now = _now_ms()
        verdict = self.registry.offer(data)
        if isinstance(verdict, Accepted):
            state = ctx.get_broadcast_state(POLICIES_STATE)
            state.put(state_key(verdict.policy.version), state_value(verdict.policy))
            for v in verdict.evicted:
                state.remove(state_key(v))
            self.counters.add(names.METRIC_POLICIES_ACCEPTED, now)
            self._on_policies_changed(now)
            return
        self.counters.add(names.METRIC_POLICIES_REFUSED, now)
        if not self._reports_policies:
            return
        self.counters.add(names.METRIC_DEAD_LETTERS, now)
        self.counters.add(names.dead_letter_metric(verdict.reason), now)
        record = policy_dead_letter(verdict, data, Source(topic, partition, offset), now)
        yield Row(mbx.DEAD_LETTER, None, _value(record), self.topics.dead_letters)

    def _reward(self, data: bytes, ctx: Any) -> None:
        """One label's rewards into the posteriors, under the prior and discount of the policy in force."""
        spec = self.registry.current.bandit or BanditSpec()
        try:
            event = json.loads(bytes(data).decode("utf-8"))
            state = self.posteriors or bandit.new_state(prior=spec.prior, discount=spec.discount)
            state = bandit.with_settings(state, spec.prior, spec.discount)
            state = bandit.update_many(state, event["rewards"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # never from the join; never fatal
            print(f"rendezvous mailbox: reward event ignored: {e}", flush=True)
            return
        self.posteriors = state
        ctx.get_broadcast_state(BANDIT_STATE).put(POSTERIORS_KEY, bandit.dumps(state))
        self.counters.add(names.METRIC_BANDIT_REWARDS, _now_ms())

    # --- requests, scores, timers ---------------------------------------------------------------------

    def _load(self, request_id: str | None) -> mbx.Mailbox | None:
        """The mailbox of the current key: from ``self._open`` (open mailboxes, as this instance last
        wrote them), else from keyed state (after a restart, and for tombstones, which are not cached)."""
        mb = self._open.get(request_id) if request_id is not None else None
        if mb is not None:
            return mb
        text = self.state.value()
        return None if text is None else mbx.Mailbox.from_json(text)

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """One Kafka record (``RECORD_TYPE``), parsed here, once, into a typed request, score or tick."""
        self._restore(ctx)
        key, data, from_source, partition, offset = value[0], value[1], value[2], value[3], value[4]
        now = _now_ms()
        source = Source(self.topics.of_source(from_source), partition, offset)
        is_request = from_source == SOURCE_REQUESTS
        parsed = parse_request(data, source) if is_request else parse_score_or_tick(data, source)
        if not isinstance(parsed, DeadLetter):
            # decode only for what keeps the text: the archive (requests), a key mismatch (rare)
            text = bytes(data).decode("utf-8") if is_request or key != parsed.request_id else ""
            mismatch = key_mismatch(key, parsed.request_id, source, text)
            if mismatch is None:
                yield from self._on_record(parsed, text, source, now, ctx)
                return
            parsed = mismatch
        self.counters.add(names.METRIC_DEAD_LETTERS, now)
        self.counters.add(names.dead_letter_metric(parsed.reason), now)
        yield Row(mbx.DEAD_LETTER, parsed.request_id, _value(parsed.to_dict(now)), self.topics.dead_letters)

    def _on_record(
        self, record: Request | Score | Tick, text: str, source: Source, now: int, ctx: Any
    ) -> Iterator[Any]:
        current = self._load(record.request_id)
        previous_wake_ms = None if current is None else current.wake_at_ms  # before the in-place update
        # An open mailbox keeps the version it recorded; a new one takes the version in force now (a
        # duplicate request is refused by the mailbox whatever its version).
        policy = self.registry.policy_for(None if current is None else current.policy_version)
        if isinstance(record, Request):
            step = mbx.on_request(current, record, text, source, policy, now, self.posteriors)
            if names.METRIC_REQUESTS in step.counts and step.mailbox and step.mailbox.choice is not None:
                step.counts.append(names.METRIC_BANDIT_CHOICES)
        elif isinstance(record, Tick):
            step = mbx.on_tick(current, record, policy, now)
        else:
            step = mbx.on_score(current, record, source, policy, now)
        yield from self._apply(step, ctx, previous_wake_ms, now, policy, record.request_id)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self._restore(ctx)
        request_id = ctx.get_current_key()
        current = self._load(request_id)
        if current is None:
            return
        now = max(int(timestamp), _now_ms())
        previous_wake_ms = current.wake_at_ms  # read first: the transition updates the mailbox in place
        policy = self.registry.policy_for(current.policy_version)
        step = mbx.on_timer(current, policy, now, via_log=self.via_log)
        yield from self._apply(step, ctx, previous_wake_ms, now, policy, request_id)

    def _apply(  # noqa: C901 - the per-record path, one frame: a helper call per record costs
        self,
        step: mbx.Step,
        ctx: Any,
        previous_wake_ms: int | None,
        now: int,
        policy: Policy,
        request_id: str,
    ) -> Iterator[Any]:
        mb = step.mailbox
        if mb is None:
            self.state.clear()
            self._open.pop(request_id, None)
            if previous_wake_ms is not None and previous_wake_ms > now:
                ctx.timer_service().delete_processing_time_timer(previous_wake_ms)
        else:
            self.state.update(mb.to_json())
            if mb.closed:
                self._open.pop(request_id, None)
            else:
                self._open[request_id] = mb
            if mb.wake_at_ms != previous_wake_ms:
                timers = ctx.timer_service()
                if previous_wake_ms is not None and previous_wake_ms > now:
                    # Deleting costs one call into the JVM; letting it fire costs a state read and a callback.
                    timers.delete_processing_time_timer(previous_wake_ms)
                if mb.wake_at_ms is not None:
                    timers.register_processing_time_timer(mb.wake_at_ms)
        counters = self.counters
        counters.add_each(step.counts, now)
        for out in step.outputs:
            kind = out.kind
            if kind == mbx.ARCHIVE:
                yield ARCHIVE, _json(out.record)
                continue
            if kind == mbx.DEAD_LETTER:
                counters.add_each(
                    [names.METRIC_DEAD_LETTERS, names.dead_letter_metric(out.record["reason"])], now
                )
            elif kind == mbx.DECISION:
                model_ids = self._model_ids.get(policy.version) or tuple(m.id for m in policy.models)
                counters.tally.add(out.record, model_ids)
            topic = out.topic if kind == mbx.RESULT else self._output_topics[kind]
            yield Row(kind, out.record.get("request_id"), _value(out.record), topic)


def _summary(state: dict[str, Any]) -> str:
    """Posteriors for a log line: ``gbt Beta(81, 21) mean 0.794; ...`` after ``updates`` labels."""
    arms = "; ".join(
        f"{m} Beta({a:.4g}, {b:.4g}) mean {a / (a + b):.3f}" for m, (a, b) in sorted(state["arms"].items())
    )
    return f"{state['updates']} labels: {arms or 'no models yet'}"

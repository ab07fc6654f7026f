"""The thin Flink adapter: maps the pure mailbox onto keyed state, timers and side outputs.

Everything that decides anything lives in ``udfs.mailbox`` / ``udfs.policy`` / ``udfs.wire``;
this module only moves data between them and PyFlink. Records crossing Java and Python are rows
of plain strings and integers (no pickled project classes), so module renames never break state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
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

from udfs import bandit, feedback, model_metrics, names
from udfs import mailbox as mbx
from udfs.policy import BanditSpec, Policy
from udfs.policy_registry import Accepted, PolicyRegistry, state_key, state_value
from udfs.policy_registry import dead_letter as policy_dead_letter
from udfs.wire import DeadLetter, Request, Score, Source, Tick, parse_request, parse_score_or_tick

KIND_REQUEST = "request"
KIND_SCORE = "score"
KIND_TICK = "tick"  # a record of the scores topic written by the mailbox itself (--clock log)
KIND_LABEL = "label"
KIND_DECISION = "decision"
# What the mailbox's broadcast input carries: policy documents and reward events.
KIND_POLICY = "policy"
KIND_REWARD = "reward"

# A parsed record on its way to the mailbox: kind, request id, the record's text, and where it came from.
PARSED_TYPE = Types.ROW_NAMED(
    ["kind", "request_id", "text", "topic", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.INT(), Types.LONG()],
)
# A Kafka record to write: key, value, and (for results) the topic.
KEYED_RECORD_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
ROUTED_RECORD_TYPE = Types.ROW_NAMED(["k", "v", "topic"], [Types.STRING(), Types.STRING(), Types.STRING()])
# Everything the mailbox emits, on its one output: the output kind (udfs.mailbox RESULT, ARCHIVE, ...),
# key, value, and (for results) the topic. RouteFunction turns it into ROUTED_RECORD_TYPE + side outputs.
MAILBOX_OUT_TYPE = Types.ROW_NAMED(
    ["tag", "k", "v", "topic"], [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING()]
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

DEAD_LETTERS = OutputTag(names.TAG_DEAD_LETTERS, KEYED_RECORD_TYPE)
CANARY = OutputTag(names.TAG_CANARY, KEYED_RECORD_TYPE)
DECISIONS = OutputTag(names.TAG_DECISIONS, KEYED_RECORD_TYPE)
ARCHIVE = OutputTag(names.TAG_ARCHIVE, Types.STRING())
TICKS = OutputTag(names.TAG_TICKS, KEYED_RECORD_TYPE)

_SIDE_TAGS = {mbx.CANARY: CANARY, mbx.DECISION: DECISIONS, mbx.DEAD_LETTER: DEAD_LETTERS, mbx.TICK: TICKS}


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _now_ms() -> int:
    """Processing time from Python's clock: the same system clock Flink's timer service reads,
    without a call into the JVM (each such call costs tens of microseconds in thread mode)."""
    return time.time_ns() // 1_000_000


class _BatchedCounters:
    """Metric counters incremented in Python and pushed to Flink at most once a second.

    ``add`` takes a signed delta: a counter that goes down (``mailboxes_live``) is flushed with ``dec``.
    All counters of one operator share one instance, so any event flushes them all.
    """

    FLUSH_EVERY_MS = 1000

    def __init__(self, group: Any, metric_names: tuple[str, ...]) -> None:
        self._group = group
        self._counters = {name: group.counter(name) for name in metric_names}
        self._pending = dict.fromkeys(self._counters, 0)
        self._totals = dict.fromkeys(self._counters, 0)
        self._next_flush_ms = 0

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

    def flush(self, now_ms: int) -> None:
        for name, n in self._pending.items():
            self._totals[name] += n
            if n > 0:
                self._counters[name].inc(n)
            elif n < 0:
                self._counters[name].dec(-n)
            self._pending[name] = 0
        self._next_flush_ms = now_ms + self.FLUSH_EVERY_MS


class ParseFunction(ProcessFunction):
    """Raw Kafka rows (value bytes, topic, partition, offset) -> parsed rows, or dead letters.

    Requests and scores go on as their text (the scores topic also carries the mailbox's own ticks,
    which go on as kind tick); labels and decision records (read back for the label
    join, ``udfs.feedback``) as the compact JSON the join keeps.
    """

    KINDS = (KIND_REQUEST, KIND_SCORE, KIND_LABEL, KIND_DECISION)

    def __init__(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}")
        self.kind = kind

    def open(self, runtime_context: RuntimeContext) -> None:
        reasons = names.PARSE_REASONS + (names.FEEDBACK_REASONS if self.kind == KIND_DECISION else ())
        per_reason = tuple(names.dead_letter_metric(r) for r in reasons)
        self.counters = _BatchedCounters(
            runtime_context.get_metrics_group(), (names.METRIC_DEAD_LETTERS, *per_reason)
        )

    def _parse(self, data: Any, source: Source) -> Any:
        if self.kind == KIND_REQUEST:
            return parse_request(data, source)
        if self.kind == KIND_SCORE:
            return parse_score_or_tick(data, source)
        if self.kind == KIND_LABEL:
            return feedback.parse_label(data, source)
        return feedback.parse_decision(data, source)

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        data, topic, partition, offset = value[0], value[1], value[2], value[3]
        source = Source(topic, partition, offset)
        parsed = self._parse(data, source)
        if isinstance(parsed, DeadLetter):
            now = _now_ms()
            self.counters.add(names.METRIC_DEAD_LETTERS, now)
            self.counters.add(names.dead_letter_metric(parsed.reason), now)
            yield DEAD_LETTERS, Row(parsed.request_id, _json(parsed.to_dict(now)))
            return
        if self.kind in (KIND_LABEL, KIND_DECISION):
            text = _json(parsed.to_dict())
        else:
            text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        kind = KIND_TICK if isinstance(parsed, Tick) else self.kind
        yield Row(kind, parsed.request_id, text, topic, partition, offset)


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
            yield Row(_json(event).encode("utf-8"), source[0], source[1], source[2], KIND_REWARD)


def _subtask_index(runtime_context: Any) -> int:
    """This parallel instance's index. PyFlink 2.2.1's thread-mode context calls the Java method
    ``getIndexOfThisSubtask``, which Flink 2 moved to ``getTaskInfo()``; ask there when it fails."""
    try:
        return int(runtime_context.get_index_of_this_subtask())
    except AttributeError:
        java = getattr(runtime_context, "_runtime_context", None)
        if java is None:
            return 0  # a context without the method at all (the unit tests' fakes): one instance
        return int(java.getTaskInfo().getIndexOfThisSubtask())


class MailboxFunction(KeyedBroadcastProcessFunction):
    """One mailbox per request id in a ValueState of versioned JSON; the policy in force comes from the
    startup file or, live, from the broadcast policies stream.

    Clock (``names.CLOCKS``): processing-time timers mark when a wait or deadline runs out. Under
    ``log`` the timer only emits a tick, which the job writes into the scores topic and which comes
    back here as a record of kind tick; the mailbox acts on it then (``udfs.mailbox.on_tick``), so its
    decisions depend on the order of records in Kafka alone. Under ``local`` the timer acts at once.

    Everything it emits goes to its one main output as ``MAILBOX_OUT_TYPE`` rows tagged with the
    output kind, and ``RouteFunction`` splits them: PyFlink 2.2's thread mode does not route side
    outputs yielded from ``on_timer`` of a keyed *broadcast* function (its ``on_timer`` skips the
    side-output filter that the keyed process function's has; ``fn_execution/datastream/embedded/
    operations.py``), and deadlines, closes and orphans are all decided in ``on_timer``.

    Atomic per request: a mailbox is decided under the policy version it recorded when its request
    arrived (``udfs.policy_registry``). Accepted policies live in broadcast state (operator state,
    checkpointed with the mailboxes) and, as parsed objects, in ``self.registry``, rebuilt from that
    state on the first callback after a (re)start.

    The broadcast input also carries reward events from the label join: they update the Thompson
    sampling posteriors (``udfs.bandit``), kept in broadcast state too (only the broadcast side may
    write it; every instance applies every event, so all hold the same posteriors) and in
    ``self.posteriors``, from which a ``decide: thompson`` request's first model is drawn.
    """

    def __init__(self, policy: Policy, feedback: bool = True, clock: str = names.CLOCK_LOG) -> None:
        if clock not in names.CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(names.CLOCKS)}, got {clock!r}")
        self.policy = policy
        self.feedback = feedback  # label feedback wired in: thompson documents may be accepted
        self.via_log = clock == names.CLOCK_LOG

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor(names.STATE_MAILBOX, Types.STRING()))
        self.registry = PolicyRegistry(self.policy, feedback=self.feedback)
        self.posteriors: dict[str, Any] | None = None
        self._restored = False
        # Every parallel instance sees every policy document; one of them reports refusals.
        self._reports_policies = _subtask_index(runtime_context) == 0
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
                *(names.dead_letter_metric(r) for r in names.MAILBOX_REASONS + names.POLICY_REASONS),
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
        yield Row(mbx.DEAD_LETTER, None, _json(record), None)

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

    def _load(self) -> mbx.Mailbox | None:
        text = self.state.value()
        return None if text is None else mbx.Mailbox.from_json(text)

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        self._restore(ctx)
        kind, _rid, text, topic, partition, offset = value
        now = _now_ms()
        source = Source(topic, partition, offset)
        obj = json.loads(text)  # validated by ParseFunction upstream
        current = self._load()
        previous_wake_ms = None if current is None else current.wake_at_ms  # before the in-place update
        # An open mailbox keeps the version it recorded; a new one takes the version in force now (a
        # duplicate request is refused by the mailbox whatever its version).
        policy = self.registry.policy_for(None if current is None else current.policy_version)
        if kind == KIND_REQUEST:
            req = Request(
                obj["request_id"],
                obj["return_address"],
                obj["sent_at_ms"],
                obj["features"],
                obj.get("deadline_ms"),
                obj.get("routing_key"),
            )
            step = mbx.on_request(current, req, text, source, policy, now, self.posteriors)
            if names.METRIC_REQUESTS in step.counts and step.mailbox and step.mailbox.choice is not None:
                step.counts.append(names.METRIC_BANDIT_CHOICES)
        elif kind == KIND_TICK:
            step = mbx.on_tick(current, Tick.from_dict(obj), policy, now)
        else:
            score = Score(
                obj["request_id"],
                obj["model_id"],
                obj["model_version"],
                obj["status"],
                obj.get("output") if obj["status"] == "ok" else None,
                obj.get("error") if obj["status"] != "ok" else None,
                obj["scored_at_ms"],
                float(obj["latency_ms"]),
            )
            step = mbx.on_score(current, score, source, policy, now)
        yield from self._apply(step, ctx, previous_wake_ms, now, policy)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self._restore(ctx)
        current = self._load()
        if current is None:
            return
        now = max(int(timestamp), _now_ms())
        previous_wake_ms = current.wake_at_ms  # read first: the transition updates the mailbox in place
        policy = self.registry.policy_for(current.policy_version)
        step = mbx.on_timer(current, policy, now, via_log=self.via_log)
        yield from self._apply(step, ctx, previous_wake_ms, now, policy)

    def _apply(
        self, step: mbx.Step, ctx: Any, previous_wake_ms: int | None, now: int, policy: Policy
    ) -> Iterator[Any]:
        mb = step.mailbox
        if mb is None:
            self.state.clear()
            if previous_wake_ms is not None and previous_wake_ms > now:
                ctx.timer_service().delete_processing_time_timer(previous_wake_ms)
        else:
            self.state.update(mb.to_json())
            if mb.wake_at_ms != previous_wake_ms:
                timers = ctx.timer_service()
                if previous_wake_ms is not None and previous_wake_ms > now:
                    # Deleting costs one call into the JVM; letting it fire costs a state read and a callback.
                    timers.delete_processing_time_timer(previous_wake_ms)
                if mb.wake_at_ms is not None:
                    timers.register_processing_time_timer(mb.wake_at_ms)
        for name in step.counts:
            self.counters.add(name, now)
            if name == names.METRIC_MAILBOXES_OPENED:
                self.counters.add(names.METRIC_MAILBOXES_LIVE, now)
            elif name == names.METRIC_MAILBOXES_CLEARED:
                self.counters.add(names.METRIC_MAILBOXES_LIVE, now, -1)
        for out in step.outputs:
            if out.kind == mbx.DEAD_LETTER:
                self.counters.add(names.METRIC_DEAD_LETTERS, now)
                self.counters.add(names.dead_letter_metric(out.record["reason"]), now)
            elif out.kind == mbx.DECISION:
                model_ids = self._model_ids.get(policy.version) or tuple(m.id for m in policy.models)
                for mid, counts in model_metrics.model_counts(out.record, model_ids).items():
                    for metric, n in counts.items():
                        self.counters.add(names.model_metric(mid, metric), now, n)
            yield Row(out.kind, out.record.get("request_id"), _json(out.record), out.topic)


def _summary(state: dict[str, Any]) -> str:
    """Posteriors for a log line: ``gbt Beta(81, 21) mean 0.794; ...`` after ``updates`` labels."""
    arms = "; ".join(
        f"{m} Beta({a:.4g}, {b:.4g}) mean {a / (a + b):.3f}" for m, (a, b) in sorted(state["arms"].items())
    )
    return f"{state['updates']} labels: {arms or 'no models yet'}"


class RouteFunction(ProcessFunction):
    """The mailbox's tagged rows -> results (main output: key, value, return address) and side outputs."""

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        tag, k, v, topic = value[0], value[1], value[2], value[3]
        if tag == mbx.RESULT:
            yield Row(k, v, topic)
        elif tag == mbx.ARCHIVE:
            yield ARCHIVE, v
        else:
            yield _SIDE_TAGS[tag], Row(k, v)

"""The rendezvous server's stateful logic for one parallel instance, with no pyflink: time is an argument.

``RendezvousLogic`` owns what the Flink adapter (``udfs.flink_fn.MailboxFunction``) used to decide: the
policy registry (which policy a mailbox is decided under, which documents are accepted), the bandit's
posteriors, the metric names and values a step adds up to, the topic each output goes to, and the
timer arithmetic. Each callback takes the keyed state as the adapter reads it and the time, and
returns plain values (``Effects``): the state to write, the timer to delete and the one to set, the
rows to emit and the counters to bump. The adapter only moves them between this object and PyFlink;
``udfs.testing`` drives the same object in memory, for the tests and for users writing policies.

Rows are built by the ``row`` factory the adapter passes in (``pyflink.common.Row``; a plain tuple by
default), and archive lines are ``(archive, line)`` pairs with the ``archive`` marker it passes (its
``OutputTag``): the adapter yields ``Effects.outputs`` as they are, with no copy per record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from udfs import bandit, fastjson, feedback, model_metrics, names
from udfs import mailbox as mbx
from udfs.policy import BanditSpec, Policy
from udfs.policy_registry import Accepted, PolicyRegistry, state_key, state_value
from udfs.policy_registry import dead_letter as policy_dead_letter
from udfs.wire_in import (
    DeadLetter,
    Request,
    Source,
    Tick,
    dead_letter,
    key_mismatch,
    parse_request,
    parse_score_or_tick,
)
from udfs.wire_out import dead_letter_to_dict

# Which topic a Kafka record for the mailbox came from (a constant the Kafka source's query adds).
SOURCE_REQUESTS = 0
SOURCE_SCORES = 1

# Every counter the mailbox reports, registered up front (Flink wants them at open()); per-model
# counters come on top, one set per model a known policy lists (``RendezvousLogic.policies_changed``).
MAILBOX_METRICS: tuple[str, ...] = (
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
)


@dataclass(frozen=True)
class Topics:
    """The topics the mailbox reads (for dead letters and the archive, which point back at a record)
    and writes (every Kafka output but results, which go to the request's return address)."""

    requests: str = names.TOPIC_REQUESTS
    scores: str = names.TOPIC_SCORES  # also where ticks go: the partition of the request's scores
    canary: str = names.TOPIC_CANARY
    decisions: str = names.TOPIC_DECISIONS
    dead_letters: str = names.TOPIC_DEAD_LETTERS
    # Every return address must start with this ("": any topic name). On a secured broker the job may
    # write only the results topics (names.RESULTS_PREFIX): a request naming another topic becomes a dead
    # letter here instead of a write the broker refuses, which would fail the sink and restart the job.
    results_prefix: str = ""

    def of_source(self, source: int) -> str:
        return self.requests if source == SOURCE_REQUESTS else self.scores

    def of_output(self) -> dict[str, str]:
        return {
            mbx.CANARY: self.canary,
            mbx.DECISION: self.decisions,
            mbx.DEAD_LETTER: self.dead_letters,
            mbx.TICK: self.scores,
        }


def _tuple_row(*fields: Any) -> Any:
    return fields


class Effects(NamedTuple):
    """What one keyed callback did, for the adapter to carry out in this order.

    ``state``: the keyed state's new value (None: leave it, or clear it if ``clear``); the processing-time
    timer to delete and the one to set (None: none); ``outputs``: rows (kind, key, value bytes, topic) and
    ``(archive, line)`` pairs, in emission order; ``counts``: one increment per metric name listed.
    """

    state: str | None
    clear: bool
    delete_timer: int | None
    set_timer: int | None
    outputs: list[Any]
    counts: list[str]


class PolicyEffects(NamedTuple):
    """What a policy document (or a restart's restore) did: broadcast state to put (key, value) and
    keys to remove, counters to register and to add to (name, delta), and rows to emit."""

    put: tuple[str, str] | None
    remove: list[str]
    register: tuple[str, ...]
    counts: list[tuple[str, int]]
    outputs: list[Any]


class BatchedCounters:
    """Metric counters incremented in Python and pushed to ``group`` (Flink's metric group, or any object
    with ``counter(name)`` returning something with ``inc(n)``/``dec(n)``) at most once a second.

    ``add`` takes a signed delta: a counter that goes down is flushed with ``dec``. ``mailboxes_live``
    is derived at flush from ``mailboxes_opened`` and ``mailboxes_cleared``, and ``tally`` (per-model
    counters from closed mailboxes) is drained into the counters then. All counters of one operator
    share one instance, so any event flushes them all.
    """

    FLUSH_EVERY_MS = 1000

    def __init__(
        self, group: Any, metric_names: tuple[str, ...], tally: model_metrics.Tally | None = None
    ) -> None:
        self._group = group
        self._counters = {name: group.counter(name) for name in metric_names}
        self._pending = dict.fromkeys(self._counters, 0)
        self._totals = dict.fromkeys(self._counters, 0)
        self._next_flush_ms = 0
        self.tally = model_metrics.Tally() if tally is None else tally
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


class RendezvousLogic:
    """The mailboxes of one parallel instance, the policies it knows and the bandit's posteriors.

    ``on_record`` / ``on_timer`` are the keyed callbacks (one request id); ``on_policy`` / ``on_reward``
    / ``restore`` the broadcast ones. ``read_state`` is the keyed state's read (a zero-argument callable
    returning its text or None), called only when the mailbox is not open in this instance's cache.

    >>> from udfs.policy import parse_policy
    >>> policy = parse_policy({"version": 1, "deadline_ms": 100, "models": [{"id": "a", "role": "incumbent"}]})
    >>> logic = RendezvousLogic(policy, via_log=False)
    >>> req = b'{"request_id": "r1", "return_address": "out", "sent_at_ms": 0, "features": {}}'
    >>> eff = logic.on_record("r1", req, SOURCE_REQUESTS, 0, 0, 1_000, lambda: None)
    >>> [o[0] for o in eff.outputs], eff.set_timer
    (['archive'], 1100)
    """

    def __init__(
        self,
        policy: Policy,
        *,
        feedback: bool = True,
        via_log: bool = True,
        topics: Topics = Topics(),
        reports_policies: bool = True,
        row: Callable[..., Any] = _tuple_row,
        archive: Any = mbx.ARCHIVE,
    ) -> None:
        self.policy = policy
        self.feedback = feedback
        self.via_log = via_log
        self.topics = topics
        self.reports_policies = reports_policies  # every instance sees every document; one reports refusals
        self._row = row
        self._archive = archive
        self._output_topics = topics.of_output()
        self.registry = PolicyRegistry(policy, feedback=feedback)
        self.posteriors: dict[str, Any] | None = None
        self.tally = model_metrics.Tally()
        # Open mailboxes by request id, as last written to state: a record of an open mailbox is applied
        # without reading and parsing its state again. Empty after every (re)start: state is the truth.
        # Tombstones and orphaned mailboxes (both kept for the dedupe retention) are not cached.
        self._open: dict[str, mbx.Mailbox] = {}
        self._model_ids: dict[int, tuple[str, ...]] = {}
        self._metered_models: set[str] = set()
        self._shown_version = 0

    # --- policies and rewards (broadcast) ---------------------------------------------------------------

    def policies_changed(self) -> PolicyEffects:
        """Per-model counters for every model of every known policy (udfs/model_metrics.py); the
        ``policy_version`` counter is kept equal to the version in force (a counter, not a gauge: no
        Python callback on the metric reporter's thread)."""
        new = []
        for p in self.registry.policies:
            ids = self._model_ids.setdefault(p.version, tuple(m.id for m in p.models))
            new += [mid for mid in ids if mid not in self._metered_models]
        register: list[str] = []
        for mid in dict.fromkeys(new):
            self._metered_models.add(mid)
            register += [names.model_metric(mid, n) for n in names.MODEL_METRICS]
        delta = self.registry.current.version - self._shown_version
        self._shown_version = self.registry.current.version
        return PolicyEffects(None, [], tuple(register), [(names.METRIC_POLICY_VERSION, delta)], [])

    def restore(
        self, policy_entries: list[tuple[str, str]], posteriors_text: str | None
    ) -> PolicyEffects | None:
        """After a (re)start: the accepted policies and the posteriors as broadcast state holds them."""
        changed = None
        if policy_entries:
            self.registry = PolicyRegistry.from_state(self.policy, policy_entries, feedback=self.feedback)
            changed = self.policies_changed()
        if posteriors_text is not None:
            try:
                self.posteriors = bandit.loads(posteriors_text)
            except ValueError as e:  # a state this code cannot read: start from the prior, loudly
                print(f"rendezvous mailbox: bandit posteriors not restored: {e}", flush=True)
                return changed
            print(f"rendezvous mailbox: bandit posteriors restored: {_summary(self.posteriors)}", flush=True)
        return changed

    def on_policy(self, data: Any, topic: str, partition: int, offset: int, now: int) -> PolicyEffects:
        """A policy document: accepted (broadcast state to write, counters) or refused (a dead letter)."""
        verdict = self.registry.offer(data)
        if isinstance(verdict, Accepted):
            changed = self.policies_changed()
            return PolicyEffects(
                (state_key(verdict.policy.version), state_value(verdict.policy)),
                [state_key(v) for v in verdict.evicted],
                changed.register,
                [(names.METRIC_POLICIES_ACCEPTED, 1), *changed.counts],
                [],
            )
        counts = [(names.METRIC_POLICIES_REFUSED, 1)]
        if not self.reports_policies:
            return PolicyEffects(None, [], (), counts, [])
        counts += [(names.METRIC_DEAD_LETTERS, 1), (names.dead_letter_metric(verdict.reason), 1)]
        record = policy_dead_letter(verdict, data, Source(topic, partition, offset), now)
        row = self._row(mbx.DEAD_LETTER, None, fastjson.dumps_bytes(record), self.topics.dead_letters)
        return PolicyEffects(None, [], (), counts, [row])

    def on_reward(self, data: Any) -> str | None:
        """One label's rewards into the posteriors, under the prior and discount of the policy in force;
        the posteriors' JSON to keep in broadcast state, or None if the event was ignored."""
        spec = self.registry.current.bandit or BanditSpec()
        try:
            event = json.loads(bytes(data).decode("utf-8"))
            state = self.posteriors or bandit.new_state(prior=spec.prior, discount=spec.discount)
            state = bandit.with_settings(state, spec.prior, spec.discount)
            state = bandit.update_many(state, event["rewards"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # never from the join; never fatal
            print(f"rendezvous mailbox: reward event ignored: {e}", flush=True)
            return None
        self.posteriors = state
        return bandit.dumps(state)

    # --- requests, scores, timers (keyed) ---------------------------------------------------------------

    def _load(self, request_id: str | None, read_state: Callable[[], str | None]) -> mbx.Mailbox | None:
        """The mailbox of the current key: from ``self._open`` (open mailboxes, as this instance last
        wrote them), else from keyed state (after a restart, and for tombstones and orphaned mailboxes,
        which are not cached)."""
        mb = self._open.get(request_id) if request_id is not None else None
        if mb is not None:
            return mb
        text = read_state()
        return None if text is None else mbx.Mailbox.from_json(text)

    def on_record(
        self,
        key: str | None,
        data: Any,
        from_source: int,
        partition: int,
        offset: int,
        now: int,
        read_state: Callable[[], str | None],
    ) -> Effects:
        """One Kafka record of the requests or scores topic, parsed here, once, into a typed request,
        score or tick, and applied to its mailbox; or a dead letter."""
        source = Source(self.topics.of_source(from_source), partition, offset)
        is_request = from_source == SOURCE_REQUESTS
        parsed = parse_request(data, source) if is_request else parse_score_or_tick(data, source)
        if (
            is_request
            and isinstance(parsed, Request)
            and not parsed.return_address.startswith(self.topics.results_prefix)
        ):
            parsed = self._outside_results(parsed, data, source)
        if not isinstance(parsed, DeadLetter):
            # decode only for what keeps the text: the archive (requests), a key mismatch (rare)
            text = bytes(data).decode("utf-8") if is_request or key != parsed.request_id else ""
            mismatch = key_mismatch(key, parsed.request_id, source, text)
            if mismatch is None:
                request_id = parsed.request_id
                current = self._load(request_id, read_state)
                previous_wake_ms = None if current is None else current.wake_at_ms  # before the update
                # An open mailbox keeps the version it recorded; a new one takes the version in force now
                # (a duplicate request is refused by the mailbox whatever its version).
                policy = self.registry.policy_for(None if current is None else current.policy_version)
                if isinstance(parsed, Request):
                    step = mbx.on_request(current, parsed, text, source, policy, now, self.posteriors)
                    if (
                        names.METRIC_REQUESTS in step.counts
                        and step.mailbox
                        and step.mailbox.choice is not None
                    ):
                        step.counts.append(names.METRIC_BANDIT_CHOICES)
                elif isinstance(parsed, Tick):
                    step = mbx.on_tick(current, parsed, policy, now)
                else:
                    step = mbx.on_score(current, parsed, source, policy, now)
                return self._effects(step, previous_wake_ms, now, policy, request_id)
            parsed = mismatch
        row = self._row(
            mbx.DEAD_LETTER,
            parsed.request_id,
            fastjson.dumps_bytes(dead_letter_to_dict(parsed, now)),
            self.topics.dead_letters,
        )
        counts = [names.METRIC_DEAD_LETTERS, names.dead_letter_metric(parsed.reason)]
        return Effects(None, False, None, None, [row], counts)

    def _outside_results(self, request: Request, data: Any, source: Source) -> DeadLetter:
        prefix = self.topics.results_prefix
        detail = f"return_address must start with {prefix!r} (the results topics the job may write)"
        return dead_letter(names.REASON_BAD_RETURN_ADDRESS, detail, source, bytes(data), request.request_id)

    def on_timer(self, now: int, read_state: Callable[[], str | None]) -> Effects | None:
        """The mailbox's timer ran out (``now``: not before the time it was set for); None: no mailbox.
        The request id comes from the stored text: the keyed operator cannot give its key back
        (udfs/flink_compat.py item 3)."""
        text = read_state()
        if text is None:
            return None
        request_id = mbx.request_id_of(text)
        current = self._open.get(request_id) or mbx.Mailbox.from_json(text)
        previous_wake_ms = current.wake_at_ms  # read first: the transition updates the mailbox in place
        policy = self.registry.policy_for(current.policy_version)
        step = mbx.on_timer(current, policy, now, via_log=self.via_log)
        return self._effects(step, previous_wake_ms, now, policy, request_id)

    def _effects(
        self,
        step: mbx.Step,
        previous_wake_ms: int | None,
        now: int,
        policy: Policy,
        request_id: str,
    ) -> Effects:
        mb = step.mailbox
        if mb is None:
            state, clear = None, True
            self._open.pop(request_id, None)
        else:
            state, clear = mb.to_json(), False
            if mb.closed or mb.orphaned:  # kept for the dedupe retention, rarely read: not cached
                self._open.pop(request_id, None)
            else:
                self._open[request_id] = mb
        delete_timer, set_timer = _timer_change(previous_wake_ms, None if mb is None else mb.wake_at_ms, now)
        counts = step.counts
        outputs: list[Any] = []
        row = self._row
        for out in step.outputs:
            kind = out.kind
            if kind == mbx.ARCHIVE:
                outputs.append((self._archive, fastjson.dumps(out.record)))
                continue
            if kind == mbx.DEAD_LETTER:
                counts += (names.METRIC_DEAD_LETTERS, names.dead_letter_metric(out.record["reason"]))
            elif kind == mbx.DECISION:
                model_ids = self._model_ids.get(policy.version) or tuple(m.id for m in policy.models)
                self.tally.add(out.record, model_ids)
            topic = out.topic if kind == mbx.RESULT else self._output_topics[kind]
            outputs.append(row(kind, out.record.get("request_id"), fastjson.dumps_bytes(out.record), topic))
        return Effects(state, clear, delete_timer, set_timer, outputs, counts)


# The label join's kinds of parsed record (``udfs.flink_fn.PARSED_TYPE``'s ``kind``).
KIND_LABEL = "label"
KIND_DECISION = "decision"
JOIN_METRICS: tuple[str, ...] = (
    names.METRIC_LABELS_MATCHED,
    names.METRIC_LABELS_UNMATCHED,
    names.METRIC_DECISIONS_UNLABELLED,
    names.METRIC_FEEDBACK_DUPLICATES,
)


class LabelJoinLogic:
    """The label join (``udfs.feedback``) for one parallel instance: labels joined with decision records by
    request id, one ``feedback.JoinEntry`` per request in keyed state, cleared ``ttl_ms`` after it opened
    or matched. Reward events come out as ``row(event JSON bytes, topic, partition, offset)`` of the
    label (or decision record) that completed the match; the adapter adds its own columns by the factory.

    >>> join = LabelJoinLogic(ttl_ms=1000)
    >>> eff = join.on_record(KIND_LABEL, '{"request_id": "r1", "label": 1, "labelled_at_ms": 5}', "labels", 0, 3, 100, lambda: None)
    >>> eff.outputs, eff.set_timer, eff.counts
    ([], 1100, [])
    """

    def __init__(self, ttl_ms: int = feedback.DEFAULT_TTL_MS, row: Callable[..., Any] = _tuple_row) -> None:
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms: must be positive, got {ttl_ms}")
        self.ttl_ms = ttl_ms
        self._row = row

    def on_record(
        self,
        kind: str,
        text: str,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        now: int,
        read_state: Callable[[], str | None],
    ) -> Effects:
        """A parsed label or decision record (its compact JSON, as ``ParseFunction`` wrote it)."""
        entry = _join_entry(read_state())
        previous_wake = None if entry is None else entry.wake_at_ms
        obj = json.loads(text)
        if kind == KIND_LABEL:
            label = feedback.Label(obj["request_id"], obj["label"], obj["labelled_at_ms"])
            step = feedback.on_label(entry, label, now, self.ttl_ms)
        else:
            step = feedback.on_answers(entry, feedback.Answers.from_dict(obj), now, self.ttl_ms)
        return self._effects(step, previous_wake, now, topic, partition, offset)

    def on_timer(self, now: int, read_state: Callable[[], str | None]) -> Effects | None:
        """The entry's timer ran out (``now``: not before the time it was set for); None: no entry."""
        entry = _join_entry(read_state())
        if entry is None:
            return None
        return self._effects(feedback.on_timer(entry, now), entry.wake_at_ms, now, None, None, None)

    def _effects(
        self,
        step: feedback.JoinStep,
        previous_wake: int | None,
        now: int,
        topic: str | None,
        partition: int | None,
        offset: int | None,
    ) -> Effects:
        entry = step.entry
        state, clear = (None, True) if entry is None else (entry.to_json(), False)
        delete_timer, set_timer = _timer_change(
            previous_wake, None if entry is None else entry.wake_at_ms, now
        )
        row = self._row
        outputs = [row(fastjson.dumps_bytes(event), topic, partition, offset) for event in step.rewards]
        return Effects(state, clear, delete_timer, set_timer, outputs, step.counts)


def _timer_change(previous_wake: int | None, wake: int | None, now: int) -> tuple[int | None, int | None]:
    """(timer to delete, timer to set) when a keyed entry's wake-up time goes from ``previous_wake`` to
    ``wake`` (None: no timer, or the entry is gone). A timer still ahead is deleted: deleting costs one
    call into the JVM, letting it fire a state read and a callback.

    >>> _timer_change(150, 150, 100), _timer_change(150, 300, 100), _timer_change(150, None, 200)
    ((None, None), (150, 300), (None, None))
    """
    if wake == previous_wake:
        return None, None
    return (previous_wake if previous_wake is not None and previous_wake > now else None), wake


def _join_entry(text: str | None) -> feedback.JoinEntry | None:
    return None if text is None else feedback.JoinEntry.from_json(text)


def _summary(state: Mapping[str, Any]) -> str:
    """Posteriors for a log line: ``gbt Beta(81, 21) mean 0.794; ...`` after ``updates`` labels."""
    arms = "; ".join(
        f"{m} Beta({a:.4g}, {b:.4g}) mean {a / (a + b):.3f}" for m, (a, b) in sorted(state["arms"].items())
    )
    return f"{state['updates']} labels: {arms or 'no models yet'}"

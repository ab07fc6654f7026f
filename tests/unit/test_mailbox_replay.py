"""A replay after a crash decides every request the same way under ``--clock log`` (udfs.mailbox ticks).

A small world around one request: one partition of the scores topic (the models' scores and the job's
ticks, in the order Kafka keeps them), the requests topic, and a job that reads the two in an
interleaving hypothesis draws, fires processing-time timers, writes ticks that reach the partition after
a drawn delay, checkpoints (state, timers and read positions), crashes once (back to the last checkpoint;
ticks still in flight are lost, results already written stay: at-least-once) and carries on. Every
result written, before the crash and after it, must be the same answer: also when scores reached the job
before their request and its orphan timeout (a processing-time timer) ran out in one run and not in the
other (``test_an_orphan_expiring_*`` pin two such cases).

The same world with ``--clock local`` (timers decide at once) gives a replay that answers differently:
``test_local_clock_can_change_its_answer_on_replay`` pins one such case, so the property is not vacuous.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit.test_mailbox import make_request, make_score, policies, policy_with
from udfs import names
from udfs.mailbox import DEAD_LETTER, RESULT, TICK, Mailbox, Step, on_request, on_score, on_tick, on_timer
from udfs.policy import Policy, parse_policy
from udfs.wire_in import Score, Source, Tick

ANSWER = ("model_id", "model_version", "output", "reason", "trigger", "policy_version")
# The property's world: at most this many steps, each waiting at most this long; the request is read in
# every run before MAX_STEPS * MAX_WAIT_MS (the drain reads what is left before time moves on).
MAX_STEPS = 60
MAX_WAIT_MS = 40


@dataclass
class Job:
    """What a checkpoint holds: the keyed state, the timers, and the sources' positions."""

    state: str | None = None
    timers: set[int] = field(default_factory=set)
    scores_read: int = 0
    requests_read: int = 0


class World:
    def __init__(self, policy: Policy, via_log: bool, score_plan: list[tuple[int, Score]]) -> None:
        self.policy = policy
        self.via_log = via_log
        req, raw, src = make_request(0)
        self.requests = [(req, raw, src)]
        self.plan = sorted(score_plan, key=lambda p: p[0])  # (time it reaches Kafka, score)
        self.partition: list[Score | Tick] = []
        self.in_flight: list[tuple[int, Tick]] = []  # ticks written, not yet in the partition (FIFO)
        self.now = 0
        self.job = Job()
        self.checkpoint = Job()
        self.results: list[tuple[int, dict[str, Any]]] = []  # (run, result)
        self.dead_letters: list[tuple[int, dict[str, Any]]] = []  # (run, dead letter)
        self.run = 1
        self.tick_delay = lambda: 5

    # --- Kafka ---------------------------------------------------------------------------------------

    def publish(self) -> None:
        """Scores and ticks whose time has come reach the partition, in time order."""
        while True:
            next_score = self.plan[0][0] if self.plan else None
            next_tick = self.in_flight[0][0] if self.in_flight else None
            times = [t for t in (next_score, next_tick) if t is not None and t <= self.now]
            if not times:
                return
            if next_score is not None and next_score == min(times):
                self.partition.append(self.plan.pop(0)[1])
            else:
                self.partition.append(self.in_flight.pop(0)[1])

    # --- the job ---------------------------------------------------------------------------------------

    def load(self) -> Mailbox | None:
        return None if self.job.state is None else Mailbox.from_json(self.job.state)

    def apply(self, step: Step) -> None:
        mb = step.mailbox
        self.job.state = None if mb is None else mb.to_json()
        if mb is not None and mb.wake_at_ms is not None:
            self.job.timers.add(mb.wake_at_ms)
        for out in step.outputs:
            if out.kind == RESULT:
                self.results.append((self.run, out.record))
            elif out.kind == TICK:
                self.in_flight.append((self.now + self.tick_delay(), Tick.from_dict(out.record)))
            elif out.kind == DEAD_LETTER:
                self.dead_letters.append((self.run, out.record))

    def can_read_score(self) -> bool:
        return self.job.scores_read < len(self.partition)

    def can_read_request(self) -> bool:
        return self.job.requests_read < len(self.requests)

    def read_score(self) -> None:
        rec = self.partition[self.job.scores_read]
        self.job.scores_read += 1
        if isinstance(rec, Tick):
            self.apply(on_tick(self.load(), rec, self.policy, self.now))
        else:
            src = Source("scores", 0, self.job.scores_read - 1)
            self.apply(on_score(self.load(), rec, src, self.policy, self.now))

    def read_request(self) -> None:
        req, raw, src = self.requests[self.job.requests_read]
        self.job.requests_read += 1
        self.apply(on_request(self.load(), req, raw, src, self.policy, self.now))

    def advance(self, dt: int) -> None:
        """Time passes: timers fire and records reach Kafka at their own times, in order."""
        target = self.now + dt
        while (t := self.next_event_time()) is not None and t <= target:
            self.now = max(self.now, t)
            while self.job.timers and min(self.job.timers) <= self.now:
                self.job.timers.discard(min(self.job.timers))
                mb = self.load()
                if mb is not None:
                    self.apply(on_timer(mb, self.policy, self.now, via_log=self.via_log))
            self.publish()
        self.now = target

    def take_checkpoint(self) -> None:
        self.checkpoint = copy.deepcopy(self.job)

    def crash(self) -> None:
        """Back to the last checkpoint; ticks not yet in Kafka are gone; what was written stays."""
        self.job = copy.deepcopy(self.checkpoint)
        self.in_flight.clear()
        self.run += 1

    def next_event_time(self) -> int | None:
        times = (
            [t for t, _ in self.plan[:1]] + [t for t, _ in self.in_flight[:1]] + sorted(self.job.timers)[:1]
        )
        return min(times) if times else None

    def drain(self, scores_first: bool = False) -> None:
        """Read everything, let every timer fire, until nothing is left to happen."""
        for _ in range(10_000):
            if self.can_read_score() and (scores_first or not self.can_read_request()):
                self.read_score()
            elif self.can_read_request():
                self.read_request()
            else:
                t = self.next_event_time()
                if t is None:
                    return
                self.advance(max(t - self.now, 1))
        raise AssertionError("the world never settled")


@st.composite
def score_plans(draw: st.DrawFn, policy: Policy) -> list[tuple[int, Score]]:
    ids = [m.id for m in policy.models] + ["ghost"]
    plan = []
    for k in range(draw(st.integers(0, 6))):
        mid = draw(st.sampled_from(ids))
        ok = draw(st.booleans() | st.just(True))
        out = {"label": draw(st.sampled_from(["a", "b"])), "probability": draw(st.sampled_from([0.2, 0.9]))}
        t = draw(st.integers(0, policy.deadline_ms + 40))
        plan.append((t, make_score(mid, "ok" if ok else "error", out if ok else None, t=t, version=f"v{k}")))
    return plan


def answers(world: World) -> list[tuple[int, tuple[Any, ...]]]:
    return [(run, tuple(r[k] for k in ANSWER)) for run, r in world.results]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_replay_after_a_crash_gives_the_same_answer(data: st.DataObject) -> None:
    # A dedupe retention longer than the world, so that an orphaned mailbox still holds its scores when
    # the request is read, in every run: a request read more than orphan_timeout_ms + dedupe_retention_ms
    # after its first score is a new one, answered without them (the documented limit, as a duplicate
    # after the retention is answered again). Orphan timeouts short enough to run out in many worlds,
    # before the request is read or after a restore.
    policy = data.draw(policies(min_retention_ms=MAX_STEPS * MAX_WAIT_MS))
    timeout = data.draw(st.integers(1, 100) | st.integers(101, 10_000), label="orphan timeout")
    policy = parse_policy(policy.to_dict() | {"orphan_timeout_ms": timeout})
    world = World(policy, via_log=True, score_plan=data.draw(score_plans(policy)))
    world.tick_delay = lambda: data.draw(st.integers(0, 30), label="tick delay")
    steps = data.draw(st.integers(0, MAX_STEPS), label="steps")
    crash_at = data.draw(st.integers(0, steps), label="crash at step")
    for step in range(steps):
        if step == crash_at:
            world.crash()
        actions = ["wait", "wait", "checkpoint"]
        if world.can_read_score():
            actions += ["score", "score"]
        if world.can_read_request():
            actions.append("request")
        action = data.draw(st.sampled_from(actions))
        if action == "wait":
            world.advance(data.draw(st.integers(1, MAX_WAIT_MS), label="ms"))
        elif action == "checkpoint":
            world.take_checkpoint()
        elif action == "score":
            world.read_score()
        else:
            world.read_request()
    world.drain(scores_first=data.draw(st.booleans(), label="drain scores first"))

    got = answers(world)
    assert got, "the request was never answered"
    if any(d["reason"] == names.REASON_ORPHAN_SCORE for _, d in world.dead_letters):
        event("an orphan timeout ran out")  # and the answer is the same all the same
    first = got[0][1]
    assert all(a == first for _, a in got), got
    assert len(got) <= 2  # once, or once more by a replay of what the checkpoint did not hold
    assert world.job.state is None  # decided, closed, tombstone expired: nothing left behind
    assert world.in_flight == [] and world.job.timers == set()


def _replay_case(via_log: bool, scores_first: bool = False) -> World:
    """incumbent gbt waits 50 ms, then logreg. logreg scores at once; gbt at 70 ms, after its wait ran
    out. The job decides logreg at 50 ms and crashes before any checkpoint held the decision; the
    replay reads everything in Kafka in one burst."""
    policy = policy_with(
        deadline_ms=100,
        models=[{"id": "gbt", "role": "incumbent", "wait_ms": 50}, {"id": "logreg", "role": "challenger"}],
    )
    plan = [(1, make_score("logreg", t=1)), (70, make_score("gbt", t=70))]
    world = World(policy, via_log, plan)
    world.tick_delay = lambda: 2
    world.take_checkpoint()  # before anything was read
    world.read_request()
    world.advance(1)
    world.read_score()  # logreg
    world.advance(54)  # the wait runs out at 50 (log: the tick reaches Kafka at 52)
    while world.can_read_score():
        world.read_score()
    assert [r["model_id"] for _, r in world.results] == ["logreg"]
    world.advance(20)  # gbt's score at 70, after the decision
    while world.can_read_score():
        world.read_score()
    world.crash()
    world.advance(5_000)  # an outage; the restored timer fires, everything is in Kafka now
    world.drain(scores_first)
    return world


def test_local_clock_can_change_its_answer_on_replay() -> None:
    got = answers(_replay_case(via_log=False))
    assert [(run, a[0], a[3]) for run, a in got] == [(1, "logreg", "fallback"), (2, "gbt", "preferred")]


@pytest.mark.parametrize("scores_first", [False, True], ids=["request-first", "scores-first"])
def test_log_clock_replays_the_first_answer(scores_first: bool) -> None:
    """Also when the replay reads the whole partition, tick included, before the request."""
    got = answers(_replay_case(via_log=True, scores_first=scores_first))
    assert [(run, a[0], a[3], a[4]) for run, a in got] == [
        (1, "logreg", "fallback", "wait_timer"),
        (2, "logreg", "fallback", "wait_timer"),
    ]


def test_an_orphan_expiring_after_a_restore_does_not_change_the_answer() -> None:
    """Hypothesis's counterexample of 2026-12-05, once a known bug: m0's ok score reaches the job before
    its request and is in the checkpoint as an orphan; the request is read and answered with it; the job
    crashes, and after the restore the orphan timeout (31 ms) runs out before the request is read again.
    The timeout now only reports the score (a dead letter) and the mailbox keeps it for the dedupe
    retention, so the request read again is answered with it, as the first time."""
    policy = policy_with(deadline_ms=1, orphan_timeout_ms=31, models=[{"id": "m0", "role": "challenger"}])
    plan = [
        (0, make_score("m0", "ok", {"label": "a", "probability": 0.2}, t=0, version="v0")),
        (0, make_score("m0", "error", None, t=0, version="v1")),
    ]
    world = World(policy, via_log=True, score_plan=plan)
    world.advance(5)
    world.read_score()  # the ok score, before its request: an orphan mailbox
    world.advance(3)
    world.take_checkpoint()
    world.read_request()  # answered with m0's ok score
    world.advance(2)
    world.crash()
    world.advance(26)  # past the orphan timeout, the request not read again yet
    assert [(run, d["reason"], d["offset"]) for run, d in world.dead_letters] == [(2, "orphan_score", 0)]
    world.drain()
    got = answers(world)
    assert [(run, a[0], a[2]) for run, a in got] == [
        (1, "m0", {"label": "a", "probability": 0.2}),
        (2, "m0", {"label": "a", "probability": 0.2}),
    ]


def test_an_orphan_expiring_before_its_request_does_not_change_the_answer() -> None:
    """The other way round: the first run's orphan timeout runs out before the request is read (the
    score becomes a dead letter but stays held), and the replay reads the request before its restored
    timer fires. Both answer with the score."""
    policy = policy_with(deadline_ms=1, orphan_timeout_ms=31, models=[{"id": "m0", "role": "challenger"}])
    world = World(policy, via_log=True, score_plan=[(0, make_score("m0", "ok", {"label": "a"}, t=0))])
    world.advance(5)
    world.read_score()  # before its request: an orphan mailbox, its timeout at 36
    world.take_checkpoint()
    world.advance(40)  # the orphan timeout runs out: a dead letter, the score still held
    assert [(run, d["reason"]) for run, d in world.dead_letters] == [(1, "orphan_score")]
    world.read_request()  # answered with the held score
    world.crash()
    world.read_request()  # the replay reads the request before the restored timer fires
    world.drain()
    got = answers(world)
    assert [(run, a[0], a[2]) for run, a in got] == [(1, "m0", {"label": "a"}), (2, "m0", {"label": "a"})]
    assert world.job.state is None

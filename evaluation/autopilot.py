"""The closed loop: the promotion gate's next policy applied live, without a human step, under guards.

``rendezvous eval autopilot`` watches the job's decisions, the labels and the canary records, runs the
promotion gate (``evaluation.gate``) every ``every_ms`` over a recent window and, when the gate demotes
or promotes, publishes the next policy to the live policies topic, which the job applies to requests
that arrive from then on (docs/operations.md, "Live policy changes"). The gate alone only writes a
file: a model that went bad kept answering until someone deployed it.

What the gate sees each round:

- **labels**: every model's labelled answers among the decisions of the last ``window_ms`` (quality,
  AUC against ``auc_floor``, challenger against incumbent);
- **canary agreement**: per model, the share of its answers that agree with the frozen canary's on the
  same requests, over the last ``canary_window_ms`` of the decision log. Below ``agreement_min`` (on at
  least ``agreement_min_count`` pairs) it is a ``canary_agreement`` alert, which the gate treats as a
  reason to demote **only when** ``demote_on_canary`` is set: it needs no labels, so it is fast, but it
  trusts the canary (docs/evaluation.md says what it can and cannot catch).

Guards on a change, in this order; each refusal is audited like a change:

1. ``min_interval_ms``: at most one change per interval (counted from the newest version on the
   policies topic, whoever published it);
2. a **replay** (``evaluation.replay``) of the candidate over the decisions the gate's evidence covers
   (the label window; the canary window when a demotion rests on a canary alert alone, since labels of
   the traffic before it describe the model before it changed): refused if the candidate leaves more
   requests without an answer (beyond ``replay_max_no_answer_increase``) or, with at least
   ``replay_min_labelled`` labelled requests, has an AUC below what ran by more than
   ``replay_max_auc_loss``.

Every change, refusal and failure to publish is an ``AuditRecord`` (``schemas/audit.schema.json``):
who, why (the gate's and the guard's reasons), the evidence (window, counts, AUC and agreement per
model, the replay's figures), the old and the new version. ``decide`` is pure (time is an argument);
``Autopilot`` keeps what the loop must remember (the policy in force, the last change); ``run_autopilot``
injects the clock, the sleep and the I/O like ``evaluation.watch.run_watch``. The Kafka side is
``evaluation/autopilot_kafka.py``.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TextIO

from evaluation.drift import Alert, decision_pairs
from evaluation.gate import DEMOTE, KEEP, GateConfig, GateResult, ModelVerdict, gate
from evaluation.labels import OFFICIAL, Label, join_labels
from evaluation.replay import replay
from evaluation.watch import run_periodic
from udfs.policy import Policy

CHANGE, REFUSE = "change", "refuse"  # and gate.KEEP: what one round decided
APPLIED, DRY_RUN, REFUSED, FAILED = "applied", "dry_run", "refused", "failed"  # audit outcomes
OUTCOMES = (APPLIED, DRY_RUN, REFUSED, FAILED)
GUARD_MIN_INTERVAL, GUARD_REPLAY = "min_interval", "replay"
GUARDS = (GUARD_MIN_INTERVAL, GUARD_REPLAY)
# The gate's min_labelled when the config does not say: a watcher tests every round, and with ~5 %
# positives 500 labelled answers hold ~25, on which a healthy model's AUC strays by +-0.07: one run of
# make scenario-degrade demoted the healthy challenger (AUC 0.56 on 336 labels) that way.
GATE_MIN_LABELLED = 2000


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutopilotConfig:
    """How often, over which windows, and the guards; build it with ``from_dict`` so every value is checked."""

    every_ms: int = 10_000
    window_ms: int = 600_000  # the decisions (and their labels) the gate and the replay look at
    canary_window_ms: int = 60_000  # canary agreement per model: at most window_ms
    min_interval_ms: int = 600_000  # at most one change per this (0: no limit)
    demote_on_canary: bool = False  # a canary-agreement alert demotes, labels or not
    agreement_min: float = 0.9
    agreement_min_count: int = 200
    replay_min_labelled: int = 1000  # labelled requests the replay needs before it compares quality
    replay_max_auc_loss: float = 0.0  # AUC the candidate may lose against what ran
    replay_max_no_answer_increase: float = 0.01  # share of requests it may leave without an answer
    gate: GateConfig = field(default_factory=lambda: GateConfig(min_labelled=GATE_MIN_LABELLED))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AutopilotConfig:  # noqa: C901 - a check per field
        """Validate plain data (YAML); a bad value raises ValueError naming the field."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("autopilot config: must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(known))})")
        d = {f.name: getattr(cls(), f.name) for f in fields(cls)} | dict(data)
        for name, lo in (("every_ms", 1), ("window_ms", 1), ("canary_window_ms", 1), ("min_interval_ms", 0),
                         ("agreement_min_count", 1), ("replay_min_labelled", 1)):  # fmt: skip
            v = d[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
        for name in ("agreement_min", "replay_max_auc_loss", "replay_max_no_answer_increase"):
            v = d[name]
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be a number in [0, 1], got {v!r}")
            d[name] = float(v)
        if not isinstance(d["demote_on_canary"], bool):
            raise ValueError(f"demote_on_canary: must be true or false, got {d['demote_on_canary']!r}")
        if d["canary_window_ms"] > d["window_ms"]:
            raise ValueError(
                f"canary_window_ms: must be at most window_ms ({d['window_ms']}), got {d['canary_window_ms']}"
            )
        if not isinstance(d["gate"], GateConfig):
            if not isinstance(d["gate"], Mapping):
                raise ValueError(f"gate: must be a mapping, got {d['gate']!r}")
            try:
                d["gate"] = GateConfig.from_dict({"min_labelled": GATE_MIN_LABELLED, **d["gate"]})
            except ValueError as e:
                raise ValueError(f"gate.{e}") from None
        return cls(**d)


# --- the records of a window -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What the watcher has read: decision records (``schemas/decision.schema.json``), labels and canary
    records (``schemas/canary.schema.json``). ``decide`` picks the ones inside its windows by time."""

    decisions: Sequence[Mapping[str, Any]] = ()
    labels: Sequence[Label] = ()
    canary: Sequence[Mapping[str, Any]] = ()


class RecordBuffer:
    """The records read so far, kept while they can still fall inside a window (``keep_ms``).

    Decisions and canary records go by ``decided_at_ms``; a label is kept ``2 * keep_ms`` after it was
    labelled (it may come before or after its decision), one per request, the latest winning."""

    def __init__(self, keep_ms: int) -> None:
        self.keep_ms = keep_ms
        self._decisions: deque[Mapping[str, Any]] = deque()
        self._canary: deque[Mapping[str, Any]] = deque()
        self._labels: dict[str, Label] = {}

    def add_decision(self, record: Mapping[str, Any]) -> None:
        if record.get("result") is not None:  # an orphan's record has no answer to judge
            self._decisions.append(record)

    def add_canary(self, record: Mapping[str, Any]) -> None:
        self._canary.append(record)

    def add_label(self, label: Label) -> None:
        old = self._labels.get(label.request_id)
        if old is None or label.labelled_at_ms >= old.labelled_at_ms:
            self._labels[label.request_id] = label

    def prune(self, now_ms: int) -> None:
        """Drop what no window reaching back ``keep_ms`` from ``now_ms`` can hold (records arrive
        roughly in time order; a straggler behind the head is dropped with its neighbours later)."""
        start = now_ms - self.keep_ms
        for q in (self._decisions, self._canary):
            while q and int(q[0]["decided_at_ms"]) < start:
                q.popleft()
        old = [rid for rid, lab in self._labels.items() if lab.labelled_at_ms < now_ms - 2 * self.keep_ms]
        for rid in old:
            del self._labels[rid]

    def window(self) -> Window:
        return Window(tuple(self._decisions), tuple(self._labels.values()), tuple(self._canary))

    def __len__(self) -> int:
        return len(self._decisions) + len(self._canary) + len(self._labels)


# --- evidence and the audit record (schemas/audit.schema.json) -------------------------------------------


@dataclass(frozen=True)
class ModelEvidence:
    model_id: str
    role: str
    new_role: str
    labelled: int  # labelled answers in the window
    auc: float | None
    pairs: int  # answers compared with the canary's in the canary window
    agreement: float | None


@dataclass(frozen=True)
class ReplayEvidence:
    start_ms: int  # decisions received from here to the end of the window were replayed
    requests: int
    labelled: int
    judged: bool  # enough labelled requests (both classes) to compare quality
    actual_auc: float | None
    candidate_auc: float | None
    actual_no_answers: int
    candidate_no_answers: int
    changed: int  # requests the candidate would have answered with another model


@dataclass(frozen=True)
class Evidence:
    window_start_ms: int
    window_end_ms: int
    canary_window_start_ms: int
    decisions: int  # decided in the window
    labelled: int  # of those, with a label
    canary_records: int  # canary records in the canary window
    official_agreement: float | None  # what callers got vs the canary, from the canary records
    models: tuple[ModelEvidence, ...]
    alerts: tuple[str, ...]  # canary-agreement alerts (their messages)
    replay: ReplayEvidence | None


@dataclass(frozen=True)
class AuditRecord:
    """One policy change the watcher applied, would apply (dry run), was refused, or failed to publish."""

    at_ms: int
    watcher: str
    outcome: str  # applied | dry_run | refused | failed
    action: str  # the gate's: demote | promote; or retrain (evaluation/retrain.py: a new shadow)
    guard: str | None  # the guard that refused: min_interval | replay
    old_version: int
    new_version: int
    reasons: tuple[str, ...]
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, in the schema's field order (tuples as lists, NaN as null)."""
        out: dict[str, Any] = _plain(asdict(self))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def audit_json(record: AuditRecord) -> bytes:
    return json.dumps(record.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")


# --- one round: the decision step (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one round decided: keep, change to ``candidate``, or refuse it (``guard`` says which)."""

    kind: str  # keep | change | refuse
    guard: str | None
    gate: GateResult
    candidate: Policy | None  # the gate's next policy; None on keep
    reasons: tuple[str, ...]
    evidence: Evidence

    def summary(self) -> str:
        e = self.evidence
        agree = ", ".join(
            f"{m.model_id} {m.agreement:.2f} ({m.pairs})" for m in e.models if m.agreement is not None
        )
        head = f"{e.decisions} decisions, {e.labelled} labelled; canary agreement: {agree or 'n/a'}"
        if self.kind == KEEP:
            return f"{head}; keep"
        assert self.candidate is not None
        moves = ", ".join(f"{m.model_id} {m.role} -> {m.new_role}" for m in e.models if m.role != m.new_role)
        what = f"{self.gate.action} ({moves}) -> v{self.candidate.version}"
        return f"{head}; {what}" + (f": refused by {self.guard}" if self.kind == REFUSE else "")


def _nan_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _agreement(decided: Sequence[Mapping[str, Any]], canary_id: str) -> dict[str, tuple[int, float | None]]:
    """model id -> (answers compared with the canary's, share that agree) from the decision log."""
    pairs = decision_pairs(decided, canary_id)
    out: dict[str, tuple[int, float | None]] = {}
    for mid, g in pairs.groupby("model_id", sort=True):
        agree = g["agree"].dropna()
        out[str(mid)] = (len(agree), float(agree.mean()) if len(agree) else None)
    return out


def _agreement_alerts(
    agreement: Mapping[str, tuple[int, float | None]],
    policy: Policy,
    cfg: AutopilotConfig,
    window: tuple[int, int],
    now_ms: int,
) -> list[Alert]:
    alerts = []
    for m in policy.models:
        n, value = agreement.get(m.id, (0, None))
        if m.role == "canary" or value is None or n < cfg.agreement_min_count or value >= cfg.agreement_min:
            continue
        message = (
            f"{m.id}: agreement {value:.4g} below {cfg.agreement_min:g} "
            f"(answers agreeing with the canary, n={n} in [{window[0]}, {window[1]}))"
        )
        alerts.append(
            Alert("canary_agreement", m.id, "agreement", value, cfg.agreement_min, "below", n, *window, now_ms,
                  message)
        )  # fmt: skip
    return alerts


def _official_agreement(
    canary: Iterable[Mapping[str, Any]], start: int, end: int
) -> tuple[int, float | None]:
    inside = [r for r in canary if start <= int(r["decided_at_ms"]) < end]
    agree = [bool(r["agree"]) for r in inside if r.get("agree") is not None]
    return len(inside), (sum(agree) / len(agree) if agree else None)


def _replay_evidence(
    decided: Sequence[Mapping[str, Any]],
    start_ms: int,
    candidate: Policy,
    running: Policy,
    labels: Sequence[Label],
    cfg: AutopilotConfig,
) -> ReplayEvidence:
    since = [d for d in decided if int(d["received_at_ms"]) >= start_ms]
    report = replay(since, candidate, labels=labels, actual_policy=running)
    s = {row["policy"]: row for row in report.summary.to_dict("records")}
    actual, cand = s["actual"], s["candidate"]
    a_auc, c_auc = _nan_none(actual["auc"]), _nan_none(cand["auc"])
    labelled = int(actual["labelled"])
    return ReplayEvidence(
        start_ms=start_ms,
        requests=int(actual["requests"]),
        labelled=labelled,
        judged=labelled >= cfg.replay_min_labelled and a_auc is not None and c_auc is not None,
        actual_auc=a_auc,
        candidate_auc=c_auc,
        actual_no_answers=int(actual["no_answers"]),
        candidate_no_answers=int(cand["no_answers"]),
        changed=report.to_dict()["changed"],
    )


def _replay_verdict(r: ReplayEvidence, cfg: AutopilotConfig) -> tuple[bool, str]:
    """(worse, the reason line) for the replay guard."""
    extra = (r.candidate_no_answers - r.actual_no_answers) / r.requests if r.requests else 0.0
    answers = f"no answer for {r.candidate_no_answers} of {r.requests} requests against {r.actual_no_answers}"
    if extra > cfg.replay_max_no_answer_increase:
        return True, (
            f"replay: the candidate would leave {answers} that ran: more than "
            f"replay_max_no_answer_increase {cfg.replay_max_no_answer_increase:g}"
        )
    if not r.judged:
        return False, (
            f"replay: {answers} that ran; quality not compared: {r.labelled} labelled requests since "
            f"{r.start_ms} (replay_min_labelled {cfg.replay_min_labelled}; labels come later)"
        )
    assert r.actual_auc is not None and r.candidate_auc is not None
    loss = r.actual_auc - r.candidate_auc
    figures = (
        f"AUC {r.candidate_auc:.4f} against {r.actual_auc:.4f} that ran on {r.labelled} labelled requests"
    )
    if loss > cfg.replay_max_auc_loss:
        return True, f"replay: {figures}, a loss over replay_max_auc_loss {cfg.replay_max_auc_loss:g}"
    return False, f"replay: {figures}; {answers} that ran"


def _rests_on_canary_alone(verdicts: Sequence[ModelVerdict], alerted: set[str], cfg: GateConfig) -> bool:
    """A demotion named by a canary alert whose model's labels do not show it below the floor."""
    for v in verdicts:
        if v.verdict != DEMOTE or v.new_role != "shadow" or v.model_id not in alerted:
            continue
        by_labels = v.labelled >= cfg.min_labelled and v.auc is not None and v.auc < cfg.auc_floor
        if not by_labels:
            return True
    return False


def decide(
    now_ms: int,
    window: Window,
    policy: Policy,
    last_change_ms: int | None,
    config: AutopilotConfig,
) -> Decision:
    """One round: the gate over the window's evidence, then the guards on whatever it proposes."""
    cfg = config
    start, c_start = now_ms - cfg.window_ms, now_ms - cfg.canary_window_ms
    decided = [d for d in window.decisions if start <= int(d["decided_at_ms"]) < now_ms]
    rows = join_labels(decided, window.labels)
    agreement: dict[str, tuple[int, float | None]] = {}
    if policy.canary is not None:
        recent = [d for d in decided if int(d["decided_at_ms"]) >= c_start]
        agreement = _agreement(recent, policy.canary.id)
    alerts = _agreement_alerts(agreement, policy, cfg, (c_start, now_ms), now_ms)
    result = gate(rows, policy, cfg.gate, alerts if cfg.demote_on_canary else ())
    n_canary, official = _official_agreement(window.canary, c_start, now_ms)

    def evidence(replayed: ReplayEvidence | None) -> Evidence:
        return Evidence(
            window_start_ms=start,
            window_end_ms=now_ms,
            canary_window_start_ms=c_start,
            decisions=len(decided),
            labelled=int((rows["model_id"] == OFFICIAL).sum()) if len(rows) else 0,
            canary_records=n_canary,
            official_agreement=official,
            models=tuple(
                ModelEvidence(
                    v.model_id,
                    v.role,
                    v.new_role,
                    v.labelled,
                    _nan_none(v.auc),
                    *agreement.get(v.model_id, (0, None)),
                )
                for v in result.verdicts
            ),
            alerts=tuple(a.message for a in alerts),
            replay=replayed,
        )

    reasons = tuple(result.reasons)
    if result.action == KEEP:
        return Decision(KEEP, None, result, None, reasons, evidence(None))
    candidate = result.policy
    if last_change_ms is not None and now_ms - last_change_ms < cfg.min_interval_ms:
        why = (
            f"min_interval: the last change was {(now_ms - last_change_ms) / 1000:.1f} s ago, under "
            f"min_interval_ms {cfg.min_interval_ms}"
        )
        return Decision(REFUSE, GUARD_MIN_INTERVAL, result, candidate, (*reasons, why), evidence(None))
    alerted = {a.subject for a in alerts} if cfg.demote_on_canary else set()
    replay_start = c_start if _rests_on_canary_alone(result.verdicts, alerted, cfg.gate) else start
    replayed = _replay_evidence(decided, replay_start, candidate, policy, window.labels, cfg)
    worse, why = _replay_verdict(replayed, cfg)
    kind, guard = (REFUSE, GUARD_REPLAY) if worse else (CHANGE, None)
    return Decision(kind, guard, result, candidate, (*reasons, why), evidence(replayed))


# --- what the loop remembers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    decision: Decision
    audit: AuditRecord | None  # a refusal or a dry run not audited yet in the same terms
    publish: Policy | None  # the change to publish now (never in a dry run)


class Autopilot:
    """The policy in force and the last change, across rounds; audits each refusal once per candidate."""

    def __init__(
        self,
        policy: Policy,
        config: AutopilotConfig,
        watcher: str,
        *,
        dry_run: bool = False,
        last_change_ms: int | None = None,
    ) -> None:
        self.policy = policy
        self.config = config
        self.watcher = watcher
        self.dry_run = dry_run
        self.last_change_ms = last_change_ms
        self._last_audited: tuple[Any, ...] | None = None

    def observe(self, policy: Policy, published_at_ms: int) -> bool:
        """A version on the policies topic (someone else's, or our own read back). Higher wins, as in the
        job; its publication counts as the last change. True if it took over."""
        if policy.version <= self.policy.version:
            return False
        self.policy = policy
        self.last_change_ms = max(self.last_change_ms or 0, published_at_ms)
        return True

    def step(self, now_ms: int, window: Window) -> Step:
        d = decide(now_ms, window, self.policy, self.last_change_ms, self.config)
        if d.kind == KEEP:
            return Step(d, None, None)
        if d.kind == CHANGE and not self.dry_run:
            return Step(d, None, d.candidate)
        outcome = DRY_RUN if d.kind == CHANGE else REFUSED
        assert d.candidate is not None
        key = (outcome, d.guard, self.policy.version, tuple((m.id, m.role) for m in d.candidate.models))
        if key == self._last_audited:
            return Step(d, None, None)
        self._last_audited = key
        return Step(d, self._audit(now_ms, d, outcome), None)

    def applied(self, step: Step, now_ms: int) -> AuditRecord:
        """The change in ``step`` was published: it is now the policy in force."""
        assert step.publish is not None
        record = self._audit(now_ms, step.decision, APPLIED)
        self.policy, self.last_change_ms, self._last_audited = step.publish, now_ms, None
        return record

    def failed(self, step: Step, now_ms: int, error: str) -> AuditRecord:
        """Publishing the change in ``step`` failed: nothing changed; the next round tries again."""
        d = step.decision
        return self._audit(now_ms, d, FAILED, (*d.reasons, f"publish failed: {error}"[:1024]))

    def _audit(
        self, now_ms: int, d: Decision, outcome: str, reasons: tuple[str, ...] | None = None
    ) -> AuditRecord:
        assert d.candidate is not None
        return AuditRecord(
            at_ms=now_ms,
            watcher=self.watcher,
            outcome=outcome,
            action=d.gate.action,
            guard=d.guard,
            old_version=self.policy.version,
            new_version=d.candidate.version,
            reasons=tuple(r[:1024] for r in (d.reasons if reasons is None else reasons)),
            evidence=d.evidence,
        )


# --- the loop --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the I/O read for one round: the records so far and policy versions newly seen on the topic
    (each with its publication time)."""

    window: Window
    policies: Sequence[tuple[Policy, int]] = ()


def run_autopilot(
    pilot: Autopilot,
    read: Callable[[int], Snapshot],
    *,
    publish_policy: Callable[[Policy], None],
    publish_audit: Callable[[AuditRecord], None],
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    sleep_s: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
    iterations: int | None = None,
    out: TextIO | None = None,
) -> int:
    """A round every ``pilot.config.every_ms`` (evaluation/watch.py's ``run_periodic``: on the clock, a
    slow round skips the missed ticks, a failing round is reported and the next one runs) until
    ``stop``, ``iterations`` rounds, or Ctrl-C. Prints a line per round and every audit record (``AUDIT``
    and its JSON). Returns the rounds run."""
    stream = out or sys.stdout
    changes = 0

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    def audit(record: AuditRecord) -> None:
        say(f"  AUDIT {audit_json(record).decode()}")
        publish_audit(record)

    def one(now: int, number: int, stamp: str) -> None:
        nonlocal changes
        snap = read(now)
        for policy, at_ms in snap.policies:
            if pilot.observe(policy, at_ms):
                say(f"[autopilot {stamp}] policy v{policy.version} is in force (published at {at_ms})")
        step = pilot.step(now, snap.window)
        say(f"[autopilot {stamp}] round {number}: v{pilot.policy.version}: {step.decision.summary()}")
        if step.publish is not None:
            try:
                publish_policy(step.publish)
            except Exception as e:  # the broker away, a newer version published meanwhile
                audit(pilot.failed(step, now, f"{type(e).__name__}: {e}"))
            else:
                changes += 1
                audit(pilot.applied(step, now))
                say(f"[autopilot {stamp}] published policy v{pilot.policy.version}")
        elif step.audit is not None:
            audit(step.audit)

    rounds = run_periodic(one, pilot.config.every_ms, name="autopilot", out=stream, clock_ms=clock_ms,
                          sleep_s=sleep_s, stop=stop, iterations=iterations)  # fmt: skip
    say(f"autopilot stopped after {rounds} round(s), {changes} change(s); policy v{pilot.policy.version}")
    return rounds

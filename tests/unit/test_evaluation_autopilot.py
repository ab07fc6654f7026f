"""evaluation.autopilot: the decision step, its guards and the loop, on generated decision logs (no broker)."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from evaluation import autopilot_kafka
from evaluation.autopilot import (
    APPLIED,
    CHANGE,
    DRY_RUN,
    FAILED,
    GUARD_MIN_INTERVAL,
    GUARD_REPLAY,
    REFUSE,
    REFUSED,
    AuditRecord,
    Autopilot,
    AutopilotConfig,
    RecordBuffer,
    Snapshot,
    Window,
    decide,
    run_autopilot,
)
from evaluation.cli import main
from evaluation.gate import KEEP, GateConfig
from udfs.feedback import Label
from udfs.policy import Policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
AUDIT_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "audit.schema.json").read_text()))
T0 = 1_700_000_000_000
STEP_MS = 50  # one request every 50 ms: 20/s
POLICY = parse_policy(
    {
        "version": 1,
        "deadline_ms": 1500,
        "models": [
            {"id": "gbt", "role": "incumbent", "wait_ms": 1000},
            {"id": "logreg", "role": "challenger", "wait_ms": 1300},
            {"id": "tree", "role": "backstop"},
            {"id": "base", "role": "canary"},
        ],
        "late_window_ms": 500,
    }
)
CONFIG = AutopilotConfig.from_dict(
    {
        "every_ms": 1000,
        "window_ms": 30_000,
        "canary_window_ms": 5_000,
        "min_interval_ms": 60_000,
        "agreement_min_count": 50,
        "replay_min_labelled": 100,
        "gate": {"min_labelled": 100, "auc_floor": 0.6},
    }
)
# Per model: (separation, shift, noise) of its logit around the truth. Each agrees with the canary on
# ~97 % of the labels and ranks well; a degraded model answers uniform noise (agreement ~50 %).
MODELS = {"gbt": (2.5, 0.0, 0.5), "logreg": (1.5, 0.0, 0.6), "tree": (1.2, 0.0, 0.5), "base": (1.5, 0.0, 0.8)}


def traffic(
    n: int,
    end_ms: int,
    *,
    bad_from_ms: int | None = None,
    label_delay_ms: int = 5_000,
    models: Mapping[str, tuple[float, float, float]] = MODELS,
    silent: tuple[str, ...] = (),
    seed: int = 0,
    policy: Policy = POLICY,
) -> tuple[list[dict[str, Any]], list[Label]]:
    """n decision records received every STEP_MS up to end_ms (each closed 2 s after it arrived, as the
    scenario's policy does), with labels ``label_delay_ms`` after the request; gbt answers noise from
    ``bad_from_ms``; models in ``silent`` never answer."""
    rng = np.random.default_rng(seed)
    decisions, labels = [], []
    for i in range(n):
        received = end_ms - (n - i) * STEP_MS
        rid = f"r{seed}-{i}"
        y = int(rng.random() < 0.2)
        scores = []
        for m, (sep, shift, noise) in models.items():
            p = float(1 / (1 + math.exp(-(sep * (2 * y - 1) + shift + rng.normal(0, noise)))))
            if m == "gbt" and bad_from_ms is not None and received >= bad_from_ms:
                p = float(rng.random())
            if m in silent:
                continue
            scores.append(
                {"model_id": m, "model_version": f"{m}-1", "role": policy.role_of(m), "status": "ok",
                 "output": {"label": int(p >= 0.5), "probability": round(p, 6)}, "error": None,
                 "scored_at_ms": received + 2, "latency_ms": 1.0, "arrived_at_ms": received + 2,
                 "late": False, "duplicate": False}
            )  # fmt: skip
        official = next(
            (s for m in policy.official for s in scores if s["model_id"] == m.id and m.id not in silent), None
        )
        decided = received + 2 if official is not None else received + policy.deadline_ms
        result = {
            "request_id": rid, "model_id": official and official["model_id"],
            "model_version": official and official["model_version"],
            "output": official["output"] if official else None,
            "reason": "preferred" if official else "no_answer", "trigger": "score" if official else "deadline",
            "policy_version": policy.version, "sent_at_ms": received, "received_at_ms": received,
            "decided_at_ms": decided, "latency_ms": decided - received,
            "answered": [s["model_id"] for s in scores], "failed": [],
        }  # fmt: skip
        decisions.append(
            {"request_id": rid, "policy_version": policy.version, "received_at_ms": received,
             "decided_at_ms": decided, "closed_at_ms": received + 2000, "result": result, "scores": scores}
        )  # fmt: skip
        if received + label_delay_ms < end_ms:
            labels.append(Label(rid, y, received + label_delay_ms))
    return decisions, labels


def canary_records(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in decisions:
        res = d["result"]
        base = next(s for s in d["scores"] if s["model_id"] == "base")
        agree = None if res["output"] is None else res["output"]["label"] == base["output"]["label"]
        out.append({"request_id": d["request_id"], "decided_at_ms": d["decided_at_ms"], "agree": agree})
    return out


def window_of(decisions: list[dict[str, Any]], labels: list[Label], now: int) -> Window:
    """What the job has written by ``now``: decisions and canary records of closed mailboxes."""
    closed = [d for d in decisions if d["closed_at_ms"] <= now]
    return Window(closed, labels, canary_records(closed))


def assert_valid_audit(record: AuditRecord) -> dict[str, Any]:
    d = record.to_dict()
    assert [e.message for e in AUDIT_SCHEMA.iter_errors(d)] == [], d
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    return d


NOW = T0 + 60_000


# --- the decision step -----------------------------------------------------------------------------------


def test_a_healthy_window_keeps_and_says_what_it_saw() -> None:
    decisions, labels = traffic(1200, NOW)
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, None, CONFIG)
    assert d.kind == KEEP and d.candidate is None and d.guard is None
    e = d.evidence
    assert (e.window_start_ms, e.window_end_ms, e.canary_window_start_ms) == (NOW - 30_000, NOW, NOW - 5_000)
    assert 550 <= e.decisions <= 600 and 0 < e.labelled < e.decisions  # labels lag 5 s
    by_id = {m.model_id: m for m in e.models}
    assert by_id["gbt"].pairs >= 50 and by_id["gbt"].agreement is not None and by_id["gbt"].agreement > 0.9
    assert (
        by_id["base"].pairs == 0 and by_id["base"].agreement is None
    )  # the canary is not paired with itself
    assert e.alerts == () and e.official_agreement is not None and e.official_agreement > 0.9
    assert "keep" in d.summary()


@pytest.mark.parametrize("demote_on_canary", [False, True])
def test_a_canary_alert_demotes_only_when_configured(demote_on_canary: bool) -> None:
    """gbt went bad 3 s ago: no label of it yet, only its disagreement with the canary."""
    decisions, labels = traffic(1200, NOW, bad_from_ms=NOW - 3_000 - 2_000)
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": demote_on_canary})
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, None, cfg)
    assert any(a.startswith("gbt: agreement") for a in d.evidence.alerts)  # measured either way
    if not demote_on_canary:
        assert d.kind == KEEP
        return
    assert d.kind == CHANGE and d.candidate is not None
    assert d.candidate.version == 2 and d.candidate.role_of("gbt") == "shadow"
    assert d.candidate.official[0].id == "logreg"  # the challenger answers first now
    r = d.evidence.replay
    assert r is not None and r.start_ms == NOW - 5_000  # the evidence is the canary window's
    assert r.labelled == 0 and not r.judged  # labels of it come 5 s later: quality not compared
    assert r.candidate_no_answers == r.actual_no_answers == 0 and r.changed == r.requests > 0
    assert any("quality not compared" in x for x in d.reasons)
    assert any("gbt: demoted to shadow: drift alert" in x for x in d.reasons)


def test_labels_below_the_floor_demote_and_the_replay_compares_quality() -> None:
    decisions, labels = traffic(1200, NOW, bad_from_ms=NOW - 40_000)  # bad over the whole window
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, None, CONFIG)  # canary alerts not used
    assert d.kind == CHANGE and d.candidate is not None and d.candidate.role_of("gbt") == "shadow"
    gbt = next(m for m in d.evidence.models if m.model_id == "gbt")
    assert gbt.new_role == "shadow" and gbt.auc is not None and gbt.auc < 0.6 and gbt.labelled >= 100
    assert any("gbt: demoted to shadow: AUC" in x and "below the floor 0.6" in x for x in d.reasons)
    r = d.evidence.replay
    assert r is not None and r.start_ms == NOW - 30_000 and r.judged
    assert r.candidate_auc is not None and r.actual_auc is not None and r.candidate_auc > r.actual_auc + 0.2


def test_the_replay_refuses_a_candidate_worse_on_the_labelled_requests() -> None:
    """The canary is the one that is off: gbt predicts the positives the constant canary misses. Labels
    come at once, so the replay sees gbt was right and the challenger would have been worse."""
    models = {**MODELS, "logreg": (0.6, -2.0, 1.0), "base": (0.0, -4.0, 0.1)}
    decisions, labels = traffic(1200, NOW, models=models, label_delay_ms=0)
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": True, "replay_min_labelled": 50})
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, None, cfg)
    assert d.kind == REFUSE and d.guard == GUARD_REPLAY and d.candidate is not None
    r = d.evidence.replay
    assert r is not None and r.judged and r.candidate_auc is not None and r.actual_auc is not None
    assert r.start_ms == NOW - 5_000 and r.labelled >= 50  # the canary window's requests, all labelled
    assert r.actual_auc - r.candidate_auc > 0.1
    assert "a loss over replay_max_auc_loss 0" in d.reasons[-1]
    # Allowed a loss that large, the same evidence passes.
    loose = AutopilotConfig.from_dict({**_plain(cfg), "replay_max_auc_loss": 0.5})
    assert decide(NOW, window_of(decisions, labels, NOW), POLICY, None, loose).kind == CHANGE


def test_the_replay_refuses_a_candidate_that_leaves_requests_unanswered() -> None:
    """The fallbacks are down: demoting gbt would leave every request to the deadline and no answer."""
    decisions, labels = traffic(1200, NOW, bad_from_ms=NOW - 5_000, silent=("logreg", "tree"))
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": True})
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, None, cfg)
    assert d.kind == REFUSE and d.guard == GUARD_REPLAY
    r = d.evidence.replay
    assert r is not None and r.actual_no_answers == 0 and r.candidate_no_answers == r.requests > 0
    assert "would leave no answer for" in d.reasons[-1]


def test_min_interval_refuses_before_the_replay_runs() -> None:
    decisions, labels = traffic(1200, NOW, bad_from_ms=NOW - 40_000)
    d = decide(NOW, window_of(decisions, labels, NOW), POLICY, NOW - 59_000, CONFIG)
    assert d.kind == REFUSE and d.guard == GUARD_MIN_INTERVAL and d.evidence.replay is None
    assert d.reasons[-1].startswith("min_interval: the last change was 59.0 s ago")
    assert decide(NOW, window_of(decisions, labels, NOW), POLICY, NOW - 60_000, CONFIG).kind == CHANGE


# --- the state across rounds and the loop ----------------------------------------------------------------


class FakeClock:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def test_the_loop_publishes_once_audits_and_then_keeps() -> None:
    """gbt goes bad at NOW; labels lag 5 s: the canary alert alone demotes it, once."""
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": True})
    decisions, labels = traffic(2000, NOW + 20_000, bad_from_ms=NOW)
    clock = FakeClock(NOW)
    published: list[Policy] = []
    audits: list[AuditRecord] = []
    out = io.StringIO()
    pilot = Autopilot(POLICY, cfg, "autopilot@test")

    def read(now: int) -> Snapshot:
        return Snapshot(window_of(decisions, [x for x in labels if x.labelled_at_ms <= now], now))

    rounds = run_autopilot(pilot, read, publish_policy=published.append, publish_audit=audits.append,
                           clock_ms=clock, sleep_s=clock.sleep, iterations=15, out=out)  # fmt: skip
    assert rounds == 15
    assert [p.version for p in published] == [2] and published[0].role_of("gbt") == "shadow"
    assert [(a.outcome, a.old_version, a.new_version, a.watcher) for a in audits] == [
        (APPLIED, 1, 2, "autopilot@test")
    ]
    # Closes 2 s after a request; ~2 s of noise makes agreement fall below 0.9 in the 5 s window.
    changed_at = audits[0].at_ms
    assert NOW + 2_000 < changed_at <= NOW + 6_000, changed_at - NOW
    assert pilot.policy.version == 2 and pilot.last_change_ms == changed_at
    d = assert_valid_audit(audits[0])
    assert d["action"] == "demote" and d["guard"] is None and d["evidence"]["replay"]["judged"] is False
    text = out.getvalue()
    assert "published policy v2" in text and "AUDIT {" in text
    assert text.rstrip().endswith("autopilot stopped after 15 round(s), 1 change(s); policy v2")


def test_a_failed_publish_is_audited_and_tried_again() -> None:
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": True})
    decisions, labels = traffic(1400, NOW + 10_000, bad_from_ms=NOW - 5_000)
    clock = FakeClock(NOW)
    audits: list[AuditRecord] = []
    calls: list[int] = []

    def publish(policy: Policy) -> None:
        calls.append(policy.version)
        if len(calls) == 1:
            raise OSError("broker away")

    pilot = Autopilot(POLICY, cfg, "w")
    run_autopilot(pilot, lambda now: Snapshot(window_of(decisions, labels, now)), publish_policy=publish,
                  publish_audit=audits.append, clock_ms=clock, sleep_s=clock.sleep, iterations=3,
                  out=io.StringIO())  # fmt: skip
    assert calls == [2, 2]
    assert [a.outcome for a in audits] == [FAILED, APPLIED]
    assert audits[0].reasons[-1] == "publish failed: OSError: broker away"
    assert_valid_audit(audits[0])


def test_refusals_and_dry_runs_are_audited_once_per_candidate() -> None:
    decisions, labels = traffic(1300, NOW + 2_000, bad_from_ms=NOW - 40_000)
    window = window_of(decisions, labels, NOW)
    pilot = Autopilot(POLICY, CONFIG, "w", last_change_ms=NOW - 59_000)
    first, second = pilot.step(NOW, window), pilot.step(NOW + 500, window_of(decisions, labels, NOW + 500))
    assert first.audit is not None and first.audit.outcome == REFUSED and first.publish is None
    assert first.audit.guard == GUARD_MIN_INTERVAL and second.audit is None  # the same refusal: once
    later = pilot.step(NOW + 1_000, window_of(decisions, labels, NOW + 1_000))
    assert later.publish is not None and later.audit is None  # the interval has passed: a change

    dry = Autopilot(POLICY, CONFIG, "w", dry_run=True)
    steps = [dry.step(NOW + i, window) for i in range(3)]
    assert [s.publish for s in steps] == [None] * 3
    assert steps[0].audit is not None and steps[0].audit.outcome == DRY_RUN
    assert steps[1].audit is None and steps[2].audit is None and dry.policy is POLICY
    assert_valid_audit(steps[0].audit)


def test_a_newer_version_on_the_topic_takes_over_and_counts_as_a_change() -> None:
    pilot = Autopilot(POLICY, CONFIG, "w")
    v3 = parse_policy({**POLICY.to_dict(), "version": 3})
    assert pilot.observe(v3, NOW) and pilot.policy is v3 and pilot.last_change_ms == NOW
    assert not pilot.observe(POLICY, NOW + 5) and pilot.policy is v3  # an older one changes nothing


def test_the_buffer_keeps_what_a_window_can_still_hold() -> None:
    decisions, labels = traffic(400, NOW)
    buf = RecordBuffer(keep_ms=10_000)
    for d in decisions:
        buf.add_decision(d)
        buf.add_canary({"decided_at_ms": d["decided_at_ms"], "agree": True})
    buf.add_decision({**decisions[0], "result": None})  # an orphan's record: nothing to judge
    for lab in labels:
        buf.add_label(lab)
    buf.add_label(Label(labels[0].request_id, 1 - int(labels[0].label), labels[0].labelled_at_ms + 1))
    buf.prune(NOW)
    w = buf.window()
    assert all(int(d["decided_at_ms"]) >= NOW - 10_000 for d in w.decisions) and len(w.decisions) == 200
    assert len(w.canary) == 200 and len(w.labels) == len(labels)  # labels are kept twice as long
    assert next(x for x in w.labels if x.request_id == labels[0].request_id).label == 1 - labels[0].label
    buf.prune(NOW + 30_000)
    assert len(buf) == 0


# --- any window: the decision obeys its rules, and every audit fits the schema ----------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bad_for_s=st.one_of(st.none(), st.integers(0, 40)),
    label_delay_s=st.integers(0, 40),
    since_change_s=st.one_of(st.none(), st.integers(0, 120)),
    demote_on_canary=st.booleans(),
    seed=st.integers(0, 3),
)
def test_any_window_gives_a_decision_that_obeys_the_guards(
    bad_for_s: int | None, label_delay_s: int, since_change_s: int | None, demote_on_canary: bool, seed: int
) -> None:
    cfg = AutopilotConfig.from_dict({**_plain(CONFIG), "demote_on_canary": demote_on_canary})
    bad_from = None if bad_for_s is None else NOW - 1000 * bad_for_s
    decisions, labels = traffic(
        800, NOW, bad_from_ms=bad_from, label_delay_ms=1000 * label_delay_s, seed=seed
    )
    last = None if since_change_s is None else NOW - 1000 * since_change_s
    pilot = Autopilot(POLICY, cfg, "w", last_change_ms=last)
    step = pilot.step(NOW, window_of(decisions, labels, NOW))
    d = step.decision
    assert d.kind in (KEEP, CHANGE, REFUSE)
    if d.kind == KEEP:
        assert d.candidate is None and step.publish is None and step.audit is None
        return
    assert d.candidate is not None and d.candidate.version == POLICY.version + 1
    assert d.candidate == parse_policy(d.candidate.to_dict()) and d.candidate.official
    too_soon = last is not None and NOW - last < cfg.min_interval_ms
    assert (d.guard == GUARD_MIN_INTERVAL) == too_soon
    if d.kind == CHANGE:
        r = d.evidence.replay
        assert r is not None and r.candidate_no_answers <= r.actual_no_answers + r.requests * 0.01
        assert not r.judged or (r.candidate_auc or 0) >= (r.actual_auc or 0) - cfg.replay_max_auc_loss
        assert step.publish is d.candidate
        assert_valid_audit(pilot.applied(step, NOW))
    else:
        assert step.audit is not None and step.audit.guard == d.guard
        assert_valid_audit(step.audit)


# --- configuration and the command line ------------------------------------------------------------------


def _plain(cfg: AutopilotConfig) -> dict[str, Any]:
    d = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    d["gate"] = {k: getattr(cfg.gate, k) for k in cfg.gate.__dataclass_fields__}
    return d


def test_the_config_defaults_and_a_round_trip() -> None:
    assert AutopilotConfig.from_dict(None) == AutopilotConfig()
    assert AutopilotConfig().gate == GateConfig(min_labelled=2000) and not AutopilotConfig().demote_on_canary
    assert AutopilotConfig.from_dict({"gate": {"auc_floor": 0.6}}).gate == GateConfig(
        min_labelled=2000, auc_floor=0.6
    )
    assert AutopilotConfig.from_dict(_plain(CONFIG)) == CONFIG


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"every": 1}, "every: unknown field (allowed: agreement_min, agreement_min_count, canary_window_ms"),
        ({"every_ms": 0}, "every_ms: must be an integer >= 1, got 0"),
        ({"window_ms": "1m"}, "window_ms: must be an integer >= 1, got '1m'"),
        ({"min_interval_ms": -1}, "min_interval_ms: must be an integer >= 0, got -1"),
        ({"agreement_min": 1.5}, "agreement_min: must be a number in [0, 1], got 1.5"),
        ({"replay_max_auc_loss": True}, "replay_max_auc_loss: must be a number in [0, 1], got True"),
        ({"demote_on_canary": "yes"}, "demote_on_canary: must be true or false, got 'yes'"),
        (
            {"canary_window_ms": 20_000, "window_ms": 10_000},
            "canary_window_ms: must be at most window_ms (10000)",
        ),
        ({"gate": {"min_labelled": 0}}, "gate.min_labelled: must be a positive integer, got 0"),
        ({"gate": {"floor": 1}}, "gate.floor: unknown field"),
        ({"gate": [1]}, "gate: must be a mapping, got [1]"),
    ],
)
def test_a_bad_config_value_names_its_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as e:
        AutopilotConfig.from_dict(data)
    assert str(e.value).startswith(message)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["autopilot", "--bootstrap", "127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_the_command_refuses_bad_settings_in_one_line_before_touching_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY.to_dict()), encoding="utf-8")
    config = tmp_path / "autopilot.yaml"
    config.write_text("window_ms: 120000\ngate: {auc_floor: 2}\n", encoding="utf-8")
    base = ["--policy", str(policy)]
    assert _cli_error([*base, "--every", "soon"], capsys) == (
        "error: --every: not a duration: 'soon' (e.g. 30s, 5m, 1h)"
    )
    assert _cli_error([*base, "--config", str(config)], capsys) == (
        f"error: {config}: gate.auc_floor: must be a number in [0, 1], got 2"
    )
    assert _cli_error([*base, "--window", "10s", "--canary-window", "1m"], capsys) == (
        "error: autopilot: canary_window_ms: must be at most window_ms (10000), got 60000"
    )
    assert _cli_error([*base, "--name", ""], capsys) == "error: --name: must be 1 to 256 characters, got 0"
    assert _cli_error(["--policy", str(tmp_path / "none.yaml")], capsys).startswith(
        f"error: {tmp_path / 'none.yaml'}"
    )


# --- the Kafka side's parsing (evaluation/autopilot_kafka.py), without a broker ---------------------------


class FakeMessage:
    def __init__(self, topic: str, value: bytes | None, offset: int = 0, timestamp_ms: int = 0) -> None:
        self._topic, self._value, self._offset, self._ts = topic, value, offset, timestamp_ms

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


def _message(topic: str, value: bytes | None, i: int) -> Any:
    return FakeMessage(topic, value, i, timestamp_ms=NOW + i)  # what the adapter uses of a Kafka Message


def test_each_record_read_is_used_or_counted_never_fatal() -> None:
    tail = autopilot_kafka.Tail.__new__(autopilot_kafka.Tail)  # the parsing only: no consumer
    tail.topics, tail.buffer, tail.counts = autopilot_kafka.Topics(), RecordBuffer(60_000), Counter()
    decisions, labels = traffic(3, NOW, label_delay_ms=0)
    orphan = {**decisions[0], "decided_at_ms": None, "result": None}
    v2 = json.dumps({**POLICY.to_dict(), "version": 2}).encode()
    seen = [
        tail._one(_message(topic, value, i))
        for i, (topic, value) in enumerate([
            ("decisions", json.dumps(decisions[0]).encode()),
            ("decisions", json.dumps(orphan).encode()),  # no answer: nothing to judge
            ("decisions", b"not json"),
            ("decisions", json.dumps({**decisions[1], "decided_at_ms": "soon"}).encode()),
            ("canary", json.dumps(canary_records(decisions)[2]).encode()),
            ("canary", None),
            ("labels", json.dumps(labels[0].to_dict()).encode()),
            ("labels", b'{"request_id": "r", "label": "yes", "labelled_at_ms": 1}'),
            ("policies", v2),
            ("policies", b'{"version": 3}'),
        ])
    ]  # fmt: skip
    assert [s for s in seen if s is not None] == [(parse_policy(json.loads(v2)), NOW + 8)]
    assert dict(tail.counts) == {
        "decisions": 1, "decisions_without_answer": 1, "decisions_unreadable": 2, "canary": 1,
        "canary_unreadable": 1, "labels": 1, "labels_unreadable": 1, "policies_unreadable": 1,
    }  # fmt: skip
    w = tail.buffer.window()
    assert [d["request_id"] for d in w.decisions] == [decisions[0]["request_id"]]
    assert len(w.canary) == 1 and w.labels == (labels[0],)

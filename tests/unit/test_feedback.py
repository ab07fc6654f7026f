"""udfs.feedback: labels and decision records in either order -> one reward event per request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import feedback, names
from udfs.wire_in import DeadLetter, Source

TTL = 1000
SRC = Source("decisions", 0, 9)


def decision(rid: str = "r1", **scores: Any) -> dict[str, Any]:
    """A decision record whose scores are given as model=output (a dict), or model='error'."""
    rows = []
    for model, out in scores.items():
        ok = out != "error"
        rows.append(
            {"model_id": model, "model_version": "1", "role": "challenger", "status": "ok" if ok else "error",
             "output": out if ok else None, "error": None if ok else "boom", "scored_at_ms": 1,
             "latency_ms": 1.0, "arrived_at_ms": 2, "late": False, "duplicate": False}
        )  # fmt: skip
    return {"request_id": rid, "policy_version": 3, "received_at_ms": 1, "decided_at_ms": 2,
            "closed_at_ms": 3, "result": {"model_id": "a"}, "scores": rows}  # fmt: skip


def answers(record: dict[str, Any]) -> feedback.Answers:
    parsed = feedback.parse_decision(json.dumps(record), SRC)
    assert isinstance(parsed, feedback.Answers), parsed
    return parsed


def test_a_decision_reduces_to_each_models_answer() -> None:
    rec = decision(a={"label": 1, "probability": 0.2}, b={"probability": 0.7}, c="error", d={"value": 3.5})
    rec["scores"].append(dict(rec["scores"][0], model_id="a", output={"label": 0}, duplicate=True))
    rec["scores"].append(dict(rec["scores"][0], model_id="ghost", role="unknown"))
    got = answers(rec)
    # The label wins over the probability; probability >= 0.5 without one; value models give nothing.
    assert got.answers == {"a": 1, "b": 1, "c": feedback.ERROR}
    assert (got.request_id, got.policy_version) == ("r1", 3)
    assert feedback.Answers.from_dict(json.loads(json.dumps(got.to_dict()))) == got


def test_rewards_for_classifiers_only() -> None:
    ans = {"a": 1, "b": 0, "c": feedback.ERROR, "d": True, "e": "fraud", "f": 0.5}
    assert feedback.rewards(ans, 1) == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}
    assert feedback.rewards(ans, False) == {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}
    assert feedback.rewards(ans, 2.5) == {}  # a value label: nothing to compare


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"{nope", "not_json"),
        (b"[1]", "not_object"),
        (json.dumps({"request_id": "r1", "scores": []}).encode(), names.REASON_BAD_DECISION),
        (json.dumps({"request_id": "r1", "result": None, "scores": {}}).encode(), names.REASON_BAD_DECISION),
        (
            json.dumps({"request_id": "r1", "result": None, "scores": [{"x": 1}]}).encode(),
            names.REASON_BAD_DECISION,
        ),
        (json.dumps({**decision(), "policy_version": "3"}).encode(), names.REASON_BAD_DECISION),
        (json.dumps({"result": None, "scores": []}).encode(), "missing_field"),
    ],
)
def test_a_record_that_is_not_a_decision_is_a_bad_decision(record: bytes, reason: str) -> None:
    parsed = feedback.parse_decision(record, SRC)
    assert isinstance(parsed, DeadLetter) and parsed.reason == reason
    assert (parsed.source.topic, parsed.source.offset) == ("decisions", 9)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"not json", "not_json"),
        (b'{"request_id": "r1", "label": NaN, "labelled_at_ms": 1}', "not_json"),
        (b'{"request_id": "r1", "label": "yes", "labelled_at_ms": 1}', "bad_field"),
        (b'{"request_id": "r1", "labelled_at_ms": 1}', "missing_field"),
        (b'{"request_id": "r 1", "label": 1, "labelled_at_ms": 1}', "bad_request_id"),
        (b'{"request_id": "r1", "label": 1, "labelled_at_ms": 1, "x": 2}', "unknown_field"),
        (None, "null_value"),
    ],
)
def test_bad_labels_are_dead_letters_with_the_parse_reasons(record: bytes | None, reason: str) -> None:
    parsed = feedback.parse_label(record, Source("labels", 0, 4))  # type: ignore[arg-type]
    assert isinstance(parsed, DeadLetter) and parsed.reason == reason
    assert parsed.reason in names.PARSE_REASONS


def test_join_in_either_order_and_expiry_counts() -> None:
    ans = answers(decision(a={"label": 1}, b={"label": 0}))
    label = feedback.Label("r1", 1, 50)
    # Decision first, label later.
    s1 = feedback.on_answers(None, ans, now_ms=100, ttl_ms=TTL)
    assert s1.rewards == [] and s1.entry is not None and s1.entry.wake_at_ms == 1100
    s2 = feedback.on_label(feedback.JoinEntry.from_json(s1.entry.to_json()), label, now_ms=400, ttl_ms=TTL)
    assert s2.rewards == [{"request_id": "r1", "policy_version": 3, "labelled_at_ms": 50,
                           "rewards": {"a": 1.0, "b": 0.0}}]  # fmt: skip
    assert s2.counts == [feedback.MATCHED] and s2.entry is not None
    assert s2.entry.answers is None and s2.entry.wake_at_ms == 1400  # a small tombstone for TTL
    # Label first, decision later: the same event.
    s3 = feedback.on_label(None, label, now_ms=100, ttl_ms=TTL)
    assert s3.entry is not None
    s4 = feedback.on_answers(s3.entry, ans, now_ms=200, ttl_ms=TTL)
    assert s4.rewards == s2.rewards
    # Expiry: not before the wake time; then cleared and counted by what never came.
    assert feedback.on_timer(s2.entry, 1399).entry is s2.entry
    assert feedback.on_timer(s2.entry, 1400) == feedback.JoinStep(None, [], [])
    assert feedback.on_timer(s1.entry, 1100).counts == [feedback.UNLABELLED]
    lonely = feedback.on_label(None, feedback.Label("r2", 0, 1), now_ms=0, ttl_ms=TTL).entry
    assert lonely is not None and feedback.on_timer(lonely, TTL).counts == [feedback.UNMATCHED]


def test_second_deliveries_teach_nothing() -> None:
    ans = answers(decision(a={"label": 1}))
    s = feedback.on_answers(None, ans, 0, TTL)
    again = feedback.on_answers(s.entry, ans, 1, TTL)  # the at-least-once sink wrote it twice
    assert again.counts == [feedback.DUPLICATE] and again.rewards == []
    matched = feedback.on_label(s.entry, feedback.Label("r1", 1, 5), 2, TTL)
    assert len(matched.rewards) == 1
    assert feedback.on_label(matched.entry, feedback.Label("r1", 0, 9), 3, TTL).rewards == []
    assert feedback.on_answers(matched.entry, ans, 4, TTL).counts == [feedback.DUPLICATE]
    # Two labels before the decision: the later-labelled one is used.
    e = feedback.on_label(None, feedback.Label("r1", 0, 5), 0, TTL).entry
    e = feedback.on_label(e, feedback.Label("r1", 1, 9), 1, TTL).entry
    e = feedback.on_label(e, feedback.Label("r1", 0, 7), 2, TTL).entry
    assert feedback.on_answers(e, ans, 3, TTL).rewards[0]["rewards"] == {"a": 1.0}


def test_state_version_is_checked() -> None:
    with pytest.raises(ValueError, match="not supported"):
        feedback.JoinEntry.from_json('{"v": 7}')


EVENTS = st.lists(
    st.tuples(st.sampled_from(["decision", "label", "timer"]), st.integers(0, 3000)), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_any_order_of_deliveries_gives_at_most_one_reward_event_per_entry_and_always_ends(
    events: list[tuple[str, int]],
) -> None:
    """Whatever arrives when (duplicates, timers), an entry yields at most one reward event, and only after
    both a decision and a label reached it; every entry has a wake time at which a timer clears it. (A
    re-delivery after the entry expired opens a new one: the TTL is the dedupe horizon.)"""
    ans = answers(decision(a={"label": 1}, b={"label": 0}))
    entry: feedback.JoinEntry | None = None
    emitted, seen = 0, set()
    now = 0
    for kind, dt in events:
        now += dt
        if entry is not None and entry.wake_at_ms < now:  # Flink has fired a timer due before now
            assert feedback.on_timer(entry, entry.wake_at_ms).entry is None
            entry, emitted, seen = None, 0, set()
        if kind == "timer":
            if entry is None:
                continue
            step = feedback.on_timer(entry, now)
        elif kind == "decision":
            step = feedback.on_answers(entry, ans, now, TTL)
        else:
            step = feedback.on_label(entry, feedback.Label("r1", 1, now), now, TTL)
        if kind != "timer":
            seen.add(kind)
        emitted += len(step.rewards)
        if step.rewards:
            assert seen == {"decision", "label"}
            assert step.rewards[0]["rewards"] == {"a": 1.0, "b": 0.0}
        assert emitted <= 1
        entry = step.entry
        if entry is None:
            emitted, seen = 0, set()
        else:
            entry = feedback.JoinEntry.from_json(entry.to_json())
            assert now <= entry.wake_at_ms <= now + TTL
    if entry is not None:
        assert feedback.on_timer(entry, entry.wake_at_ms).entry is None

"""``udfs.testing.Harness``: the rendezvous logic driven in memory, as users writing policies drive it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from udfs import names
from udfs.testing import Harness

POLICY: dict[str, Any] = {
    "version": 1,
    "deadline_ms": 100,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 40},
        {"id": "logreg", "role": "challenger", "wait_ms": 70},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
    "late_window_ms": 50,
    "dedupe_retention_ms": 1000,
}


def ok(label: int, p: float = 0.9) -> dict[str, Any]:
    return {"label": label, "probability": p}


def test_first_in_order_answers_with_the_challenger_once_the_incumbents_wait_ran_out() -> None:
    h = Harness(POLICY, start_ms=1_000)
    h.send_request("r1")
    h.advance_to(1_010)
    assert h.send_score("r1", "logreg", ok(0)) == []  # gbt may still answer within its 40 ms
    h.send_score("r1", "base", ok(1))
    out = h.advance_to(1_040)  # gbt's wait runs out: logreg, next in order, has answered
    assert [(o.kind, o.topic) for o in out] == [("result", "answers")]
    (result,) = h.results
    assert (result["model_id"], result["reason"], result["output"]) == ("logreg", "fallback", ok(0))
    assert result["decided_at_ms"] == 1_040
    h.advance_to(1_040 + 100 + 50)  # closed after the deadline and the late window
    (decision,) = h.decisions
    assert decision["result"]["model_id"] == "logreg"
    assert [(c["canary"]["model_id"], c["agree"]) for c in h.canary] == [("base", False)]
    assert h.archive[0]["request_id"] == "r1" and h.dead_letters == []


def test_the_wait_timer_fires_at_the_deadline_when_nobody_answers() -> None:
    h = Harness(POLICY, start_ms=0)
    h.send_request("r1")
    assert h.timers == [(40, "r1")]  # the incumbent's wait
    assert h.advance_to(99) == [] and h.timers == [(100, "r1")]
    out = h.advance_to(100)
    assert [o.kind for o in out] == ["result"]
    assert (h.results[0]["reason"], h.results[0]["decided_at_ms"]) == ("no_answer", 100)
    h.advance_to(10_000)  # close, then the tombstone's expiry: nothing left
    assert h.state == {} and h.timers == []
    metrics = h.metrics()
    assert metrics[names.METRIC_NO_ANSWER] == 1
    assert metrics[names.METRIC_MAILBOXES_OPENED] == metrics[names.METRIC_MAILBOXES_CLEARED] == 1


def test_the_log_clock_decides_when_the_tick_comes_back() -> None:
    h = Harness(POLICY, clock=names.CLOCK_LOG)
    h.send_request("r1")
    out = h.advance_to(100)
    # gbt's wait (40), logreg's (70), the deadline (100): each a tick, written and read back at once
    assert [o.kind for o in out] == ["tick", "tick", "tick", "result"]
    assert [t["tick_due_ms"] for t in h.ticks] == [40, 70, 100]
    assert h.results[0]["reason"] == "no_answer"


def test_a_duplicate_request_is_a_dead_letter_and_gets_no_second_answer() -> None:
    h = Harness(POLICY)
    h.send_request("r1")
    out = h.send_request("r1")
    assert [o.kind for o in out] == ["dead_letter"]
    assert h.dead_letters[0]["reason"] == "duplicate_request"
    h.send_score("r1", "gbt", ok(1))
    assert len(h.results) == 1
    assert h.metrics()[names.dead_letter_metric("duplicate_request")] == 1


def test_a_policy_published_mid_stream_decides_new_requests_while_open_ones_keep_theirs() -> None:
    h = Harness(POLICY)
    h.send_request("old")
    v2 = POLICY | {"version": 2, "models": [{"id": "tree", "role": "incumbent"}]}
    assert h.publish_policy(v2) == []
    assert h.logic.registry.current.version == 2 and set(h.broadcast) == {"2"}
    h.send_request("new")
    h.send_score("new", "tree", ok(1))
    assert [(r["request_id"], r["model_id"]) for r in h.results] == [("new", "tree")]
    h.send_score("old", "gbt", ok(0))  # version 1's incumbent, for the request that arrived under it
    assert [(r["request_id"], r["model_id"]) for r in h.results][-1] == ("old", "gbt")
    assert h.publish_policy(b"not yaml: [") != []  # refused: a dead letter
    assert h.dead_letters[-1]["source_topic"] == names.TOPIC_POLICIES
    assert h.metrics()[names.METRIC_POLICY_VERSION] == 2


def test_the_clock_does_not_go_back() -> None:
    h = Harness(POLICY, start_ms=10)
    with pytest.raises(ValueError, match="does not go back"):
        h.advance_to(5)


# --- the harness carries out the logic's effects as the Flink adapter does ----------------------------------


@pytest.mark.parametrize("clock", names.CLOCKS)
def test_the_harness_and_the_flink_adapter_emit_the_same_records(
    monkeypatch: pytest.MonkeyPatch, clock: str
) -> None:
    from tests.unit import test_flink_adapter as fa
    from udfs import flink_fn
    from udfs import mailbox as mbx

    now = {"ms": 1_000}
    monkeypatch.setattr(flink_fn, "_now_ms", lambda: now["ms"])
    fn = flink_fn.MailboxFunction(fa.POLICY, clock=clock)
    state, timers = fa.FakeState(), fa.FakeTimers()
    fn.open(fa.FakeRuntime(state))  # type: ignore[arg-type]
    ctx = fa.BroadcastCtx(timers, fa.FakeBroadcastState())
    h = Harness(fa.POLICY, clock=clock, start_ms=1_000)
    adapter: list[tuple[Any, ...]] = []
    offsets = {flink_fn.SOURCE_REQUESTS: 0, flink_fn.SOURCE_SCORES: 0}  # the harness numbers records so

    def read(key: str, value: bytes, source: int) -> Any:
        offsets[source] += 1
        return fn.process_element((key, value, source, 0, offsets[source] - 1), ctx)

    def decoded(rows: Any) -> list[tuple[Any, ...]]:
        out = []
        for row in rows:
            if row[0] is flink_fn.ARCHIVE:
                out.append((mbx.ARCHIVE, None, json.loads(row[1]), None))
            else:
                out.append((row[0], row[1], json.loads(row[2]), row[3]))
                if row[0] == mbx.TICK:  # written to the scores topic and read back at once
                    out += decoded(read("r1", row[2], flink_fn.SOURCE_SCORES))
        return out

    def both(record: dict[str, Any], source: int) -> None:
        adapter.extend(decoded(read("r1", json.dumps(record).encode(), source)))
        h.send(record, source)

    def advance(to: int) -> None:
        while timers.pending and min(timers.pending) <= to:
            t = min(timers.pending)
            timers.pending.discard(t)
            now["ms"] = t
            adapter.extend(decoded(fn.on_timer(t, ctx)))
        now["ms"] = to
        h.advance_to(to)

    score = {
        "request_id": "r1", "model_id": "tree", "model_version": "1", "status": "ok",
        "output": {"label": 1, "probability": 0.7}, "scored_at_ms": 1, "latency_ms": 2.0,
    }  # fmt: skip
    both(fa.REQUEST, flink_fn.SOURCE_REQUESTS)
    advance(1_045)
    both(score, flink_fn.SOURCE_SCORES)
    both(fa.REQUEST, flink_fn.SOURCE_REQUESTS)  # a duplicate
    advance(1_120)
    both(score | {"model_id": "gbt"}, flink_fn.SOURCE_SCORES)  # late
    advance(5_000)

    harness = [(o.kind, o.key, o.record, o.topic) for o in h.outputs]
    assert harness == adapter
    assert {o[0] for o in adapter} >= {mbx.ARCHIVE, mbx.RESULT, mbx.DECISION, mbx.DEAD_LETTER}
    assert state.v is None and h.state == {}

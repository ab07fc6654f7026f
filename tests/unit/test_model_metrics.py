"""Per-model counters from decision records (udfs.model_metrics), by hand and through the real mailbox."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import mailbox as mbx
from udfs import model_metrics, names
from udfs.policy import parse_policy
from udfs.wire_in import Request, Score, Source

POLICY = parse_policy(
    {
        "version": 1,
        "deadline_ms": 100,
        "models": [
            {"id": "gbt", "role": "incumbent", "wait_ms": 40},
            {"id": "logreg", "role": "challenger", "wait_ms": 70},
            {"id": "tree", "role": "backstop"},
            {"id": "base", "role": "canary"},
        ],
        "late_window_ms": 1000,
        "dedupe_retention_ms": 0,
    }
)
IDS = [m.id for m in POLICY.models]
LE = names.latency_bucket_metric


def _score(model_id: str, arrived: int, status: str = "ok", late: bool = False, dup: bool = False) -> dict:
    s: dict[str, Any] = {
        "model_id": model_id,
        "model_version": "v1",
        "status": status,
        "scored_at_ms": arrived,
        "latency_ms": 1.0,
        "arrived_at_ms": arrived,
        "role": "incumbent",
        "duplicate": dup,
        "late": late,
    }
    if status == "ok":
        s["output"] = {"label": 1, "probability": 0.8}
    else:
        s["output"], s["error"] = None, "boom"
    return s


def _decision(scores: list[dict], winner: str | None, reason: str = "preferred") -> dict:
    return {
        "request_id": "r1",
        "policy_version": 1,
        "received_at_ms": 1000,
        "decided_at_ms": 1030,
        "closed_at_ms": 2100,
        "result": {"model_id": winner, "reason": reason, "decided_at_ms": 1030},
        "scores": scores,
    }


def test_one_decision_by_hand() -> None:
    d = _decision(
        [
            _score("gbt", 1030),
            _score("gbt", 1031, dup=True),  # duplicates never count
            _score("logreg", 1007, status="error"),
            _score("base", 1400, late=True),
            _score("ghost", 1002),  # not in the policy: left out
        ],
        winner="gbt",
    )
    c = model_metrics.model_counts(d, IDS)
    assert set(c) == set(IDS)
    assert c["gbt"] == {
        "scores": 1,
        "wins": 1,
        "latency_ms_sum": 30,
        LE(50): 1,
        LE(100): 1,
        LE(250): 1,
        LE(500): 1,
        LE(1000): 1,
        LE(2500): 1,
        LE(5000): 1,
        LE(None): 1,
    }
    assert c["logreg"]["errors"] == 1 and c["logreg"]["scores"] == 1 and c["logreg"][LE(10)] == 1
    assert LE(5) not in c["logreg"]
    assert c["base"]["late"] == 1 and c["base"]["latency_ms_sum"] == 400 and LE(250) not in c["base"]
    assert c["tree"] == {"timeouts": 1}


def test_no_answer_is_nobodys_win_and_early_scores_have_zero_latency() -> None:
    d = _decision([_score("tree", 990)], winner=None, reason="no_answer")
    c = model_metrics.model_counts(d, IDS)
    assert all("wins" not in v for v in c.values())
    assert c["tree"]["scores"] == 1 and "latency_ms_sum" not in c["tree"]  # 0 is not listed
    assert c["tree"][LE(5)] == 1  # arrived before its request: latency 0
    assert model_metrics.model_counts({"request_id": "x", "result": None, "scores": []}, IDS) == {}


def test_latency_buckets_are_cumulative() -> None:
    assert model_metrics.latency_buckets(0) == [LE(b) for b in names.MODEL_LATENCY_BUCKETS_MS] + [LE(None)]
    assert model_metrics.latency_buckets(100) == [LE(b) for b in (100, 250, 500, 1000, 2500, 5000)] + [
        LE(None)
    ]
    assert model_metrics.latency_buckets(10**6) == [LE(None)]


def test_names_are_per_model_and_unique() -> None:
    assert names.model_metric("gbt", names.MODEL_METRIC_WINS) == "model_gbt_wins"
    assert len(set(names.MODEL_METRICS)) == len(names.MODEL_METRICS)
    per_model = {names.model_metric(m, n) for m in IDS for n in names.MODEL_METRICS}
    assert len(per_model) == len(IDS) * len(names.MODEL_METRICS)


# --- through the real mailbox ------------------------------------------------------------------------


def _run(arrivals: list[tuple[int, str, str]]) -> dict[str, Any]:
    """Drive one request through the pure mailbox (request at t=1000) and return its decision record."""
    mb: mbx.Mailbox | None = None
    now = 1000
    timeline = sorted([(1000, "request", "", "")] + [(t, "score", m, s) for t, m, s in arrivals])
    decisions: list[dict[str, Any]] = []

    def apply(step: mbx.Step) -> None:
        nonlocal mb
        mb = step.mailbox
        decisions.extend(o.record for o in step.outputs if o.kind == mbx.DECISION)

    def fire_until(t: int) -> None:
        while mb is not None and mb.wake_at_ms is not None and mb.wake_at_ms <= t:
            apply(mbx.on_timer(mb, POLICY, mb.wake_at_ms))

    for t, kind, model, status in timeline:
        fire_until(t - 1)
        now = t
        if kind == "request":
            req = Request("r1", "results", 999, {"x": 1}, None, None)
            apply(mbx.on_request(mb, req, "{}", Source("requests", 0, 0), POLICY, now))
        else:
            out = {"label": 1, "probability": 0.7} if status == "ok" else None
            err = None if status == "ok" else "failed"
            score = Score("r1", model, "v1", status, out, err, now, 1.0)
            apply(mbx.on_score(mb, score, Source("scores", 0, t), POLICY, now))
    fire_until(10**9)
    assert len(decisions) == 1
    return decisions[0]


def test_through_the_mailbox_incumbent_in_time_others_late_or_silent() -> None:
    d = _run([(1010, "gbt", "ok"), (1050, "logreg", "ok"), (1200, "base", "error")])
    c = model_metrics.model_counts(d, IDS)
    assert c["gbt"]["wins"] == 1 and "late" not in c["gbt"] and c["gbt"]["latency_ms_sum"] == 10
    assert c["logreg"]["late"] == 1  # the decision was made at 1010
    assert c["base"]["errors"] == 1 and c["base"]["late"] == 1
    assert c["tree"] == {"timeouts": 1}


def test_through_the_mailbox_backstop_wins_after_the_waits() -> None:
    d = _run([(1090, "tree", "ok")])
    c = model_metrics.model_counts(d, IDS)
    assert c["tree"]["wins"] == 1 and c["tree"][LE(100)] == 1 and LE(50) not in c["tree"]
    assert c["gbt"] == c["logreg"] == c["base"] == {"timeouts": 1}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=990, max_value=2500),
            st.sampled_from(IDS + ["ghost"]),
            st.sampled_from(["ok", "error"]),
        ),
        max_size=8,
    )
)
def test_invariants_for_any_arrivals(arrivals: list[tuple[int, str, str]]) -> None:
    d = _run(arrivals)
    total = model_metrics.totals([d], IDS)
    wins = sum(v["wins"] for v in total.values())
    assert wins == (0 if d["result"]["reason"] == "no_answer" else 1)
    for mid, v in total.items():
        assert v["scores"] + v["timeouts"] == 1, mid
        assert v["errors"] <= v["scores"] and v["late"] <= v["scores"]
        assert v[LE(None)] == v["scores"]
        bucket_values = [v[LE(b)] for b in names.MODEL_LATENCY_BUCKETS_MS] + [v[LE(None)]]
        assert bucket_values == sorted(bucket_values)  # cumulative
        if v["wins"]:
            assert d["result"]["model_id"] == mid and v["scores"] == 1


@pytest.mark.parametrize("n", [0, 3])
def test_totals_sum_over_decisions(n: int) -> None:
    d = _decision([_score("gbt", 1030)], winner="gbt")
    t = model_metrics.totals([d] * n, ["gbt"])
    assert t["gbt"]["wins"] == n and t["gbt"]["latency_ms_sum"] == 30 * n
    assert set(t["gbt"]) == set(names.MODEL_METRICS)


arrival_lists = st.lists(
    st.tuples(
        st.integers(min_value=990, max_value=8000),  # beyond the last bucket too
        st.sampled_from(IDS + ["ghost"]),
        st.sampled_from(["ok", "error"]),
    ),
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(st.lists(arrival_lists, max_size=4), st.integers(1, 3))
def test_the_tally_drains_exactly_what_model_counts_add_up_to(
    runs: list[list[tuple[int, str, str]]], drains: int
) -> None:
    """The adapter's cheap path (Tally, drained once a second) against the reference (model_counts)."""
    decisions = [_run(a) for a in runs]
    want: dict[tuple[str, str], int] = {}
    for d in decisions:
        for mid, counts in model_metrics.model_counts(d, IDS).items():
            for metric, n in counts.items():
                want[(mid, metric)] = want.get((mid, metric), 0) + n
    tally = model_metrics.Tally()
    got: dict[tuple[str, str], int] = {}
    for i, d in enumerate(decisions):
        tally.add(d, IDS)
        if i % drains == 0:  # drained at any point, the sums still add up
            for k, n in tally.drain().items():
                got[k] = got.get(k, 0) + n
    for k, n in tally.drain().items():
        got[k] = got.get(k, 0) + n
    assert got == want
    assert tally.drain() == {}

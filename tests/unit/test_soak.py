"""The soak's pure parts (harness/soak.py): the default rate, /proc parsing, window statistics, the lag,
each fault's gap, which repeats a restart explains, and the "levels off" verdict on synthetic series."""

from __future__ import annotations

import doctest
import math
import threading
from typing import Any

import pytest

from harness import faults, soak
from harness.faults import BadSent, Observed
from harness.soak import GROWS, LEVELS_OFF, TOO_SHORT, Sample, levels_off, outside
from udfs import names


def step(rate: float, p99: float, answered_share: float = 1.0) -> dict[str, Any]:
    sent = int(rate * 15)
    return {
        "rate": rate,
        "achieved_rate": rate,
        "sent": sent,
        "answered": int(sent * answered_share),
        "latency_ms": {"p99": p99},
    }


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(soak)
    assert result.attempted > 0 and result.failed == 0


# --- the rate -------------------------------------------------------------------------------------


def test_the_rate_is_half_the_highest_step_answered_in_budget_not_the_highest_answered() -> None:
    steps = [step(100, 14), step(250, 27), step(500, 405), step(1500, 2784)]  # all answered
    rate, why = soak.rate_from_bench(
        {"date": "2026-12-05 21:58", "stack": {"first_in_order": {"steps": steps}}}
    )
    assert rate == 125.0
    assert "half of 250/s" in why and "2026-12-05 21:58" in why


def test_a_step_with_requests_unanswered_does_not_count() -> None:
    steps = [step(100, 14), step(250, 27, answered_share=0.9)]
    assert soak.rate_from_bench({"stack": {"first_in_order": {"steps": steps}}})[0] == 50.0


@pytest.mark.parametrize(
    "bench",
    [None, {}, {"stack": {}}, {"stack": {"first_in_order": {"steps": [step(25, 300)]}}}],
)
def test_without_a_sustained_rate_the_fallback_is_used(bench: dict[str, Any] | None) -> None:
    rate, why = soak.rate_from_bench(bench)
    assert rate == soak.FALLBACK_RATE and why.startswith("fallback")


# --- /proc ----------------------------------------------------------------------------------------


def test_rss_and_cpu_are_read_from_proc_texts() -> None:
    status = "Name:\tjava\nVmPeak:\t 9000 kB\nVmRSS:\t  123456 kB\nThreads:\t80\n"
    assert soak.parse_rss_kb(status) == 123456
    assert soak.parse_rss_kb("Name:\tkthreadd\nThreads:\t1\n") is None
    # The command name may hold spaces and ')': fields are counted after the last one.
    stat = "4242 (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 80 0 1000 0 0"
    assert soak.parse_cpu_ticks(stat) == 325


def test_usage_by_role_sums_pids_and_counts_cpu_only_over_a_whole_window() -> None:
    pids = {"broker": [1], "taskmanagers (standby)": [2, 3], "runner gbt": [4], "gone": [9]}
    now = {1: (512 * 1024, 300), 2: (100 * 1024, 50), 3: (200 * 1024, 80), 4: (50 * 1024, 10)}
    before = {1: 100, 2: 40, 3: 60}  # 4 started within the window
    rss, cpu = soak.by_role(pids, now, before, dt_s=10.0, ticks_per_s=100.0)
    assert rss == {"broker": 512.0, "taskmanagers (standby)": 300.0, "runner gbt": 50.0, "gone": None}
    assert cpu == {"broker": 20.0, "taskmanagers (standby)": 3.0, "runner gbt": None, "gone": None}


# --- lag, windows, faults -------------------------------------------------------------------------


def test_lag_counts_from_the_commit_or_from_the_low_mark_without_one() -> None:
    assert soak.lag_of({0: 90, 1: 40}, {0: (0, 100), 1: (0, 40)}) == 10
    assert soak.lag_of({0: -1001}, {0: (5, 25)}) == 20  # librdkafka's OFFSET_INVALID: nothing committed
    assert soak.lag_of({}, {0: (0, 7)}) == 7
    assert soak.lag_of({0: 12}, {0: (0, 10)}) == 0  # a commit seen before the end offset


def test_window_stats_rate_and_percentiles() -> None:
    w = soak.window_stats([float(v) for v in range(1, 101)], 10.0)
    assert (w.answers, w.answers_per_s, w.p50_ms, w.p99_ms) == (100, 10.0, 50.5, 99.0)
    empty = soak.window_stats([], 10.0)
    assert (empty.answers, empty.answers_per_s, empty.p50_ms, empty.p99_ms) == (0, 0.0, None, None)


def test_outside_leaves_out_the_warm_up_and_the_time_after_each_fault() -> None:
    times = [10.0 * i for i in range(1, 15)]  # 10 .. 140 s
    # A fault injected at 50 s (returned at once), another from 95 s to 105 s.
    keep = outside(times, [(50.0, 50.0), (95.0, 105.0)], after_s=25.0, warmup_s=30.0)
    assert [t for t, k in zip(times, keep, strict=True) if k] == [30.0, 40.0, 80.0, 90.0, 130.0, 140.0]


def test_fault_window_recovery_longest_gap_and_requests_sent_while_down() -> None:
    sent = {f"r{i}": 1000.0 * i for i in range(10)}  # one a second
    # The fault at 3.5 s; nothing answered from 3.5 s to 7.2 s, then everything sent meanwhile.
    first = {f"r{i}": 1000.0 * i + 10 for i in range(4)} | {f"r{i}": 7200.0 + i for i in range(4, 10)}
    answers = sorted([*first.values(), 7300.0])  # one repeated answer too
    w = soak.fault_window(3500.0, 9500.0, sent, first, answers)
    assert w["recovery_s"] == 3.7  # 3.5 s -> 7.204 s, in hundredths
    assert w["longest_gap_s"] == 3.7  # the same stretch: longer than 7.3 s -> the window's end
    assert w["sent_while_down"] == 4  # r4 .. r7, sent before 7.204 s


def test_a_fault_never_recovered_from_is_one_gap_to_the_end() -> None:
    sent = {"a": 0.0, "b": 2000.0}
    w = soak.fault_window(1000.0, 5000.0, sent, {"a": 10.0}, [10.0])
    assert w == {"recovery_s": None, "longest_gap_s": 4.0, "sent_while_down": 1}


def test_repeats_are_explained_only_around_a_job_restart() -> None:
    # A TaskManager kill at 100 s, answers again at 106 s; a broker restart at 300 s that failed the job
    # at 340 s, after the answers came back at 309 s; a restart on its own at 600 s.
    windows = soak.replay_windows(
        [(100_000.0, 106_000.0, 300_000.0), (300_000.0, 309_000.0, 500_000.0)], [340_000.0, 600_000.0]
    )
    before, after = soak.REPLAY_BEFORE_S * 1000, soak.REPLAY_AFTER_S * 1000
    assert windows == [
        (100_000.0 - before, 106_000.0 + after),
        (300_000.0 - before, 340_000.0 + after),
        (600_000.0 - before, 600_000.0 + after),
    ]
    sent = [95_000.0, 115_000.0, 200_000.0, 330_000.0, 599_000.0, 800_000.0]
    assert soak.repeats_outside(sent, windows) == [200_000.0, 800_000.0]


def test_a_fault_that_never_recovered_covers_its_own_moment() -> None:
    assert soak.replay_windows([(1000.0, None, 5000.0)], []) == [
        (1000.0 - soak.REPLAY_BEFORE_S * 1000, 1000.0 + soak.REPLAY_AFTER_S * 1000)
    ]


# --- levels off -----------------------------------------------------------------------------------


def test_a_growing_series_grows() -> None:
    leak = [1000.0 + 10 * i for i in range(90)]  # 10 MB per sample
    level = levels_off(leak, slack=32.0)
    assert level.verdict == GROWS and not level.ok


def test_a_flat_noisy_series_levels_off() -> None:
    flat = [800.0 + 15 * math.sin(i * 1.7) for i in range(90)]
    level = levels_off(flat, slack=32.0)
    assert level.verdict == LEVELS_OFF and level.ok


def test_a_sawtooth_from_gc_or_checkpoints_levels_off() -> None:
    saw = [500.0 + 50 * (i % 7) for i in range(90)]  # climbs 300 MB, drops, again
    assert levels_off(saw).verdict == LEVELS_OFF


def test_growth_in_the_first_third_then_a_plateau_levels_off() -> None:
    warm = [min(1200.0, 400.0 + 30 * i) for i in range(90)]  # a JVM's heap, then flat
    assert levels_off(warm, slack=32.0).verdict == LEVELS_OFF


def test_a_slow_steady_climb_is_caught_though_within_the_tolerance() -> None:
    creep = [1000.0 + 1.5 * i for i in range(90)]  # the last third 4 % above the middle, all of it
    level = levels_off(creep, slack=10.0)
    assert level.verdict == GROWS and "every sample" in level.why


def test_a_higher_peak_in_the_last_third_grows() -> None:
    values = [100.0] * 60 + [100.0] * 20 + [180.0] + [100.0] * 9
    assert levels_off(values).verdict == GROWS
    assert levels_off(values, slack=100.0).verdict == LEVELS_OFF


def test_slack_keeps_a_series_near_zero_from_failing_on_a_few_records() -> None:
    lag = [0.0, 3.0, 0.0, 1.0] * 20 + [9.0] * 5
    assert levels_off(lag).verdict == GROWS
    assert levels_off(lag, slack=1250.0).verdict == LEVELS_OFF


def test_too_few_samples_is_no_verdict() -> None:
    assert levels_off([1.0, 2.0, 3.0]).verdict == TOO_SHORT
    assert levels_off([None] * 20 + [1.0]).verdict == TOO_SHORT
    assert levels_off([1.0] * 20, [False] * 20).verdict == TOO_SHORT


def test_none_and_left_out_samples_do_not_count() -> None:
    values: list[float | None] = [100.0] * 60 + [None, 900.0] * 3 + [100.0] * 3
    keep = [v != 900.0 for v in values]  # the 900s came right after a fault
    assert levels_off(values, keep).verdict == LEVELS_OFF
    assert levels_off(values).verdict == GROWS


def test_state_is_judged_once_its_retention_has_filled_it() -> None:
    # Tombstones for 600 s at 125/s: the checkpoint grows for 600 s, then is bounded.
    times = [10.0 * i for i in range(1, 181)]  # 30 min
    state = [min(t, 600.0) * 125 * 0.1 for t in times]  # KB
    assert levels_off(state, outside(times, [], 60.0, 660.0)).verdict == LEVELS_OFF
    short = times[:24]  # a 4-minute run: still filling, and too short to say
    assert levels_off(state[:24]).verdict == GROWS
    assert levels_off(state[:24], outside(short, [], 60.0, 660.0)).verdict == TOO_SHORT


def test_thirds_summary() -> None:
    assert soak.thirds_summary([1.0, 2.0, 3.0, None, 10.0, 20.0, 30.0, 5.0, 6.0, 7.0]) == {
        "start": 2.0,
        "middle": 20.0,
        "end": 6.0,
        "max": 30.0,
    }
    assert soak.thirds_summary([None]) == {"start": None, "middle": None, "end": None, "max": None}
    assert soak.thirds_summary([4.0]) == {"start": 4.0, "middle": 4.0, "end": 4.0, "max": 4.0}


def sample(t: float, rss: dict[str, float], **kw: Any) -> Sample:
    base: dict[str, Any] = {
        "t_s": t,
        "phase": "traffic",
        "sent": 0,
        "answered": 0,
        "answers_per_s": 125.0,
        "p50_ms": 10.0,
        "p99_ms": 30.0,
        "state_bytes": 4 << 20,
        "lag": {"requests": 100, "scores": 400},
        "rss_mb": rss,
        "cpu_percent": dict.fromkeys(rss, 10.0),
    }
    return Sample(**(base | kw))


def test_verdicts_judge_memory_state_and_lag_but_not_the_standby_or_the_drain() -> None:
    samples = [
        sample(10.0 * i, {"broker": 600.0, "runner gbt": 100.0 + 5 * i, soak.STANDBY: 300.0 + 20 * i})
        for i in range(1, 181)
    ] + [sample(1810.0 + 10 * i, {"broker": 5000.0}, phase="drain") for i in range(5)]
    out = soak.verdicts(
        samples,
        fault_s=[(t, t + 20.0) for t in (300.0, 600.0, 900.0, 1200.0, 1500.0)],
        rate=125.0,
        retention_s=600.0,
    )
    assert "verdict" not in out["RSS MB: broker"]  # judged by its heap after GC, which it did not report
    assert out["RSS MB: broker"]["max"] == 600.0  # the drain's 5000 MB is not counted
    assert out["RSS MB: runner gbt"]["verdict"] == GROWS
    assert "verdict" not in out[f"RSS MB: {soak.STANDBY}"]
    assert out["checkpoint KB"]["verdict"] == LEVELS_OFF
    assert out["lag: requests"]["verdict"] == out["lag: scores"]["verdict"] == LEVELS_OFF
    assert "verdict" not in out["p99 ms"] and out["answers/s"]["end"] == 125.0


JSTAT_GC = """\
 S0C    S1C    S0U    S1U      EC       EU        OC         OU       MC     MU    CCSC   CCSU   YGC     YGCT    FGC    FGCT     CGC    CGCT     GCT
   0.0    0.0    0.0    0.0  26624.0      0.0   235520.0   102400.0  71040.0 69632.0 8576.0 7800.5     40    0.321     2    0.120     4    0.010    0.451
"""


def test_jstat_gc_gives_the_heap_used_and_the_metaspace_in_mb() -> None:
    assert soak.parse_jstat_gc(JSTAT_GC) == (100.0, 68.0)
    with pytest.raises(ValueError, match="not jstat"):
        soak.parse_jstat_gc("12345 not found")


def test_flink_memory_sizes_and_the_process_bounds_from_flink_conf() -> None:
    assert [soak.size_mb(t) for t in ("1600m", "1728mb", "1.5g", "2 GB", "512k", "1048576")] == [
        1600.0,
        1728.0,
        1536.0,
        2048.0,
        0.5,
        1.0,
    ]
    bounds = soak.rss_bounds(
        {"jobmanager.memory.process.size": "1600m", "taskmanager.memory.process.size": "1728m"}
    )
    assert bounds == {"jobmanager": 1600.0, soak.JOB_TM: 1728.0}
    assert soak.rss_bounds({}) == {}


def test_a_jvm_is_judged_by_its_heap_after_gc_and_its_rss_against_its_configured_size() -> None:
    """JobManager RSS climbing within its bound, heap after GC flat: no leak. The TaskManager's heap
    after GC climbing: a leak, though its RSS is within its bound. RSS past the bound: over it."""
    samples = []
    for i in range(1, 181):
        heap = {} if i % 6 else {"jobmanager": 80.0 + (i % 12), soak.JOB_TM: 100.0 + i, "broker": 60.0}
        meta = {} if i % 6 else {"jobmanager": 70.0, soak.JOB_TM: 90.0, "broker": 50.0}
        rss = {"jobmanager": 500.0 + 2 * i, soak.JOB_TM: 900.0, "runner gbt": 100.0}
        samples.append(sample(10.0 * i, rss, heap_mb=heap, metaspace_mb=meta))
    bounds = {"jobmanager": 1600.0, soak.JOB_TM: 1728.0}
    out = soak.verdicts(samples, fault_s=[], rate=125.0, retention_s=600.0, bounds_mb=bounds)
    assert out["RSS MB: jobmanager"]["verdict"] == soak.BOUNDED
    assert out["heap after GC MB: jobmanager"]["verdict"] == LEVELS_OFF
    assert out["metaspace MB: jobmanager"]["verdict"] == LEVELS_OFF
    assert out["heap after GC MB: broker"]["verdict"] == LEVELS_OFF
    assert out[f"heap after GC MB: {soak.JOB_TM}"]["verdict"] == GROWS
    assert out[f"RSS MB: {soak.JOB_TM}"]["verdict"] == LEVELS_OFF  # flat, and within its bound
    assert "1728" in out[f"RSS MB: {soak.JOB_TM}"]["why"]
    over = soak.verdicts(samples, fault_s=[], rate=125.0, retention_s=600.0, bounds_mb={"jobmanager": 700.0})
    assert over["RSS MB: jobmanager"]["verdict"] == soak.OVER_BOUND
    assert "860 MB > its configured 700 MB" in over["RSS MB: jobmanager"]["why"]


# --- what the verifier keeps ----------------------------------------------------------------------


def full_result(rid: str, model: str, label: int) -> dict[str, Any]:
    return {
        "request_id": rid,
        "model_id": model,
        "output": {"label": label, "probability": 0.7},
        "reason": "preferred",
        "decided_at_ms": 1,
        "policy_version": 1,
        "trigger": "score",
    }


def test_slim_records_give_the_verifier_the_same_verdict() -> None:
    sent = {f"s-{i}": 1000.0 * i for i in range(4)}
    results = [full_result(f"s-{i}", "gbt", 1) for i in range(4)] + [full_result("s-2", "tree", 0)]
    decisions = [
        {
            "request_id": f"s-{i}",
            "result": full_result(f"s-{i}", "gbt", 1),
            "scores": [{"model_id": "gbt", "late": i == 1, "output": {"label": 1}, "latency_ms": 3}] * 2,
        }
        for i in range(4)
    ]
    dead = [{"source_topic": "requests", "partition": 0, "offset": 7, "reason": "not_json", "raw": "x" * 99}]
    bad = [BadSent("requests", 0, 7, "not_json")]

    def run(keep: Any) -> dict[str, Any]:
        return faults.verify(
            scenario="soak",
            delivery=names.DELIVERY_AT_LEAST_ONCE,
            sent=sent,
            results=[Observed(5000.0, keep("results", r)) for r in results],
            decisions=[Observed(6000.0, keep("decisions", d)) for d in decisions],
            dead_letters=[Observed(7000.0, keep("dead-letters", d)) for d in dead],
            bad=bad,
            job_restarted=True,
        ).to_dict()

    full, slim = run(lambda role, r: r), run(soak.slim)
    # The same counts and problems; a different answer is shown with its output as JSON text.
    assert [d["request_id"] for d in slim.pop("different_sample")] == [
        d["request_id"] for d in full.pop("different_sample")
    ]
    assert {k: v for k, v in slim.items() if k != "problems"} == {
        k: v for k, v in full.items() if k != "problems"
    }
    assert [p.split(",")[0] for p in slim["problems"]] == [p.split(",")[0] for p in full["problems"]]
    assert len(slim["problems"]) == 1 and "two different results" in slim["problems"][0]
    assert (
        slim["duplicated_different"] == 1
        and slim["late_scores"] == 2
        and slim["malformed_dead_lettered"] == 1
    )
    assert set(soak.slim("results", results[0])) == {"request_id", "model_id", "output", "reason"}


def test_a_slim_output_is_canonical_so_key_order_does_not_make_another_answer() -> None:
    a = soak.slim("results", {"request_id": "x", "output": {"label": 1, "probability": 0.5}})
    b = soak.slim("results", {"request_id": "x", "output": {"probability": 0.5, "label": 1}})
    c = soak.slim("results", {"request_id": "x", "output": {"probability": 0.25, "label": 1}})
    assert faults.answer_of(a) == faults.answer_of(b) != faults.answer_of(c)
    assert soak.slim("results", {"request_id": "x", "output": None})["output"] is None


def test_the_soaks_traffic_ignores_a_faults_own_plan() -> None:
    traffic = soak.SoakTraffic.__new__(soak.SoakTraffic)  # the plan only: no producer, no thread
    traffic.lock, traffic.rate, traffic.count = threading.Lock(), 100.0, 1000
    traffic.sent = {f"r{i}": 0.0 for i in range(900)}
    traffic.send_for(10.0)  # runner-crash's "10 s more" must not cut the soak short
    assert traffic.count == 1000
    traffic.at_least(0.5)
    assert traffic.count == 1000
    traffic.at_least(30.0)
    assert traffic.count == 900 + 3000
    traffic.stop_now()
    assert traffic.count == 900


# --- the report -----------------------------------------------------------------------------------


def test_markdown_shows_faults_series_and_verdicts() -> None:
    result: dict[str, Any] = {
        "date": "2026-12-06 10:00",
        "commit": "abc1234",
        "machine": {"cpus": 2},
        "minutes": 30.0,
        "rate": 125.0,
        "rate_source": "half of 250/s",
        "delivery": names.DELIVERY_AT_LEAST_ONCE,
        "fault_every": 5.0,
        "faults": list(soak.DEFAULT_FAULTS),
        "invariants": {"sent": 225000, "answered": 225000, "lost": 0, "duplicated_same": 12},
        "repeats_away_from_restarts": 0,
        "faults_injected": [
            {
                "at_s": 300.0,
                "fault": "taskmanager-kill",
                "took_s": 1.2,
                "recovery_s": 5.1,
                "longest_gap_s": 5.7,
            }
        ],
        "series": {
            "RSS MB: broker": {
                "start": 600.0,
                "middle": 610.0,
                "end": 612.0,
                "max": 640.0,
                "verdict": LEVELS_OFF,
                "why": "x",
            },
            "p99 ms": {"start": 30.0, "middle": 31.0, "end": None, "max": 900.0},
        },
        "passed": True,
        "problems": [],
    }
    md = soak.markdown(result)
    assert "| 5.0 min | taskmanager-kill | 1.2 | 5.1 | 5.7 |" in md
    assert "| RSS MB: broker | 600.0 | 610.0 | 612.0 | 640.0 | levels off: x |" in md
    assert "| p99 ms | 30.0 | 31.0 | - | 900.0 |  |" in md
    assert "**pass**" in md
    failed = soak.markdown(
        result | {"passed": False, "problems": ["still growing: lag: scores"], "series": {}}
    )
    assert "**FAIL**: still growing: lag: scores" in failed

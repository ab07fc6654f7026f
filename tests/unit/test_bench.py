"""The benchmark's bookkeeping: saturation, sustained rate, targets, the Markdown table, state size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import bench, bench_kit


def _step(
    rate: float, p99: float | None, answered: int = 100, achieved: float | None = None
) -> dict[str, Any]:
    return {
        "rate": rate,
        "achieved_rate": rate if achieved is None else achieved,
        "sent": 100,
        "answered": answered,
        "latency_ms": {"p50": None if p99 is None else p99 / 2, "p99": p99, "p99.9": p99},
        "deadline_misses": 0,
        "by_reason": {"preferred": answered},
        "cpu_percent": {"job": 50, "broker": 20, "loadgen": 10, "runner-gbt": 5, "runner-tree": 5},
        "state_bytes": 2048,
    }


def test_saturated_when_answers_are_missing_the_rate_is_not_reached_or_p99_explodes() -> None:
    assert not bench.saturated(_step(100, 50))
    assert bench.saturated(_step(100, 50, answered=98))
    assert bench.saturated(_step(100, 50, achieved=80))
    assert bench.saturated(_step(100, 20 * bench.BUDGET_MS + 1))
    assert bench.saturated(_step(100, None))


def test_sustained_rate_is_the_highest_rate_within_budget() -> None:
    steps = [_step(100, 30), _step(250, 90), _step(500, 150), _step(1000, 60, answered=50)]
    assert bench.sustained_rate(steps) == 250
    assert bench.sustained_rate([_step(100, 101)]) is None


def _by_start(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets by their first three words."""
    return {" ".join(t["target"].split()[:3]): t for t in bench.targets(result)}


def test_targets_report_each_goal_against_the_measured_steps() -> None:
    steps = [_step(250, 24), _step(833, 80), _step(1000, 30), _step(2500, 400)]
    floor = [
        {"rate": 833.0, "linger_ms": 1, "latency_ms": {"p50": 10.0, "p99": 20.0}},
        {"rate": 250.0, "linger_ms": 0, "latency_ms": {"p50": 1.0, "p99": 1.0}},  # another linger: not it
        {"rate": 250.0, "linger_ms": 1, "latency_ms": {"p50": 4.0, "p99": 12.0}},
    ]
    wfa = [_step(250, 90), _step(833, 3000, answered=50)]
    result = {
        "stack": {"first_in_order": {"steps": steps, "idle": {"seconds": 20, "cpu_percent": {"job": 3,
                  "broker": 6}}}, "wait_for_all": {"steps": wfa}},
        "kafka_floor": floor,
        "job_capacity": {"capacity": {"records_per_s": 9_999}},
    }  # fmt: skip
    t = _by_start(result)
    assert (
        t["833 requests/s sustained"]["met"]
        and t["833 requests/s sustained"]["measured"] == "p99 80 ms at 833/s"
    )
    # Every step's stack used 90 % of a core, whatever its rate: no cost per request, 0.9 cores at
    # 2,500/s (its p99 over the budget, but not saturated: the line goes through all four).
    assert not t["the highest rate"]["met"] and t["the highest rate"]["measured"] == (
        "1000 requests/s; the stack's CPU, 90 % of a core plus 0 µs per request (a line through the 4 "
        "steps that kept up), puts 2,500/s at 0.9 cores"
    )
    p250 = t["p50 <= 10"]
    assert p250["measured"] == "p50 12 ms, p99 24 ms" and not p250["met"]  # p50 (p99 / 2) over 10 ms
    ratio = t["rendezvous p99 <="]
    assert ratio["measured"] == "2.0x at 250/s, 4.0x at 833/s" and not ratio["met"]
    assert t["the job alone"]["measured"] == "9,999 records/s" and not t["the job alone"]["met"]
    assert (
        t["idle: every process"]["measured"] == "highest 6 % (broker)" and not t["idle: every process"]["met"]
    )
    # Compared only where neither stack saturated: 833/s is out (wait-for-all lost half its answers).
    assert t["wait-for-all against first_in_order,"]["measured"] == "90 vs 24 at 250/s"


def test_the_floor_ratios_pair_each_unsaturated_step_with_the_floor_at_its_rate() -> None:
    result = {
        "stack": {"first_in_order": {"steps": [_step(100, 30), _step(250, 60, answered=10)]}},
        "kafka_floor": [
            {
                "rate": r,
                "linger_ms": 1,
                "received": 10,
                "count": 10,
                "latency_ms": {"p50": 3.0, "p99": 10.0, "p99.9": 11.0},
            }
            for r in (100.0, 250.0)
        ],  # fmt: skip
    }
    (r,) = bench.floor_ratios(result)  # 250/s saturated: no ratio
    assert (r["rate"], r["p50_ratio"], r["p99_ratio"]) == (100, 5.0, 3.0)
    result |= {"date": "d", "machine": {"cpus": 2, "platform": "linux", "python": "3.11"}}
    result["stack"]["first_in_order"]["policy"] = "policies/default.yaml"
    assert "| 100 | 15 (3.0) | 5.0x | 30 (10) | 3.0x |" in bench.markdown(result)


def test_the_floor_of_a_rate_is_its_run_with_the_lowest_p99() -> None:
    """A floor run spoiled by a busy moment (p99 248 ms at 833/s, above the rendezvous' own) is not
    the floor: of the runs at the stack's linger the ratio takes the best; other lingers are not used."""

    def floor_run(linger: int, p99: float) -> dict[str, Any]:
        lat = {"p50": 4.0, "p99": p99, "p99.9": p99}
        return {"rate": 833.0, "linger_ms": linger, "received": 10, "count": 10, "latency_ms": lat}

    result = {
        "stack": {"first_in_order": {"steps": [_step(833, 30)]}},
        "kafka_floor": [floor_run(0, 1.0), floor_run(1, 248.0), floor_run(1, 10.0), floor_run(5, 2.0)],
    }
    (r,) = bench.floor_ratios(result)
    assert (r["floor_p99_ms"], r["p99_ratio"]) == (10.0, 3.0)
    result["kafka_floor"][2]["latency_ms"]["p99"] = 300.0
    (r,) = bench.floor_ratios(result)
    assert r["floor_p99_ms"] == 248.0


def test_the_floor_runs_twice_at_the_stacks_linger_once_at_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[float, int]] = []
    broker = type("B", (), {"bootstrap": "b:1", "stop": lambda self: calls.append((0.0, -1))})()
    monkeypatch.setattr(bench, "_fresh_broker", lambda _name: broker)
    monkeypatch.setattr(bench, "say", lambda _text: None)

    def three_hops(_bootstrap: str, rate: float, _count: int, linger: int) -> dict[str, Any]:
        calls.append((rate, linger))
        return {"rate": rate, "linger_ms": linger}

    monkeypatch.setattr(bench, "_three_hops", three_hops)
    runs = bench.kafka_floor([100.0, 833.0], 1.0)
    assert calls == [
        (100.0, 0), (833.0, 0), (100.0, 1), (100.0, 1), (833.0, 1), (833.0, 1), (100.0, 5), (833.0, 5),
        (0.0, -1),  # the broker stopped
    ]  # fmt: skip
    assert len(runs) == 8


def test_targets_say_when_a_rate_was_never_reached() -> None:
    result = {"stack": {"first_in_order": {"steps": [_step(100, 30)]}}}
    t = _by_start(result)
    assert t["833 requests/s sustained"]["measured"] == "833/s not reached"
    assert not t["833 requests/s sustained"]["met"]
    assert t["rendezvous p99 <="]["measured"] == "no common rate" and not t["rendezvous p99 <="]["met"]
    assert t["p50 <= 10"]["measured"] == "250/s not reached" and not t["p50 <= 10"]["met"]
    assert "the job alone" not in t and "idle: every process" not in t  # parts not run: no target


def test_markdown_has_a_row_per_step_and_the_targets() -> None:
    result = {
        "date": "2026-11-22 23:00",
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "stack": {
            "first_in_order": {"policy": "policies/default.yaml", "steps": [_step(100, 30), _step(250, 60)]}
        },
    }
    result["targets"] = bench.targets(result)
    md = bench.markdown(result)
    # A step of an older results file (no legs, no first answer) shows '-' in those columns.
    assert "| 100 | 100 | 100/100 | 15 | 30 | 30 | 0 | 0 | - | - | 2 | 50 / 20 / 10 / 10 |" in md
    assert "| 250 |" in md
    assert "Sustained with p99 <= 100 ms: 250 requests/s." in md
    assert "| 833 requests/s sustained with p99 <= 100 ms | 833/s not reached | no |" in md
    assert "Warm-up before the ladder" not in md  # none recorded


def test_markdown_says_how_long_the_warm_up_ran_and_how_busy_the_jit_still_was() -> None:
    warmup = {"seconds": 76.4, "rate": 100.0, "last_jit_percent": {"job": 6.4, "broker": None}}
    run = {"policy": "policies/default.yaml", "steps": [_step(100, 30)], "warmup": warmup}
    md = bench.markdown({"date": "d", "machine": {"cpus": 2, "platform": "p", "python": "3.11"},
                         "stack": {"first_in_order": run}})  # fmt: skip
    assert (
        "Warm-up before the ladder: 76 s at 100/s, until the JIT compilers were quiet "
        "(last round: job 6 %, broker ? % of a core)."
    ) in md


def test_checkpoint_bytes_sums_the_newest_completed_checkpoint(tmp_path: Path) -> None:
    assert bench.checkpoint_bytes(tmp_path) is None
    old = tmp_path / "checkpoints" / "job" / "chk-1"
    new = tmp_path / "checkpoints" / "job" / "chk-2"
    for d, size in ((old, 10), (new, 300)):
        d.mkdir(parents=True)
        (d / "_metadata").write_bytes(b"m" * 5)
        (d / "state").write_bytes(b"s" * size)
    import os

    os.utime(old / "_metadata", (1, 1))
    assert bench.checkpoint_bytes(tmp_path) == 305
    (tmp_path / "checkpoints" / "job" / "chk-3").mkdir()  # in progress: no _metadata yet
    assert bench.checkpoint_bytes(tmp_path) == 305


def test_cpu_meter_does_not_count_this_process_children_as_its_own() -> None:
    """The broker, runners and job are children of the bench process: 'loadgen' must be this one only."""
    import os
    import subprocess
    import sys
    import time

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.3)
        meter = bench_kit.CpuMeter({"me": os.getpid(), "child": busy.pid})
        time.sleep(1.0)  # the child spins, this process sleeps
        cpu = meter.percent()
    finally:
        busy.kill()
        busy.wait()
    # The child spun for the whole window (how much CPU it got depends on the machine's load); the
    # parent only slept, so counting the child as the parent's would show up as me ~ child.
    assert cpu["child"] > 10, cpu
    assert cpu["me"] < cpu["child"] / 2, cpu


def test_markdown_reports_tuning_and_crossing_rows_and_failures() -> None:
    result: dict[str, Any] = {
        "date": "2026-11-22 23:00",
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "tuning": {
            "shipped": {
                "probe": {"latency_ms": {"p50": 12.0, "p99": 80.0}, "job_cpu_percent": 60},
                "capacity": {"records_per_s": 900},
                "state_bytes": 4096,
            },
            "broken": {"error": "the job exited"},
        },
        "crossing": {
            "typed": {"variant": "typed", "seconds": {"20000": 10.0, "120000": 30.0}, "us_per_record": 200.0},
            "pickled": {"variant": "pickled", "error": ["boom"]},
        },
    }
    md = bench.markdown(result)
    assert "| shipped | 12 | 80 | 60 | 900 | 4 |" in md
    assert "| broken | failed: the job exited |" in md
    assert "| typed | 200.0 | 10.0 / 30.0 |" in md
    assert "| pickled | failed: boom |" in md


def test_markdown_reports_each_results_delivery_and_failures() -> None:
    probe = {
        "rate": 25.0,
        "sent": 750,
        "answered": 750,
        "latency_ms": {"p50": 80.0, "p99": 300.0, "p99.9": 400.0},
    }
    result = {
        "date": "d",
        "machine": {"cpus": 2, "platform": "p", "python": "3.11"},
        "delivery": {
            "at-least-once": {"args": [], "probe": probe},
            "exactly-once, checkpoint 10 s (shipped)": {"args": [], "error": "the job did not answer"},
        },
    }
    text = bench.markdown(result)
    assert "| at-least-once | 25 | 750/750 | 80 | 300 | 400 |" in text
    assert "| exactly-once, checkpoint 10 s (shipped) | failed: the job did not answer |" in text


def test_markdown_reports_the_clock_cases_and_the_state_samples() -> None:
    probe = {
        "rate": 25.0,
        "sent": 750,
        "answered": 750,
        "latency_ms": {"p50": 48.0, "p99": 70.0, "p99.9": 90.0},
        "job_cpu_percent": 30,
    }
    result = {
        "date": "d",
        "machine": {"cpus": 2, "platform": "p", "python": "3.11"},
        "clock": {
            "log": {"args": ["--clock", "log"], "cases": {"wait runs out": probe}},
            "local": {"args": ["--clock", "local"], "error": "the job did not answer"},
        },
        "state": {
            "rate": 50.0,
            "retention_ms": 120_000,
            "samples": [
                {"elapsed_s": 30, "sent": 1500, "answered": 1500, "state_bytes": 300 * 1024, "p99_ms": 20.0},
                {"elapsed_s": 60, "sent": 3000, "answered": 2999, "state_bytes": None, "p99_ms": None},
            ],
        },
    }
    text = bench.markdown(result)
    assert "| log | wait runs out | 750/750 | 48 | 70 | 90 | 30 |" in text
    assert "| local | failed: the job did not answer |" in text
    assert "tombstones kept 120 s" in text
    assert "| 30 | 1500 | 1500 | 300 | 20 |" in text
    assert "| 60 | 3000 | 2999 | - | - |" in text


def test_end_to_end_latency_output_is_parsed() -> None:
    """org.apache.kafka.tools.EndToEndLatency (kafka-tools 3.9.2) prints progress, the mean, then
    whole-millisecond percentiles."""
    out = "0\t41.737069000000005\n1000\t0.91\nAvg latency: 1.2839 ms\nPercentiles: 50th = 1, 99th = 4, 99.9th = 12\n"
    assert bench.parse_end_to_end_latency(out) == {
        "latency_ms": {"p50": 1.0, "p99": 4.0, "p99.9": 12.0, "mean": 1.2839}
    }
    import pytest

    with pytest.raises(RuntimeError, match="no percentiles"):
        bench.parse_end_to_end_latency("USAGE: java org.apache.kafka.tools.EndToEndLatency broker_list ...")


def test_markdown_reports_each_clients_hop_and_failures() -> None:
    lat = {"p50": 0.531, "p99": 4.7, "p99.9": 9.0, "mean": 0.8}
    result = {
        "date": "d",
        "machine": {"cpus": 2, "platform": "p", "python": "3.11"},
        "clients": {
            "count": 2000,
            "warmup": 200,
            "record_bytes": 200,
            "runs": {
                "confluent-kafka": {
                    "client": "confluent-kafka 2.16.1",
                    "latency_ms": lat,
                    "cpu_us_per_hop": 140,
                },
                "kafka-python": {"error": "kafka-python is not installed"},
                "java": {"client": "EndToEndLatency (Java)", "latency_ms": lat | {"p50": 1.0}},
            },
        },
    }
    md = bench.markdown(result)
    assert "## One Kafka hop per client (2000 round trips after 200, 200-byte records" in md
    assert "| confluent-kafka 2.16.1 | 0.53 | 4.70 | 9.00 | 0.80 | 140 |" in md
    assert "| kafka-python | failed: kafka-python is not installed |" in md
    assert "| EndToEndLatency (Java) | 1.00 | 4.70 | 9.00 | 0.80 | - |" in md


def test_the_clients_part_runs_by_default() -> None:
    assert "clients" in bench.DEFAULT_PARTS.split(",")


def test_a_tuning_override_is_a_job_flag_or_a_flink_setting() -> None:
    from jobs import rendezvous_job

    assert bench.job_args(["--sink-linger-ms=1", "pipeline.object-reuse=true"]) == [
        "--sink-linger-ms=1", "-D", "pipeline.object-reuse=true",
    ]  # fmt: skip
    policy = str(bench.BENCH_POLICY)
    for _, overrides in bench.TUNING_VARIANTS:  # every variant's arguments parse as the job's
        rendezvous_job.parse_args(
            ["--policy", policy, "--bootstrap", "127.0.0.1:9", *bench.job_args(overrides)]
        )


def test_markdown_shows_where_a_steps_tail_went_and_its_first_answer() -> None:
    step = _step(250, 40) | {
        "legs_ms": {
            "to the job": {"p99": 12.0},
            "in the job": {"p99": 7.5},
            "back to the client": {"p99": 3.25},
        },
        "first_answer_ms": 143.6,
    }
    result = {
        "date": "2026-12-05 20:00",
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "stack": {"first_in_order": {"policy": "policies/default.yaml", "steps": [step]}},
    }
    md = bench.markdown(result)
    assert "| 250 | 250 | 100/100 | 20 | 40 | 40 | 0 | 0 | 12 / 7.5 / 3.2 | 144 | 2 |" in md


def test_markdown_names_the_settings_a_stack_ladder_ran_with() -> None:
    run = {
        "policy": "policies/default.yaml",
        "steps": [_step(250, 40)],
        "job_overrides": ["execution.buffer-timeout.interval=0ms", "--sink-linger-ms=5"],
    }
    result = {
        "date": "2026-12-05 20:00",
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "stack": {"first_in_order": run},
    }
    md = bench.markdown(result)
    assert "The job with: `execution.buffer-timeout.interval=0ms`, `--sink-linger-ms=5`" in md
    del run["job_overrides"]
    assert "The job with:" not in bench.markdown(result)


def _led(rate: float, p99: float, lead_p99: float) -> dict[str, Any]:
    """A step with a lead-in: its first 10 s at the rate, measured apart."""
    return _step(rate, p99) | {
        "lead_in_s": 10.0,
        "lead_in_latency_ms": {"p50": lead_p99 / 4, "p99": lead_p99, "p99.9": lead_p99},
    }


def test_the_833_target_names_its_lead_in_and_the_ladder_lists_every_lead_in() -> None:
    steps = [_led(250, 12, 14), _led(833, 23, 226)]
    t = _by_start({"stack": {"first_in_order": {"steps": steps}}})
    assert t["833 requests/s sustained"]["measured"] == "p99 23 ms at 833/s (its first 10 s: p99 226 ms)"
    assert t["833 requests/s sustained"]["met"]  # the lead-in is shown, not judged
    lines = bench.lead_in_lines(steps)
    assert lines[0].startswith("Each step's first 10 s at its rate")
    assert "3.5 / 14 at 250/s, 56 / 226 at 833/s." in lines[0]
    assert bench.lead_in_lines([_step(250, 12)]) == []  # a run without lead-ins says nothing of them


def test_a_negative_lead_in_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--lead-in", "-1"])
    assert "--lead-in: seconds, 0 or more, got -1.0" in capsys.readouterr().err


def test_cpu_per_request_counts_every_process_of_the_stack_at_the_rate_it_achieved() -> None:
    step = _step(500, 30, achieved=400)  # 90 % of a core in all (job 50, broker 20, loadgen 10, runners 10)
    assert bench.cpu_us_per_request(step) == pytest.approx(2250.0)
    assert bench.cpu_us_per_request(step | {"achieved_rate": None}) is None
    assert bench.cpu_us_per_request(step | {"cpu_percent": {}}) is None
    run = {"policy": "policies/default.yaml", "steps": [step]}
    row = next(line for line in bench.stack_section("first_in_order", run) if line.startswith("| 500 |"))
    assert row.endswith("| 50 / 20 / 10 / 10 | 2,250 |")


def test_the_goal_is_met_without_a_bound_when_a_rate_at_or_over_it_holds() -> None:
    result = {"stack": {"first_in_order": {"steps": [_step(2500, 60)]}}}
    goal = _by_start(result)["the highest rate"]
    assert goal["met"] and goal["measured"] == "2500 requests/s"


def test_the_cpu_line_is_the_fixed_part_and_the_cost_of_one_more_request() -> None:
    def at(rate: float, cpu: int) -> dict[str, Any]:
        return _step(rate, 30) | {"cpu_percent": {"job": cpu}}

    # 10 % at rest plus 0.1 % of a core per request/s: 1,000 µs a request; 2,500/s needs 2.6 cores.
    steps = [at(100, 20), at(500, 60), at(1000, 110), _step(1500, 30, answered=50)]
    fixed, us, n = bench.cpu_line(steps) or (0.0, 0.0, 0)
    assert (fixed, us, n) == (pytest.approx(10.0), pytest.approx(1000.0), 3)  # the saturated step left out
    assert bench.cpu_line(steps[:1]) is None and bench.cpu_line([at(100, 20), at(100, 30)]) is None
    goal = _by_start({"stack": {"first_in_order": {"steps": steps}}})["the highest rate"]
    assert goal["measured"].endswith("puts 2,500/s at 2.6 cores")

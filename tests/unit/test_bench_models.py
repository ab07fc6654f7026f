"""The benchmark's many-models parts (``--only models``, ``models_stack``): their bookkeeping and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import bench, bench_kit
from runners.runner import _parse_args
from udfs.policy import load_policy

MANY_IDS = [m.id for m in load_policy(bench.MANY_MODELS_POLICY).models]


def test_the_models_part_runs_by_default_and_its_policy_has_the_counts_it_drains() -> None:
    assert "models" in bench.DEFAULT_PARTS.split(",") and "models_stack" not in bench.DEFAULT_PARTS
    counts = [int(x) for x in bench.MODEL_COUNTS.split(",")]
    assert max(counts) == len(MANY_IDS) == 20
    assert bench.parser().parse_args([]).models_counts == bench.MODEL_COUNTS


def test_drains_go_up_then_down() -> None:
    assert bench.count_order([4, 10, 20], 1) == [4, 10, 20]
    assert bench.count_order([4, 10, 20], 2) == [4, 10, 20, 20, 10, 4]
    assert bench.count_order([4, 20], 3) == [4, 20, 20, 4, 4, 20]


def test_fit_line_recovers_a_line_and_needs_two_different_x() -> None:
    a, b = bench.fit_line([(4, 220.0), (10, 400.0), (20, 700.0), (20, 700.0)]) or (None, None)
    assert a == pytest.approx(100) and b == pytest.approx(30)
    assert bench.fit_line([(4, 1.0), (4, 2.0)]) is None
    assert bench.fit_line([]) is None


def _drain(k: int, job: float | None, broker: float | None) -> dict[str, Any]:
    d: dict[str, Any] = {"scores_per_request": k, "records_per_s": 1000 * (k + 1), "results_per_s": 1000}
    if job is not None and broker is not None:
        d["cpu_us_per_request"] = {"job": job, "broker": broker}
    return d


def test_the_cost_per_extra_model_is_the_slope_over_the_drains() -> None:
    drains = [
        _drain(k, 100 + 30 * k + noise, 40 + 5 * k) for k, noise in ((4, 2), (10, -2), (20, 0), (4, -2))
    ]
    drains.append(_drain(10, None, None))  # a drain without CPU figures (the rate only) is left out
    cost = bench.per_model_cost(drains)
    assert cost["broker"] == {"base_us": 40, "per_model_us": 5.0}
    assert cost["job"]["per_model_us"] == pytest.approx(30, abs=0.2)
    assert bench.per_model_cost([_drain(4, 100, 40)]) == {}  # one count: no slope


def test_us_per_request_divides_cpu_seconds_by_the_requests_answered() -> None:
    assert bench_kit.us_per_request({"job": 1.5, "broker": 0.3}, 5000) == {"job": 300, "broker": 60}


def test_the_models_part_refuses_counts_beyond_the_policy_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="--models-counts: each from 1 to 20"):
        bench.models_alone([4, 21], 10, 100.0, 0.0, 1)
    with pytest.raises(ValueError, match="--models-counts"):
        bench.models_alone([0], 10, 100.0, 0.0, 1)


def test_the_twenty_model_stack_adds_one_process_serving_every_other_id() -> None:
    runners = bench.many_models_runners(MANY_IDS)
    assert runners[: len(bench.RUNNERS)] == bench.RUNNERS and len(runners) == len(bench.RUNNERS) + 1
    extra = runners[-1]
    served = [s.model_id for s in bench.RUNNERS] + list(extra.model_ids)
    assert sorted(served) == sorted(MANY_IDS)  # every model of the policy scores, once
    assert bench.scores_per_request(runners) == 20 and bench.scores_per_request(bench.RUNNERS) == 4
    assert len({s.name for s in runners}) == len(runners)  # a log and a CPU column each
    args, _ = _parse_args(extra.argv(Path("/m"), "b:1", "r", "s")[3:])  # the runner takes its command line
    assert args.model_ids == extra.model_ids and args.model_dir == Path("/m/logreg")
    assert bench.many_models_runners(["gbt", "tree"]) == bench.RUNNERS  # nothing else to serve


def _step(rate: float, p99: float, job: int, broker: int, answered: int = 100) -> dict[str, Any]:
    return {
        "rate": rate,
        "achieved_rate": rate,
        "sent": 100,
        "answered": answered,
        "latency_ms": {"p50": p99 / 2, "p99": p99, "p99.9": p99},
        "cpu_percent": {
            "job": job,
            "broker": broker,
            "loadgen": 5,
            "runner-gbt": 3,
            "runner-logreg-as-mlp": 7,
        },
    }


RUNS: list[dict[str, Any]] = [
    {
        "scores_per_request": 4,
        "policy": "policies/default.yaml",
        "steps": [_step(100, 20, 30, 10), _step(250, 30, 75, 25)],
    },
    {
        "scores_per_request": 20,
        "policy": "policies/many-models.yaml",
        "steps": [_step(100, 40, 62, 18), _step(250, 900, 150, 40, answered=50)],
    },
]


def test_a_ladder_steps_cpu_per_request_and_each_extra_models_share() -> None:
    assert bench.step_us_per_request(RUNS[0]["steps"][0], "job") == pytest.approx(3000)  # 30 % at 100/s
    assert bench.step_us_per_request(RUNS[0]["steps"][0], "runners") == pytest.approx(1000)
    assert bench.step_us_per_request(RUNS[0]["steps"][0], "labeller") is None
    # 250/s: the 20-model stack lost half its answers, so only 100/s compares.
    assert bench.stack_per_model(RUNS) == [
        {"rate": 100, "extra_models": 16, "job_us_per_model": 200.0, "broker_us_per_model": 50.0}
    ]
    assert bench.stack_per_model(RUNS[:1]) == []


def test_the_models_tables() -> None:
    result: dict[str, Any] = {
        "models": {
            "policy": "policies/many-models.yaml",
            "requests": 10000,
            "drains": [_drain(4, 220, 60), _drain(20, 700, 140)],
            "cost": {"job": {"base_us": 100, "per_model_us": 30.0}},
        },
        "models_stack": [*RUNS, {"scores_per_request": 40, "policy": "x", "steps": [], "error": "boom\n"}],
    }
    md = "\n".join(bench.models_section(result) + bench.models_stack_section(result))
    assert "| 20 | 21,000 | 1,000 | 700 | 140 |" in md
    assert "job 30.0 µs per request per extra model (100 µs at none)" in md
    assert "| 20 | 100 | 100/100 | 20 | 40 | 62 / 18 / 10 | 6,200 / 1,800 |" in md
    assert "| 40 | failed: boom" in md
    assert "Each extra model's score, CPU µs per request (job / broker): 200 / 50 at 100/s." in md
    assert bench.models_section({}) == [] and bench.models_stack_section({}) == []
    result |= {"date": "d", "machine": {"cpus": 2, "platform": "linux", "python": "3.11"}}
    assert "## Many models: the job alone" in bench.markdown(result)

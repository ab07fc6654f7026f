"""`make episodes` end to end: the bench's stack on a real broker and job, sampled while it answers.

Its parts (the per-second table, the comparisons, the report) have unit tests in
tests/unit/test_episodes.py; this runs the whole of ``episodes.run`` once, short and slow, and checks that
every part of the result came from the run: answers, thread samples of each process, the job's
checkpoints from its REST API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import bench, episodes, runinfo, stack
from runners.train import ensure_trained
from tests.e2e.conftest import CHECKPOINT_INTERVAL

pytestmark = pytest.mark.e2e

RATE = 100.0
SECONDS = 6.0  # more than one checkpoint interval (CHECKPOINT_INTERVAL): at least one checkpoint falls in it


def test_episodes_runs_the_stack_and_reports_each_second_its_threads_and_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(episodes, "OUT_DIR", tmp_path / "episodes")
    ensure_trained(tmp_path / "models", rows=3000)
    monkeypatch.setattr(bench, "MODELS_DIR", tmp_path / "models")

    result = episodes.run(
        RATE, SECONDS, lead_in_s=1.0, warmup_s=2.0, warmup_max_s=4.0, period_s=0.25,
        job_args=stack.checkpoint_every(CHECKPOINT_INTERVAL),
    )  # fmt: skip

    expected = int(RATE * 1.0) + int(RATE * SECONDS)
    assert result["sent"] == result["answered"] == expected
    rows = result["seconds_table"]
    assert len(rows) == SECONDS
    assert sum(r["sent"] for r in rows) == int(RATE * SECONDS)  # the lead-in is not in the table
    for row in rows:
        assert set(row["cpu_percent"]) == {"job", "broker", "runner", "loadgen"}
        assert row["cpu_percent"]["job"] > 0 and row["host_percent"]["busy"] > 0
    # Every process's threads were sampled, about every 0.25 s, for the whole run.
    sampled = json.loads((tmp_path / "episodes" / "work" / "samples.json").read_text())
    assert len(sampled["ticks"]) >= (1.0 + SECONDS) / 0.25 * 0.8
    assert {key.split("/")[0] for key in sampled["names"]} == {"job", "broker", "runner", "loadgen"}
    report = episodes.markdown(runinfo.run_info() | result)
    slow_seconds = [r for r in rows if r["p99_ms"] > result["budget_ms"]]
    if slow_seconds and len(slow_seconds) < len(rows):  # the comparison needs seconds of both kinds
        groups = {s["group"] for s in result["stages"]}
        assert any(g.startswith("job: mailbox task") for g in groups), groups
        assert result["threads"] and all("/" in t["group"] for t in result["threads"])
    else:  # at 100/s on a quiet machine: usual; nothing to compare, and the report says why
        assert result["stages"] == result["threads"] == []
        assert "No slow second." in report or len(slow_seconds) == len(rows)
    completed = [c for c in result["checkpoints"] if c["status"] == "COMPLETED"]
    assert completed, result["checkpoints"]
    assert any(task.startswith("rendezvous mailbox") for task in completed[-1]["tasks"])
    assert completed[-1]["state_bytes"] > 0  # the mailboxes and timers of the requests so far
    assert "## The job's checkpoints" in report and f"{expected}/{expected} answered" in report

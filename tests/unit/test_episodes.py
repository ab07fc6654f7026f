"""make episodes: the per-second table and the slow-against-other comparison from synthetic samples, the
/proc readers on this process's own threads, the report and the CLI's one-line errors."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from harness import episodes, loadgen
from ops import procs

HOST0 = {"user": 0, "nice": 0, "system": 0, "idle": 0, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0}


def tick(
    t_ms: float, threads: dict[str, tuple[int, int]], host: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"t_ms": t_ms, "host": host or dict(HOST0, pressure_some_us=0), "threads": threads}


def test_answers_take_the_first_result_and_its_legs() -> None:
    sent = [loadgen.SentRequest("a", 1000.0), loadgen.SentRequest("b", 1001.0)]
    rec = {"request_id": "a", "received_at_ms": 1002, "decided_at_ms": 1010}
    received = [
        loadgen.ReceivedResult(1030.0, dict(rec)),
        loadgen.ReceivedResult(1020.0, dict(rec)),  # read earlier: the one the client acts on
        loadgen.ReceivedResult(1025.0, None),  # garbage is ignored
    ]
    a, b = episodes.answers_of(sent, received)
    assert a == episodes.Answer(1000.0, 20.0, in_job_ms=8.0, to_job_ms=2.0, back_ms=10.0)
    assert b == episodes.Answer(1001.0, None)


def test_thread_percent_is_run_and_wait_over_the_window() -> None:
    samples = [
        tick(0.0, {"job/1": (0, 0), "job/2": (0, 0)}),
        tick(500.0, {"job/1": (250_000_000, 0), "job/2": (0, 0)}),
        tick(1000.0, {"job/1": (500_000_000, 100_000_000), "job/3": (1, 1)}),
    ]
    run, wait = episodes.thread_percent(samples, 0.0, 1000.0)
    # job/2 ended and job/3 started inside the window: their share of it is not known.
    assert run == {"job/1": pytest.approx(50.0)} and wait == {"job/1": pytest.approx(10.0)}
    assert episodes.thread_percent(samples, 0.0, 400.0) == ({}, {})  # one sample: no interval


def test_host_percent_reads_steal_and_pressure() -> None:
    a = dict(HOST0, pressure_some_us=0)
    b = dict(HOST0, user=60, idle=30, steal=10, pressure_some_us=250_000)
    got = episodes.host_percent([tick(0.0, {}, a), tick(1000.0, {}, b)], 0.0, 1000.0)
    assert got == {"busy": pytest.approx(70.0), "steal": pytest.approx(10.0), "pressure": pytest.approx(25.0)}
    no_psi = episodes.host_percent(
        [tick(0.0, {}, dict(a, pressure_some_us=None)), tick(1000.0, {}, dict(b, pressure_some_us=None))],
        0,
        1000,
    )
    assert "pressure" not in no_psi


def slow_and_fast_run() -> tuple[list[episodes.Answer], list[dict[str, Any]]]:
    """Two seconds of answers: the first fast, the second slow while the JIT thread ran and the mailbox
    thread waited for a core."""
    answers = [episodes.Answer(1000.0 + i * 10, 10.0, in_job_ms=5.0) for i in range(100)]
    answers += [episodes.Answer(2000.0 + i * 10, 150.0 + i, in_job_ms=120.0) for i in range(100)]
    ms = 1_000_000
    samples = [
        tick(1000.0, {"job/1": (0, 0), "job/2": (0, 0), "broker/9": (0, 0)}),
        tick(2000.0, {"job/1": (400 * ms, 100 * ms), "job/2": (10 * ms, 0), "broker/9": (300 * ms, 0)}),
        tick(3000.0, {"job/1": (800 * ms, 700 * ms), "job/2": (510 * ms, 0), "broker/9": (600 * ms, 0)}),
    ]
    return answers, samples


def slow_and_fast_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """slow_and_fast_run's per-second table (job and broker) and its samples."""
    answers, samples = slow_and_fast_run()
    return episodes.seconds_table(answers, samples, [], ["job", "broker"], budget_ms=100), samples


def test_seconds_table_one_row_per_second_of_sent_requests() -> None:
    answers, samples = slow_and_fast_run()
    answers.append(episodes.Answer(2999.0, None))  # unanswered: sent, not answered
    cps = [{"id": 7, "trigger_ms": 2100.0}]
    rows = episodes.seconds_table(answers, samples, cps, ["job", "broker"], budget_ms=100)
    assert [r["second"] for r in rows] == [0.0, 1.0]
    fast, slow = rows
    assert (fast["sent"], fast["answered"], fast["late"], fast["checkpoints"]) == (100, 100, 0, [])
    assert (slow["sent"], slow["answered"], slow["late"], slow["checkpoints"]) == (101, 100, 100, [7])
    assert fast["p99_ms"] == pytest.approx(10.0) and slow["max_ms"] == 249.0
    assert slow["legs_p99_ms"][loadgen.LEG_IN_JOB] == pytest.approx(120.0)
    assert fast["cpu_percent"] == {"job": 41.0, "broker": 30.0}
    assert slow["cpu_percent"] == {"job": 90.0, "broker": 30.0}
    assert slow["wait_percent"] == {"job": 60.0, "broker": 0.0}
    assert not episodes.slow(fast, 100) and episodes.slow(slow, 100)
    assert episodes.seconds_table([], samples, cps, ["job"], 100) == []


def test_late_answers_are_counted_in_the_seconds_of_a_checkpoint_and_the_second_after() -> None:
    def row(late: int, checkpoints: list[int]) -> dict[str, Any]:
        return {"late": late, "checkpoints": checkpoints}

    rows = [row(1, []), row(5, [3]), row(7, []), row(2, []), row(4, [4, 5])]
    assert episodes.late_near_checkpoints(rows) == {
        "late": 19,
        "late_near_checkpoints": 16,  # 5 + 7 (the second after) + 4
        "seconds": 5,
        "seconds_near_checkpoints": 3,
    }
    assert episodes.late_near_checkpoints([]) == {
        "late": 0,
        "late_near_checkpoints": 0,
        "seconds": 0,
        "seconds_near_checkpoints": 0,
    }


def test_compare_names_what_ran_or_waited_more_in_the_slow_seconds() -> None:
    rows, samples = slow_and_fast_rows()
    names = {
        "job/1": "rendezvous mailbox -> x (1/1)#0",
        "job/2": "C2 CompilerThread0",
        "broker/9": "data-plane-kafka-0",
    }
    shares = episodes.window_shares(rows, samples)
    threads = episodes.compare_threads(rows, shares, names, 100)
    # The mailbox waited 50 points more (and ran no more), the JIT ran 49 points more: both named first.
    assert [t["group"] for t in threads[:2]] == [
        "job/1 rendezvous mailbox -> x (1/1)#0",
        "job/2 C2 CompilerThread0",
    ]
    assert threads[1] == {
        "group": "job/2 C2 CompilerThread0",
        "run_slow": 50.0,
        "run_other": 1.0,
        "wait_slow": 0.0,
        "wait_other": 0.0,
    }
    assert threads[-1]["group"] == "broker/9 data-plane-kafka-0"  # the same in both
    stages = {s["group"]: s for s in episodes.compare_stages(rows, shares, names, 100)}
    assert stages["job: mailbox task (and the Kafka sink chained to it)"]["wait_slow"] == 60.0
    assert stages["job: JVM: JIT compiler"]["run_slow"] == 50.0
    assert "broker: data-plane-kafka" in stages
    # Without a slow second (or without a fast one) there is nothing to set against.
    assert episodes.compare_threads(rows[:1], shares[:1], names, 100) == []
    assert episodes.compare_threads(rows[1:], shares[1:], names, 100) == []


def test_inside_a_slow_second_each_sample_interval_names_who_ran_and_who_waited() -> None:
    rows, samples = slow_and_fast_rows()
    names = {
        "job/1": "rendezvous mailbox",
        "job/2": "AsyncOperations-thread-1",
        "broker/9": "data-plane-kafka-0",
    }
    inside = episodes.inside_slow_seconds(rows, samples, names, 100)
    # Only the slow second (the second one), and its one interval between two samples.
    assert inside == [
        {
            "second": 1.0,
            "at_ms": 1000,
            "host_busy": 0,
            "threads": [
                {"thread": "job: AsyncOperations-thread-1", "run": 50, "wait": 0},
                {"thread": "job: rendezvous mailbox", "run": 40, "wait": 60},
                {"thread": "broker: data-plane-kafka-0", "run": 30, "wait": 0},
            ],
        }
    ]


def test_stage_of_groups_a_pool_and_uses_the_jvm_stages() -> None:
    assert (
        episodes.stage_of("broker/1", "data-plane-kafka-request-handler-3")
        == "broker: data-plane-kafka-request-handler"
    )
    assert episodes.stage_of("runner/2", "rdk:broker1") == "runner: rdk:broker"
    assert episodes.stage_of("job/3", "AsyncOperations-thread-1") == "job: checkpoints"


def test_markdown_marks_slow_seconds_and_lists_checkpoints() -> None:
    answers, samples = slow_and_fast_run()
    rows = episodes.seconds_table(answers, samples, [{"id": 3, "trigger_ms": 2500.0}], ["job"], budget_ms=100)
    names = {"job/1": "rendezvous mailbox", "job/2": "C2 CompilerThread0"}
    result = {
        "date": "2026-12-06 11:00",
        "commit": "abc1234",
        "rate": 833.0,
        "seconds": 2.0,
        "lead_in_s": 10.0,
        "period_s": 0.25,
        "budget_ms": 100,
        "answered": 200,
        "sent": 200,
        "latency_ms": {"p50": 10.0, "p99": 240.0, "max": 249.0},
        "late": 100,
        "seconds_table": rows,
        "near_checkpoints": episodes.late_near_checkpoints(rows),
        "threads": episodes.compare_threads(rows, episodes.window_shares(rows, samples), names, 100),
        "stages": [],
        "inside_slow_seconds": episodes.inside_slow_seconds(rows, samples, names, 100),
        "checkpoints": [
            {
                "id": 3,
                "at_s": 1.5,
                "status": "COMPLETED",
                "duration_ms": 310,
                "state_bytes": 2048 * 1024,
                "tasks": {"mailbox": {"async_ms": 300}},
            }
        ],
    }
    md = episodes.markdown(result)
    assert "| **1** | 100 |" in md and "| 0 | 100 |" in md
    assert "1 of 2 seconds with p99 over 100 ms" in md
    assert (
        "Late answers sent in a second with a checkpoint or the second after: 100 of 100 "
        "(those are 1 of the 2 seconds)." in md
    )
    assert "Late answers sent" not in episodes.markdown({**result, "near_checkpoints": None})
    assert "warm-up fell behind" not in md  # no backlog recorded
    behind = episodes.markdown({**result, "warmup_backlog": {"behind": 4736, "drained_s": None}})
    assert "The warm-up fell behind: 4736 requests unanswered at its end; not caught up within 60 s" in behind
    assert "| job/2 C2 CompilerThread0 | 50.0 | 1.0 | 0.0 | 0.0 |" in md
    assert "No comparison" in md  # the empty stage list says so
    assert (
        "| 1 | 1000 | 0 | job: C2 CompilerThread0 50 / 0; job: rendezvous mailbox 40 / 60; broker: ? 30 / 0 |"
        in md
    )
    assert "| 3 | 1.5 | COMPLETED | 310 | 2048 | mailbox: - / 300 / - |" in md
    del result["checkpoints"][0]["state_bytes"]  # a run written before sizes were recorded
    assert "| 3 | 1.5 | COMPLETED | 310 | - | mailbox: - / 300 / - |" in episodes.markdown(result)


def test_thread_schedstat_sees_a_busy_thread_of_this_process() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin, name="episodes-spin")
    t.start()
    try:
        time.sleep(0.05)
        before = {tid: run for tid, _, run, _ in procs.thread_schedstat(os.getpid())}
        time.sleep(0.3)
        after = {tid: run for tid, _, run, _ in procs.thread_schedstat(os.getpid())}
        spun = t.native_id
    finally:
        stop.set()
        t.join()
    assert spun in before and spun in after
    assert after[spun] - before[spun] > 50_000_000  # ns: it ran a good part of the 0.3 s
    assert list(procs.thread_schedstat(2**22 + 12345)) == []  # no such process: nothing, no error
    host = procs.host_cpu()
    assert set(procs.HOST_CPU_FIELDS) <= set(host) and host["user"] is not None and host["user"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "0"], "--rate: at least 1, got 0"),
        (["--seconds", "1"], "--seconds: at least 2, got 1"),
        (["--lead-in", "-1"], "--lead-in: at least 0, got -1"),
        (["--period", "5"], "--period: seconds between 0.05 and 1, got 5"),
        (
            ["--policy", "/nonexistent/policy.yaml"],
            "--policy: /nonexistent/policy.yaml: cannot read policy file",
        ),
        (["--stack", "other"], "invalid choice: 'other'"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(argv: list[str], message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        episodes.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_progress_is_a_line_every_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(episodes.bench, "say", said.append)
    show = episodes._every_10_s(1000)
    for second in range(25):
        show(second * 40, second * 39, float(second))
    assert said == [
        "[episodes] 10 s: 400/1000 sent, 390 answered",
        "[episodes] 20 s: 800/1000 sent, 780 answered",
    ]


def test_write_run_writes_both_files_and_names_them(tmp_path: Any, capsys: Any) -> None:
    from harness import runinfo

    line = runinfo.write_run(tmp_path / "out", "episodes", {"rate": 833.0}, "# report\n")
    assert (tmp_path / "out" / "episodes.json").read_text() == '{\n  "rate": 833.0\n}'
    assert (tmp_path / "out" / "episodes.md").read_text() == "# report\n"
    assert "# report" in capsys.readouterr().out
    assert line == f"wrote {tmp_path / 'out'}/episodes.json, episodes.md"

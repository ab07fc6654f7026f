"""The job's background threads at a lower CPU priority (ops/background_priority.py): which threads,
and the real mechanism on a real process's threads (Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import rendezvous_job
from ops import background_priority as bp
from udfs import names

LINUX = Path("/proc/self/task").is_dir()

# A process with two named threads, as a JVM's look in /proc: one background, one on the answer path.
CHILD = r"""
import os, threading, time
def named(name, ready):
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/comm", "w") as f:
        f.write(name)
    ready[name] = tid
    time.sleep(120)
tids = {}
for name in ("AsyncOperations-thread-1", "rendezvous mailbox (1/1)#0"):
    threading.Thread(target=named, args=(name, tids), daemon=True).start()
while len(tids) < 2:
    time.sleep(0.01)
print(tids["AsyncOperations-thread-1"], tids["rendezvous mailbox (1/1)#0"], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    "thread_name",
    ["AsyncOperations", "decoy archive: ", "compact-executo"],  # as /proc shows them: 15 bytes
)
def test_checkpoint_and_archive_threads_are_background(thread_name: str) -> None:
    assert bp.is_background(thread_name)


@pytest.mark.parametrize(
    "thread_name",
    [
        "rendezvous mail",
        "kafka-producer-",
        "Source Data Fet",
        "Source: request",
        "C2 CompilerThre",
        "GC Thread#0",
    ],
)
def test_the_answer_path_and_the_jvm_keep_their_priority(thread_name: str) -> None:
    assert not bp.is_background(thread_name)


def test_the_archive_prefix_follows_the_operator_name() -> None:
    assert names.OPERATOR_ARCHIVE[:15] in bp.BACKGROUND_THREAD_PREFIXES


@pytest.mark.parametrize("nice", [0, -1, 20])
def test_a_nice_value_out_of_range_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="nice must be 1 to 19"):
        bp.BackgroundPriority(lambda: None, nice, print)


@pytest.fixture
def named_threads() -> Iterator[tuple[int, int, int]]:
    """(pid, background thread id, answer-path thread id) of a child process."""
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        background, answering = map(int, p.stdout.readline().split())
        yield p.pid, background, answering
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(not LINUX, reason="thread priorities through /proc: Linux only")
def test_lowers_only_the_background_threads_once(named_threads: tuple[int, int, int]) -> None:
    pid, background, answering = named_threads
    before = os.getpriority(os.PRIO_PROCESS, answering)
    seen: set[int] = set()

    done = bp.lower_background(pid, 10, seen)

    assert done == [(background, "AsyncOperations")]
    assert os.getpriority(os.PRIO_PROCESS, background) == 10
    assert os.getpriority(os.PRIO_PROCESS, answering) == before
    assert bp.lower_background(pid, 10, seen) == []  # each thread is set once


def test_a_thread_not_yet_named_is_looked_at_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JVM thread shows its process's name ("java") until it names itself: it must not be passed over
    for good at a scan that catches it in between."""
    names_now = {7: "java"}
    set_nice: list[int] = []
    monkeypatch.setattr(bp.procs, "threads_of", lambda pid: iter(names_now.items()))
    monkeypatch.setattr(bp.os, "setpriority", lambda which, tid, nice: set_nice.append(tid))
    seen: set[int] = set()

    assert bp.lower_background(1, 10, seen) == []
    names_now[7] = "AsyncOperations"
    assert bp.lower_background(1, 10, seen) == [(7, "AsyncOperations")]
    assert set_nice == [7]
    assert bp.lower_background(1, 10, seen) == []  # and then once only


@pytest.mark.skipif(not LINUX, reason="thread priorities through /proc: Linux only")
def test_the_watcher_finds_the_jvm_late_and_says_so_once(named_threads: tuple[int, int, int]) -> None:
    pid, background, _ = named_threads
    asked: list[int] = []
    said: list[str] = []

    def find_pid() -> int | None:
        asked.append(1)
        return pid if len(asked) > 1 else None  # the JVM is not there at first

    watcher = bp.BackgroundPriority(find_pid, 7, said.append).start()
    try:
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, background) != 7 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.stop()
    assert os.getpriority(os.PRIO_PROCESS, background) == 7
    assert len(said) == 1 and f"JVM {pid} at nice 7" in said[0], said


def test_the_command_refuses_a_pid_that_is_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bp.main(["--pid", "999999999"])
    assert e.value.code == 2
    assert "--pid: no process 999999999" in capsys.readouterr().err


def test_the_jobs_flag_defaults_to_nice_10_and_refuses_out_of_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = rendezvous_job.REPO_ROOT / "policies" / "default.yaml"
    base = ["--policy", str(policy), "--bootstrap", "127.0.0.1:9"]
    assert rendezvous_job.parse_args(base).background_nice == bp.DEFAULT_NICE == 10
    assert rendezvous_job.parse_args([*base, "--background-nice", "0"]).background_nice == 0
    with pytest.raises(SystemExit):
        rendezvous_job.parse_args([*base, "--background-nice", "20"])
    assert "--background-nice: must be 0 to 19, got 20" in capsys.readouterr().err

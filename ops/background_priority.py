"""The job's background threads at a lower CPU priority, so a checkpoint never delays an answer.

Every checkpoint (10 s apart) starts work that no answer waits for: the keyed state's snapshot is
written by an ``AsyncOperations`` thread, the decoy archive's task closes its Parquet part files and
its ``compact-executor`` threads rewrite them into one. At the priority of the mailbox task, on a
machine whose cores the answer path keeps busy, that work took the CPU from the answers for a few
hundred milliseconds: at 833 requests/s every answer over 100 ms after the first ten seconds came
within a second of a checkpoint (docs/performance-history.md, "Checkpoints at a lower priority").

Linux schedules threads, and a nice value is per thread. The JVM offers no way to lower one thread's
priority (Java's priorities reach the OS only when run as root), so ``BackgroundPriority`` looks at
the JVM's threads once a second and raises the nice value of those whose names say they are
background work. Raising one's own threads' nice value needs no privilege. Where there is no
``/proc`` (not Linux) it does nothing, and says so once.

``python -m ops.background_priority --pid PID`` does the same for any running JVM (a session
cluster's TaskManager) until that process exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ops import procs
from udfs import names

# Thread names as /proc shows them (their first 15 bytes): Flink's asynchronous snapshot threads, the
# archive sink's tasks (the operator's name) and the file sink's compaction threads.
BACKGROUND_THREAD_PREFIXES = ("AsyncOperations", names.OPERATOR_ARCHIVE[:15], "compact-executo")
DEFAULT_NICE = 10  # CFS gives a nice-10 thread about a tenth of the CPU a nice-0 one gets when both run
MAX_NICE = 19
SCAN_INTERVAL_S = 1.0


def is_background(thread_name: str) -> bool:
    """Whether a thread of the job's JVM does work no answer waits for (``BACKGROUND_THREAD_PREFIXES``)."""
    return thread_name.startswith(BACKGROUND_THREAD_PREFIXES)


# What /proc shows for a JVM thread that has started but not yet named itself (its process's name).
UNNAMED = "java"


def lower_background(pid: int, nice: int, seen: set[int]) -> list[tuple[int, str]]:
    """Set the nice value of ``pid``'s background threads not in ``seen`` to ``nice``; returns the
    (thread id, name) of each one it set. ``seen`` keeps the threads already looked at, so each is
    set once; one still unnamed is looked at again next time. Raises OSError when ``pid`` is gone."""
    done: list[tuple[int, str]] = []
    alive: set[int] = set()
    for tid, name in procs.threads_of(pid):
        alive.add(tid)
        if tid in seen:
            continue
        if name != UNNAMED:
            seen.add(tid)
        if is_background(name):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:
                continue
            done.append((tid, name))
    seen &= alive  # a thread id the kernel gives again later is a new thread
    return done


class BackgroundPriority:
    """A daemon thread that keeps the background threads of a JVM at ``nice``, once a second.

    ``find_pid`` is asked until it names the JVM (the embedded mini cluster's JVM starts as the job
    builds its environment); ``say`` gets one line the first time threads are lowered, and one if
    this machine cannot do it."""

    def __init__(self, find_pid: Callable[[], int | None], nice: int, say: Callable[[str], None]) -> None:
        if not 0 < nice <= MAX_NICE:
            raise ValueError(f"nice must be 1 to {MAX_NICE}, got {nice}")
        self._find_pid = find_pid
        self._nice = nice
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-priority", daemon=True)

    def start(self) -> BackgroundPriority:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if not Path("/proc/self/task").is_dir():
            self._say("background priority: no /proc on this machine; background threads keep their priority")
            return
        seen: set[int] = set()
        told = False
        pid: int | None = None
        while not self._stop.is_set():
            pid = pid or self._find_pid()
            if pid is not None:
                try:
                    done = lower_background(pid, self._nice, seen)
                except OSError:
                    return  # the JVM is gone: the job is ending
                if done and not told:
                    told = True
                    self._say(
                        f"background priority: checkpoint and archive threads of JVM {pid} at nice "
                        f"{self._nice} ({', '.join(sorted({n for _, n in done}))})"
                    )
            self._stop.wait(SCAN_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ops.background_priority",
        description="keep a Flink JVM's checkpoint and archive threads at a lower CPU priority until it exits",
    )
    ap.add_argument("--pid", type=int, required=True, help="the JVM's process id (e.g. a TaskManager's)")
    ap.add_argument(
        "--nice", type=int, default=DEFAULT_NICE, help="their nice value, 1 to 19 (default %(default)s)"
    )
    a = ap.parse_args(argv)
    if not 0 < a.nice <= MAX_NICE:
        ap.error(f"--nice: must be 1 to {MAX_NICE}, got {a.nice}")
    if not Path(f"/proc/{a.pid}/task").is_dir():
        ap.error(f"--pid: no process {a.pid} (or no /proc on this machine)")
    watcher = BackgroundPriority(lambda: a.pid, a.nice, lambda m: print(m, flush=True)).start()
    while Path(f"/proc/{a.pid}").exists():
        threading.Event().wait(SCAN_INTERVAL_S)
    watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

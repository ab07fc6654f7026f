"""ops.procs.exit_on_sigterm: a harness command stopped with `kill PID` stops what it started."""

from __future__ import annotations

import signal
import subprocess
import sys

from ops import procs


def test_a_command_stopped_by_sigterm_runs_its_cleanup() -> None:
    """`kill PID` of `make demo` (or bench, episodes, ...) must stop the broker and job it started: their
    `finally` blocks run, as on Ctrl-C."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ops import procs\n"
            "procs.exit_on_sigterm()\n"
            "try:\n"
            "    print('started', flush=True)\n"
            "    time.sleep(60)\n"
            "finally:\n"
            "    print('cleaned up', flush=True)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=procs.repo_root(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=20)
    assert out.strip() == "cleaned up"
    assert child.returncode == 143

"""The demo's warm-up reads the JIT compilers' CPU of a real JVM from /proc (ops.procs.jit_cpu_seconds)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import procs

# A program that keeps the JIT busy for a moment: a hot loop C1 and C2 both compile.
BUSY_JAVA = """
public class Busy {
    public static void main(String[] args) throws Exception {
        long end = System.nanoTime() + 20_000_000_000L, x = 0;
        while (System.nanoTime() < end) { for (int i = 0; i < 1_000_000; i++) x += i * 31 ^ (x >>> 3); }
        System.out.println(x);
    }
}
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")


def test_no_jvm_is_none() -> None:
    # A process with no JVM below it (not pytest's own: earlier tests may have started PyFlink's JVM).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert procs.jvm_of(sleeper.pid) is None
        assert procs.jit_cpu_seconds(sleeper.pid) is None
    finally:
        sleeper.kill()
        sleeper.wait(10)
    assert procs.jvm_of(sleeper.pid) is None  # gone: nothing to read


def test_the_jit_of_a_jvm_below_a_shell_is_found_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "Busy.java"
    source.write_text(BUSY_JAVA)
    # A shell in between, as the job's Python is between the demo and the mini cluster's JVM.
    shell = subprocess.Popen(["/bin/sh", "-c", f"'{procs.java_bin()}' '{source}'"], start_new_session=True)
    try:
        jvm = None
        deadline = time.monotonic() + 30
        while jvm is None and time.monotonic() < deadline:
            jvm = procs.jvm_of(shell.pid)
            time.sleep(0.1)
        assert jvm is not None and jvm != shell.pid
        assert procs.read_cmdline(jvm)[0].endswith("java")
        used = 0.0
        while time.monotonic() < deadline and used <= 0:  # the source launcher compiles, then the loop
            used = procs.jit_cpu_seconds(shell.pid) or 0.0
            time.sleep(0.2)
        assert used > 0, "the JIT threads of a busy JVM showed no CPU"
        assert procs.jit_cpu_seconds(jvm) == pytest.approx(procs.jit_cpu_seconds(shell.pid), abs=0.5)
    finally:
        procs.stop_pid(shell.pid, grace_s=5)
        shell.wait(10)

"""Small process helpers shared by everything that runs a JVM or a worker in the background.

Processes run in their own session so that stopping one also stops anything it spawned, and they
are tracked by PID files so that a later CLI call can stop what an earlier one started.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

JAVA_MIN_VERSION = 17
JAVA_INSTALL_HINT = "install it with `apt-get install openjdk-17-jre-headless` (or set JAVA_HOME)"


def repo_root() -> Path:
    """The checkout root, so paths like build/jars work from any working directory."""
    return Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, reuse_addr: bool = False) -> bool:
    """True if nothing listens on 127.0.0.1:port (racy, like any such check).

    ``reuse_addr``: bind as a server that sets SO_REUSEADDR would (the JVM does), so connections left
    in TIME_WAIT by a server stopped a moment ago on that port do not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll until predicate() is truthy; the TimeoutError names what we were waiting for."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@functools.cache
def java_bin() -> str:
    """Path of a Java 17+ executable (JAVA_HOME first, then PATH), or a RuntimeError saying how to get one."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not os.access(candidate, os.X_OK):
        raise RuntimeError(f"Java {JAVA_MIN_VERSION}+ not found; {JAVA_INSTALL_HINT}")
    out = subprocess.run([candidate, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise RuntimeError(f"cannot tell the version of {candidate}; {JAVA_INSTALL_HINT}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < JAVA_MIN_VERSION:
        raise RuntimeError(f"{candidate} is Java {major}, need {JAVA_MIN_VERSION}+; {JAVA_INSTALL_HINT}")
    return candidate


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def pid_alive(pid: int) -> bool:
    """True while any thread of pid still runs; an exited process awaiting its reaper counts as dead.

    Threads are checked one by one because a JVM's main thread can be a zombie while the others
    are still tearing down (and holding its ports). Nothing is reaped here: Popen does that.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return False
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


# The HotSpot JIT compilers' thread names (C1 and C2; /proc shows the first 15 characters).
JIT_THREAD_PREFIXES = ("C1 CompilerThre", "C2 CompilerThre")


def jvm_of(pid: int) -> int | None:
    """``pid`` if it is a JVM, else its first JVM descendant (the mini cluster's JVM is a child of the
    job's Python); None when there is none or no /proc to tell."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == "java":
                return p
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return None


def threads_of(pid: int) -> Iterator[tuple[int, str]]:
    """(thread id, name as /proc shows it: its first 15 bytes) of each thread of ``pid``; a thread that
    ends while it is read is left out. Raises OSError when ``pid`` is gone."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            yield int(task.name), (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue


def thread_schedstat(pid: int) -> Iterator[tuple[int, str, int, int]]:
    """(thread id, name, ns it ran, ns it waited runnable for a core) of each thread of ``pid``, from
    ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds, unlike stat's 10 ms ticks); nothing when ``pid``
    is gone; a thread that ends while it is read is left out."""
    try:
        threads = list(threads_of(pid))
    except OSError:
        return
    for tid, name in threads:
        try:
            run_ns, wait_ns = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:2]
            yield tid, name, int(run_ns), int(wait_ns)
        except (OSError, ValueError):
            continue


# The host's CPU time by kind, in the order of /proc/stat's "cpu" line (clock ticks, all cores).
HOST_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def host_cpu() -> dict[str, int | None]:
    """The machine's CPU ticks by kind (HOST_CPU_FIELDS; steal: time the virtual machine's cores were
    taken by its host) and ``pressure_some_us``, the time some task waited for a core
    (/proc/pressure/cpu; None where the kernel has no pressure stall information)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    out: dict[str, int | None] = {k: int(v) for k, v in zip(HOST_CPU_FIELDS, fields, strict=False)}
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        out["pressure_some_us"] = int(some.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        out["pressure_some_us"] = None
    return out


def jit_cpu_seconds(pid: int) -> float | None:
    """CPU seconds the JIT compiler threads of ``pid``'s JVM have used so far (None: no JVM found).

    A fresh JVM spends its first minute or two of load compiling the hot path; on a small machine that
    takes a core away from the work, so a warm-up watches this until it levels off.
    """
    jvm = jvm_of(pid)
    if jvm is None:
        return None
    ticks = 0
    try:
        jit = [tid for tid, name in threads_of(jvm) if name.startswith(JIT_THREAD_PREFIXES)]
    except OSError:
        return None
    for tid in jit:
        try:
            fields = Path(f"/proc/{jvm}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) in the main thread, so a command that started a broker, a job
    or runners stops them (its ``finally`` blocks run) when it is stopped by ``kill PID``, as on Ctrl-C.
    Python's default for SIGTERM ends the process at once and leaves its children running."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by pid, or just pid if it does not lead one."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def ask_to_stop(pid: int) -> None:
    """SIGTERM the group, without waiting (``stop_pid`` later waits for it and kills if need be)."""
    if pid_alive(pid):
        _signal_group(pid, signal.SIGTERM)


def stop_pid(pid: int, grace_s: float = 30.0) -> bool:
    """SIGTERM the group, wait up to grace_s, then SIGKILL. True if we had to kill."""
    if not pid_alive(pid):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10.0, f"pid {pid} to die after SIGKILL", interval_s=0.05)
    return True


@dataclass
class ManagedProcess:
    """A background process we started, identified by PID and the exact argv (guards PID reuse)."""

    pid: int
    argv: list[str]
    log_path: Path
    pid_file: Path | None = None
    started_at: float = field(default_factory=time.time)
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        log_path: Path,
        pid_file: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start argv in a new session with stdout+stderr appended to log_path; write pid_file if given."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        proc = cls(pid=popen.pid, argv=list(argv), log_path=log_path, pid_file=pid_file, _popen=popen)
        if pid_file is not None:
            proc.write_pid_file(pid_file)
        return proc

    @classmethod
    def from_pid_file(cls, pid_file: Path) -> ManagedProcess | None:
        """Re-attach to a process recorded by an earlier call; None if there is no usable pid file."""
        try:
            data = json.loads(pid_file.read_text())
            return cls(
                pid=int(data["pid"]),
                argv=[str(a) for a in data["argv"]],
                log_path=Path(data["log_path"]),
                pid_file=pid_file,
                started_at=float(data.get("started_at", 0.0)),
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write_pid_file(self, pid_file: Path) -> None:
        """JSON rather than a bare number: the argv lets a later stop check it is still our process."""
        record = {
            "pid": self.pid,
            "argv": self.argv,
            "log_path": str(self.log_path),
            "started_at": self.started_at,
        }
        tmp = pid_file.with_suffix(pid_file.suffix + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(pid_file)
        self.pid_file = pid_file

    def is_running(self) -> bool:
        """Alive and still the program we started (not some later process that reused the PID)."""
        if self._popen is not None:
            # Our own unreaped child cannot have a reused PID. Its cmdline is also unreliable just
            # after Popen returns: the kernel fills it in a moment after exec.
            return self._popen.poll() is None
        return pid_alive(self.pid) and read_cmdline(self.pid) == self.argv

    def returncode(self) -> int | None:
        """Exit code if we started it in this Python process and it has exited, else None."""
        return self._popen.poll() if self._popen is not None else None

    def stop(self, grace_s: float = 30.0) -> bool:
        """Stop by PID (SIGTERM to the group, SIGKILL after grace_s); remove the pid file.

        Returns True if the process had to be killed.
        """
        killed = stop_pid(self.pid, grace_s) if self.is_running() else False
        if self._popen is not None:
            self._popen.wait(timeout=10)  # reap our child so no zombie stays behind
        if self.pid_file is not None:
            recorded = ManagedProcess.from_pid_file(self.pid_file)
            if recorded is None or recorded.pid == self.pid:  # not a newer process's pid file
                self.pid_file.unlink(missing_ok=True)
        return killed

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_pidfile(path: Path, grace_s: float = 30.0) -> bool:
    """Stop the process recorded in a pid file, but only if it is alive and its cmdline still matches.

    Returns True if a process was stopped. A stale or foreign pid file is removed and nothing is killed.
    """
    proc = ManagedProcess.from_pid_file(path)
    if proc is None:
        return False
    if not proc.is_running():
        path.unlink(missing_ok=True)
        return False
    proc.stop(grace_s)
    return True

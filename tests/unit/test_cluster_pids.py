"""ops/cluster.py's TaskManager PID bookkeeping, with plain child processes standing in for the JVMs.

``taskmanager.sh start`` records the PID at fork, before the exec into java; a TaskManager caught in
that window must still count as started (the upgrade waits for as many new TaskManagers as it got PIDs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.cluster import Cluster, ClusterError, listening_ports

# A child that runs a while without the conf dir in its argv, then execs into one that has it.
LATE_EXEC = (
    "import os, sys, time; time.sleep(float(sys.argv[1])); "
    "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', os.environ['CONF_DIR']])"
)


class ScriptedCluster(Cluster):
    """A Cluster whose ``taskmanager.sh start`` spawns ``argv`` (conf dir in $CONF_DIR) and records its PID."""

    def __init__(self, base: Path, argv: list[str]) -> None:
        super().__init__(base)
        self.pid_dir.mkdir(parents=True)
        self.argv = argv
        self.children: list[subprocess.Popen[bytes]] = []

    def config(self) -> dict[str, Any]:
        return {}

    def script(self, name: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        assert name == "taskmanager.sh" and args[0] == "start"
        env = {**os.environ, "CONF_DIR": str(self.conf_dir)}
        child = subprocess.Popen(self.argv, env=env, start_new_session=True)
        self.children.append(child)
        with (self.pid_dir / "flink-test-taskexecutor.pid").open("a") as f:
            f.write(f"{child.pid}\n")
        return subprocess.CompletedProcess([name, *args], 0, "", "")

    def stop_children(self) -> None:
        for child in self.children:
            child.kill()
            child.wait(10)


@pytest.fixture
def late_exec(tmp_path: Path) -> Any:
    cluster = ScriptedCluster(tmp_path, [sys.executable, "-c", LATE_EXEC, "0.5"])
    yield cluster
    cluster.stop_children()


def test_a_taskmanager_still_before_its_exec_counts_as_started(late_exec: ScriptedCluster) -> None:
    started = late_exec.start_taskmanagers(1, spare=True)
    assert started == [late_exec.children[0].pid]
    assert late_exec.ours(started[0])
    assert late_exec.taskmanager_pids() == started


def test_only_the_new_pids_are_returned(late_exec: ScriptedCluster) -> None:
    first = late_exec.start_taskmanagers(1)
    second = late_exec.start_taskmanagers(2)
    assert len(second) == 2 and not set(first) & set(second)
    assert sorted(late_exec.taskmanager_pids()) == sorted(first + second)


def test_a_taskmanager_that_dies_at_start_is_an_error(tmp_path: Path) -> None:
    cluster = ScriptedCluster(tmp_path, [sys.executable, "-c", "import sys; sys.exit(1)"])
    try:
        with pytest.raises(ClusterError, match="did not come up"):
            cluster.start_taskmanagers(1)
    finally:
        cluster.stop_children()


def test_listening_ports_sees_a_listening_socket_and_not_a_bound_one() -> None:
    """busy_taskmanager_pids maps the REST API's data port to a PID through this."""
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))
        ports = listening_ports(os.getpid())
        assert listening.getsockname()[1] in ports
        assert bound.getsockname()[1] not in ports
    assert listening_ports(2**22 + 1) == set()  # no such process

"""A Flink standalone session cluster from the PyFlink pip package, driven by the project.

    python -m ops.cluster up --dir var/cluster [--rest-port 8081]   # conf dir + start-cluster.sh + wait
    python -m ops.cluster submit --dir var/cluster --policy policies/default.yaml --bootstrap 127.0.0.1:9092
    python -m ops.cluster status --dir var/cluster
    python -m ops.cluster cancel --dir var/cluster JOBID
    python -m ops.cluster upgrade --dir var/cluster --policy policies/v2.yaml   # savepoint-safe (ops/upgrade.py)
    python -m ops.cluster down --dir var/cluster                    # stop-cluster.sh + verify PIDs gone

FLINK_HOME is the installed ``pyflink`` package (it ships ``bin/`` and ``conf/``). Nothing in
site-packages is edited: ``up`` writes its own conf dir under ``--dir`` (PyFlink's bundled
``config.yaml`` with the project's ``flink-conf/config.yaml`` laid over it, plus paths and ports)
and every ``bin/`` script runs with ``FLINK_CONF_DIR`` pointing at it. Flink writes its PID files
to ``<dir>/pid`` (``env.pid.dir``); ``down`` checks that those processes are gone, and only those.

Thread mode on a session cluster: a TaskManager's embedded interpreter keeps ``sys.modules`` and
a second thread-mode job in the same TaskManager can fail (pemja, FLINK-37727), so run one job per
cluster and restart the cluster (``down`` + ``up``) for every new job; ``upgrade`` restarts the
TaskManagers between the savepoint and the resubmission. Every ``submit`` writes a job manifest
(``<dir>/state/job-manifest.json``: policy version, execution mode, state format, uids) that
``upgrade`` checks the new job against.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ops import kafka_client, procs, upgrade
from ops.flink_conf import PARALLELISM_KEY, FlinkConfError, effective_conf, job_parallelism, read_conf

REPO_ROOT = procs.repo_root()
# `cluster up`: the job's TaskManager (parallelism 1, one slot each) and a standby (docs/operations.md).
DEFAULT_TASKMANAGERS = 2
PROJECT_FLINK_CONF = REPO_ROOT / "flink-conf" / "config.yaml"
JOB_SCRIPT = REPO_ROOT / "jobs" / "rendezvous_job.py"
UDFS_DIR = REPO_ROOT / "udfs"
DEFAULT_DIR = REPO_ROOT / "var" / "cluster"
UP_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 60.0
TM_EXEC_TIMEOUT_S = 15.0
TM_STOP_GRACE_S = 15.0  # SIGTERM to SIGKILL for a TaskManager
# Ports a standalone cluster binds; each may be given on the command line (0 = leave to Flink's default).
PORT_KEYS = {
    "rest_port": "rest.port",
    "rpc_port": "jobmanager.rpc.port",
    "blob_port": "blob.server.port",
    "tm_rpc_port": "taskmanager.rpc.port",
    "tm_data_port": "taskmanager.data.port",
}
# What the job must know about the cluster it is submitted to: its flink_configuration() lays the
# project's flink-conf (rest.port 8081, rpc port 6123) over the client's configuration, so these
# are handed to the job as -D overrides or the submission would go to the wrong port.
CLIENT_KEYS = ("rest.address", "rest.port", "jobmanager.rpc.address", "jobmanager.rpc.port")
DAEMONS = ("standalonesession", "taskexecutor")
JOBID_RE = re.compile(r"JobID\s+([0-9a-f]{32})")


@dataclass(frozen=True)
class Submission:
    """A checked submission: what ``flink run`` gets and what the job manifest records."""

    policy_path: Path
    policy: Any  # udfs.policy.Policy
    bootstrap: str
    job_args: list[str]
    flink_conf: Path
    compat: dict[str, Any]
    client_overrides: list[str]


class ClusterError(RuntimeError):
    """A problem the user can act on; main() prints it without a traceback."""


def flink_home() -> Path:
    import pyflink

    home = Path(pyflink.__file__).resolve().parent
    if not (home / "bin" / "start-cluster.sh").exists():
        raise ClusterError(f"{home} has no bin/start-cluster.sh; is apache-flink installed in this venv?")
    return home


def port_bindable(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:port now (SO_REUSEADDR, as Flink's servers use,
    so connections in TIME_WAIT from a cluster stopped a moment ago do not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def site_packages() -> str:
    return next(p for p in sys.path if p.endswith("site-packages"))


class Cluster:
    """One session cluster whose conf, logs, PID files and state live under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.conf_dir = self.base / "conf"
        self.log_dir = self.base / "log"
        self.pid_dir = self.base / "pid"
        self.state_dir = self.base / "state"
        self.lib_dir = self.base / "lib"

    # --- configuration -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        path = self.conf_dir / "config.yaml"
        if not path.exists():
            raise ClusterError(f"no cluster configuration at {path}; run `python -m ops.cluster up` first")
        return read_conf(path)

    def rest_url(self) -> str:
        conf = self.config()
        return f"http://{conf.get('rest.address', '127.0.0.1')}:{conf.get('rest.port', 8081)}"

    def write_conf(self, ports: dict[str, int], flink_conf: Path = PROJECT_FLINK_CONF) -> dict[str, Any]:
        home = flink_home()
        conf: dict[str, Any] = read_conf(home / "conf" / "config.yaml")
        conf.update(read_conf(flink_conf))
        conf.update(
            {
                "python.executable": sys.executable,
                "python.client.executable": sys.executable,
                "python.pythonpath": f"{site_packages()}:{REPO_ROOT}",
                "execution.checkpointing.dir": (self.state_dir / "checkpoints").as_uri(),
                "execution.checkpointing.savepoint-dir": (self.state_dir / "savepoints").as_uri(),
                "env.log.dir": str(self.log_dir),
                "env.pid.dir": str(self.pid_dir),
                "jobmanager.bind-host": "127.0.0.1",
                "jobmanager.rpc.address": "127.0.0.1",
                "taskmanager.bind-host": "127.0.0.1",
                "taskmanager.host": "127.0.0.1",
                "rest.address": "127.0.0.1",
                "rest.bind-address": "127.0.0.1",
                "io.tmp.dirs": str(self.base / "tmp"),
            }
        )
        for opt, key in PORT_KEYS.items():
            if ports.get(opt):
                conf[key] = ports[opt]
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.log_dir, self.pid_dir, self.state_dir, self.base / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        header = (
            "# Generated by ops/cluster.py: PyFlink's conf/config.yaml + flink-conf/config.yaml + paths.\n"
        )
        body = yaml.safe_dump(
            dict(sorted(conf.items())), default_flow_style=False, sort_keys=False, width=10_000
        )
        (self.conf_dir / "config.yaml").write_text(header + body, encoding="utf-8")
        for pattern in ("log4j*.properties", "logback*.xml"):
            for src in (home / "conf").glob(pattern):
                shutil.copy2(src, self.conf_dir / src.name)
        self.write_lib()
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{conf.get('rest.port', 8081)}\n")
        (self.conf_dir / "workers").write_text("127.0.0.1\n")
        return conf

    def write_lib(self) -> None:
        """The daemons' lib dir (FLINK_LIB_DIR): PyFlink's lib/ plus opt/flink-python, as symlinks.

        The pip package keeps flink-python in opt/, where `flink run -py` finds it for the client but
        the JobManager and TaskManager do not (ClassNotFoundException: EmbeddedPythonProcessOperator).
        """
        home = flink_home()
        if self.lib_dir.exists():
            shutil.rmtree(self.lib_dir)
        self.lib_dir.mkdir(parents=True)
        jars = sorted((home / "lib").glob("*.jar")) + sorted((home / "opt").glob("flink-python-*.jar"))
        if not any(j.name.startswith("flink-python-") for j in jars):
            raise ClusterError(f"no flink-python jar in {home / 'opt'}; is apache-flink-libraries installed?")
        for jar in jars:
            (self.lib_dir / jar.name).symlink_to(jar)

    # --- processes -----------------------------------------------------------------------------
    def env(self, daemons: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        if daemons:
            env["FLINK_LIB_DIR"] = str(self.lib_dir)
        env["FLINK_CONF_DIR"] = str(self.conf_dir)
        env["JAVA_HOME"] = str(Path(procs.java_bin()).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def pids(self) -> dict[str, list[int]]:
        """PIDs recorded in Flink's pid files, per daemon (whether or not still alive)."""
        out: dict[str, list[int]] = {}
        for daemon in DAEMONS:
            for f in self.pid_dir.glob(f"flink-*-{daemon}.pid"):
                out.setdefault(daemon, []).extend(int(x) for x in f.read_text().split() if x.isdigit())
        return out

    def ours(self, pid: int) -> bool:
        """Alive and a JVM started with this cluster's conf dir (guards against PID reuse)."""
        argv = procs.read_cmdline(pid)
        return procs.pid_alive(pid) and argv is not None and any(str(self.conf_dir) in a for a in argv)

    def live_pids(self) -> list[int]:
        return [p for ps in self.pids().values() for p in ps if self.ours(p)]

    @staticmethod
    def bin(name: str) -> Path:
        """One of PyFlink's ``bin/`` scripts (``flink``, ``start-cluster.sh``, ...)."""
        return flink_home() / "bin" / name

    @staticmethod
    def job_id_in(output: str) -> str | None:
        """The JobID ``bin/flink run`` printed in ``output`` (None: it printed none)."""
        match = JOBID_RE.search(output)
        return match.group(1) if match else None

    def script(self, name: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        daemons = name.endswith("-cluster.sh") or name in ("taskmanager.sh", "jobmanager.sh")
        return subprocess.run(
            [str(self.bin(name)), *args],
            env=self.env(daemons=daemons),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
            # The daemons outlive this call: keep them out of our process group, so a Ctrl-C meant
            # for the CLI (or pytest) does not reach the JobManager or TaskManager.
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n{procs.tail(p, lines)}" for p in logs[-2:])

    # --- REST ----------------------------------------------------------------------------------
    def rest(
        self, path: str, timeout_s: float = 5.0, body: dict[str, Any] | None = None, method: str | None = None
    ) -> Any:
        """GET ``path`` (or POST ``body`` as JSON, or ``method``) on the REST API; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.rest_url() + path,
            data=data,
            method=method or ("GET" if body is None else "POST"),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
                return json.loads(raw) if raw.strip() else {}
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise ClusterError(f"Flink REST {req.get_method()} {path}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise ClusterError(
                f"Flink REST API at {self.rest_url()} is not answering ({e}); is the cluster up?"
            ) from e

    def overview(self) -> dict[str, Any] | None:
        try:
            return dict(self.rest("/overview", timeout_s=2.0))
        except ClusterError:
            return None

    # --- commands ------------------------------------------------------------------------------
    def up(
        self, ports: dict[str, int], timeout_s: float = UP_TIMEOUT_S, taskmanagers: int = 1
    ) -> dict[str, Any]:
        """Start the JobManager and ``taskmanagers`` TaskManagers (one slot each); the REST overview once
        they all have registered. TaskManagers beyond the job's parallelism are standbys: when one
        running the job dies, the job restarts on a standby at once instead of waiting for a new JVM."""
        if taskmanagers < 1:
            raise ClusterError(f"taskmanagers: at least 1, got {taskmanagers}")
        ov = self._up(ports, timeout_s)
        if taskmanagers > 1:
            self.start_taskmanagers(taskmanagers - 1, spare=True)
            self.wait_taskmanagers(taskmanagers, timeout_s)
            ov = self.overview() or ov
        return ov

    def _up(self, ports: dict[str, int], timeout_s: float) -> dict[str, Any]:
        procs.java_bin()  # a clear error if Java 17+ is missing
        if self.pid_dir.exists() and self.live_pids():
            raise ClusterError(f"a cluster from {self.base} is already running (PIDs {self.live_pids()})")
        conf = self.write_conf(ports)
        taken = [
            f"{key}={conf[key]}"
            for key in PORT_KEYS.values()
            if str(conf.get(key, "0")).isdigit()
            and int(conf.get(key, 0))
            and not port_bindable(int(conf[key]))
        ]
        if taken:
            raise ClusterError(f"port(s) already in use on 127.0.0.1: {', '.join(taken)}; pick others")
        for f in self.pid_dir.glob("*.pid"):  # stale: nothing recorded there is alive (checked above)
            f.unlink()
        res = self.script("start-cluster.sh")
        if res.returncode != 0:
            raise ClusterError(f"start-cluster.sh failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        deadline = time.monotonic() + timeout_s
        while True:
            ov = self.overview()
            if ov and ov.get("taskmanagers", 0) >= 1 and ov.get("slots-available", 0) >= 1:
                return ov
            recorded = self.pids()
            alive = [p for ps in recorded.values() for p in ps if procs.pid_alive(p)]
            if len(recorded) == len(DAEMONS) and not alive:  # not ``ours``: a JVM may still be exec'ing
                raise ClusterError(f"the Flink processes exited during start-up; logs:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {timeout_s:.0f}s waiting for a TaskManager with free slots at "
                    f"{self.rest_url()}/overview; logs:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def down(self, timeout_s: float = DOWN_TIMEOUT_S) -> list[int]:
        """stop-cluster.sh, then wait until the recorded JVMs are gone; returns the PIDs stopped."""
        if not self.conf_dir.exists():
            raise ClusterError(f"no cluster configuration at {self.conf_dir}; nothing to stop")
        before = self.live_pids()
        # Every TaskManager at once: stop-cluster.sh stops one per line of conf/workers (here one), one
        # after another, and each takes its ~5 s shutdown; the others would wait out the timeout below.
        for pid in self.taskmanager_pids():
            procs.ask_to_stop(pid)
        res = self.script("stop-cluster.sh")
        deadline = time.monotonic() + timeout_s
        while any(procs.pid_alive(p) for p in before) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in before if self.ours(p)]
        for pid in left:  # stop-cluster.sh did not manage; stop our own JVMs by PID
            procs.stop_pid(pid, grace_s=10.0)
        still = [p for p in before if procs.pid_alive(p)]
        if still:
            raise ClusterError(f"Flink processes still alive after stop: {still}\n{res.stdout}{res.stderr}")
        for f in self.pid_dir.glob("*.pid"):
            f.unlink()
        return before

    def submit(
        self,
        policy: Path,
        bootstrap: str,
        job_args: list[str],
        flink_conf: Path = PROJECT_FLINK_CONF,
        timeout_s: float = 300.0,
        savepoint: str | None = None,
        previous_job_id: str | None = None,
    ) -> str:
        """``flink run -d [-s savepoint] -py jobs/rendezvous_job.py ...``; the JobID. Writes the job
        manifest (ops/upgrade.py) to the state dir; from a savepoint, first checks the manifest the
        savepoint was taken with (a changed execution mode, state format or uid is refused)."""
        sub = self.prepare_submission(policy, bootstrap, job_args, flink_conf, savepoint)
        self._check_slots(sub)
        restore = ["-s", savepoint] if savepoint else []
        res = self.script("flink", *self.run_args(sub, restore, JOB_SCRIPT), timeout_s=timeout_s)
        out = res.stdout + res.stderr
        (self.log_dir / "submit.log").write_text(out)
        job_id = self.job_id_in(out)
        if res.returncode != 0 or not job_id:
            raise ClusterError(f"bin/flink run failed (exit {res.returncode}):\n{out[-4000:]}")
        return self.record_submission(sub, job_id, savepoint, previous_job_id)

    def _check_slots(self, sub: Submission) -> None:
        """A job needs one free slot per parallel instance; without them Flink would wait minutes for
        resources (slot.request.timeout) before it fails."""
        wanted = job_parallelism(effective_conf(self.config(), read_conf(sub.flink_conf), sub.job_args))
        free = int((self.overview() or {}).get("slots-available", 0))
        if free < wanted:
            raise ClusterError(
                f"the job's parallelism is {wanted} but the cluster has {free} free slot(s) (one per "
                f"TaskManager): start more with `cluster up --taskmanagers N` or lower --parallelism"
            )

    def prepare_submission(
        self,
        policy: Path,
        bootstrap: str,
        job_args: list[str],
        flink_conf: Path = PROJECT_FLINK_CONF,
        savepoint: str | None = None,
    ) -> Submission:
        """Everything a submission needs, checked: the policy, the final job args, the compat facts."""
        if self.overview() is None:
            raise ClusterError(
                f"no Flink cluster answering at {self.rest_url()}; run `python -m ops.cluster up`"
            )
        try:
            policy_obj = upgrade.load_policy(policy)
        except upgrade.PolicyError as e:
            raise ClusterError(f"invalid policy: {e}") from None
        conf = self.config()
        if not any(a.startswith("--state-dir") for a in job_args):
            job_args = [*job_args, "--state-dir", str(self.state_dir)]
        if not any(a.startswith("--archive-dir") for a in job_args):
            job_args = [*job_args, "--archive-dir", str(self.base / "archive")]
        try:
            compat = upgrade.compat_of(effective_conf(conf, read_conf(flink_conf), job_args))
            if savepoint is not None:
                taken_with = upgrade.read_manifest(upgrade.savepoint_manifest_path(savepoint))
                problems = upgrade.compat_problems(taken_with["compat"], compat) if taken_with else []
                if problems:
                    raise ClusterError(f"refusing to restore {savepoint}:\n  " + "\n  ".join(problems))
        except (upgrade.UpgradeRefused, FlinkConfError) as e:
            raise ClusterError(str(e)) from None
        client = [f"-D{k}={conf[k]}" for k in CLIENT_KEYS if k in conf]
        return Submission(policy, policy_obj, bootstrap, list(job_args), flink_conf, compat, client)

    def run_args(self, sub: Submission, flink_opts: list[str], script: Path, *script_args: str) -> list[str]:
        """``bin/flink`` arguments: run -d <flink_opts> -py <script> -pyfs udfs <script_args> <job args>."""
        return [
            "run", "-d", *flink_opts, "-py", str(script), "-pyfs", str(UDFS_DIR), *script_args,
            "--policy", str(sub.policy_path.resolve()), "--bootstrap", sub.bootstrap,
            "--flink-conf", str(sub.flink_conf.resolve()), *sub.client_overrides, *sub.job_args,
        ]  # fmt: skip

    def record_submission(
        self, sub: Submission, job_id: str, savepoint: str | None, previous_job_id: str | None
    ) -> str:
        """Write the job manifest of a submitted job (what ``upgrade`` checks against); the JobID."""
        manifest = upgrade.build_manifest(
            job_id=job_id,
            policy_path=sub.policy_path,
            policy=sub.policy,
            bootstrap=sub.bootstrap,
            job_args=sub.job_args,
            flink_conf=sub.flink_conf,
            compat=sub.compat,
            restored_from=savepoint,
            previous_job_id=previous_job_id,
        )
        upgrade.write_manifest(upgrade.manifest_path(self.state_dir), manifest)
        return job_id

    # --- TaskManagers --------------------------------------------------------------------------
    def taskmanager_pids(self) -> list[int]:
        return [p for p in self.pids().get("taskexecutor", []) if self.ours(p)]

    def busy_taskmanagers(self) -> dict[int, str]:
        """This cluster's TaskManagers with no free slot (those running a job): PID -> REST id. The REST
        API gives each one's data port, and the PID is the one of ours listening on it."""
        by_port = {
            int(tm["dataPort"]): str(tm["id"])
            for tm in self.rest("/taskmanagers").get("taskmanagers", [])
            if int(tm.get("freeSlots", 1)) == 0 and tm.get("dataPort")
        }
        busy = {}
        for pid in self.taskmanager_pids():
            for port in listening_ports(pid) & by_port.keys():
                busy[pid] = by_port[port]
        return busy

    def taskmanager_ids(self) -> set[str]:
        """The TaskManagers registered with the JobManager (REST ids)."""
        return {str(tm["id"]) for tm in self.rest("/taskmanagers").get("taskmanagers", [])}

    def stop_taskmanagers(
        self,
        timeout_s: float = DOWN_TIMEOUT_S,
        pids: list[int] | None = None,
        rest_ids: set[str] | None = None,
        wait_exit: bool = True,
    ) -> list[int]:
        """Stop this cluster's TaskManagers (or just ``pids``) by PID (SIGTERM to all at once, SIGKILL
        after a grace period), drop them from the pid file, and wait until the JobManager no longer
        lists them (``rest_ids``, default: all it listed before); the PIDs stopped. ``wait_exit=False``
        returns once the JobManager has let them go, while their JVMs may still be shutting down (call
        again with the same ``pids`` to wait for that)."""
        before = self.taskmanager_ids() if rest_ids is None else set(rest_ids)
        stopped = [p for p in (self.taskmanager_pids() if pids is None else pids) if self.ours(p)]
        for pid in stopped:
            procs.ask_to_stop(pid)
        for f in self.pid_dir.glob("flink-*-taskexecutor.pid"):
            keep = [x for x in f.read_text().split() if x.isdigit() and int(x) not in stopped]
            if keep:
                f.write_text("".join(f"{x}\n" for x in keep))
            else:
                f.unlink()
        t0 = time.monotonic()
        while left := self.taskmanager_ids() & before:
            if time.monotonic() - t0 > timeout_s:
                raise ClusterError(f"the JobManager still lists stopped TaskManager(s) {sorted(left)}")
            if time.monotonic() - t0 > TM_STOP_GRACE_S:  # one that ignores SIGTERM is killed
                for pid in stopped:
                    procs.stop_pid(pid, grace_s=0.0)
            time.sleep(0.1)
        if wait_exit:
            for pid in stopped:
                procs.stop_pid(pid, grace_s=max(0.0, TM_STOP_GRACE_S - (time.monotonic() - t0)))
        return stopped

    def start_taskmanagers(self, count: int = 1, spare: bool = False) -> list[int]:
        """``taskmanager.sh start`` ``count`` times; the new PIDs (they register in the background).

        ``spare``: to run next to the current ones, so fixed TaskManager ports (taken by those) are
        replaced by any free port (0) for the new ones.
        """
        args: list[str] = []
        if spare:
            conf = self.config()
            for key in ("taskmanager.rpc.port", "taskmanager.data.port"):
                if str(conf.get(key, "0")).isdigit() and int(conf.get(key, 0)):
                    args += ["-D", f"{key}=0"]
        before = set(self.pids().get("taskexecutor", []))
        for _ in range(count):
            res = self.script("taskmanager.sh", "start", *args)
            if res.returncode != 0:
                raise ClusterError(
                    f"taskmanager.sh start failed ({res.returncode}):\n{res.stdout}{res.stderr}"
                )
        started = sorted(set(self.pids().get("taskexecutor", [])) - before)
        # The pid file gets the PID at fork; until the exec into java is done, /proc may not show this
        # cluster's conf dir yet, so ``ours`` is polled rather than read once.
        deadline = time.monotonic() + TM_EXEC_TIMEOUT_S
        while not all(self.ours(p) for p in started):
            gone = [p for p in started if not procs.pid_alive(p)]
            if gone or time.monotonic() > deadline:
                raise ClusterError(
                    f"TaskManager(s) {gone or started} did not come up as this cluster's JVM; "
                    f"logs:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        return started

    def wait_taskmanagers(self, ids: int | set[str], timeout_s: float = UP_TIMEOUT_S) -> set[str]:
        """Until ``ids`` TaskManagers are registered (or, given a set, some beyond those); their ids."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.taskmanager_ids()
            if (len(now) >= ids) if isinstance(ids, int) else bool(now - ids):
                return now
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"no new TaskManager registered within {timeout_s:.0f} s; logs:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def cancel_running(self) -> list[str]:
        """Cancel every job that is not finished yet (REST); their ids."""
        ids = [j["jid"] for j in self.jobs() if j.get("state") not in ("FINISHED", "CANCELED", "FAILED")]
        for jid in ids:
            self.rest(f"/jobs/{jid}?mode=cancel", timeout_s=10.0, method="PATCH")
        return ids

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.rest("/jobs/overview").get("jobs", []))

    def cancel(self, job_id: str) -> str:
        if self.overview() is None:
            raise ClusterError(f"no Flink cluster answering at {self.rest_url()}")
        res = self.script("flink", "cancel", job_id)
        if res.returncode != 0:
            raise ClusterError(f"bin/flink cancel {job_id} failed:\n{res.stdout}{res.stderr}")
        return res.stdout


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (Linux ``/proc``; empty when it cannot be read)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return set()
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def parallelism_override(parallelism: int) -> list[str]:
    """The job argument that sets its parallelism: a Flink override, so the manifest records it and an
    upgrade that leaves it out keeps it (later ``-D`` items win)."""
    return ["-D", f"{PARALLELISM_KEY}={parallelism}"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - argparse for each subcommand, and dispatch
    ap = argparse.ArgumentParser(prog="ops.cluster", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="write the conf dir, start JobManager + TaskManager, wait for slots")
    p_down = sub.add_parser("down", help="stop the cluster and check its processes are gone")
    p_submit = sub.add_parser("submit", help="submit the rendezvous job (detached); prints the JobID")
    p_status = sub.add_parser("status", help="jobs on the cluster (REST /jobs/overview)")
    p_cancel = sub.add_parser("cancel", help="cancel a job")
    p_upgrade = sub.add_parser(
        "upgrade",
        help="new policy: validate, stop with a savepoint, fresh TaskManagers, resubmit from the savepoint",
        description="Savepoint-safe policy upgrade (ops/upgrade.py). Extra -D key=value items are Flink "
        "overrides for the new job; a change the savepoint cannot carry (execution mode, state "
        "format, uids) is refused with exit code 2 and the running job is left untouched.",
    )
    for p in (p_up, p_down, p_submit, p_status, p_cancel, p_upgrade):
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="cluster directory (default var/cluster)"
        )
    p_up.add_argument("--rest-port", type=int, default=8081)
    p_up.add_argument("--rpc-port", type=int, default=0, help="jobmanager.rpc.port (default from conf)")
    p_up.add_argument("--blob-port", type=int, default=0, help="blob.server.port (default: any)")
    p_up.add_argument("--tm-rpc-port", type=int, default=0, help="taskmanager.rpc.port (default: any)")
    p_up.add_argument("--tm-data-port", type=int, default=0, help="taskmanager.data.port (default: any)")
    p_up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S)
    p_up.add_argument(
        "--taskmanagers",
        type=int,
        default=DEFAULT_TASKMANAGERS,
        help="TaskManagers to start, one slot each (default %(default)s: the job's, and a standby that "
        "takes the job over at once when that TaskManager dies)",
    )
    p_submit.add_argument("--policy", type=Path, required=True)
    p_submit.add_argument("--bootstrap", required=True)
    p_submit.add_argument("--flink-conf", type=Path, default=PROJECT_FLINK_CONF)
    p_submit.add_argument("--savepoint", help="restore from this savepoint (flink run -s)")
    for p in (p_submit, p_upgrade):
        p.add_argument(
            "--parallelism",
            type=_positive_int,
            help="the job's parallelism (one slot per TaskManager: this many TaskManagers run it; the "
            "topics need at least this many partitions); upgrade: rescale from the savepoint",
        )
    p_upgrade.add_argument("--policy", type=Path, required=True, help="the new policy file")
    p_upgrade.add_argument("--flink-conf", type=Path, help="default: the one the running job was given")
    p_upgrade.add_argument("--check", action="store_true", help="only validate; change nothing")
    p_upgrade.add_argument("--json", action="store_true", help="print the report as JSON")
    # The check reads the policies topic: with this file (e.g. operator.properties), else the job's own.
    kafka_client.add_config_argument(p_upgrade)
    p_status.add_argument("--json", action="store_true")
    p_cancel.add_argument("job_id")
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd not in ("submit", "upgrade"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.cmd in ("submit", "upgrade") and a.parallelism is not None:
        extra = [*extra, *parallelism_override(a.parallelism)]
    cluster = Cluster(a.dir)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            ports = {k: getattr(a, k) for k in PORT_KEYS}
            ov = cluster.up(ports, a.timeout, a.taskmanagers)
            print(
                f"cluster up at {cluster.rest_url()} in {time.monotonic() - t0:.1f}s: "
                f"{ov.get('taskmanagers')} TaskManager(s), {ov.get('slots-available')} free slot(s); "
                f"PIDs {cluster.live_pids()}; FLINK_CONF_DIR={cluster.conf_dir}",
                flush=True,
            )
        elif a.cmd == "down":
            stopped = cluster.down()
            print(f"cluster down; stopped PIDs {stopped}" if stopped else "no cluster process was running")
        elif a.cmd == "submit":
            print(
                cluster.submit(a.policy, a.bootstrap, extra, a.flink_conf, savepoint=a.savepoint), flush=True
            )
        elif a.cmd == "status":
            jobs = cluster.jobs()
            if a.json:
                print(json.dumps(jobs, indent=1))
            for j in [] if a.json else jobs:
                print(f"{j['jid']}  {j['state']:<10s}  {j['name']}")
        elif a.cmd == "cancel":
            cluster.cancel(a.job_id)
            print(f"cancelled {a.job_id}")
        elif a.cmd == "upgrade":
            kafka_client.use_config_file(a.kafka_config, "rendezvous cluster upgrade")
            return upgrade.main_upgrade(cluster, a.policy, a.flink_conf, extra, a.check, a.json)
    except (ClusterError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Flink standalone session cluster from the PyFlink pip package, driven by the project.

    python -m ops.cluster up --dir var/cluster [--rest-port 8081]   # conf dir + start-cluster.sh + wait
    python -m ops.cluster submit --dir var/cluster --policy policies/default.yaml --bootstrap 127.0.0.1:9092
    python -m ops.cluster status --dir var/cluster
    python -m ops.cluster cancel --dir var/cluster JOBID
    python -m ops.cluster down --dir var/cluster                    # stop-cluster.sh + verify PIDs gone

FLINK_HOME is the installed ``pyflink`` package (it ships ``bin/`` and ``conf/``). Nothing in
site-packages is edited: ``up`` writes its own conf dir under ``--dir`` (PyFlink's bundled
``config.yaml`` with the project's ``flink-conf/config.yaml`` laid over it, plus paths and ports)
and every ``bin/`` script runs with ``FLINK_CONF_DIR`` pointing at it. Flink writes its PID files
to ``<dir>/pid`` (``env.pid.dir``); ``down`` checks that those processes are gone, and only those.

Thread mode on a session cluster: a TaskManager's embedded interpreter keeps ``sys.modules`` and
a second thread-mode job in the same TaskManager can fail (pemja, FLINK-37727), so run one job per
cluster and restart the cluster (``down`` + ``up``) for every new job or upgrade.
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
from pathlib import Path
from typing import Any

import yaml

from ops import procs

REPO_ROOT = procs.repo_root()
PROJECT_FLINK_CONF = REPO_ROOT / "flink-conf" / "config.yaml"
JOB_SCRIPT = REPO_ROOT / "jobs" / "rendezvous_job.py"
UDFS_DIR = REPO_ROOT / "udfs"
DEFAULT_DIR = REPO_ROOT / "var" / "cluster"
UP_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 60.0
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


class ClusterError(RuntimeError):
    """A problem the user can act on; main() prints it without a traceback."""


def flink_home() -> Path:
    import pyflink

    home = Path(pyflink.__file__).resolve().parent
    if not (home / "bin" / "start-cluster.sh").exists():
        raise ClusterError(f"{home} has no bin/start-cluster.sh; is apache-flink installed in this venv?")
    return home


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested YAML -> {'a.b.c': scalar}; keys already written flat ('a.b: x') come out the same."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif data is not None:
        out[prefix[:-1]] = data
    return out


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
        return flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})

    def rest_url(self) -> str:
        conf = self.config()
        return f"http://{conf.get('rest.address', '127.0.0.1')}:{conf.get('rest.port', 8081)}"

    def write_conf(self, ports: dict[str, int], flink_conf: Path = PROJECT_FLINK_CONF) -> dict[str, Any]:
        home = flink_home()
        conf = flatten(yaml.safe_load((home / "conf" / "config.yaml").read_text(encoding="utf-8")) or {})
        conf.update(flatten(yaml.safe_load(flink_conf.read_text(encoding="utf-8")) or {}))
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

    def script(self, name: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(flink_home() / "bin" / name), *args],
            env=self.env(daemons=name.endswith("-cluster.sh")),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n{procs.tail(p, lines)}" for p in logs[-2:])

    # --- REST ----------------------------------------------------------------------------------
    def rest(self, path: str, timeout_s: float = 5.0) -> Any:
        try:
            with urllib.request.urlopen(self.rest_url() + path, timeout=timeout_s) as resp:
                return json.loads(resp.read())
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
    def up(self, ports: dict[str, int], timeout_s: float = UP_TIMEOUT_S) -> dict[str, Any]:
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
            if len(recorded) == len(DAEMONS) and not self.live_pids():
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
    ) -> str:
        if self.overview() is None:
            raise ClusterError(
                f"no Flink cluster answering at {self.rest_url()}; run `python -m ops.cluster up`"
            )
        conf = self.config()
        overrides = [f"-D{k}={conf[k]}" for k in CLIENT_KEYS if k in conf]
        if not any(a.startswith("--state-dir") for a in job_args):
            job_args = [*job_args, "--state-dir", str(self.state_dir)]
        if not any(a.startswith("--archive-dir") for a in job_args):
            job_args = [*job_args, "--archive-dir", str(self.base / "archive")]
        args = [
            "run", "-d", "-py", str(JOB_SCRIPT), "-pyfs", str(UDFS_DIR),
            "--policy", str(policy.resolve()), "--bootstrap", bootstrap,
            "--flink-conf", str(flink_conf.resolve()), *overrides, *job_args,
        ]  # fmt: skip
        res = self.script("flink", *args, timeout_s=timeout_s)
        out = res.stdout + res.stderr
        (self.log_dir / "submit.log").write_text(out)
        match = JOBID_RE.search(out)
        if res.returncode != 0 or not match:
            raise ClusterError(f"bin/flink run failed (exit {res.returncode}):\n{out[-4000:]}")
        return match.group(1)

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.rest("/jobs/overview").get("jobs", []))

    def cancel(self, job_id: str) -> str:
        if self.overview() is None:
            raise ClusterError(f"no Flink cluster answering at {self.rest_url()}")
        res = self.script("flink", "cancel", job_id)
        if res.returncode != 0:
            raise ClusterError(f"bin/flink cancel {job_id} failed:\n{res.stdout}{res.stderr}")
        return res.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ops.cluster", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="write the conf dir, start JobManager + TaskManager, wait for slots")
    p_down = sub.add_parser("down", help="stop the cluster and check its processes are gone")
    p_submit = sub.add_parser("submit", help="submit the rendezvous job (detached); prints the JobID")
    p_status = sub.add_parser("status", help="jobs on the cluster (REST /jobs/overview)")
    p_cancel = sub.add_parser("cancel", help="cancel a job")
    for p in (p_up, p_down, p_submit, p_status, p_cancel):
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="cluster directory (default var/cluster)"
        )
    p_up.add_argument("--rest-port", type=int, default=8081)
    p_up.add_argument("--rpc-port", type=int, default=0, help="jobmanager.rpc.port (default from conf)")
    p_up.add_argument("--blob-port", type=int, default=0, help="blob.server.port (default: any)")
    p_up.add_argument("--tm-rpc-port", type=int, default=0, help="taskmanager.rpc.port (default: any)")
    p_up.add_argument("--tm-data-port", type=int, default=0, help="taskmanager.data.port (default: any)")
    p_up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S)
    p_submit.add_argument("--policy", type=Path, required=True)
    p_submit.add_argument("--bootstrap", required=True)
    p_submit.add_argument("--flink-conf", type=Path, default=PROJECT_FLINK_CONF)
    p_status.add_argument("--json", action="store_true")
    p_cancel.add_argument("job_id")
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd != "submit":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    cluster = Cluster(a.dir)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            ports = {k: getattr(a, k) for k in PORT_KEYS}
            ov = cluster.up(ports, a.timeout)
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
            print(cluster.submit(a.policy, a.bootstrap, extra, a.flink_conf), flush=True)
        elif a.cmd == "status":
            jobs = cluster.jobs()
            if a.json:
                print(json.dumps(jobs, indent=1))
            for j in [] if a.json else jobs:
                print(f"{j['jid']}  {j['state']:<10s}  {j['name']}")
        elif a.cmd == "cancel":
            cluster.cancel(a.job_id)
            print(f"cancelled {a.job_id}")
    except (ClusterError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

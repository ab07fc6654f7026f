"""`make bench`'s part ``scale``: the job alone at parallelism 1 and 2 on a session cluster of two
TaskManagers (issue 14), with the CPU of every process.

In thread mode all the Python of a TaskManager runs in one interpreter, so the job scales by
TaskManagers (one slot each) and Kafka partitions, not by slots. Each round: a fresh broker whose
topics have two partitions, a session cluster with two fresh TaskManagers (a TaskManager whose Python
ran one job does not run another: FLINK-37727), the job at parallelism p, a warm-up, then a backlog of
requests with four scores each drained as fast as the job can; the rate over the drain's last two
thirds and each process's CPU per request over the same window. On a 2-core machine two TaskManagers
compete with the broker for the cores, so what this shows is the cost per request of each
TaskManager and of the broker, from which a deployment is sized (docs/performance.md), not a speed-up.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import stack
from harness.bench_kit import BACKLOG_MODELS, CpuMeter, preload_backlog, us_per_request
from ops import cluster as cluster_mod
from ops import kafka_admin, kafka_client, procs, upgrade

REPO_ROOT = procs.repo_root()
BENCH_POLICY = REPO_ROOT / "policies" / "default.yaml"
PARTITIONS = 2  # of every topic: the highest parallelism measured here
DRAIN_TIMEOUT_S = 600.0


@dataclass
class ClusterJob:
    """A job on the session cluster, as harness.stack's readiness probe sees a job process."""

    cluster: cluster_mod.Cluster
    job_id: str

    def is_running(self) -> bool:
        return upgrade.job_state(self.cluster, self.job_id) == "RUNNING"

    def log_tail(self, lines: int = 40) -> str:
        return self.cluster.log_tail(lines)


def process_pids(cluster: cluster_mod.Cluster, broker_pid: int) -> dict[str, int]:
    """Name -> PID of the processes whose CPU is measured: the broker, the JobManager, each TaskManager."""
    pids = {"broker": broker_pid}
    for i, pid in enumerate(p for p in cluster.pids().get("standalonesession", []) if cluster.ours(p)):
        pids["jobmanager" if i == 0 else f"jobmanager-{i}"] = pid
    for i, pid in enumerate(sorted(cluster.taskmanager_pids())):
        pids[f"taskmanager-{i + 1}"] = pid
    return pids


def drain(bootstrap: str, job: ClusterJob, requests: int, pids: dict[str, int]) -> dict[str, Any]:
    """Preload ``requests`` requests with one score per model each, then wait for every answer; the
    rate and each process's CPU per request over the last two thirds of the answers."""
    topic = f"{kafka_client.results_prefix()}scale-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    preload_backlog(bootstrap, topic, requests, BACKLOG_MODELS)
    consumer = kafka_client.consumer(bootstrap, client_id="bench-scale")
    tp = kafka_client.TopicPartition(topic, 0)
    t0 = time.monotonic()
    mark: tuple[float, int] | None = None
    window: CpuMeter | None = None
    done = 0
    try:
        while time.monotonic() - t0 < DRAIN_TIMEOUT_S and done < requests:
            if not job.is_running():
                raise RuntimeError(f"the job stopped running:\n{job.log_tail(30)}")
            done = kafka_client.end_offsets(consumer, [tp])[(topic, 0)]
            if mark is None and done >= requests // 3:
                mark = (time.monotonic(), done)
                window = CpuMeter(pids)
            time.sleep(0.2)
    finally:
        consumer.close()
    t1 = time.monotonic()
    out: dict[str, Any] = {"requests": requests, "results": done, "drain_s": round(t1 - t0, 1)}
    if mark is not None and window is not None and done > mark[1] and t1 > mark[0]:
        per_s = (done - mark[1]) / (t1 - mark[0])
        out["results_per_s"] = round(per_s)
        out["records_per_s"] = round(per_s * (1 + len(BACKLOG_MODELS)))
        out["cpu_percent"] = window.percent()
        out["cpu_us_per_request"] = us_per_request(window.seconds(), done - mark[1])
    return out


def one_round(
    parallelism: int, backlog: int, warmup: int, work: Path, taskmanagers: int = PARTITIONS
) -> dict[str, Any]:
    """A fresh broker and cluster, the job at ``parallelism``, a warm-up drain of ``warmup`` requests and
    the measured one."""
    shutil.rmtree(work, ignore_errors=True)
    broker = stack.start_broker(work / "broker", partitions=PARTITIONS)
    cluster = cluster_mod.Cluster(work / "cluster")
    started: set[int] = set()
    try:
        try:
            cluster.up({k: procs.free_port() for k in cluster_mod.PORT_KEYS}, taskmanagers=taskmanagers)
        finally:
            started.update(p for ps in cluster.pids().values() for p in ps)
        job_id = cluster.submit(BENCH_POLICY, broker.bootstrap, cluster_mod.parallelism_override(parallelism))
        upgrade.wait_running(cluster, job_id)
        job = ClusterJob(cluster, job_id)
        ready_s, _ = stack.wait_until_answering(broker.bootstrap, job)
        pids = process_pids(cluster, broker.pid)
        if warmup:
            drain(broker.bootstrap, job, warmup, pids)  # the JIT and Python's caches, not recorded
        result = drain(broker.bootstrap, job, backlog, pids)
        busy = len(cluster.busy_taskmanagers())
        return {"parallelism": parallelism, "taskmanagers": taskmanagers, "busy_taskmanagers": busy,
                "ready_s": round(ready_s, 1), **result}  # fmt: skip
    except (RuntimeError, TimeoutError) as e:
        return {"parallelism": parallelism, "error": str(e).splitlines()[0]}
    finally:
        try:
            cluster.down()
        except Exception as e:  # fall through to our own PIDs
            say(f"scale: cluster down failed: {e}")
        for pid in started:
            if cluster.ours(pid):
                procs.stop_pid(pid, grace_s=10.0)
        broker.stop()


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scaling(parallelisms: Sequence[int], backlog: int, warmup: int, work: Path) -> dict[str, Any]:
    """One round per parallelism; each on its own broker and cluster under ``work``."""
    rounds = []
    for p in parallelisms:
        say(f"scale: parallelism {p}, {backlog} requests with {len(BACKLOG_MODELS)} scores each ...")
        r = one_round(p, backlog, warmup, work / f"scale-{p}")
        say(f"scale: parallelism {p}: {r.get('records_per_s', r.get('error'))} records/s")
        rounds.append(r)
    return {"partitions": PARTITIONS, "rounds": rounds}


def per_taskmanager_cost(rounds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: records/s, and the µs of CPU per request of the TaskManagers together, the broker and
    the JobManager — the figures a deployment is sized from."""
    rows = []
    for r in rounds:
        cost = r.get("cpu_us_per_request")
        if not cost:
            continue
        rows.append({
            "parallelism": r["parallelism"],
            "records_per_s": r.get("records_per_s"),
            "taskmanagers_us": sum(v for k, v in cost.items() if k.startswith("taskmanager")),
            "broker_us": cost.get("broker"),
            "jobmanager_us": cost.get("jobmanager"),
        })  # fmt: skip
    return rows


def section(result: dict[str, Any]) -> list[str]:
    """The part's Markdown: one row per parallelism."""
    lines = [
        "## Scale: the job alone at parallelism 1 and 2 (session cluster, two TaskManagers)",
        "",
        f"Topics with {result.get('partitions')} partitions; a backlog of requests with "
        f"{len(BACKLOG_MODELS)} scores each; the rate and CPU over the drain's last two thirds.",
        "",
        "| parallelism | busy TaskManagers | records/s | CPU % per process | µs CPU per request (TaskManagers / broker / JobManager) |",
        "|---|---|---|---|---|",
    ]
    rows = {r["parallelism"]: r for r in per_taskmanager_cost(result.get("rounds", []))}
    for r in result.get("rounds", []):
        if "error" in r:
            lines.append(f"| {r['parallelism']} | failed: {r['error'][:150]} | | | |")
            continue
        row = rows.get(r["parallelism"], {})
        cpu = ", ".join(f"{k} {v}" for k, v in sorted((r.get("cpu_percent") or {}).items()))
        lines.append(
            f"| {r['parallelism']} | {r.get('busy_taskmanagers')} | {r.get('records_per_s')} | {cpu} | "
            f"{row.get('taskmanagers_us')} / {row.get('broker_us')} / {row.get('jobmanager_us')} |"
        )
    return lines

"""`make episodes`: where a slow second comes from, on this machine.

The bench's stack (three models and a canary in one runner process, the default policy) runs at one fixed
rate for a while after its warm-up. Every answer's latency and its legs are kept by the second its request
was sent; in the same seconds a separate process samples, every ``--period`` seconds, each thread of
every process of the stack (the job's JVM, the broker, the runner, the load generator): its CPU time
and the time it waited for a core (``/proc/<pid>/task/<tid>/schedstat``), with the host's steal time
(``/proc/stat``: the virtual machine's cores taken by its host) and CPU pressure (``/proc/pressure/cpu``);
and the job's checkpoints from its REST API.

The seconds whose p99 is over the budget (the slow seconds) are then set against the others: which
threads ran more, which waited longer for a core, whether the host took the cores, whether a checkpoint
was in them. That answers "busy, starved or blocked": a thread on the answer path that ran more was
busy; one that waited for a core was starved (by which threads: those that ran more); one that did
neither while the answers were late was blocked on something else (a lock, a buffer, a timer).

Writes var/episodes/episodes.json and episodes.md. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import bench, demo, loadgen, profile, runinfo, stack
from ops import procs
from udfs.policy import PolicyError, load_policy

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "var" / "episodes"
WINDOW_MS = 1000.0  # the report's unit: one second of sent requests
TOP_THREADS = 12  # threads listed in the slow-against-other comparison


# --- sampling (a process of its own: its reads must not pause the load generator) -------------


def sample(pids: Mapping[str, int], period_s: float, seconds: float, out: Path) -> None:
    """Every ``period_s`` for ``seconds``: each thread's (run ns, run-queue wait ns) of each named
    process, the host's CPU ticks and CPU pressure; written to ``out`` as JSON at the end."""
    ticks: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    end = time.time() + seconds
    while time.time() < end:
        t = time.time()
        threads: dict[str, tuple[int, int]] = {}
        for label, pid in pids.items():
            for tid, name, run_ns, wait_ns in procs.thread_schedstat(pid):
                key = f"{label}/{tid}"
                names.setdefault(key, name)
                threads[key] = (run_ns, wait_ns)
        ticks.append({"t_ms": t * 1000.0, "host": procs.host_cpu(), "threads": threads})
        time.sleep(max(0.0, period_s - (time.time() - t)))
    out.write_text(json.dumps({"period_s": period_s, "names": names, "ticks": ticks}))


def start_sampler(pids: Mapping[str, int], period_s: float, seconds: float, out: Path) -> Any:
    """The sampler in a spawned process (no fork of this process's Kafka client threads)."""
    proc = multiprocessing.get_context("spawn").Process(
        target=sample, args=(dict(pids), period_s, seconds, out), daemon=True
    )
    proc.start()
    return proc


# --- analysis (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request of the measured run: when it was sent, its latency and its legs (None: unanswered
    or no timestamps)."""

    sent_ms: float
    latency_ms: float | None
    in_job_ms: float | None = None
    to_job_ms: float | None = None
    back_ms: float | None = None


def answers_of(
    sent: Sequence[loadgen.SentRequest], received: Sequence[loadgen.ReceivedResult]
) -> list[Answer]:
    """Each sent request with its first result (the one the client would act on)."""
    first: dict[str, loadgen.ReceivedResult] = {}
    for r in received:
        rid = r.request_id
        if rid is not None and (rid not in first or r.consumed_ms < first[rid].consumed_ms):
            first[rid] = r
    out = []
    for s in sent:
        got = first.get(s.request_id)
        if got is None:
            out.append(Answer(s.sent_ms, None))
            continue
        legs = loadgen.result_legs(s.sent_ms, got.consumed_ms, got.record or {}) or {}
        out.append(
            Answer(
                s.sent_ms,
                got.consumed_ms - s.sent_ms,
                legs.get(loadgen.LEG_IN_JOB),
                legs.get(loadgen.LEG_TO_JOB),
                legs.get(loadgen.LEG_BACK),
            )
        )
    return out


def _p(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _inside(samples: Sequence[Mapping[str, Any]], lo_ms: float, hi_ms: float) -> list[Mapping[str, Any]]:
    """The samples taken inside [lo_ms, hi_ms], in order."""
    return [s for s in samples if lo_ms <= s["t_ms"] <= hi_ms]


def _ends(
    samples: Sequence[Mapping[str, Any]], lo_ms: float, hi_ms: float
) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """The first and the last sample inside [lo_ms, hi_ms] (None: fewer than two)."""
    inside = _inside(samples, lo_ms, hi_ms)
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def thread_percent(
    samples: Sequence[Mapping[str, Any]], lo_ms: float, hi_ms: float
) -> tuple[dict[str, float], dict[str, float]]:
    """({thread: % of a core it ran}, {thread: % of the time it waited for a core}) between the first
    and the last sample inside [lo_ms, hi_ms]; threads seen at both ends only."""
    ends = _ends(samples, lo_ms, hi_ms)
    if ends is None:
        return {}, {}
    a, b = ends
    dt_ns = (b["t_ms"] - a["t_ms"]) * 1e6
    run, wait = {}, {}
    for key, (run_ns, wait_ns) in b["threads"].items():
        if key in a["threads"]:
            run[key] = 100.0 * (run_ns - a["threads"][key][0]) / dt_ns
            wait[key] = 100.0 * (wait_ns - a["threads"][key][1]) / dt_ns
    return run, wait


def host_percent(samples: Sequence[Mapping[str, Any]], lo_ms: float, hi_ms: float) -> dict[str, float]:
    """The host's busy, steal and pressure (% of the window; busy and steal over all cores, 100 each)."""
    ends = _ends(samples, lo_ms, hi_ms)
    if ends is None:
        return {}
    a, b = ends[0]["host"], ends[1]["host"]
    total = sum(b[k] - a[k] for k in procs.HOST_CPU_FIELDS)
    dt_us = (ends[1]["t_ms"] - ends[0]["t_ms"]) * 1000.0
    out = {
        "busy": 100.0 * (total - (b["idle"] - a["idle"]) - (b["iowait"] - a["iowait"])) / total
        if total
        else 0.0,
        "steal": 100.0 * (b["steal"] - a["steal"]) / total if total else 0.0,
    }
    if a.get("pressure_some_us") is not None and b.get("pressure_some_us") is not None:
        out["pressure"] = 100.0 * (b["pressure_some_us"] - a["pressure_some_us"]) / dt_us
    return out


def seconds_table(
    answers: Sequence[Answer],
    samples: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    budget_ms: float,
    window_ms: float = WINDOW_MS,
) -> list[dict[str, Any]]:
    """One row per window of sent requests: answers, latency, legs, late ones, each process's CPU and
    run-queue wait, the host's, and the checkpoints triggered in it."""
    if not answers:
        return []
    t0 = min(a.sent_ms for a in answers)
    n = int((max(a.sent_ms for a in answers) - t0) // window_ms) + 1
    rows = []
    for w in range(n):
        lo, hi = t0 + w * window_ms, t0 + (w + 1) * window_ms
        mine = [a for a in answers if lo <= a.sent_ms < hi]
        lat = [a.latency_ms for a in mine if a.latency_ms is not None]
        in_job = [a.in_job_ms for a in mine if a.in_job_ms is not None]
        to_job = [a.to_job_ms for a in mine if a.to_job_ms is not None]
        back = [a.back_ms for a in mine if a.back_ms is not None]
        run, wait = thread_percent(samples, lo, hi)
        rows.append(
            {
                "second": w * window_ms / 1000.0,
                "from_ms": lo,
                "sent": len(mine),
                "answered": len(lat),
                "p50_ms": _p(lat, 50),
                "p99_ms": _p(lat, 99),
                "max_ms": max(lat) if lat else None,
                "late": sum(x > budget_ms for x in lat),
                "legs_p99_ms": {
                    loadgen.LEG_TO_JOB: _p(to_job, 99),
                    loadgen.LEG_IN_JOB: _p(in_job, 99),
                    loadgen.LEG_BACK: _p(back, 99),
                },
                "cpu_percent": {
                    lb: round(sum(v for k, v in run.items() if k.startswith(lb + "/")), 1) for lb in labels
                },
                "wait_percent": {
                    lb: round(sum(v for k, v in wait.items() if k.startswith(lb + "/")), 1) for lb in labels
                },
                "host_percent": {k: round(v, 1) for k, v in host_percent(samples, lo, hi).items()},
                "checkpoints": [c["id"] for c in checkpoints if lo <= c["trigger_ms"] < hi],
            }
        )
    return rows


def late_near_checkpoints(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many late answers were sent in a second in which a checkpoint was triggered, or in the second
    after (a snapshot's asynchronous part runs on for up to a second): what checkpoints cost the deadline."""
    near = [
        bool(r["checkpoints"]) or (i > 0 and bool(rows[i - 1]["checkpoints"])) for i, r in enumerate(rows)
    ]
    return {
        "late": sum(r["late"] for r in rows),
        "late_near_checkpoints": sum(r["late"] for r, n in zip(rows, near, strict=True) if n),
        "seconds": len(rows),
        "seconds_near_checkpoints": sum(near),
    }


def slow(row: Mapping[str, Any], budget_ms: float) -> bool:
    """A slow second: its p99 over the budget."""
    return row["p99_ms"] is not None and row["p99_ms"] > budget_ms


def stage_of(key: str, name: str) -> str:
    """A thread's stage: the process and, in the job's JVM, profile.THREAD_STAGES' stage of its name;
    elsewhere its name without a trailing number (a pool's threads together)."""
    label = key.split("/", 1)[0]
    if label == "job":
        return f"job: {profile.thread_stage(name)}"
    return f"{label}: {re.sub(r'[-#_ ]*[0-9]+$', '', name) or name}"


Shares = tuple[dict[str, float], dict[str, float]]  # thread_percent's (run, wait) of one window


def window_shares(
    rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]], window_ms: float = WINDOW_MS
) -> list[Shares]:
    """thread_percent of each row's window, once for every comparison made of them."""
    return [thread_percent(samples, row["from_ms"], row["from_ms"] + window_ms) for row in rows]


def compare(
    rows: Sequence[Mapping[str, Any]],
    shares: Sequence[Shares],
    group_of: Callable[[str], str],
    budget_ms: float,
    top: int = TOP_THREADS,
) -> list[dict[str, Any]]:
    """Each group of threads' mean run % and run-queue wait % (of a core) in the slow seconds and in the
    others (``shares``: window_shares of ``rows``), the groups that differ most first (run and wait
    together). Empty unless both kinds exist."""
    per_window: dict[bool, list[Shares]] = {True: [], False: []}
    for row, (run, wait) in zip(rows, shares, strict=True):
        grouped: tuple[dict[str, float], dict[str, float]] = ({}, {})
        for i, values in enumerate((run, wait)):
            for key, v in values.items():
                g = group_of(key)
                grouped[i][g] = grouped[i].get(g, 0.0) + v
        per_window[slow(row, budget_ms)].append(grouped)
    if not per_window[True] or not per_window[False]:
        return []

    def mean(kind: bool, i: int, group: str) -> float:
        return round(float(np.mean([w[i].get(group, 0.0) for w in per_window[kind]])), 1)

    groups = {g for ws in per_window.values() for w in ws for g in w[0]}
    out: list[dict[str, Any]] = [
        {
            "group": g,
            "run_slow": mean(True, 0, g),
            "run_other": mean(False, 0, g),
            "wait_slow": mean(True, 1, g),
            "wait_other": mean(False, 1, g),
        }
        for g in groups
    ]
    out.sort(
        key=lambda d: (
            -(abs(d["run_slow"] - d["run_other"]) + abs(d["wait_slow"] - d["wait_other"])),
            d["group"],
        )
    )
    return out[:top]


def compare_threads(
    rows: Sequence[Mapping[str, Any]], shares: Sequence[Shares], names: Mapping[str, str], budget_ms: float
) -> list[dict[str, Any]]:
    """compare() thread by thread, each named ``process/tid name``."""
    return compare(rows, shares, lambda key: f"{key} {names.get(key, '?')}", budget_ms)


def compare_stages(
    rows: Sequence[Mapping[str, Any]], shares: Sequence[Shares], names: Mapping[str, str], budget_ms: float
) -> list[dict[str, Any]]:
    """compare() by stage (stage_of), every stage listed."""
    return compare(rows, shares, lambda key: stage_of(key, names.get(key, "?")), budget_ms, top=10_000)


TOP_IN_SAMPLE = 6  # threads listed per sample inside a slow second


def _short(thread_name: str) -> str:
    """A task thread's name up to its first chained operator ("rendezvous mailbox -> (Map, ...")."""
    return thread_name.split(" -> ", 1)[0][:40]


def inside_slow_seconds(
    rows: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    budget_ms: float,
    window_ms: float = WINDOW_MS,
) -> list[dict[str, Any]]:
    """Each slow second, sample interval by sample interval: the host's busy share and the threads that
    ran most, each with its run and wait % (a second's means hide a quarter in which the mailbox thread
    waited for a core while another took it)."""
    out = []
    for row in rows:
        if not slow(row, budget_ms):
            continue
        inside = _inside(samples, row["from_ms"], row["from_ms"] + window_ms)
        for a, b in zip(inside, inside[1:], strict=False):
            run, wait = thread_percent([a, b], a["t_ms"], b["t_ms"])
            top = sorted(run, key=lambda k: -run[k])[:TOP_IN_SAMPLE]
            out.append(
                {
                    "second": row["second"],
                    "at_ms": round(b["t_ms"] - row["from_ms"]),
                    "host_busy": round(host_percent([a, b], a["t_ms"], b["t_ms"]).get("busy", 0.0)),
                    "threads": [
                        {
                            "thread": f"{k.split('/')[0]}: {_short(names.get(k, '?'))}",
                            "run": round(run[k]),
                            "wait": round(wait[k]),
                        }
                        for k in top
                    ],
                }
            )
    return out


# --- the job's checkpoints --------------------------------------------------------------------


def checkpoints(rest_url: str) -> list[dict[str, Any]]:
    """The job's completed and failed checkpoints from its REST API: id, trigger time (epoch ms), end to
    end duration, the state's full size (bytes; the hashmap backend writes all of it each time), and per
    task the slowest subtask's sync, async and alignment durations (ms)."""

    def get(path: str) -> Any:
        with urllib.request.urlopen(rest_url + path, timeout=10) as r:
            return json.loads(r.read())

    jobs = get("/jobs")["jobs"]
    if not jobs:
        return []
    jid = jobs[0]["id"]
    vertices = {v["id"]: v["name"] for v in get(f"/jobs/{jid}")["vertices"]}
    out = []
    for cp in sorted(get(f"/jobs/{jid}/checkpoints")["history"], key=lambda c: c["id"]):
        tasks = {}
        for vid in get(f"/jobs/{jid}/checkpoints/details/{cp['id']}")["tasks"]:
            subs = get(f"/jobs/{jid}/checkpoints/details/{cp['id']}/subtasks/{vid}")["subtasks"]
            worst: dict[str, int] = {}
            for st in subs:
                for kind, value in (
                    ("sync_ms", (st.get("checkpoint") or {}).get("sync")),
                    ("async_ms", (st.get("checkpoint") or {}).get("async")),
                    ("alignment_ms", (st.get("alignment") or {}).get("duration")),
                ):
                    if isinstance(value, int):
                        worst[kind] = max(worst.get(kind, 0), value)
            tasks[vertices.get(vid, vid)[:60]] = worst
        out.append(
            {
                "id": cp["id"],
                "status": cp["status"],
                "trigger_ms": cp["trigger_timestamp"],
                "duration_ms": cp.get("end_to_end_duration"),
                "state_bytes": cp.get("state_size"),
                "tasks": tasks,
            }
        )
    return out


# --- the run ------------------------------------------------------------------------------------


def jvm_thread_names(jvm: int) -> dict[int, str]:
    """{native thread id: full Java name} of a JVM (``/proc`` keeps 15 characters); empty if jcmd fails."""
    try:
        return {tid: name for tid, (name, _) in profile.jvm_threads(jvm).items()}
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        bench.say(f"episodes: the JVM's full thread names are not known ({e}); /proc's short names used")
        return {}


def _every_10_s(total: int) -> loadgen.Progress:
    """A progress line every 10 s of a long run."""
    last = [0.0]

    def show(sent: int, answered: int, elapsed_s: float) -> None:
        if elapsed_s - last[0] >= 10.0:
            last[0] = elapsed_s
            bench.say(f"[episodes] {elapsed_s:.0f} s: {sent}/{total} sent, {answered} answered")

    return show


# The stacks it can run: the bench's (quick models; warm-up at the bench's 50/s) or the demo's (its slow,
# flaky incumbent; warm-up at the run's own rate, and the policy's deadline sent with each request).
STACKS = ("bench", "demo")


def run(
    rate: float,
    seconds: float,
    lead_in_s: float,
    warmup_s: float,
    warmup_max_s: float,
    period_s: float,
    which: str = "bench",
    policy: Path = bench.BENCH_POLICY,
    job_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The stack at ``rate`` for ``lead_in_s`` + ``seconds`` after its warm-up, sampled as the module says;
    ``job_args``: more flags for the job (``stack.checkpoint_every``)."""
    from runners.train import ensure_trained

    broker = bench._fresh_broker("episodes")
    processes = stack.Processes()
    work = OUT_DIR / "work"
    shutil.rmtree(work, ignore_errors=True)
    rest_port = procs.free_port()
    try:
        ensure_trained(bench.MODELS_DIR)
        runners = demo.RUNNER_LAYOUTS["one"] if which == "demo" else bench.ONE_PROCESS_RUNNERS
        warm_rate = rate if which == "demo" else bench.WARMUP_RATE
        deadline_ms = bench.BUDGET_MS if which == "demo" else None
        started = stack.start_runners(runners, bench.MODELS_DIR, broker.bootstrap, work / "logs", processes)
        job = stack.start_job(
            policy, broker.bootstrap, work / "archive", work / "flink", work / "job.log", processes,
            ["-D", f"rest.port={rest_port}", "-D", "web.checkpoints.history=1000", *job_args],
        )  # fmt: skip
        stack.wait_until_answering(broker.bootstrap, job)
        jvm = procs.jvm_of(job.pid) or job.pid
        rounds = stack.warm_up(
            broker.bootstrap, warm_rate, warmup_s, warmup_max_s, {"job": job.pid, "broker": broker.pid},
            lambda m: bench.say(f"[episodes] {m}"), deadline_ms=deadline_ms, budget_ms=bench.BUDGET_MS,
        )  # fmt: skip
        warmup_backlog = stack.drain_after_warm_up(
            rounds, lambda s: stack.wait_until_answering(broker.bootstrap, job, timeout_s=s),
            lambda m: bench.say(f"[episodes] {m}"),
        )  # fmt: skip
        time.sleep(5)
        pids = {"job": jvm, "broker": broker.pid, "runner": started[0].pid, "loadgen": os.getpid()}
        address, _ = bench.first_answer(broker.bootstrap)
        lead = int(rate * lead_in_s)
        raw: dict[str, Any] = {}
        samples_file = work / "samples.json"
        sampler = start_sampler(pids, period_s, lead_in_s + seconds + 8, samples_file)
        time.sleep(1)
        bench.say(
            f"[episodes] {rate:.0f} requests/s for {lead_in_s:.0f} + {seconds:.0f} s, every thread sampled ..."
        )
        report = loadgen.run_load(
            broker.bootstrap, count=lead + int(rate * seconds), rate=rate, return_address=address, settle_ms=3000,
            validate_results=False, budget_ms=bench.BUDGET_MS, lead_in=lead, deadline_ms=deadline_ms,
            keep=lambda sent, received: raw.update(sent=sent, received=received), progress=_every_10_s(lead + int(rate * seconds)),
        )  # fmt: skip
        sampler.join(timeout=lead_in_s + seconds + 60)
        if sampler.exitcode != 0 or not samples_file.exists():
            raise RuntimeError(f"the thread sampler failed (exit code {sampler.exitcode}); nothing to report")
        sampled = json.loads(samples_file.read_text())
        full = jvm_thread_names(jvm)
        for key in list(sampled["names"]):
            label, tid = key.split("/")
            if label == "job" and int(tid) in full:
                sampled["names"][key] = full[int(tid)]
        try:
            cps = checkpoints(f"http://127.0.0.1:{rest_port}")
        except (OSError, ValueError, KeyError) as e:
            bench.say(
                f"[episodes] the job's checkpoints are not known (its REST API: {e}); reported without them"
            )
            cps = []
        measured = raw["sent"][lead:]
        answers = answers_of(measured, raw["received"])
        rows = seconds_table(answers, sampled["ticks"], cps, list(pids), bench.BUDGET_MS)
        shares = window_shares(rows, sampled["ticks"])
        return {
            "stack": which,
            "policy": str(policy.relative_to(REPO_ROOT)) if policy.is_relative_to(REPO_ROOT) else str(policy),
            "rate": rate,
            "seconds": seconds,
            "lead_in_s": lead_in_s,
            "period_s": period_s,
            "budget_ms": bench.BUDGET_MS,
            "runner_processes": [s.name for s in runners],
            "answered": report.answered,
            "sent": report.sent,
            "latency_ms": report.latency_ms.to_dict(),
            "late": report.over_budget,
            "warmup_backlog": warmup_backlog,
            "seconds_table": rows,
            "near_checkpoints": late_near_checkpoints(rows),
            "threads": compare_threads(rows, shares, sampled["names"], bench.BUDGET_MS),
            "stages": compare_stages(rows, shares, sampled["names"], bench.BUDGET_MS),
            "inside_slow_seconds": inside_slow_seconds(
                rows, sampled["ticks"], sampled["names"], bench.BUDGET_MS
            ),
            "checkpoints": [
                c | {"at_s": round((c["trigger_ms"] - answers[0].sent_ms) / 1000, 1)} for c in cps
            ],
        }
    finally:
        processes.stop_all()
        broker.stop()


# --- the report ---------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _by_process(values: Mapping[str, float], labels: Sequence[str]) -> str:
    return " / ".join(_f(values.get(lb)) for lb in labels)


def _near_checkpoints_line(near: Mapping[str, int] | None) -> list[str]:
    """The late answers' share in checkpoint seconds (absent from runs before it was recorded)."""
    if not near:
        return []
    return [
        "",
        f"Late answers sent in a second with a checkpoint or the second after: {near['late_near_checkpoints']} of "
        f"{near['late']} (those are {near['seconds_near_checkpoints']} of the {near['seconds']} seconds).",
    ]


def _warmup_backlog_line(backlog: Mapping[str, Any] | None) -> list[str]:
    """Whether the warm-up, at the run's rate, fell behind, and whether the stack caught up before the run."""
    if not backlog:
        return []
    drained = backlog.get("drained_s")
    how = (
        f"caught up in {drained} s before the run"
        if drained is not None
        else f"not caught up within {stack.WARMUP_DRAIN_TIMEOUT_S:.0f} s: the run began behind"
    )
    return ["", f"The warm-up fell behind: {backlog['behind']} requests unanswered at its end; {how}."]


def markdown(result: Mapping[str, Any]) -> str:
    """episodes.md: the run, second by second, then the slow seconds against the others."""
    labels = list(result["seconds_table"][0]["cpu_percent"]) if result["seconds_table"] else []
    lat = result["latency_ms"]
    budget = result["budget_ms"]
    slow_rows = [r for r in result["seconds_table"] if slow(r, budget)]
    lines = [
        "# Where a slow second comes from (`make episodes`)",
        "",
        f"{result['date']} on {result['commit']}: the {result.get('stack', 'bench')}'s stack (models in one runner process, "
        f"policy {result.get('policy', '?')}) at "
        f"{result['rate']:.0f} requests/s for {result['seconds']:.0f} s after a {result['lead_in_s']:.0f} s lead-in "
        f"at that rate (not shown); every thread sampled every {result['period_s'] * 1000:.0f} ms. "
        f"{result['answered']}/{result['sent']} answered; measured part p50 {_f(lat['p50'], 1)} ms, "
        f"p99 {_f(lat['p99'], 1)} ms, max {_f(lat['max'])} ms; {result['late']} later than {budget} ms; "
        f"{len(slow_rows)} of {len(result['seconds_table'])} seconds with p99 over {budget} ms.",
        *_near_checkpoints_line(result.get("near_checkpoints")),
        *_warmup_backlog_line(result.get("warmup_backlog")),
        "",
        "CPU and wait: % of one core (all threads of the process); wait: runnable but waiting for a core. "
        "Host: busy and steal in % of all cores, pressure in % of the time some task waited for a core.",
        "",
        f"## Second by second (CPU and wait: {' / '.join(labels)})",
        "",
        "| s | sent | p50 ms | p99 ms | max ms | late | p99 legs ms: to job / in job / back | CPU % | wait % "
        "| host busy / steal / pressure % | checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["seconds_table"]:
        legs = r["legs_p99_ms"]
        host = r["host_percent"]
        mark = "**" if slow(r, budget) else ""
        lines.append(
            f"| {mark}{r['second']:.0f}{mark} | {r['sent']} | {_f(r['p50_ms'], 1)} | {mark}{_f(r['p99_ms'], 1)}{mark} "
            f"| {_f(r['max_ms'])} | {r['late']} | {' / '.join(_f(v, 1) for v in legs.values())} "
            f"| {_by_process(r['cpu_percent'], labels)} | {_by_process(r['wait_percent'], labels)} "
            f"| {_f(host.get('busy'))} / {_f(host.get('steal'))} / {_f(host.get('pressure'))} "
            f"| {', '.join(str(c) for c in r['checkpoints']) or ''} |"
        )
    for title, key, groups in (
        ("by stage", "group", result["stages"]),
        (f"the {TOP_THREADS} threads that differ most", "group", result["threads"]),
    ):
        lines += ["", f"## Slow seconds against the others: {title}", ""]
        if not groups:
            lines.append("No comparison: the run needs both slow seconds and others.")
            continue
        lines += [
            "| threads | ran, slow s | ran, other s | waited for a core, slow s | waited, other s |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {g[key]} | {g['run_slow']:.1f} | {g['run_other']:.1f} | {g['wait_slow']:.1f} | {g['wait_other']:.1f} |"
            for g in groups
        ]
    lines += ["", "## Inside the slow seconds, sample by sample", ""]
    if result.get("inside_slow_seconds"):
        lines += [
            "Each sample interval of each slow second: the host's busy share (% of all cores) and the threads "
            "that ran most, each as ran / waited for a core (% of one core).",
            "",
            "| s | at ms | host busy % | threads: ran / waited % |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {t['second']:.0f} | {t['at_ms']} | {t['host_busy']} | "
            + "; ".join(f"{x['thread']} {x['run']} / {x['wait']}" for x in t["threads"])
            + " |"
            for t in result["inside_slow_seconds"]
        ]
    else:
        lines.append("No slow second.")
    lines += ["", "## The job's checkpoints", ""]
    if result["checkpoints"]:
        lines += [
            "| id | at s | status | end to end ms | state KB | slowest subtask per task: sync / async / alignment ms |",
            "|---|---|---|---|---|---|",
        ]
        for c in result["checkpoints"]:
            tasks = "; ".join(
                f"{name}: {_f(t.get('sync_ms'))} / {_f(t.get('async_ms'))} / {_f(t.get('alignment_ms'))}"
                for name, t in c["tasks"].items()
            )
            size = c.get("state_bytes")  # absent from runs before it was recorded
            kb = _f(size / 1024 if isinstance(size, int) else None)
            lines.append(
                f"| {c['id']} | {c['at_s']} | {c['status']} | {_f(c['duration_ms'])} | {kb} | {tasks} |"
            )
    else:
        lines.append("None in the run.")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rendezvous episodes", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--stack", choices=STACKS, default="bench",
        help="bench: its quick models, warm-up at 50/s; demo: its slow, flaky incumbent, warm-up at --rate",
    )  # fmt: skip
    ap.add_argument("--policy", type=Path, default=bench.BENCH_POLICY, help="the job's policy file")
    ap.add_argument("--rate", type=float, default=833.0, help="requests/s (the seed's peak by default)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds at the rate")
    ap.add_argument("--lead-in", type=float, default=bench.LEAD_IN_S, help="seconds at the rate before them")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of warm-up at 50/s, at least")
    ap.add_argument("--warmup-max", type=float, default=180.0, help="... at most, while a JIT is busy")
    ap.add_argument("--period", type=float, default=0.25, help="seconds between two samples of the threads")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    for flag, value, least in (
        ("--rate", a.rate, 1.0),
        ("--seconds", a.seconds, 2.0),
        ("--lead-in", a.lead_in, 0.0),
    ):
        if value < least:
            ap.error(f"{flag}: at least {least:g}, got {value:g}")
    if not 0.05 <= a.period <= 1.0:
        ap.error(f"--period: seconds between 0.05 and 1, got {a.period:g}")
    try:
        load_policy(a.policy)
    except (OSError, PolicyError) as e:
        ap.error(f"--policy: {e}")
    if not Path("/proc/self/task").is_dir():
        ap.exit(2, "error: make episodes reads /proc (Linux only)\n")
    result = runinfo.run_info() | run(
        a.rate, a.seconds, a.lead_in, a.warmup, a.warmup_max, a.period, a.stack, a.policy.resolve()
    )
    bench.say(runinfo.write_run(OUT_DIR, "episodes", result, markdown(result)))
    return 0


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

"""`make soak`: half an hour at half the measured capacity, a fault every few minutes; do memory, state, lag level off?

Issue 13, item 5; not part of `make test`.

    python -m harness.soak [--minutes 30] [--rate R] [--fault-every 5] [--delivery at-least-once]
                           [--faults taskmanager-kill,broker-restart,runner-crash,upgrade] [--out var/soak]

One rig of harness/faults.py (a fresh broker, four runners, the job on a Flink session cluster with a
standby TaskManager) and one stream of requests for ``--minutes``; every ``--fault-every`` minutes the
next fault of ``--faults`` is injected (faults.py's own injection) while the requests keep flowing.
Every 10 s a sample: RSS and CPU of each process by PID (/proc), the newest checkpoint's size, the job's
consumer lag on requests and scores (its group's committed offsets, which Flink commits at each
checkpoint, against the end offsets), answers per second and p50/p99 latency in the window. At the end:
drain, ``faults.verify`` over the whole run (none lost, no different answers; at-least-once repeats only
for requests sent around a job restart), and a verdict per series (``levels_off``).

Memory of the JVMs (broker, JobManager, the job's TaskManager) is judged by what a full GC leaves, not
by RSS: a JVM's RSS grows as it touches more of the heap it may use, up to its configured size, which
says nothing about a leak. Every HEAP_EVERY-th sample, ``jcmd <pid> GC.run`` and then ``jstat -gc``
read each JVM's heap after a full collection and its metaspace (classes of every job submitted). That
full GC pauses each JVM once a minute (tens of milliseconds: the p99 of that window shows it). The
JobManager's and TaskManager's RSS are checked against their configured process size (flink-conf); the
TaskManager's RSS is also judged for growth (the job's Python runs inside it, which no JVM figure sees).

Rate (default): half the stack's capacity in the last published bench, ``docs/results/bench.json``: the
highest step of its ``first_in_order`` ladder where every request was answered, the stack was not
saturated and p99 stayed within the 100 ms budget (``bench.sustained_rate``; 250/s in the run of
2026-12-05, so 125/s). Not the highest step where every request was merely answered: the bench drains
each step, so that is the step the ladder stopped at, saturated (1,500/s, p99 2.8 s). Without the file
or such a step: 100/s, the rate of the fault suite's recovery figures.

Delivery (default): at-least-once, the shipped default of the job's Kafka outputs and the mode of the
recovery figures: answers are visible as they are written, so answers per second, latency and the gaps
measure the job rather than the 10 s checkpoint cadence at which exactly-once answers become visible.

Writes ``<out>/soak.json`` (stamped by harness/runinfo.py) and ``soak.md``. The verdicts, the window
statistics and the /proc parsing are pure and unit-tested (tests/unit/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import TopicPartition

from harness import faults, runinfo
from harness.bench import BUDGET_MS, checkpoint_bytes, sustained_rate
from ops import flink_conf, kafka_client, procs, upgrade
from ops.latency import percentiles
from udfs import names

REPO_ROOT = procs.repo_root()
DEFAULT_OUT = REPO_ROOT / "var" / "soak"
BENCH_JSON = REPO_ROOT / "docs" / "results" / "bench.json"
FALLBACK_RATE = 100.0  # requests/s without a published capacity: the fault suite's recovery figures' rate
DEFAULT_FAULTS = ("taskmanager-kill", "broker-restart", "runner-crash", "upgrade")
SAMPLE_S = 10.0
CHECKPOINT_S = 10.0  # flink-conf/config.yaml: the job commits its offsets this often
# Left out of the verdicts: the JVMs' warm-up (JIT, heap growth), and the samples right after each
# fault (what a fault does is in the fault table; a leak or a backlog that outlasts this is not hidden).
MEMORY_WARMUP_S = 180.0
LAG_WARMUP_S = 60.0
AFTER_FAULT_S = 60.0
# A repeated at-least-once answer is expected for a request sent from this long before a job restart
# (checkpoints every 10 s: what came after the last completed one is replayed) ...
REPLAY_BEFORE_S = 3 * CHECKPOINT_S
REPLAY_AFTER_S = CHECKPOINT_S  # ... to this long after the job ran again.
MIN_TAIL_S = 30.0  # traffic after the last fault's injection returned, to see the recovery
TOLERANCE = 0.10  # a series levels off when its last third is within 10 % (plus slack) of its middle
RSS_SLACK_MB = 32.0
HEAP_SLACK_MB = 16.0  # what a full GC leaves varies by a few MB with what is in flight
HEAP_EVERY = 6  # samples between two heap readings (a full GC of each JVM once a minute)
STATE_SLACK_BYTES = 256 * 1024
STANDBY = "taskmanagers (standby)"
JOB_TM = "taskmanager (job)"
HARNESS = "soak harness"
JVMS = ("broker", "jobmanager", JOB_TM)
# The configured bound of each Flink process (its total process memory: heap, metaspace, direct, overhead).
RSS_BOUND_KEYS = {"jobmanager": "jobmanager.memory.process.size", JOB_TM: "taskmanager.memory.process.size"}
BOUNDED, OVER_BOUND = "bounded", "over its bound"


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- pure: rate, /proc, windows, verdicts ----------------------------------------------------------


def rate_from_bench(bench: Mapping[str, Any] | None) -> tuple[float, str]:
    """(requests/s, where it came from): half the sustained rate of the bench's first_in_order ladder,
    or FALLBACK_RATE (see the module docstring)."""
    steps = ((bench or {}).get("stack") or {}).get("first_in_order", {}).get("steps") or []
    capacity = sustained_rate(steps) if steps else None
    if not capacity:
        return FALLBACK_RATE, f"fallback {FALLBACK_RATE:g}/s: no sustained rate in the published bench"
    date = (bench or {}).get("date", "?")
    return capacity / 2, (
        f"half of {capacity:g}/s, the highest first_in_order step with every request answered and "
        f"p99 <= {BUDGET_MS:g} ms in docs/results/bench.json ({date})"
    )


def parse_rss_kb(status: str) -> int | None:
    """VmRSS of a /proc/<pid>/status text, in kB (None: a zombie or kernel thread has none)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, every thread) of a /proc/<pid>/stat text; the command name in
    parentheses may hold spaces and parentheses, so fields are counted after the last ')'."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parse_jstat_gc(text: str) -> tuple[float, float]:
    """(heap used MB, metaspace used MB) from ``jstat -gc`` output (a header line, a values line, kB):
    survivors, eden and old generation used; right after a full GC that is what the heap holds live."""
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or len(lines[0]) != len(lines[-1]):
        raise ValueError(f"not jstat -gc output: {text.strip()[:120]!r}")
    row = dict(zip(lines[0], lines[-1], strict=True))
    heap_kb = sum(float(row[k]) for k in ("S0U", "S1U", "EU", "OU"))
    return round(heap_kb / 1024.0, 1), round(float(row["MU"]) / 1024.0, 1)


def heap_after_gc(pid: int, timeout_s: float = 30.0) -> tuple[float, float] | None:
    """(heap MB after a full GC, metaspace MB) of a JVM, None if it is gone or does not answer."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=timeout_s, check=True)
        out = subprocess.run(
            ["jstat", "-gc", str(pid)], capture_output=True, text=True, timeout=timeout_s, check=True
        ).stdout
        return parse_jstat_gc(out)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def size_mb(text: str) -> float:
    """A Flink memory size (``1600m``, ``1.5g``, ``1728mb``, bytes without a unit) in MB."""
    t = text.strip().lower().replace(" ", "")
    units = {"kb": 1 / 1024, "k": 1 / 1024, "mb": 1.0, "m": 1.0, "gb": 1024.0, "g": 1024.0, "b": 1 / 1024**2}
    for unit, mb in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return float(t[: -len(unit)]) * mb
    return float(t) / 1024**2


def rss_bounds(conf: Mapping[str, str]) -> dict[str, float]:
    """Each Flink process's configured size in MB (JobManager, TaskManager), from a flat flink-conf."""
    return {role: size_mb(conf[key]) for role, key in RSS_BOUND_KEYS.items() if key in conf}


def within_bound(values: Sequence[float | None], bound_mb: float) -> dict[str, str]:
    """The RSS verdict of a JVM with a configured size: its highest sample against that size."""
    seen = [v for v in values if v is not None]
    if not seen:
        return {"verdict": TOO_SHORT, "why": "no sample"}
    top = max(seen)
    if top > bound_mb:
        return {"verdict": OVER_BOUND, "why": f"max {top:.0f} MB > its configured {bound_mb:.0f} MB"}
    return {"verdict": BOUNDED, "why": f"max {top:.0f} MB <= its configured {bound_mb:.0f} MB"}


def by_role(
    pids: Mapping[str, Sequence[int]],
    now: Mapping[int, tuple[int, int]],
    before: Mapping[int, int],
    dt_s: float,
    ticks_per_s: float,
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(RSS MB, CPU % of a core) per role from per-PID (RSS kB, CPU ticks) now and the ticks one window
    ago. A role with no live PID has None; CPU counts only PIDs seen in both samples (a process that
    just started has no window yet)."""
    rss: dict[str, float | None] = {}
    cpu: dict[str, float | None] = {}
    for role, ps in pids.items():
        live = [p for p in ps if p in now]
        rss[role] = round(sum(now[p][0] for p in live) / 1024.0, 1) if live else None
        both = [p for p in live if p in before]
        cpu[role] = (
            round(sum(now[p][1] - before[p] for p in both) / ticks_per_s / dt_s * 100.0, 1)
            if both and dt_s > 0
            else None
        )
    return rss, cpu


def lag_of(committed: Mapping[int, int], watermarks: Mapping[int, tuple[int, int]]) -> int:
    """Records of a topic not yet behind the group's committed offsets, over its partitions
    (partition -> (low, high) watermarks); a partition without a commit counts from its low mark."""
    total = 0
    for p, (low, high) in watermarks.items():
        c = committed.get(p, -1)
        total += max(0, high - (c if c >= 0 else low))
    return total


@dataclass(frozen=True)
class Window:
    """What the requests answered first in one sample window did."""

    answers: int
    answers_per_s: float
    p50_ms: float | None
    p99_ms: float | None


def window_stats(latencies_ms: Sequence[float], seconds: float) -> Window:
    """Answers per second and p50/p99 of the latencies of the requests first answered in a window."""
    p = percentiles(latencies_ms, (50.0, 99.0))
    rate = len(latencies_ms) / seconds if seconds > 0 else 0.0
    return Window(
        len(latencies_ms),
        round(rate, 1),
        None if not p else round(p[50.0], 1),
        None if not p else round(p[99.0], 1),
    )


def outside(
    times_s: Sequence[float], faults_s: Iterable[tuple[float, float]], after_s: float, warmup_s: float
) -> list[bool]:
    """Per sample time: True if it counts for a verdict: past ``warmup_s``, and neither during a fault's
    injection (start, end) nor within ``after_s`` after it."""
    spans = list(faults_s)
    return [t >= warmup_s and not any(a <= t < b + after_s for a, b in spans) for t in times_s]


@dataclass(frozen=True)
class Level:
    """A series' verdict: ``levels off``, ``grows`` or ``too short``, the reason, and its thirds."""

    verdict: str
    why: str
    middle_mean: float | None = None
    middle_max: float | None = None
    last_mean: float | None = None
    last_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.verdict != "grows"


LEVELS_OFF, GROWS, TOO_SHORT = "levels off", "grows", "too short"


def levels_off(
    values: Sequence[float | None],
    keep: Sequence[bool] | None = None,
    *,
    tolerance: float = TOLERANCE,
    slack: float = 0.0,
    min_samples: int = 6,
) -> Level:
    """Whether a series has stopped growing: of the samples kept (``keep``; None values dropped), the
    last third against the middle third. It grows if the last third's maximum or mean exceeds the
    middle third's by more than ``tolerance`` (relative) plus ``slack`` (absolute, for series near
    zero), or if every sample of the last third lies above the middle third's maximum and its mean
    by more than half the slack (a steady climb too slow for the first two tests). Peaks that repeat (GC, checkpoints: a sawtooth)
    and a first third spent growing (warm-up, state filling up to its retention) level off.

    >>> levels_off([float(v) for v in range(30)]).verdict
    'grows'
    >>> levels_off([100.0, 140.0, 120.0] * 10).verdict
    'levels off'
    """
    vs = [
        float(v)
        for i, v in enumerate(values)
        if v is not None and (keep is None or keep[i]) and math.isfinite(v)
    ]
    if len(vs) < min_samples:
        return Level(TOO_SHORT, f"{len(vs)} samples to judge, fewer than {min_samples}")
    n = len(vs)
    middle, last = vs[n // 3 : 2 * n // 3], vs[2 * n // 3 :]
    m_mean, m_max = statistics.fmean(middle), max(middle)
    l_mean, l_max = statistics.fmean(last), max(last)
    thirds = {"middle_mean": m_mean, "middle_max": m_max, "last_mean": l_mean, "last_max": l_max}
    rounded = {k: round(v, 3) for k, v in thirds.items()}
    if l_max > m_max * (1 + tolerance) + slack:
        return Level(
            GROWS, f"last third's max {l_max:.4g} > middle third's {m_max:.4g} + {tolerance:.0%}", **rounded
        )
    if l_mean > m_mean * (1 + tolerance) + slack:
        return Level(
            GROWS,
            f"last third's mean {l_mean:.4g} > middle third's {m_mean:.4g} + {tolerance:.0%}",
            **rounded,
        )
    if min(last) > m_max and l_mean - m_mean > slack / 2:
        return Level(
            GROWS, f"every sample of the last third above the middle third's max {m_max:.4g}", **rounded
        )
    return Level(LEVELS_OFF, f"last third within {tolerance:.0%} of the middle third", **rounded)


def thirds_summary(values: Sequence[float | None]) -> dict[str, float | None]:
    """start / middle / end (the median of each third of the run) and max of a series."""
    vs = [float(v) for v in values if v is not None]
    if not vs:
        return {"start": None, "middle": None, "end": None, "max": None}
    n = len(vs)
    parts = [vs[: max(1, n // 3)], vs[n // 3 : max(n // 3 + 1, 2 * n // 3)], vs[2 * n // 3 :] or vs[-1:]]
    start, middle, end = (round(statistics.median(p), 3) for p in parts)
    return {"start": start, "middle": middle, "end": end, "max": round(max(vs), 3)}


def fault_window(
    fault_ms: float,
    until_ms: float,
    sent: Mapping[str, float],
    first_ms: Mapping[str, float],
    answer_ms: Sequence[float],
) -> dict[str, Any]:
    """What one fault did, up to ``until_ms`` (the next fault, or the end of the traffic): recovery
    (fault -> first answer to a request sent after it), the longest time without any answer (from the
    fault to ``until_ms``; ``answer_ms`` sorted, every result record), and the requests sent before
    the recovery."""
    after = [first_ms[r] for r, t in sent.items() if fault_ms <= t < until_ms and r in first_ms]
    recovered = min(after) if after else None
    times = [
        fault_ms,
        *answer_ms[bisect_left(answer_ms, fault_ms) : bisect_right(answer_ms, until_ms)],
        until_ms,
    ]
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    end = recovered if recovered is not None else until_ms
    return {
        "recovery_s": None if recovered is None else round((recovered - fault_ms) / 1000.0, 2),
        "longest_gap_s": round(gap / 1000.0, 2),
        "sent_while_down": sum(1 for t in sent.values() if fault_ms <= t < end),
    }


def replay_windows(
    job_faults: Sequence[tuple[float, float | None, float]], restarts_ms: Sequence[float]
) -> list[tuple[float, float]]:
    """(start, end) epoch ms within which a request may be answered twice at-least-once: the job
    replays what came after its last completed checkpoint when it restarts. Per job fault (fault,
    recovered or None, next fault or end): from REPLAY_BEFORE_S before it to REPLAY_AFTER_S after the
    later of its recovery and the last restart (exception history) before the next fault (a broker
    restart may fail the job only once the broker is back); a restart away from any fault gets its own."""
    windows = []
    covered: set[float] = set()
    for fault_ms, recovered_ms, until_ms in job_faults:
        inside = [r for r in restarts_ms if fault_ms <= r < until_ms]
        covered.update(inside)
        end = max([fault_ms, *([recovered_ms] if recovered_ms is not None else []), *inside])
        windows.append((fault_ms - REPLAY_BEFORE_S * 1000, end + REPLAY_AFTER_S * 1000))
    windows += [
        (r - REPLAY_BEFORE_S * 1000, r + REPLAY_AFTER_S * 1000) for r in restarts_ms if r not in covered
    ]
    return windows


def repeats_outside(sent_ms: Iterable[float], windows: Sequence[tuple[float, float]]) -> list[float]:
    """Send times (of requests answered more than once) outside every (start, end) window."""
    return [t for t in sent_ms if not any(a <= t <= b for a, b in windows)]


def _text(v: Any) -> Any:
    """A repeated short string held once (model ids, reasons)."""
    return sys.intern(v) if isinstance(v, str) else v


def slim(role: str, record: dict[str, Any]) -> dict[str, Any]:
    """What ``faults.verify`` reads of a record, nothing else: half an hour of full decision records
    (every model's score) would hold about a gigabyte in the verifier; this keeps ~1.1 KB a request.
    The output becomes its canonical JSON text: answers stay equal exactly when the outputs were."""
    if role == "results":
        output = record.get("output")
        return {
            "request_id": record.get("request_id"),
            "model_id": _text(record.get("model_id")),
            "output": None if output is None else json.dumps(output, sort_keys=True, separators=(",", ":")),
            "reason": _text(record.get("reason")),
        }
    if role == "decisions":
        result = record.get("result")
        late = sum(1 for s in record.get("scores") or [] if isinstance(s, dict) and s.get("late"))
        out = {
            "request_id": record.get("request_id"),
            "result": slim("results", result) if isinstance(result, dict) else None,
        }
        return out | {"scores": [{"late": True}] * late} if late else out
    if role == "dead-letters":
        return {k: record.get(k) for k in ("request_id", "source_topic", "partition", "offset")}
    return record


# --- the shell: reader, traffic, lag, sampler ------------------------------------------------------


class SoakReader(faults.Reader):
    """The fault suite's reader, keeping only what the verdict needs, and handing out new records."""

    def keep(self, role: str, record: dict[str, Any]) -> dict[str, Any]:
        return slim(role, record)

    def since(self, role: str, index: int) -> tuple[list[faults.Observed], int]:
        with self.lock:
            seen = self.seen[role]
            return seen[index:], len(seen)


class SoakTraffic(faults.Traffic):
    """One stream for the whole soak: a fault's own traffic plan (``send_for``) does not change it."""

    def send_for(self, seconds: float) -> None:
        return None

    def at_least(self, seconds: float) -> None:
        """Keep sending for ``seconds`` more if the plan would stop sooner."""
        with self.lock:
            self.count = max(self.count, len(self.sent) + int(self.rate * seconds))

    def stop_now(self) -> None:
        with self.lock:
            self.count = len(self.sent)


class LagProbe:
    """The job's consumer group: committed offsets against end offsets (it joins no group)."""

    def __init__(self, bootstrap: str, group: str, topics: Mapping[str, str], errors_out: TextIO) -> None:
        self.topics = dict(topics)  # role -> topic
        config = kafka_client.consumer_config(bootstrap, group, "soak-lag", enable_auto_commit=False)
        # Quiet: while the broker restarts, librdkafka would log each reconnect; errors go to errors_out.
        self.consumer = kafka_client.Consumer(config | {"log_level": 0}, "soak-lag", errors_out)
        self.parts = {t: kafka_client.partitions(self.consumer, t, wait=True) for t in self.topics.values()}

    def measure(self, timeout_s: float = 3.0) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for role, topic in self.topics.items():
            try:
                tps = [TopicPartition(topic, p) for p in self.parts[topic]]
                committed = {
                    tp.partition: tp.offset for tp in self.consumer.committed(tps, timeout=timeout_s)
                }
                marks = {
                    tp.partition: self.consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                    for tp in tps
                }
                out[role] = lag_of(committed, marks)
            except Exception:  # the broker is down (a fault): no figure for this sample
                out[role] = None
        return out

    def close(self) -> None:
        self.consumer.close()


def read_proc(pid: int) -> tuple[int, int] | None:
    """(RSS kB, CPU ticks) of a live process, None if it is gone."""
    try:
        rss = parse_rss_kb(Path(f"/proc/{pid}/status").read_text())
        ticks = parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None
    return None if rss is None else (rss, ticks)


@dataclass
class Sample:
    """One sample: the window's answers, the processes, the checkpoint and the lag."""

    t_s: float
    phase: str  # traffic | drain
    sent: int
    answered: int  # requests answered so far (first answers)
    answers_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    state_bytes: int | None
    lag: dict[str, int | None]
    rss_mb: dict[str, float | None]
    cpu_percent: dict[str, float | None]
    fault: str | None = None
    heap_mb: dict[str, float | None] = field(default_factory=dict)  # after a full GC, every HEAP_EVERY
    metaspace_mb: dict[str, float | None] = field(default_factory=dict)


class Sampler(threading.Thread):
    """A sample every SAMPLE_S, printed as one line, while the main thread injects faults."""

    def __init__(self, rig: faults.Rig, traffic: SoakTraffic, reader: SoakReader, lag: LagProbe) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.rig, self.traffic, self.reader, self.lag = rig, traffic, reader, lag
        self.prefix = traffic.prefix
        self.samples: list[Sample] = []
        self.first_ms: dict[str, float] = {}
        self.phase = "traffic"
        self.fault: str | None = None
        self.stopping = threading.Event()
        self.errors: list[str] = []  # samples that failed (printed; the next one is tried)
        self.started = time.monotonic()
        self._index = 0
        self._count = 0
        self._ticks: dict[int, int] = {}
        self._last = self.started
        self._ticks_per_s = float(os.sysconf("SC_CLK_TCK"))

    def run(self) -> None:
        next_at = self.started + SAMPLE_S
        while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at += SAMPLE_S
            try:
                self.samples.append(self.sample())
            except Exception as e:  # a sample lost is reported, not the end of the soak
                self.errors.append(f"{e.__class__.__name__}: {e}")
                say(f"sample failed: {self.errors[-1]}")
                continue
            say(line(self.samples[-1], self.fault_shown()))

    def fault_shown(self) -> str:
        return f" [{self.fault}]" if self.fault else ""

    def pids(self) -> dict[str, list[int]]:
        rig = self.rig
        out: dict[str, list[int]] = {"broker": [rig.broker.pid] if rig.broker is not None else []}
        cluster = rig.cluster
        out["jobmanager"] = [p for p in cluster.pids().get("standalonesession", []) if cluster.ours(p)]
        tms = cluster.taskmanager_pids()
        try:
            busy = set(cluster.busy_taskmanagers())
        except Exception:  # REST unreachable for a moment: no figure for the job's TaskManager
            busy = set()
        out[JOB_TM] = [p for p in tms if p in busy]
        out[STANDBY] = [p for p in tms if p not in busy]
        for model, p in sorted(rig.runners.items(), key=lambda kv: kv[0]):
            out[f"runner {model}"] = [p.pid]
        out[HARNESS] = [os.getpid()]
        return out

    def sample(self) -> Sample:
        now_mono = time.monotonic()
        dt = now_mono - self._last
        self._last = now_mono
        pids = self.pids()
        now = {p: u for ps in pids.values() for p in ps if (u := read_proc(p)) is not None}
        rss, cpu = by_role(pids, now, self._ticks, dt, self._ticks_per_s)
        self._ticks = {p: u[1] for p, u in now.items()}
        new, self._index = self.reader.since("results", self._index)
        with self.traffic.lock:
            sent_ms = {
                rid: self.traffic.sent.get(rid)
                for o in new
                if (rid := str(o.record.get("request_id"))) not in self.first_ms
            }
            sent = len(self.traffic.sent)
        latencies = []
        for o in new:
            rid = str(o.record.get("request_id"))
            t = sent_ms.get(rid)
            if t is None or rid in self.first_ms:
                continue
            self.first_ms[rid] = o.consumed_ms
            latencies.append(o.consumed_ms - t)
        w = window_stats(latencies, dt)
        heap: dict[str, float | None] = {}
        meta: dict[str, float | None] = {}
        self._count += 1
        if self._count % HEAP_EVERY == 0:
            for role in JVMS:
                got = [r for p in pids.get(role, []) if (r := heap_after_gc(p)) is not None]
                heap[role] = round(sum(h for h, _ in got), 1) if got else None
                meta[role] = round(sum(m for _, m in got), 1) if got else None
        return Sample(
            t_s=round(now_mono - self.started, 1),
            phase=self.phase,
            sent=sent,
            answered=len(self.first_ms),
            answers_per_s=w.answers_per_s,
            p50_ms=w.p50_ms,
            p99_ms=w.p99_ms,
            state_bytes=checkpoint_bytes(self.rig.cluster.state_dir),
            lag=self.lag.measure(),
            rss_mb=rss,
            cpu_percent=cpu,
            fault=self.fault,
            heap_mb=heap,
            metaspace_mb=meta,
        )

    def stop(self) -> None:
        self.stopping.set()
        self.join(60.0)


def line(s: Sample, fault: str = "") -> str:
    """One progress line per sample."""

    def mb(role: str) -> str:
        v = s.rss_mb.get(role)
        return "-" if v is None else f"{v:.0f}"

    runners = sum(v or 0.0 for r, v in s.rss_mb.items() if r.startswith("runner "))
    lag = "/".join("-" if v is None else str(v) for v in s.lag.values())
    state = "-" if s.state_bytes is None else f"{s.state_bytes / 1e6:.1f} MB"
    cpu_tm = s.cpu_percent.get(JOB_TM)
    heap = " ".join(f"{r.split()[0]} {v:.0f}" for r, v in s.heap_mb.items() if v is not None)
    return (
        f"{int(s.t_s // 60)}:{int(s.t_s % 60):02d} {s.phase}: sent {s.sent}, answered {s.answered} "
        f"({s.answers_per_s:.0f}/s, p50 {_ms(s.p50_ms)} p99 {_ms(s.p99_ms)} ms), lag req/scores {lag}, "
        f"state {state}, RSS MB broker {mb('broker')} jm {mb('jobmanager')} tm {mb(JOB_TM)} "
        f"standby {mb(STANDBY)} runners {runners:.0f} harness {mb(HARNESS)}, "
        f"tm CPU {'-' if cpu_tm is None else f'{cpu_tm:.0f}'} %"
        + (f", heap after GC MB {heap}" if heap else "")
        + fault
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


# --- the run ---------------------------------------------------------------------------------------


def fault_times(minutes: float, every_min: float) -> list[float]:
    """Seconds into the soak at which faults are injected: every ``every_min`` minutes, the last no
    later than half an interval before the end (its recovery must be seen).

    >>> fault_times(30, 5)
    [300.0, 600.0, 900.0, 1200.0, 1500.0]
    >>> fault_times(4, 1.5)
    [90.0, 180.0]
    """
    out, k = [], 1
    while k * every_min <= minutes - every_min / 2 + 1e-9:
        out.append(round(k * every_min * 60.0, 3))
        k += 1
    return out


def series_of(samples: Sequence[Sample]) -> dict[str, list[float | None]]:
    """Each measured series (name -> one value per sample)."""
    roles = sorted({r for s in samples for r in s.rss_mb})
    lags = sorted({r for s in samples for r in s.lag})
    out: dict[str, list[float | None]] = {}
    for r in roles:
        out[f"RSS MB: {r}"] = [s.rss_mb.get(r) for s in samples]
    for r in roles:
        out[f"CPU %: {r}"] = [s.cpu_percent.get(r) for s in samples]
    for r in JVMS:
        if any(s.heap_mb.get(r) is not None for s in samples):
            out[f"heap after GC MB: {r}"] = [s.heap_mb.get(r) for s in samples]
            out[f"metaspace MB: {r}"] = [s.metaspace_mb.get(r) for s in samples]
    out["checkpoint KB"] = [None if s.state_bytes is None else s.state_bytes / 1024.0 for s in samples]
    for r in lags:
        lag = [s.lag.get(r) for s in samples]
        out[f"lag: {r}"] = [None if v is None else float(v) for v in lag]
    out["answers/s"] = [s.answers_per_s for s in samples]
    out["p50 ms"] = [s.p50_ms for s in samples]
    out["p99 ms"] = [s.p99_ms for s in samples]
    return out


def verdicts(
    samples: Sequence[Sample],
    fault_s: Sequence[tuple[float, float]],
    rate: float,
    retention_s: float,
    bounds_mb: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Summary and verdict per series, over the samples taken while the traffic flowed. Verdicts for
    memory: each JVM's heap after a full GC and its metaspace; the RSS of the runners and of the job's
    TaskManager (Python runs in it); the RSS of each Flink process against its configured size
    (``bounds_mb``); not the broker's RSS (its heap is fixed and touched lazily: its heap after GC is
    judged), the standby TaskManagers' (their number changes during an upgrade) or this harness's. The
    checkpoint (judged once the tombstones of ``retention_s`` have filled it) and the lag (slack:
    what one checkpoint interval at ``rate`` accumulates before the job commits it; scores 4 per request)."""
    bounds = dict(bounds_mb or {})
    flowing = [s for s in samples if s.phase == "traffic"]
    times = [s.t_s for s in flowing]
    memory = outside(times, fault_s, AFTER_FAULT_S, MEMORY_WARMUP_S)
    state = outside(times, fault_s, AFTER_FAULT_S, retention_s + 60.0)
    lag = outside(times, fault_s, AFTER_FAULT_S, LAG_WARMUP_S)
    out: dict[str, dict[str, Any]] = {}
    for name, values in series_of(flowing).items():
        row: dict[str, Any] = thirds_summary(values)
        level: Level | None = None
        bound: dict[str, str] | None = None
        role = name.split(": ", 1)[-1]
        if name.startswith("RSS MB: ") and role in bounds:
            bound = within_bound(values, bounds[role])
            if role == JOB_TM:
                level = levels_off(values, memory, slack=RSS_SLACK_MB)
        elif name.startswith("RSS MB: ") and role not in (STANDBY, HARNESS, "broker"):
            level = levels_off(values, memory, slack=RSS_SLACK_MB)
        elif name.startswith(("heap after GC MB: ", "metaspace MB: ")):
            level = levels_off(values, memory, slack=HEAP_SLACK_MB)
        elif name == "checkpoint KB":
            level = levels_off(values, state, slack=STATE_SLACK_BYTES / 1024.0)
        elif name.startswith("lag: "):
            per_request = 4.0 if name.endswith("scores") else 1.0
            level = levels_off(values, lag, slack=rate * per_request * CHECKPOINT_S)
        # Over its bound wins; else the growth verdict, else the bound's; every reason is kept.
        judged = [j for j in (bound, level and {"verdict": level.verdict, "why": level.why}) if j]
        if judged:
            over = [j for j in judged if j["verdict"] == OVER_BOUND]
            row |= {"verdict": (over or judged)[-1]["verdict"], "why": "; ".join(j["why"] for j in judged)}
        out[name] = row
    return out


def _exceptions_union(
    seen: dict[tuple[Any, Any], dict[str, Any]], entries: Iterable[Mapping[str, Any]]
) -> None:
    for e in entries:
        seen[(e.get("timestamp"), e.get("exceptionName"))] = dict(e)


def run(
    *,
    minutes: float,
    rate: float,
    rate_source: str,
    fault_every: float,
    fault_names: Sequence[str],
    delivery: str,
    out: Path,
    models_dir: Path,
) -> dict[str, Any]:
    """One rig, one stream, the faults on schedule, then drain, verify and judge."""
    policy = dict(faults.POLICY)
    retention_s = float(policy.get("dedupe_retention_ms", 600_000)) / 1000.0
    rig = faults.Rig(out / "work", delivery, models_dir, policy)
    schedule = fault_times(minutes, fault_every)
    injected: list[dict[str, Any]] = []
    exceptions: dict[tuple[Any, Any], dict[str, Any]] = {}
    lag_log = (out / "lag-client.log").open("w")
    traffic: SoakTraffic | None = None
    sampler: Sampler | None = None
    lag: LagProbe | None = None
    result: dict[str, Any] = {}
    try:
        rig.start()
        assert rig.reader is not None
        rig.reader.stop()  # the rig's own reader keeps whole records
        rig.reader = reader = SoakReader(
            rig.broker.bootstrap, {r: rig.topics[r] for r in ("results", "decisions", "dead-letters")}
        )
        reader.start()
        say(f"warm-up at {rate:g}/s (not counted) ...")
        faults.run_scenario_warmup(rig, rate)
        group = upgrade.job_arg(rig.job_args, "--group-id") or names.GROUP_RENDEZVOUS
        lag = LagProbe(
            rig.broker.bootstrap,
            group,
            {"requests": rig.topics["requests"], "scores": rig.topics["scores"]},
            lag_log,
        )
        prefix = f"soak-{rig.tag}-"
        traffic = SoakTraffic(rig.broker.bootstrap, rig.topics, prefix, rate, minutes * 60.0)
        say(
            f"{minutes:g} min at {rate:g}/s ({rate_source}), {delivery}; faults at "
            f"{', '.join(f'{t / 60:g} min' for t in schedule) or 'none'}"
        )
        traffic.start()
        sampler = Sampler(rig, traffic, reader, lag)
        sampler.start()
        for k, at_s in enumerate(schedule):
            name = fault_names[k % len(fault_names)]
            wait = at_s - (time.monotonic() - sampler.started)
            if wait > 0:
                time.sleep(wait)
            _exceptions_union(exceptions, rig.exceptions())  # an upgrade replaces the job and its history
            sampler.fault = name
            plan = faults.Plan()
            t0 = time.monotonic()
            started_s = t0 - sampler.started  # later than planned if the last fault took longer
            say(f"fault {k + 1}/{len(schedule)}: {name}")
            error = None
            try:
                faults._inject(rig, name, plan, traffic)
            except Exception as e:  # reported; the soak goes on (what it broke shows in the verdict)
                error = f"{e.__class__.__name__}: {e}"
                say(f"fault {name}: ERROR {error}")
            took = time.monotonic() - t0
            injected.append(
                {
                    "fault": name,
                    "planned_s": round(at_s, 1),
                    "at_s": round(started_s, 1),
                    "fault_ms": plan.fault_ms,
                    "took_s": round(took, 1),
                    "job_restarted": plan.job_restarted,
                    "detail": plan.detail,
                    "error": error,
                }
            )
            traffic.at_least(MIN_TAIL_S)  # a fault that ran past the planned end is still followed by traffic
            sampler.fault = None
        while traffic.is_alive() and len(traffic.sent) < traffic.count:  # the rest of the plan
            time.sleep(1.0)
        traffic.finish()
        sent = dict(traffic.sent)
        traffic_end_ms = max(sent.values(), default=faults._now_ms())
        sampler.phase = "drain"
        say(
            f"traffic done: {len(sent)} sent ({traffic.send_errors} send errors); waiting for every answer ..."
        )
        deadline = time.monotonic() + faults.DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if reader.error is not None:
                raise RuntimeError("the verifier's reader failed") from reader.error
            answered = {o.record.get("request_id") for o in reader.of("results", prefix)}
            if answered >= set(sent) - traffic.unsent:  # a failed send is judged apart (faults.verify)
                break
            time.sleep(1.0)
        time.sleep(faults.SETTLE_S)
        answered = {o.record.get("request_id") for o in reader.of("results", prefix)}
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if {o.record.get("request_id") for o in reader.of("decisions", prefix)} >= answered:
                break
            time.sleep(1.0)
        time.sleep(CHECKPOINT_S + 2)  # one more checkpoint: the offsets committed, the lag back to 0
        sampler.stop()
        _exceptions_union(exceptions, rig.exceptions())
        result = judge(
            rig=rig,
            reader=reader,
            traffic=traffic,
            sampler=sampler,
            injected=injected,
            exceptions=list(exceptions.values()),
            sent=sent,
            prefix=prefix,
            traffic_end_ms=traffic_end_ms,
            rate=rate,
            retention_s=retention_s,
        )
    except Exception as e:  # half an hour of samples is worth keeping: written with the error
        say(f"ERROR {e.__class__.__name__}: {e}")
        result = {
            "error": f"{e.__class__.__name__}: {e}",
            "faults_injected": injected,
            "samples": [asdict(s) for s in (sampler.samples if sampler is not None else [])],
            "problems": [f"the soak stopped: {e.__class__.__name__}: {e}"],
            "passed": False,
        }
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if traffic is not None and traffic.is_alive():
            traffic.stop_now()
            traffic.join(60.0)
        if lag is not None:
            lag.close()
        rig.close()
        lag_log.close()
    return result | {"policy": policy, "retention_s": retention_s}


def judge(
    *,
    rig: faults.Rig,
    reader: SoakReader,
    traffic: SoakTraffic,
    sampler: Sampler,
    injected: list[dict[str, Any]],
    exceptions: list[dict[str, Any]],
    sent: Mapping[str, float],
    prefix: str,
    traffic_end_ms: float,
    rate: float,
    retention_s: float,
) -> dict[str, Any]:
    """The whole run's invariants (``faults.verify``), each fault's gap and the series' verdicts."""
    results = reader.of("results", prefix)
    start_ms = min(sent.values(), default=0.0)
    restarts, data_restarts, firsts = faults.restarts_in(exceptions, start_ms, faults._now_ms())
    job_faults = [f for f in injected if f["fault"] in faults.JOB_FAULTS and f["fault_ms"] is not None]
    unsent = set(traffic.unsent)
    answered = {o.record.get("request_id") for o in results}
    verdict = faults.verify(
        scenario="soak",
        delivery=rig.delivery,
        sent=sent,
        unsent=unsent,
        results=results,
        decisions=reader.of("decisions", prefix),
        dead_letters=reader.dead_letters(),
        bad=traffic.bad,
        fault_ms=None,
        archive=rig.archive_counts(prefix, len(set(sent) - (unsent - answered)), timeout_s=120.0),
        restarts=restarts,
        data_restarts=data_restarts,
        job_restarted=bool(job_faults) or restarts > 0,
        clock=rig.clock,
        state_bytes=rig.state_bytes(),
        fault={"send_errors": traffic.send_errors, "exceptions": firsts[:5]},
    )
    first: dict[str, float] = {}
    by_id: dict[str, int] = {}  # results per request
    for o in results:
        rid = str(o.record.get("request_id"))
        by_id[rid] = by_id.get(rid, 0) + 1
        first[rid] = min(first.get(rid, o.consumed_ms), o.consumed_ms)
    answer_ms = sorted(o.consumed_ms for o in results)
    marks = [f for f in injected if f["fault_ms"] is not None]
    spans = []
    for i, f in enumerate(marks):
        until = marks[i + 1]["fault_ms"] if i + 1 < len(marks) else traffic_end_ms
        f |= fault_window(f["fault_ms"], until, sent, first, answer_ms)
        if f["fault"] in faults.JOB_FAULTS:
            recovered = None if f["recovery_s"] is None else f["fault_ms"] + f["recovery_s"] * 1000
            spans.append((f["fault_ms"], recovered, until))
    # At-least-once: a request may be answered twice only if it was sent around a job restart.
    restarts_ms = sorted(float(e.get("timestamp") or 0) for e in exceptions)
    windows = replay_windows(spans, restarts_ms)
    stray = repeats_outside((sent[r] for r, n in by_id.items() if n > 1 and r in sent), windows)
    problems = list(verdict.problems)
    if stray:
        problems.append(f"{len(stray)} requests answered twice, sent away from any job restart")
    fault_s = [(f["at_s"], f["at_s"] + f["took_s"]) for f in injected]
    bounds = rss_bounds(flink_conf.read_conf(REPO_ROOT / "flink-conf" / "config.yaml"))
    series = verdicts(sampler.samples, fault_s, rate, retention_s, bounds)
    growing = [name for name, row in series.items() if row.get("verdict") in (GROWS, OVER_BOUND)]
    if growing:
        problems.append(f"still growing or over its bound: {', '.join(growing)}")
    return {
        "invariants": verdict.to_dict(),
        "repeats_away_from_restarts": len(stray),
        "faults_injected": injected,
        "series": series,
        "samples": [asdict(s) for s in sampler.samples],
        "sample_errors": sampler.errors,
        "problems": problems,
        "passed": not problems,
    }


# --- report ----------------------------------------------------------------------------------------


def markdown(result: Mapping[str, Any]) -> str:
    v = result.get("invariants") or {}
    lines = [
        f"# Soak ({result['date']}, {result['machine']['cpus']} CPUs, commit {result.get('commit')})",
        "",
        f"{result['minutes']:g} min at {result['rate']:g} requests/s ({result['rate_source']}), "
        f"{result['delivery']}; a fault every {result['fault_every']:g} min from "
        f"{', '.join(result['faults'])}; a sample every {SAMPLE_S:g} s.",
        "",
        (
            f"Invariants: {v.get('sent')} sent, {v.get('answered')} answered, {v.get('lost')} lost, "
            f"{v.get('duplicated_same')} answered twice with the same answer "
            f"({result.get('repeats_away_from_restarts')} away from a job restart), "
            f"{v.get('duplicated_different')} with a different one; archive {v.get('archive_rows')} rows / "
            f"{v.get('archive_distinct')} distinct; {v.get('malformed_sent')} malformed, "
            f"{v.get('malformed_dead_lettered')} dead-lettered; restarts {v.get('restarts')} "
            f"(data {v.get('data_restarts')}). "
            if v
            else "Invariants: not checked. "
        )
        + ("**pass**" if result.get("passed") else "**FAIL**: " + "; ".join(result.get("problems") or [])),
        "",
        "## Faults",
        "",
        "| at | fault | injection took s | recovery s | longest gap without answers s | sent while down | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in result.get("faults_injected") or []:
        lines.append(
            f"| {f['at_s'] / 60:.1f} min | {f['fault']} | {f['took_s']} | {_num(f.get('recovery_s'))} | "
            f"{_num(f.get('longest_gap_s'))} | {f.get('sent_while_down', '-')} | {f.get('error') or ''} |"
        )
    lines += [
        "",
        "## Series",
        "",
        "Start, middle, end: the median of each third of the traffic; verdicts compare the last third with "
        f"the middle one, leaving out warm-ups and each fault until {AFTER_FAULT_S:.0f} s after its injection.",
        "",
        "| series | start | middle | end | max | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in (result.get("series") or {}).items():
        verdict = f"{row['verdict']}: {row['why']}" if "verdict" in row else ""
        lines.append(
            f"| {name} | {_num(row['start'])} | {_num(row['middle'])} | {_num(row['end'])} | "
            f"{_num(row['max'])} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if isinstance(v, float) else str(v)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="traffic this long (default %(default)s)")
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s (default: half the sustained rate of docs/results/bench.json, else 100)",
    )
    ap.add_argument(
        "--fault-every", type=float, default=5.0, help="minutes between faults (default %(default)s)"
    )
    ap.add_argument(
        "--faults",
        default=",".join(DEFAULT_FAULTS),
        help=f"comma-separated, injected in turn, of: {', '.join(s for s in faults.SCENARIOS if not s.startswith('model-'))}",
    )
    ap.add_argument("--delivery", default=names.DELIVERY_AT_LEAST_ONCE, choices=names.DELIVERIES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "var" / "models")
    a = ap.parse_args(argv)
    chosen = [s.strip() for s in a.faults.split(",") if s.strip()]
    # model-hang and model-late are set up before a scenario's traffic, not injected into a running one.
    known = [s for s in faults.SCENARIOS if not s.startswith("model-")]
    if not chosen or any(s not in known for s in chosen):
        ap.error(f"--faults: each of {', '.join(known)}, got {a.faults!r}")
    if a.minutes <= 0 or a.fault_every <= 0 or (a.rate is not None and a.rate <= 0):
        ap.error("--minutes, --fault-every and --rate must be positive")
    if a.rate is not None:
        rate, source = a.rate, "--rate"
    else:
        bench = json.loads(BENCH_JSON.read_text()) if BENCH_JSON.exists() else None
        rate, source = rate_from_bench(bench)
    a.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = runinfo.run_info() | {
        "args": runinfo.plain_args(a),
        "minutes": a.minutes,
        "rate": rate,
        "rate_source": source,
        "delivery": a.delivery,
        "fault_every": a.fault_every,
        "faults": chosen,
        "runners": [asdict(s) for s in faults.RUNNERS],
    }
    result |= run(
        minutes=a.minutes,
        rate=rate,
        rate_source=source,
        fault_every=a.fault_every,
        fault_names=chosen,
        delivery=a.delivery,
        out=a.out,
        models_dir=a.models_dir,
    )
    (a.out / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (a.out / "soak.md").write_text(markdown(result))
    print((a.out / "soak.md").read_text())
    return 0 if result.get("passed") else 1


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

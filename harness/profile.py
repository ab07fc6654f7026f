"""`make profile`: where the job's and a runner's CPU goes, stage by stage, on this machine.

Each part runs on its own fresh broker:

1. ``job``: the job alone drains a preloaded backlog (requests with 4 scores each, as `make bench`'s job
   part). Over a window in the middle of the drain it takes the CPU of every thread of the job's JVM
   (/proc, before and after; the full names from ``jcmd Thread.print``), grouped into
   stages by thread (Kafka source, mailbox task, Kafka sink, archive, checkpoints, GC, JIT, ...); and
   py-spy samples of the Python that runs inside the mailbox task's thread (PyFlink thread mode), split
   by what it was doing (parse, mailbox logic, state, timers, outputs, metrics, PyFlink's own code).
   The rest of a Python thread's time is its Java (records in and out, the Java/Python calls, the
   state and timer backends, the Kafka sink chained to the mailbox), which a JFR recording over the
   same window splits by the packages its Java samples were in.
2. ``runner``: one model runner at a fixed rate of requests, py-spy samples of its process, split the
   same way (Kafka consume, parse, scoring, encode, produce).

Writes var/profile/profile.json, profile.md and the raw py-spy stacks. Numbers are reported, never
asserted: the machine is shared, and py-spy's samples are estimates (see ``python_percent``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harness import bench, bench_kit, loadgen, runinfo, stack
from ops import kafka_admin, kafka_client, procs
from runners.data import sample_features
from udfs import names

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "var" / "profile"
SAMPLE_RATE_HZ = 250  # py-spy samples per second

# --- the JVM's threads ------------------------------------------------------------------------

# One thread of `jcmd <pid> Thread.print`: its name, CPU so far and native id (JDK 17's format).
_THREAD_LINE = re.compile(r'^"(?P<name>.*)" .*?cpu=(?P<cpu>[\d.]+)ms .*?nid=(?P<nid>0x[0-9a-fA-F]+|\d+)')

JIT_STAGE = "JVM: JIT compiler"
# Stage of a JVM thread, by its name: the first pattern that matches (re.search), else "other JVM".
THREAD_STAGES: tuple[tuple[str, str], ...] = (
    (r"^Time Trigger for ", "timers: Flink's processing-time service"),
    (r"rendezvous mailbox", "mailbox task (and the Kafka sink chained to it)"),
    (r"^_stream_key_by_map_operator", "key_by task (PyFlink's Python key selector)"),
    (r"^Source Data Fetcher", "Kafka source: fetchers (poll, decode)"),
    (r"^Source: ", "Kafka source: tasks (records into Flink)"),
    (r"kafka-producer-network-thread", "Kafka sink: producer I/O"),
    (r"decoy archive", "archive file sink"),
    (r"kafka-out|Sink: |Writer", "Kafka sink: task (table conversion, serialize)"),
    (r"[Cc]heckpoint|AsyncOperations|snapshot", "checkpoints"),
    (r"^G1 |^GC Thread|VM Periodic|^VM Thread", "JVM: GC and VM"),
    (r"CompilerThread|Compiler", JIT_STAGE),
    (r"kafka-coordinator|kafka-admin|adminclient", "Kafka clients: coordination"),
)


def jvm_threads(pid: int) -> dict[int, tuple[str, float]]:
    """{native thread id: (name, CPU ms so far)} of a JVM, from ``jcmd <pid> Thread.print``."""
    jcmd = str(Path(procs.java_bin()).with_name("jcmd"))
    out = subprocess.run([jcmd, str(pid), "Thread.print"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"jcmd {pid} Thread.print failed: {out.stderr.strip() or out.stdout.strip()}")
    return parse_thread_print(out.stdout)


def parse_thread_print(text: str) -> dict[int, tuple[str, float]]:
    threads = {}
    for line in text.splitlines():
        m = _THREAD_LINE.match(line)
        if m:
            threads[int(m["nid"], 0)] = (m["name"], float(m["cpu"]))
    return threads


def thread_stage(name: str) -> str:
    for pattern, stage in THREAD_STAGES:
        if re.search(pattern, name):
            return stage
    return "other JVM (RPC, metrics, timers)"


def task_cpu_ms(pid: int) -> dict[int, float]:
    """{native thread id: CPU ms so far} of every thread of ``pid``, from /proc (a read, no pause)."""
    out = {}
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) * tick_ms
    return out


def thread_cpu_percent(
    before: dict[int, float], after: dict[int, float], seconds: float, thread_names: dict[int, str]
) -> dict[int, tuple[str, float]]:
    """{native id: (name, CPU % of a core over the window)} for the threads alive at both ends (one that
    started or ended inside the window is left out: its CPU for the window alone is not known)."""
    return {
        tid: (thread_names.get(tid, f"thread {tid}"), 100 * (cpu_ms - before[tid]) / 1000 / seconds)
        for tid, cpu_ms in after.items()
        if tid in before
    }


# --- JFR: what the JVM's threads do in Java -------------------------------------------------------

# Stage of a Java stack (JFR's execution samples: only threads running Java code), by its frames from
# the innermost out: the first frame that holds one of a rule's substrings names it.
JAVA_STAGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("pemja.",), "Java/Python calls (pemja)"),
    (("TimerService", "TimerHeap", "HeapPriorityQueue", "InternalTimer"), "timers"),
    (("runtime.state.", "StateTable", "CopyOnWrite"), "state backend"),
    (
        ("org.apache.kafka.clients.producer", "KafkaWriter", "KafkaRecordSerializationSchema"),
        "Kafka producer",
    ),
    (("org.apache.kafka.clients.consumer", "connector.kafka.source"), "Kafka consumer"),
    (
        ("org.apache.flink.table.", "DataStructureConverter", "RowRowConverter"),
        "table rows (conversion, Calc)",
    ),
    (("TypeSerializer", "Serializer.", "DataOutputSerializer", "DataInputDeserializer"), "serializers"),
    (
        ("runtime.io.network", "RecordWriter", "StreamTaskNetworkInput", "RecordDeserializer"),
        "network buffers",
    ),
    (("org.apache.flink.python", "streaming.api.operators.python"), "PyFlink operators (Java side)"),
    (("checkpoint", "Checkpoint", "snapshot"), "checkpoints"),
    (("MailboxProcessor", "StreamTask", "TaskMailbox"), "Flink task loop"),
)
_JFR_THREAD = re.compile(r'^\s*sampledThread = "(?P<name>.*)" \(javaThreadId = \d+\)')


def jfr_start(pid: int, seconds: float, out: Path, name: str = "rendezvous-profile") -> None:
    """A JFR recording of ``pid`` for ``seconds`` into ``out`` (JDK's 'profile' settings: a Java sample
    every 10 ms per running thread)."""
    jcmd = str(Path(procs.java_bin()).with_name("jcmd"))
    argv = [jcmd, str(pid), "JFR.start", f"name={name}", "settings=profile"]
    argv += [f"duration={int(seconds)}s", f"filename={out}"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"jcmd JFR.start failed: {res.stderr.strip() or res.stdout.strip()}")


def warm_up_jfr(pid: int, warmup_s: float) -> None:
    """A throw-away JFR recording over the warm-up: a JVM's first recording loads and compiles JFR's
    own code, which took half a core of JIT inside the measured window when it started there (measured:
    48-63 % of a core for the JIT, 2026-12-03). It ends before the window's own recording starts."""
    seconds = max(int(warmup_s) - 2, 1)
    jfr_start(pid, seconds, OUT_DIR / "warmup.jfr", name="rendezvous-warmup")


def jfr_samples(recording: Path) -> dict[str, Counter[str]]:
    """{thread name: Counter(stage)} of the recording's execution samples."""
    jfr = str(Path(procs.java_bin()).with_name("jfr"))
    argv = [jfr, "print", "--events", "jdk.ExecutionSample", "--stack-depth", "40", str(recording)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"jfr print failed: {res.stderr.strip()[:200]}")
    return parse_jfr_samples(res.stdout)


def parse_jfr_samples(text: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    thread: str | None = None
    frames: list[str] = []
    in_stack = False
    for line in text.splitlines():
        m = _JFR_THREAD.match(line)
        if m:
            thread = m["name"]
            continue
        stripped = line.strip()
        if stripped.startswith("stackTrace = ["):
            in_stack, frames = True, []
        elif in_stack and stripped == "]":
            in_stack = False
            if thread is not None:
                out.setdefault(thread, Counter())[java_stage(frames)] += 1
        elif in_stack and stripped and stripped != "...":
            frames.append(stripped)
    return out


def java_stage(frames: Sequence[str]) -> str:
    """The stage of one Java stack (innermost frame first, as JFR prints it)."""
    for frame in frames:
        for needles, stage in JAVA_STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other Java"


# --- py-spy samples ---------------------------------------------------------------------------


class Rule(NamedTuple):
    """A frame of this function (its last name; "" for any) in a file ending so names the stage; with
    ``code``, only at a line of the project's source that holds it (a call into C code)."""

    func: str
    file: str
    stage: str
    code: str = ""


# The stages of the threads that run Python (first in the table).
PYTHON_TASKS = ("mailbox task", "key_by task")

# Stage of a Python stack, by its frames: walking from the outermost frame in, the last rule that
# matches a frame names it (so the innermost known activity wins). A rule: (function, file suffix).
JOB_PY_STAGES: tuple[Rule, ...] = tuple(
    Rule(*r)
    for r in (
        ("process_element", "udfs/flink_fn.py", "adapter: process_element glue"),
        ("on_timer", "udfs/flink_fn.py", "adapter: on_timer glue"),
        ("on_record", "udfs/rendezvous_logic.py", "adapter: process_element glue"),
        ("on_timer", "udfs/rendezvous_logic.py", "adapter: on_timer glue"),
        ("parse_request", "udfs/wire_in.py", "parse (wire)"),
        ("parse_score_or_tick", "udfs/wire_in.py", "parse (wire)"),
        ("key_mismatch", "udfs/wire_in.py", "parse (wire)"),
        ("_load", "udfs/rendezvous_logic.py", "state read (value, from_json)"),
        ("on_request", "udfs/mailbox.py", "mailbox logic and policy"),
        ("on_score", "udfs/mailbox.py", "mailbox logic and policy"),
        ("on_tick", "udfs/mailbox.py", "mailbox logic and policy"),
        ("on_timer", "udfs/mailbox.py", "mailbox logic and policy"),
        ("_effects", "udfs/rendezvous_logic.py", "adapter: apply a step"),
        ("_carry_out", "udfs/flink_fn.py", "adapter: apply a step"),
        ("to_json", "udfs/mailbox.py", "state write (to_json, update)"),
        ("update", "state_impl.py", "state write (to_json, update)"),
        ("clear", "state_impl.py", "state write (to_json, update)"),
        ("timer_service", "", "timers"),
        ("register_processing_time_timer", "", "timers"),
        ("delete_processing_time_timer", "", "timers"),
        ("_json", "udfs/flink_fn.py", "outputs (JSON, rows)"),
        ("add_each", "udfs/rendezvous_logic.py", "metrics"),
        ("add", "udfs/model_metrics.py", "metrics"),
        ("add", "udfs/rendezvous_logic.py", "metrics"),
        ("flush", "udfs/rendezvous_logic.py", "metrics"),
        ("process_element", "pyflink/datastream/data_stream.py", "key selector (AddKey)"),
        ("routing_key", "udfs/wire_in.py", "key selector (AddKey)"),
    )
)
RUNNER_PY_STAGES: tuple[Rule, ...] = tuple(
    Rule(*r)
    for r in (
        # A frame matches the first rule that fits: a call into librdkafka before the loop around it.
        ("", "runners/runner.py", "Kafka consume (librdkafka)", "consume_ready("),
        ("consume_ready", "ops/kafka_client.py", "Kafka consume (librdkafka)"),
        ("", "runners/runner.py", "Kafka produce (librdkafka)", ".produce("),
        ("", "runners/runner.py", "Kafka delivery reports (librdkafka)", ".poll("),
        ("run", "runners/runner.py", "runner loop"),
        ("parse_request", "runners/runner.py", "parse requests"),
        ("admit", "runners/runner.py", "admit (faults, batching)"),
        ("score_batch", "runners/model.py", "scoring (scikit-learn)"),
        ("vector", "runners/model.py", "features to vectors"),
        ("release", "runners/runner.py", "release due scores"),
        ("encode_score", "runners/runner.py", "encode scores (JSON)"),
    )
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def classify(frames: Sequence[str], rules: Sequence[Rule], default: str) -> str:
    """The stage of one stack (frames outermost first, py-spy's ``function (file:line)``)."""
    stage = default
    for frame in frames:
        m = _FRAME.match(frame)
        func, file, line = (m["func"], m["file"], m["line"]) if m else (frame, "", None)
        name = func.rsplit(".", 1)[-1]  # "MailboxFunction._apply" -> "_apply"
        for rule in rules:
            if rule.func not in ("", name) or not file.endswith(rule.file):
                continue
            if rule.code and (line is None or rule.code not in _source_line(file, int(line))):
                continue
            stage = rule.stage
            break
    return stage


def _source_line(file: str, line: int) -> str:
    """A line of the project's own source (for a rule that names the call made there: a frame of C code,
    librdkafka's, has no Python frame of its own)."""
    return linecache.getline(str(REPO_ROOT / file), line)


_THREAD_FRAME = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)")


def read_raw(path: Path) -> dict[int, list[tuple[list[str], int]]]:
    """py-spy ``--format raw --threads`` (collapsed stacks, the thread first): {native thread id:
    [(frames outermost first, samples)]}; a stack with no frame is the thread outside Python."""
    stacks: dict[int, list[tuple[list[str], int]]] = {}
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        thread, *frames = body.split(";")
        m = _THREAD_FRAME.match(thread)
        if m:
            stacks.setdefault(int(m["tid"], 0), []).append((frames, int(count)))
    return stacks


def python_split(
    stacks: list[tuple[list[str], int]], rules: Sequence[Rule], default: str
) -> dict[str | None, float]:
    """One thread's samples as shares of its time: {stage: share}, None for the samples outside Python
    (no frame: in the JVM, or idle)."""
    per: Counter[str | None] = Counter()
    for frames, n in stacks:
        per[classify(frames, rules, default) if frames else None] += n
    total = sum(per.values())
    return {k: v / total for k, v in per.most_common()} if total else {}


def py_spy(pid: int, seconds: float, out: Path, rate_hz: int = SAMPLE_RATE_HZ) -> subprocess.Popen[bytes]:
    """Start py-spy recording ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks, one line per
    stack and thread). --nonblocking: the target is never paused, so the profile does not slow it."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed: run `make setup` (it is in the bench extra)")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate_hz)]
    argv += ["--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(spy: subprocess.Popen[bytes], out: Path) -> dict[int, list[tuple[list[str], int]]]:
    log, _ = spy.communicate(timeout=120)
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {log.decode(errors='replace').strip().splitlines()[-1:]}")
    return read_raw(out)


# --- 1. the job -------------------------------------------------------------------------------


def _results_done(consumer: Any, topic: str) -> int:
    return int(kafka_client.end_offsets(consumer, [kafka_client.TopicPartition(topic, 0)])[(topic, 0)])


def profile_job(backlog: int, seconds: float, warmup_s: float, rate: float = 0.0) -> dict[str, Any]:
    """The job alone draining a backlog (or, with ``rate``, under live request + score pairs at that
    rate): per-thread CPU of its JVM and its Python's stages."""
    broker = bench._fresh_broker("profile-job")
    processes = stack.Processes()
    work = OUT_DIR / "work" / "job"
    shutil.rmtree(work, ignore_errors=True)
    try:
        job = stack.start_job(
            bench.BENCH_POLICY,
            broker.bootstrap,
            work / "archive",
            work / "flink",
            work / "job.log",
            processes,
        )
        stack.wait_until_answering(broker.bootstrap, job)
        jvm = procs.jvm_of(job.pid)
        if jvm is None:
            raise RuntimeError("the job's JVM (a child of the job's process) was not found")
        if warmup_s > 0:
            bench.say(f"profile: warm-up, {warmup_s:.0f} s at 300 requests/s, JFR recording throughout ...")
            warm_up_jfr(jvm, warmup_s)
            bench.job_probe(broker.bootstrap, job, 300, warmup_s)
        if rate:
            return _job_window_live(broker.bootstrap, job, jvm, rate, seconds)
        topic = f"results.profile-{uuid.uuid4().hex[:6]}"
        kafka_admin.create_topics(broker.bootstrap, [topic])
        bench.say(
            f"profile: preloading {backlog} requests with {len(bench_kit.BACKLOG_MODELS)} scores each ..."
        )
        bench_kit.preload_backlog(broker.bootstrap, topic, backlog)
        consumer = kafka_client.consumer(broker.bootstrap, client_id="profile")
        try:
            procs.wait_for(lambda: _results_done(consumer, topic) >= backlog // 5, 300, "the drain to start")
            bench.say(
                f"profile: {seconds:.0f} s window: jcmd Thread.print, py-spy at {SAMPLE_RATE_HZ} Hz ..."
            )
            raw = OUT_DIR / "job-pyspy.txt"
            done0, before, t0 = _results_done(consumer, topic), task_cpu_ms(jvm), time.monotonic()
            spy = py_spy(jvm, seconds, raw)
            recording = OUT_DIR / "job.jfr"
            recording.unlink(missing_ok=True)
            jfr_start(jvm, seconds, recording)
            time.sleep(seconds)
            done1, after, t1 = _results_done(consumer, topic), task_cpu_ms(jvm), time.monotonic()
            names_by_tid = {tid: name for tid, (name, _) in jvm_threads(jvm).items()}
            stacks = _finish(spy, raw)
            procs.wait_for(recording.exists, 60, "the JFR recording")
            java = jfr_samples(recording)
        finally:
            consumer.close()
        if done1 >= backlog:
            bench.say("profile: the backlog ran out inside the window: raise --backlog")
        window = t1 - t0
        threads = thread_cpu_percent(before, after, window, names_by_tid)
        python = {tid: python_split(st, JOB_PY_STAGES, JOB_PY_DEFAULT) for tid, st in stacks.items()}
        records = len(bench_kit.BACKLOG_MODELS) + 1
        return job_report(threads, python, java, window, (done1 - done0) / window, records)
    finally:
        processes.stop_all()
        broker.stop()


JOB_PY_DEFAULT = "PyFlink (operations, row conversion)"


def _sample(jvm: int, seconds: float) -> tuple[dict[int, tuple[str, float]], dict[int, Any], Any, float]:
    """One window: the JVM's thread CPU, py-spy's and JFR's samples; (threads, python, java, seconds)."""
    raw, recording = OUT_DIR / "job-pyspy.txt", OUT_DIR / "job.jfr"
    recording.unlink(missing_ok=True)
    before, t0 = task_cpu_ms(jvm), time.monotonic()
    spy = py_spy(jvm, seconds, raw)
    jfr_start(jvm, seconds, recording)
    time.sleep(seconds)
    after, t1 = task_cpu_ms(jvm), time.monotonic()
    names_by_tid = {tid: name for tid, (name, _) in jvm_threads(jvm).items()}
    stacks = _finish(spy, raw)
    procs.wait_for(recording.exists, 60, "the JFR recording")
    threads = thread_cpu_percent(before, after, t1 - t0, names_by_tid)
    python = {tid: python_split(st, JOB_PY_STAGES, JOB_PY_DEFAULT) for tid, st in stacks.items()}
    return threads, python, jfr_samples(recording), t1 - t0


def _job_window_live(bootstrap: str, job: procs.ManagedProcess, jvm: int, rate: float, seconds: float) -> Any:
    """The window while request + score pairs arrive at ``rate`` (the bench's latency probe, alongside)."""
    probe: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: probe.update(bench.job_probe(bootstrap, job, rate, seconds + 10)), daemon=True
    )
    bench.say(f"profile: live, {rate:.0f} request + score pairs/s; {seconds:.0f} s window after 5 s ...")
    load.start()
    time.sleep(5)
    threads, python, java, window = _sample(jvm, seconds)
    load.join(120)
    report = job_report(threads, python, java, window, rate, 2)
    report["live_rate"] = rate
    report["probe_latency_ms"] = probe.get("latency_ms")
    return report


def job_report(
    threads: dict[int, tuple[str, float]],
    python: dict[int, dict[str | None, float]],
    java: dict[str, Counter[str]],
    window_s: float,
    results_per_s: float,
    records_per_result: int,
) -> dict[str, Any]:
    """Stages of the job: each JVM thread's CPU under its stage; a thread that runs Python split by its
    py-spy samples into its Python stages and the rest, its Java, which its JFR samples split in turn.
    CPU % of a core, µs per record in."""
    records_per_s = results_per_s * records_per_result
    by_stage: dict[str, float] = {}

    def add(key: str, pct: float) -> None:
        by_stage[key] = by_stage.get(key, 0.0) + pct

    for tid, (name, pct) in threads.items():
        stage = thread_stage(name)
        if tid not in python:
            add(stage, pct)
            continue
        for py_stage, share in python[tid].items():
            if py_stage is not None:
                add(f"{stage}: Python, {py_stage}", pct * share)
                continue
            samples = java.get(name)
            total = sum(samples.values()) if samples else 0
            if not samples or not total:
                add(f"{stage}: Java", pct * share)
                continue
            for java_stage_name, n in samples.items():
                add(f"{stage}: Java, {java_stage_name}", pct * share * n / total)
    rows = sorted(by_stage.items(), key=lambda kv: (not kv[0].startswith(tuple(PYTHON_TASKS)), -kv[1]))

    def us(pct: float) -> float | None:
        return round(pct / 100 * 1e6 / records_per_s, 1) if records_per_s > 0 else None

    py_total = sum(v for k, v in by_stage.items() if ": Python, " in k)
    return {
        "window_s": round(window_s, 1),
        "results_per_s": round(results_per_s),
        "records_per_s": round(records_per_s),
        "cpu_percent_total": round(sum(pct for _, pct in threads.values()), 1),
        "python_percent": round(py_total, 1),
        "stages": [{"stage": k, "cpu_percent": round(v, 1), "us_per_record": us(v)} for k, v in rows],
        "threads": {
            name: round(pct, 1) for name, pct in sorted(threads.values(), key=lambda kv: -kv[1]) if pct >= 0.5
        },
    }


# --- 2. a runner ------------------------------------------------------------------------------


def _written(bootstrap: str, consumer: Any, topic: str) -> int:
    """Records in ``topic`` so far, over all its partitions."""
    n = kafka_admin.partition_counts(bootstrap, [topic])[topic]
    tps = [kafka_client.TopicPartition(topic, p) for p in range(n)]
    return sum(kafka_client.end_offsets(consumer, tps).values())


def profile_runner(rate: float, seconds: float, warmup_s: float) -> dict[str, Any]:
    """One runner (the bench's preferred model, no injected latency) at ``rate`` requests/s."""
    from runners.train import ensure_trained

    broker = bench._fresh_broker("profile-runner")
    processes = stack.Processes()
    work = OUT_DIR / "work" / "runner"
    shutil.rmtree(work, ignore_errors=True)
    try:
        ensure_trained(bench.MODELS_DIR)
        spec = stack.RunnerSpec("gbt", seed=1)
        (runner,) = stack.start_runners([spec], bench.MODELS_DIR, broker.bootstrap, work / "logs", processes)
        producer = kafka_client.producer(broker.bootstrap, client_id="profile-load")
        rng = np.random.default_rng(7)
        features = [json.dumps(sample_features(rng), separators=(",", ":")) for _ in range(1000)]

        def send(i: int) -> None:
            rid = f"p{i}"
            now = int(time.time() * 1000)
            req = loadgen.encode_request(rid, "results", features[i % len(features)], now)
            producer.send(names.TOPIC_REQUESTS, req, rid.encode())

        scores = kafka_client.consumer(broker.bootstrap, client_id="profile")
        try:
            # Until the runner answers (its group has its partitions): the window must see it working.
            for i in range(int(rate * 60)):
                send(i)
                if i % 50 == 0:
                    producer.flush(5)
                    if _written(broker.bootstrap, scores, names.TOPIC_SCORES) > 0:
                        break
                time.sleep(1 / rate)
        finally:
            scores.close()
        if warmup_s > 0:
            bench.say(f"profile: runner warm-up, {warmup_s:.0f} s at {rate:.0f} requests/s ...")
            bench._paced(int(rate * warmup_s), rate, lambda i: send(1_000_000 + i))
        raw = OUT_DIR / "runner-pyspy.txt"
        bench.say(f"profile: runner at {rate:.0f} requests/s for {seconds:.0f} s, py-spy ...")
        cpu = bench_kit.CpuMeter({"runner": runner.pid})
        spy = py_spy(runner.pid, seconds, raw)
        took = bench._paced(int(rate * seconds), rate, lambda i: send(10_000_000 + i))
        runner_cpu = cpu.percent()["runner"]
        stacks = _finish(spy, raw)
        producer.finish(timeout_s=10)
        # A plain Python process: py-spy leaves out idle samples, so every sample is CPU; the process's
        # measured CPU is split by their shares (all threads together).
        split = python_split([x for st in stacks.values() for x in st], RUNNER_PY_STAGES, "other Python")
        return {
            "rate": rate,
            "window_s": round(took, 1),
            "cpu_percent_total": runner_cpu,
            "stages": [
                {
                    "stage": k or "outside Python (no frame)",
                    "cpu_percent": round(runner_cpu * v, 1),
                    "us_per_request": round(runner_cpu * v / 100 * 1e6 / rate, 1),
                }
                for k, v in split.items()
            ],
        }
    finally:
        processes.stop_all()
        broker.stop()


# --- report -----------------------------------------------------------------------------------


def job_section(result: dict[str, Any]) -> list[str]:
    """The job's stages: CPU % of a core and µs per record in (none without a job part)."""
    job = result.get("job")
    if job and "error" in job:
        return ["## The job", "", f"Failed: {job['error']}", ""]
    if not job:
        return []
    lines = [
        (
            f"## The job alone under {job['live_rate']:.0f} request + score pairs/s ("
            if job.get("live_rate")
            else "## The job alone, draining requests with 4 scores ("
        )
        + f"{job['records_per_s']:,} records/s in, "
        f"{job['window_s']:.0f} s window, JVM {job['cpu_percent_total']:.0f} % of a core)",
        "",
        "| stage | CPU % of a core | µs per record in |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['stage']} | {s['cpu_percent']:.1f} | {'-' if s['us_per_record'] is None else s['us_per_record']} |"
        for s in job["stages"]
    ]
    lines += [
        "",
        f"Python (py-spy's samples of the threads that run it): {job['python_percent']:.0f} % of a core. "
        "A thread's CPU (jcmd) is split by the share of its samples in each stage; the samples "
        "with no Python frame are its Java.",
        "",
    ]
    jit = sum(st["cpu_percent"] for st in job["stages"] if st["stage"] == JIT_STAGE)
    if jit >= stack.JIT_QUIET_PERCENT:
        lines += [
            f"The JIT compiler used {jit:.0f} % of a core inside the window: the JVM was still "
            "compiling, and the other figures are above its steady state (a longer --warmup).",
            "",
        ]
    return lines


def runner_section(result: dict[str, Any]) -> list[str]:
    """A runner's stages: CPU % of a core and µs per request (none without a runner part)."""
    runner = result.get("runner")
    if runner and "error" in runner:
        return ["## A runner", "", f"Failed: {runner['error']}", ""]
    if not runner:
        return []
    return [
        f"## A runner at {runner['rate']:.0f} requests/s (CPU {runner['cpu_percent_total']} % of a core, "
        "split by py-spy's samples)",
        "",
        "| stage | CPU % of a core | µs per request |",
        "|---|---|---|",
        *(f"| {s['stage']} | {s['cpu_percent']:.1f} | {s['us_per_request']} |" for s in runner["stages"]),
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    return "\n".join([f"# Profile ({result['date']})", "", *job_section(result), *runner_section(result)])


def parser() -> argparse.ArgumentParser:
    """`make profile`'s options (harness.publish reads their defaults to name a run's command)."""
    ap = argparse.ArgumentParser(prog="rendezvous profile", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="job,runner", help="parts, comma-separated, of: job, runner")
    ap.add_argument("--seconds", type=float, default=20.0, help="the sampling window of each part")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of unrecorded load first")
    ap.add_argument("--backlog", type=int, default=120_000, help="requests preloaded for the job part")
    ap.add_argument("--runner-rate", type=float, default=500.0, help="requests/s sent to the runner")
    ap.add_argument(
        "--job-rate",
        type=float,
        default=0.0,
        help="profile the job under live load at this rate instead of a backlog",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    parts = {p.strip() for p in a.only.split(",") if p.strip()}
    if parts - {"job", "runner"}:
        ap.error(f"--only: a comma-separated list of job, runner; got {a.only!r}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = runinfo.run_info() | {"args": vars(a)}
    for part, run in (
        ("job", lambda: profile_job(a.backlog, a.seconds, a.warmup, a.job_rate)),
        ("runner", lambda: profile_runner(a.runner_rate, a.seconds, a.warmup / 3)),
    ):
        if part in parts:
            try:
                result[part] = run()
            except (RuntimeError, TimeoutError) as e:
                result[part] = {"error": str(e).splitlines()[0]}
    bench.say(runinfo.write_run(OUT_DIR, "profile", result, markdown(result)))
    return 0


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

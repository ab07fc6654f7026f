"""`make bench`: measure the stack on this machine and write JSON, Markdown and a PNG plot.

Each measurement runs on its own fresh broker so they do not disturb each other:

0. ``clients`` (``--only clients``): one Kafka hop (produce a record, wait until it is consumed,
   repeat ~2000 times after a warm-up) with each Python client in this one process, the project's
   confluent-kafka and kafka-python (which it used before), p50/p99 and CPU per round trip; and
   Kafka's own ``org.apache.kafka.tools.EndToEndLatency`` (Java, kafka-tools) on the same broker as
   the bare floor.
1. ``kafka_floor``: the physical floor. A request goes client -> topic -> echo -> topic -> echo ->
   topic -> client: the three Kafka hops a request takes (requests, scores, results), with the
   same Python clients as the stack, at fixed rates and producer lingers.
2. ``job_capacity``: the rendezvous job alone draining a preloaded backlog (one request and one
   score per id), records per second once it is warm.
3. ``stack``: broker, runners (three models and a canary; the backstop straggles), job and
   open-loop load. After a warm-up at 50/s until the JIT compilers of the job and the broker are quiet
   (a fresh JVM compiles its hot paths for a minute or two of load; harness.stack.warm_up) each rate
   of a ladder runs in turn, until the stack saturates: end-to-end latency (request produced ->
   result consumed), deadline misses, CPU per process, mailbox state size (the last checkpoint).
   Run twice: with the rendezvous ``first_in_order`` policy and with a wait-for-all ensemble
   (``policies/bench-wait-for-all.yaml``: answer when every model has answered, as peers do).
4. ``delivery``: the job alone at a modest rate with its results at-least-once, then exactly-once
   (Kafka transactions, read by a read_committed client): the latency an exactly-once result pays for
   waiting for the checkpoint that commits it, at the shipped 2 s interval and at 500 ms.
5. ``clock``: the job alone with ``--clock log`` (the default) and ``--clock local``, once with the
   incumbent's score sent with each request (decided when the score is read: no tick) and once with
   only the challenger's (decided when the incumbent's 40 ms wait runs out: under the log clock, after
   the tick's round trip through Kafka). The latency the log clock's reproducible decisions cost.
5b. ``addresses``: the whole stack answering one request to each of several new return addresses and
   then a second one to each, with the project's Kafka sink context (deps/kafka-sink-context) and with
   the connector's own (one producer made and closed per new topic), runs alternating.
6. ``state``: the job alone under sustained load for several minutes with a short tombstone retention
   (``--state-retention-ms``), the checkpoint size every 30 s: the mailbox state levels off once
   tombstones expire as fast as requests arrive.
6b. ``models``: the job alone with the 20-model policy (``policies/many-models.yaml``) draining backlogs
   of requests with k = 4, 10, 20 scores each: records/s, CPU µs per request of the job and the broker,
   and each extra model's cost fitted over the drains. ``models_stack`` (not by default): the whole
   stack at fixed rates with 4 and with 20 models scoring (one runner serving 16 of the ids).
7. ``--tuning``: the job alone under each candidate Flink setting (execution mode, bundles,
   buffer timeout, state backend, checkpoint interval, parallelism, object reuse), latency at a
   fixed rate and capacity on a backlog; and the encodings of records crossing between Java and
   Python, measured alone (``harness/bench_crossing.py``).

Numbers are reported, never asserted: benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import confluent_kafka
import yaml

from harness import bench_crossing, bench_scale, loadgen, runinfo, stack
from harness.bench_kit import BACKLOG_MODELS, CpuMeter, _request_and_score, preload_backlog, us_per_request
from jobs import rendezvous_job
from ops import kafka_admin, kafka_client, latency, procs
from ops.broker import KafkaBroker
from udfs import names
from udfs.policy import load_policy

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "var" / "bench"
MODELS_DIR = REPO_ROOT / "var" / "models"
BENCH_POLICY = REPO_ROOT / "policies" / "default.yaml"
WAIT_FOR_ALL_POLICY = REPO_ROOT / "policies" / "bench-wait-for-all.yaml"
# A stack step's first seconds at its rate, counted but measured apart: the JVMs' JIT compilers recompile
# for a new rate for ~5-10 s (the job's C2 at 40-60 % of a core, its answers' p99 200-350 ms at 833/s).
LEAD_IN_S = 10.0
WARMUP_RATE = 50.0  # requests/s of the stack's unrecorded warm-up: below saturation even with a cold JIT
BUDGET_MS = 100  # the seed example's answer budget; also the default policy's deadline
STACK_LINGER_MS = 1  # the load generator's and the runners' producer linger (ops/kafka_client.py)
# Three models and a canary. gbt (preferred) answers in ~2 ms of injected latency plus its scoring
# time; the backstop straggles (40-80 ms), which first_in_order ignores and wait-for-all cannot.
RUNNERS = (
    stack.RunnerSpec("gbt", latency_ms=2, seed=1),
    stack.RunnerSpec("logreg", latency_ms=1, seed=2),
    stack.RunnerSpec("tree", latency_ms=40, jitter_ms=40, seed=3),
    stack.RunnerSpec("base", seed=4),
)
# The same four models in one runner process (runners/runner.py --also, `--runners one`): one fetch of
# each request for all four and their scores in shared produce requests; the models live and die together.
ONE_PROCESS_RUNNERS = stack.one_process(RUNNERS)
RUNNER_LAYOUTS = {"processes": RUNNERS, "one": ONE_PROCESS_RUNNERS}
# On two cores shared by the whole stack, four runner processes cost ~0.5 ms of CPU per request more
# than one and saturated the machine at 833/s (docs/performance.md, "One runner process for several models").
DEFAULT_RUNNER_LAYOUT = "one"
DEFAULT_RATES = "25,50,100,250,500,833,1000,1500,2000,2500,3000,4000"
# The parts `make bench` runs (--only's default)
DEFAULT_PARTS = "clients,floor,job,first_in_order,wait_for_all,delivery,clock,addresses,models,scale"
# Settings compared by --tuning: (name, -D overrides). The first is the shipped flink-conf/.
TUNING_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shipped: thread mode, buffer 5 ms, hashmap, checkpoint 10 s, parallelism 1", ()),
    ("process mode, bundle 100 / 5 ms", ("python.execution-mode=process",)),
    (
        "process mode, bundle 1000 / 1000 ms (Flink defaults)",
        (
            "python.execution-mode=process",
            "python.fn-execution.bundle.size=1000",
            "python.fn-execution.bundle.time=1000",
        ),
    ),
    ("buffer timeout 0 ms (flush every record)", ("execution.buffer-timeout.interval=0ms",)),
    ("buffer timeout 100 ms (Flink default)", ("execution.buffer-timeout.interval=100ms",)),
    ("RocksDB state backend", ("state.backend.type=rocksdb",)),
    ("checkpoint every 2 s (shipped until 2026-12-03)", (f"{stack.CHECKPOINT_INTERVAL_KEY}=2s",)),
    # Checkpoints upload only the state changes since the last one; the heap is written whole once per
    # materialization (1 min here) instead of at every checkpoint (10 s).
    (
        "changelog state backend, materialized every 1 min",
        ("state.changelog.enabled=true", "state.changelog.periodic-materialize.interval=1min"),
    ),
    # Two slots, or the second subtask is never scheduled (flink-conf gives the TaskManager one).
    ("parallelism 2", ("parallelism.default=2", "taskmanager.numberOfTaskSlots=2")),
    ("object reuse between chained operators", ("pipeline.object-reuse=true",)),
    # The Kafka sink's producer: how long a record may wait for others to share a produce request.
    ("sink linger 1 ms", ("--sink-linger-ms=1",)),
    ("sink linger 5 ms", ("--sink-linger-ms=5",)),
    ("sink linger 1 ms and object reuse", ("--sink-linger-ms=1", "pipeline.object-reuse=true")),
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- measuring processes ----------------------------------------------------------------------


def checkpoint_bytes(state_dir: Path) -> int | None:
    """Size on disk of the newest completed checkpoint under state_dir (the job's keyed state)."""
    newest: tuple[float, Path] | None = None
    for meta in (state_dir / "checkpoints").glob("*/chk-*/_metadata"):
        with contextlib.suppress(OSError):
            m = meta.stat().st_mtime
            if newest is None or m > newest[0]:
                newest = (m, meta.parent)
    if newest is None:
        return None
    total = 0
    for f in newest[1].rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file():
                total += f.stat().st_size
    return total


def _fresh_broker(name: str) -> KafkaBroker:
    """A broker with the default topics on a fresh ``work/<name>`` (harness/stack.py)."""
    data = OUT_DIR / "work" / name
    shutil.rmtree(data, ignore_errors=True)
    return stack.start_broker(data / "broker")


def _paced(count: int, rate: float, send: Callable[[int], None]) -> float:
    """Call send(i) for i in range(count) at `rate` per second, open loop; returns the seconds taken."""
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return time.monotonic() - t0


# --- 1. the Kafka floor -----------------------------------------------------------------------


# Runs of the floor per rate at the stack's linger, the one the ratios compare against: the floor is what
# Kafka does on this machine, and one run that a busy moment of the machine spoils (833/s at 13:59 on
# 2026-12-06: p99 248 ms, above the rendezvous' own) is not it. The ratios take the run with the lower p99.
FLOOR_RUNS_AT_STACK_LINGER = 2


def kafka_floor(
    rates: Sequence[float], seconds: float, lingers: Sequence[int] = (0, 1, 5)
) -> list[dict[str, Any]]:
    """Three Kafka hops through two echo threads, per rate and producer linger: no model, no job."""
    broker = _fresh_broker("floor")
    out = []
    try:
        for linger in lingers:
            for rate in rates:
                runs = FLOOR_RUNS_AT_STACK_LINGER if linger == STACK_LINGER_MS else 1
                for run in range(runs):
                    again = f" (run {run + 1} of {runs})" if runs > 1 else ""
                    say(f"Kafka floor: 3 hops at {rate:.0f}/s, linger {linger} ms{again} ...")
                    out.append(_three_hops(broker.bootstrap, rate, int(rate * seconds), linger))
    finally:
        broker.stop()
    return out


def _three_hops(bootstrap: str, rate: float, count: int, linger_ms: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    topics = [f"floor-{tag}-{i}" for i in range(3)]
    kafka_admin.create_topics(bootstrap, topics)

    def consumer(topic: str) -> kafka_client.Consumer:
        # Assigned, not subscribed: no consumer group to join. The topics are new: from the beginning.
        c = kafka_client.consumer(bootstrap, client_id="bench-floor")
        c.assign_all([topic])
        return c

    echo_consumers = [consumer(topics[0]), consumer(topics[1])]
    client_in = consumer(topics[2])
    producers = [
        kafka_client.producer(bootstrap, client_id="bench-floor", linger_ms=linger_ms) for _ in range(3)
    ]
    stop = threading.Event()
    received: list[float] = []

    def echo(c: kafka_client.Consumer, p: kafka_client.Producer, to: str) -> None:
        while not stop.is_set():
            for m in c.take(1000, 0.05):
                p.send(to, m.value())

    def collect() -> None:
        while not stop.is_set() and len(received) < count:
            batch = client_in.take(1000, 0.05)
            now = time.time() * 1000
            received.extend(now - float(m.value() or b"nan") for m in batch)

    threads = [
        threading.Thread(target=echo, args=(echo_consumers[0], producers[1], topics[1]), daemon=True),
        threading.Thread(target=echo, args=(echo_consumers[1], producers[2], topics[2]), daemon=True),
        threading.Thread(target=collect, daemon=True),
    ]
    for t in threads:
        t.start()
    cpu = CpuMeter({"bench": os.getpid()})
    took = _paced(count, rate, lambda i: producers[0].send(topics[0], repr(time.time() * 1000).encode()))
    producers[0].flush(30)
    end = time.monotonic() + 10
    while len(received) < count and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(5)
    for c in (*echo_consumers, client_in):
        c.close()
    for p in producers:
        p.finish(timeout_s=5)
    return {
        "hops": 3,
        "rate": rate,
        "achieved_rate": round(count / took) if took > 0 else None,
        "linger_ms": linger_ms,
        "count": count,
        "received": len(received),
        "latency_ms": latency.summarize(received).to_dict(),
        "cpu_percent": cpu.percent(),
    }


# --- 1b. the Python Kafka clients side by side, and Kafka's own floor ---------------------------

CLIENT_HOPS = 2000  # measured round trips per client, after CLIENT_WARMUP unrecorded ones
CLIENT_WARMUP = 200
CLIENT_RECORD_BYTES = 200
KAFKA_JARS = REPO_ROOT / "build" / "jars" / "kafka"
END_TO_END_LATENCY = "org.apache.kafka.tools.EndToEndLatency"


def _process_cpu_s() -> float:
    """User+system CPU of this process, every thread included (librdkafka's and kafka-python's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _hop_loop(name: str, count: int, warmup: int, hop: Callable[[bytes], None]) -> dict[str, Any]:
    """``hop(payload)`` (produce one record, return once it is consumed) ``warmup`` + ``count`` times;
    latency per hop and the process's CPU per hop over the measured ones."""
    payload = b"x" * CLIENT_RECORD_BYTES
    for _ in range(warmup):
        hop(payload)
    lat: list[float] = []
    cpu0, wall0 = _process_cpu_s(), time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        hop(payload)
        lat.append((time.perf_counter() - t0) * 1000.0)
    cpu, wall = _process_cpu_s() - cpu0, time.perf_counter() - wall0
    return {
        "client": name,
        "count": count,
        "latency_ms": latency.summarize(lat).to_dict(),
        "cpu_us_per_hop": round(cpu / count * 1e6),
        "cpu_percent": round(100 * cpu / wall) if wall > 0 else None,
    }


def _hops_confluent(bootstrap: str, count: int, warmup: int) -> dict[str, Any]:
    """One hop with the project's client (ops.kafka_client: confluent-kafka), producer linger 0."""
    topic = f"hop-ck-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    producer = kafka_client.producer(bootstrap, client_id="bench-hop", linger_ms=0)
    consumer = kafka_client.consumer(bootstrap, client_id="bench-hop")
    consumer.assign_all([topic])

    def hop(payload: bytes) -> None:
        producer.send(topic, payload)
        while not consumer.take(1, 0.1):
            pass

    try:
        name = f"confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"
        return _hop_loop(name, count, warmup, hop) | {"delivery_errors": producer.delivery_errors.count}
    finally:
        consumer.close()
        producer.finish(timeout_s=5)


def _hops_kafka_python(bootstrap: str, count: int, warmup: int) -> dict[str, Any]:
    """The same hop with kafka-python (what the project used before confluent-kafka), linger 0."""
    try:
        import kafka  # the `bench` extra (pyproject.toml): kept only for this comparison
    except ImportError:
        return {"error": "kafka-python is not installed (pip install -e '.[bench]')"}

    topic = f"hop-kp-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100, check_crcs=False)
    tp = kafka.TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    consumer.position(tp)

    def hop(payload: bytes) -> None:
        producer.send(topic, payload)
        producer.flush()  # kafka-python's sender thread sends at once with linger 0; this waits for it
        while not consumer.poll(timeout_ms=100):
            pass

    try:
        return _hop_loop(f"kafka-python {kafka.__version__}", count, warmup, hop)
    finally:
        consumer.close()
        producer.close(timeout=5)


def parse_end_to_end_latency(text: str) -> dict[str, Any]:
    """p50/p99/p99.9 and the mean from EndToEndLatency's output. It truncates each latency to whole
    milliseconds before taking percentiles (``elapsed / 1000 / 1000``); the mean is exact."""
    pct = re.search(r"Percentiles: 50th = (\d+), 99th = (\d+), 99\.9th = (\d+)", text)
    avg = re.search(r"Avg latency: ([0-9.]+) ms", text)
    if pct is None or avg is None:
        tail = " | ".join(line for line in text.strip().splitlines()[-3:])
        raise RuntimeError(f"no percentiles in EndToEndLatency's output: {tail[:200]}")
    p50, p99, p999 = (float(x) for x in pct.groups())
    return {"latency_ms": {"p50": p50, "p99": p99, "p99.9": p999, "mean": float(avg.group(1))}}


def _hops_java(bootstrap: str, count: int, warmup: int) -> dict[str, Any]:
    """Kafka's own tool (kafka-tools, deps/pom.xml) on the same broker: the Java clients' one hop
    (producer linger 0, send().get(), then the consumer's poll; consumer fetch wait 0)."""
    if not any(KAFKA_JARS.glob("kafka-tools-*.jar")):
        return {"error": f"kafka-tools jar not in {KAFKA_JARS}; run `make setup`"}
    topic = f"hop-java-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    argv = ["java", "-cp", str(KAFKA_JARS / "*"), END_TO_END_LATENCY, bootstrap, topic]
    # The tool has no warm-up of its own: a first run warms the broker's side, the second is measured
    # (its JVM is new too: its first thousand records pay for the JIT; reported as Java sees them).
    subprocess.run([*argv, str(warmup), "all", str(CLIENT_RECORD_BYTES)], capture_output=True, timeout=300)
    done = subprocess.run(
        [*argv, str(count), "all", str(CLIENT_RECORD_BYTES)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"EndToEndLatency exited with {done.returncode}: {done.stderr.strip()[-200:]}")
    return {"client": f"EndToEndLatency (Java, kafka-tools {_kafka_version()})", "count": count} | (
        parse_end_to_end_latency(done.stdout)
    )


def _kafka_version() -> str:
    jar = next(KAFKA_JARS.glob("kafka-tools-*.jar"), None)
    return jar.stem.removeprefix("kafka-tools-") if jar else "?"


CLIENT_RUNS: tuple[tuple[str, Callable[[str, int, int], dict[str, Any]]], ...] = (
    ("confluent-kafka", _hops_confluent),
    ("kafka-python", _hops_kafka_python),
    ("java", _hops_java),
)


def clients_floor(count: int = CLIENT_HOPS, warmup: int = CLIENT_WARMUP) -> dict[str, Any]:
    """One Kafka hop (produce a record, wait until it is consumed, repeat) per client, each in this one
    process, one after the other on one fresh broker: latency and CPU per round trip."""
    broker = _fresh_broker("clients")
    out: dict[str, Any] = {}
    try:
        for key, run in CLIENT_RUNS:
            say(f"clients: one hop with {key}, {warmup} + {count} round trips ...")
            try:
                out[key] = run(broker.bootstrap, count, warmup)
            except (RuntimeError, TimeoutError, OSError) as e:
                out[key] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
            r = out[key]
            if "error" in r:
                say(f"clients: {key} failed: {r['error']}")
            else:
                lat = r["latency_ms"]
                say(
                    f"clients: {r['client']}: p50 {_ms2(lat['p50'])} ms, p99 {_ms2(lat['p99'])} ms, "
                    f"CPU {r.get('cpu_us_per_hop', '-')} µs per round trip"
                )
    finally:
        broker.stop()
    return {"count": count, "warmup": warmup, "record_bytes": CLIENT_RECORD_BYTES, "runs": out}


# --- 2. job capacity and the job-only probe (also used by --tuning) ----------------------------


def drain_backlog(
    bootstrap: str,
    job: procs.ManagedProcess,
    requests: int,
    models: Sequence[str] = BACKLOG_MODELS,
    watch: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Preload `requests` requests with one score per model each, then time the job's results; the rate
    over the last 2/3, and the job's CPU over the whole drain. ``watch`` (name: pid, e.g. the broker):
    the CPU of the job and of those per result over the same last 2/3 (``cpu_us_per_request``)."""
    topic = f"results.capacity-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    preload_backlog(bootstrap, topic, requests, models)
    consumer = kafka_client.consumer(bootstrap, client_id="bench-backlog")
    tp = kafka_client.TopicPartition(topic, 0)
    cpu = CpuMeter({"job": job.pid})
    t0 = time.monotonic()
    mark: tuple[float, int] | None = None
    window: CpuMeter | None = None
    done = 0
    try:
        while time.monotonic() - t0 < 600 and done < requests:
            if not job.is_running():
                raise RuntimeError(f"job exited:\n{job.log_tail(30)}")
            done = kafka_client.end_offsets(consumer, [tp])[(topic, 0)]
            if mark is None and done >= requests // 3:
                mark = (time.monotonic(), done)
                window = CpuMeter({"job": job.pid} | (watch or {}))
            time.sleep(0.2)
    finally:
        consumer.close()
    t1 = time.monotonic()
    per_s = (done - mark[1]) / (t1 - mark[0]) if mark and t1 > mark[0] and done > mark[1] else None
    per_request = 1 + len(models)
    out: dict[str, Any] = {
        "requests": requests,
        "scores_per_request": len(models),
        "results": done,
        "drain_s": round(t1 - t0, 1),
        "results_per_s": round(per_s) if per_s else None,
        "records_per_s": round(per_request * per_s) if per_s else None,  # a request and its scores each
        "job_cpu_percent": cpu.percent()["job"],
    }
    if watch is not None and window is not None and mark is not None and done > mark[1]:
        out["cpu_us_per_request"] = us_per_request(window.seconds(), done - mark[1])
    return out


def job_probe(
    bootstrap: str, job: procs.ManagedProcess, rate: float, seconds: float, model_id: str = "gbt"
) -> dict[str, Any]:
    """The job alone: request+score pairs at `rate`, latency from send to result consumed; the score
    comes from ``model_id`` (the default policy's incumbent, or another model to make it wait)."""
    topic = f"results.probe-{uuid.uuid4().hex[:6]}"
    kafka_admin.create_topics(bootstrap, [topic])
    # read_committed: an exactly-once result counts when a client could see it, at its commit.
    consumer = kafka_client.consumer(
        bootstrap, client_id="bench-probe", isolation=kafka_client.READ_COMMITTED
    )
    consumer.assign_all([topic])
    producer = kafka_client.producer(bootstrap, client_id="bench-probe")
    count = int(rate * seconds)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            batch = consumer.take(1000, 0.05)
            now = time.time() * 1000
            for m in batch:
                got.setdefault(json.loads(m.value() or b"{}")["request_id"], now)

    def send(i: int) -> None:
        rid = f"j{i}-{topic[-6:]}"
        now = time.time() * 1000
        sent[rid] = now
        req, score = _request_and_score(rid, topic, int(now), model_id)
        producer.send(names.TOPIC_REQUESTS, req, rid.encode())
        producer.send(names.TOPIC_SCORES, score, rid.encode())

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    cpu = CpuMeter({"job": job.pid})
    took = _paced(count, rate, send)
    producer.flush(30)
    job_cpu = cpu.percent()["job"]
    end = time.monotonic() + 10
    while len(got) < count and time.monotonic() < end:
        time.sleep(0.1)
    stop.set()
    collector.join(5)
    consumer.close()
    producer.finish(timeout_s=5)
    return {
        "rate": rate,
        "achieved_rate": round(count / took) if took > 0 else None,
        "sent": count,
        "answered": len(got),
        "latency_ms": latency.summarize(got[r] - sent[r] for r in got).to_dict(),
        "job_cpu_percent": job_cpu,
    }


def job_args(overrides: Sequence[str]) -> list[str]:
    """Overrides (TUNING_VARIANTS, --stack-job-args) as job arguments: ``--flag=value`` as it is, else a
    ``-D`` of Flink's."""
    return [x for o in overrides for x in ((o,) if o.startswith("--") else ("-D", o))]


def job_alone(
    name: str, overrides: Sequence[str], probe_rate: float, seconds: float, backlog: int, warmup_s: float
) -> dict[str, Any]:
    """One job, no runners: warm up, a latency probe at a fixed rate, then capacity on a backlog."""
    broker = _fresh_broker(f"job-{name}")
    processes = stack.Processes()
    work = OUT_DIR / "work" / f"job-{name}"
    shutil.rmtree(work / "flink", ignore_errors=True)
    extra = job_args(overrides)
    try:
        job = stack.start_job(
            BENCH_POLICY,
            broker.bootstrap,
            work / "archive",
            work / "flink",
            work / "job.log",
            processes,
            extra,
        )
        started = time.monotonic()
        stack.wait_until_answering(broker.bootstrap, job)
        ready_s = time.monotonic() - started
        if warmup_s > 0:
            job_probe(broker.bootstrap, job, probe_rate, warmup_s)
        probe = job_probe(broker.bootstrap, job, probe_rate, seconds)
        capacity = drain_backlog(broker.bootstrap, job, backlog)
        return {
            "overrides": list(overrides),
            "ready_s": round(ready_s, 1),
            "probe": probe,
            "capacity": capacity,
            "state_bytes": checkpoint_bytes(work / "flink"),
        }
    except (RuntimeError, TimeoutError) as e:
        return {"overrides": list(overrides), "error": str(e).splitlines()[0]}
    finally:
        processes.stop_all()
        broker.stop()


# --- 2b. many models: what each extra model's score costs ----------------------------------------

MANY_MODELS_POLICY = REPO_ROOT / "policies" / "many-models.yaml"
MODEL_COUNTS = "4,10,20"  # scores per request of the models part's drains
MANY_MODELS_RATES = "50,100,250"  # the models_stack part's fixed rates


def count_order(counts: Sequence[int], rounds: int) -> list[int]:
    """The drains in turn: the counts up, then down, and so on for ``rounds`` passes, so that the JIT
    still warming during the first drains favours neither the small counts nor the large ones."""
    out: list[int] = []
    for r in range(rounds):
        out += list(counts) if r % 2 == 0 else list(reversed(counts))
    return out


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x`` over the points: (a, b); None without two different x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def per_model_cost(drains: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process, its CPU µs per request as a line in the scores per request (least squares over the
    drains): ``per_model_us``, what each extra model's score adds, and ``base_us``, the line at none."""
    points: dict[str, list[tuple[float, float]]] = {}
    for d in drains:
        for name, us in (d.get("cpu_us_per_request") or {}).items():
            points.setdefault(name, []).append((d["scores_per_request"], us))
    out: dict[str, dict[str, float]] = {}
    for name, xy in points.items():
        fit = fit_line(xy)
        if fit is not None:
            out[name] = {"base_us": round(fit[0]), "per_model_us": round(fit[1], 1)}
    return out


def models_alone(
    counts: Sequence[int], backlog: int, probe_rate: float, warmup_s: float, rounds: int
) -> dict[str, Any]:
    """The job alone with the 20-model policy (``policies/many-models.yaml``): for each k of ``counts``, a
    backlog of requests with one score from each of the policy's first k models, drained; the rate and
    the CPU µs per request of the job and the broker, and the cost of each extra model fitted over them."""
    ids = [m.id for m in load_policy(MANY_MODELS_POLICY).models]
    if not counts or max(counts) > len(ids) or min(counts) < 1:
        raise ValueError(f"--models-counts: each from 1 to {len(ids)} (the policy's models), got {counts}")
    broker = _fresh_broker("models")
    processes = stack.Processes()
    work = OUT_DIR / "work" / "models"
    shutil.rmtree(work / "flink", ignore_errors=True)
    out: dict[str, Any] = {"policy": str(MANY_MODELS_POLICY.relative_to(REPO_ROOT)), "requests": backlog}
    drains: list[dict[str, Any]] = []
    try:
        job = stack.start_job(
            MANY_MODELS_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log",
            processes,
        )  # fmt: skip
        stack.wait_until_answering(broker.bootstrap, job)
        if warmup_s > 0:
            job_probe(broker.bootstrap, job, probe_rate, warmup_s)
        for k in count_order(counts, rounds):
            say(f"models: a backlog of {backlog} requests with {k} scores each ...")
            d = drain_backlog(broker.bootstrap, job, backlog, ids[:k], {"broker": broker.pid})
            drains.append(d)
            say(
                f"models: {k} scores: {d['records_per_s']} records/s in, {d['results_per_s']} results/s, "
                f"CPU µs per request {d.get('cpu_us_per_request')}"
            )
    except (RuntimeError, TimeoutError) as e:
        out["error"] = str(e).splitlines()[0]
    finally:
        processes.stop_all()
        broker.stop()
    return out | {"drains": drains, "cost": per_model_cost(drains)}


def many_models_runners(
    model_ids: Sequence[str], base: Sequence[stack.RunnerSpec] = RUNNERS
) -> tuple[stack.RunnerSpec, ...]:
    """``base`` and one more process that serves every other id of ``model_ids`` with the logreg model
    (2-6 ms): every model of the policy scores every request, without a process and a model each."""
    have = {s.model_id for s in base}
    rest = tuple(m for m in model_ids if m not in have)
    extra = stack.RunnerSpec("logreg", latency_ms=2, jitter_ms=4, seed=5, model_ids=rest)
    return (*base, extra) if rest else tuple(base)


def scores_per_request(runners: Sequence[stack.RunnerSpec]) -> int:
    return sum((len(s.model_ids) or 1) + len(s.also) for s in runners)


def models_stack(
    rates: Sequence[float], seconds: float, warmup_s: float, warmup_max_s: float
) -> list[dict[str, Any]]:
    """The whole stack at the same fixed rates with the bench's four scoring models (the default
    policy) and with all 20 of ``policies/many-models.yaml`` scoring: latency and CPU per process."""
    many = many_models_runners([m.id for m in load_policy(MANY_MODELS_POLICY).models])
    out = []
    for policy, runners in ((BENCH_POLICY, RUNNERS), (MANY_MODELS_POLICY, many)):
        k = scores_per_request(runners)
        try:
            run = stack_ladder(
                policy, rates, seconds, warmup_s, f"models-{k}", warmup_max_s=warmup_max_s, runners=runners
            )
        except (RuntimeError, TimeoutError) as e:
            run = {"policy": str(policy.relative_to(REPO_ROOT)), "steps": [], "error": str(e).splitlines()[0]}
        out.append({"scores_per_request": k} | run)
    return out


def step_us_per_request(step: dict[str, Any], process: str) -> float | None:
    """A ladder step's CPU µs per request of one process (``runners``: all of them), at the rate reached."""
    cpu = step["cpu_percent"]
    rate = step.get("achieved_rate") or step["rate"]
    if process == "runners":
        percent: float | None = sum(v for k, v in cpu.items() if k.startswith("runner"))
    else:
        percent = cpu.get(process)
    return None if percent is None or not rate else 1e4 * percent / rate


def stack_per_model(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each rate where the fewest and the most models both kept up: each extra model's CPU µs per
    request in the job and the broker (the difference over the difference in scores per request)."""
    done = [r for r in runs if r.get("steps")]
    if len(done) < 2:
        return []
    done.sort(key=lambda r: r["scores_per_request"])
    lo, hi = done[0], done[-1]
    extra = hi["scores_per_request"] - lo["scores_per_request"]
    out = []
    for a in lo["steps"]:
        b = _step_at(hi["steps"], a["rate"])
        if extra <= 0 or b is None or saturated(a) or saturated(b):
            continue
        row: dict[str, Any] = {"rate": a["rate"], "extra_models": extra}
        for process in ("job", "broker"):
            ua, ub = step_us_per_request(a, process), step_us_per_request(b, process)
            row[f"{process}_us_per_model"] = None if ua is None or ub is None else round((ub - ua) / extra, 1)
        out.append(row)
    return out


# --- 4. the cost of exactly-once results --------------------------------------------------------

# (name, job arguments): the results sink's guarantee, and for exactly-once the checkpoint interval
# that decides when a result becomes visible.
DELIVERY_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("at-least-once", ("--results-delivery", names.DELIVERY_AT_LEAST_ONCE)),
    ("exactly-once, checkpoint 10 s (shipped)", ("--results-delivery", names.DELIVERY_EXACTLY_ONCE)),
    (
        "exactly-once, checkpoint 2 s",
        ("--results-delivery", names.DELIVERY_EXACTLY_ONCE, *stack.checkpoint_every("2s")),
    ),
    (
        "exactly-once, checkpoint 500 ms",
        (
            "--results-delivery", names.DELIVERY_EXACTLY_ONCE,
            *stack.checkpoint_every("500ms"),
            "-D", "execution.checkpointing.min-pause=100ms",
        ),
    ),
)  # fmt: skip


def _per_variant(
    part: str,
    variants: Sequence[tuple[str, Sequence[str]]],
    measure: Callable[[str, str, procs.ManagedProcess], dict[str, Any]],
) -> dict[str, Any]:
    """One broker; per variant a fresh job (and state) started with the variant's arguments, waited
    for, and measured by ``measure(name, bootstrap, job)``. A variant that fails is reported, not raised."""
    broker = _fresh_broker(part)
    out: dict[str, Any] = {}
    try:
        for i, (name, args) in enumerate(variants):
            processes = stack.Processes()
            work = OUT_DIR / "work" / f"{part}-{i}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                job = stack.start_job(
                    BENCH_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log",
                    processes, [*args, "--group-id", f"bench-{part}-{i}"],
                )  # fmt: skip
                stack.wait_until_answering(broker.bootstrap, job)
                out[name] = {"args": list(args)} | measure(name, broker.bootstrap, job)
            except (RuntimeError, TimeoutError) as e:
                out[name] = {"args": list(args), "error": str(e).splitlines()[0]}
            finally:
                processes.stop_all()
    finally:
        broker.stop()
    return out


def _probe_logged(
    label: str, bootstrap: str, job: procs.ManagedProcess, rate: float, seconds: float, model_id: str = "gbt"
) -> dict[str, Any]:
    say(f"{label}: {rate:.0f} requests/s for {seconds:.0f} s ...")
    probe = job_probe(bootstrap, job, rate, seconds, model_id)
    lat = probe["latency_ms"]
    say(f"{label}: p50 {_ms(lat.get('p50'))} ms, p99 {_ms(lat.get('p99'))} ms")
    return probe


def delivery_cost(rate: float, seconds: float, warmup_s: float) -> dict[str, Any]:
    """The job alone, once per results guarantee: request+score pairs at ``rate``, latency from send to
    the result a read_committed client consumes."""

    def measure(name: str, bootstrap: str, job: procs.ManagedProcess) -> dict[str, Any]:
        if warmup_s > 0:
            job_probe(bootstrap, job, rate, warmup_s)
        return {"probe": _probe_logged(f"delivery: {name}", bootstrap, job, rate, seconds)}

    return _per_variant("delivery", DELIVERY_VARIANTS, measure)


# --- 5. the cost of the log clock --------------------------------------------------------------

CLOCK_CASES = (
    ("score in time (gbt, no tick)", "gbt"),
    ("wait runs out (logreg after gbt's 40 ms)", "logreg"),
)


def clock_cost(
    rate: float, seconds: float, warmup_s: float, clocks: Sequence[str] = names.CLOCKS
) -> dict[str, Any]:
    """The job alone per ``--clock``: latency when the incumbent's score decides, and when only the
    challenger scores, so the incumbent's wait (40 ms, the default policy) must run out first."""

    def measure(clock: str, bootstrap: str, job: procs.ManagedProcess) -> dict[str, Any]:
        if warmup_s > 0:
            job_probe(bootstrap, job, rate, warmup_s, "logreg")
        return {
            "cases": {
                case: _probe_logged(f"clock {clock}: {case}", bootstrap, job, rate, seconds, model_id)
                for case, model_id in CLOCK_CASES
            }
        }

    return _per_variant("clock", [(c, ("--clock", c)) for c in clocks], measure)


# --- 6. state under sustained load ------------------------------------------------------------------

STATE_SAMPLE_S = 30.0


def state_over_time(rate: float, minutes: float, retention_ms: int) -> dict[str, Any]:
    """The job alone at ``rate`` for ``minutes`` with tombstones kept ``retention_ms``: the newest
    checkpoint's size every ``STATE_SAMPLE_S``. It should level off at about rate x retention x the
    bytes of one tombstone, once the first tombstones expire."""
    broker = _fresh_broker("state-broker")  # not under work/state, which is cleared below
    processes = stack.Processes()
    work = OUT_DIR / "work" / "state"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    policy = yaml.safe_load(BENCH_POLICY.read_text()) | {"dedupe_retention_ms": retention_ms}
    policy_path = work / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    samples: list[dict[str, Any]] = []
    try:
        job = stack.start_job(
            policy_path, broker.bootstrap, work / "archive", work / "flink", work / "job.log", processes
        )
        stack.wait_until_answering(broker.bootstrap, job)
        started = time.monotonic()
        sent = answered = 0
        while time.monotonic() - started < minutes * 60:
            probe = job_probe(broker.bootstrap, job, rate, STATE_SAMPLE_S)
            sent += probe["sent"]
            answered += probe["answered"]
            size = checkpoint_bytes(work / "flink")
            samples.append(
                {
                    "elapsed_s": round(time.monotonic() - started),
                    "sent": sent,
                    "answered": answered,
                    "state_bytes": size,
                    "p99_ms": probe["latency_ms"]["p99"],
                }
            )
            say(f"state: {samples[-1]['elapsed_s']} s, {sent} sent, checkpoint {_kb(size)} KB")
        return {"rate": rate, "retention_ms": retention_ms, "samples": samples}
    except (RuntimeError, TimeoutError) as e:
        return {
            "rate": rate,
            "retention_ms": retention_ms,
            "samples": samples,
            "error": str(e).splitlines()[0],
        }
    finally:
        processes.stop_all()
        broker.stop()


def _kb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:.0f}"


# --- 3. the whole stack ----------------------------------------------------------------------


def saturated(step: dict[str, Any]) -> bool:
    """A step the stack could not keep up with: the ladder stops after it."""
    p99 = step["latency_ms"]["p99"]
    return (
        step["answered"] < 0.99 * step["sent"]
        or (step["achieved_rate"] or 0) < 0.9 * step["rate"]
        or p99 is None
        or p99 > 20 * BUDGET_MS
    )


IDLE_S = 20.0  # the idle window: no traffic, after the warm-up and its pause


def first_answer(bootstrap: str) -> tuple[str, float | None]:
    """A new return address and the latency of the one request sent to it first.

    The job's Kafka sink looks up a topic's partitions the first time it writes to it, with a Kafka
    producer of its own made and closed for that (the connector's ``DefaultKafkaSinkContext``): the
    task thread stops once per return address (docs/performance-history.md). A step measures the steady state
    on an address the job has answered once; this figure is that first answer.
    """
    address = f"results.bench-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics(bootstrap, [address])
    first = loadgen.run_load(
        bootstrap, count=1, rate=1.0, return_address=address, settle_ms=5000, validate_results=False
    )
    return address, first.latency_ms.max


CONNECTOR_CONTEXT = "connector's context"
ADDRESS_VARIANTS: tuple[str, ...] = ("shipped", CONNECTOR_CONTEXT)


def connector_only_jars() -> str:
    """``pipeline.jars`` without the project's sink context: the connector's own class answers."""
    return "pipeline.jars=" + ";".join(
        p.resolve().as_uri()
        for p in rendezvous_job.connector_jars()
        if p.name != rendezvous_job.SINK_CONTEXT_JAR
    )


def new_addresses(count: int, rounds: int, warmup_s: float) -> dict[str, Any]:
    """The first answer to each of ``count`` new return addresses, and the next answer to each, with
    the project's sink context (``deps/kafka-sink-context``) and with the connector's own, alternating
    ``rounds`` times (each run its own broker, runners and job, warmed up at 50/s)."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in ADDRESS_VARIANTS}
    for r in range(rounds):
        for variant in ADDRESS_VARIANTS:
            label = f"addresses-{r}-{'shipped' if variant == 'shipped' else 'connector'}"
            overrides = [] if variant == "shipped" else [connector_only_jars()]
            runs[variant].append(_address_run(label, overrides, count, warmup_s))
    return {"count": count, "rounds": rounds, "runs": runs}


def _address_run(label: str, overrides: Sequence[str], count: int, warmup_s: float) -> dict[str, Any]:
    from runners.train import ensure_trained

    broker = _fresh_broker(label)
    processes = stack.Processes()
    work = OUT_DIR / "work" / label
    shutil.rmtree(work / "flink", ignore_errors=True)
    try:
        ensure_trained(MODELS_DIR)
        stack.start_runners(RUNNERS, MODELS_DIR, broker.bootstrap, work / "logs", processes)
        job = stack.start_job(
            BENCH_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log",
            processes, job_args(overrides),
        )  # fmt: skip
        stack.wait_until_answering(broker.bootstrap, job)
        stack.warm_up(
            broker.bootstrap, WARMUP_RATE, warmup_s, warmup_s, {"job": job.pid},
            lambda m: say(f"[{label}] {m}"), budget_ms=BUDGET_MS,
        )  # fmt: skip
        first, again = [], []
        for _ in range(count):
            address, first_ms = first_answer(broker.bootstrap)
            second = loadgen.run_load(
                broker.bootstrap, count=1, rate=1.0, return_address=address, settle_ms=5000,
                validate_results=False,
            )  # fmt: skip
            first.append(first_ms)
            again.append(second.latency_ms.max)
        say(f"[{label}] first answers ms {first}; next answers ms {again}")
        return {"first_ms": first, "again_ms": again}
    finally:
        processes.stop_all()
        broker.stop()


def stack_ladder(
    policy: Path,
    rates: Sequence[float],
    seconds: float,
    warmup_s: float,
    label: str,
    idle_s: float = 0.0,
    warmup_max_s: float = 0.0,
    job_overrides: Sequence[str] = (),
    runners: Sequence[stack.RunnerSpec] = RUNNERS,
    lead_in_s: float = 0.0,
) -> dict[str, Any]:
    """Broker, runners, job; warm up, then (``idle_s``) the CPU each process uses with no traffic, then
    each rate in turn until saturation. ``job_overrides``: see job_args. Each step sends ``lead_in_s``
    of its rate before its ``seconds``, in one run: the JVMs compile for a new rate in its first
    seconds, so those answers are counted but their latency is reported apart (``lead_in_latency_ms``)."""
    from runners.train import ensure_trained

    broker = _fresh_broker(f"stack-{label}")
    processes = stack.Processes()
    work = OUT_DIR / "work" / f"stack-{label}"
    shutil.rmtree(work / "flink", ignore_errors=True)
    try:
        ensure_trained(MODELS_DIR)
        started = stack.start_runners(runners, MODELS_DIR, broker.bootstrap, work / "logs", processes)
        extra = job_args(job_overrides)
        job = stack.start_job(
            policy, broker.bootstrap, work / "archive", work / "flink", work / "job.log", processes, extra
        )
        stack.wait_until_answering(broker.bootstrap, job)
        watched = {"job": job.pid, "broker": broker.pid, "loadgen": os.getpid()} | {
            f"runner-{s.name}": p.pid for s, p in zip(runners, started, strict=True)
        }
        warmup: list[stack.WarmupRound] = []
        if warmup_s > 0:
            # Below saturation, until the job's and the broker's JIT compilers are quiet (a fresh JVM's
            # first minute or two of load is its compiler's), then a pause: a backlog left by the
            # warm-up would be measured as the first step's latency.
            jvms = {"job": job.pid, "broker": broker.pid}
            warmup = stack.warm_up(
                broker.bootstrap, WARMUP_RATE, warmup_s, max(warmup_max_s, warmup_s), jvms,
                lambda m: say(f"[{label}] {m}"), budget_ms=BUDGET_MS,
            )  # fmt: skip
            time.sleep(5)
        idle: dict[str, int] | None = None
        if idle_s > 0:
            say(f"[{label}] idle: {idle_s:.0f} s with no traffic ...")
            meter = CpuMeter({k: v for k, v in watched.items() if k != "loadgen"})
            time.sleep(idle_s)
            idle = meter.percent()
            say(f"[{label}] idle CPU %: {idle}")
        steps: list[dict[str, Any]] = []
        for rate in rates:
            say(f"[{label}] {rate:.0f} requests/s for {seconds:.0f} s ...")
            cpu = CpuMeter(watched)
            # Results are not checked against the schema here (the tests do): it would cost the
            # load generator ~1 ms of CPU per result on a machine with two cores.
            # No per-request deadline: it would override the policy's (a wait-for-all policy must
            # wait); answers later than the budget are counted on the client instead.
            address, first_ms = first_answer(broker.bootstrap)
            lead = int(rate * lead_in_s)
            report = loadgen.run_load(
                broker.bootstrap,
                count=lead + int(rate * seconds),
                rate=rate,
                return_address=address,
                settle_ms=3000,
                validate_results=False,
                budget_ms=BUDGET_MS,
                lead_in=lead,
            )
            step: dict[str, Any] = {
                "rate": rate,
                "achieved_rate": report.achieved_rate,
                "sent": report.sent,
                "answered": report.answered,
                "conflicting": report.conflicting,
                "latency_ms": report.latency_ms.to_dict(),
                # Where the time went (loadgen.LEGS), for all answers and for the late ones: what
                # bounds the step's tail.
                "legs_ms": {k: v.to_dict() for k, v in report.legs_ms.items()},
                "late_legs_ms": {k: v.to_dict() for k, v in report.late_legs_ms.items()},
                "deadline_ms": BUDGET_MS,
                "deadline_misses": report.over_budget,
                "first_answer_ms": first_ms,
                "by_reason": report.by_reason,
                "by_trigger": report.by_trigger,
                "wins_by_model": report.wins_by_model,
                "cpu_percent": cpu.percent(),
                "state_bytes": checkpoint_bytes(work / "flink"),
                "lead_in_s": lead_in_s,
                "lead_in_latency_ms": report.lead_in_latency_ms.to_dict()
                if report.lead_in_latency_ms
                else None,
            }
            steps.append(step)
            lat = report.latency_ms
            say(
                f"[{label}] {rate:.0f}/s: answered {report.answered}/{report.sent}, "
                f"{latency.format_summary(lat)}"
                + (
                    f" (the first {lead_in_s:.0f} s: {latency.format_summary(report.lead_in_latency_ms)})"
                    if report.lead_in_latency_ms
                    else ""
                )
                + f", CPU {step['cpu_percent']}; first answer to the "
                f"step's new return address {_ms(first_ms)} ms; "
                f"where it went: {loadgen.format_legs(report.legs_ms)}; "
                f"the late ones: {loadgen.format_legs(report.late_legs_ms)}"
            )
            if saturated(step):
                say(f"[{label}] saturated at {rate:.0f}/s: the ladder stops here")
                break
        out: dict[str, Any] = {
            "policy": str(policy.relative_to(REPO_ROOT)),
            "runner_processes": [s.name for s in runners],
            "steps": steps,
        }
        if job_overrides:
            out["job_overrides"] = list(job_overrides)
        if warmup:
            out["warmup"] = {
                "seconds": warmup[-1].elapsed_s,
                "rate": WARMUP_RATE,
                "last_jit_percent": warmup[-1].jit_percent,
            }
        if idle is not None:
            out["idle"] = {"seconds": idle_s, "cpu_percent": idle}
        return out
    finally:
        processes.stop_all()
        broker.stop()


# --- reporting --------------------------------------------------------------------------------


def sustained_rate(steps: Sequence[dict[str, Any]]) -> float | None:
    """Highest offered rate whose p99 stayed within the budget with everything answered."""
    ok = [
        s["rate"]
        for s in steps
        if not saturated(s) and s["latency_ms"]["p99"] is not None and s["latency_ms"]["p99"] <= BUDGET_MS
    ]
    return max(ok) if ok else None


def stack_cpu_percent(step: Mapping[str, Any]) -> float | None:
    """The CPU of every process of the step's stack (job, broker, runners, load generator), % of a core."""
    cpu = step.get("cpu_percent") or {}
    return float(sum(cpu.values())) if cpu else None


def cpu_us_per_request(step: Mapping[str, Any]) -> float | None:
    """The stack's CPU per request at the step's achieved rate: what the machine pays for one request,
    fixed costs included."""
    rate, cpu = step.get("achieved_rate") or 0, stack_cpu_percent(step)
    return cpu / 100 * 1e6 / rate if rate and cpu is not None else None


def cpu_line(steps: Sequence[dict[str, Any]]) -> tuple[float, float, int] | None:
    """The stack's CPU against the rate, a least-squares line through the steps that kept up:
    (% of a core at no load, µs per request more, steps used). The slope is what one more request costs
    the machine; a step's own CPU per request also carries the fixed part, which low rates inflate."""
    points = [
        (float(s["achieved_rate"]), cpu)
        for s in steps
        if not saturated(s) and s.get("achieved_rate") and (cpu := stack_cpu_percent(s)) is not None
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread  # % of a core per request/s
    return mean_y - slope * mean_x, slope * 1e4, len(points)


def _goal_cores(steps: Sequence[dict[str, Any]], goal: float) -> str:
    """What the goal rate needs at the stack's measured CPU per request, in cores: the bound when it is
    missed."""
    line = cpu_line(steps)
    if line is None:
        return ""
    fixed, us, n = line
    cores = (fixed + us * goal / 1e4) / 100
    return (
        f"; the stack's CPU, {fixed:.0f} % of a core plus {us:,.0f} µs per request (a line through the {n} "
        f"steps that kept up), puts {goal:,.0f}/s at {cores:.1f} cores"
    )


def _step_at(steps: Sequence[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((s for s in steps if s["rate"] == rate), None)


IDLE_MAX_PERCENT = 5  # of one core, per process, with no traffic
GOAL_RATE = 2500  # requests/s with p99 within the budget: the performance work's goal
JOB_MIN_RECORDS_PER_S = 10_000


def _target(target: str, measured: str, met: bool, parts: str = "first_in_order") -> dict[str, Any]:
    """A target's row; ``command``: the parts of `make bench` that measure it."""
    return {
        "target": target,
        "measured": measured,
        "met": met,
        "command": f'make bench BENCH_ARGS="--only {parts}"',
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance issue's targets that this run measured, each with the figure and whether it was
    met (the demo's own targets are in `make demo`'s summary)."""
    first = result.get("stack", {}).get("first_in_order", {})
    steps = first.get("steps", [])
    out: list[dict[str, Any]] = []
    cap = (result.get("job_capacity") or {}).get("capacity")
    if cap:
        rps = cap["records_per_s"]
        out.append(_target(
            f"the job alone drains requests with 4 scores at >= {JOB_MIN_RECORDS_PER_S:,} records/s",
            f"{rps:,} records/s", rps >= JOB_MIN_RECORDS_PER_S, "job",
        ))  # fmt: skip
    idle = first.get("idle")
    if idle:
        worst = max(idle["cpu_percent"].items(), key=lambda kv: kv[1])
        out.append(_target(
            f"idle: every process <= {IDLE_MAX_PERCENT} % of a core with no traffic",
            f"highest {worst[1]} % ({worst[0]})", worst[1] <= IDLE_MAX_PERCENT, "idle",
        ))  # fmt: skip
    if not steps:
        return out
    s833 = _step_at(steps, 833)
    p99_833 = s833["latency_ms"]["p99"] if s833 else None
    lead_833 = (s833 or {}).get("lead_in_latency_ms")
    out.append(_target(
        f"833 requests/s sustained with p99 <= {BUDGET_MS} ms",
        (f"p99 {p99_833:.0f} ms at 833/s" if p99_833 is not None else "833/s not reached")
        + (f" (its first {s833['lead_in_s']:.0f} s: p99 {_ms(lead_833['p99'])} ms)" if s833 and lead_833 else ""),
        s833 is not None and p99_833 is not None and p99_833 <= BUDGET_MS and not saturated(s833),
    ))  # fmt: skip
    best = sustained_rate(steps)
    out.append(_target(
        f"the highest rate with p99 <= {BUDGET_MS} ms (goal: {GOAL_RATE:,} requests/s)",
        (f"{best:.0f} requests/s" + (_goal_cores(steps, GOAL_RATE) if best < GOAL_RATE else ""))
        if best else f"no rate held p99 <= {BUDGET_MS} ms",
        best is not None and best >= GOAL_RATE,
    ))  # fmt: skip
    s250 = _step_at(steps, 250)
    lat250 = s250["latency_ms"] if s250 else None
    out.append(_target(
        "p50 <= 10 ms and p99 <= 25 ms at 250 requests/s (preferred model answers in ~2 ms)",
        f"p50 {_ms(lat250['p50'])} ms, p99 {_ms(lat250['p99'])} ms" if lat250 else "250/s not reached",
        lat250 is not None and (lat250["p50"] or 1e9) <= 10 and (lat250["p99"] or 1e9) <= 25,
    ))  # fmt: skip
    ratios = floor_ratios(result)
    out.append(_target(
        "rendezvous p99 <= 3x the bare three Kafka hops' p99 at the same rate",
        ", ".join(f"{r['p99_ratio']:.1f}x at {r['rate']:.0f}/s" for r in ratios) or "no common rate",
        bool(ratios) and all(r["p99_ratio"] <= 3 for r in ratios), "floor,first_in_order",
    ))  # fmt: skip
    wfa = result.get("stack", {}).get("wait_for_all", {}).get("steps", [])
    pairs = [(s, _step_at(wfa, s["rate"])) for s in steps if not saturated(s)]
    shown = [(a, b) for a, b in pairs if b is not None and not saturated(b)]
    if wfa:
        out.append(_target(
            "wait-for-all against first_in_order, one straggler, stack not saturated: p99 ms",
            ", ".join(
                f"{_ms(b['latency_ms']['p99'])} vs {_ms(a['latency_ms']['p99'])} at {a['rate']:.0f}/s"
                for a, b in shown
            ) or "no common unsaturated rate",
            bool(shown), "first_in_order,wait_for_all",
        ))  # fmt: skip
    return out


def floor_ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendezvous' latency as a multiple of the bare three Kafka hops' at the same rate (the floor
    with the stack's producer linger, 1 ms; of several runs at a rate, the one with the lowest p99), for
    every rate both measured and the stack kept up with."""
    floor: dict[float, dict[str, Any]] = {}
    for f in result.get("kafka_floor", []):
        p99 = f["latency_ms"]["p99"]
        if f["linger_ms"] != STACK_LINGER_MS or not p99:
            continue
        best = floor.get(f["rate"])
        if best is None or p99 < best["latency_ms"]["p99"]:
            floor[f["rate"]] = f
    out = []
    for s in result.get("stack", {}).get("first_in_order", {}).get("steps", []):
        f = floor.get(s["rate"])
        if f is None or saturated(s):
            continue
        ours, bare = s["latency_ms"], f["latency_ms"]
        if not (ours["p50"] and ours["p99"] and bare["p50"] and bare["p99"]):
            continue
        out.append({
            "rate": s["rate"],
            "p50_ms": ours["p50"], "floor_p50_ms": bare["p50"], "p50_ratio": ours["p50"] / bare["p50"],
            "p99_ms": ours["p99"], "floor_p99_ms": bare["p99"], "p99_ratio": ours["p99"] / bare["p99"],
        })  # fmt: skip
    return out


def write_outputs(result: dict[str, Any]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "results.json").write_text(json.dumps(result, indent=2))
    (OUT_DIR / "results.md").write_text(markdown(result))
    if result.get("stack"):
        _plot(result)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _legs_p99(legs: dict[str, Any] | None) -> str:
    """'5.0 / 53 / 12': the p99 of each of loadgen.LEGS, or '-' for a step without them."""
    if not legs:
        return "-"
    return " / ".join(_ms(legs[leg]["p99"]) if leg in legs else "-" for leg in loadgen.LEGS)


def _ms2(v: float | None) -> str:
    """Sub-millisecond resolution for one-hop latencies."""
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def _probe_cells(probe: dict[str, Any]) -> str:
    """A probe's answered/sent and latency percentiles, as Markdown table cells."""
    lat = probe["latency_ms"]
    return (
        f"{probe['answered']}/{probe['sent']} | {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['p99.9'])}"
    )


def _failed_row(name: str, error: str, columns: int) -> str:
    """A table row for a part that failed: its name, the error's start, empty cells to the table's width."""
    return f"| {name} | failed: {error[:80]} |" + " |" * (columns - 2)


def _variant_table(
    title: str, columns: list[str], variants: dict[str, Any], rows: Callable[[str, Any], list[str]]
) -> list[str]:
    """A section with one table: the rows of each variant, or one row for a variant that failed."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, d in variants.items():
        if "error" in d:
            error = d["error"] if isinstance(d["error"], str) else " ".join(d["error"])
            lines.append(_failed_row(name, error, len(columns)))
        else:
            lines += rows(name, d)
    return [*lines, ""]


def floor_section(result: dict[str, Any]) -> list[str]:
    """The bare three Kafka hops, per rate and linger (none without a floor part)."""
    if not result.get("kafka_floor"):
        return []
    lines = [
        "## Bare Kafka: three hops (client -> echo -> echo -> client), same Python clients",
        "",
        "| rate (msg/s) | linger ms | received | p50 ms | p99 ms | p99.9 ms |",
        "|---|---|---|---|---|---|",
    ]
    for f in result["kafka_floor"]:
        lat = f["latency_ms"]
        lines.append(
            f"| {f['rate']:.0f} | {f['linger_ms']} | {f['received']}/{f['count']} | {_ms(lat['p50'])} | "
            f"{_ms(lat['p99'])} | {_ms(lat['p99.9'])} |"
        )
    return [*lines, ""]


def clients_section(result: dict[str, Any]) -> list[str]:
    """One Kafka hop per client (none without a clients part)."""
    cl = result.get("clients")
    if not cl:
        return []
    lines = [
        f"## One Kafka hop per client ({cl['count']} round trips after {cl['warmup']}, "
        f"{cl['record_bytes']}-byte records, one process each, one broker)",
        "",
        "| client | p50 ms | p99 ms | p99.9 ms | mean ms | CPU µs per round trip |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in cl["runs"].items():
        if "error" in r:
            lines.append(_failed_row(key, r["error"], 6))
            continue
        lat = r["latency_ms"]
        cpu = r.get("cpu_us_per_hop")
        lines.append(
            f"| {r['client']} | {_ms2(lat['p50'])} | {_ms2(lat['p99'])} | {_ms2(lat['p99.9'])} | "
            f"{_ms2(lat.get('mean'))} | {'-' if cpu is None else cpu} |"
        )
    return [
        *lines,
        "",
        "EndToEndLatency (Kafka's own tool) truncates each latency to whole milliseconds before its "
        "percentiles; its mean is exact. Its CPU is not measured (its JVM's start-up would dominate).",
        "",
    ]


def job_section(result: dict[str, Any]) -> list[str]:
    """The job alone: capacity on a backlog and latency at a fixed rate (none without a job part)."""
    c = result.get("job_capacity")
    if c and "error" in c:
        return ["## The job alone", "", f"Failed: {c['error']}", ""]
    if not c:
        return []
    return [
        "## The job alone",
        "",
        f"Capacity on a preloaded backlog of {c['capacity']['requests']} requests "
        f"(plus {c['capacity'].get('scores_per_request', 1)} scores each): "
        f"{c['capacity']['records_per_s']} records/s in ({c['capacity']['results_per_s']} results/s), "
        f"job CPU {c['capacity']['job_cpu_percent']} %. Latency at {c['probe']['rate']:.0f} requests/s "
        f"(request + score sent together): p50 {_ms(c['probe']['latency_ms']['p50'])} ms, "
        f"p99 {_ms(c['probe']['latency_ms']['p99'])} ms, job CPU {c['probe']['job_cpu_percent']} %.",
        "",
    ]


def _layout(run: Mapping[str, Any]) -> str:
    """How the ladder's models ran: a process each (the default), or together (``--runners one``)."""
    processes = run.get("runner_processes") or []
    return f", in one process ({processes[0]})" if len(processes) == 1 and "+" in processes[0] else ""


def stack_section(label: str, run: dict[str, Any]) -> list[str]:
    """One whole-stack ladder: a row per rate, the sustained rate, its warm-up and the idle stack."""
    lines = [
        f"## Whole stack, `{label}` ({run['policy']}); runners: gbt 2 ms, logreg 1 ms, tree 40-80 ms, base (canary)"
        + _layout(run),
        "",
        *(
            [f"The job with: `{'`, `'.join(run['job_overrides'])}` (`--stack-job-args`).", ""]
            if run.get("job_overrides")
            else []
        ),
        "| rate (req/s) | achieved | answered | p50 ms | p99 ms | p99.9 ms | over 100 ms | no_answer | "
        "p99 ms to the job / in the job / back | first answer ms | state KB | "
        "CPU % job / broker / runners / loadgen | CPU µs per request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in run["steps"]:
        lat, cpu = s["latency_ms"], s["cpu_percent"]
        runners_cpu = sum(v for k, v in cpu.items() if k.startswith("runner"))
        lines.append(
            f"| {s['rate']:.0f} | {s['achieved_rate'] or 0:.0f} | {s['answered']}/{s['sent']} | "
            f"{_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['p99.9'])} | {s['deadline_misses']} | "
            f"{s['by_reason'].get('no_answer', 0)} | {_legs_p99(s.get('legs_ms'))} | "
            f"{_ms(s.get('first_answer_ms'))} | {_kb(s['state_bytes'])} | "
            f"{cpu['job']} / {cpu['broker']} / {runners_cpu} / {cpu['loadgen']} | "
            f"{_us(cpu_us_per_request(s))} |"
        )
    best = sustained_rate(run["steps"])
    lines += [
        "",
        f"Sustained with p99 <= {BUDGET_MS} ms: {f'{best:.0f} requests/s' if best else 'none'}. "
        'Each step runs on a return address the job has answered once ("first answer": that one '
        "request's latency, which holds the job's first write to a new topic).",
        "",
        *lead_in_lines(run["steps"]),
    ]
    if run.get("warmup"):
        w = run["warmup"]
        jit = ", ".join(f"{k} {'?' if v is None else round(v)} %" for k, v in w["last_jit_percent"].items())
        lines += [
            f"Warm-up before the ladder: {w['seconds']:.0f} s at {w['rate']:.0f}/s, until the JIT compilers "
            f"were quiet (last round: {jit} of a core).",
            "",
        ]
    if run.get("idle"):
        cpu = run["idle"]["cpu_percent"]
        lines += [
            f"Idle ({run['idle']['seconds']:.0f} s with no traffic, after the warm-up), CPU % of a core: "
            + ", ".join(f"{k} {v}" for k, v in cpu.items())
            + ".",
            "",
        ]
    return lines


def lead_in_lines(steps: Sequence[dict[str, Any]]) -> list[str]:
    """What each step's lead-in saw: its first seconds at the rate, before the measured ones."""
    led = [s for s in steps if s.get("lead_in_latency_ms")]
    if not led:
        return []
    return [
        f"Each step's first {led[0]['lead_in_s']:.0f} s at its rate (the same run; their answers are in "
        '"answered", their latency not in the step\'s): p50 / p99 ms '
        + ", ".join(
            f"{_ms(s['lead_in_latency_ms']['p50'])} / {_ms(s['lead_in_latency_ms']['p99'])} at {s['rate']:.0f}/s"
            for s in led
        )
        + ".",
        "",
    ]


def floor_ratio_section(result: dict[str, Any]) -> list[str]:
    """The rendezvous' p50 and p99 over the bare floor's at the same rate (none without both parts)."""
    ratios = floor_ratios(result)
    if not ratios:
        return []
    return [
        f"## The rendezvous over the floor (three bare Kafka hops, linger {STACK_LINGER_MS} ms, same rate)",
        "",
        f"The floor of a rate is its run with the lowest p99 of the {FLOOR_RUNS_AT_STACK_LINGER} above.",
        "",
        "| rate (req/s) | p50 ms (floor) | p50 ratio | p99 ms (floor) | p99 ratio |",
        "|---|---|---|---|---|",
        *(
            f"| {r['rate']:.0f} | {_ms(r['p50_ms'])} ({_ms(r['floor_p50_ms'])}) | {r['p50_ratio']:.1f}x | "
            f"{_ms(r['p99_ms'])} ({_ms(r['floor_p99_ms'])}) | {r['p99_ratio']:.1f}x |"
            for r in ratios
        ),
        "",
    ]


def targets_section(result: dict[str, Any], commands: bool = False) -> list[str]:
    """The targets this run measured, with the figure and whether it was met (``commands``: and the
    command that measures each, a column of its own)."""
    if not result.get("targets"):
        return []
    return [
        "## Targets",
        "",
        "| target | measured | met |" + (" reproduce with |" if commands else ""),
        "|---|---|---|" + ("---|" if commands else ""),
        *(
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
            + (f" `{t.get('command', 'make bench')}` |" if commands else "")
            for t in result["targets"]
        ),
        "",
    ]


def delivery_section(result: dict[str, Any]) -> list[str]:
    if not result.get("delivery"):
        return []
    return _variant_table(
        "Results delivery: at-least-once vs exactly-once (the job alone, read_committed client)",
        ["results delivery", "rate (req/s)", "answered", "p50 ms", "p99 ms", "p99.9 ms"],
        result["delivery"],
        lambda name, d: [f"| {name} | {d['probe']['rate']:.0f} | {_probe_cells(d['probe'])} |"],
    )


def clock_section(result: dict[str, Any]) -> list[str]:
    if not result.get("clock"):
        return []
    return _variant_table(
        "The log clock's cost (the job alone; request and one score sent together)",
        ["clock", "case", "answered", "p50 ms", "p99 ms", "p99.9 ms", "job CPU %"],
        result["clock"],
        lambda clock, d: [
            f"| {clock} | {case} | {_probe_cells(pr)} | {pr['job_cpu_percent']} |"
            for case, pr in d["cases"].items()
        ],
    )


def addresses_section(result: dict[str, Any]) -> list[str]:
    ad = result.get("addresses")
    if not ad:
        return []
    lines = [
        f"## The first answer to a new return address ({ad['count']} addresses per run, "
        f"{ad['rounds']} alternating runs per variant, each warmed up at {WARMUP_RATE:.0f}/s)",
        "",
        "The job's Kafka sink looks up each new topic's partitions; the connector's own context makes "
        "and closes a producer for it on the task thread, the project's asks one long-lived producer. "
        "'next' is the next request to the same address: the steady state.",
        "",
        "| sink context | run | first answer ms: p50 / max | next answer ms: p50 / max |",
        "|---|---|---|---|",
    ]
    for variant, runs in ad["runs"].items():
        for i, run in enumerate(runs):
            first = [x for x in run["first_ms"] if x is not None]
            again = [x for x in run["again_ms"] if x is not None]
            cells = [
                f"{latency.percentile(sorted(xs), 50):.1f} / {max(xs):.1f}" if xs else "no answer"
                for xs in (first, again)
            ]
            lines.append(f"| {variant} | {i + 1} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def state_section(result: dict[str, Any]) -> list[str]:
    st = result.get("state")
    if not st:
        return []
    lines = [
        f"## Mailbox state under sustained load ({st['rate']:.0f} requests/s, tombstones kept "
        f"{st['retention_ms'] / 1000:.0f} s)",
        "",
        "| elapsed s | sent | answered | checkpoint KB | p99 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {x['elapsed_s']} | {x['sent']} | {x['answered']} | {_kb(x['state_bytes'])} | {_ms(x['p99_ms'])} |"
        for x in st["samples"]
    ]
    if "error" in st:
        lines.append(f"\nFailed: {st['error']}")
    return [*lines, ""]


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def models_section(result: dict[str, Any]) -> list[str]:
    """Many models, the job alone: a row per drain, then each extra model's cost (none without the part)."""
    m = result.get("models")
    if not m:
        return []
    lines = [
        f"## Many models: the job alone draining {m['requests']:,} requests with k scores each ({m['policy']})",
        "",
        "| scores per request | records/s in | results/s | job CPU µs per request | broker CPU µs per request |",
        "|---|---|---|---|---|",
    ]
    for d in m["drains"]:
        us = d.get("cpu_us_per_request") or {}
        lines.append(
            f"| {d['scores_per_request']} | {_us(d['records_per_s'])} | {_us(d['results_per_s'])} | "
            f"{_us(us.get('job'))} | {_us(us.get('broker'))} |"
        )
    cost = m.get("cost") or {}
    said = [
        f"{name} {c['per_model_us']:,.1f} µs per request per extra model ({c['base_us']:,} µs at none)"
        for name, c in cost.items()
    ]
    if said:
        lines += ["", "Least squares over the drains: " + "; ".join(said) + "."]
    if "error" in m:
        lines += ["", f"Failed: {m['error']}"]
    return [*lines, ""]


def models_stack_section(result: dict[str, Any]) -> list[str]:
    """Many models, the whole stack at fixed rates: fewest against most scores per request."""
    runs = result.get("models_stack")
    if not runs:
        return []
    lines = [
        "## Many models: the whole stack at fixed rates, "
        + " against ".join(f"{r['scores_per_request']} scores per request ({r['policy']})" for r in runs),
        "",
        "| scores per request | rate (req/s) | answered | p50 ms | p99 ms | CPU % job / broker / runners | "
        "job / broker CPU µs per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(_failed_row(str(r["scores_per_request"]), r["error"], 7))
        for s in r["steps"]:
            lat, cpu = s["latency_ms"], s["cpu_percent"]
            runners_cpu = sum(v for k, v in cpu.items() if k.startswith("runner"))
            lines.append(
                f"| {r['scores_per_request']} | {s['rate']:.0f} | {s['answered']}/{s['sent']} | "
                f"{_ms(lat['p50'])} | {_ms(lat['p99'])} | {cpu['job']} / {cpu['broker']} / {runners_cpu} | "
                f"{_us(step_us_per_request(s, 'job'))} / {_us(step_us_per_request(s, 'broker'))} |"
            )
    per_model = stack_per_model(runs)
    if per_model:
        lines += [
            "",
            "Each extra model's score, CPU µs per request (job / broker): "
            + ", ".join(
                f"{_us(x['job_us_per_model'])} / {_us(x['broker_us_per_model'])} at {x['rate']:.0f}/s"
                for x in per_model
            )
            + ".",
        ]
    return [*lines, ""]


def tuning_section(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if result.get("tuning"):
        lines += _variant_table(
            "Tuning: the job alone under each setting",
            ["setting", "p50 ms", "p99 ms", "job CPU % at probe rate", "capacity records/s", "state KB"],
            result["tuning"],
            lambda name, t: [
                f"| {name} | {_ms(t['probe']['latency_ms']['p50'])} | {_ms(t['probe']['latency_ms']['p99'])} | "
                f"{t['probe']['job_cpu_percent']} | {t['capacity']['records_per_s']} | {_kb(t['state_bytes'])} |"
            ],
        )
    if result.get("crossing"):
        lines += _variant_table(
            "Records crossing between Java and Python (harness/bench_crossing.py: parse, key_by, keyed map)",
            ["encoding", "µs per record", "wall s (small / large run)"],
            result["crossing"],
            lambda variant, c: [
                f"| {variant} | {c['us_per_record']} | {' / '.join(str(v) for v in c['seconds'].values())} |"
            ],
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """results.md (tuning.md): every part the run measured, a section each."""
    m = result["machine"]
    lines = [f"# Benchmark ({m['cpus']} CPUs, {m['platform']}, Python {m['python']}, {result['date']})", ""]
    lines += floor_section(result) + clients_section(result) + job_section(result)
    for label, run in result.get("stack", {}).items():
        lines += stack_section(label, run)
    lines += floor_ratio_section(result) + targets_section(result) + delivery_section(result)
    lines += clock_section(result) + addresses_section(result) + state_section(result)
    lines += models_section(result) + models_stack_section(result)
    lines += (bench_scale.section(result["scale"]) + [""] if "scale" in result else []) + tuning_section(
        result
    )
    return "\n".join(lines)


def _plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"first_in_order": ("tab:blue", "-"), "wait_for_all": ("tab:orange", "--")}
    for label, run in result["stack"].items():
        color, ls = styles.get(label, ("black", "-"))
        rates = [s["rate"] for s in run["steps"]]
        for q, marker in (("p50", "o"), ("p99", "s")):
            ax.plot(rates, [s["latency_ms"][q] for s in run["steps"]], marker=marker, ls=ls, color=color,
                    label=f"{label} {q}")  # fmt: skip
    floor = [f for f in result.get("kafka_floor", []) if f["linger_ms"] == 1]
    if floor:
        ax.plot([f["rate"] for f in floor], [f["latency_ms"]["p99"] for f in floor], "x:", color="grey",
                label="bare Kafka 3 hops p99")  # fmt: skip
    ax.axhline(BUDGET_MS, color="red", ls="--", lw=1, label=f"{BUDGET_MS} ms budget")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("rendezvous end-to-end latency vs load (2 cores)")
    fig.tight_layout()
    fig.savefig(OUT_DIR / "latency_vs_rate.png", dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    """`make bench`'s options (harness.publish reads their defaults to name a run's command)."""
    ap = argparse.ArgumentParser(prog="rendezvous bench", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rates", default=DEFAULT_RATES, help="ladder of offered loads (requests/s), comma-separated"
    )
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each rate step")
    ap.add_argument(
        "--lead-in", type=float, default=LEAD_IN_S,
        help="seconds each stack step runs at its rate before its --seconds (the same run; their latency is "
        "reported apart: the JVMs compile for a new rate); 0: none",
    )  # fmt: skip
    ap.add_argument(
        "--runners",
        choices=sorted(RUNNER_LAYOUTS),
        default=DEFAULT_RUNNER_LAYOUT,
        help="the stack ladders' four models: one runner process for all (default: one fetch of each request, "
        "one produce of its scores), or a process each",
    )
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of unrecorded load before measuring")
    ap.add_argument(
        "--warmup-max", type=float, default=180.0,
        help="the whole stack's warm-up goes on while the job's or broker's JIT is busy, at most this long",
    )  # fmt: skip
    ap.add_argument("--backlog", type=int, default=20000, help="requests preloaded for the capacity run")
    ap.add_argument(
        "--floor-rates",
        default="100,250,833",
        help="rates of the bare Kafka floor (the ladder's, to compare)",
    )
    ap.add_argument(
        "--client-hops", type=int, default=CLIENT_HOPS, help="round trips per client in the clients part"
    )
    ap.add_argument(
        "--only",
        default=DEFAULT_PARTS,
        help="parts to run, comma-separated, of: clients, floor, job, first_in_order (with the idle "
        "stack's CPU), idle (that alone), wait_for_all, delivery, clock, addresses (the first answer to "
        "new return addresses, the project's Kafka sink context against the connector's), models (the job "
        "alone draining requests with --models-counts scores each: the cost per extra model), scale (the "
        "job alone at parallelism 1 and 2 on a session cluster of two TaskManagers), state and "
        "models_stack (not by default: --state-minutes; the whole stack with 4 and 20 models at "
        "--models-rates)",
    )
    ap.add_argument(
        "--models-counts", default=MODEL_COUNTS, help="the models part: scores per request of its drains"
    )
    ap.add_argument(
        "--models-backlog", type=int, default=10000, help="the models part: requests preloaded per drain"
    )
    ap.add_argument(
        "--models-rounds",
        type=int,
        default=2,
        help="the models part: passes over --models-counts, up then down (the JIT warms in the first)",
    )
    ap.add_argument(
        "--models-rates", default=MANY_MODELS_RATES, help="the models_stack part's fixed rates (requests/s)"
    )
    ap.add_argument(
        "--scale-backlog",
        type=int,
        default=20000,
        help="the scale part: requests preloaded per drain (a quarter as many again to warm up first)",
    )
    ap.add_argument(
        "--addresses", type=int, default=8, help="new return addresses per run of the addresses part"
    )
    ap.add_argument(
        "--address-rounds", type=int, default=2, help="alternating runs of the addresses part per variant"
    )
    ap.add_argument("--clock-rate", type=float, default=25.0, help="requests/s of the clock part")
    ap.add_argument(
        "--clocks",
        default=",".join(names.CLOCKS),
        help="the clock part's variants, in the order they run (each on a fresh job, one broker)",
    )
    ap.add_argument("--state-rate", type=float, default=50.0, help="requests/s of the state part")
    ap.add_argument("--state-minutes", type=float, default=6.0, help="how long the state part runs")
    ap.add_argument(
        "--state-retention-ms", type=int, default=120_000, help="the state part's dedupe_retention_ms"
    )
    ap.add_argument("--delivery-rate", type=float, default=25.0, help="requests/s of the delivery part")
    ap.add_argument("--wait-for-all-rates", default="25,50,100,250", help="ladder for the wait-for-all run")
    ap.add_argument(
        "--tuning", action="store_true", help="run the tuning sweep instead (about 2 min per setting)"
    )
    ap.add_argument("--probe-rate", type=float, default=300.0, help="job-alone latency probe rate (--tuning)")
    ap.add_argument(
        "--variants",
        default="",
        help="--tuning: only the settings whose name contains one of these (comma-separated)",
    )
    ap.add_argument("--no-crossing", action="store_true", help="--tuning: skip the Java/Python crossing runs")
    ap.add_argument(
        "--stack-job-args",
        default="",
        help="the stack ladders' job with these settings, comma-separated, each a Flink key=value or a "
        "job --flag=value (e.g. execution.buffer-timeout.interval=0ms); results.md names them",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.lead_in < 0:
        ap.error(f"--lead-in: seconds, 0 or more, got {a.lead_in}")

    def floats(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x.strip()]

    parts = {p.strip() for p in a.only.split(",") if p.strip()}
    runners = RUNNER_LAYOUTS[a.runners]
    result: dict[str, Any] = runinfo.run_info() | {
        "runners": [asdict(s) for s in runners],
        "budget_ms": BUDGET_MS,
        "args": vars(a) | {"only": sorted(parts)},
    }
    out_json = OUT_DIR / ("tuning.json" if a.tuning else "results.json")
    if a.tuning:
        result["tuning"] = {}
        wanted = [w.strip() for w in a.variants.split(",") if w.strip()]
        for name, overrides in TUNING_VARIANTS:
            if wanted and not any(w in name for w in wanted):
                continue
            say(f"tuning: {name} ...")
            r = job_alone(
                f"tune{len(result['tuning'])}", overrides, a.probe_rate, a.seconds, a.backlog, a.warmup
            )
            result["tuning"][name] = r
            say(f"tuning: {name}: {json.dumps({k: v for k, v in r.items() if k != 'overrides'})[:300]}")

        result["crossing"] = {}
        for variant in () if a.no_crossing else bench_crossing.VARIANTS:
            say(f"tuning: Java/Python crossing, {variant} ...")
            result["crossing"][variant] = bench_crossing.measure(variant)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2))
        (OUT_DIR / "tuning.md").write_text(markdown(result))
        print((OUT_DIR / "tuning.md").read_text())
        return 0
    if "clients" in parts:
        result["clients"] = clients_floor(a.client_hops)
    if "floor" in parts:
        result["kafka_floor"] = kafka_floor(floats(a.floor_rates), a.seconds)
    if "job" in parts:
        say(f"the job alone: probe at {a.probe_rate:.0f}/s, then a backlog of {a.backlog} ...")
        result["job_capacity"] = job_alone("capacity", (), a.probe_rate, a.seconds, a.backlog, a.warmup)
    result["stack"] = {}
    stack_overrides = [o.strip() for o in a.stack_job_args.split(",") if o.strip()]
    if "first_in_order" in parts:
        result["stack"]["first_in_order"] = stack_ladder(
            BENCH_POLICY, floats(a.rates), a.seconds, a.warmup, "first_in_order", IDLE_S, a.warmup_max,
            stack_overrides, runners, lead_in_s=a.lead_in,
        )  # fmt: skip
    elif "idle" in parts:
        result["stack"]["first_in_order"] = stack_ladder(
            BENCH_POLICY, [], a.seconds, a.warmup, "first_in_order", IDLE_S, a.warmup_max, stack_overrides,
            runners,
        )  # fmt: skip
    if "wait_for_all" in parts:
        result["stack"]["wait_for_all"] = stack_ladder(
            WAIT_FOR_ALL_POLICY, floats(a.wait_for_all_rates), a.seconds, a.warmup, "wait_for_all",
            warmup_max_s=a.warmup_max, job_overrides=stack_overrides, runners=runners, lead_in_s=a.lead_in,
        )  # fmt: skip
    if "delivery" in parts:
        result["delivery"] = delivery_cost(a.delivery_rate, max(a.seconds, 30.0), a.warmup / 2)
    if "clock" in parts:
        clocks = [c.strip() for c in a.clocks.split(",") if c.strip()]
        if not clocks or set(clocks) - set(names.CLOCKS):
            ap.error(f"--clocks: a comma-separated list of {', '.join(names.CLOCKS)}, got {a.clocks!r}")
        result["clock"] = clock_cost(a.clock_rate, max(a.seconds, 30.0), a.warmup / 2, clocks)
    if "addresses" in parts:
        result["addresses"] = new_addresses(a.addresses, a.address_rounds, a.warmup)
    if "state" in parts:
        result["state"] = state_over_time(a.state_rate, a.state_minutes, a.state_retention_ms)
    if "models" in parts:
        try:
            counts = [int(x) for x in a.models_counts.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--models-counts: comma-separated integers, got {a.models_counts!r}")
        if a.models_rounds < 1:
            ap.error(f"--models-rounds: at least 1, got {a.models_rounds}")
        try:
            result["models"] = models_alone(counts, a.models_backlog, a.probe_rate, a.warmup, a.models_rounds)
        except ValueError as e:
            ap.error(str(e))
    if "scale" in parts:
        result["scale"] = bench_scale.scaling((1, 2), a.scale_backlog, a.scale_backlog // 4, OUT_DIR / "work")
    if "models_stack" in parts:
        result["models_stack"] = models_stack(floats(a.models_rates), a.seconds, a.warmup, a.warmup_max)
    if result["stack"]:  # the targets are about the whole stack; without it they would all read "no"
        result["targets"] = targets(result)
    write_outputs(result)
    print((OUT_DIR / "results.md").read_text())
    plot = ", latency_vs_rate.png" if result["stack"] else ""
    say(f"wrote {OUT_DIR.relative_to(REPO_ROOT)}/results.json, results.md{plot}")
    return 0


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

"""`make bench`: measure the stack on this machine and write JSON, Markdown and a PNG plot.

Three measurements, each on its own fresh broker so they do not disturb each other:

1. ``kafka_round_trip``: the physical floor. A request goes client -> topic -> echo process ->
   topic -> client (two Kafka hops, the same clients as the stack), at a fixed rate.
2. ``job_capacity``: the rendezvous job alone on a preloaded backlog (one request and one score
   per id), records per second once results start flowing.
3. ``stack``: broker, runners (3 models + canary), job and open-loop load at each rate in turn:
   end-to-end latency (request produced -> result consumed), misses of the policy deadline,
   wins by reason, and CPU per process.

Numbers are reported, never asserted: benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ops import kafka_admin, latency, loadgen, procs, stack
from ops.broker import KafkaBroker
from udfs import names

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "var" / "bench"
MODELS_DIR = REPO_ROOT / "var" / "models"
BENCH_POLICY = REPO_ROOT / "policies" / "default.yaml"
RUNNERS = (
    stack.RunnerSpec("gbt", latency_ms=2, seed=1),
    stack.RunnerSpec("logreg", latency_ms=1, seed=2),
    stack.RunnerSpec("tree", seed=3),
    stack.RunnerSpec("base", seed=4),
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its direct children (the job's JVM is a child)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _fresh_broker(name: str) -> KafkaBroker:
    data = OUT_DIR / "work" / name
    shutil.rmtree(data, ignore_errors=True)
    broker = KafkaBroker.start(data / "broker", port=procs.free_port(), controller_port=procs.free_port())
    kafka_admin.ensure_default_topics(broker.bootstrap)
    return broker


def kafka_round_trip(rate: float, count: int) -> dict[str, Any]:
    """Two Kafka hops through an echo thread: the floor under any Kafka-based rendezvous."""
    from kafka import KafkaConsumer, KafkaProducer

    broker = _fresh_broker("round-trip")
    try:
        kafka_admin.create_topics(broker.bootstrap, ["rt-in", "rt-out"])
        echo_in = KafkaConsumer(
            "rt-in", bootstrap_servers=broker.bootstrap, group_id="echo", auto_offset_reset="earliest"
        )
        echo_out = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        client_in = KafkaConsumer(
            "rt-out", bootstrap_servers=broker.bootstrap, group_id="client", auto_offset_reset="earliest"
        )
        client_out = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        for c in (echo_in, client_in):
            while not c.assignment():
                c.poll(200)
        stop = threading.Event()

        def echo() -> None:
            while not stop.is_set():
                for batch in echo_in.poll(timeout_ms=50).values():
                    for m in batch:
                        echo_out.send("rt-out", m.value)

        received: list[float] = []

        def collect() -> None:
            while not stop.is_set() and len(received) < count:
                for batch in client_in.poll(timeout_ms=50).values():
                    now = time.time() * 1000
                    received.extend(now - float(m.value) for m in batch)

        threads = [threading.Thread(target=echo, daemon=True), threading.Thread(target=collect, daemon=True)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        for i in range(count):
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            client_out.send("rt-in", repr(time.time() * 1000).encode())
        client_out.flush()
        end = time.monotonic() + 10
        while len(received) < count and time.monotonic() < end:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(5)
        return {
            "rate": rate,
            "count": count,
            "received": len(received),
            "latency_ms": latency.summarize(received).to_dict(),
        }
    finally:
        broker.stop()


def job_capacity(requests: int) -> dict[str, Any]:
    """The job alone draining a preloaded backlog of requests, each with one incumbent score."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    broker = _fresh_broker("capacity")
    processes = stack.Processes()
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=256 * 1024)
        now = int(time.time() * 1000)
        for i in range(requests):
            rid = f"c{i}"
            req = {
                "request_id": rid,
                "return_address": names.TOPIC_RESULTS_DEFAULT,
                "sent_at_ms": now,
                "features": {"amount": 1.0},
            }
            score = {
                "request_id": rid, "model_id": "gbt", "model_version": "bench", "status": "ok",
                "output": {"label": 1, "probability": 0.7}, "scored_at_ms": now, "latency_ms": 1.0,
            }  # fmt: skip
            producer.send(names.TOPIC_REQUESTS, key=rid.encode(), value=json.dumps(req).encode())
            producer.send(names.TOPIC_SCORES, key=rid.encode(), value=json.dumps(score).encode())
        producer.flush()
        producer.close()
        work = OUT_DIR / "work" / "capacity"
        t0 = time.monotonic()
        job = stack.start_job(
            BENCH_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log", processes
        )
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        tp = TopicPartition(names.TOPIC_RESULTS_DEFAULT, 0)
        first: tuple[float, int] | None = None
        done = 0
        while time.monotonic() - t0 < 600:
            if not job.is_running():
                raise RuntimeError(f"job exited:\n{job.log_tail(30)}")
            done = consumer.end_offsets([tp])[tp]
            if done and first is None:
                first = (time.monotonic(), done)
            if done >= requests:
                break
            time.sleep(0.5)
        consumer.close()
        t1 = time.monotonic()
        if first is None or t1 <= first[0]:
            return {"requests": requests, "results": done, "records_per_s": None}
        per_s = (done - first[1]) / (t1 - first[0])
        return {
            "requests": requests,
            "results": done,
            "first_result_after_s": round(first[0] - t0, 1),
            "results_per_s": round(per_s),
            "records_per_s": round(2 * per_s),
        }
    finally:
        processes.stop_all()
        broker.stop()


def stack_at_rates(rates: list[float], seconds: float) -> list[dict[str, Any]]:
    """The whole stack, open loop, one rate after another on the same running processes."""
    from runners.train import ensure_trained

    broker = _fresh_broker("stack")
    processes = stack.Processes()
    work = OUT_DIR / "work" / "stack"
    try:
        ensure_trained(MODELS_DIR)
        runners = stack.start_runners(RUNNERS, MODELS_DIR, broker.bootstrap, work / "logs", processes)
        job = stack.start_job(
            BENCH_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log", processes
        )
        stack.wait_until_answering(broker.bootstrap, job)
        watched = {"job": job.pid, "broker": broker.pid} | {
            f"runner-{s.model_id}": p.pid for s, p in zip(RUNNERS, runners, strict=True)
        }
        from udfs.policy import load_policy

        deadline = load_policy(BENCH_POLICY).deadline_ms
        out = []
        for rate in rates:
            count = int(rate * seconds)
            say(f"stack at {rate:.0f} requests/s for {seconds:.0f} s ...")
            cpu0 = {k: _cpu_seconds(v) for k, v in watched.items()}
            t0 = time.monotonic()
            report = loadgen.run_load(
                broker.bootstrap, count=count, rate=rate, deadline_ms=deadline, settle_ms=3000
            )
            dt = time.monotonic() - t0
            cpu = {k: round(100 * (_cpu_seconds(v) - cpu0[k]) / dt) for k, v in watched.items()}
            out.append(
                {
                    "rate": rate,
                    "achieved_rate": report.achieved_rate,
                    "sent": report.sent,
                    "answered": report.answered,
                    "conflicting": report.conflicting,
                    "latency_ms": report.latency_ms.to_dict(),
                    "deadline_ms": deadline,
                    "deadline_misses": report.deadline_misses,
                    "by_reason": report.by_reason,
                    "cpu_percent": cpu,
                }
            )
        return out
    finally:
        processes.stop_all()
        broker.stop()


def write_outputs(result: dict[str, Any]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "results.json").write_text(json.dumps(result, indent=2))
    rt = result["kafka_round_trip"]["latency_ms"]
    lines = [
        f"# Benchmark ({result['machine']['cpus']} CPUs, {result['machine']['platform']}, {result['date']})",
        "",
        f"Kafka round trip (2 hops, {result['kafka_round_trip']['rate']:.0f}/s): p50 {rt['p50']:.1f} ms, "
        f"p99 {rt['p99']:.1f} ms",
        f"Job capacity on a preloaded backlog: {result['job_capacity'].get('records_per_s')} records/s",
        "",
        "| rate (req/s) | achieved | answered | p50 ms | p99 ms | p99.9 ms | deadline misses | no_answer | CPU % (job / broker / runners) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["stack"]:
        lat = s["latency_ms"]
        runners_cpu = sum(v for k, v in s["cpu_percent"].items() if k.startswith("runner"))
        lines.append(
            f"| {s['rate']:.0f} | {s['achieved_rate'] or 0:.0f} | {s['answered']}/{s['sent']} | {lat['p50']:.0f} | "
            f"{lat['p99']:.0f} | {lat['p99.9']:.0f} | {s['deadline_misses']} | {s['by_reason'].get('no_answer', 0)} | "
            f"{s['cpu_percent']['job']} / {s['cpu_percent']['broker']} / {runners_cpu} |"
        )
    (OUT_DIR / "results.md").write_text("\n".join(lines) + "\n")
    _plot(result)


def _plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s["rate"] for s in result["stack"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for q, style in (("p50", "o-"), ("p99", "s-"), ("p99.9", "^-")):
        ax.plot(rates, [s["latency_ms"][q] for s in result["stack"]], style, label=f"rendezvous {q}")
    ax.axhline(
        result["kafka_round_trip"]["latency_ms"]["p99"], color="grey", ls=":", label="bare Kafka 2 hops p99"
    )
    ax.axhline(result["stack"][0]["deadline_ms"], color="red", ls="--", label="policy deadline")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("rendezvous end-to-end latency vs load")
    fig.tight_layout()
    fig.savefig(OUT_DIR / "latency_vs_rate.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous bench", description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="25,50,100,200", help="comma-separated offered loads (requests/s)")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each rate step")
    ap.add_argument("--backlog", type=int, default=10000, help="requests preloaded for the capacity run")
    a = ap.parse_args(argv)
    rates = [float(x) for x in a.rates.split(",") if x]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "policy": str(BENCH_POLICY.relative_to(REPO_ROOT)),
        "runners": [asdict(s) for s in RUNNERS],
    }
    say("bare Kafka round trip ...")
    result["kafka_round_trip"] = kafka_round_trip(rate=100, count=1000)
    say(f"job capacity on a backlog of {a.backlog} requests ...")
    result["job_capacity"] = job_capacity(a.backlog)
    result["stack"] = stack_at_rates(rates, a.seconds)
    write_outputs(result)
    print((OUT_DIR / "results.md").read_text())
    say(f"wrote {OUT_DIR.relative_to(REPO_ROOT)}/results.json, results.md, latency_vs_rate.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

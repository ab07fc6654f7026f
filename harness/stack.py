"""Start and stop the moving parts (the broker, model runners, the labeller, the rendezvous job) as
processes we own.

The one start sequence of the demo, the benchmarks, the profile, the fault suite, the degrading-model
scenario and the end-to-end tests: every process runs in its own session with a log file and is
stopped by its PID, never by name.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from harness import loadgen
from ops import kafka_admin, kafka_client, procs
from ops.broker import KafkaBroker, create_default_topics
from udfs import names
from udfs.wire_in import Score
from udfs.wire_out import score_to_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_READY_TIMEOUT_S = 180.0
# How often the readiness probe sends a request. A job that starts at the end of its topics misses what
# was sent before its source was assigned: the probe's wait after that is up to one interval.
PROBE_EVERY_S = 0.5


def start_broker(
    data_dir: Path,
    topics: Iterable[str] | None = None,
    secure: bool = False,
    partitions: int = 1,
    tls: bool = False,
) -> KafkaBroker:
    """A single-node Kafka broker (KRaft) on ``data_dir``, on free ports, once it answers, with ``topics``
    created (None: every default topic, ``udfs.names.ALL_TOPICS``, and on a ``secure`` broker the
    policies and labels topics too). The caller stops it (``stop()``). ``secure``: SASL/SCRAM and ACLs,
    one client properties file per role (``broker.client_config(role)``, ops/kafka_security.py).
    ``partitions``: of each topic created here (a job of parallelism N needs at least N). ``tls`` (with
    ``secure``): the clients' listener over TLS (SASL_SSL); the role files trust the broker's own CA."""
    broker = KafkaBroker.start(
        data_dir, port=procs.free_port(), controller_port=procs.free_port(), secure=secure, tls=tls
    )
    try:
        if topics is None:
            create_default_topics(broker, partitions)
        elif wanted := list(topics):
            with broker.as_admin():
                kafka_admin.create_topics(broker.bootstrap, wanted, partitions=partitions)
    except BaseException:
        broker.stop()
        raise
    return broker


@dataclass(frozen=True)
class RunnerSpec:
    """One model runner process and the faults it should inject."""

    model_id: str
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    degrade_after: int | None = None  # after this many requests the model answers with noise
    hang_after: int | None = None  # after this many requests the model answers nothing at all
    # Serve these ids instead of model_id's own (runners/runner.py --model-ids): one process, many models.
    model_ids: tuple[str, ...] = ()
    # More models served by the same process, each with its own faults (runners/runner.py --also).
    also: tuple[RunnerSpec, ...] = ()
    # A static member of its group (runners/runner.py --instance-id): restarted, it is back at once.
    instance_id: str | None = None

    @property
    def name(self) -> str:
        """The process's name (its log, its CPU column): the model, or the first id it serves, or every
        model it serves."""
        if self.also:
            return "+".join([self.model_id, *(a.model_id for a in self.also)])
        return f"{self.model_id}-as-{self.model_ids[0]}" if self.model_ids else self.model_id

    def also_arg(self, models_dir: Path) -> str:
        """This spec as one ``--also`` value: its model directory and its faults."""
        faults = {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "fail_rate": self.fail_rate,
                  "drop_rate": self.drop_rate, "seed": self.seed, "degrade_after": self.degrade_after,
                  "hang_after": self.hang_after}  # fmt: skip
        return ",".join(
            [str(models_dir / self.model_id), *(f"{k}={v}" for k, v in faults.items() if v is not None)]
        )

    def argv(self, models_dir: Path, bootstrap: str, requests_topic: str, scores_topic: str) -> list[str]:
        degrade = [] if self.degrade_after is None else ["--degrade-after", str(self.degrade_after)]
        hang = [] if self.hang_after is None else ["--hang-after", str(self.hang_after)]
        serves = ["--model-ids", ",".join(self.model_ids)] if self.model_ids else []
        also = [x for a in self.also for x in ("--also", a.also_arg(models_dir))]
        static = [] if self.instance_id is None else ["--instance-id", self.instance_id]
        return [
            sys.executable, "-m", "runners.runner",
            "--model-dir", str(models_dir / self.model_id),
            "--bootstrap", bootstrap,
            "--requests-topic", requests_topic,
            "--scores-topic", scores_topic,
            "--latency-ms", str(self.latency_ms),
            "--jitter-ms", str(self.jitter_ms),
            "--fail-rate", str(self.fail_rate),
            "--drop-rate", str(self.drop_rate),
            "--seed", str(self.seed),
            *degrade,
            *hang,
            *serves,
            *also,
            *static,
        ]  # fmt: skip


@dataclass
class Processes:
    """Everything started for one run, stopped in reverse order."""

    started: list[procs.ManagedProcess] = field(default_factory=list)

    def add(self, p: procs.ManagedProcess) -> procs.ManagedProcess:
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.started):
            p.stop(grace_s=15.0)
        self.started.clear()


def one_process(specs: Sequence[RunnerSpec]) -> tuple[RunnerSpec]:
    """The same models served by one runner process (``runner --also``): one fetch of each request,
    one produce of its scores; each keeps its own latency and faults, and they live and die together."""
    return (replace(specs[0], also=tuple(specs[1:])),)


def start_runners(
    specs: Iterable[RunnerSpec],
    models_dir: Path,
    bootstrap: str,
    log_dir: Path,
    processes: Processes,
    requests_topic: str = names.TOPIC_REQUESTS,
    scores_topic: str = names.TOPIC_SCORES,
    timeout_s: float = 120.0,
    kafka_config: Path | None = None,
) -> list[procs.ManagedProcess]:
    """Start one runner per spec and wait until each has its partitions assigned. ``kafka_config``: the
    runners' client properties (a secured broker's ``runner`` role)."""
    started = []
    for spec in specs:
        argv = spec.argv(models_dir, bootstrap, requests_topic, scores_topic) + config_args(kafka_config)
        p = processes.add(
            procs.ManagedProcess.start(argv, log_dir / f"runner-{spec.name}.log", cwd=REPO_ROOT)
        )
        started.append((spec, p))
    for spec, p in started:
        marker = f"runner {spec.model_id} ready"
        procs.wait_for(
            functools.partial(_ready_or_dead, p, marker),
            timeout_s,
            f"model runner {spec.model_id} to start (log: {p.log_path})",
        )
    return [p for _, p in started]


def start_labeller(
    bootstrap: str,
    log_path: Path,
    processes: Processes,
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
    kafka_config: Path | None = None,
) -> procs.ManagedProcess:
    """The labeller (runners/labeller.py: each request's true label, later), once it has its partitions."""
    argv = ["-m", "runners.labeller", "--bootstrap", bootstrap]
    return _start_service("the labeller", "labeller ready", argv, log_path, processes, extra_args, timeout_s,
                          kafka_config)  # fmt: skip


def start_autopilot(
    bootstrap: str,
    policy: Path,
    log_path: Path,
    processes: Processes,
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
    kafka_config: Path | None = None,
) -> procs.ManagedProcess:
    """The autopilot (``rendezvous eval autopilot``: the gate's next policy published live), once its
    reader is assigned; ``policy``: the file the job was started with."""
    argv = ["-m", "evaluation", "autopilot", "--bootstrap", bootstrap, "--policy", str(policy)]
    return _start_service("the autopilot", "autopilot ready", argv, log_path, processes, extra_args, timeout_s,
                          kafka_config)  # fmt: skip


def _start_service(
    what: str,
    ready_marker: str,
    argv: Sequence[str],
    log_path: Path,
    processes: Processes,
    extra_args: Sequence[str],
    timeout_s: float,
    kafka_config: Path | None,
) -> procs.ManagedProcess:
    """``python <argv> [--kafka-config F] <extra_args>``, once its log says ``ready_marker``."""
    full = [sys.executable, *argv, *config_args(kafka_config), *extra_args]
    p = processes.add(procs.ManagedProcess.start(full, log_path, cwd=REPO_ROOT))
    procs.wait_for(
        functools.partial(_ready_or_dead, p, ready_marker), timeout_s, f"{what} to start (log: {log_path})"
    )
    return p


CHECKPOINT_INTERVAL_KEY = "execution.checkpointing.interval"


def checkpoint_every(interval: str) -> list[str]:
    """The job flags that set its checkpoint interval (a Flink duration, "2s") over flink-conf/'s:
    exactly-once output and the archive show at checkpoints, and a test waits for them."""
    return ["-D", f"{CHECKPOINT_INTERVAL_KEY}={interval}"]


def config_args(kafka_config: Path | None) -> list[str]:
    """``--kafka-config FILE`` for a process's argv (the file's path, never what is in it)."""
    return [] if kafka_config is None else ["--kafka-config", str(kafka_config)]


def _ready_or_dead(p: procs.ManagedProcess, marker: str) -> bool:
    if not p.is_running():
        raise RuntimeError(f"process exited early; last log lines:\n{p.log_tail(30)}")
    return p.log_path.exists() and marker in p.log_path.read_text(errors="replace")


def start_job(
    policy: Path,
    bootstrap: str,
    archive_dir: Path,
    state_dir: Path,
    log_path: Path,
    processes: Processes,
    extra_args: Sequence[str] = (),
    kafka_config: Path | None = None,
) -> procs.ManagedProcess:
    """The rendezvous job on the embedded mini cluster, as a process of its own (``kafka_config``: a
    secured broker's ``job`` role)."""
    argv = [
        sys.executable, "-m", "jobs.rendezvous_job",
        "--policy", str(policy),
        "--bootstrap", bootstrap,
        "--archive-dir", str(archive_dir),
        "--state-dir", str(state_dir),
        # The mini cluster's REST endpoint on any free port: several local jobs may run side by side.
        "-D", "rest.port=0",
        *config_args(kafka_config),
        *extra_args,
    ]  # fmt: skip
    return processes.add(procs.ManagedProcess.start(argv, log_path, cwd=REPO_ROOT))


class Job(Protocol):
    """What the readiness probe needs of a job: a local job process or a job on a session cluster."""

    def is_running(self) -> bool: ...

    def log_tail(self, lines: int = ...) -> str: ...


def wait_until_answering(
    bootstrap: str,
    job: Job,
    requests_topic: str = names.TOPIC_REQUESTS,
    timeout_s: float = JOB_READY_TIMEOUT_S,
    answered_by: Sequence[str] = (),
    scores_topic: str = names.TOPIC_SCORES,
) -> tuple[float, int]:
    """Send probe requests until one is answered: the job is then reading, deciding and writing.

    Returns (seconds waited, probes sent). Probes are ordinary requests with ids ``probe-…``. Without
    a model to answer them a probe is answered at its deadline (40 s in a test's policy took 57 s to
    be ready): ``answered_by``, model ids whose scores are sent beside each probe, so the first of the
    policy answers it at once.
    """
    return_address = f"{kafka_client.results_prefix()}probe-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics(bootstrap, [return_address])
    # read_committed: with exactly-once results only committed answers count (ones from an aborted
    # transaction would otherwise make a job that then failed look ready).
    consumer = kafka_client.consumer(
        bootstrap, client_id="rendezvous-probe", isolation=kafka_client.READ_COMMITTED
    )
    producer = kafka_client.producer(bootstrap, client_id="rendezvous-probe", linger_ms=0)
    # Assigned, not subscribed: the topic is new and has one partition; no group to join.
    consumer.assign_all([return_address])
    start = time.monotonic()
    sent = 0
    next_probe = start
    try:
        while time.monotonic() - start < timeout_s:
            if not job.is_running():
                raise RuntimeError(f"the rendezvous job exited; last log lines:\n{job.log_tail(40)}")
            if time.monotonic() >= next_probe:
                rid = f"probe-{uuid.uuid4().hex[:12]}"
                req = {
                    "request_id": rid,
                    "return_address": return_address,
                    "sent_at_ms": int(time.time() * 1000),
                    "features": {},
                }
                producer.send(requests_topic, json.dumps(req).encode(), rid.encode())
                for model_id in answered_by:
                    score = Score(
                        rid, model_id, "probe", "ok", {"label": 0}, None, int(time.time() * 1000), 0.0
                    )
                    producer.send(scores_topic, json.dumps(score_to_dict(score)).encode(), rid.encode())
                producer.flush(10)
                sent += 1
                next_probe = time.monotonic() + PROBE_EVERY_S
            if consumer.take(1, 0.5):
                return time.monotonic() - start, sent
        raise TimeoutError(
            f"the rendezvous job did not answer a probe within {timeout_s:.0f} s; last log lines:\n"
            f"{job.log_tail(40)}"
        )
    finally:
        consumer.close()
        producer.finish(timeout_s=5)


# A warm-up goes on in rounds until the JIT compilers of the stack's JVMs (the job's, the broker's) use
# less than this share of a core over a round, or its maximum time is reached.
JIT_QUIET_PERCENT = 10.0
WARMUP_ROUND_S = 15.0


@dataclass(frozen=True)
class WarmupRound:
    """One round of warm-up traffic: when it ended, what it saw, and each JVM's JIT CPU over it."""

    elapsed_s: float
    sent: int
    answered: int
    late: int
    p50_ms: float | None
    p99_ms: float | None
    jit_percent: dict[str, float | None]  # % of a core; None: no JVM found (or no /proc)

    @property
    def quiet(self) -> bool:
        """Every JVM's JIT below the threshold; with no JVM measurable at all (no /proc: not Linux),
        nothing to wait for beyond the minimum. One JVM found and another not: not known to be quiet."""
        values = list(self.jit_percent.values())
        if all(v is None for v in values):
            return True
        return all(v is not None and v < JIT_QUIET_PERCENT for v in values)

    def line(self) -> str:
        jit = ", ".join(f"{k} {'?' if v is None else f'{v:.0f}'} %" for k, v in self.jit_percent.items())
        p50 = "-" if self.p50_ms is None else f"{self.p50_ms:.1f}"
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f}"
        return (
            f"warm-up {self.elapsed_s:.0f} s: {self.answered}/{self.sent} answered, p50 {p50} ms, "
            f"p99 {p99} ms, {self.late} late; JIT: {jit} of a core"
        )


def warm_up(
    bootstrap: str,
    rate: float,
    min_s: float,
    max_s: float,
    jvms: Mapping[str, int],
    say: Callable[[str], None],
    deadline_ms: int | None = None,
    budget_ms: float | None = None,
) -> list[WarmupRound]:
    """Unmeasured traffic before a measured run: a fresh JVM spends its first minute or two of load
    compiling the hot path (on this 2-core machine the JIT takes half a core in the job's JVM, a
    quarter in the broker's), so a deployment warms up before it serves. Rounds of ``WARMUP_ROUND_S``
    for at least ``min_s``, then until every JVM's JIT is below ``JIT_QUIET_PERCENT``, at most ``max_s``.
    Late: answers after the requests' ``deadline_ms`` (sent with them), else after ``budget_ms``.
    """
    say(
        f"warming up at {rate:.0f}/s (not measured): at least {min_s:.0f} s, then until the JIT compilers "
        f"of the {' and '.join(jvms)} use < {JIT_QUIET_PERCENT:.0f} % of a core, at most {max_s:.0f} s ..."
    )
    rounds: list[WarmupRound] = []
    t0 = time.monotonic()
    while True:
        seconds = min(WARMUP_ROUND_S, max(max_s - (time.monotonic() - t0), 1.0))
        before = {name: procs.jit_cpu_seconds(pid) for name, pid in jvms.items()}
        started = time.monotonic()
        report = loadgen.run_load(
            bootstrap,
            count=max(1, int(rate * seconds)),
            rate=rate,
            deadline_ms=deadline_ms,
            settle_ms=1000,
            validate_results=False,
            budget_ms=budget_ms,
        )
        took = time.monotonic() - started
        jit: dict[str, float | None] = {}
        for name, pid in jvms.items():
            now_s, was_s = procs.jit_cpu_seconds(pid), before[name]
            jit[name] = None if now_s is None or was_s is None else 100 * (now_s - was_s) / took
        late = report.deadline_misses if deadline_ms is not None else (report.over_budget or 0)
        r = WarmupRound(
            round(time.monotonic() - t0, 1),
            report.sent,
            report.answered,
            late,
            report.latency_ms.p50,
            report.latency_ms.p99,
            jit,
        )
        rounds.append(r)
        say(r.line())
        if r.elapsed_s >= max_s or (r.elapsed_s >= min_s and r.quiet):
            return rounds


# How long a warm-up's backlog may take to drain before the measured run starts anyway.
WARMUP_DRAIN_TIMEOUT_S = 60.0


def drain_after_warm_up(
    rounds: Sequence[WarmupRound],
    wait_answering: Callable[[float], tuple[float, int]],
    say: Callable[[str], None],
    timeout_s: float = WARMUP_DRAIN_TIMEOUT_S,
) -> dict[str, float | int | None] | None:
    """A warm-up at the measured rate that fell behind leaves requests in the job's queue, and the measured
    run would inherit their wait. When its last round left answers missing, wait until a probe request
    (sent behind them) is answered, at most ``timeout_s``; then the measured run starts on a stack that
    has caught up, or, if it did not, says so and is measured anyway. ``wait_answering(timeout_s)`` is
    ``wait_until_answering`` bound to the stack. None when nothing was behind; else what was and how long
    it took (``drained_s`` None: not within the timeout)."""
    if not rounds or rounds[-1].answered >= rounds[-1].sent:
        return None
    behind = rounds[-1].sent - rounds[-1].answered
    try:
        waited_s, _ = wait_answering(timeout_s)
    except TimeoutError:
        say(
            f"the warm-up's last round left {behind} requests unanswered, and a probe sent behind them was "
            f"not answered within {timeout_s:.0f} s: the stack is behind at this rate; measuring anyway"
        )
        return {"behind": behind, "drained_s": None}
    drained_s = round(waited_s, 1)
    say(
        f"the warm-up's last round left {behind} requests unanswered; caught up (a probe answered) in {drained_s} s"
    )
    return {"behind": behind, "drained_s": drained_s}

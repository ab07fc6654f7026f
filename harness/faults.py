"""`make faults`: inject faults into the running stack under load and check the invariants (docs/guarantees.md).

    python -m harness.faults [--scenarios model-hang,taskmanager-kill] [--rate 100] [--seconds 30]
                         [--delivery both|exactly-once|at-least-once] [--out var/faults]

One rig per delivery mode: a fresh KRaft broker, four model runners, a Flink session cluster (restart
strategy from flink-conf/: exponential delay) running the rendezvous job with every Kafka output in that
mode, and a verifier reading results, decisions and dead letters (read_committed) plus the decoy
archive. Each scenario sends requests at a fixed rate (a few malformed records among them), injects
its fault a third of the way in, keeps sending, then waits for the answers and checks:

- every request answered (those sent while the job was down: after recovery), none lost;
- duplicates, split into the same answer and a different one (model, output, reason), also against
  the decision log; exactly-once: none at all; at-least-once: the same answer again, only across a
  job restart, and never a different one (the job's default ``--clock log`` replays its decisions;
  ``--clock local`` may answer differently after a restart and is allowed to here);
- the archive holds every request exactly once; every malformed record has its dead letter;
- no restart caused by data (the job's exception history on the cluster's REST API);
- time to recover (fault -> first answer to a request sent after it) and the longest time without
  answers; the checkpoint size at the end.

The counting (``verify``) is pure and unit-tested (tests/unit/test_faults.py); the rest drives processes
this module starts and stops by PID. Writes ``<out>/results.json`` and ``results.md``. Timings are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness import loadgen, runinfo, stack
from harness.bench import checkpoint_bytes
from ops import archive, kafka_client, procs, upgrade
from ops import cluster as cluster_mod
from ops.broker import KafkaBroker
from runners.data import sample_many
from udfs import names

REPO_ROOT = procs.repo_root()
DEFAULT_OUT = REPO_ROOT / "var" / "faults"
INCUMBENT = "gbt"
# The shipped default policy (policies/default.yaml) without its shadow model, which has no runner here.
POLICY: dict[str, Any] = {
    "version": 1,
    "deadline_ms": 100,
    "decide": "first_in_order",
    "models": [
        {"id": INCUMBENT, "role": "incumbent", "wait_ms": 40},
        {"id": "logreg", "role": "challenger", "wait_ms": 70},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
    "on_no_answer": {"output": None},
    "late_window_ms": 1000,
}
# Static members of their groups (--instance-id), as under a supervisor that restarts a runner in place
# (docs/operations.md, "Recovery"): a crashed runner restarted takes its partitions back at once, not
# after its dead self's session has timed out (45 s).
RUNNERS = (
    stack.RunnerSpec(INCUMBENT, latency_ms=5, seed=1, instance_id=INCUMBENT),
    stack.RunnerSpec("logreg", latency_ms=2, seed=2, instance_id="logreg"),
    stack.RunnerSpec("tree", latency_ms=10, seed=3, instance_id="tree"),
    stack.RunnerSpec("base", seed=4, instance_id="base"),
)
RUNNER_DOWN_S = 5.0  # a crashed runner is restarted this long after its kill -9
RUNNER_BACK_TRAFFIC_S = 10.0  # traffic after the restarted runner is ready, to see it answer again
BROKER_DOWN_S = 5.0  # the broker is started again this long after it stopped
# After the broker is back: a runner librdkafka left without a broker stops after NO_BROKER_FATAL_S
# (15 s) and is started again; the incumbent must win again within this long.
INCUMBENT_BACK_TIMEOUT_S = 90.0
# TaskManagers beyond the one running the job (parallelism 1): a standby takes a lost TaskManager's job
# over at once, and the resumed job of savepoint-resume (`--standby-taskmanagers`).
STANDBY_TASKMANAGERS = 1
BAD_EVERY = 50  # one malformed record per this many requests
DRAIN_TIMEOUT_S = 240.0  # after the traffic: how long to wait for every answer
SETTLE_S = 5.0  # after the last answer: anything duplicated would show up by then
WARMUP_S = 10.0  # traffic before the first scenario of a job, not counted
SAMPLE = 5  # request ids listed per problem

SCENARIOS = (
    "model-hang",
    "model-late",
    "runner-crash",
    "broker-restart",
    "taskmanager-kill",
    "savepoint-resume",
    "upgrade",
)
# Faults after which the incumbent must not win: it hangs, or answers after the deadline. After every
# other fault it must win again (its runner restarted, or never stopped).
INCUMBENT_SILENCED = ("model-hang", "model-late")
# Faults that stop the job's processing: requests sent meanwhile are answered after recovery, and an
# at-least-once output may repeat what it wrote after the last checkpoint.
JOB_FAULTS = ("broker-restart", "taskmanager-kill", "savepoint-resume", "upgrade")
# An exception raised in the job's Python code (what bad data would cause) carries these ...
PYTHON_EXCEPTION_MARKERS = ("PythonException", "Traceback (most recent call last)")
# ... but so does an infrastructure error that reached Python on its way (in thread mode the Python
# operator calls the chained Kafka sink), which these name: a lost TaskManager, an unreachable broker.
INFRA_EXCEPTION_MARKERS = (
    "org.apache.kafka",
    "TaskManager",
    "ConnectException",
    "Connection refused",
    "heartbeat",
    "TimeoutException",
)


# --- pure: counting and checking -------------------------------------------------------------------


def answer_of(record: Mapping[str, Any]) -> str:
    """What makes two official results for one request the same answer (timestamps may differ)."""
    return json.dumps(
        [record.get("model_id"), record.get("output"), record.get("reason")], sort_keys=True, default=str
    )


def request_index(request_id: str) -> int | None:
    """The sequence number at the end of a scenario's request id (``<scenario>-<tag>-<i>``)."""
    tail = request_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def is_data_caused(stacktrace: str) -> bool:
    """True if a job exception came out of the job's Python code (bad data would), not from a fault
    of the infrastructure under it."""
    return any(m in stacktrace for m in PYTHON_EXCEPTION_MARKERS) and not any(
        m in stacktrace for m in INFRA_EXCEPTION_MARKERS
    )


@dataclass(frozen=True)
class Observed:
    """One record read from an output topic: when it was consumed (epoch ms) and the JSON object."""

    consumed_ms: float
    record: dict[str, Any]


@dataclass(frozen=True)
class BadSent:
    """A malformed record as the broker stored it: its dead letter must point back at it."""

    topic: str
    partition: int
    offset: int
    kind: str


@dataclass
class Verdict:
    """What one scenario did to the invariants. Counts are request ids unless named otherwise."""

    scenario: str
    delivery: str
    sent: int  # reached Kafka: the producer's delivery succeeded (or it was not told otherwise)
    unsent: int  # the producer reported the delivery failed: never in Kafka, not the job's to answer
    answered: int
    lost: int
    lost_sample: list[str]
    results: int  # result records read
    duplicated_same: int  # ids with several results, all the same answer
    duplicated_different: int  # ids with results that differ in model, output or reason
    different_sample: list[dict[str, Any]]
    foreign: int  # results for ids this scenario never sent
    sent_while_down: int  # sent between the fault and the first answer to a request sent after it
    answered_after_recovery: int  # ... of those, answered
    recovery_s: float | None  # fault -> first answer to a request sent after the fault
    longest_gap_s: float | None  # longest time without any answer, from the fault on
    incumbent_back_s: float | None  # fault -> first official answer by the incumbent after it
    incumbent_wins_after_fault: int  # official answers by the incumbent to requests it should miss
    wins_before_fault: dict[str, int]  # official answers per model (first result), requests sent before
    wins_after_fault: dict[str, int]  # ... and after the fault
    decisions_missing: int  # answered ids without a decision record
    decisions_duplicated: int  # ids with more than one decision record
    decisions_disagreeing: int  # ids whose decision log names another answer than a result did
    late_scores: int  # scores flagged late in the decision log
    archive_rows: int | None
    archive_distinct: int | None
    malformed_sent: int
    malformed_dead_lettered: int
    restarts: int | None  # job restarts in the window (exception history)
    data_restarts: int | None  # ... caused by the job's Python code
    state_bytes: int | None  # newest checkpoint on disk after the scenario
    fault: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def first_win_after(
    results: Iterable[Observed], sent: Mapping[str, float], since_ms: float, model: str
) -> float | None:
    """When ``model`` was first read winning the official answer to a request sent at or after
    ``since_ms`` (epoch ms), among ``results`` of the requests ``sent``; None if it never did."""
    won = [
        o.consumed_ms
        for o in results
        if o.record.get("model_id") == model and sent.get(str(o.record.get("request_id")), -1.0) >= since_ms
    ]
    return min(won, default=None)


def verify(
    *,
    scenario: str,
    delivery: str,
    sent: Mapping[str, float],
    results: Iterable[Observed],
    unsent: Collection[str] = (),
    decisions: Iterable[Observed] = (),
    dead_letters: Iterable[Observed] = (),
    bad: Sequence[BadSent] = (),
    fault_ms: float | None = None,
    archive: tuple[int, int] | None = None,
    restarts: int | None = None,
    data_restarts: int | None = None,
    job_restarted: bool = False,
    clock: str = names.CLOCK_LOG,
    incumbent: str = INCUMBENT,
    incumbent_silent_from: int | None = None,
    incumbent_returns: bool = False,
    incumbent_returns_after_ms: float | None = None,
    state_bytes: int | None = None,
    fault: Mapping[str, Any] | None = None,
) -> Verdict:
    """Count what came out for the requests ``sent`` (id -> send time, epoch ms) and list every broken
    invariant in ``problems``. ``unsent``: those of them whose delivery the producer reported failed;
    unanswered, they never reached Kafka: a problem of their own, not counted as sent nor lost.

    ``job_restarted``: the fault restarted the job (or stopped and resumed it from a savepoint), so an
    at-least-once output may repeat itself; exactly-once output never may. A repeated result with a
    different answer fails in every mode unless the job ran on ``--clock local`` and restarted.
    ``incumbent_silent_from``: request index from which the incumbent
    must not win (it hangs, or answers after the deadline). ``incumbent_returns``: the fault leaves
    the incumbent able to answer again (its runner restarted, or running throughout), so it must win
    the official answer to some request sent after the fault, or after ``incumbent_returns_after_ms``
    when given (the moment the stopped broker was gone: what was sent before it went out at once).
    ``archive``: (rows, distinct ids) for the
    scenario's requests.
    """
    by_id: dict[str, list[Observed]] = defaultdict(list)
    foreign = 0
    n_results = 0
    for r in results:
        n_results += 1
        rid = r.record.get("request_id")
        if isinstance(rid, str) and rid in sent:
            by_id[rid].append(r)
        else:
            foreign += 1
    # A send reported failed may have reached Kafka all the same (a timeout after the write): answered,
    # it counts as sent.
    failed = sorted((rid for rid in set(unsent) & set(sent) if rid not in by_id), key=lambda r: sent[r])
    never_reached = set(failed)
    sent = {rid: t for rid, t in sent.items() if rid not in never_reached}
    first = {rid: min(rs, key=lambda o: o.consumed_ms) for rid, rs in by_id.items()}
    answers = {rid: {answer_of(o.record) for o in rs} for rid, rs in by_id.items()}
    lost = sorted((rid for rid in sent if rid not in by_id), key=lambda r: sent[r])
    dup_same = sum(1 for rid, rs in by_id.items() if len(rs) > 1 and len(answers[rid]) == 1)
    different = [rid for rid in by_id if len(answers[rid]) > 1]
    different_sample = [
        {"request_id": rid, "answers": sorted(answers[rid])} for rid in sorted(different)[:SAMPLE]
    ]

    # Recovery: from the fault to the first answer to a request sent after it.
    recovery_s = longest_gap_s = incumbent_back_s = None
    sent_while_down = answered_after = 0
    if fault_ms is not None:
        after = [o for rid, o in first.items() if sent[rid] >= fault_ms]
        if after:
            recovered_ms = min(o.consumed_ms for o in after)
            recovery_s = round((recovered_ms - fault_ms) / 1000.0, 2)
            down = [rid for rid, t in sent.items() if fault_ms <= t < recovered_ms]
            sent_while_down = len(down)
            answered_after = sum(1 for rid in down if rid in by_id)
        times = sorted(
            [fault_ms] + [o.consumed_ms for rs in by_id.values() for o in rs if o.consumed_ms >= fault_ms]
        )
        if len(times) > 1:
            longest_gap_s = round(max(b - a for a, b in zip(times, times[1:], strict=False)) / 1000.0, 2)
        back_ms = first_win_after(first.values(), sent, fault_ms, incumbent)
        if back_ms is not None:
            incumbent_back_s = round((back_ms - fault_ms) / 1000.0, 2)
    wins_before: Counter[str] = Counter()
    wins_after: Counter[str] = Counter()
    for rid, o in first.items():
        after_fault = fault_ms is not None and sent[rid] >= fault_ms
        (wins_after if after_fault else wins_before)[str(o.record.get("model_id"))] += 1
    silent_wins = 0
    if incumbent_silent_from is not None:
        silent_wins = sum(
            1
            for rid, rs in by_id.items()
            if (request_index(rid) or 0) >= incumbent_silent_from
            and any(o.record.get("model_id") == incumbent for o in rs)
        )

    # The decision log: one record per request, naming the answer the client got.
    dec_by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    late = 0
    for d in decisions:
        rid = d.record.get("request_id")
        if isinstance(rid, str) and rid in sent:
            dec_by_id[rid].append(d.record)
            late += sum(1 for s in d.record.get("scores") or [] if isinstance(s, dict) and s.get("late"))
    decisions_missing = sum(1 for rid in by_id if rid not in dec_by_id)
    decisions_duplicated = sum(1 for recs in dec_by_id.values() if len(recs) > 1)
    disagreeing = sum(
        1
        for rid, recs in dec_by_id.items()
        if rid in answers and {answer_of(r.get("result") or {}) for r in recs} != answers[rid]
    )

    wanted = {(b.topic, b.partition, b.offset) for b in bad}
    lettered = {
        (d.record.get("source_topic"), d.record.get("partition"), d.record.get("offset"))
        for d in dead_letters
    } & wanted

    problems: list[str] = []
    if failed:
        problems.append(
            f"{len(failed)} of {len(sent) + len(failed)} requests never reached Kafka (the producer reported "
            f"their delivery failed), e.g. {failed[:SAMPLE]}"
        )
    if lost:
        problems.append(f"{len(lost)} of {len(sent)} requests never answered, e.g. {lost[:SAMPLE]}")
    if foreign:
        problems.append(f"{foreign} results for requests this scenario never sent")
    exactly_once = delivery == names.DELIVERY_EXACTLY_ONCE
    if different and (exactly_once or clock == names.CLOCK_LOG or not job_restarted):
        problems.append(f"{len(different)} requests with two different results, e.g. {different_sample[:2]}")
    if dup_same and (exactly_once or not job_restarted):
        problems.append(f"{dup_same} requests answered twice (same answer) without a job restart")
    if silent_wins:
        problems.append(f"{silent_wins} official answers from {incumbent}, which should not have answered")
    if incumbent_returns and fault_ms is not None:
        since = fault_ms if incumbent_returns_after_ms is None else incumbent_returns_after_ms
        if first_win_after(first.values(), sent, since, incumbent) is None:
            problems.append(f"no official answer from {incumbent} to a request sent after the fault")
    if decisions_missing:
        problems.append(f"{decisions_missing} answered requests without a decision record")
    if exactly_once and decisions_duplicated:
        problems.append(f"{decisions_duplicated} requests with several decision records (exactly-once)")
    if exactly_once and disagreeing:
        problems.append(f"{disagreeing} decision records disagree with the official result (exactly-once)")
    if archive is not None and archive != (len(sent), len(sent)):
        problems.append(
            f"archive holds {archive[0]} rows / {archive[1]} distinct ids for {len(sent)} requests"
        )
    if len(lettered) < len(wanted):
        problems.append(
            f"{len(wanted) - len(lettered)} of {len(wanted)} malformed records without a dead letter"
        )
    if data_restarts:
        problems.append(f"{data_restarts} job restarts caused by data")

    return Verdict(
        scenario=scenario,
        delivery=delivery,
        sent=len(sent),
        unsent=len(failed),
        answered=len(by_id),
        lost=len(lost),
        lost_sample=lost[:SAMPLE],
        results=n_results - foreign,
        duplicated_same=dup_same,
        duplicated_different=len(different),
        different_sample=different_sample,
        foreign=foreign,
        sent_while_down=sent_while_down,
        answered_after_recovery=answered_after,
        recovery_s=recovery_s,
        longest_gap_s=longest_gap_s,
        incumbent_back_s=incumbent_back_s,
        incumbent_wins_after_fault=silent_wins,
        wins_before_fault=dict(wins_before.most_common()),
        wins_after_fault=dict(wins_after.most_common()),
        decisions_missing=decisions_missing,
        decisions_duplicated=decisions_duplicated,
        decisions_disagreeing=disagreeing,
        late_scores=late,
        archive_rows=None if archive is None else archive[0],
        archive_distinct=None if archive is None else archive[1],
        malformed_sent=len(wanted),
        malformed_dead_lettered=len(lettered),
        restarts=restarts,
        data_restarts=data_restarts,
        state_bytes=state_bytes,
        fault=dict(fault or {}),
        problems=problems,
    )


def restarts_in(
    entries: Iterable[Mapping[str, Any]], since_ms: float, until_ms: float
) -> tuple[int, int, list[str]]:
    """(restarts, of which data-caused, their exceptions' first lines) from the REST exception history
    of a job, within [since_ms, until_ms]."""
    hits = [e for e in entries if since_ms <= float(e.get("timestamp") or 0) <= until_ms]
    traces = [str(e.get("stacktrace") or e.get("exceptionName") or "") for e in hits]
    firsts = [(t.strip().splitlines() or [""])[0][:200] for t in traces]
    return len(hits), sum(1 for t in traces if is_data_caused(t)), firsts


# --- the Kafka and process shell -------------------------------------------------------------------


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _now_ms() -> float:
    return time.time() * 1000.0


class Reader(threading.Thread):
    """Reads results, decisions and dead letters from the start, read_committed, until stopped."""

    def __init__(self, bootstrap: str, topics: Mapping[str, str]) -> None:
        super().__init__(daemon=True, name="faults-reader")

        self.topics = dict(topics)  # role -> topic
        self.role_of = {t: role for role, t in self.topics.items()}
        self.seen: dict[str, list[Observed]] = {role: [] for role in self.topics}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.consumer = kafka_client.consumer(
            bootstrap, client_id="faults-reader", isolation=kafka_client.READ_COMMITTED
        )
        self.consumer.assign_all(self.topics.values())

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self.consumer.take(1000, 0.1)
                now = _now_ms()
                with self.lock:
                    for m in batch:
                        role = self.role_of[m.topic() or ""]
                        try:
                            rec = json.loads(m.value() or b"")
                        except (ValueError, TypeError):
                            rec = {"_unreadable": True}
                        if isinstance(rec, dict):
                            self.seen[role].append(Observed(now, self.keep(role, rec)))
        except BaseException as e:  # surfaced by the caller: a dead reader must not look like silence
            self.error = e
        finally:
            self.consumer.close()

    def keep(self, role: str, record: dict[str, Any]) -> dict[str, Any]:
        """What of a record is held until the end: all of it here (harness/soak.py keeps less)."""
        return record

    def of(self, role: str, prefix: str) -> list[Observed]:
        with self.lock:
            return [o for o in self.seen[role] if str(o.record.get("request_id", "")).startswith(prefix)]

    def dead_letters(self) -> list[Observed]:
        with self.lock:
            return list(self.seen["dead-letters"])

    def stop(self) -> None:
        self.stopping.set()
        self.join(15.0)


class Traffic(threading.Thread):
    """Requests at a fixed rate (open loop) with a malformed record every BAD_EVERY requests."""

    def __init__(
        self,
        bootstrap: str,
        topics: Mapping[str, str],
        prefix: str,
        rate: float,
        seconds: float,
        client_settings: Mapping[str, Any] | None = None,
    ) -> None:
        """``client_settings``: more settings of its producer (``Rig.traffic_client_settings``)."""
        super().__init__(daemon=True, name=f"faults-traffic-{prefix}")

        self.topics = topics
        self.prefix = prefix
        self.count = int(rate * seconds)
        self.rate = rate
        feats = sample_many(np.random.default_rng(len(prefix)), min(self.count, 256))
        self.features = [json.dumps(f, separators=(",", ":")) for f in feats]
        self.bad_plan = loadgen.bad_record_plan(
            self.count // BAD_EVERY,
            run_id=f"{prefix}x",
            return_address=topics["results"],
            now_ms=int(_now_ms()),
            requests_topic=topics["requests"],
            scores_topic=topics["scores"],
        )
        self.producer = kafka_client.producer(
            bootstrap, client_id=f"faults-traffic-{prefix}", **(client_settings or {})
        )
        self.sent: dict[str, float] = {}
        self.bad: list[BadSent] = []
        self.send_errors = 0
        self.unsent: set[str] = set()  # request ids whose delivery the producer reported failed
        self.started_ms = 0.0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e

    def _on_bad(self, kind: str) -> Callable[[Any, Any], None]:
        def done(error: Any, msg: Any) -> None:
            if error is not None:
                self._on_error(error, msg)
                return
            with self.lock:
                self.bad.append(BadSent(msg.topic(), msg.partition(), msg.offset(), kind))

        return done

    def _on_error(self, error: Any, msg: Any) -> None:
        if error is None:
            return
        self.producer.delivery_errors(error, msg)  # printed (the first few) and counted there too
        key = msg.key()
        with self.lock:
            self.send_errors += 1
            if key is not None and msg.topic() == self.topics["requests"]:
                self.unsent.add(key.decode("utf-8", "replace"))

    def _run(self) -> None:
        next_at = time.monotonic()
        self.started_ms = _now_ms()
        bi = 0
        i = 0
        while True:
            with self.lock:
                count = self.count  # send_for() may change it
            if i >= count:
                if self.closing.is_set():
                    break
                time.sleep(0.05)
                next_at = max(next_at, time.monotonic())
                continue
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rid = f"{self.prefix}{i}"
            now = _now_ms()
            value = loadgen.encode_request(
                rid, self.topics["results"], self.features[i % len(self.features)], int(now)
            )
            self.producer.send(self.topics["requests"], value, rid.encode(), on_delivery=self._on_error)
            with self.lock:
                self.sent[rid] = now
            if (i + 1) % BAD_EVERY == 0 and bi < len(self.bad_plan):
                b = self.bad_plan[bi]
                bi += 1
                self.producer.send(b.topic, b.value, b.key, on_delivery=self._on_bad(b.kind))
            i += 1
            next_at += 1.0 / self.rate
        self.producer.flush(180)

    def send_for(self, seconds: float) -> None:
        """From now on, send for ``seconds`` more, whatever was planned (a fault whose injection takes
        long must still be followed by traffic that shows the recovery)."""
        with self.lock:
            self.count = len(self.sent) + int(self.rate * seconds)

    def finish(self) -> None:
        """Send what is planned (extensions included), then stop."""
        self.closing.set()
        self.join(300.0)
        self.producer.finish(timeout_s=30)
        if self.error is not None:
            raise RuntimeError(f"traffic {self.prefix} failed") from self.error


@dataclass
class Rig:
    """Broker, runners, session cluster and job for one delivery mode; stopped by PID in ``close``."""

    base: Path
    delivery: str
    models_dir: Path
    policy: dict[str, Any] = field(default_factory=lambda: dict(POLICY))
    train_rows: int = 20000  # rows the models are trained on, if they are not already in models_dir
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    broker: Any = None
    cluster: Any = None
    job_id: str = ""
    processes: stack.Processes = field(default_factory=stack.Processes)
    runners: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    reader: Reader | None = None
    cluster_pids: set[int] = field(default_factory=set)
    topics: dict[str, str] = field(default_factory=dict)
    policy_path: Path | None = None
    job_args: list[str] = field(default_factory=list)
    clock: str = names.CLOCK_LOG
    standby_taskmanagers: int = STANDBY_TASKMANAGERS
    # The job's checkpoint interval (a Flink duration, "2s"); None: flink-conf/'s. Exactly-once output
    # and the archive show at checkpoints, so the verifier waits for one after every scenario.
    checkpoint_interval: str | None = None
    # librdkafka debug contexts ("metadata,broker") for the traffic's producer; None: no debug log.
    kafka_debug: str | None = None

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        from runners.train import ensure_trained

        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        say(f"[{self.delivery}] broker ...")
        self.topics = {
            k: f"{k}-{self.tag}"
            for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters")
        }
        self.broker = stack.start_broker(self.base / "broker", self.topics.values())
        ensure_trained(self.models_dir, rows=self.train_rows)
        say(f"[{self.delivery}] runners ...")
        started = stack.start_runners(
            RUNNERS, self.models_dir, self.broker.bootstrap, self.base / "logs", self.processes,
            requests_topic=self.topics["requests"], scores_topic=self.topics["scores"],
        )  # fmt: skip
        self.runners = {spec.model_id: p for spec, p in zip(RUNNERS, started, strict=True)}
        say(f"[{self.delivery}] session cluster ...")
        self.policy_path = self.base / "policy.yaml"
        self.policy_path.write_text(yaml.safe_dump(self.policy))
        ports = {opt: procs.free_port() for opt in cluster_mod.PORT_KEYS}
        self.cluster = cluster_mod.Cluster(self.base / "cluster")
        try:
            # One TaskManager for the job and the standbys: a lost TaskManager's job restarts on a
            # standby at once (docs/operations.md, "Recovery").
            self.cluster.up(ports, taskmanagers=1 + self.standby_taskmanagers)
        finally:
            self.record_cluster_pids()
        # The rig's broker and topics are new and traffic starts once every task is RUNNING, which can
        # be before the sources have found the end of the topics: from the beginning, nothing sent is
        # missed (and there is no history to answer again). A restore (taskmanager-kill,
        # savepoint-resume) continues from its checkpoint's offsets whatever this says.
        self.job_args = self._job_args(f"rendezvous-{self.tag}", names.START_EARLIEST)
        say(f"[{self.delivery}] submitting the job ...")
        self.job_id = self.cluster.submit(self.policy_path, self.broker.bootstrap, self.job_args)
        self.wait_running()
        self.reader = Reader(
            self.broker.bootstrap,
            {r: self.topics[r] for r in ("results", "decisions", "dead-letters")},
        )
        self.reader.start()

    def _job_args(self, group_id: str, start_from: str) -> list[str]:
        return [
            "--requests-topic", self.topics["requests"], "--scores-topic", self.topics["scores"],
            "--canary-topic", self.topics["canary"], "--decisions-topic", self.topics["decisions"],
            "--dead-letters-topic", self.topics["dead-letters"], "--group-id", group_id,
            *[x for o in names.KAFKA_OUTPUTS for x in (f"--{o}-delivery", self.delivery)],
            "--clock", self.clock, "--start-from", start_from,
            *([] if self.checkpoint_interval is None else stack.checkpoint_every(self.checkpoint_interval)),
        ]  # fmt: skip

    def stop_with_savepoint(self) -> tuple[str, float]:
        """Stop the job with a savepoint and ready a fresh TaskManager for the next job; the savepoint's
        path, and when (``time.monotonic()``) the job had finished. Thread mode runs one job per
        TaskManager: the standby takes the next one, the one that ran this job goes, a new standby starts."""
        ran_job = self.cluster.busy_taskmanagers()
        sp = upgrade.stop_with_savepoint(self.cluster, self.job_id, self.cluster.state_dir / "savepoints")
        upgrade.wait_job_finished(self.cluster, self.job_id)
        stopped_at = time.monotonic()
        self.cluster.stop_taskmanagers(pids=list(ran_job), rest_ids=set(ran_job.values()))
        self.cluster.start_taskmanagers(1, spare=True)
        self.record_cluster_pids()
        return sp, stopped_at

    def traffic_client_settings(self, prefix: str) -> dict[str, Any]:
        """The traffic producer's settings beyond the project's: with ``kafka_debug``, librdkafka's debug
        log of those contexts in ``<base>/kafka-debug/<prefix>traffic.log``."""
        if self.kafka_debug is None:
            return {}
        return kafka_client.debug_settings(
            self.kafka_debug, self.base / "kafka-debug" / f"{prefix}traffic.log"
        )

    def switch_delivery(self, delivery: str, checkpoint_interval: str | None = None) -> None:
        """The same broker, runners and cluster, a new job with every output in ``delivery`` (one rig
        for both modes in the tests: a rig's start is most of a minute), checkpointing every
        ``checkpoint_interval`` (None: flink-conf/'s). The old job stops with a savepoint, which commits
        its transactions; the new one starts without state, in a consumer group of its own, from the
        records written from now on."""
        self.stop_with_savepoint()
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.delivery = delivery
        self.checkpoint_interval = checkpoint_interval
        self.job_args = self._job_args(f"rendezvous-{self.tag}-{delivery}", now)
        say(f"[{delivery}] submitting the job (from {now}) ...")
        self.job_id = self.cluster.submit(self.policy_path, self.broker.bootstrap, self.job_args)
        self.wait_running()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
        self.processes.stop_all()
        self.record_cluster_pids()
        if self.cluster is not None and any(self.cluster.ours(p) for p in self.cluster_pids):
            try:
                self.cluster.down()
            except Exception as e:  # fall through to stopping our own PIDs
                say(f"cluster down failed: {e}")
        for pid in self.cluster_pids:  # only JVMs started with this rig's conf dir
            if self.cluster is not None and self.cluster.ours(pid):
                procs.stop_pid(pid, grace_s=10.0)
        if self.broker is not None:
            self.broker.stop()

    def record_cluster_pids(self) -> None:
        if self.cluster is not None:
            self.cluster_pids.update(p for ps in self.cluster.pids().values() for p in ps)

    def wait_running(self, timeout_s: float = 240.0) -> None:
        upgrade.wait_running(self.cluster, self.job_id, timeout_s)

    # --- runners -----------------------------------------------------------------------------
    def start_runner(self, spec: stack.RunnerSpec) -> None:
        # A log of its own per start: readiness is a line in the log, and an earlier runner's would do.
        n = sum(1 for _ in (self.base / "logs").glob(f"{spec.model_id}-*"))
        log_dir = self.base / "logs" / f"{spec.model_id}-{n}"
        (p,) = stack.start_runners(
            [spec], self.models_dir, self.broker.bootstrap, log_dir, self.processes,
            requests_topic=self.topics["requests"], scores_topic=self.topics["scores"],
        )  # fmt: skip
        self.runners[spec.model_id] = p

    def stop_runner(self, model_id: str, kill: bool = False) -> None:
        p = self.runners.pop(model_id)
        if kill:
            os.kill(p.pid, signal.SIGKILL)  # our own child, by PID: a crash, no clean shutdown
        p.stop(grace_s=15.0)
        self.processes.started.remove(p)

    def replace_runner(self, spec: stack.RunnerSpec) -> None:
        self.stop_runner(spec.model_id)
        self.start_runner(spec)

    def restart_stopped_runners(self) -> list[str]:
        """Start again each runner whose process has stopped by itself, as its supervisor would (a
        runner stops on a fatal Kafka error, e.g. ``kafka_client.BrokerWatch`` after a broker restart);
        the model ids restarted."""
        restarted = []
        for spec in RUNNERS:
            p = self.runners.get(spec.model_id)
            if p is not None and not p.is_running():
                say(
                    f"[{self.delivery}] runner {spec.model_id} had stopped (exit {p.returncode()}); starting it again"
                )
                self.replace_runner(spec)
                restarted.append(spec.model_id)
        return restarted

    # --- the job's health ---------------------------------------------------------------------
    def exceptions(self) -> list[dict[str, Any]]:
        try:
            exc = self.cluster.rest(f"/jobs/{self.job_id}/exceptions?maxExceptions=100", timeout_s=10.0)
        except RuntimeError:
            return []
        return list((exc.get("exceptionHistory") or {}).get("entries") or [])

    def state_bytes(self) -> int | None:
        return checkpoint_bytes(self.cluster.state_dir)

    def archive_counts(self, prefix: str, expected: int, timeout_s: float = 60.0) -> tuple[int, int]:
        """(rows, distinct ids) archived for the scenario, once a checkpoint has committed them."""
        return archive.requests_archived(
            self.cluster.base / "archive", prefix, expected, timeout_s, poll_s=2.0
        )


# --- scenarios: each prepares, injects its fault at fault_at, and says how to check -----------------


@dataclass
class Plan:
    """What a scenario did: when its fault hit, whether the job restarted, and details to report."""

    fault_ms: float | None = None
    job_restarted: bool = False
    incumbent_silent_from: int | None = None
    outage_from_ms: float | None = None  # when the fault had taken its part down (the broker: stopped)
    detail: dict[str, Any] = field(default_factory=dict)


def _before(rig: Rig, name: str, rate: float, fault_at_s: float, plan: Plan) -> None:
    """Set-up before the traffic starts (model faults start a faulty runner in place of the good one)."""
    if name == "model-hang":
        hang_after = int(rate * fault_at_s)
        rig.replace_runner(dataclasses.replace(RUNNERS[0], hang_after=hang_after))
        plan.incumbent_silent_from = hang_after
        plan.detail["hang_after_requests"] = hang_after
    elif name == "model-late":
        # Past the deadline, within the late window: the scores arrive, too late to count.
        late_ms = rig.policy["deadline_ms"] + rig.policy.get("late_window_ms", 1000) / 2
        rig.replace_runner(dataclasses.replace(RUNNERS[0], latency_ms=late_ms))
        plan.incumbent_silent_from = 0
        plan.detail["late_ms"] = late_ms


def _inject(rig: Rig, name: str, plan: Plan, traffic: Traffic) -> None:
    """The fault itself, at its moment in the traffic; returns when the stack was set going again."""
    t0 = time.monotonic()
    plan.fault_ms = _now_ms()
    if name == "runner-crash":
        traffic.send_for(600.0)  # steady traffic until the restarted runner is back (then 10 s more)
        rig.stop_runner(INCUMBENT, kill=True)
        time.sleep(RUNNER_DOWN_S)
        rig.start_runner(RUNNERS[0])  # returns once it has its partitions: at once, a static member
        plan.detail["runner_ready_after_s"] = round(time.monotonic() - t0, 1)
        traffic.send_for(RUNNER_BACK_TRAFFIC_S)
    elif name == "broker-restart":
        data_dir, port, cport = rig.broker.data_dir, rig.broker.port, rig.broker.controller_port
        rig.broker.stop()
        plan.outage_from_ms = _now_ms()
        plan.detail["broker_stopped_in_s"] = round(time.monotonic() - t0, 1)
        time.sleep(BROKER_DOWN_S)
        rig.broker = _restart_broker(KafkaBroker, data_dir, port, cport)
        plan.detail["broker_back_after_s"] = round(time.monotonic() - t0, 1)
        # Traffic goes on until the incumbent wins again, then 10 s more. Meanwhile a runner that
        # stopped by itself (librdkafka lost the broker: kafka_client.BrokerWatch) is started again, as
        # its supervisor would.
        traffic.send_for(600.0)
        back_s, restarted = _await_incumbent(rig, traffic, since_ms=plan.outage_from_ms)
        plan.detail["incumbent_answering_after_s"] = None if back_s is None else round(back_s, 1)
        if restarted:
            plan.detail["runners_restarted_during"] = restarted
        traffic.send_for(RUNNER_BACK_TRAFFIC_S)
        # Whether the job restarted (and may repeat at-least-once output) shows in its exception history.
    elif name == "taskmanager-kill":
        (tm,) = rig.cluster.busy_taskmanagers()  # the one running the job
        os.kill(tm, signal.SIGKILL)  # the cluster's own TaskManager JVM, by PID
        plan.detail["killed_pid"] = tm
        # The job restarts on the standby. A standalone cluster does not replace a dead TaskManager by
        # itself (a supervisor would): a new standby, on other ports (spare): the JobManager keeps its
        # link to the dead one's address quarantined and discarded a new TaskManager's registration
        # from the same port (seen once in seven kills).
        rig.cluster.start_taskmanagers(1, spare=True)
        rig.record_cluster_pids()
        plan.job_restarted = True
    elif name == "savepoint-resume":
        sp, stopped_at = rig.stop_with_savepoint()
        plan.detail["savepoint_s"] = round(stopped_at - t0, 1)
        old = rig.job_id
        rig.job_id = rig.cluster.submit(
            rig.policy_path, rig.broker.bootstrap, rig.job_args, savepoint=sp, previous_job_id=old
        )
        rig.wait_running()
        plan.detail["resubmitted_running_after_s"] = round(time.monotonic() - t0, 1)
        # The job stops and resumes from state: an at-least-once output may repeat itself (measured: a
        # timer that fired between the savepoint and the end of the task wrote a result the savepoint
        # does not know of, and the resumed job wrote it again); exactly-once aborts that transaction.
        plan.job_restarted = True
    elif name == "upgrade":
        # What an operator runs: `rendezvous cluster upgrade` to the next policy version (same models),
        # which builds the new job while the old one serves and then stops it with a savepoint.
        # Answers stop only at the stop with savepoint: that is the fault's moment. Traffic goes on
        # until the new job runs, then 10 s more.
        policy = {**rig.policy, "version": int(rig.policy["version"]) + 1}
        path = rig.base / f"policy-v{policy['version']}.yaml"
        path.write_text(yaml.safe_dump(policy))
        traffic.send_for(600.0)
        report = upgrade.upgrade(rig.cluster, path, log=say)
        traffic.send_for(RUNNER_BACK_TRAFFIC_S)
        rig.policy, rig.policy_path, rig.job_id = policy, path, report.new_job_id
        rig.record_cluster_pids()
        plan.fault_ms = report.stop_requested_ms
        plan.detail.update({k: round(v, 1) for k, v in report.to_dict().items() if k.endswith("_s")})
        plan.job_restarted = True


def _await_incumbent(
    rig: Rig, traffic: Traffic, since_ms: float, timeout_s: float = INCUMBENT_BACK_TIMEOUT_S
) -> tuple[float | None, list[str]]:
    """Wait until the incumbent wins the official answer to a request sent after ``since_ms``, starting
    again any runner that stopped meanwhile; (seconds from ``since_ms``, or None after ``timeout_s``;
    the model ids restarted)."""
    assert rig.reader is not None
    restarted: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        restarted += rig.restart_stopped_runners()
        won_ms = first_win_after(rig.reader.of("results", traffic.prefix), traffic.sent, since_ms, INCUMBENT)
        if won_ms is not None:
            return (won_ms - since_ms) / 1000.0, restarted
        time.sleep(0.5)
    return None, restarted


def _restart_broker(cls: Any, data_dir: Path, port: int, cport: int, timeout_s: float = 120.0) -> Any:
    """Start the broker again on its data dir and ports (clients keep their bootstrap address); the
    ports may stay taken for a moment by connections the stop left in TIME_WAIT."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return cls.start(data_dir, port=port, controller_port=cport)
        except RuntimeError as e:
            if "already in use" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _after(rig: Rig, name: str) -> list[str]:
    """Ready the rig for the next scenario; the model ids of the runners found stopped and started again."""
    if name in INCUMBENT_SILENCED:
        rig.replace_runner(RUNNERS[0])
    return rig.restart_stopped_runners()


def run_scenario(rig: Rig, name: str, rate: float, seconds: float) -> Verdict:
    """Traffic for ``seconds`` at ``rate``, the fault a third of the way in, then drain and verify."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    assert rig.reader is not None
    prefix = f"{name}-{rig.delivery}-{rig.tag}-"  # a rig may run a scenario in both modes (switch_delivery)
    fault_at_s = seconds / 3.0
    plan = Plan()
    _before(rig, name, rate, fault_at_s, plan)
    say(
        f"[{rig.delivery}] {name}: {int(rate * seconds)} requests at {rate:g}/s, fault after {fault_at_s:.0f} s"
    )
    traffic = Traffic(
        rig.broker.bootstrap, rig.topics, prefix, rate, seconds, rig.traffic_client_settings(prefix)
    )
    window_start = _now_ms()
    traffic.start()
    if name not in INCUMBENT_SILENCED:
        time.sleep(fault_at_s)
        try:
            _inject(rig, name, plan, traffic)
        except BaseException:
            traffic.send_for(0.0)
            traffic.finish()
            raise
    traffic.finish()
    sent = dict(traffic.sent)
    if name == "model-late":  # late from the first request on
        plan.fault_ms = min(sent.values(), default=window_start)
    elif name == "model-hang":  # silent from the request numbered hang_after on
        plan.fault_ms = sent.get(f"{prefix}{plan.incumbent_silent_from}")
    say(
        f"[{rig.delivery}] {name}: {len(sent)} sent ({traffic.send_errors} send errors); waiting for answers ..."
    )
    unsent = set(traffic.unsent)
    expected = set(sent) - unsent  # a failed send is still answered if it reached Kafka after all
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if rig.reader.error is not None:
            raise RuntimeError("the verifier's reader failed") from rig.reader.error
        answered = {o.record.get("request_id") for o in rig.reader.of("results", prefix)}
        if answered >= expected:
            break
        time.sleep(0.5)
    time.sleep(SETTLE_S)
    # Decisions come out when a mailbox closes (deadline + late window): wait for them too.
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        decided = {o.record.get("request_id") for o in rig.reader.of("decisions", prefix)}
        if decided >= answered:
            break
        time.sleep(0.5)
    archive = rig.archive_counts(prefix, len(set(sent) - (unsent - answered)))
    restarts, data_restarts, exceptions = restarts_in(rig.exceptions(), window_start, _now_ms())
    verdict = verify(
        scenario=name,
        delivery=rig.delivery,
        sent=sent,
        unsent=unsent,
        results=rig.reader.of("results", prefix),
        decisions=rig.reader.of("decisions", prefix),
        dead_letters=rig.reader.dead_letters(),
        bad=traffic.bad,
        fault_ms=plan.fault_ms,
        archive=archive,
        restarts=restarts,
        data_restarts=data_restarts,
        job_restarted=plan.job_restarted or restarts > 0,
        clock=rig.clock,
        incumbent_silent_from=plan.incumbent_silent_from,
        incumbent_returns=name not in INCUMBENT_SILENCED,
        incumbent_returns_after_ms=plan.outage_from_ms,
        state_bytes=rig.state_bytes(),
        fault=plan.detail | {"send_errors": traffic.send_errors, "exceptions": exceptions[:5]},
    )
    restarted = _after(rig, name)
    if restarted:
        verdict.fault["runners_restarted_after"] = restarted
    say(f"[{rig.delivery}] {name}: " + one_line(verdict))
    return verdict


def one_line(v: Verdict) -> str:
    status = "PASS" if v.passed else "FAIL: " + "; ".join(v.problems)
    return (
        f"sent {v.sent}{f' ({v.unsent} more never reached Kafka)' if v.unsent else ''}, answered {v.answered}, "
        f"lost {v.lost}, duplicated {v.duplicated_same} same / "
        f"{v.duplicated_different} different, recovery {_s(v.recovery_s)}, longest gap {_s(v.longest_gap_s)}, "
        f"restarts {v.restarts} (data {v.data_restarts}) -> {status}"
    )


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def run_mode(
    delivery: str,
    scenarios: Sequence[str],
    rate: float,
    seconds: float,
    out: Path,
    models_dir: Path,
    policy: dict[str, Any] | None = None,
    standby_taskmanagers: int = STANDBY_TASKMANAGERS,
    kafka_debug: str | None = None,
) -> dict[str, Any]:
    """One rig in one delivery mode, every scenario on it in turn."""
    rig = Rig(out / "work" / delivery, delivery, models_dir, policy or dict(POLICY), kafka_debug=kafka_debug)
    rig.standby_taskmanagers = standby_taskmanagers
    done: list[dict[str, Any]] = []
    t0 = time.monotonic()
    state = None
    try:
        rig.start()
        say(f"[{delivery}] warm-up: {int(rate * 10)} requests (not counted) ...")
        run_scenario_warmup(rig, rate)
        for name in scenarios:
            try:
                done.append(run_scenario(rig, name, rate, seconds).to_dict())
            except Exception as e:  # reported as a failed scenario; the next one still runs
                say(f"[{delivery}] {name}: ERROR {e.__class__.__name__}: {e}")
                done.append({"scenario": name, "delivery": delivery, "error": f"{e.__class__.__name__}: {e}"})
        state = rig.state_bytes()
    finally:
        rig.close()
    return {
        "delivery": delivery,
        "rate": rate,
        "seconds": seconds,
        "wall_s": round(time.monotonic() - t0),
        "state_bytes_at_end": state,
        "scenarios": done,
    }


def run_scenario_warmup(rig: Rig, rate: float, seconds: float = WARMUP_S) -> None:
    """Requests for ``seconds``, all answered: the job answers, and steadily once its JIT has warmed
    up; they are not counted."""
    assert rig.reader is not None
    prefix = f"warmup-{rig.delivery}-{rig.tag}-"
    traffic = Traffic(
        rig.broker.bootstrap, rig.topics, prefix, rate, seconds, rig.traffic_client_settings(prefix)
    )
    traffic.start()
    traffic.finish()
    deadline = time.monotonic() + 180.0
    while time.monotonic() < deadline:
        if {o.record.get("request_id") for o in rig.reader.of("results", prefix)} >= set(traffic.sent):
            return
        time.sleep(0.5)
    raise TimeoutError("the job did not answer the warm-up requests within 180 s")


# --- report ----------------------------------------------------------------------------------------


def markdown(result: Mapping[str, Any]) -> str:
    lines = [
        f"# Fault injection ({result['date']}, {result['machine']['cpus']} CPUs)",
        "",
        "Per delivery mode: one broker, four runners, the job on a Flink session cluster; each scenario "
        f"sends requests for {result['seconds']:g} s at {result['rate']:g}/s (plus one malformed record per "
        f"{BAD_EVERY}) and injects its fault after a third of that. Duplicates are request ids with more "
        "than one official result (read_committed), split by whether the answers (model, output, reason) "
        "are the same. Recovery: fault -> first answer to a request sent after it.",
        "",
    ]
    for mode in result["modes"]:
        lines += [
            f"## {mode['delivery']} (all Kafka outputs), {mode['wall_s']} s",
            "",
            "| scenario | sent | answered | lost | dup same | dup different | sent while down (answered) "
            f"| recovery s | longest gap s | {INCUMBENT} wins before / after fault | restarts (data) "
            "| archive rows/distinct "
            "| malformed / dead-lettered | decisions disagreeing | state KB | invariants |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in mode["scenarios"]:
            if "error" in v:
                lines.append(f"| {v['scenario']} | ERROR: {v['error'][:200]} |" + " |" * 14)
                continue
            state = "-" if v["state_bytes"] is None else f"{v['state_bytes'] / 1024:.0f}"
            lines.append(
                f"| {v['scenario']} | {v['sent']} | {v['answered']} | {v['lost']} | {v['duplicated_same']} | "
                f"{v['duplicated_different']} | {v['sent_while_down']} ({v['answered_after_recovery']}) | "
                f"{_num(v['recovery_s'])} | {_num(v['longest_gap_s'])} | "
                f"{_wins(v, 'wins_before_fault')} / {_wins(v, 'wins_after_fault')} | "
                f"{v['restarts']} ({v['data_restarts']}) | "
                f"{v['archive_rows']}/{v['archive_distinct']} | {v['malformed_sent']} / "
                f"{v['malformed_dead_lettered']} | {v['decisions_disagreeing']} | {state} | "
                f"{'pass' if v['passed'] else 'FAIL: ' + '; '.join(v['problems'])} |"
            )
        total = Counter[str]()
        for v in mode["scenarios"]:
            for k in ("sent", "answered", "lost", "duplicated_same", "duplicated_different"):
                total[k] += v.get(k, 0)
        end_state = mode.get("state_bytes_at_end")
        lines += [
            "",
            f"Total: {total['sent']} sent, {total['answered']} answered, {total['lost']} lost, "
            f"{total['duplicated_same']} duplicated with the same answer, {total['duplicated_different']} "
            f"with a different answer. Checkpoint at the end: "
            f"{'-' if end_state is None else f'{end_state / 1024:.0f} KB'}.",
            "",
        ]
    return "\n".join(lines)


def _wins(v: Mapping[str, Any], key: str) -> str:
    """The incumbent's official answers out of all, e.g. '150/200'; '-' where not recorded."""
    wins = v.get(key)
    return "-" if wins is None else f"{wins.get(INCUMBENT, 0)}/{sum(wins.values())}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous faults", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="requests per second during each scenario (default 100: the rate issue 13's recovery targets are set at)",
    )
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="traffic per scenario; the fault comes at 1/3"
    )
    ap.add_argument(
        "--delivery",
        default="both",
        choices=("both", *names.DELIVERIES),
        help="delivery mode of the job's Kafka outputs (both: one rig each, exactly-once first)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="policy YAML (default: the shipped default policy without its shadow model); its "
        f"incumbent must be {INCUMBENT!r}",
    )
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "var" / "models")
    ap.add_argument(
        "--standby-taskmanagers",
        type=int,
        default=STANDBY_TASKMANAGERS,
        choices=range(0, 4),
        metavar="{0..3}",
        help="TaskManagers started beside the job's, to take it over (default %(default)s; 0: each "
        "TaskManager loss waits for a new JVM)",
    )
    ap.add_argument(
        "--kafka-debug",
        default=None,
        metavar="CONTEXTS",
        help="librdkafka debug contexts for the traffic's producer (e.g. metadata,broker,protocol), "
        "logged with their time into <out>/work/<delivery>/kafka-debug/",
    )
    a = ap.parse_args(argv)
    if a.kafka_debug is not None:
        try:
            kafka_client.check_debug_contexts(a.kafka_debug)
        except ValueError as e:
            ap.error(f"--kafka-debug: {e}")
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    policy = yaml.safe_load(a.policy.read_text()) if a.policy else dict(POLICY)
    modes = (
        [names.DELIVERY_EXACTLY_ONCE, names.DELIVERY_AT_LEAST_ONCE] if a.delivery == "both" else [a.delivery]
    )
    result: dict[str, Any] = runinfo.run_info() | {
        "rate": a.rate,
        "seconds": a.seconds,
        "standby_taskmanagers": a.standby_taskmanagers,
        "policy": policy,
        "runners": [asdict(s) for s in RUNNERS],
        "modes": [],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        result["modes"].append(
            run_mode(
                mode,
                scenarios,
                a.rate,
                a.seconds,
                a.out,
                a.models_dir,
                policy,
                a.standby_taskmanagers,
                kafka_debug=a.kafka_debug,
            )
        )
        (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (a.out / "results.md").write_text(markdown(result))
    print((a.out / "results.md").read_text())
    failed = [
        f"{m['delivery']}/{v['scenario']}"
        for m in result["modes"]
        for v in m["scenarios"]
        if not v.get("passed")
    ]
    if failed:
        say(f"invariants broken in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

"""A model runner: read every request from Kafka, score it, write one score per request.

Two halves. The pure half (parse_request, decide, Scheduler) says what to send and when, given the
requests and the time; it has no clock or I/O of its own, so tests drive it with a fake clock. The thin
half (run, main) moves bytes between Kafka and the Scheduler.

Fault injection, for exercising the rendezvous job: --latency-ms/--jitter-ms delay scores without
blocking the loop (pending scores wait in a time-ordered heap), --fail-rate sends error scores,
--drop-rate sends nothing, --hang-after N stops answering after N requests, --degrade-after N keeps
answering after N requests but with noise (a model gone bad, for the evaluation scenario). Which requests
fail or drop, and the noise, are a hash of (seed, request_id), so a rerun injects the same faults.

--model-ids a,b,c serves several model ids from one process: each request is scored once and its score
goes out once per id (a policy with many models without a process and a model each: what the job and
the broker pay per extra model is the point, not the models).

--also DIR[,key=value...] serves another model from the same process (repeatable): each request is read
once and scored by every model, each model with its own injected faults (``latency_ms=1,seed=2``: the
Faults fields). One consumer and one producer for all of them, so a request costs one fetch and the
scores share produce requests; the price is isolation: the models live and die together
(docs/performance.md, "One runner process for several models").
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import heapq
import json
import math
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaException
from threadpoolctl import threadpool_limits

from ops import kafka_admin, kafka_client
from runners.model import Scored, ScoringModel, load
from udfs.names import TOPIC_REQUESTS, TOPIC_SCORES, runner_group
from udfs.wire_in import MODEL_ID_RE

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")
MAX_ERROR_CHARS = 1024  # score.error limit in schemas/README.md
IDLE_POLL_MS = 50  # poll timeout when nothing is pending: bounds how long a stop signal waits
STATS_EVERY_S = 5.0  # at most this often while requests flow
STATS_IDLE_EVERY_S = 60.0  # a heartbeat when nothing happens
WAIT_NOTE_EVERY_S = 10.0  # how often a runner still waiting for its partitions says so
REJOIN_AFTER_S = 30.0  # a consumer still without partitions then is replaced (see run())
SEND_ERRORS_SHOWN = 5  # the first failed score deliveries are printed, later ones only counted
INJECTED_FAILURE = "injected failure"


class MalformedRequest(ValueError):
    """A record that is not a request at all (skipped and counted, never scored)."""


def parse_request(raw: bytes | None) -> tuple[str, Any]:
    """(request_id, features) of one request record; MalformedRequest if it has neither.

    Only what a runner needs is checked. Unusable features (not an object, bad values) still yield a
    request: the model rejects them and the request gets an error score, which is more useful to the
    rendezvous job than silence.
    """
    if raw is None:
        raise MalformedRequest("empty record")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRequest("not a JSON object")
    request_id = obj.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise MalformedRequest("missing or invalid request_id")
    if "features" not in obj:
        raise MalformedRequest("missing features")
    return request_id, obj["features"]


class Fate(StrEnum):
    OK = "ok"  # scored (status ok, or error if the features are unusable)
    FAIL = "fail"  # injected error score
    DROP = "drop"  # injected silence
    HANG = "hang"  # past --hang-after: silence


@dataclass(frozen=True)
class Faults:
    """Injected behaviour; all zero means an honest, fast runner."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0  # extra delay, uniform in [0, jitter_ms), per request
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    hang_after: int | None = None  # answer only the first N requests, then nothing
    degrade_after: int | None = None  # after N requests, answer with noise instead of the model's output
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.latency_ms >= 0 and self.jitter_ms >= 0):
            raise ValueError("latency_ms and jitter_ms must be >= 0")
        if not (0 <= self.fail_rate <= 1 and 0 <= self.drop_rate <= 1):
            raise ValueError("fail_rate and drop_rate must be in [0, 1]")
        if self.fail_rate + self.drop_rate > 1:
            raise ValueError("fail_rate + drop_rate must be <= 1")
        if self.hang_after is not None and self.hang_after < 0:
            raise ValueError("hang_after must be >= 0")
        if self.degrade_after is not None and self.degrade_after < 0:
            raise ValueError("degrade_after must be >= 0")


def _unit(seed: int, salt: str, request_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, salt, request_id): reproducible, no shared RNG state."""
    digest = hashlib.blake2b(f"{seed}\0{salt}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def decide(request_id: str, faults: Faults) -> tuple[Fate, float]:
    """The injected fate and delay (ms) of one request; --hang-after is the Scheduler's business."""
    u = _unit(faults.seed, "fate", request_id)
    if u < faults.drop_rate:
        fate = Fate.DROP
    elif u < faults.drop_rate + faults.fail_rate:
        fate = Fate.FAIL
    else:
        fate = Fate.OK
    delay = faults.latency_ms
    if faults.jitter_ms:
        delay += faults.jitter_ms * _unit(faults.seed, "jitter", request_id)
    return fate, delay


def degraded(output: Mapping[str, Any], request_id: str, seed: int) -> Mapping[str, Any]:
    """A model gone bad: its probability replaced by noise, uniform in [0, 1) and fixed by (seed,
    request_id), its label following; outputs without a probability (and errors) pass unchanged."""
    if "probability" not in output:
        return output
    p = round(_unit(seed, "degrade", request_id), 6)
    return {**output, "label": int(p >= 0.5), "probability": p}


@dataclass(frozen=True)
class _Pending:
    request_id: str
    received_ms: float
    output: Mapping[str, Any] | None
    error: str | None


ScoreFn = Callable[[list[Any]], list[Scored]]


class Scheduler:
    """Pure: turns admitted requests into score records released at their due time.

    The caller passes in the times (received_ms, a clock read after scoring, now_ms for release), so the
    same inputs always give the same outputs. Scores come out in due order, ties in admission order.
    """

    def __init__(
        self, model_id: str, model_version: str, faults: Faults, model_ids: Sequence[str] = ()
    ) -> None:
        self.model_id = model_id
        self.model_version = model_version
        # The ids each score goes out under, one record each: the model's own, or --model-ids.
        self.model_ids = tuple(model_ids) or (model_id,)
        self.faults = faults
        self.counts: Counter[str] = Counter()
        # (due_ms, seq, pending): seq is admission order, so equal due times keep request order.
        self._heap: list[tuple[float, int, _Pending]] = []
        self._seq = 0

    def admit(  # noqa: C901 - one pass over a batch: each request's fate, then one scoring call
        self,
        requests: Sequence[tuple[str, Any]],
        received_ms: float,
        score: ScoreFn,
        clock: Callable[[], float],
    ) -> None:
        """Decide each request's fate, score the ones that need it in one call, queue their scores.

        `clock` is read once after scoring, so model time counts towards the due time and latency.
        """
        planned: list[tuple[str, Fate, float, bool]] = []
        to_score: list[Any] = []
        for request_id, features in requests:
            self.counts["admitted"] += 1
            hang_after = self.faults.hang_after
            if hang_after is not None and self.counts["admitted"] > hang_after:
                self.counts[Fate.HANG.value] += 1
                continue
            fate, delay = decide(request_id, self.faults)
            self.counts[fate.value] += 1
            if fate is Fate.DROP:
                continue
            degrade_after = self.faults.degrade_after
            bad = degrade_after is not None and self.counts["admitted"] > degrade_after
            planned.append((request_id, fate, delay, bad))
            if fate is Fate.OK:
                to_score.append(features)
        if not planned:
            return
        results = self._score(score, to_score)
        done_ms = clock()
        scored = iter(results)
        for request_id, fate, delay, bad in planned:
            output: Mapping[str, Any] | None = None
            error: str | None = None
            if fate is Fate.FAIL:
                error = INJECTED_FAILURE
            else:
                result = next(scored)
                if isinstance(result, ValueError):
                    error = f"bad features: {result}"
                    self.counts["bad_features"] += 1
                elif isinstance(result, BaseException):
                    error = str(result)
                elif bad:
                    output = degraded(result, request_id, self.faults.seed)
                    self.counts["degraded"] += 1
                else:
                    output = result
            self._seq += 1
            pending = _Pending(request_id, received_ms, output, error)
            heapq.heappush(self._heap, (done_ms + delay, self._seq, pending))

    def _score(self, score: ScoreFn, rows: list[Any]) -> list[Scored | BaseException]:
        """The model's results; if the model itself blows up, every row gets that error, not the runner."""
        if not rows:
            return []
        try:
            results: list[Scored | BaseException] = list(score(rows))
        except Exception as exc:  # a model bug must cost error scores, not the process
            self.counts["model_errors"] += 1
            return [RuntimeError(f"model error: {type(exc).__name__}: {exc}")] * len(rows)
        if len(results) != len(rows):
            return [RuntimeError("model error: wrong number of results")] * len(rows)
        return results

    def next_due_ms(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        return len(self._heap)

    def release(self, now_ms: float) -> list[tuple[str, dict[str, Any]]]:
        """(request_id, score record) for every pending score due at or before now_ms, in due order; one
        record per id of ``model_ids``, in their order."""
        out: list[tuple[str, dict[str, Any]]] = []
        while self._heap and self._heap[0][0] <= now_ms:
            p = heapq.heappop(self._heap)[2]
            for model_id in self.model_ids:
                record: dict[str, Any] = {
                    "request_id": p.request_id,
                    "model_id": model_id,
                    "model_version": self.model_version,
                }
                if p.error is None:
                    record["status"] = "ok"
                    record["output"] = dict(p.output or {})
                else:
                    record["status"] = "error"
                    record["error"] = p.error[:MAX_ERROR_CHARS]
                record["scored_at_ms"] = int(now_ms)
                record["latency_ms"] = round(max(now_ms - p.received_ms, 0.0), 3)
                self.counts["error" if p.error else "ok_sent"] += 1
                out.append((p.request_id, record))
        return out

    def discard(self) -> int:
        """Forget scores not yet due (at shutdown); returns how many."""
        n = len(self._heap)
        self._heap.clear()
        return n


@dataclass(frozen=True)
class Served:
    """One more model in the process (``--also``): the model and its own injected faults."""

    model: ScoringModel
    faults: Faults


def parse_also(text: str) -> tuple[Path, Faults]:
    """``--also DIR[,key=value...]``: a model directory and its Faults; ValueError naming what is wrong."""
    head, *pairs = [x.strip() for x in text.split(",")]
    if not head:
        raise ValueError(f"--also {text!r}: starts with the model directory")
    ints = {"seed", "hang_after", "degrade_after"}
    known = {f for f in Faults.__dataclass_fields__}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or key not in known:
            raise ValueError(f"--also {text!r}: {pair!r} is not key=value of {', '.join(sorted(known))}")
        try:
            values[key] = int(raw) if key in ints else float(raw)
        except ValueError:
            raise ValueError(f"--also {text!r}: {key} must be a number, got {raw!r}") from None
    return Path(head), Faults(**values)


def poll_timeout_ms(next_due_ms: float | None, now_ms: float, idle_ms: int = IDLE_POLL_MS) -> int:
    """How long the next poll may block: until the next score is due, at most idle_ms."""
    if next_due_ms is None:
        return idle_ms
    return max(0, min(idle_ms, math.ceil(next_due_ms - now_ms)))


def encode_score(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def now_ms() -> float:
    return time.time() * 1000.0


# --- the thin Kafka half ------------------------------------------------------------------------


def run(  # noqa: C901 - the poll loop with its faults and stats; the decisions are Runner's
    model: ScoringModel,
    consumer: Any,
    producer: Any,
    *,
    scores_topic: str,
    faults: Faults,
    stop: threading.Event,
    max_seconds: float | None = None,
    clock: Callable[[], float] = now_ms,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    max_records: int = 1000,
    reconnect: Callable[[], Any] | None = None,
    rejoin_after_s: float = REJOIN_AFTER_S,
    model_ids: Sequence[str] = (),
    also: Sequence[Served] = (),
) -> Counter[str]:
    """The loop: poll, admit, release due scores, until `stop` is set or max_seconds pass.

    With `reconnect` (a function returning a new, subscribed consumer), a consumer that has no
    partitions `rejoin_after_s` after it was made is closed and replaced, so a consumer whose group
    join went wrong does not leave the runner deaf for good (kafka-python 3.0.12 was seen to lose its
    group coordinator; a new client joins at once).

    `consumer` and `producer` are confluent-kafka clients (ops.kafka_client; or fakes with
    consume/assignment/subscription and produce/poll/flush). The producer is polled every turn of the
    loop, which serves its delivery callbacks: a failed delivery is counted (``send_errors``) and the
    first few are printed. ``model_ids``: the ids its scores go out under (default: the model's own).
    ``also``: more models read the same requests, each with its own scheduler (its own faults).
    Returns the counters (the models' summed). Does not close the clients: the caller made them.
    """
    scheduler = Scheduler(model.model_id, model.model_version, faults, model_ids)
    lanes = [(model, scheduler)] + [
        (s.model, Scheduler(s.model.model_id, s.model.model_version, s.faults)) for s in also
    ]
    counts = scheduler.counts
    started = clock()
    deadline = None if max_seconds is None else started + max_seconds * 1000.0
    ready = False
    joined_at = started
    replaced: list[Any] = []
    last_wait_note = started
    last_stats = started
    last_sent = last_consumed = 0

    def on_delivery(error: Any, msg: Any) -> None:
        if error is None:
            return
        counts["send_errors"] += 1
        if counts["send_errors"] <= SEND_ERRORS_SHOWN:
            print(f"runner {model.model_id}: a score was not delivered: {error}", file=err, flush=True)

    def send_due(at_ms: float) -> None:
        for request_id, record in (r for _, lane in lanes for r in lane.release(at_ms)):
            value = encode_score(record)
            while True:
                try:
                    producer.produce(scores_topic, value, request_id.encode(), on_delivery=on_delivery)
                    break
                except BufferError:  # librdkafka's local queue is full: let it drain
                    producer.poll(0.05)
            counts["sent"] += 1
        producer.poll(0)  # serves delivery callbacks

    # Consumer events (a missing topic, a lost connection: librdkafka recovers by itself), each kind
    # printed at most once a minute.
    events = kafka_client.ClientErrors(f"runner {model.model_id} consumer", err)

    while not stop.is_set():
        now = clock()
        if deadline is not None and now >= deadline:
            break
        due = [d for _, lane in lanes if (d := lane.next_due_ms()) is not None]
        timeout_s = poll_timeout_ms(min(due, default=None), now) / 1000.0
        batch = kafka_client.consume_ready(consumer, max_records, timeout_s)
        if not ready:
            if consumer.assignment():
                ready = True
                print(f"runner {model.model_id} ready", file=out, flush=True)
            elif reconnect is not None and clock() - joined_at >= rejoin_after_s * 1000.0:
                print(
                    f"runner {model.model_id}: no partitions after {rejoin_after_s:.0f} s; "
                    "replacing the consumer with a new one",
                    file=err,
                    flush=True,
                )
                consumer.close()
                consumer = reconnect()
                replaced.append(consumer)
                joined_at = clock()
                counts["consumer_replaced"] += 1
            elif clock() - last_wait_note >= WAIT_NOTE_EVERY_S * 1000.0:
                last_wait_note = clock()
                waited = (last_wait_note - started) / 1000.0
                print(
                    f"runner {model.model_id}: no partitions assigned yet after {waited:.0f} s "
                    f"(subscribed to {sorted(consumer.subscription() or [])})",
                    file=err,
                    flush=True,
                )
        if batch:
            received = clock()
            requests: list[tuple[str, Any]] = []
            for record in kafka_client.records(batch, events):
                counts["consumed"] += 1
                try:
                    requests.append(parse_request(record.value()))
                except MalformedRequest:
                    counts["malformed"] += 1
            for m, lane in lanes:
                lane.admit(requests, received, m.score_batch, clock)
        now = clock()
        send_due(now)
        since = now - last_stats
        busy = counts["consumed"] != last_consumed or counts["sent"] != last_sent
        if since >= (STATS_EVERY_S if busy else STATS_IDLE_EVERY_S) * 1000.0:
            rate = (counts["sent"] - last_sent) * 1000.0 / since
            pending = sum(lane.pending() for _, lane in lanes)
            print(_stats_line(model.model_id, counts, pending, rate), file=err, flush=True)
            last_stats, last_sent, last_consumed = now, counts["sent"], counts["consumed"]

    send_due(clock())
    counts["discarded_at_stop"] += sum(lane.discard() for _, lane in lanes)
    counts["undelivered_at_stop"] += producer.flush(10)
    for c in replaced:  # the caller closes the consumer it passed in; these ones are ours
        c.close()
    print(_stats_line(model.model_id, counts, 0, None, final=True), file=err, flush=True)
    for m, lane in lanes[1:]:
        print(_stats_line(m.model_id, lane.counts, 0, None, final=True), file=err, flush=True)
    total = Counter(counts)
    for _, lane in lanes[1:]:
        total.update(lane.counts)
    return total


_STATS_KEYS = (
    "consumed",
    "malformed",
    "sent",
    "ok_sent",
    "error",
    "bad_features",
    "fail",
    "drop",
    "hang",
    "degraded",
    "model_errors",
    "send_errors",
    "consumer_replaced",
)


def warm_up(model: ScoringModel) -> None:
    """Score one dummy row, so the first real batch does not pay for lazy initialisation (~0.3 s)."""
    model.score_batch([dict.fromkeys(model.features, 0)])


def settle_in(models: Sequence[ScoringModel]) -> None:
    """Once the models are loaded, before serving: native thread pools at one thread, each model warmed up,
    what is loaded out of full collections.

    One thread per runner: batches are small and several runners share the cores, where OpenMP's
    spinning threads made HistGradientBoosting 10-50x slower; after ``load()``, as the libraries must be
    loaded. The libraries and models loaded so far live as long as the process: frozen out of the garbage
    collector's full collections, which took ~54 ms over them at 833/s, pausing every model it serves.
    """
    threadpool_limits(limits=1)
    for m in models:
        warm_up(m)
    gc.freeze()


def _stats_line(
    model_id: str, counts: Mapping[str, int], pending: int, rate: float | None, final: bool = False
) -> str:
    parts = [f"{k}={counts.get(k, 0)}" for k in _STATS_KEYS]
    if final:
        parts.append(f"discarded_at_stop={counts.get('discarded_at_stop', 0)}")
        parts.append(f"undelivered_at_stop={counts.get('undelivered_at_stop', 0)}")
    else:
        parts.append(f"pending={pending}")
    if rate is not None:
        parts.append(f"rate={rate:.0f}/s")
    return f"runner {model_id} {'final' if final else 'stats'}: " + " ".join(parts)


def _model_ids(text: str) -> tuple[str, ...]:
    """--model-ids: distinct model ids, as a score's model_id must be."""
    ids = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in ids if not MODEL_ID_RE.match(x)]
    if not ids or bad:
        raise argparse.ArgumentTypeError(
            f"model ids of 1-64 characters of [A-Za-z0-9._-], comma-separated; got {(bad or [text])[0]!r}"
        )
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"a model id listed twice in {text!r}")
    return ids


def _instance_id(text: str) -> str:
    """Kafka's rule for a group.instance.id (that of topic names): checked here, so a bad one fails at
    start with one line rather than at the group join."""
    if not INSTANCE_ID.fullmatch(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r}: up to 249 characters of a-z A-Z 0-9 . _ - (Kafka's rule for group.instance.id)"
        )
    return text


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Faults]:
    p = argparse.ArgumentParser(prog="python -m runners.runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a directory written by runners.train")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--requests-topic", default=TOPIC_REQUESTS)
    p.add_argument("--scores-topic", default=TOPIC_SCORES)
    p.add_argument(
        "--group",
        default=None,
        help="consumer group (default: runner-<model_id>, or of the first --model-ids)",
    )
    p.add_argument(
        "--instance-id",
        type=_instance_id,
        default=None,
        help="a static member of the group (Kafka's group.instance.id): restarted with the same id, it "
        "takes its partitions back at once instead of after the dead one's session times out (45 s); one "
        "process per id, the newer fences the older out",
    )
    p.add_argument(
        "--model-ids",
        type=_model_ids,
        default=(),
        help="serve these model ids (comma-separated) instead of the model's own: one score per id per request",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="DIR[,key=value...]",
        help="serve this model too, from this process (repeatable); keys: the fault flags below with _ "
        "(latency_ms=2,seed=1)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="injected delay per score")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra delay, uniform in [0, J)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests given an error score")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of requests given no score")
    p.add_argument("--hang-after", type=int, default=None, help="answer only the first N requests")
    p.add_argument(
        "--degrade-after", type=int, default=None, help="after N requests, answer with noise (a bad model)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for which requests fail/drop, jitter and noise")
    p.add_argument("--max-seconds", type=float, default=None, help="exit this long after connecting")
    kafka_client.add_config_argument(p)
    args = p.parse_args(argv)
    try:
        faults = Faults(
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            fail_rate=args.fail_rate,
            drop_rate=args.drop_rate,
            hang_after=args.hang_after,
            degrade_after=args.degrade_after,
            seed=args.seed,
        )
        args.also = [parse_also(text) for text in args.also]
    except ValueError as exc:
        p.error(str(exc))
    return args, faults


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, load the model, connect, run until a signal or --max-seconds."""
    args, faults = _parse_args(argv)
    kafka_client.use_config_file(args.kafka_config, "runner")
    kafka_admin.require_broker(args.bootstrap, "runner")  # fail fast with one line if Kafka is unreachable
    # Handlers first: a stop during the slow start-up (imports, model load) then ends run() at once.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    model = load(args.model_dir)
    also = [Served(load(d), f) for d, f in args.also]
    ids = [model.model_id] + [s.model.model_id for s in also]
    if len(set(ids)) != len(ids) or (also and args.model_ids):
        print("runner: --also needs models of distinct ids, and no --model-ids", file=sys.stderr)
        return 2
    settle_in([model] + [s.model for s in also])
    if stop.is_set():
        return 0

    bootstrap = ",".join(s.strip() for s in args.bootstrap.split(",") if s.strip())
    client_id = f"runner-{model.model_id}"
    # Serving other ids, it reads every request in a group of its own, not the model's own runner's.
    serves = args.model_ids[0] if args.model_ids else model.model_id

    static = {} if args.instance_id is None else {"group_instance_id": args.instance_id}

    def new_consumer() -> kafka_client.Consumer:
        return kafka_client.consumer(
            bootstrap,
            args.group or runner_group(serves),
            topics=[args.requests_topic],
            client_id=client_id,
            enable_auto_commit=True,
            **static,
        )

    consumer = new_consumer()
    producer = kafka_client.producer(bootstrap, client_id=client_id)
    try:
        run(
            model,
            consumer,
            producer,
            scores_topic=args.scores_topic,
            faults=faults,
            stop=stop,
            max_seconds=args.max_seconds,
            reconnect=new_consumer,
            model_ids=args.model_ids,
            also=also,
        )
    except KafkaException as e:  # fatal: e.g. fenced by a runner of the same --instance-id
        print(f"runner {model.model_id}: stopping on a fatal Kafka error: {e.args[0].str()}", file=sys.stderr)
        return 1
    finally:
        producer.finish(timeout_s=10)
        # Commits the offsets of what was consumed; leaves the group unless it is a static member,
        # whose partitions wait for it to come back (or for its session to time out).
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

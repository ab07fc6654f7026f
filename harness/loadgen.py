"""Open-loop load generator and result collector: what a client of the rendezvous server sees.

Open loop means requests go out at their scheduled times whatever the answers do, so a slow server shows
up as latency rather than as a politely reduced load; if this process itself falls behind the schedule,
the lag is measured and reported instead of silently lowering the rate.

The core is pure (request building, the schedule, malformed-record plans, the report from lists of sent
requests and received results); `run_load` is the thin Kafka shell around it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ops import kafka_admin, kafka_client
from ops.latency import LatencySummary, format_ms, format_summary, percentile, summarize
from udfs.names import TOPIC_REQUESTS, TOPIC_SCORES
from udfs.wire_in import MAX_DEADLINE_MS

Features = dict[str, Any]
FeaturesFn = Callable[[Any], Features]  # (numpy Generator) -> features
Progress = Callable[[int, int, float], None]  # (sent, answered, elapsed_s)

# Same rules as schemas/request.schema.json; checked here so the builder cannot emit a request the job
# would dead-letter. \Z rather than $: $ also matches before a trailing newline.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
# A run id goes into request ids and into the fresh topic name, so it must suit both.
RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

# Feature dicts are drawn (and serialised) before the timed loop so sampling cost does not eat into the
# send rate; past this many they are reused round-robin (the models do not care; start-up time does).
FEATURE_POOL = 2048
# How many unanswered request ids the report lists by name (the count is always exact).
UNANSWERED_SAMPLE = 20
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


# --- pure core ------------------------------------------------------------------------------------------


def build_request(
    request_id: str,
    return_address: str,
    features: Features,
    now_ms: int,
    deadline_ms: int | None = None,
) -> dict[str, Any]:
    """A request record as schemas/README.md defines it; ValueError for anything the schema would reject."""
    if not isinstance(request_id, str) or not REQUEST_ID_RE.match(request_id):
        raise ValueError(f"bad request_id {request_id!r}")
    if not isinstance(return_address, str) or not TOPIC_RE.match(return_address):
        raise ValueError(f"bad return_address {return_address!r}")
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError(f"now_ms must be a non-negative int, got {now_ms!r}")
    for k, v in features.items():
        if not isinstance(k, str):
            raise ValueError(f"feature names must be strings, got {k!r}")
        if not (v is None or isinstance(v, str | bool | int | float)):
            raise ValueError(f"feature {k!r}: {type(v).__name__} is not a JSON scalar")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"feature {k!r} is not finite: {v}")
    req: dict[str, Any] = {
        "request_id": request_id,
        "return_address": return_address,
        "sent_at_ms": now_ms,
        "features": features,
    }
    if deadline_ms is not None:
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int):
            raise ValueError(f"deadline_ms must be an int, got {deadline_ms!r}")
        if not 1 <= deadline_ms <= MAX_DEADLINE_MS:
            raise ValueError(f"deadline_ms must be within [1, {MAX_DEADLINE_MS}], got {deadline_ms}")
        req["deadline_ms"] = deadline_ms
    return req


def encode_request(
    request_id: str, return_address: str, features_json: str, now_ms: int, deadline_ms: int | None = None
) -> bytes:
    """The bytes of build_request(...) for the send loop, with features serialised once beforehand.

    Only for arguments build_request has accepted: ids and topic names never need JSON escaping.
    """
    tail = "" if deadline_ms is None else f',"deadline_ms":{deadline_ms}'
    return (
        f'{{"request_id":"{request_id}","return_address":"{return_address}","sent_at_ms":{now_ms},'
        f'"features":{features_json}{tail}}}'
    ).encode()


def request_ids(run_id: str, count: int) -> list[str]:
    """`<run_id>-<seq>`: unique per run, and the run is visible in every request id."""
    return [f"{run_id}-{i}" for i in range(count)]


def new_run_id() -> str:
    """Sortable by start time, unique enough across concurrent runs, safe in ids and topic names."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def default_return_address(run_id: str) -> str:
    """A fresh topic per run, so the collector sees only its own answers: ``results.load-<run id>``, or
    under the client principal's own prefix when the process authenticates (``--kafka-config``)."""
    return f"{kafka_client.results_prefix()}load-{run_id}"


def schedule(count: int, rate: float, start: float = 0.0) -> list[float]:
    """Send times (seconds) of `count` requests at `rate` per second: evenly spaced, first at `start`."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if not rate > 0 or math.isinf(rate):
        raise ValueError("rate must be a positive finite number")
    return [start + i / rate for i in range(count)]


def spread_positions(n: int, count: int) -> list[int]:
    """Where n extra records go among `count` requests: evenly, record j right before request pos[j]."""
    return [(j + 1) * count // (n + 1) for j in range(n)]


@dataclass(frozen=True)
class BadRecord:
    """A deliberately malformed record; `kind` is the dead-letter reason the job should give it."""

    topic: str
    key: bytes
    value: bytes
    kind: str


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# Request-side malformations, each named by the dead-letter reason it should earn.
_BAD_REQUEST_KINDS = (
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "bad_field",
    "bad_request_id",
    "unknown_field",
    "bad_return_address",
)
_BAD_SCORE_KINDS = ("not_json", "missing_field", "bad_output", "bad_field")


def _bad_request(kind: str, rid: str, return_address: str, now_ms: int) -> bytes:
    good = {"request_id": rid, "return_address": return_address, "sent_at_ms": now_ms, "features": {"x": 1}}
    if kind == "not_utf8":
        return b'\xff\xfe{"request_id": "' + rid.encode() + b'"}'
    if kind == "not_json":
        return b"this is not json {" + rid.encode()
    if kind == "not_object":
        return _dumps([rid, return_address])
    if kind == "missing_field":
        return _dumps({k: v for k, v in good.items() if k != "return_address"})
    if kind == "bad_field":
        return _dumps({**good, "sent_at_ms": "soon"})
    if kind == "bad_request_id":
        return _dumps({**good, "request_id": rid + "-" + "x" * 128})
    if kind == "unknown_field":
        return _dumps({**good, "priority": "high"})
    if kind == "bad_return_address":
        return _dumps({**good, "return_address": "no spaces allowed!"})
    raise ValueError(kind)


def _bad_score(kind: str, rid: str, now_ms: int) -> bytes:
    good = {
        "request_id": rid,
        "model_id": "loadgen-bad",
        "model_version": "0",
        "status": "ok",
        "output": {"label": 1, "probability": 0.9},
        "scored_at_ms": now_ms,
        "latency_ms": 1.0,
    }
    if kind == "not_json":
        return b"{'model_id': 'single quotes are not JSON'}"
    if kind == "missing_field":
        return _dumps({k: v for k, v in good.items() if k != "model_id"})
    if kind == "bad_output":
        return _dumps({**good, "output": {"probability": 1.5}})
    if kind == "bad_field":
        return _dumps({**good, "status": "maybe"})
    raise ValueError(kind)


def bad_record_plan(
    n: int,
    *,
    run_id: str,
    return_address: str,
    now_ms: int,
    with_scores: bool = True,
    requests_topic: str = TOPIC_REQUESTS,
    scores_topic: str = TOPIC_SCORES,
) -> list[BadRecord]:
    """n malformed records cycling through every kind (scores get every third one when with_scores)."""
    kinds: list[tuple[bool, str]] = [(False, k) for k in _BAD_REQUEST_KINDS]
    if with_scores:
        kinds = _interleave(kinds, [(True, k) for k in _BAD_SCORE_KINDS])
    out = []
    for j in range(n):
        is_score, kind = kinds[j % len(kinds)]
        rid = f"{run_id}-bad-{j}"
        if is_score:
            out.append(BadRecord(scores_topic, rid.encode(), _bad_score(kind, rid, now_ms), kind))
        else:
            value = _bad_request(kind, rid, return_address, now_ms)
            out.append(BadRecord(requests_topic, rid.encode(), value, kind))
    return out


def _interleave(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """a0 a1 b0 a2 a3 b1 ...: spreads the shorter list b through a, keeping both orders."""
    out: list[Any] = []
    step = max(1, math.ceil(len(a) / max(1, len(b))))
    bi = 0
    for i, x in enumerate(a):
        out.append(x)
        if (i + 1) % step == 0 and bi < len(b):
            out.append(b[bi])
            bi += 1
    out.extend(b[bi:])
    return out


@dataclass(frozen=True)
class SentRequest:
    """One request as the generator sent it; times on the run's clock (epoch ms, sub-ms precision)."""

    request_id: str
    sent_ms: float
    deadline_ms: int | None = None
    lag_ms: float = 0.0  # how far behind its scheduled time it went out


@dataclass(frozen=True)
class ReceivedResult:
    """One record read from the return address; `record` is None when it was not a JSON object."""

    consumed_ms: float
    record: dict[str, Any] | None

    @property
    def request_id(self) -> str | None:
        rid = self.record.get("request_id") if self.record is not None else None
        return rid if isinstance(rid, str) else None


def parse_result(raw: bytes | None, consumed_ms: float) -> ReceivedResult:
    """Decode a result record leniently: the collector must count garbage, not die on it."""
    try:
        obj = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        obj = None
    return ReceivedResult(consumed_ms=consumed_ms, record=obj if isinstance(obj, dict) else None)


def _label(v: Any) -> str:
    """A counter key: no_answer results have model_id null."""
    return "(none)" if v is None else str(v)


def _fingerprint(record: dict[str, Any]) -> str:
    """What makes two results for one request the same answer (timestamps may legitimately differ)."""
    return json.dumps(
        [record.get("model_id"), record.get("output"), record.get("reason")], sort_keys=True, default=str
    )


@dataclass
class LoadReport:
    """What one load run saw. Counts refer to this run's request ids unless named otherwise."""

    run_id: str
    requests_topic: str
    return_address: str
    sent: int
    answered: int
    unanswered: int
    unanswered_sample: list[str]
    results_received: int  # every record read from the return address
    duplicates: int  # request ids with more than one result
    conflicting: int  # ... of which at least two differ in model_id/output/reason
    foreign: int  # results whose request id this run never sent
    malformed_results: int  # not a JSON object with a string request_id
    invalid_results: int | None  # this run's results failing result.schema.json (None: not checked)
    wins_by_model: dict[str, int]
    by_reason: dict[str, int]
    by_trigger: dict[str, int]
    latency_ms: LatencySummary  # client-side: first result consumed - request sent
    deadline_checked: int  # answered requests that had a deadline
    deadline_misses: int  # ... answered later than it
    target_rate: float
    achieved_rate: float | None
    send_duration_s: float
    max_send_lag_ms: float
    p99_send_lag_ms: float
    send_errors: int
    bad_sent: dict[str, int] = field(default_factory=dict)  # per topic
    bad_sent_by_kind: dict[str, int] = field(default_factory=dict)  # "topic:kind"
    elapsed_s: float = 0.0
    over_budget: int | None = None  # answered later than budget_ms (None: no budget given)
    # Where the end-to-end time went, from the result's own timestamps (LEGS; same machine, same clock):
    # for every answer, and for the answers later than their deadline only.
    legs_ms: dict[str, LatencySummary] = field(default_factory=dict)
    late_legs_ms: dict[str, LatencySummary] = field(default_factory=dict)
    # The first requests sent (compute_report's lead_in): counted, but their latency only here.
    lead_in: int = 0
    lead_in_latency_ms: LatencySummary | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the latency summaries flattened to plain numbers)."""
        d = asdict(self)
        d["latency_ms"] = self.latency_ms.to_dict()
        d["lead_in_latency_ms"] = self.lead_in_latency_ms.to_dict() if self.lead_in_latency_ms else None
        d["legs_ms"] = {k: v.to_dict() for k, v in self.legs_ms.items()}
        d["late_legs_ms"] = {k: v.to_dict() for k, v in self.late_legs_ms.items()}
        return d


# The three legs of an answer's latency, from the timestamps a result carries (result.schema.json):
# request produced (sent_at_ms) -> read by the job (received_at_ms) -> decided (decided_at_ms) ->
# result consumed by the client. "in the job" includes the policy's own waits (by design).
LEG_TO_JOB = "to the job"
LEG_IN_JOB = "in the job"
LEG_BACK = "back to the client"
LEGS = (LEG_TO_JOB, LEG_IN_JOB, LEG_BACK)


def result_legs(sent_ms: float, consumed_ms: float, record: dict[str, Any]) -> dict[str, float] | None:
    """An answer's latency split into ``LEGS`` (None: the result lacks a timestamp)."""
    received, decided = record.get("received_at_ms"), record.get("decided_at_ms")
    if not isinstance(received, int | float) or not isinstance(decided, int | float):
        return None
    return {LEG_TO_JOB: received - sent_ms, LEG_IN_JOB: decided - received, LEG_BACK: consumed_ms - decided}


def compute_report(
    sent: Sequence[SentRequest],
    received: Iterable[ReceivedResult],
    *,
    run_id: str,
    requests_topic: str,
    return_address: str,
    target_rate: float,
    send_errors: int = 0,
    bad: Sequence[BadRecord] = (),
    elapsed_s: float = 0.0,
    is_valid_result: Callable[[dict[str, Any]], bool] | None = None,
    budget_ms: float | None = None,
    lead_in: int = 0,
) -> LoadReport:
    """The report from what was sent and what came back; pure so every number is unit-testable.

    ``budget_ms`` counts answers later than it without putting a deadline into the requests (a policy
    that waits for every model must not be cut short by a per-request deadline). The first ``lead_in``
    requests sent are counted (answered, lost, repeated) but their latency is summarized apart
    (``lead_in_latency_ms``): the run's first seconds at a new rate, kept out of its steady state.
    """
    by_id = {s.request_id: s for s in sent}
    leading = {s.request_id for s in sent[:lead_in]}
    results: dict[str, list[ReceivedResult]] = defaultdict(list)
    total = foreign = malformed = invalid = 0
    for r in received:
        total += 1
        rid = r.request_id
        if rid is None:
            malformed += 1
            continue
        if rid not in by_id:
            foreign += 1
            continue
        results[rid].append(r)
        if is_valid_result is not None and r.record is not None and not is_valid_result(r.record):
            invalid += 1

    latencies: list[float] = []
    lead_latencies: list[float] = []
    legs: dict[str, list[float]] = {leg: [] for leg in LEGS}
    late_legs: dict[str, list[float]] = {leg: [] for leg in LEGS}
    wins: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    triggers: Counter[str] = Counter()
    duplicates = conflicting = checked = misses = 0
    for rid, rs in results.items():
        first = min(rs, key=lambda r: r.consumed_ms)
        rec = first.record or {}
        lat = first.consumed_ms - by_id[rid].sent_ms
        wins[_label(rec.get("model_id"))] += 1
        reasons[_label(rec.get("reason"))] += 1
        triggers[_label(rec.get("trigger"))] += 1
        if len(rs) > 1:
            duplicates += 1
            if len({_fingerprint(r.record or {}) for r in rs}) > 1:
                conflicting += 1
        if rid in leading:
            lead_latencies.append(lat)
            continue
        latencies.append(lat)
        split = result_legs(by_id[rid].sent_ms, first.consumed_ms, rec)
        deadline = by_id[rid].deadline_ms
        late = deadline is not None and lat > deadline
        for leg, ms in (split or {}).items():
            legs[leg].append(ms)
            if late:
                late_legs[leg].append(ms)
        if deadline is not None:
            checked += 1
            misses += late

    unanswered = [s.request_id for s in sent if s.request_id not in results]
    lags = sorted(s.lag_ms for s in sent)
    times = [s.sent_ms for s in sent]
    duration_ms = (max(times) - min(times)) if times else 0.0
    # n evenly spaced sends span n-1 intervals, so this equals the target rate when on schedule.
    achieved = (len(sent) - 1) * 1000.0 / duration_ms if len(sent) > 1 and duration_ms > 0 else None
    bad_by_topic = Counter(b.topic for b in bad)
    bad_by_kind = Counter(f"{b.topic}:{b.kind}" for b in bad)
    return LoadReport(
        run_id=run_id,
        requests_topic=requests_topic,
        return_address=return_address,
        sent=len(sent),
        answered=len(results),
        unanswered=len(unanswered),
        unanswered_sample=unanswered[:UNANSWERED_SAMPLE],
        results_received=total,
        duplicates=duplicates,
        conflicting=conflicting,
        foreign=foreign,
        malformed_results=malformed,
        invalid_results=invalid if is_valid_result is not None else None,
        wins_by_model=dict(wins.most_common()),
        by_reason=dict(reasons.most_common()),
        by_trigger=dict(triggers.most_common()),
        latency_ms=summarize(latencies),
        deadline_checked=checked,
        deadline_misses=misses,
        target_rate=float(target_rate),
        achieved_rate=achieved,
        send_duration_s=duration_ms / 1000.0,
        max_send_lag_ms=lags[-1] if lags else 0.0,
        p99_send_lag_ms=percentile(lags, 99.0) if lags else 0.0,
        send_errors=send_errors,
        bad_sent=dict(bad_by_topic),
        bad_sent_by_kind=dict(sorted(bad_by_kind.items())),
        elapsed_s=elapsed_s,
        over_budget=None if budget_ms is None else sum(lat > budget_ms for lat in latencies),
        legs_ms={leg: summarize(v) for leg, v in legs.items() if v},
        late_legs_ms={leg: summarize(v) for leg, v in late_legs.items() if v},
        lead_in=len(leading),
        lead_in_latency_ms=summarize(lead_latencies) if leading else None,
    )


def format_legs(legs: dict[str, LatencySummary]) -> str:
    """'to the job p50 2.1 / p99 9.0 ms; in the job ...' (or '-' with no timestamps)."""
    return (
        "; ".join(
            f"{leg} p50 {format_ms(s.p50)} / p99 {format_ms(s.p99)} ms" for leg, s in legs.items() if s.count
        )
        or "-"
    )


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def format_report(r: LoadReport) -> str:
    """The human summary the CLI prints."""
    achieved = f"{r.achieved_rate:.1f}/s" if r.achieved_rate is not None else "-"
    lines = [
        f"run {r.run_id}: sent {r.sent} requests to '{r.requests_topic}' at {r.target_rate:g}/s "
        f"(achieved {achieved}, max send lag {r.max_send_lag_ms:.1f} ms, p99 {r.p99_send_lag_ms:.1f} ms, "
        f"{r.send_errors} send errors)",
        f"answers on '{r.return_address}': {r.answered}/{r.sent} answered, {r.unanswered} unanswered, "
        f"{r.duplicates} duplicated ({r.conflicting} conflicting), {r.foreign} foreign, "
        f"{r.malformed_results} malformed"
        + (f", {r.invalid_results} failing result.schema.json" if r.invalid_results is not None else ""),
        f"latency (client side): {format_summary(r.latency_ms)}",
        f"where it went: {format_legs(r.legs_ms)}",
    ]
    if r.deadline_checked:
        share = 100.0 * r.deadline_misses / r.deadline_checked
        lines.append(f"deadline misses: {r.deadline_misses} of {r.deadline_checked} answered ({share:.2f}%)")
    lines += [
        f"wins by model: {_counts(r.wins_by_model)}",
        f"reasons: {_counts(r.by_reason)}; triggers: {_counts(r.by_trigger)}",
    ]
    if r.bad_sent:
        lines.append(f"malformed records sent: {_counts(r.bad_sent)}")
    if r.unanswered_sample:
        lines.append(f"unanswered e.g.: {', '.join(r.unanswered_sample[:5])}")
    lines.append(f"elapsed {r.elapsed_s:.1f} s")
    return "\n".join(lines)


# --- Kafka shell ----------------------------------------------------------------------------------------


class _Clock:
    """Epoch ms from a monotonic counter: sub-ms precise and immune to wall-clock steps mid-run."""

    def __init__(self) -> None:
        self._wall0 = time.time() * 1000.0
        self._perf0 = time.perf_counter()

    def now_ms(self) -> float:
        return self._wall0 + (time.perf_counter() - self._perf0) * 1000.0


def _default_features_fn() -> FeaturesFn:
    """runners.data is imported only when needed: tests inject their own features."""
    from runners.data import sample_features

    return sample_features


def _result_validator() -> Callable[[dict[str, Any]], bool] | None:
    """result.schema.json as a predicate, or None when the schema or jsonschema is unavailable."""
    path = SCHEMAS_DIR / "result.schema.json"
    try:
        from jsonschema import Draft202012Validator

        validator = Draft202012Validator(json.loads(path.read_text()))
    except (ImportError, OSError):
        return None
    return validator.is_valid


def _create_topic(bootstrap: str, topic: str) -> None:
    """Create the run's fresh return topic (one partition); an existing one is fine."""
    kafka_admin.create_topics(bootstrap, [topic])


class _Collector:
    """Reads the return address on a background thread; positioned before the first request goes out."""

    def __init__(
        self, bootstrap: str, topic: str, expected: frozenset[str], from_beginning: bool, clock: _Clock
    ) -> None:
        self.received: list[ReceivedResult] = []
        self._expected = expected
        self._answered: set[str] = set()
        self._clock = clock
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._consumer = kafka_client.consumer(
            bootstrap, client_id="rendezvous-loadgen-collector", isolation=kafka_client.READ_COMMITTED
        )
        try:
            if from_beginning:
                self._consumer.assign_all([topic])
            else:  # the end offsets now, resolved: no answer sent later can be skipped
                self._consumer.assign_at_end([topic])
        except BaseException:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._run, name="loadgen-collector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def answered(self) -> int:
        return len(self._answered)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._consumer.take(1000, 0.05)
                now = self._clock.now_ms()
                for rec in batch:
                    r = parse_result(rec.value(), now)
                    self.received.append(r)
                    rid = r.request_id
                    if rid in self._expected:
                        self._answered.add(rid)
        except BaseException as e:  # surfaced by stop(); a dead collector must not look like silence
            self.error = e
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run_load(
    bootstrap: str,
    *,
    count: int,
    rate: float,
    requests_topic: str = TOPIC_REQUESTS,
    scores_topic: str = TOPIC_SCORES,
    return_address: str | None = None,
    deadline_ms: int | None = None,
    bad_records: int = 0,
    bad_topic_scores: bool = True,
    progress: Progress | None = None,
    settle_ms: int = 2000,
    grace_ms: int = 200,
    run_id: str | None = None,
    features_fn: FeaturesFn | None = None,
    seed: int | None = None,
    linger_ms: int = 1,
    validate_results: bool = True,
    budget_ms: float | None = None,
    lead_in: int = 0,
    keep: Callable[[list[SentRequest], list[ReceivedResult]], None] | None = None,
) -> LoadReport:
    """Send `count` requests at `rate`/s, open loop, and collect their results (``lead_in``: see
    compute_report; ``keep``: given every request as sent and every result as received, for a caller
    that looks at them one by one).

    Collection ends when every request has a result (plus `grace_ms` to catch duplicates) or
    `settle_ms` + the deadline after the last send. Without `return_address` a fresh topic
    `results.load-<run_id>` (`default_return_address`) is created so that nothing else's answers mix in.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if bad_records < 0:
        raise ValueError("bad_records must be >= 0")
    run_id = run_id or new_run_id()
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"run_id must match {RUN_ID_RE.pattern}, got {run_id!r}")
    times = schedule(count, rate)  # also validates rate
    fresh = return_address is None
    address = default_return_address(run_id) if return_address is None else return_address
    if not TOPIC_RE.match(address):
        raise ValueError(f"bad return address {address!r}")
    ids = request_ids(run_id, count)
    sample = features_fn or _default_features_fn()
    rng = np.random.default_rng(seed)
    pool = [sample(rng) for _ in range(min(count, FEATURE_POOL))]
    for features in pool:  # validates the features, the address and the deadline once, before any I/O
        build_request(ids[-1], address, features, 0, deadline_ms)
    pool_json = [json.dumps(f, separators=(",", ":"), allow_nan=False) for f in pool]
    keys = [rid.encode() for rid in ids]
    clock = _Clock()
    bad = bad_record_plan(
        bad_records,
        run_id=run_id,
        return_address=address,
        now_ms=int(clock.now_ms()),
        with_scores=bad_topic_scores,
        requests_topic=requests_topic,
        scores_topic=scores_topic,
    )
    bad_at = spread_positions(len(bad), count)

    if fresh:
        _create_topic(bootstrap, address)
    sent: list[SentRequest] = []
    # Keys are placed by librdkafka's murmur2_random partitioner: the partitions Java's picks.
    producer = kafka_client.producer(bootstrap, client_id="rendezvous-loadgen", linger_ms=linger_ms)
    send = producer.send
    # The generator's own garbage collector stays out of the measured window: a full collection over
    # a run's tens of thousands of sent and received records paused this process (its sending and its
    # result collector) for up to ~110 ms at 833/s, which showed up as the answers' "back" leg.
    # Nothing the run keeps forms a reference cycle; the collector runs again when the run is over.
    gc_was_enabled = gc.isenabled()
    gc.disable()

    try:
        # Fetch topic metadata now: records sent before it arrives would wait for it, and the run
        # would start behind.
        for topic in {requests_topic, *(b.topic for b in bad)}:
            kafka_client.partitions(producer, topic)
        collector = _Collector(bootstrap, address, frozenset(ids), from_beginning=fresh, clock=clock)
        start_ms = last_progress = clock.now_ms()

        def tick(now_ms: float) -> None:
            nonlocal last_progress
            if progress is not None and now_ms - last_progress >= 1000.0:
                last_progress = now_ms
                progress(len(sent), collector.answered(), (now_ms - start_ms) / 1000.0)

        collector.start()
        try:
            bi = 0
            t0 = clock.now_ms()
            for i, rid in enumerate(ids):
                while bi < len(bad) and bad_at[bi] <= i:
                    send(bad[bi].topic, bad[bi].value, bad[bi].key)
                    bi += 1
                target = t0 + times[i] * 1000.0
                now = clock.now_ms()
                if now < target:
                    time.sleep((target - now) / 1000.0)
                    now = clock.now_ms()
                value = encode_request(rid, address, pool_json[i % len(pool_json)], int(now), deadline_ms)
                send(requests_topic, value, keys[i])
                sent.append(SentRequest(rid, now, deadline_ms, lag_ms=now - target))
                tick(now)
            for b in bad[bi:]:
                send(b.topic, b.value, b.key)
            producer.flush(30)

            last_send = sent[-1].sent_ms if sent else clock.now_ms()
            give_up = max(clock.now_ms(), last_send + settle_ms + (deadline_ms or 0))
            all_in_at: float | None = None
            while True:
                now = clock.now_ms()
                tick(now)
                if collector.error is not None or now >= give_up:
                    break
                if collector.answered() >= count:
                    all_in_at = all_in_at or now
                    if now - all_in_at >= grace_ms:
                        break
                time.sleep(0.01)
        finally:
            collector.stop()
    finally:
        producer.finish(timeout_s=10)
        if gc_was_enabled:
            gc.enable()
    if collector.error is not None:
        raise RuntimeError("result collector failed") from collector.error
    end_ms = clock.now_ms()
    if progress is not None:
        progress(len(sent), collector.answered(), (end_ms - start_ms) / 1000.0)
    received = list(collector.received)
    if keep is not None:
        keep(sent, received)
    return compute_report(
        sent,
        received,
        run_id=run_id,
        requests_topic=requests_topic,
        return_address=address,
        target_rate=rate,
        send_errors=producer.delivery_errors.count,
        bad=bad,
        elapsed_s=(end_ms - start_ms) / 1000.0,
        is_valid_result=_result_validator() if validate_results else None,
        budget_ms=budget_ms,
        lead_in=lead_in,
    )


# --- CLI ------------------------------------------------------------------------------------------------


def progress_line(sent: int, answered: int, total: int, elapsed_s: float, width: int = 30) -> str:
    """`[#####.....] sent 1200/2000 answered 1100 3.2s`: the bar tracks answers, the laggard figure."""
    frac = answered / total if total else 1.0
    filled = min(width, int(round(frac * width)))
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] sent {sent}/{total} answered {answered} {elapsed_s:.1f}s"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.loadgen --bootstrap HOST:PORT --count N --rate R [...]`."""
    p = argparse.ArgumentParser(prog="python -m harness.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    p.add_argument("--deadline-ms", type=int, default=None, help="per-request deadline_ms to send")
    p.add_argument("--bad", type=int, default=0, help="malformed records to mix in (for dead letters)")
    p.add_argument("--no-bad-scores", action="store_true", help="malformed records only on requests")
    p.add_argument("--requests-topic", default=TOPIC_REQUESTS)
    p.add_argument("--scores-topic", default=TOPIC_SCORES)
    p.add_argument(
        "--return-address",
        default=None,
        help="default: a fresh results.load-<run id> topic (with --kafka-config: results.<user>.load-<run id>, "
        "under the client's own prefix)",
    )
    p.add_argument("--settle-ms", type=int, default=2000)
    p.add_argument("--run-id", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--check", action="store_true", help="exit 1 on unanswered, duplicated or malformed results"
    )
    kafka_client.add_config_argument(p)
    a = p.parse_args(argv)

    kafka_client.use_config_file(a.kafka_config, "load generator")
    kafka_admin.require_broker(a.bootstrap, "load generator")  # fail fast with one line, no traceback

    def show(sent: int, answered: int, elapsed_s: float) -> None:
        sys.stderr.write("\r" + progress_line(sent, answered, a.count, elapsed_s))
        sys.stderr.flush()

    report = run_load(
        a.bootstrap,
        count=a.count,
        rate=a.rate,
        requests_topic=a.requests_topic,
        scores_topic=a.scores_topic,
        return_address=a.return_address,
        deadline_ms=a.deadline_ms,
        bad_records=a.bad,
        bad_topic_scores=not a.no_bad_scores,
        progress=None if a.quiet else show,
        settle_ms=a.settle_ms,
        run_id=a.run_id,
        seed=a.seed,
    )
    if not a.quiet:
        sys.stderr.write("\n")
    print(format_report(report))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    bad = report.unanswered or report.duplicates or report.malformed_results or report.invalid_results
    return 1 if a.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())

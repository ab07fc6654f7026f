"""Thousands of good and bad records, interleaved on both input topics, through the real job.

Every good request must get exactly one result; every bad record must be accounted for exactly: a dead
letter with the expected reason pointing back at the record's own topic and offset, or a flagged score
in the decision log (duplicate, late, unknown model). The test plays the models (it writes the scores).

Phases: (1) 2,000 good requests, each with its incumbent's score, mixed with ~900 bad records of every
kind; (2) once answered, late scores for mailboxes still open; (3) once closed, scores and duplicate
requests for closed mailboxes.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ops import kafka_client
from tests.e2e.conftest import Readers, RunningJob, request_record
from udfs.mailbox import MAX_EXTRA_SCORES
from udfs.wire_in import MAX_RECORD_BYTES

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
GOOD = 2000
ROUNDS = 15  # of each malformed variant: 22 request and 19 score variants
# The incumbent's score is decisive the moment it arrives; the long deadline only absorbs the lag between
# the two input topics under this backlog (a score read a second after its request).
DEADLINE_MS = 3000
LATE_WINDOW_MS = 1500
ORPHAN_TIMEOUT_MS = 3000
POLICY = {
    "version": 11,
    "deadline_ms": DEADLINE_MS,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent"},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
    "late_window_ms": LATE_WINDOW_MS,
    "orphan_timeout_ms": ORPHAN_TIMEOUT_MS,
    "dedupe_retention_ms": 600_000,
}


@pytest.fixture(scope="module")
def job(rendezvous_job_factory: Callable[[dict[str, Any]], RunningJob]) -> RunningJob:
    return rendezvous_job_factory(POLICY)


def _score(rid: str, model_id: str, version: str, **over: Any) -> dict[str, Any]:
    return {
        "request_id": rid, "model_id": model_id, "model_version": version, "status": "ok",
        "output": {"label": 1, "probability": 0.8}, "scored_at_ms": int(time.time() * 1000), "latency_ms": 1.0,
    } | over  # fmt: skip


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def bad_requests(tag: str, address: str) -> list[tuple[str, bytes | None]]:
    """(expected reason, value) for malformed requests: every parse reason, several variants each."""
    ok = request_record(f"{tag}-x", address)
    out: list[tuple[str, bytes | None]] = []
    for i in range(ROUNDS):
        rid = f"{tag}-bad-{i}"
        good = request_record(rid, address)
        out += [
            ("null_value", None),
            ("not_utf8", b"\xff\xfe" + rid.encode()),
            ("not_utf8", _j(good)[:-3] + b"\xc3\x28}"),
            ("not_json", f"garbage {rid}".encode()),
            ("not_json", _j(good)[:-1]),  # truncated
            ("not_json", _j(good).replace(b"12.5", b"NaN")),
            ("not_json", _j(good).replace(b"12.5", b"-Infinity")),
            ("not_json", b""),
            ("not_object", _j([good])),
            ("not_object", _j(rid)),
            ("too_large", _j(good | {"features": {"pad": "x" * (MAX_RECORD_BYTES + i)}})),
            ("missing_field", _j({k: v for k, v in good.items() if k != "features"})),
            ("missing_field", _j({k: v for k, v in good.items() if k != "request_id"})),
            ("bad_field", _j(good | {"sent_at_ms": "yesterday"})),
            ("bad_field", _j(good | {"features": {"a": [1, 2]}})),
            ("bad_field", _j(good | {"deadline_ms": 0})),
            ("unknown_field", _j(good | {"priority": "high"})),
            ("bad_request_id", _j(good | {"request_id": rid + "x" * 128})),  # over-long id
            ("bad_request_id", _j(good | {"request_id": f"{rid} with spaces"})),
            ("bad_request_id", _j(good | {"request_id": 12345})),
            ("bad_return_address", _j(good | {"return_address": "no/slashes"})),
            ("bad_return_address", _j(ok | {"request_id": rid, "return_address": ""})),
        ]
    return out


def bad_scores(tag: str) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    for i in range(ROUNDS):
        good = _score(f"{tag}-bad-{i}", "gbt", "bad")
        out += [
            ("null_value", None),
            ("not_utf8", b"\x80" + _j(good)),
            ("not_json", _j(good).replace(b"0.8", b"NaN")),  # a NaN score
            ("not_json", _j(good).replace(b"0.8", b"Infinity")),
            ("not_json", b"{'single': 'quotes'}"),
            ("not_object", _j(None)),
            ("too_large", _j(good | {"model_version": "v" * MAX_RECORD_BYTES})),
            ("missing_field", _j({k: v for k, v in good.items() if k != "output"})),
            ("missing_field", _j({k: v for k, v in good.items() if k != "model_id"})),
            ("bad_field", _j(good | {"model_id": "m" * 65})),  # over-long model id
            ("bad_field", _j(good | {"status": "OK"})),
            ("bad_field", _j(good | {"latency_ms": -1})),
            ("unknown_field", _j(good | {"confidence": 0.3})),
            ("bad_request_id", _j(good | {"request_id": "r" * 129})),
            ("bad_output", _j(good | {"output": {"probability": 1.5}})),
            ("bad_output", _j(good | {"output": {"probability": "NaN"}})),
            ("bad_output", _j(good | {"output": {"value": "12"}})),
            ("bad_output", _j(good | {"output": {}})),
            ("bad_output", _j(good | {"status": "error", "error": "boom"})),  # error with an output
        ]
    return out


@dataclass
class Sent:
    """Everything sent, with its offset once known, and what should become of it."""

    producer: kafka_client.Producer
    pending: list[tuple[Any, str, str]]  # (delivery, topic, expected outcome: a reason, or "ok"/"flagged")

    def send(self, topic: str, value: bytes | None, expect: str, key: str | None = None) -> None:
        delivery = self.producer.send_tracked(topic, value, key.encode() if key else None)
        self.pending.append((delivery, topic, expect))

    def resolve(self) -> dict[tuple[str, int], str]:
        self.producer.flush(60)
        out = {}
        for delivery, topic, expect in self.pending:
            meta = delivery.get(30)
            assert meta.partition == 0  # single-partition topics: (topic, offset) names a record
            out[(topic, meta.offset)] = expect
        return out


@pytest.fixture(scope="module")
def readers(job: RunningJob) -> Iterator[Readers]:
    r = Readers.open(job.bootstrap, job.results, job.decisions, job.dead_letters)
    yield r
    r.close()


def test_thousands_of_mixed_records_every_good_one_answered_every_bad_one_accounted(
    job: RunningJob, readers: Readers
) -> None:
    started = time.monotonic()
    tag = f"mix{uuid.uuid4().hex[:6]}"
    rng = random.Random(7)
    producer = kafka_client.producer(
        job.bootstrap, client_id="test-bad-input", linger_ms=5, message_max_bytes=2**20
    )
    sent = Sent(producer, [])
    good = [f"{tag}-{i}" for i in range(GOOD)]
    dup_scores = set(rng.sample(good, 100))
    dup_requests = set(rng.sample(good, 50))
    flooded = set(rng.sample(good, 5))  # 20 scores from unknown models each: 16 kept, 4 refused
    orphans = [f"{tag}-orphan-{i}" for i in range(50)]

    # --- phase 1: the mix ---------------------------------------------------------------------------------
    bad = [(job.requests, *b) for b in bad_requests(tag, job.results)] + [
        (job.scores, *b) for b in bad_scores(tag)
    ]
    rng.shuffle(bad)
    slots = sorted(rng.randrange(GOOD) for _ in bad)
    b = 0
    for i, rid in enumerate(good):
        sent.send(job.requests, _j(request_record(rid, job.results)), "ok", rid)
        sent.send(job.scores, _j(_score(rid, "gbt", "good")), "ok", rid)
        if rid in dup_scores:
            sent.send(job.scores, _j(_score(rid, "gbt", "dup", output={"label": 0})), "flagged", rid)
        if rid in dup_requests:
            sent.send(job.requests, _j(request_record(rid, job.results)), "duplicate_request", rid)
        if rid in flooded:
            for k in range(MAX_EXTRA_SCORES + 4):
                expect = "flagged" if k < MAX_EXTRA_SCORES else "too_many_scores"
                sent.send(job.scores, _j(_score(rid, f"ghost{k}", "ghost")), expect, rid)
        if i % 200 == 0:  # keyed by another request's id: the wrong partition and mailbox
            sent.send(job.scores, _j(_score(rid, "tree", "miskeyed")), "key_mismatch", f"{rid}-other")
        if i % 40 == 0:
            orphan = orphans[i // 40]
            sent.send(job.scores, _j(_score(orphan, "gbt", "orphan")), "orphan_score", orphan)
        while b < len(slots) and slots[b] == i:
            topic, reason, value = bad[b]
            sent.send(topic, value, reason, key=f"{tag}-null" if value is None else None)  # Kafka wants one
            b += 1
    phase1 = sent.resolve()
    sent_s = time.monotonic() - started

    results, decisions, dead = readers.results, readers.decisions, readers.dead_letters
    goods = set(good)
    results.wait_for(lambda recs: len({r["request_id"] for r in recs} & goods) == GOOD, 90, "2000 results")
    answered_s = time.monotonic() - started
    print(f"\nsent phase 1 in {sent_s:.1f} s, all answered at {answered_s:.1f} s")

    # --- phase 2: late scores, for mailboxes decided but surely still open --------------------------------
    now_ms = time.time() * 1000
    by_id = {r["request_id"]: r for r in results.records}
    open_ids = [
        rid for rid in good if by_id[rid]["received_at_ms"] + DEADLINE_MS + LATE_WINDOW_MS > now_ms + 2500
    ]
    late = set(open_ids[-100:])
    assert len(late) >= 20, f"only {len(late)} mailboxes still open: the job is too slow for this test"
    for rid in late:
        sent.send(job.scores, _j(_score(rid, "tree", "late")), "flagged", rid)
    phase2 = sent.resolve()

    # --- phase 3: once closed, scores and duplicate requests for closed mailboxes are dead letters ---------
    decisions.wait_for(
        lambda recs: len({d["request_id"] for d in recs} & goods) == GOOD,
        60,
        "decision records for every request",
    )
    closed_at_s = time.monotonic() - started
    after_close = rng.sample(sorted(goods - late - flooded), 60)
    for rid in after_close[:30]:
        sent.send(job.scores, _j(_score(rid, "tree", "after-close")), "score_after_close", rid)
    for rid in after_close[30:]:
        sent.send(job.requests, _j(request_record(rid, job.results)), "duplicate_request", rid)
    expected = sent.resolve()
    assert set(phase1) <= set(expected) and set(phase2) <= set(expected)

    # Records without a value (Kafka tombstones) reach the parser as None: dead letters too.
    want_dead = {k: v for k, v in expected.items() if v not in ("ok", "flagged")}

    def mine(d: dict[str, Any]) -> bool:
        return d["source_topic"] in (job.requests, job.scores)

    dead.wait_for(
        lambda recs: sum(1 for d in recs if mine(d)) >= len(want_dead), 60, f"{len(want_dead)} dead letters"
    )
    dead.settle(2.0)  # anything extra (a second dead letter for a record) would show up now
    results.settle(0.5)
    decisions.settle(0.5)

    # --- every good request: exactly one result ------------------------------------------------------------
    ours = [r for r in results.records if r["request_id"].startswith(tag)]
    per_id = Counter(r["request_id"] for r in ours)
    assert set(per_id) == goods, set(per_id) ^ goods
    assert max(per_id.values()) == 1, [rid for rid, n in per_id.items() if n > 1][:5]
    not_gbt = [r for r in ours if (r["model_id"], r["output"]) != ("gbt", {"label": 1, "probability": 0.8})]
    assert not_gbt == [], not_gbt[:3]

    # --- every bad record: one dead letter, the expected reason, pointing at its topic and offset ---------
    letters = [d for d in dead.records if mine(d)]
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "dead_letter.schema.json").read_text()))
    for d in letters:
        validator.validate(d)
    got = Counter((d["source_topic"], d["offset"]) for d in letters)
    assert max(got.values()) == 1, [k for k, n in got.items() if n > 1][:5]
    got_reasons = {(d["source_topic"], d["offset"]): d["reason"] for d in letters}
    wrong = {k: (want_dead.get(k), got_reasons.get(k)) for k in set(want_dead) | set(got_reasons)
             if want_dead.get(k) != got_reasons.get(k)}  # fmt: skip
    assert wrong == {}, list(wrong.items())[:10]

    # --- flagged, not dead: duplicates, late and unknown-model scores are in the decision log -------------
    log = {d["request_id"]: d for d in decisions.records if d["request_id"].startswith(tag)}
    for rid in good:
        scores = log[rid]["scores"]
        # A duplicate or unknown-model score is also `late` when the request was decided before it came;
        # across two topics that order is not fixed, so `late` is checked only where it is (None: either).
        flags = Counter(
            (s["model_id"] if not s["model_id"].startswith("ghost") else "ghost", s["model_version"],
             s["role"], s["duplicate"], s["late"] if s["model_version"] in ("good", "late") else None)
            for s in scores
        )  # fmt: skip
        want: Counter[tuple[str, str, str, bool, bool | None]] = Counter()
        want[("gbt", "good", "incumbent", False, False)] += 1
        if rid in dup_scores:
            want[("gbt", "dup", "incumbent", True, None)] += 1
        if rid in flooded:
            want[("ghost", "ghost", "unknown", False, None)] += MAX_EXTRA_SCORES
        if rid in late:
            want[("tree", "late", "backstop", False, True)] += 1
        assert flags == want, (rid, scores)

    reasons = Counter(got_reasons.values())
    total_s = time.monotonic() - started
    print(
        f"\nsent {len(expected)} records ({GOOD} good requests + {GOOD} scores; "
        f"{sum(1 for v in expected.values() if v not in ('ok',))} bad or extra) in {sent_s:.1f} s; "
        f"all answered at {answered_s:.1f} s, all closed at {closed_at_s:.1f} s, checked at {total_s:.1f} s\n"
        f"dead letters by reason: {dict(sorted(reasons.items()))}\n"
        f"flagged in the decision log: {len(dup_scores)} duplicate scores, {len(late)} late, "
        f"{len(flooded) * MAX_EXTRA_SCORES} unknown-model"
    )
    sent.producer.finish()

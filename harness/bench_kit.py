"""The bench's building blocks for a drain: CPU meters per process and a preloaded backlog of requests
with their scores. Shared by harness/bench.py and its parts in modules of their own (bench_scale.py), so
those need not import the bench itself."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ops import kafka_client
from udfs import names


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """User+system CPU of a process and, if asked, its direct children (the job's JVM is a child).

    Not for this process with children: the broker, runners and job started from here are its
    children too, and would be counted as the load generator's.
    """
    total = 0
    pids = [pid]
    if children:
        with contextlib.suppress(OSError):
            pids += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU % (100 = one core) of named processes over a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {k: self._cpu(v) for k, v in pids.items()}
        self.t0 = time.monotonic()

    @staticmethod
    def _cpu(pid: int) -> float:
        return _cpu_seconds(pid, children=pid != os.getpid())

    def percent(self) -> dict[str, int]:
        dt = max(time.monotonic() - self.t0, 1e-6)
        return {k: round(100 * (self._cpu(v) - self.start[k]) / dt) for k, v in self.pids.items()}

    def seconds(self) -> dict[str, float]:
        """CPU seconds each process used since the meter started."""
        return {k: self._cpu(v) - self.start[k] for k, v in self.pids.items()}


def _request_and_score(
    rid: str, return_address: str, now_ms: int, model_id: str = "gbt"
) -> tuple[bytes, bytes]:
    req = {
        "request_id": rid,
        "return_address": return_address,
        "sent_at_ms": now_ms,
        "features": {"amount": 1.0},
    }
    score = {
        "request_id": rid, "model_id": model_id, "model_version": "bench", "status": "ok",
        "output": {"label": 1, "probability": 0.7}, "scored_at_ms": now_ms, "latency_ms": 1.0,
    }  # fmt: skip
    return json.dumps(req).encode(), json.dumps(score).encode()


# The default policy's models, incumbent first: what a backlog request brings into the job (issue 11: a
# request with 4 scores, 5 records).
BACKLOG_MODELS = ("gbt", "logreg", "tree", "base")


def preload_backlog(
    bootstrap: str, return_address: str, requests: int, models: Sequence[str] = BACKLOG_MODELS
) -> None:
    """Write ``requests`` requests, answered at ``return_address``, and one score per model for each."""
    producer = kafka_client.producer(
        bootstrap, client_id="bench-backlog", linger_ms=20, batch_size=256 * 1024
    )
    now = int(time.time() * 1000)
    for i in range(requests):
        rid = f"c{i}-{return_address[-6:]}"
        req, _ = _request_and_score(rid, return_address, now)
        producer.send(names.TOPIC_REQUESTS, req, rid.encode())
        for model in models:
            producer.send(
                names.TOPIC_SCORES, _request_and_score(rid, return_address, now, model)[1], rid.encode()
            )
    producer.finish(timeout_s=120)


def us_per_request(cpu_s: dict[str, float], requests: int) -> dict[str, int]:
    """CPU µs per request of each process, from the CPU seconds it used while ``requests`` were answered."""
    return {k: round(1e6 * v / requests) for k, v in cpu_s.items()}

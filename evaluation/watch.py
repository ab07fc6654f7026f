"""Drift as a periodic job: ``rendezvous eval drift --every 5m``, a comparison every period, alerts out.

Each round looks at a sliding window of the decoy archive (requests received in the last ``--window``)
and, when a decision log is given, at each model's recent scores against its own reference period;
alerts (``schemas/alert.schema.json``) are appended to a file and/or published to the alerts topic. The
loop is pure apart from what is injected (the clock, the sleep, the round itself), so tests drive it
with a fake clock; Ctrl-C or SIGTERM ends it after the round in progress, with a last line.

The archive is read incrementally: its committed Parquet files (never changed once committed) are read
once and kept while they hold rows inside the window, and only the hour partitions the window reaches
are listed (``ops.archive.committed_files``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pandas as pd

from evaluation.drift import Alert
from ops import kafka_admin, kafka_client
from ops.archive import committed_files

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


def parse_duration_ms(text: str) -> int:
    """``500ms``, ``30s``, ``5m``, ``1h`` or plain seconds -> milliseconds (positive)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h)")
    ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return ms


@dataclass
class RoundResult:
    """What one round measured: a one-line summary and the alerts raised."""

    summary: str
    alerts: list[Alert]


def run_periodic(
    round_fn: Callable[[int, int, str], None],
    every_ms: int,
    *,
    name: str,
    out: TextIO,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    sleep_s: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
    iterations: int | None = None,
) -> int:
    """Call ``round_fn(now_ms, round_number, stamp)`` every ``every_ms`` (on the clock, not after each
    round) until ``stop`` is set, ``iterations`` rounds ran, or Ctrl-C; returns the rounds run. A round
    that raises (a file being rewritten, the broker away) is reported as ``[name stamp] round N failed``
    and the next one runs: a periodic job must outlive one bad round. A fatal Kafka error ends it."""
    stop = stop or threading.Event()
    rounds = 0
    next_at = clock_ms()
    try:
        while not stop.is_set() and (iterations is None or rounds < iterations):
            now = clock_ms()
            if now < next_at:
                sleep_s(min(1.0, (next_at - now) / 1000.0))  # short naps: a stop is seen within a second
                continue
            stamp = time.strftime("%H:%M:%S", time.localtime(now / 1000))
            try:
                round_fn(now, rounds + 1, stamp)
            except Exception as e:
                if kafka_client.is_fatal(e):  # its client will never recover: the process must start again
                    raise
                print(
                    f"[{name} {stamp}] round {rounds + 1} failed: {type(e).__name__}: {e}",
                    file=out,
                    flush=True,
                )
            rounds += 1
            next_at += every_ms
            after = clock_ms()
            if next_at <= after:  # a round longer than the period: skip the missed ticks, no burst
                next_at = after + every_ms
    except KeyboardInterrupt:
        pass
    return rounds


def run_watch(
    round_fn: Callable[[int], RoundResult],
    every_ms: int,
    *,
    publish: Callable[[list[Alert]], None] = lambda _alerts: None,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    sleep_s: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
    iterations: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run ``round_fn(now_ms)`` every ``every_ms`` (``run_periodic``), publish its alerts and print a
    progress line per round. Returns the rounds run."""
    stream = out or sys.stdout
    alerts_total = 0

    def one(now: int, number: int, stamp: str) -> None:
        nonlocal alerts_total
        result = round_fn(now)
        publish(result.alerts)
        alerts_total += len(result.alerts)
        print(
            f"[drift {stamp}] round {number}: {result.summary}; {len(result.alerts)} alert(s)",
            file=stream,
            flush=True,
        )
        for a in result.alerts:
            print(f"  ALERT {a.kind}: {a.message}", file=stream, flush=True)

    rounds = run_periodic(one, every_ms, name="drift", out=stream, clock_ms=clock_ms, sleep_s=sleep_s,
                          stop=stop, iterations=iterations)  # fmt: skip
    print(f"drift watch stopped after {rounds} round(s), {alerts_total} alert(s)", file=stream, flush=True)
    return rounds


@dataclass
class ArchiveWindow:
    """Requests from an archive directory received in a sliding window, each finished file parsed once."""

    archive_dir: Path
    window_ms: int
    _cache: dict[Path, pd.DataFrame] = field(default_factory=dict)

    def files(self, since_ms: int | None = None) -> list[Path]:
        """The committed files of the partitions holding rows received at or after ``since_ms``."""
        return committed_files(self.archive_dir, since_ms)

    def recent(self, now_ms: int) -> pd.DataFrame:
        """Archive rows with ``now - window <= received_at_ms < now`` (columns received_at_ms, features)."""
        start = now_ms - self.window_ms
        frames = []
        for f in self.files(start):
            if f not in self._cache:
                self._cache[f] = _read_rows(f)
            rows = self._cache[f]
            if len(rows) and int(rows["received_at_ms"].max()) < start:
                self._cache[f] = rows.iloc[0:0]  # wholly before the window, which only moves on: drop rows
                continue
            frames.append(rows[(rows["received_at_ms"] >= start) & (rows["received_at_ms"] < now_ms)])
        if not frames:
            return pd.DataFrame(columns=["received_at_ms", "features"])
        return pd.concat(frames, ignore_index=True)


def _read_rows(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=["received_at_ms", "features"])
    return frame.astype({"received_at_ms": "int64"})


def alert_publisher(bootstrap: str, topic: str) -> tuple[Callable[[list[Alert]], None], Callable[[], None]]:
    """(publish, close) for the alerts topic: one JSON record per alert, keyed by its subject."""
    kafka_admin.require_broker(bootstrap, "drift watch")
    kafka_admin.create_topics(bootstrap, [topic])
    producer = kafka_client.producer(bootstrap, client_id="drift-watch", linger_ms=5)

    def publish(alerts: list[Alert]) -> None:
        for a in alerts:
            producer.send(topic, json.dumps(a.to_dict()).encode(), a.subject.encode())
        producer.flush(30)  # delivery failures are counted and printed by the producer

    def close() -> None:
        producer.finish(timeout_s=10)

    return publish, close

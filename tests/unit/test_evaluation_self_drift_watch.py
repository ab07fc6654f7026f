"""Drift against a model's own past (known data), and drift as a periodic job (an injected clock)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator

from evaluation.cli import main
from evaluation.drift import (
    DriftConfig,
    model_scores,
    psi,
    self_alerts,
    self_drift,
    self_drift_windows,
)
from evaluation.watch import ArchiveWindow, RoundResult, parse_duration_ms, run_watch
from ops import archive as archive_mod
from runners.data import FEATURES, generate

ROOT = Path(__file__).resolve().parents[2]
ALERT_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "alert.schema.json").read_text()))
T0 = 1_700_000_000_000


def decisions(n: int, start: int, step_ms: int, p: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """n decision records; p[model] draws that model's probability from an rng."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        at = start + i * step_ms
        scores = [
            {"model_id": m, "model_version": "1", "role": "challenger", "status": "ok",
             "output": {"probability": float(draw(rng))}, "error": None, "scored_at_ms": at,
             "latency_ms": 1.0, "arrived_at_ms": at, "late": False, "duplicate": False}
            for m, draw in p.items()
        ]  # fmt: skip
        out.append({"request_id": f"r{start}-{i}", "policy_version": 1, "received_at_ms": at,
                    "decided_at_ms": at, "closed_at_ms": at, "result": {}, "scores": scores})  # fmt: skip
    return out


HEALTHY = {
    "steady": lambda r: r.beta(1, 12),  # a fraud model: mostly low probabilities
    "tree": lambda r: r.choice(
        [0.01, 0.03, 0.08, 0.2, 0.45, 0.7, 0.85, 0.95], p=[0.4, 0.2, 0.15, 0.1, 0.05, 0.04, 0.03, 0.03]
    ),
}


def test_a_model_compared_with_its_own_past_is_quiet_until_it_changes() -> None:
    # 40 s healthy, then 20 s in which "steady" answers with noise; 50 requests/s (the degrade scenario's).
    healthy = decisions(2000, T0, 20, HEALTHY, seed=1)
    noisy = decisions(
        1000, T0 + 40_000, 20, {"steady": lambda r: r.random(), "tree": HEALTHY["tree"]}, seed=2
    )
    scores = model_scores(healthy + noisy)
    assert set(scores.columns) == {"request_id", "model_id", "at_ms", "p"} and len(scores) == 6000
    cfg = DriftConfig.from_dict(
        {"window_ms": 10_000, "slide_ms": 10_000, "min_count": 100, "reference_ms": 10_000}
    )
    own = self_drift_windows(scores, cfg)
    # Reference: the first 10 s; compared: every later 10 s window (T0 is not a multiple of 10 s).
    ref_end = T0 + 10_000
    assert own["window_start_ms"].min() >= ref_end and set(own["model_id"]) == {"steady", "tree"}
    alerts = self_alerts(own, cfg, now_ms=T0 + 60_000)
    fired = {(a.subject, a.window_start_ms) for a in alerts}
    noisy_starts = {int(s) for s in own["window_start_ms"] if s >= T0 + 40_000}
    # The tree (8 leaf probabilities: PSI ~6.5 against a canary) never alarms against itself ...
    assert not any(s == "tree" for s, _ in fired)
    # ... "steady" does, in every window after it went bad, and in no window before.
    assert {w for s, w in fired if s == "steady"} == noisy_starts
    healthy_rows = own[(own["model_id"] == "steady") & (own["window_end_ms"] <= T0 + 40_000)]
    # Sampling noise only (two samples of 500: PSI ~0.04, KS ~0.09 at the 95th percentile).
    assert len(healthy_rows) == 3 and (healthy_rows["psi"] < 0.1).all() and (healthy_rows["ks"] < 0.1).all()
    for a in alerts:
        assert not list(ALERT_SCHEMA.iter_errors(a.to_dict())), a
        assert a.kind == "self_drift" and "its own in the reference period" in a.message


def test_self_drift_on_known_data_matches_psi_and_counts() -> None:
    scores = pd.DataFrame(
        {"request_id": [f"r{i}" for i in range(6)], "model_id": ["a"] * 6,
         "at_ms": [0, 1, 2, 10, 11, 12], "p": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]}
    )  # fmt: skip
    got = self_drift(scores, (0, 10), [(10, 20), (20, 30)], DriftConfig.from_dict({"bins": 2}))
    assert len(got) == 1  # the empty window has no row
    row = got.iloc[0]
    assert (row["count"], row["n_reference"], row["ks"]) == (3, 3, 1.0)
    assert row["psi"] == pytest.approx(psi([0.1, 0.2, 0.3], [0.7, 0.8, 0.9], bins=2))
    # Below min_count on either side: measured, not alerted.
    assert self_alerts(got, DriftConfig.from_dict({"min_count": 4}), 0) == []
    assert len(self_alerts(got, DriftConfig.from_dict({"min_count": 3}), 0)) == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"self_psi_alert": 0}, "self_psi_alert"),
        ({"self_ks_alert": 1.5}, "self_ks_alert"),
        ({"reference_ms": -1}, "reference_ms"),
        ({"reference_ms": 1.5}, "reference_ms"),
        ({"canary_distribution": "no"}, "canary_distribution"),
    ],
)
def test_new_config_fields_are_validated(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        DriftConfig.from_dict(data)


def test_canary_distribution_off_keeps_agreement_alerts_only() -> None:
    from evaluation.drift import score_alerts

    frame = pd.DataFrame(
        [{"window_start_ms": 0, "window_end_ms": 10, "model_id": "tree", "count": 500,
          "agreement": 0.5, "psi": 6.5, "ks": 0.6}]
    )  # fmt: skip
    on = score_alerts(frame, DriftConfig(), 0)
    off = score_alerts(frame, DriftConfig.from_dict({"canary_distribution": False}), 0)
    assert {a.metric for a in on} == {"agreement", "psi", "ks"} and [a.metric for a in off] == ["agreement"]


# --- the periodic job --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("2", 2000), ("1.5s", 1500)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "5x", "-1s", "0s", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0
        self.naps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += int(seconds * 1000)


def test_watch_runs_on_the_clock_reports_each_round_and_survives_a_failing_one() -> None:
    clock, out, calls, published = FakeClock(), io.StringIO(), [], []

    def one_round(now: int) -> RoundResult:
        calls.append(now)
        if len(calls) == 2:
            raise OSError("archive file vanished")
        if len(calls) == 3:
            clock.now += 7_000  # a slow round: longer than the period
        from evaluation.drift import _alert

        alerts = (
            [_alert("input_drift", "amount", "psi", 0.9, 0.25, 300, (None, None), now)]
            if len(calls) == 1
            else []
        )
        return RoundResult(f"round at {now}", alerts)

    rounds = run_watch(
        one_round, 5_000, publish=published.append, clock_ms=clock, sleep_s=clock.sleep, iterations=4, out=out
    )
    assert rounds == 4
    # On the clock: T0, T0+5 s, T0+10 s (7 s long), then the next tick after it, not a burst of missed ones.
    assert calls == [T0, T0 + 5_000, T0 + 10_000, T0 + 22_000]
    assert max(clock.naps) <= 1.0  # naps short enough to notice a stop within a second
    text = out.getvalue()
    assert "round 1: round at" in text and "1 alert(s)" in text and "ALERT input_drift: amount" in text
    assert "round 2 failed: OSError: archive file vanished" in text
    assert text.rstrip().endswith("drift watch stopped after 4 round(s), 1 alert(s)")
    assert len(published) == 3 and len(published[0]) == 1  # the failed round published nothing


def test_watch_stops_on_the_event_and_on_ctrl_c() -> None:
    clock, stop, out = FakeClock(), threading.Event(), io.StringIO()

    def stop_after_two(now: int) -> RoundResult:
        if now >= T0 + 1_000:
            stop.set()
        return RoundResult("ok", [])

    assert run_watch(stop_after_two, 1_000, clock_ms=clock, sleep_s=clock.sleep, stop=stop, out=out) == 2

    def interrupted(now: int) -> RoundResult:
        raise KeyboardInterrupt

    out2 = io.StringIO()
    assert run_watch(interrupted, 1_000, clock_ms=clock, sleep_s=clock.sleep, out=out2) == 0
    assert "stopped after 0 round(s)" in out2.getvalue()


def _archive(dir_: Path, rows: list[tuple[int, dict[str, float]]], name: str) -> None:
    """Committed Parquet files as the job's sink writes them: one per hour partition of the rows'
    received_at_ms, next to an uncommitted (dot-prefixed) file that must not be read."""
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for i, (t, f) in enumerate(rows):
        by_partition.setdefault(archive_mod.partition_of(t), []).append(
            {"request_id": f"{name}-{i}", "received_at_ms": t, "sent_at_ms": t, "return_address": "r",
             "source_topic": "requests", "partition": 0, "offset": i, "features": json.dumps(f), "raw": "{}"}
        )  # fmt: skip
    for partition, part in by_partition.items():
        (dir_ / partition).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(part, schema=archive_mod.ARCHIVE_SCHEMA)
        pq.write_table(table, dir_ / partition / f"compacted-part-{name}-0.parquet")
        pq.write_table(table, dir_ / partition / f".part-{name}-1.parquet")  # not committed


def test_archive_window_reads_committed_files_once_and_slides() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _archive(d, [(T0 + i * 1000, {"amount": float(i)}) for i in range(10)], "a")
        w = ArchiveWindow(d, 5_000)
        got = w.recent(T0 + 10_000)
        assert sorted(got["received_at_ms"]) == [T0 + i * 1000 for i in range(5, 10)]
        _archive(d, [(T0 + 10_000 + i * 1000, {"amount": 1.0}) for i in range(3)], "b")
        assert len(w.recent(T0 + 13_000)) == 5 and len(w._cache) == 2
        assert len(w.recent(T0 + 100_000)) == 0 and all(len(f) == 0 for f in w._cache.values())


def test_archive_window_lists_only_the_hours_it_reaches() -> None:
    import tempfile

    hour = 3_600_000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        start = T0 - T0 % hour  # the first millisecond of an hour
        _archive(d, [(start + 10, {"amount": 1.0}), (start + hour + 65_000, {"amount": 2.0})], "c")
        w = ArchiveWindow(d, 60_000)
        assert len(w.files()) == 2  # both partitions' committed files, no dot-file
        later = f"hour={(start + hour) // hour % 24:02d}"
        assert [f.parent.name for f in w.files(start + hour)] == [later]
        # now - window is 10 s into the later hour: the earlier one holds nothing the window wants
        assert list(w.recent(start + hour + 70_000)["received_at_ms"]) == [start + hour + 65_000]
        assert len(w._cache) == 1  # the earlier hour's file was not even read


def test_drift_every_on_an_archive_publishes_alerts_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command end to end on files: shifted amounts in the archive's window raise input_drift alerts."""
    reference, _ = generate(2000, seed=3)
    ref_path = tmp_path / "training_sample.parquet"
    reference.to_parquet(ref_path)
    recent, _ = generate(400, seed=4)
    recent["amount"] = recent["amount"] * 5  # drifted
    now = int(pd.Timestamp.now().timestamp() * 1000)
    rows = [(now - 30_000 + i * 50, {f: float(recent[f].iloc[i]) for f in FEATURES}) for i in range(400)]
    archive = tmp_path / "archive"
    _archive(archive, rows, "x")
    alerts = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "drift.yaml"
    cfg.write_text("min_count: 100\n")
    rc = main(["drift", "--reference", str(ref_path), "--recent", str(archive), "--config", str(cfg),
               "--every", "1s", "--window", "2m", "--iterations", "2", "--alerts", str(alerts)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "drift watch: every 1s, window 2m" in text and "round 2: 400 requests in the last 2m" in text
    assert "drift watch stopped after 2 round(s)" in text
    written = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert {a["subject"] for a in written} >= {"amount"} and {a["kind"] for a in written} == {"input_drift"}
    assert len(written) % 2 == 0  # the same alerts in both rounds, appended
    for a in written:
        assert not list(ALERT_SCHEMA.iter_errors(a))


def test_drift_every_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drift", "--every", "5x", "--decisions", str(tmp_path / "d.jsonl")]) == 2
    assert "--every/--window" in capsys.readouterr().err
    f = tmp_path / "f.jsonl"
    f.write_text("")
    assert main(["drift", "--every", "5s", "--reference", str(f), "--recent", str(f)]) == 2
    assert "archive directory" in capsys.readouterr().err


def test_a_periodic_job_outlives_a_bad_round_but_not_a_fatal_kafka_error() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from evaluation.watch import run_periodic

    out = io.StringIO()
    errors = iter([RuntimeError("the broker is away"), None, KafkaException(KafkaError(KafkaError._FATAL))])
    ticks = iter(range(0, 10_000, 1000))

    def round_fn(now: int, number: int, stamp: str) -> None:
        error = next(errors)
        if error is not None:
            raise error

    with pytest.raises(KafkaException):
        run_periodic(round_fn, 1000, name="w", out=out, clock_ms=lambda: next(ticks), sleep_s=lambda _s: None)
    assert "round 1 failed: RuntimeError: the broker is away" in out.getvalue()
    assert "round 3" not in out.getvalue()  # the fatal one ended the loop instead of being reported

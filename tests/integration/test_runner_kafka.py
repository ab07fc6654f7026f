"""A real runner process against a real broker: one well-formed score per request, faults as seeded."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from harness.stack import RunnerSpec
from ops import kafka_admin, kafka_client
from runners.data import sample_many
from runners.runner import INJECTED_FAILURE, Fate, Faults, decide
from runners.train import train_all

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_ENV = "RDV_TEST_BOOTSTRAP"
N_REQUESTS = 50
FAIL_RATE, SEED, LATENCY_MS, JITTER_MS = 0.2, 3, 5.0, 3.0


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's real broker (tests/conftest.py), or RDV_TEST_BOOTSTRAP's."""
    return kafka_bootstrap


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    train_all(out, rows=2000, seed=7)
    return out


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _wait_for_line(
    lines: queue.Queue[str], proc: subprocess.Popen[str], wanted: str, timeout_s: float, stderr: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=0.2) == wanted:
                return
        except queue.Empty:
            if proc.poll() is not None:
                raise AssertionError(
                    f"runner exited with {proc.returncode} before printing {wanted!r}; "
                    f"its stderr ends:\n{_tail(stderr)}"
                ) from None
    raise AssertionError(
        f"no {wanted!r} from the runner within {timeout_s}s; its stderr ends:\n{_tail(stderr)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM by PID, then SIGKILL by PID if it does not go; never by name."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_runner_answers_every_request_once(bootstrap: str, models: Path, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:10]
    requests_topic, scores_topic = f"test-runner-req-{suffix}", f"test-runner-sc-{suffix}"
    model_dir = models / "gbt"
    meta = json.loads((model_dir / "meta.json").read_text())
    schema = json.loads((REPO / "schemas" / "score.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)

    # Made up front: a consumer subscribing to a topic that does not exist yet may not see it for minutes.
    kafka_admin.create_topics(bootstrap, [requests_topic, scores_topic])

    faults = Faults(latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, fail_rate=FAIL_RATE, seed=SEED)
    stderr_path = tmp_path / "runner.stderr"
    cmd = [
        sys.executable,
        "-m",
        "runners.runner",
        "--model-dir",
        str(model_dir),
        "--bootstrap",
        bootstrap,
        "--requests-topic",
        requests_topic,
        "--scores-topic",
        scores_topic,
        "--group",
        f"test-runner-{suffix}",
        "--latency-ms",
        str(LATENCY_MS),
        "--jitter-ms",
        str(JITTER_MS),
        "--fail-rate",
        str(FAIL_RATE),
        "--seed",
        str(SEED),
        "--max-seconds",
        "300",  # a backstop if this test dies without reaching its finally
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        _wait_for_line(lines, proc, "runner gbt ready", timeout_s=120, stderr=stderr_path)

        ids = [f"it-{suffix}-{i}" for i in range(N_REQUESTS)]
        features = sample_many(np.random.default_rng(5), N_REQUESTS)
        producer = kafka_client.producer(bootstrap, client_id="test-runner")
        try:
            now = int(time.time() * 1000)
            for rid, f in zip(ids, features, strict=True):
                body = {"request_id": rid, "return_address": "results", "sent_at_ms": now, "features": f}
                producer.send(requests_topic, json.dumps(body).encode(), rid.encode())
            producer.send(requests_topic, b"this is not a request")  # skipped, never scored
            # An id the seeded faults leave alone, so its error can only come from the features.
            bad_id = next(r for i in range(100) if decide(r := f"it-{suffix}-bad{i}", faults)[0] is Fate.OK)
            bad = {"request_id": bad_id, "sent_at_ms": now, "features": {"amount": "lots"}}
            producer.send(requests_topic, json.dumps(bad).encode())
            assert producer.flush(30) == 0
        finally:
            producer.finish()
        assert producer.delivery_errors.count == 0
        expected_ids = {*ids, bad["request_id"]}

        scores: list[tuple[bytes | None, dict[str, Any]]] = []
        consumer = kafka_client.consumer(bootstrap, client_id="test-runner")
        consumer.assign_all([scores_topic])
        try:
            deadline = time.monotonic() + 60
            while len(scores) < len(expected_ids) and time.monotonic() < deadline:
                scores.extend((r.key(), json.loads(r.value() or b"")) for r in consumer.take(100, 0.5))
            quiet_until = time.monotonic() + 2  # anything extra (duplicates, the malformed record) shows here
            while time.monotonic() < quiet_until:
                scores.extend((r.key(), json.loads(r.value() or b"")) for r in consumer.take(100, 0.2))
        finally:
            consumer.close()
    finally:
        _stop(proc)
        kafka_admin.delete_topics(bootstrap, [requests_topic, scores_topic])
    stderr_text = stderr_path.read_text()
    assert proc.returncode == 0, stderr_text
    assert "runner gbt final:" in stderr_text and "malformed=1" in stderr_text

    by_id = {s["request_id"]: s for _, s in scores}
    assert len(scores) == len(by_id) == len(expected_ids), "exactly one score per request"
    assert set(by_id) == expected_ids
    injected = {rid for rid in ids if decide(rid, faults)[0] is Fate.FAIL}
    assert 0 < len(injected) < N_REQUESTS
    for key, score in scores:
        validator.validate(score)
        assert key == score["request_id"].encode()
        assert score["model_id"] == "gbt" and score["model_version"] == meta["model_version"]
        assert score["latency_ms"] >= LATENCY_MS
        rid = score["request_id"]
        if rid == bad["request_id"]:
            assert score["status"] == "error" and score["error"].startswith("bad features")
        elif rid in injected:
            assert score["status"] == "error" and score["error"] == INJECTED_FAILURE
        else:
            assert score["status"] == "ok"
            assert score["output"]["label"] in (0, 1) and 0 <= score["output"]["probability"] <= 1


def _start_runner(
    bootstrap: str, model_dir: Path, topic: str, group: str, instance_id: str, stderr_path: Path
) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    spec = RunnerSpec(model_dir.name, instance_id=instance_id)
    cmd = [
        *spec.argv(model_dir.parent, bootstrap, topic, f"{topic}-scores"),
        "--group",
        group,
        "--max-seconds",
        "300",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    return proc, lines


def test_a_static_runner_restarted_after_kill_9_takes_its_partitions_back_and_a_twin_fences_it(
    bootstrap: str, models: Path, tmp_path: Path
) -> None:
    """--instance-id: the restarted runner is ready long before the dead one's session (45 s, librdkafka's
    default) could have timed out; a second process with the same id fences the first, which stops
    with one line and exit code 1."""
    suffix = uuid.uuid4().hex[:10]
    topic, group = f"test-static-{suffix}", f"test-static-{suffix}"
    kafka_admin.create_topics(bootstrap, [topic, f"{topic}-scores"], 2)
    started: list[subprocess.Popen[str]] = []
    try:
        first, lines = _start_runner(bootstrap, models / "gbt", topic, group, "gbt-0", tmp_path / "1.err")
        started.append(first)
        _wait_for_line(lines, first, "runner gbt ready", 120, tmp_path / "1.err")
        os.kill(first.pid, signal.SIGKILL)  # our own child, by PID: a crash, no leave from the group
        first.wait(timeout=10)

        again, lines = _start_runner(bootstrap, models / "gbt", topic, group, "gbt-0", tmp_path / "2.err")
        started.append(again)
        _wait_for_line(lines, again, "runner gbt ready", 30, tmp_path / "2.err")  # < the 45 s session

        twin, lines = _start_runner(bootstrap, models / "gbt", topic, group, "gbt-0", tmp_path / "3.err")
        started.append(twin)
        _wait_for_line(lines, twin, "runner gbt ready", 120, tmp_path / "3.err")
        assert again.wait(timeout=60) == 1
        fenced = [ln for ln in (tmp_path / "2.err").read_text().splitlines() if "fatal Kafka error" in ln]
        assert len(fenced) == 1 and "fenced" in fenced[0], _tail(tmp_path / "2.err")
        assert twin.poll() is None  # the newer one goes on
    finally:
        for proc in started:
            _stop(proc)
        kafka_admin.delete_topics(bootstrap, [topic, f"{topic}-scores"])

"""Start-up with no Kafka at the given address: every entry point fails fast with one clear line.

A port with nothing listening (ops.procs.free_port) stands in for a broker that is down or mistyped.
Without the start-up check, the job retried inside the Flink Kafka source (a Java stack trace, or no
exit at all) and the runner and load generator died with a Kafka client traceback.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import kafka_admin
from ops.procs import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 30.0

COMMANDS = {
    "job": ["-m", "jobs.rendezvous_job", "--policy", "policies/default.yaml", "--bootstrap", "{bs}"],
    "job via the rendezvous CLI": [
        "-m", "harness.cli", "job", "--policy", "policies/default.yaml", "--bootstrap", "{bs}",
    ],
    "runner": ["-m", "runners.runner", "--model-dir", "var/no-such-model", "--bootstrap", "{bs}"],
    "load generator": ["-m", "harness.loadgen", "--bootstrap", "{bs}", "--count", "10", "--quiet"],
}  # fmt: skip
WHO = {
    "job": "rendezvous job",
    "job via the rendezvous CLI": "rendezvous job",
    "runner": "runner",
    "load generator": "load generator",
}


def test_every_entry_point_fails_fast_and_clearly_without_kafka(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, *(a.format(bs=bootstrap) for a in argv)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in COMMANDS.items()
    }  # all at once: each waits for the probe's timeout, none of them uses much CPU
    try:
        outcomes = {name: (*p.communicate(timeout=LIMIT_S + 30), p.returncode) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"
    for name, (stdout, stderr, rc) in outcomes.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert rc != 0, (name, stdout, stderr)
        assert "Traceback" not in stderr and "Exception" not in stderr, (name, stderr)
        assert lines == [lines[0]] and lines[0].startswith(f"error: {WHO[name]}: "), (name, stderr)
        assert bootstrap in lines[0], (name, lines)


def test_an_unresolvable_host_is_a_clear_error_too() -> None:
    with pytest.raises(SystemExit) as exc:
        kafka_admin.require_broker("no-such-host.invalid:9092", "runner", timeout_s=3)
    message = str(exc.value)
    assert message.startswith("error: runner: ") and "no-such-host.invalid:9092" in message
    assert "\n" not in message


def test_a_reachable_broker_passes(kafka_bootstrap: str) -> None:
    kafka_admin.require_broker(kafka_bootstrap, "runner", timeout_s=10)  # returns: nothing to report

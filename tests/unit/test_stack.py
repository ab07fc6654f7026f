"""The shared stack helpers (harness/stack.py): the warm-up's rounds, and the one start sequence."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import stack
from harness.stack import JIT_QUIET_PERCENT, WarmupRound


def test_a_warm_up_round_is_quiet_only_when_every_jit_is_measured_and_low() -> None:
    def r(**jit: float | None) -> WarmupRound:
        return WarmupRound(15.2, 1500, 1500, 3, 51.0, 135.5, jit)

    assert r(job=JIT_QUIET_PERCENT - 1, broker=2.0).quiet
    assert not r(job=JIT_QUIET_PERCENT, broker=2.0).quiet
    assert not r(job=1.0, broker=None).quiet  # a JVM not found is not known to be quiet
    assert r(job=None, broker=None).quiet  # nothing measurable (no /proc): the minimum time only
    assert r(job=4.4, broker=None).line() == (
        "warm-up 15 s: 1500/1500 answered, p50 51.0 ms, p99 135.5 ms, 3 late; JIT: job 4 %, broker ? % of a core"
    )


def test_a_warm_up_that_fell_behind_is_drained_before_the_measured_run() -> None:
    said: list[str] = []
    waits: list[float] = []

    def answering(timeout_s: float) -> tuple[float, int]:
        waits.append(timeout_s)
        return 2.34, 5  # answered 2.34 s after the first of five probes

    kept_up = [
        WarmupRound(15.0, 1500, 1500, 0, 9.0, 20.0, {}),
        WarmupRound(30.0, 1500, 1500, 0, 9.0, 20.0, {}),
    ]
    assert stack.drain_after_warm_up(kept_up, answering, said.append) is None
    assert (
        waits == [] and said == []
    )  # nothing behind: no probe (its new address would cost the job a lookup)

    behind = [WarmupRound(15.0, 12495, 7759, 7759, 7988.1, 8909.7, {})]
    drained = stack.drain_after_warm_up(behind, answering, said.append, timeout_s=30.0)
    assert drained == {"behind": 4736, "drained_s": 2.3}
    assert waits == [30.0] and "left 4736 requests unanswered; caught up" in said[-1]

    def never(timeout_s: float) -> tuple[float, int]:
        raise TimeoutError("the rendezvous job did not answer a probe")

    assert stack.drain_after_warm_up(behind, never, said.append, timeout_s=30.0) == {
        "behind": 4736,
        "drained_s": None,
    }
    assert said[-1].endswith("the stack is behind at this rate; measuring anyway")


# --- the one start sequence -----------------------------------------------------------------------------


class FakeBroker:
    bootstrap = "127.0.0.1:1"
    secure = False

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    @contextlib.contextmanager
    def as_admin(self) -> Iterator[None]:
        yield


@pytest.fixture
def broker_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {"broker": FakeBroker()}

    def start(
        data_dir: Path, port: int, controller_port: int, secure: bool = False, tls: bool = False
    ) -> FakeBroker:
        calls["start"] = (data_dir, port, controller_port)
        calls["secure"], calls["tls"] = secure, tls
        return calls["broker"]

    monkeypatch.setattr(stack.KafkaBroker, "start", start)
    monkeypatch.setattr(
        stack.kafka_admin, "ensure_default_topics", lambda b, partitions=1: calls.setdefault("default", b)
    )
    monkeypatch.setattr(
        stack.kafka_admin, "create_topics", lambda b, t, partitions=1: calls.setdefault("topics", (b, t))
    )
    return calls


def test_a_broker_starts_on_free_ports_with_the_default_topics(broker_calls: dict[str, Any]) -> None:
    assert stack.start_broker(Path("/x/broker")) is broker_calls["broker"]
    data_dir, port, controller_port = broker_calls["start"]
    assert data_dir == Path("/x/broker") and port > 0 and controller_port > 0 and port != controller_port
    assert broker_calls["default"] == "127.0.0.1:1" and "topics" not in broker_calls
    assert broker_calls["secure"] is False and broker_calls["tls"] is False
    stack.start_broker(Path("/x/broker"), secure=True, tls=True)  # `make demo SECURE=1 TLS=1`
    assert broker_calls["secure"] is True and broker_calls["tls"] is True


def test_a_broker_starts_with_given_topics_or_none(broker_calls: dict[str, Any]) -> None:
    stack.start_broker(Path("/x"), (t for t in ("a", "b")))
    assert broker_calls.pop("topics") == ("127.0.0.1:1", ["a", "b"]) and "default" not in broker_calls
    stack.start_broker(Path("/x"), topics=())
    assert "topics" not in broker_calls and "default" not in broker_calls


def test_a_broker_whose_topics_fail_is_stopped(
    broker_calls: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_bootstrap: str, partitions: int = 1) -> None:
        raise RuntimeError("no controller")

    monkeypatch.setattr(stack.kafka_admin, "ensure_default_topics", fail)
    with pytest.raises(RuntimeError, match="no controller"):
        stack.start_broker(Path("/x"))
    assert broker_calls["broker"].stopped


def test_the_labeller_is_started_and_awaited_like_a_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class FakeProcess:
        def __init__(self, argv: list[str], log_path: Path) -> None:
            started.append(argv)
            self.log_path = log_path
            log_path.write_text("labeller ready\n")

        def is_running(self) -> bool:
            return True

    monkeypatch.setattr(
        stack.procs.ManagedProcess, "start", lambda argv, log_path, cwd: FakeProcess(argv, log_path)
    )
    processes = stack.Processes()
    p = stack.start_labeller("k:9092", tmp_path / "labeller.log", processes, ["--seed", "7"])
    assert started == [[sys.executable, "-m", "runners.labeller", "--bootstrap", "k:9092", "--seed", "7"]]
    assert processes.started == [p]


def test_harnesses_and_e2e_tests_start_the_stack_through_harness_stack() -> None:
    """No copy of the start sequence: the broker, runners, labeller and job start in harness/stack.py
    (the fault suite restarts its broker on the same ports, by itself: a restart, not a start)."""
    root = Path(__file__).resolve().parents[2]
    starts = re.compile(r'KafkaBroker\.start\(|"-m", "(runners|jobs)\.')
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted([*(root / "harness").glob("*.py"), *(root / "tests" / "e2e").glob("*.py")])
        if path.name != "stack.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if starts.search(line)
    ]
    assert found == [], "\n".join(found)

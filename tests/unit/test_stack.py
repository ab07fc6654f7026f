"""The shared stack helpers' pure parts (harness/stack.py): the warm-up's rounds."""

from __future__ import annotations

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

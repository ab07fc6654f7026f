"""Latency percentiles and their one-line summary, in plain Python so reports need nothing heavier."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

# The tail quantiles a rendezvous server is judged by; p99.9 needs ~1000+ samples to mean anything.
QUANTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation (numpy's default).

    Sorting is left to the caller so several quantiles cost one sort.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"q must be within [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    return a + (b - a) * frac


def percentiles(values: Iterable[float], qs: Sequence[float] = QUANTILES) -> dict[float, float]:
    """Several percentiles of unsorted values; {} for no values (nothing measured is not zero latency)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return {}
    return {q: percentile(ordered, q) for q in qs}


def quantile_label(q: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9': the names used in reports and JSON."""
    return f"p{q:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one latency measure; None fields when there were no samples."""

    count: int
    min: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    p99_9: float | None
    max: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain dict for JSON, with p99.9 under its usual name."""
        d = asdict(self)
        d["p99.9"] = d.pop("p99_9")
        return d


def summarize(values: Iterable[float]) -> LatencySummary:
    """count/min/mean/p50/p90/p99/p99.9/max of the values."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return LatencySummary(0, None, None, None, None, None, None, None)
    p = {q: percentile(ordered, q) for q in QUANTILES}
    return LatencySummary(
        count=len(ordered),
        min=ordered[0],
        mean=math.fsum(ordered) / len(ordered),
        p50=p[50.0],
        p90=p[90.0],
        p99=p[99.0],
        p99_9=p[99.9],
        max=ordered[-1],
    )


def format_summary(summary: LatencySummary, unit: str = "ms") -> str:
    """One line such as 'n=2000 p50=3.1ms p90=5.0ms p99=9.8ms p99.9=14.2ms max=15.0ms'."""
    if summary.count == 0:
        return "n=0 (no samples)"
    parts = [f"n={summary.count}"]
    for name, v in (
        ("p50", summary.p50),
        ("p90", summary.p90),
        ("p99", summary.p99),
        ("p99.9", summary.p99_9),
        ("max", summary.max),
    ):
        parts.append(f"{name}={format_ms(v)}{unit}")
    return " ".join(parts)


def format_ms(v: float | None) -> str:
    """Three significant-ish digits: latencies span 0.1 ms to minutes."""
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"

"""Per-model live metrics, derived from a decision record when its mailbox closes. Pure Python.

At close the decision record (``schemas/decision.schema.json``) holds everything the mailbox learnt
about one request: the official result and every score with its arrival time and ``late`` /
``duplicate`` flags. ``model_counts`` turns it into counter increments per model the policy lists;
the Flink adapter (``udfs.flink_fn``) only adds them to Flink counters named by ``names.model_metric``.

Per model and request (duplicates never count; models the policy does not list are left out, they
are counted once, as ``unknown_model_scores``, by the mailbox):

- ``scores``: 1 if the model's score arrived (ok or error), ``errors``: 1 if it was an error score;
- ``wins``: 1 if it gave the official answer (``no_answer`` is nobody's win);
- ``late``: 1 if its score arrived after the official decision (within the late window);
- ``timeouts``: 1 if no score from it had arrived when the mailbox closed (deadline + late window);
- latency: score arrival minus request arrival, in ms (0 for a score that came before its request),
  added to ``latency_ms_sum`` and to every cumulative bucket ``latency_ms_le_<b>`` with b >= it.

Counting at close (not as scores arrive) makes every figure final and consistent with the decision
log that evaluation reads: ``scores + timeouts`` is the number of closed mailboxes, per model.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

from udfs import names


def latency_buckets(latency_ms: float) -> list[str]:
    """The cumulative bucket counters one observation increments (always ending with ``le_inf``).

    >>> latency_buckets(900)
    ['latency_ms_le_1000', 'latency_ms_le_2500', 'latency_ms_le_5000', 'latency_ms_le_inf']
    """
    out = [names.latency_bucket_metric(b) for b in names.MODEL_LATENCY_BUCKETS_MS if latency_ms <= b]
    out.append(names.latency_bucket_metric(None))
    return out


def _first_scores(decision: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each model's first score in the record (duplicates never count)."""
    first: dict[str, Mapping[str, Any]] = {}
    for s in decision.get("scores", ()):
        if not s.get("duplicate") and s.get("model_id") not in first:
            first[s["model_id"]] = s
    return first


def model_counts(decision: Mapping[str, Any], model_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """{model id: {metric: increment}} for one closed mailbox; only non-zero increments are listed.

    ``decision`` is a decision record; a record without a result (never emitted by the mailbox) gives {}.

    >>> decision = {
    ...     "received_at_ms": 1000,
    ...     "result": {"model_id": "gbt", "reason": "preferred"},
    ...     "scores": [{"model_id": "gbt", "status": "ok", "late": False, "arrived_at_ms": 1030}],
    ... }
    >>> counts = model_counts(decision, ["gbt", "tree"])
    >>> counts["tree"]
    {'timeouts': 1}
    >>> {k: v for k, v in counts["gbt"].items() if "_le_" not in k}
    {'scores': 1, 'latency_ms_sum': 30, 'wins': 1}
    """
    result = decision.get("result")
    if result is None:
        return {}
    received = decision.get("received_at_ms")
    winner = result.get("model_id") if result.get("reason") != "no_answer" else None
    first = _first_scores(decision)
    out: dict[str, dict[str, int]] = {}
    for mid in model_ids:
        c: dict[str, int] = {}
        s = first.get(mid)
        if s is None:
            c[names.MODEL_METRIC_TIMEOUTS] = 1
        else:
            c[names.MODEL_METRIC_SCORES] = 1
            if s.get("status") != "ok":
                c[names.MODEL_METRIC_ERRORS] = 1
            if s.get("late"):
                c[names.MODEL_METRIC_LATE] = 1
            if received is not None and s.get("arrived_at_ms") is not None:
                latency = max(0, int(s["arrived_at_ms"]) - int(received))
                c[names.MODEL_METRIC_LATENCY_SUM] = latency
                for bucket in latency_buckets(latency):
                    c[bucket] = 1
        if mid == winner:
            c[names.MODEL_METRIC_WINS] = 1
        out[mid] = {k: v for k, v in c.items() if v}
    return out


def totals(decisions: Iterable[Mapping[str, Any]], model_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """The counters' values after these decisions (what a scrape should show): sums of ``model_counts``."""
    ids = list(model_ids)
    out: dict[str, dict[str, int]] = {mid: dict.fromkeys(names.MODEL_METRICS, 0) for mid in ids}
    for d in decisions:
        for mid, c in model_counts(d, ids).items():
            for k, v in c.items():
                out[mid][k] += v
    return out


class Tally:
    """``model_counts`` summed over many decision records, at a cost the hot path can pay.

    The Flink adapter adds every closed mailbox here and drains the sums into its counters once a second.
    Per record it keeps only what differs per request (a dozen additions), and each latency as one
    count in its own bucket; the cumulative ``latency_ms_le_<b>`` increments are summed at ``drain``.
    ``drain`` returns exactly what ``model_counts`` would have added up to (tests/unit/test_model_metrics).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._bucket_hits: dict[str, list[int]] = {}  # model -> hits per bucket (the last: beyond all)

    def add(self, decision: Mapping[str, Any], model_ids: Iterable[str]) -> None:
        result = decision.get("result")
        if result is None:
            return
        received = decision.get("received_at_ms")
        winner = result.get("model_id") if result.get("reason") != "no_answer" else None
        first = _first_scores(decision)
        counts = self._counts
        for mid in model_ids:
            s = first.get(mid)
            if s is None:
                key = (mid, names.MODEL_METRIC_TIMEOUTS)
                counts[key] = counts.get(key, 0) + 1
            else:
                key = (mid, names.MODEL_METRIC_SCORES)
                counts[key] = counts.get(key, 0) + 1
                if s.get("status") != "ok":
                    key = (mid, names.MODEL_METRIC_ERRORS)
                    counts[key] = counts.get(key, 0) + 1
                if s.get("late"):
                    key = (mid, names.MODEL_METRIC_LATE)
                    counts[key] = counts.get(key, 0) + 1
                if received is not None and s.get("arrived_at_ms") is not None:
                    latency = max(0, int(s["arrived_at_ms"]) - int(received))
                    if latency:
                        key = (mid, names.MODEL_METRIC_LATENCY_SUM)
                        counts[key] = counts.get(key, 0) + latency
                    hits = self._bucket_hits.get(mid)
                    if hits is None:
                        hits = self._bucket_hits[mid] = [0] * (len(names.MODEL_LATENCY_BUCKETS_MS) + 1)
                    hits[bisect.bisect_left(names.MODEL_LATENCY_BUCKETS_MS, latency)] += 1
            if mid == winner:
                key = (mid, names.MODEL_METRIC_WINS)
                counts[key] = counts.get(key, 0) + 1

    def drain(self) -> dict[tuple[str, str], int]:
        """{(model id, metric): increment} since the last drain, non-zero only; then starts again."""
        out = self._counts
        for mid, hits in self._bucket_hits.items():
            below = 0
            for bound, n in zip(names.MODEL_LATENCY_BUCKETS_MS, hits, strict=False):
                below += n
                if below:
                    out[(mid, names.latency_bucket_metric(bound))] = below
            below += hits[-1]
            if below:
                out[(mid, names.latency_bucket_metric(None))] = below
        self._counts, self._bucket_hits = {}, {}
        return out

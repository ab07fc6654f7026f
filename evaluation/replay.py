"""Policy replay: what would a candidate policy have answered, on the requests that really came?

The decision log keeps, per request, its arrival time and every score with its own arrival time
(late ones too, flagged). That is all ``udfs.policy.decide`` needs, so a candidate policy can be run
offline exactly as the mailbox runs it: evaluated when the request arrives, at every score arrival and
at every timer it asks for, records at the same millisecond before the timer. What ran and what the
candidate would have done are then compared: wins per model, latency, deadline misses, no-answers and,
for labelled requests, quality.

Limits, stated rather than hidden:
- Timers fire exactly on time here; on the job they fire a little late, so the actual latencies include
  slack the replay does not (the candidate never misses its deadline by construction).
- The log ends when the mailbox closes (deadline + ``late_window_ms``). A candidate that decides after
  that could have seen scores the log does not have; such requests are flagged ``beyond_log``.
- A request's own ``deadline_ms`` override is not in the decision log (it is in the decoy archive);
  pass ``deadlines`` to honour it, else the candidate's deadline applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from evaluation.labels import Label, latest_labels, prediction
from evaluation.quality import metrics
from ops.latency import percentile
from udfs.policy import Decided, Policy, ScoreView, decide

NO_MODEL = "(none)"


@dataclass(frozen=True)
class Replayed:
    request_id: str
    model_id: str | None
    reason: str
    trigger: str
    output: Any
    received_at_ms: int
    decided_at_ms: int
    beyond_log: bool  # decided after the log closed: scores the log lacks might have changed it

    @property
    def latency_ms(self) -> int:
        return self.decided_at_ms - self.received_at_ms


def _arrivals(decision: Mapping[str, Any]) -> list[tuple[int, str, ScoreView]]:
    """Each model's first score (duplicates dropped, late ones kept), in arrival order."""
    out = []
    for s in decision.get("scores", ()):
        if s.get("duplicate"):
            continue
        view = ScoreView(s["status"] == "ok", s.get("output"), s["model_version"])
        out.append((int(s["arrived_at_ms"]), s["model_id"], view))
    out.sort(key=lambda x: x[0])  # stable: same-millisecond scores keep the log's (arrival) order
    return out


def replay_one(
    decision: Mapping[str, Any], policy: Policy, deadline_ms: int | None = None
) -> Replayed | None:
    """The candidate's decision for one decision-log record; None for an orphan (no request)."""
    received = decision.get("received_at_ms")
    if received is None:
        return None
    deadline_at = received + (deadline_ms or policy.deadline_ms)
    arrivals = _arrivals(decision)
    views: dict[str, ScoreView] = {}
    i = 0
    while i < len(arrivals) and arrivals[i][0] <= received:  # held in the mailbox before the request
        views[arrivals[i][1]] = arrivals[i][2]
        i += 1
    # As in the mailbox (udfs/mailbox.py): the policy's clock moves only when a timer fires, to the due
    # time decide asked for; a record is read at its arrival and sees the clock of the last timer. A
    # timer set for a time already passed fires at once, after the records of that millisecond.
    now, clock, by_timer = received, received, False
    while True:
        verdict = decide(policy, views, received, deadline_at, clock, by_timer)
        if isinstance(verdict, Decided):
            closed = decision.get("closed_at_ms")
            return Replayed(
                decision["request_id"],
                verdict.model_id,
                verdict.reason,
                verdict.trigger,
                verdict.output,
                received,
                now,
                closed is not None and now > closed,
            )
        fires_at = max(now, verdict.wake_at_ms)
        if i < len(arrivals) and arrivals[i][0] <= fires_at:  # records before timers
            now = max(now, arrivals[i][0])
            views[arrivals[i][1]] = arrivals[i][2]
            i += 1
            by_timer = False
        else:
            now, clock, by_timer = fires_at, verdict.wake_at_ms, True


@dataclass(frozen=True)
class ReplayReport:
    requests: pd.DataFrame  # one row per request: what ran and what the candidate would have done
    summary: pd.DataFrame  # one row per policy ("actual", "candidate")
    wins: pd.DataFrame  # policy, model_id, count, share

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": _records(self.summary),
            "wins": _records(self.wins),
            "changed": int((self.requests["actual_model"] != self.requests["candidate_model"]).sum()),
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in df.to_dict("records")
    ]


def replay(
    decisions: Iterable[Mapping[str, Any]],
    candidate: Policy,
    *,
    labels: Iterable[Label] = (),
    actual_policy: Policy | None = None,
    deadlines: Mapping[str, int] | None = None,
) -> ReplayReport:
    """Replay ``candidate`` over the log and put it side by side with what actually ran.

    Deadline misses of the actual results are counted against ``actual_policy``'s deadline (or the
    candidate's when not given), per request where ``deadlines`` overrides it.
    """
    truth = latest_labels(labels)
    rows = []
    for d in decisions:
        res = d.get("result")
        if res is None:
            continue
        own = (deadlines or {}).get(d["request_id"])
        r = replay_one(d, candidate, own)
        assert r is not None
        lab = truth.get(d["request_id"])
        ap, ay, av = prediction(res["output"] if res["reason"] != "no_answer" else None)
        cp, cy, cv = prediction(r.output if r.reason != "no_answer" else None)
        rows.append(
            {
                "request_id": d["request_id"],
                "received_at_ms": r.received_at_ms,
                "actual_model": res["model_id"] or NO_MODEL,
                "actual_reason": res["reason"],
                "actual_latency_ms": res["decided_at_ms"] - d["received_at_ms"],
                "actual_deadline_ms": own or (actual_policy or candidate).deadline_ms,
                "actual_probability": ap,
                "actual_label": ay,
                "actual_value": av,
                "candidate_model": r.model_id or NO_MODEL,
                "candidate_reason": r.reason,
                "candidate_trigger": r.trigger,
                "candidate_latency_ms": r.latency_ms,
                "candidate_deadline_ms": own or candidate.deadline_ms,
                "candidate_probability": cp,
                "candidate_label": cy,
                "candidate_value": cv,
                "beyond_log": r.beyond_log,
                "label_true": math.nan if lab is None else lab.truth,
            }
        )
    frame = pd.DataFrame(rows, columns=_REQUEST_COLUMNS)
    summary = pd.DataFrame(
        [_summary(frame, side) for side in ("actual", "candidate")], columns=_SUMMARY_COLUMNS
    )
    wins = pd.concat([_wins(frame, side) for side in ("actual", "candidate")], ignore_index=True)
    return ReplayReport(frame, summary, wins)


_REQUEST_COLUMNS = [
    "request_id",
    "received_at_ms",
    "actual_model",
    "actual_reason",
    "actual_latency_ms",
    "actual_deadline_ms",
    "actual_probability",
    "actual_label",
    "actual_value",
    "candidate_model",
    "candidate_reason",
    "candidate_trigger",
    "candidate_latency_ms",
    "candidate_deadline_ms",
    "candidate_probability",
    "candidate_label",
    "candidate_value",
    "beyond_log",
    "label_true",
]
_SUMMARY_COLUMNS = [
    "policy",
    "requests",
    "latency_p50_ms",
    "latency_p99_ms",
    "deadline_misses",
    "no_answers",
    "beyond_log",
    "labelled",
    "accuracy",
    "auc",
    "log_loss",
]


def _summary(frame: pd.DataFrame, side: str) -> dict[str, Any]:
    lat = sorted(frame[f"{side}_latency_ms"].astype(float))
    labelled = frame[frame["label_true"].notna()]
    q = metrics(
        pd.DataFrame(
            {
                "probability": labelled[f"{side}_probability"],
                "label": labelled[f"{side}_label"],
                "value": labelled[f"{side}_value"],
                "label_true": labelled["label_true"],
            }
        )
    )
    return {
        "policy": side,
        "requests": len(frame),
        "latency_p50_ms": percentile(lat, 50) if lat else math.nan,
        "latency_p99_ms": percentile(lat, 99) if lat else math.nan,
        "deadline_misses": int((frame[f"{side}_latency_ms"] > frame[f"{side}_deadline_ms"]).sum()),
        "no_answers": int((frame[f"{side}_reason"] == "no_answer").sum()),
        "beyond_log": int(frame["beyond_log"].sum()) if side == "candidate" else 0,
        "labelled": len(labelled),
        "accuracy": q["accuracy"],
        "auc": q["auc"],
        "log_loss": q["log_loss"],
    }


def _wins(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    counts = frame[f"{side}_model"].value_counts().sort_index()
    total = int(counts.sum())
    return pd.DataFrame(
        {
            "policy": side,
            "model_id": counts.index.astype(str),
            "count": counts.to_numpy(dtype=int),
            "share": counts.to_numpy(dtype=float) / total if total else [],
        },
        columns=["policy", "model_id", "count", "share"],
    )

"""Labels: the truth about a request, known later, and its join with the decision log.

A label record (``schemas/label.schema.json``) is ``{request_id, label, labelled_at_ms}``; ``label`` is
0/1 (or false/true) for classifiers or any finite number for value models. Labels are parsed like
every other wire record (``udfs.wire_in``): a bad one becomes a ``DeadLetter`` with a reason code, never
an exception, so a labels topic can feed a stream job later without a new error path.

``join_labels`` turns decision-log records (``schemas/decision.schema.json``) plus labels into one
row per (request, model) for ``evaluation.quality``: every model that scored the request and the
pseudo-model ``official`` (what the caller actually got).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from runners.data import FEATURES, generate
from udfs.feedback import LABEL_FIELDS, Label, parse_label  # the job parses labels the same way
from udfs.names import TOPIC_LABELS
from udfs.wire_in import DeadLetter, Source

__all__ = ["LABEL_FIELDS", "TOPIC_LABELS", "Label", "parse_label"]
OFFICIAL = "official"  # the pseudo-model for the official answer in joined rows

# Columns of the rows join_labels returns (and evaluation.quality reads).
ROW_COLUMNS = (
    "request_id",
    "model_id",
    "role",
    "status",
    "probability",
    "label",
    "value",
    "label_true",
    "received_at_ms",
    "decided_at_ms",
    "arrived_at_ms",
    "latency_ms",
    "late",
    "chosen_model",
)


def read_labels(path: str | Path) -> tuple[list[Label], list[DeadLetter]]:
    """Labels from a JSON-lines file (blank lines skipped); bad lines come back as dead letters."""
    good: list[Label] = []
    bad: list[DeadLetter] = []
    with Path(path).open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parsed = parse_label(line.rstrip(b"\r\n"), Source(str(path), None, lineno))
            if isinstance(parsed, Label):
                good.append(parsed)
            else:
                bad.append(parsed)
    return good, bad


def latest_labels(labels: Iterable[Label]) -> dict[str, Label]:
    """One label per request: the latest labelled_at_ms wins (a correction supersedes), ties the later one."""
    out: dict[str, Label] = {}
    for lab in labels:
        old = out.get(lab.request_id)
        if old is None or lab.labelled_at_ms >= old.labelled_at_ms:
            out[lab.request_id] = lab
    return out


def _num(v: Any) -> float:
    """A label/probability/value as a float; NaN when absent or not numeric (a string class name)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return math.nan


def prediction(output: Any) -> tuple[float, float, float]:
    """(probability, label, value) of an output object; NaN for each that is missing."""
    if not isinstance(output, Mapping):
        return math.nan, math.nan, math.nan
    return _num(output.get("probability")), _num(output.get("label")), _num(output.get("value"))


def join_labels(decisions: Iterable[Mapping[str, Any]], labels: Iterable[Label]) -> pd.DataFrame:
    """Rows (request, model) for every labelled, decided request: each model's first score and ``official``.

    Orphan mailboxes (no request, no result) and requests without a label are left out. Error scores
    and a ``no_answer`` result are kept, with NaN predictions: quality counts them as missing answers.
    Late scores are kept and flagged (``late``): the model did answer, after the official decision.
    """
    truth = latest_labels(labels)
    rows: list[dict[str, Any]] = []
    for d in decisions:
        res = d.get("result")
        lab = truth.get(str(d.get("request_id")))
        if res is None or lab is None:
            continue
        received = d["received_at_ms"]
        decided = d["decided_at_ms"]
        p, y, v = prediction(res.get("output") if res.get("reason") != "no_answer" else None)
        rows.append(
            {
                "request_id": d["request_id"],
                "model_id": OFFICIAL,
                "role": OFFICIAL,
                "status": "no_answer" if res.get("reason") == "no_answer" else "ok",
                "probability": p,
                "label": y,
                "value": v,
                "label_true": lab.truth,
                "received_at_ms": received,
                "decided_at_ms": decided,
                "arrived_at_ms": decided,
                "latency_ms": float(decided - received),
                "late": False,
                "chosen_model": res.get("model_id"),
            }
        )
        for s in d.get("scores", ()):
            if s.get("duplicate"):
                continue
            p, y, v = prediction(s.get("output") if s.get("status") == "ok" else None)
            rows.append(
                {
                    "request_id": d["request_id"],
                    "model_id": s["model_id"],
                    "role": s.get("role", "unknown"),
                    "status": s.get("status"),
                    "probability": p,
                    "label": y,
                    "value": v,
                    "label_true": lab.truth,
                    "received_at_ms": received,
                    "decided_at_ms": decided,
                    "arrived_at_ms": s["arrived_at_ms"],
                    "latency_ms": float(s["arrived_at_ms"] - received),
                    "late": bool(s.get("late", False)),
                    "chosen_model": res.get("model_id"),
                }
            )
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


# --- labels for generated traffic ------------------------------------------------------------------------


def labelled_requests(
    run_id: str, n: int, seed: int, labelled_at_ms: int
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(request ids, features, label records) for n generated requests: the generator knows the truth.

    Ids follow the load generator's ``<run_id>-<seq>`` so a demo can send these features and publish
    these labels for the same ids; features are plain Python numbers (JSON-serialisable).
    """
    frame, truth = generate(n, seed)
    ids = [f"{run_id}-{i}" for i in range(n)]
    cols = {f: frame[f].tolist() for f in FEATURES}
    features = [{f: cols[f][i] for f in FEATURES} for i in range(n)]
    labels = [
        {"request_id": rid, "label": int(y), "labelled_at_ms": labelled_at_ms}
        for rid, y in zip(ids, truth.tolist(), strict=True)
    ]
    return ids, features, labels

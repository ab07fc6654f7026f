"""evaluation.labels: the label wire format, its join with the decision log, labels for generated data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from evaluation.labels import (
    OFFICIAL,
    ROW_COLUMNS,
    Label,
    join_labels,
    labelled_requests,
    latest_labels,
    parse_label,
    prediction,
    read_labels,
)
from runners.data import generate, truth_labels
from udfs.wire_in import DeadLetter
from udfs.wire_out import dead_letter_to_dict

ROOT = Path(__file__).resolve().parents[2]
LABEL_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "label.schema.json").read_text()))
DEAD_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "dead_letter.schema.json").read_text()))


def test_label_schema_is_valid_and_in_house_style() -> None:
    schema = json.loads((ROOT / "schemas" / "label.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "urn:rendezvous:schema:label:1"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "record",
    [
        {"request_id": "r-1", "label": 1, "labelled_at_ms": 5},
        {"request_id": "r-1", "label": 0, "labelled_at_ms": 0},
        {"request_id": "run:1.a_b-2", "label": True, "labelled_at_ms": 1_700_000_000_000},
        {"request_id": "r-1", "label": 12.75, "labelled_at_ms": 5},
    ],
)
def test_valid_labels_parse_and_round_trip(record: dict[str, Any]) -> None:
    assert LABEL_SCHEMA.is_valid(record)
    for form in (record, json.dumps(record), json.dumps(record).encode()):
        lab = parse_label(form)
        assert isinstance(lab, Label)
        assert lab.to_dict() == record
    assert parse_label(record).truth == float(record["label"])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "reason", "rid"),
    [
        (b"\xff\xfe", "not_utf8", None),
        ("{not json", "not_json", None),
        ("[1]", "not_object", None),
        ('{"request_id": "r-1", "label": NaN, "labelled_at_ms": 1}', "not_json", None),
        ('{"request_id": "r-1", "labelled_at_ms": 1}', "missing_field", "r-1"),
        ('{"request_id": "r-1", "label": 1}', "missing_field", "r-1"),
        ('{"label": 1, "labelled_at_ms": 1}', "missing_field", None),
        ('{"request_id": "a b", "label": 1, "labelled_at_ms": 1}', "bad_request_id", None),
        ('{"request_id": "r-1", "label": 1, "labelled_at_ms": 1, "x": 2}', "unknown_field", "r-1"),
        ('{"request_id": "r-1", "label": "fraud", "labelled_at_ms": 1}', "bad_field", "r-1"),
        ('{"request_id": "r-1", "label": null, "labelled_at_ms": 1}', "bad_field", "r-1"),
        ('{"request_id": "r-1", "label": 1, "labelled_at_ms": -1}', "bad_field", "r-1"),
        ('{"request_id": "r-1", "label": 1, "labelled_at_ms": 1.5}', "bad_field", "r-1"),
        ('{"request_id": "r-1", "label": 1e999, "labelled_at_ms": 1}', "bad_field", "r-1"),
    ],
)
def test_bad_labels_become_dead_letters(raw: str | bytes, reason: str, rid: str | None) -> None:
    dead = parse_label(raw)
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.request_id) == (reason, rid)
    record = dead_letter_to_dict(dead, at_ms=7)
    assert DEAD_SCHEMA.is_valid(record), record  # a labels topic could feed the dead-letter topic as is
    assert record["source_topic"] == "labels"


def test_nan_in_a_mapping_is_refused_too() -> None:
    dead = parse_label({"request_id": "r", "label": math.nan, "labelled_at_ms": 1})
    assert isinstance(dead, DeadLetter) and dead.reason == "not_json"


label_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)
ids = st.text(max_size=6) | st.from_regex(r"[A-Za-z0-9._:-]{1,10}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    ids,
    label_values,
    st.integers(min_value=-3, max_value=2**60)
    | st.floats(allow_nan=False).filter(lambda x: not x.is_integer()),
)
def test_parser_agrees_with_the_schema(rid: str, value: Any, at: Any) -> None:
    """parse_label accepts exactly what label.schema.json accepts (for finite JSON).

    Integral floats (1.0) are left out: JSON Schema calls them integers, the parser (like udfs.wire_in for
    every timestamp) does not.
    """
    record = {"request_id": rid, "label": value, "labelled_at_ms": at}
    text = json.dumps(record)  # may contain NaN/Infinity: not JSON, and the schema never sees them
    parsed = parse_label(text)
    try:
        strict = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        assert isinstance(parsed, DeadLetter)
        return
    assert isinstance(parsed, Label) == LABEL_SCHEMA.is_valid(strict), (record, parsed)


def test_read_labels_from_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "labels.jsonl"
    p.write_text(
        '{"request_id": "a", "label": 1, "labelled_at_ms": 10}\n'
        "\n"
        "garbage\n"
        '{"request_id": "b", "label": 0, "labelled_at_ms": 11}\r\n'
    )
    good, bad = read_labels(p)
    assert [(x.request_id, x.label) for x in good] == [("a", 1), ("b", 0)]
    assert [(d.reason, d.source.offset) for d in bad] == [("not_json", 3)]


def test_latest_label_wins() -> None:
    labs = [Label("a", 1, 10), Label("a", 0, 30), Label("a", 1, 20), Label("b", 0, 5), Label("b", 1, 5)]
    latest = latest_labels(labs)
    assert latest == {"a": Label("a", 0, 30), "b": Label("b", 1, 5)}


def test_prediction_reads_output_objects() -> None:
    assert prediction({"label": 1, "probability": 0.8}) == (0.8, 1.0, pytest.approx(math.nan, nan_ok=True))
    p, y, v = prediction({"label": "fraud", "value": 3})
    assert math.isnan(p) and math.isnan(y) and v == 3.0
    assert all(math.isnan(x) for x in prediction(None))
    assert prediction({"label": True})[1] == 1.0


def score(
    model: str, role: str, at: int, output: Any = None, status: str = "ok", **over: Any
) -> dict[str, Any]:
    return {
        "model_id": model,
        "model_version": f"{model}-v1",
        "role": role,
        "status": status,
        "output": output if status == "ok" else None,
        "error": None if status == "ok" else "boom",
        "scored_at_ms": at - 1,
        "latency_ms": 1.0,
        "arrived_at_ms": at,
        "late": False,
        "duplicate": False,
    } | over


def decision(
    rid: str, received: int, decided: int, model: str | None, output: Any, scores: list[Any]
) -> dict[str, Any]:
    reason = "no_answer" if model is None else "preferred"
    return {
        "request_id": rid,
        "policy_version": 1,
        "received_at_ms": received,
        "decided_at_ms": decided,
        "closed_at_ms": decided + 1000,
        "result": {
            "request_id": rid,
            "model_id": model,
            "model_version": None if model is None else f"{model}-v1",
            "output": output,
            "reason": reason,
            "trigger": "score",
            "policy_version": 1,
            "sent_at_ms": received,
            "received_at_ms": received,
            "decided_at_ms": decided,
            "latency_ms": decided - received,
            "answered": [],
            "failed": [],
        },
        "scores": scores,
    }


def test_join_labels_rows() -> None:
    decisions = [
        decision(
            "r1",
            100,
            112,
            "gbt",
            {"label": 1, "probability": 0.9},
            [
                score("gbt", "incumbent", 112, {"label": 1, "probability": 0.9}),
                score("gbt", "incumbent", 113, {"label": 0, "probability": 0.1}, duplicate=True),
                score("logreg", "challenger", 150, {"label": 0, "probability": 0.3}, late=True),
                score("tree", "backstop", 105, status="error"),
            ],
        ),
        decision("r2", 200, 300, None, None, [score("base", "canary", 210, {"label": 0})]),
        decision("r3", 300, 310, "gbt", {"label": 1}, []),  # no label: left out
        {
            **decision("r4", 0, 0, None, None, []),
            "received_at_ms": None,
            "decided_at_ms": None,
            "result": None,
        },
    ]
    labels = [Label("r1", 1, 1000), Label("r2", False, 1000), Label("r4", 1, 1000), Label("zz", 1, 1)]
    rows = join_labels(decisions, labels)
    assert list(rows.columns) == list(ROW_COLUMNS)
    got = [
        (
            r.request_id,
            r.model_id,
            r.role,
            r.status,
            r.probability,
            r.label,
            r.label_true,
            r.latency_ms,
            r.late,
        )
        for r in rows.itertuples()
    ]
    nan = math.nan
    expected = [
        ("r1", OFFICIAL, OFFICIAL, "ok", 0.9, 1.0, 1.0, 12.0, False),
        ("r1", "gbt", "incumbent", "ok", 0.9, 1.0, 1.0, 12.0, False),
        ("r1", "logreg", "challenger", "ok", 0.3, 0.0, 1.0, 50.0, True),
        ("r1", "tree", "backstop", "error", nan, nan, 1.0, 5.0, False),
        ("r2", OFFICIAL, OFFICIAL, "no_answer", nan, nan, 0.0, 100.0, False),
        ("r2", "base", "canary", "ok", nan, 0.0, 0.0, 10.0, False),
    ]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, nan_ok=True)
    assert set(rows["chosen_model"].dropna()) == {"gbt"}
    assert rows.loc[rows.request_id == "r2", "chosen_model"].isna().all()


def test_join_labels_without_matches_is_an_empty_frame_with_the_columns() -> None:
    rows = join_labels([], [Label("a", 1, 1)])
    assert rows.empty and list(rows.columns) == list(ROW_COLUMNS)


def test_labelled_requests_match_the_generator() -> None:
    ids, feats, labels = labelled_requests("run-1", 50, seed=3, labelled_at_ms=99)
    frame, truth = generate(50, 3)
    assert ids == [f"run-1-{i}" for i in range(50)]
    assert [lab["label"] for lab in labels] == truth.tolist()
    assert feats[7] == {
        k: (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[7].to_dict().items()
    }
    json.dumps(feats)  # plain Python numbers
    for rec in labels:
        assert isinstance(parse_label(rec), Label) and LABEL_SCHEMA.is_valid(rec)
        assert rec["labelled_at_ms"] == 99


def test_truth_labels_follow_the_ground_truth() -> None:
    frame, truth = generate(20_000, 11)
    feats = frame.to_dict("records")
    drawn = truth_labels(feats, np.random.default_rng(5))
    assert drawn == truth_labels(feats, np.random.default_rng(5))  # seeded: deterministic
    assert set(drawn) <= {0, 1}
    # Fresh draws from the same probabilities: same base rate, and they agree with the generator's labels
    # far more often on positives than the base rate would by chance.
    assert abs(np.mean(drawn) - truth.mean()) < 0.01
    pos = truth == 1
    assert np.mean(np.asarray(drawn)[pos]) > 3 * truth.mean()
    assert truth_labels([], np.random.default_rng(0)) == []

"""Retraining from the decoy (evaluation/retrain.py): the window's partitions and query, the join with
labels, version naming, the registry, the shadow policy, and a whole run on a Parquet archive in a tmp dir."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from jsonschema import Draft202012Validator

from evaluation import retrain
from evaluation.cli import main as eval_main
from evaluation.report import render_report
from ops import archive
from runners import model as runner_model
from runners.data import FEATURES, generate
from udfs.feedback import Label
from udfs.policy import parse_policy

ROOT = Path(__file__).resolve().parents[2]
T = 1_796_518_800_000  # 2026-12-06T01:00:00Z
HOUR = 3_600_000
POLICY = {
    "version": 3,
    "deadline_ms": 100,
    "models": [{"id": "logreg", "role": "incumbent", "wait_ms": 40}, {"id": "tree", "role": "backstop"}],
}


def test_the_window_reaches_exactly_the_hours_it_overlaps() -> None:
    assert retrain.partitions(T, T + HOUR) == [("2026-12-06", 1)]
    assert retrain.partitions(T - 1, T + 1) == [("2026-12-06", 0), ("2026-12-06", 1)]
    assert retrain.partitions(T + 23 * HOUR + 5, T + 24 * HOUR + 5) == [("2026-12-07", 0), ("2026-12-07", 1)]
    assert retrain.partitions(T, T) == []
    sql = retrain.archive_sql(T - 1, T + 1)
    assert "(dt = DATE '2026-12-06' AND hour = 0) OR (dt = DATE '2026-12-06' AND hour = 1)" in sql
    assert f"received_at_ms >= {T - 1} AND received_at_ms < {T + 1}" in sql


def _features(i: int) -> dict[str, float]:
    return {f: float(i + k) for k, f in enumerate(FEATURES)}


def test_the_join_keeps_one_labelled_row_per_request_and_says_what_it_left_out() -> None:
    rows = [
        ("a", T, json.dumps(_features(1))),
        ("b", T + 1, json.dumps(_features(2))),
        ("a", T + 2, json.dumps(_features(9))),  # a retry: the first copy counts
        ("c", T + 3, json.dumps(_features(3))),  # no label
        ("d", T + 4, json.dumps({"amount": 1.0})),  # features missing
        ("e", T + 5, "not json"),
        ("f", T + 6, json.dumps(_features(6))),  # a value label, not a class
    ]
    labels = [
        Label("a", 0, 10), Label("a", True, 20),  # a correction: the later one wins
        Label("b", 0, 10), Label("d", 1, 10), Label("e", 1, 10), Label("f", 0.4, 10),
    ]  # fmt: skip
    ts = retrain.join_rows(rows, labels)
    assert ts.request_ids == ("a", "b")
    assert ts.y.tolist() == [1, 0] and ts.positives == 1
    assert ts.x.shape == (2, len(FEATURES)) and ts.x[0].tolist() == list(_features(1).values())
    assert ts.skipped == {"bad_features": 2, "duplicate": 1, "label_not_binary": 1, "unlabelled": 1}
    assert retrain.join_rows([], labels).x.shape == (0, len(FEATURES))


def test_model_ids_count_up_per_kind_and_versions_say_when() -> None:
    assert retrain.next_model_id("gbt", []) == "gbt-r1"
    assert retrain.next_model_id("gbt", ["gbt", "gbt-r2", "gbt-r10", "mlp-r40", "gbt-rx"]) == "gbt-r11"
    assert retrain.next_model_id("gbt-r1", ["gbt-r1-r2"]) == "gbt-r1-r3"
    assert retrain.version_of("gbt-r2", T + 61_500) == "gbt-r2-20261206T010101Z"


def test_the_shadow_policy_adds_the_model_as_a_shadow_in_the_next_version() -> None:
    policy = parse_policy(POLICY)
    nxt = retrain.with_shadow(policy, "gbt-r1")
    assert nxt.version == 4 and nxt.role_of("gbt-r1") == "shadow"
    assert nxt.models[:-1] == policy.models and nxt.deadline_ms == policy.deadline_ms
    assert parse_policy(nxt.to_dict()) == nxt  # a valid policy document
    with pytest.raises(ValueError, match="logreg: already in policy v3"):
        retrain.with_shadow(policy, "logreg")


def _archive(archive_dir: Path, n: int, start_ms: int, seed: int) -> tuple[list[str], list[Label]]:
    """n generated requests archived as the job's sink writes them (one file per hour), and their labels."""
    frame, truth = generate(n, seed)
    ids = [f"req-{seed}-{i}" for i in range(n)]
    rows = [
        {"request_id": rid, "received_at_ms": start_ms + i * 1000, "sent_at_ms": None, "return_address": "results",
         "source_topic": "requests", "partition": 0, "offset": i,
         "features": json.dumps({f: frame[f].iloc[i].item() for f in FEATURES}), "raw": "{}"}
        for i, rid in enumerate(ids)
    ]  # fmt: skip
    for hour in sorted({archive.partition_of(int(str(r["received_at_ms"]))) for r in rows}):
        part = [r for r in rows if archive.partition_of(int(str(r["received_at_ms"]))) == hour]
        (archive_dir / hour).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(part, schema=archive.ARCHIVE_SCHEMA), archive_dir / hour / "p.parquet"
        )
    return ids, [Label(rid, int(y), 0) for rid, y in zip(ids, truth.tolist(), strict=True)]


def test_a_run_trains_on_the_window_only_and_registers_a_loadable_model(tmp_path: Path) -> None:
    arch, registry = tmp_path / "archive", tmp_path / "registry"
    ids, labels = _archive(arch, 3000, T - 600_000, seed=3)  # 3000 s: over two hour partitions
    since, until = T - 600_000 + 500_000, T + HOUR  # the last 2500 requests
    done = retrain.retrain(arch, labels[1000:], registry, "logreg", since, until, now_ms=T + 7_000)
    assert (done.model_id, done.model_version) == ("logreg-r1", "logreg-r1-20261206T010007Z")
    info = done.meta["retrain"]
    # 2500 requests in the window; the 500 of them without a label are left out, as are the 500 before it.
    assert (info["archive_rows"], info["skipped"], info["window"]) == (
        2000,
        {"unlabelled": 500},
        [since, until],
    )
    assert done.meta["train"]["rows"] == 1500  # the holdout takes a quarter
    loaded = runner_model.load(done.model_dir)  # what the runner serves
    assert (loaded.model_id, loaded.model_version) == ("logreg-r1", "logreg-r1-20261206T010007Z")
    assert 0.0 <= loaded.score_one(dict(zip(FEATURES, range(8), strict=True)))["probability"] <= 1
    assert done.meta["metrics"]["auc"] > 0.6

    again = retrain.retrain(arch, labels, registry, "logreg", since, until, now_ms=T + 9_000)
    assert again.model_id == "logreg-r2" and set(retrain.registered(registry)) == {"logreg-r1", "logreg-r2"}
    (registry / "half-written").mkdir()  # no meta.json: not registered
    assert set(retrain.registered(registry)) == {"logreg-r1", "logreg-r2"}


def test_too_little_data_is_refused_with_one_line(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    _, labels = _archive(arch, 50, T, seed=4)
    with pytest.raises(ValueError, match="rows must be >= 400, got 50"):
        retrain.retrain(arch, labels, tmp_path / "reg", "gbt", T, T + HOUR, now_ms=T)
    assert retrain.registered(tmp_path / "reg") == {}
    with pytest.raises(ValueError, match="kind: must be one of"):
        retrain.retrain(arch, labels, tmp_path / "reg", "forest", T, T + HOUR, now_ms=T)


def test_the_command_adds_the_base_sample_and_writes_the_shadow_policy(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    _, labels = _archive(arch, 600, T, seed=5)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(lab.to_dict()) + "\n" for lab in labels))
    frame, truth = generate(500, 6)
    frame["label"] = truth
    frame.to_parquet(tmp_path / "sample.parquet", index=False)
    (tmp_path / "policy.yaml").write_text(json.dumps(POLICY))
    code = eval_main([
        "retrain", "--archive-dir", str(arch), "--labels", str(tmp_path / "labels.jsonl"), "--kind", "tree",
        "--registry", str(tmp_path / "reg"), "--window", "1h", "--until-ms", str(T + HOUR),
        "--base-sample", str(tmp_path / "sample.parquet"), "--policy", str(tmp_path / "policy.yaml"),
        "--out", str(tmp_path / "next.yaml"), "--json", str(tmp_path / "out.json"),
    ])  # fmt: skip
    assert code == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["model_id"] == "tree-r1" and out["meta"]["retrain"]["base_rows"] == 500
    assert out["meta"]["retrain"]["archive_rows"] == 600
    assert np.isclose(out["meta"]["train"]["rows"], 1100 * 0.75, atol=1)
    nxt = parse_policy(yaml.safe_load((tmp_path / "next.yaml").read_text()))
    assert nxt.version == 4 and nxt.role_of("tree-r1") == "shadow"
    assert eval_main(["retrain", "--archive-dir", str(arch), "--labels", str(tmp_path / "labels.jsonl"),
                      "--kind", "tree", "--window", "soon"]) == 2  # fmt: skip


def test_adding_the_shadow_is_audited_with_the_training_window_as_evidence() -> None:
    old = parse_policy(POLICY)
    new = retrain.with_shadow(old, "gbt-r1")
    meta = {
        "model_id": "gbt-r1", "model_version": "gbt-r1-20261206T010007Z", "metrics": {"auc": 0.79},
        "retrain": {"window": [T - HOUR, T], "archive_rows": 1900, "archive_positives": 95, "base_rows": 5000,
                    "skipped": {"unlabelled": 100, "duplicate": 3}},
    }  # fmt: skip
    record = retrain.shadow_audit(T + 5, "degrade-scenario", old, new, meta, ["gbt: demoted to shadow (v2)"])
    d = record.to_dict()
    schema = Draft202012Validator(json.loads((ROOT / "schemas" / "audit.schema.json").read_text()))
    assert list(schema.iter_errors(d)) == []
    assert (d["action"], d["outcome"], d["old_version"], d["new_version"]) == ("retrain", "applied", 3, 4)
    assert d["reasons"][0] == "gbt: demoted to shadow (v2)" and "1900 archived requests" in d["reasons"][1]
    ev = d["evidence"]
    assert (ev["window_start_ms"], ev["window_end_ms"], ev["decisions"], ev["labelled"]) == (
        T - HOUR,
        T,
        2000,
        1900,
    )
    roles = {m["model_id"]: (m["role"], m["new_role"]) for m in ev["models"]}
    assert roles == {"logreg": ("incumbent", "incumbent"), "tree": ("backstop", "backstop"),
                     "gbt-r1": ("shadow", "shadow")}  # fmt: skip


def test_the_report_marks_the_loop_s_steps_on_its_charts() -> None:
    wins = pd.DataFrame({"request_id": ["a", "b", "c"], "decided_at_ms": [T, T + 5000, T + 9000],
                         "model_id": ["gbt", "logreg", "gbt-r1"]})  # fmt: skip
    events = {"degraded": T + 1000, "fallback": T + 4000, "promoted": T + 8500}
    page = render_report(wins=wins, events=events)
    assert page.index("<h2>Timeline</h2>") < page.index("<h2>Win share over time</h2>")
    assert "<td>fallback</td>" in page and "<td>3</td>" in page  # seconds after the first step
    assert render_report(wins=wins, events=events) != render_report(wins=wins)  # the lines are drawn
    assert "Timeline" not in render_report(wins=wins)


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(retrain)
    assert result.failed == 0 and result.attempted >= 3

"""evaluation.cli: every subcommand on temporary files, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from evaluation.cli import main
from evaluation.replay import replay_one
from runners.data import FEATURES, generate
from udfs.mailbox import agreement
from udfs.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = ROOT / "policies" / "default.yaml"
DEFAULT = load_policy(DEFAULT_PATH)
N = 600


def score(model: str, at: int, p: float, late: bool = False) -> dict[str, Any]:
    return {
        "model_id": model,
        "model_version": f"{model}-v1",
        "role": DEFAULT.role_of(model),
        "status": "ok",
        "output": {"label": int(p >= 0.5), "probability": round(p, 6)},
        "error": None,
        "scored_at_ms": at,
        "latency_ms": 1.0,
        "arrived_at_ms": at,
        "late": late,
        "duplicate": False,
    }


def make_log(tmp: Path) -> dict[str, Path]:
    """A decision log where logreg is the better model and gbt often misses its 40 ms wait."""
    rng = np.random.default_rng(3)
    decisions, canaries, labels = [], [], []
    for i in range(N):
        rid, received, y = f"r-{i}", 1_000_000 + 100 * i, int(i % 3 == 0)
        skill = {"gbt": 1.0, "logreg": 3.0, "tree": 0.5, "base": 0.8, "mlp": 2.0}
        delay = {
            "gbt": int(rng.integers(5, 60)),
            "logreg": int(rng.integers(5, 65)),
            "tree": 8,
            "base": 3,
            "mlp": 20,
        }
        arrivals = {m: received + delay[m] for m in skill}
        probs = {
            m: float(1 / (1 + np.exp(-(s * (y - 0.5) * 2 + rng.normal(0, 1))))) for m, s in skill.items()
        }
        scores = sorted((score(m, arrivals[m], probs[m]) for m in skill), key=lambda s: s["arrived_at_ms"])
        d = {"request_id": rid, "received_at_ms": received, "closed_at_ms": received + 1100, "scores": scores}
        r = replay_one(d, DEFAULT)
        assert r is not None
        for s in scores:
            s["late"] = s["arrived_at_ms"] > r.decided_at_ms
        result = {
            "request_id": rid, "model_id": r.model_id, "model_version": f"{r.model_id}-v1", "output": r.output,
            "reason": r.reason, "trigger": r.trigger, "policy_version": 1, "sent_at_ms": received,
            "received_at_ms": received, "decided_at_ms": r.decided_at_ms, "latency_ms": r.latency_ms,
            "answered": [], "failed": [],
        }  # fmt: skip
        decisions.append(d | {"policy_version": 1, "decided_at_ms": r.decided_at_ms, "result": result})
        base = next(s for s in scores if s["model_id"] == "base")
        canaries.append(
            {
                "request_id": rid,
                "policy_version": 1,
                "decided_at_ms": r.decided_at_ms,
                "official": {k: result[k] for k in ("model_id", "model_version", "output", "reason")},
                "canary": {
                    k: base[k] for k in ("model_id", "model_version", "status", "output", "arrived_at_ms")
                },
                "agree": agreement(r.output, base),
            }
        )
        labels.append({"request_id": rid, "label": y, "labelled_at_ms": received + 5000})
    paths = {name: tmp / f"{name}.jsonl" for name in ("decisions", "canary", "labels")}
    for name, recs in (("decisions", decisions), ("canary", canaries), ("labels", labels)):
        paths[name].write_text("".join(json.dumps(x) + "\n" for x in recs))
    ref, _ = generate(2000, 1)
    ref.to_parquet(tmp / "training_sample.parquet")
    recent, _ = generate(500, 2)
    recent = recent.assign(amount=recent["amount"] * 5)
    archive = [
        {"request_id": f"a{i}", "features": json.dumps(row)}
        for i, row in enumerate(recent.to_dict("records"))
    ]
    (tmp / "archive").mkdir()
    pd.DataFrame(archive).to_parquet(tmp / "archive" / "part-0.parquet")
    paths["reference"] = tmp / "training_sample.parquet"
    paths["recent"] = tmp / "archive"
    return paths


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_log(tmp_path_factory.mktemp("log"))


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quality(log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "q.json"
    code, out, _ = run(
        capsys,
        "quality",
        "--decisions",
        log["decisions"],
        "--labels",
        log["labels"],
        "--window-ms",
        30_000,
        "--json",
        out_json,
    )
    assert code == 0
    assert "quality over 600 labelled requests" in out and "official" in out and "logreg" in out
    data = json.loads(out_json.read_text())
    overall = {r["model_id"]: r for r in data["overall"]}
    assert set(overall) == {"official", "gbt", "logreg", "tree", "base", "mlp"}
    assert overall["logreg"]["auc"] > overall["gbt"]["auc"] > 0.5
    assert all(r["count"] == N for r in overall.values())
    assert {w["window_end_ms"] - w["window_start_ms"] for w in data["windows"]} == {30_000}


def test_drift(log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "drift.yaml"
    cfg.write_text(yaml.safe_dump({"min_count": 100, "window_ms": 60_000, "slide_ms": 60_000}))
    alerts = tmp_path / "alerts.jsonl"
    argv = ["drift", "--canary", log["canary"], "--decisions", log["decisions"], "--reference", log["reference"],
            "--recent", log["recent"], "--config", cfg, "--alerts", alerts, "--now-ms", 123, "--json", "-"]  # fmt: skip
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "input drift" in out and "every model vs the canary (base)" in out
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert any(x["kind"] == "input_drift" and x["subject"] == "amount" for x in lines)
    assert not any(x["kind"] == "input_drift" and x["subject"] == "hour" for x in lines)
    assert all(x["at_ms"] == 123 for x in lines)
    code, _, _ = run(capsys, *argv, "--fail-on-alert")
    assert code == 3
    code, _, err = run(capsys, "drift")
    assert code == 2 and "nothing to measure" in err
    code, _, err = run(capsys, "drift", "--reference", log["reference"])
    assert code == 2 and "--recent" in err


def test_gate_writes_the_next_policy(
    log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nxt = tmp_path / "next.yaml"
    out_json = tmp_path / "gate.json"
    code, out, _ = run(capsys, "gate", "--decisions", log["decisions"], "--labels", log["labels"], "--policy",
                       DEFAULT_PATH, "--min-labelled", 300, "--auc-floor", 0.6, "--out", nxt, "--json", out_json)  # fmt: skip
    assert code == 0
    assert "gate: promote (policy version 1 -> 2)" in out
    new = load_policy(nxt)
    assert [(m.id, m.role) for m in new.official][:2] == [("logreg", "incumbent"), ("gbt", "challenger")]
    assert json.loads(out_json.read_text())["action"] == "promote"
    # An alert naming logreg keeps it from being promoted and demotes it.
    alerts = tmp_path / "a.jsonl"
    alerts.write_text(json.dumps({"kind": "score_drift", "subject": "logreg", "message": "psi high"}) + "\n")
    code, out, _ = run(capsys, "gate", "--decisions", log["decisions"], "--labels", log["labels"], "--policy",
                       DEFAULT_PATH, "--min-labelled", 300, "--auc-floor", 0.6, "--alerts", alerts)  # fmt: skip
    assert code == 0 and "gate: demote" in out and "drift alert: psi high" in out
    code, _, err = run(capsys, "gate", "--decisions", log["decisions"], "--labels", log["labels"], "--policy",
                       DEFAULT_PATH, "--min-gain", -1)  # fmt: skip
    assert code == 2 and "min_gain:" in err
    # --min-z: a gain far beyond any sampling noise is asked for, so logreg stays a challenger.
    code, out, _ = run(capsys, "gate", "--decisions", log["decisions"], "--labels", log["labels"], "--policy",
                       DEFAULT_PATH, "--min-labelled", 300, "--auc-floor", 0.6, "--min-z", 9)  # fmt: skip
    assert code == 0 and "logreg: kept" in out and "< min_z 9" in out


def test_replay(log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    candidate = tmp_path / "candidate.yaml"
    data = DEFAULT.to_dict()
    data["models"][0], data["models"][1] = (
        {"id": "logreg", "role": "incumbent", "wait_ms": 70},
        {"id": "gbt", "role": "challenger", "wait_ms": 40},
    )
    candidate.write_text(yaml.safe_dump(data | {"version": 2}))
    out_json = tmp_path / "replay.json"
    code, out, _ = run(capsys, "replay", "--decisions", log["decisions"], "--policy", candidate, "--actual-policy",
                       DEFAULT_PATH, "--labels", log["labels"], "--json", out_json)  # fmt: skip
    assert code == 0 and "requests would get an answer from a different model" in out
    result = json.loads(out_json.read_text())
    summary = {r["policy"]: r for r in result["summary"]}
    assert summary["candidate"]["auc"] > summary["actual"]["auc"]  # logreg first is better here
    assert summary["candidate"]["latency_p50_ms"] > summary["actual"]["latency_p50_ms"]  # ... and slower
    wins = {(w["policy"], w["model_id"]): w["count"] for w in result["wins"]}
    assert wins[("candidate", "logreg")] == N  # logreg always answers within its 70 ms here
    # Replaying the policy that ran gives back what ran.
    code, _, _ = run(
        capsys, "replay", "--decisions", log["decisions"], "--policy", DEFAULT_PATH, "--json", out_json
    )
    assert json.loads(out_json.read_text())["changed"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data | {"deadline_ms": 0}))
    code, _, err = run(capsys, "replay", "--decisions", log["decisions"], "--policy", bad)
    assert code == 2 and "deadline_ms:" in err and str(bad) in err


def test_report(log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", "--decisions", log["decisions"], "--labels", log["labels"], "--canary",
                       log["canary"], "--reference", log["reference"], "--recent", log["recent"], "--window-ms",
                       20_000, "--out", html)  # fmt: skip
    assert code == 0 and str(html) in out
    text = html.read_text()
    assert text.count("<img") == 5 and "No data." not in text


def test_bandit_sim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "sim.json"
    code, out, _ = run(capsys, "bandit-sim", "--steps", 3000, "--json", out_json)
    assert code == 0 and "thompson" in out and "uniform" in out
    data = json.loads(out_json.read_text())
    assert data["thompson"]["regret"] < data["uniform"]["regret"]
    code, _, err = run(capsys, "bandit-sim", "--steps", 100, "--degrade-at", 500)
    assert code == 2 and "degrade_at:" in err


def test_bad_input_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "d.jsonl"
    broken.write_text(
        '{"request_id": "a", "received_at_ms": 1, "decided_at_ms": 1, "result": null, "scores": []}\n{oops\n'
    )
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"request_id": "a", "label": 1, "labelled_at_ms": 1}\nnot json\n')
    code, _, err = run(capsys, "quality", "--decisions", broken, "--labels", labels)
    assert code == 2 and f"{broken}:2: not valid JSON" in err
    code, _, err = run(capsys, "quality", "--decisions", tmp_path / "missing.jsonl", "--labels", labels)
    assert code == 2 and "missing.jsonl: cannot read" in err
    not_decisions = tmp_path / "n.jsonl"
    not_decisions.write_text('{"request_id": "a"}\n')
    code, _, err = run(capsys, "quality", "--decisions", not_decisions, "--labels", labels)
    assert code == 2 and "not a decision record, missing received_at_ms" in err
    ok = tmp_path / "ok.jsonl"
    ok.write_text(broken.read_text().splitlines()[0] + "\n")
    code, _, err = run(capsys, "quality", "--decisions", ok, "--labels", labels)
    assert code == 0 and "1 bad label line(s) skipped; first at line 2: not_json" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["quality", "--decisions", "x"])
    assert e.value.code == 2 and "--labels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["quality", "--decisions", "x", "--labels", "y", "--window-ms", "0"])
    assert e.value.code == 2


def test_features_default_to_the_generator(
    log: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "drift.json"
    code, _, _ = run(
        capsys, "drift", "--reference", log["reference"], "--recent", log["recent"], "--json", out_json
    )
    assert code == 0
    assert [r["feature"] for r in json.loads(out_json.read_text())["inputs"]] == list(FEATURES)
    code, _, _ = run(capsys, "drift", "--reference", log["reference"], "--recent", log["recent"], "--features",
                     "amount,hour", "--json", out_json)  # fmt: skip
    assert [r["feature"] for r in json.loads(out_json.read_text())["inputs"]] == ["amount", "hour"]
    code, _, err = run(
        capsys, "drift", "--reference", log["reference"], "--recent", log["recent"], "--features", "nope"
    )
    assert code == 2 and "no column 'nope'" in err

"""`make scenario-degrade`: a model that degrades mid-run, seen by the metrics, the alerts and the gate.

The whole loop of the evaluation side, on this machine:

1. a broker, four model runners (``gbt`` incumbent, ``logreg`` challenger, ``tree`` backstop, ``base``
   canary), the rendezvous job with its Prometheus endpoint, and the labeller;
2. phase **healthy**: N requests; the job's per-model counters are scraped from Prometheus;
3. phase **degraded**: N more requests, but ``gbt`` was started with ``--degrade-after`` so from now on
   it answers with noise; the counters are scraped again;
4. once the labels are in: ``evaluation collect`` dumps the decisions, canary and labels topics;
   quality per phase, ``evaluation drift`` (per window: every model's agreement with the canary, and its
   scores against its own in the healthy phase, PSI and KS, with alerts), ``evaluation gate`` on the degraded phase (with the alerts) writes the next
   policy, and ``evaluation report`` the HTML page.

Everything it started is stopped by PID whatever happens. The numbers are also written as JSON
(``summary.json`` in the output directory) for the end-to-end test.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
import urllib.request
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from evaluation.cli import main as eval_main
from evaluation.cli import read_decisions
from evaluation.labels import join_labels, read_labels
from evaluation.quality import quality_by_model
from harness import loadgen, stack
from ops import kafka_admin, procs
from udfs import names

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "var" / "degrade"
MODELS_DIR = REPO_ROOT / "var" / "models"
DEGRADING = "gbt"
CANARY = "base"
MODEL_IDS = ("gbt", "logreg", "tree", "base")

# Generous waits: on a busy 2-core machine a record takes ~100 ms per Kafka hop, and this scenario is
# about quality, not speed: the incumbent should give most official answers, so when it goes bad the
# callers get bad answers. A short tombstone (dedupe_retention_ms) makes its expiry timer flush the
# job's batched metric counters soon after the last mailbox closes.
POLICY: dict[str, Any] = {
    "version": 1,
    "deadline_ms": 1500,
    "decide": "first_in_order",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 1000},
        {"id": "logreg", "role": "challenger", "wait_ms": 1300},
        {"id": "tree", "role": "backstop"},
        {"id": "base", "role": "canary"},
    ],
    "on_no_answer": {"output": None},
    "late_window_ms": 500,
    "dedupe_retention_ms": 1500,
}
# Windows short enough to see the change within a short run; min_count keeps tiny windows quiet.
# Score drift is measured against each model's own scores in the reference period (the first 10 s of the
# log: the healthy phase), with the default thresholds (PSI 0.25, KS 0.2): a healthy model stays within
# sampling noise of itself. Against the canary only agreement alarms (default 0.9): healthy models differ
# from the canary's distribution by design (measured in the healthy phase: gbt PSI ~0.55, KS ~0.29;
# logreg up to 0.29 / 0.19; tree, with 8 distinct leaf probabilities, PSI ~6.5 always), which once forced
# this scenario to raise psi_alert to 1.0 and ks_alert to 0.4.
DRIFT_CONFIG = {
    "window_ms": 10_000,
    "slide_ms": 10_000,
    "min_count": 100,
    "reference_ms": 10_000,
    "canary_distribution": False,
}
GATE_CONFIG = {"min_labelled": 200}
PROM_PREFIX = "flink_taskmanager_job_task_operator_"
MAILBOX_OPERATOR = 'operator_name="rendezvous_mailbox"'


def say(msg: str) -> None:
    print(f"[degrade {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- Prometheus ----------------------------------------------------------------------------------------


def _prom_name(name: str) -> str:
    """Flink's Prometheus reporter turns every character outside [A-Za-z0-9_:] into '_'."""
    return PROM_PREFIX + re.sub(r"[^A-Za-z0-9_:]", "_", name)


def parse_model_metrics(text: str, model_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} from a Prometheus text page, the mailbox operator's series only."""
    wanted = {_prom_name(names.model_metric(m, k)): (m, k) for m in model_ids for k in names.MODEL_METRICS}
    out: dict[str, dict[str, float]] = {m: {} for m in model_ids}
    for line in text.splitlines():
        if line.startswith("#") or MAILBOX_OPERATOR not in line:
            continue
        name, _, rest = line.partition("{")
        key = wanted.get(name)
        if key is not None:
            value = float(rest.rsplit("}", 1)[1].split()[0])
            out[key[0]][key[1]] = out[key[0]].get(key[1], 0.0) + value  # summed over subtasks
    return out


def scrape(port: int, model_ids: Sequence[str], timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        return parse_model_metrics(r.read().decode("utf-8", errors="replace"), model_ids)


def wait_for_metrics(
    port: int, model_ids: Sequence[str], done: Any, timeout_s: float
) -> dict[str, dict[str, float]]:
    """Scrape until ``done(metrics)`` holds (counters reach Flink at most once a second), or time out."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, dict[str, float]] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port, model_ids)
            if done(last):
                return last
        except OSError:
            pass
        time.sleep(1.0)
    return last


def metric_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    cols = ("scores", "wins", "late", "timeouts", "errors")
    lines = [f"{'model':8s} " + " ".join(f"{c:>17s}" for c in cols) + f" {'mean latency ms':>22s}"]
    for m in after:
        b, a = before.get(m, {}), after[m]
        cells = [f"{int(b.get(c, 0)):>7d} -> {int(a.get(c, 0)):>6d}" for c in cols]

        def mean(d: dict[str, float]) -> str:
            n = d.get(names.MODEL_METRIC_SCORES, 0.0)
            return f"{d.get(names.MODEL_METRIC_LATENCY_SUM, 0.0) / n:.0f}" if n else "-"

        lines.append(f"{m:8s} " + " ".join(f"{c:>17s}" for c in cells) + f" {mean(b):>10s} -> {mean(a):>8s}")
    return "\n".join(lines)


# --- the scenario --------------------------------------------------------------------------------------


def _wait_for_labels(bootstrap: str, topic: str, prefix: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n = sum(
            1
            for r in kafka_admin.read_json_topic(bootstrap, topic)
            if str(r.get("request_id", "")).startswith(prefix)
        )
        if n >= expected:
            break
        time.sleep(1.0)
    return n


def _evaluation(argv: list[str]) -> None:
    print(f"\n$ rendezvous eval {' '.join(argv)}", flush=True)
    code = eval_main(argv)
    if code != 0:
        raise RuntimeError(f"`rendezvous eval {argv[0]}` failed with exit code {code}")


def _split(path: Path, prefix: str, out: Path) -> Path:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if f'"request_id":"{prefix}' in ln]
    out.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return out


def run(
    out_dir: Path = OUT_DIR,
    count: int = 1000,
    rate: float = 50.0,
    models_dir: Path = MODELS_DIR,
    bootstrap: str | None = None,
    train_rows: int | None = None,
) -> dict[str, Any]:
    """Run the scenario (count requests per phase); returns the summary (also in summary.json)."""
    from runners.train import ensure_trained

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "logs").mkdir(parents=True)
    tag = uuid.uuid4().hex[:6]
    topics = {
        k: f"{k}-{tag}"
        for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters", "labels")
    }
    sid = f"deg{tag}"
    healthy, degraded = f"{sid}-healthy", f"{sid}-degraded"
    processes = stack.Processes()
    broker: Any = None
    summary: dict[str, Any] = {"out_dir": str(out_dir), "count_per_phase": count, "rate": rate}
    try:
        if bootstrap is None:
            say("starting a single-node Kafka broker ...")
            broker = stack.start_broker(out_dir / "broker", topics=())
            bootstrap = broker.bootstrap
        kafka_admin.create_topics(bootstrap, list(topics.values()))
        trained = ensure_trained(models_dir, **({"rows": train_rows} if train_rows else {}))
        say("models: " + ", ".join(f"{m} AUC {trained[m]['metrics']['auc']:.3f}" for m in MODEL_IDS))

        policy_path = out_dir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(POLICY, sort_keys=False), encoding="utf-8")
        metrics_port = procs.free_port()
        say(f"starting the rendezvous job (Prometheus on port {metrics_port}) ...")
        job = stack.start_job(
            policy_path, bootstrap, out_dir / "archive", out_dir / "flink", out_dir / "logs" / "job.log", processes,
            extra_args=[
                "--requests-topic", topics["requests"], "--scores-topic", topics["scores"],
                "--canary-topic", topics["canary"], "--decisions-topic", topics["decisions"],
                "--dead-letters-topic", topics["dead-letters"], "--group-id", f"rendezvous-{tag}",
                "--metrics-port", str(metrics_port),
            ],
        )  # fmt: skip
        waited, probes = stack.wait_until_answering(bootstrap, job, requests_topic=topics["requests"])
        say(f"job answering after {waited:.0f} s ({probes} probes)")

        # The runners read the probes too: gbt goes bad after the probes and the healthy phase.
        degrade_after = probes + count
        specs = [
            stack.RunnerSpec(DEGRADING, latency_ms=2, seed=1, degrade_after=degrade_after),
            stack.RunnerSpec("logreg", latency_ms=2, seed=2),
            stack.RunnerSpec("tree", latency_ms=1, seed=3),
            stack.RunnerSpec(CANARY, latency_ms=1, seed=4),
        ]
        say(
            f"starting runners {', '.join(MODEL_IDS)} ({DEGRADING} degrades after {degrade_after} requests) and the labeller ..."
        )
        stack.start_runners(
            specs, models_dir, bootstrap, out_dir / "logs", processes,
            requests_topic=topics["requests"], scores_topic=topics["scores"],
        )  # fmt: skip
        stack.start_labeller(
            bootstrap, out_dir / "logs" / "labeller.log", processes,
            ["--requests-topic", topics["requests"], "--labels-topic", topics["labels"],
             "--group", f"labeller-{tag}", "--delay-s", "2", "--seed", "7"],
        )  # fmt: skip

        def phase(run_id: str) -> dict[str, dict[str, float]]:
            say(f"phase {run_id.rsplit('-', 1)[1]}: {count} requests at {rate:.0f}/s ...")
            report = loadgen.run_load(
                bootstrap, count=count, rate=rate, requests_topic=topics["requests"],
                scores_topic=topics["scores"], return_address=topics["results"], run_id=run_id,
                settle_ms=5000, seed=zlib.crc32(run_id.encode()),
            )  # fmt: skip
            say(
                f"  answered {report.answered}/{report.sent}; wins {dict(sorted(report.wins_by_model.items()))}"
            )
            summary.setdefault("wins", {})[run_id] = dict(report.wins_by_model)
            total = summary.setdefault("_closed", 0) + report.sent
            summary["_closed"] = total
            # Every mailbox (probes included) closes, so each model's scores + timeouts reaches the total.
            return wait_for_metrics(
                metrics_port, MODEL_IDS,
                lambda m: all(v.get("scores", 0) + v.get("timeouts", 0) >= total + probes for v in m.values()),
                timeout_s=60.0,
            )  # fmt: skip

        before = phase(healthy)
        after = phase(degraded)
        summary["metrics"] = {"after_healthy": before, "after_degraded": after}
        summary.pop("_closed")
        print("\nper-model counters from Prometheus (after the healthy phase -> after the degraded phase):")
        print(metric_table(before, after))

        n_labels = _wait_for_labels(bootstrap, topics["labels"], sid, 2 * count, 60.0)
        say(f"{n_labels} labels in")

        data = out_dir / "data"
        _evaluation(["collect", "--bootstrap", bootstrap, "--out", str(data), "--prefix", sid,
                     "--decisions-topic", topics["decisions"], "--canary-topic", topics["canary"],
                     "--labels-topic", topics["labels"]])  # fmt: skip
        decisions, canary, labels = data / "decisions.jsonl", data / "canary.jsonl", data / "labels.jsonl"

        # Quality per phase (the labels say which model was right).

        good_labels, _ = read_labels(labels)
        rows = join_labels(read_decisions(decisions), good_labels)
        quality: dict[str, Any] = {}
        print()
        for run_id in (healthy, degraded):
            q = quality_by_model(rows[rows["request_id"].str.startswith(run_id + "-")])
            quality[run_id.rsplit("-", 1)[1]] = {r["model_id"]: r for r in q.to_dict("records")}
            print(f"quality, {run_id.rsplit('-', 1)[1]} phase:")
            print(q[["model_id", "count", "answered", "accuracy", "auc", "log_loss"]].to_string(index=False))
        summary["quality"] = quality

        drift_cfg = out_dir / "drift.yaml"
        drift_cfg.write_text(yaml.safe_dump(DRIFT_CONFIG), encoding="utf-8")
        alerts = out_dir / "alerts.jsonl"
        _evaluation(["drift", "--decisions", str(decisions), "--canary", str(canary), "--canary-model", CANARY,
                     "--config", str(drift_cfg), "--alerts", str(alerts), "--json", str(out_dir / "drift.json")])  # fmt: skip
        summary["alerts"] = [json.loads(x) for x in alerts.read_text().splitlines() if x.strip()]

        # The gate looks at recent evidence: the degraded phase.
        recent_decisions = _split(decisions, degraded, data / "decisions-degraded.jsonl")
        gate_cfg = out_dir / "gate.yaml"
        gate_cfg.write_text(yaml.safe_dump(GATE_CONFIG), encoding="utf-8")
        next_policy = out_dir / "next_policy.yaml"
        _evaluation(["gate", "--decisions", str(recent_decisions), "--labels", str(labels), "--policy",
                     str(policy_path), "--alerts", str(alerts), "--config", str(gate_cfg),
                     "--out", str(next_policy), "--json", str(out_dir / "gate.json")])  # fmt: skip
        gate = json.loads((out_dir / "gate.json").read_text())
        summary["gate"] = {
            "action": gate["action"],
            "verdicts": gate["verdicts"],
            "policy_yaml": gate["policy_yaml"],
        }
        if gate["policy_yaml"]:
            print(f"\nnext policy ({next_policy}):\n{gate['policy_yaml']}")

        _evaluation(["report", "--decisions", str(decisions), "--labels", str(labels), "--canary", str(canary),
                     "--config", str(drift_cfg), "--out", str(out_dir / "report.html")])  # fmt: skip
        summary["report"] = str(out_dir / "report.html")
        _print_summary(summary)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        return summary
    finally:
        say("stopping the labeller, runners and job ...")
        processes.stop_all()
        if broker is not None:
            broker.stop()


def _quality(summary: dict[str, Any], model: str) -> str:
    def one(phase: str) -> str:
        r = summary["quality"].get(phase, {}).get(model, {})
        auc, acc, ll = r.get("auc"), r.get("accuracy"), r.get("log_loss")
        if auc is None or auc != auc:
            return "n/a"
        return f"AUC {auc:.3f} accuracy {acc:.3f} log loss {ll:.3f}"

    return f"healthy {one('healthy')} -> degraded {one('degraded')}"


def _print_summary(s: dict[str, Any]) -> None:
    g = s["gate"]
    mine = [a for a in s["alerts"] if a["subject"] in (DEGRADING, "official")]
    lines = [
        "",
        "================ degrading model scenario ================",
        f"{DEGRADING:14s} {_quality(s, DEGRADING)}",
        f"{'official':14s} {_quality(s, 'official')}",
        f"alerts         {len(s['alerts'])} ({len(mine)} on {DEGRADING} or the official answers)",
        *(f"  {a['kind']}: {a['message']}" for a in s["alerts"][:12]),
        f"gate           {g['action']}: "
        + "; ".join(
            f"{v['model_id']} {v['role']} -> {v['new_role']}"
            for v in g["verdicts"]
            if v["role"] != v["new_role"]
        ),
        f"report         {s['report']}",
        "==========================================================",
    ]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.degrade_scenario", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--count", type=int, default=1000, help="requests per phase (healthy, then degraded)")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    a = ap.parse_args(argv)
    s = run(a.out, a.count, a.rate, bootstrap=a.bootstrap)
    demoted = any(v["model_id"] == DEGRADING and v["new_role"] == "shadow" for v in s["gate"]["verdicts"])
    return 0 if demoted else 1


if __name__ == "__main__":
    sys.exit(main())

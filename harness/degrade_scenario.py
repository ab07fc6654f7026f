"""`make scenario-degrade`: a model that degrades mid-run, seen by the metrics, the alerts and the gate,
replaced live by the autopilot, then retrained from the decoy, shadowed and promoted once the gate finds it better.

The whole loop of the evaluation side, on this machine:

1. a broker, four model runners (``gbt`` incumbent, ``logreg`` challenger, ``tree`` backstop, ``base``
   canary), the rendezvous job with its Prometheus endpoint, the labeller (labels 5 s after each
   request, ``--label-delay``) and the autopilot (``rendezvous eval autopilot``, a round every second);
2. phase **healthy**: N requests; the job's per-model counters are scraped from Prometheus;
3. phase **degraded**: N more requests, but ``gbt`` was started with ``--degrade-after`` so from now on
   it answers with noise; the autopilot sees gbt stop agreeing with the canary, demotes it and publishes
   the next policy to the run's policies topic, which the job applies live; the counters are scraped
   again. ``seconds_to_fallback``: from gbt's first degraded score reaching the job to the first official
   answer from which on gbt gives none (decided under the autopilot's version), both on the job's clock;
4. phase **retrained** (the loop closed): on the autopilot's audited demotion of gbt, ``eval retrain``
   trains a new gbt on the decoy archive's requests of the run joined with their labels (plus gbt's
   training rows, since a run's ~2,000 requests hold ~100 positives), registers it as ``gbt-r<N>``
   (``<out>/registry``), starts its runner and publishes the policy with it as a shadow (audited,
   action ``retrain``); requests are sent at 200/s in chunks of 2.5 s until the autopilot has made the
   shadow a challenger, then the incumbent (its AUC better than logreg's on the same requests, by a
   paired test), and one chunk more (official answers from it); exit 1 if it was not promoted. The
   summary's ``seconds_to_retrained``, ``seconds_to_shadow``, ``seconds_to_promotion`` count, like
   ``seconds_to_fallback``, from gbt's first degraded score;
5. once the labels are in: ``evaluation collect`` dumps the decisions, canary and labels topics;
   quality per phase, ``evaluation drift`` (per window: every model's agreement with the canary, and its
   scores against its own in the healthy phase, PSI and KS, with alerts), ``evaluation gate`` on the degraded phase (with the alerts) writes the next
   policy, and ``evaluation report`` the HTML page, with the loop's steps marked on its charts.

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

from evaluation import autopilot_kafka
from evaluation.cli import main as eval_main
from evaluation.cli import read_decisions
from evaluation.labels import join_labels, read_labels
from evaluation.quality import quality_by_model
from evaluation.retrain import shadow_audit, with_shadow
from harness import loadgen, stack
from ops import archive, kafka_admin, kafka_client, policy_cli, procs
from runners.runner import degraded as noisy_output
from udfs import names
from udfs.policy import Policy, PolicyError, parse_policy
from udfs.policy_registry import parse_document

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
# The autopilot (evaluation/autopilot.py) in the stack. The fast signal is canary agreement over the
# last 5 s: a mailbox closes (and its decision and canary records are written) deadline + late window
# = 2 s after its request, and at 50/s about 1 s of noise takes gbt's agreement (~0.99 healthy, ~0.5
# noisy) under 0.9 on >= 100 pairs. Labels (5 s late) drive the gate's quality rules over the last 60 s;
# 1000 labelled answers (~50 positives), a floor of 0.6 and a promotion gain of 0.02 keep them from
# demoting or promoting a healthy model on sampling noise (healthy AUC: gbt ~0.81, logreg ~0.76, each
# +-0.04 on 500 labelled requests; with min_labelled 300 one run demoted logreg at AUC 0.56 on 336).
# A promotion needs a gain of 0.01 that is also 1.645 standard errors from zero on the requests both
# models answered (DeLong's paired test, evaluation/quality.paired_auc): the retrained gbt (trained on
# gbt's training rows plus the run's archive) beats logreg by ~0.05 AUC; offline (harness/gate_trials.py)
# 40 of 40 such models passed within 6,000 paired requests and 19 of 20 within 4,000. One change per
# 5 s at most: the loop's four changes (demote gbt, logreg incumbent, the new shadow a challenger, then
# the incumbent) must fit in a short run; the replay guard still checks each.
AUTOPILOT_CONFIG: dict[str, Any] = {
    "every_ms": 1000,
    "window_ms": 60_000,
    "canary_window_ms": 5_000,
    "min_interval_ms": 5_000,
    "demote_on_canary": True,
    "agreement_min": 0.9,
    "agreement_min_count": 100,
    "replay_min_labelled": 1000,
    "gate": {"min_labelled": 1000, "auc_floor": 0.6, "min_gain": 0.01, "min_z": 1.645},
}
# The third phase: the retrained model as a shadow, then promoted. 200/s so that its 1000 labelled
# answers (min_labelled) are there ~10 s after it joins (5 s of traffic + the 5 s label delay); chunks
# of 2.5 s (each collected until answered, at most 3 s more) until the autopilot has promoted it, then
# one more so that it gives official answers; at most RETRAIN_MAX_CHUNKS (60 s of traffic).
RETRAIN_KIND = DEGRADING  # the demoted model's kind is what is retrained
RETRAIN_RATE = 200.0
RETRAIN_CHUNK = 500
RETRAIN_MAX_CHUNKS = 24
LABEL_DELAY_S = 5.0
GBT_SEED = 1  # the degrading runner's seed: its noise is runners.runner.degraded(..., seed)
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


def settled_metrics(
    port: int, model_ids: Sequence[str], timeout_s: float = 30.0
) -> dict[str, dict[str, float]]:
    """The counters once the probes' mailboxes have closed: at least one closed (a probe was answered),
    then the same reading three seconds running (a mailbox closes within deadline + late window)."""
    deadline = time.monotonic() + timeout_s
    readings: list[dict[str, dict[str, float]]] = []
    while time.monotonic() < deadline:
        try:
            m = scrape(port, model_ids)
        except OSError:
            m = {}
        readings.append(m)
        counted = any(v.get("scores", 0) + v.get("timeouts", 0) for v in m.values())
        if counted and len(readings) >= 4 and all(r == m for r in readings[-4:]):
            return m
        time.sleep(1.0)
    return readings[-1] if readings else {}


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
    label_delay_s: float = LABEL_DELAY_S,
    job_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the scenario (count requests per phase); returns the summary (also in summary.json).
    ``job_args``: more flags for the job (``stack.checkpoint_every``)."""
    from runners.train import ensure_trained

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "logs").mkdir(parents=True)
    tag = uuid.uuid4().hex[:6]
    topics = {
        k: f"{k}-{tag}"
        for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters", "labels", "policies",
                  "audit")
    }  # fmt: skip
    sid = f"deg{tag}"
    healthy, degraded = f"{sid}-healthy", f"{sid}-degraded"
    retrained = f"{sid}-retrained"  # the third phase's chunks: <sid>-retrained<k>
    processes = stack.Processes()
    broker: Any = None
    summary: dict[str, Any] = {
        "out_dir": str(out_dir), "count_per_phase": count, "rate": rate, "label_delay_s": label_delay_s,
    }  # fmt: skip
    try:
        if bootstrap is None:
            say("starting a single-node Kafka broker ...")
            broker = stack.start_broker(out_dir / "broker", topics=())
            bootstrap = broker.bootstrap
        kafka_admin.create_topics(bootstrap, [t for k, t in topics.items() if k != "policies"])
        policy_cli.ensure_policies_topic(bootstrap, topics["policies"])  # compacted, one partition
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
                "--policies-topic", topics["policies"],
                "--metrics-port", str(metrics_port), *job_args,
            ],
        )  # fmt: skip
        waited, probes = stack.wait_until_answering(bootstrap, job, requests_topic=topics["requests"])
        say(f"job answering after {waited:.0f} s ({probes} probes)")

        # The runners read the probes too: gbt goes bad after the probes and the healthy phase.
        degrade_after = probes + count
        specs = [
            stack.RunnerSpec(DEGRADING, latency_ms=2, seed=GBT_SEED, degrade_after=degrade_after),
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
             "--group", f"labeller-{tag}", "--delay-s", str(label_delay_s), "--seed", "7"],
        )  # fmt: skip
        autopilot_cfg = out_dir / "autopilot.yaml"
        autopilot_cfg.write_text(yaml.safe_dump(AUTOPILOT_CONFIG, sort_keys=False), encoding="utf-8")
        say("starting the autopilot (a round every second; it publishes to the run's policies topic) ...")
        stack.start_autopilot(
            bootstrap, policy_path, out_dir / "logs" / "autopilot.log", processes,
            ["--config", str(autopilot_cfg), "--name", f"autopilot@degrade-{tag}",
             "--decisions-topic", topics["decisions"], "--labels-topic", topics["labels"],
             "--canary-topic", topics["canary"], "--policies-topic", topics["policies"],
             "--audit-topic", topics["audit"]],
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
            # Every mailbox closes, so each model's scores + timeouts reaches what it was before the
            # phases (the probes the job read: not every probe sent, the first ones may come before
            # its sources have found the end of the topic) plus the phases' requests.
            return wait_for_metrics(
                metrics_port, MODEL_IDS,
                lambda m: all(closed(v) >= base.get(k, 0.0) + total for k, v in m.items()),
                timeout_s=60.0,
            )  # fmt: skip

        def closed(counters: dict[str, float]) -> float:
            return counters.get("scores", 0.0) + counters.get("timeouts", 0.0)

        base = {m: closed(v) for m, v in settled_metrics(metrics_port, MODEL_IDS).items()}
        before = phase(healthy)
        after = phase(degraded)
        summary["metrics"] = {"after_healthy": before, "after_degraded": after}
        summary.pop("_closed")
        print("\nper-model counters from Prometheus (after the healthy phase -> after the degraded phase):")
        print(metric_table(before, after))

        n_labels = _wait_for_labels(bootstrap, topics["labels"], sid, 2 * count, 60.0)
        say(f"{n_labels} labels in")

        # The loop closed: retrain from the decoy, the new model a shadow, promoted by the autopilot.
        loop = close_the_loop(bootstrap, topics, out_dir, models_dir, processes, sid, 2 * count, tag)
        summary["wins"].update(loop.pop("wins", {}))
        if loop["requests"]:
            n_labels = _wait_for_labels(bootstrap, topics["labels"], sid, 2 * count + loop["requests"], 30.0)
            say(f"{n_labels} labels in")

        data = out_dir / "data"
        _evaluation(["collect", "--bootstrap", bootstrap, "--out", str(data), "--prefix", sid,
                     "--decisions-topic", topics["decisions"], "--canary-topic", topics["canary"],
                     "--labels-topic", topics["labels"]])  # fmt: skip
        decisions, canary, labels = data / "decisions.jsonl", data / "canary.jsonl", data / "labels.jsonl"

        # The closed loop: what the autopilot did, and how long callers got answers from the bad model.
        audit = kafka_admin.read_json_topic(bootstrap, topics["audit"])
        versions = [r.version for r in policy_cli.read_topic(bootstrap, topics["policies"])]
        applied = {int(r["new_version"]) for r in audit if r.get("outcome") == "applied"}
        fallback = fallback_timing(read_decisions(decisions), degraded, DEGRADING, GBT_SEED, applied)
        change = next((a for a in audit if a.get("outcome") == "applied"
                       and a.get("new_version") == fallback["fallback_policy_version"]), None)  # fmt: skip
        if change is not None and fallback["seconds_to_fallback"] is not None:
            # Where the time went: until the round that decided (the watcher's clock, same machine), then
            # until the first answer under the new version (publish, the job's policies source, a request).
            fallback["change_at_ms"] = change["at_ms"]
            fallback["first_bad_to_change_s"] = (
                change["at_ms"] - fallback["first_degraded_score_at_ms"]
            ) / 1000
            fallback["change_to_answer_s"] = (fallback["fallback_decided_at_ms"] - change["at_ms"]) / 1000
        summary["autopilot"] = {"audit": audit, "policy_versions": versions, "fallback": fallback}
        summary["seconds_to_fallback"] = fallback["seconds_to_fallback"]
        loop |= loop_timing(read_decisions(decisions), audit, loop.get("model_id"),
                            fallback["first_degraded_score_at_ms"], loop.get("retrained_at_ms"))  # fmt: skip
        summary["loop"] = loop
        for step in ("retrained", "shadow", "challenger", "promotion"):
            summary[f"seconds_to_{step}"] = loop[f"seconds_to_{step}"]
        events = out_dir / "events.json"
        events.write_text(json.dumps(report_events(fallback, loop), indent=2), encoding="utf-8")
        say(f"autopilot: {len(audit)} audit record(s), policy versions published {versions}; "
            f"seconds_to_fallback {fallback['seconds_to_fallback']}")  # fmt: skip

        # Quality per phase (the labels say which model was right).

        good_labels, _ = read_labels(labels)
        rows = join_labels(read_decisions(decisions), good_labels)
        quality: dict[str, Any] = {}
        print()
        for run_id, prefix in ((healthy, f"{healthy}-"), (degraded, f"{degraded}-"), (retrained, retrained)):
            q = quality_by_model(rows[rows["request_id"].str.startswith(prefix)])
            if q.empty:
                continue
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
                     "--config", str(drift_cfg), "--events", str(events),
                     "--out", str(out_dir / "report.html")])  # fmt: skip
        summary["report"] = str(out_dir / "report.html")
        _print_summary(summary)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        return summary
    finally:
        say("stopping the labeller, runners and job ...")
        processes.stop_all()
        if broker is not None:
            broker.stop()


# --- the loop closed: retrain, shadow, promotion ---------------------------------------------------------


def _moved(record: dict[str, Any], model_id: str, role: str) -> bool:
    """An applied audit record whose policy gives ``model_id`` the role ``role`` it did not have."""
    return record.get("outcome") == "applied" and any(
        m["model_id"] == model_id and m["new_role"] == role and m["role"] != role
        for m in record["evidence"]["models"]
    )


def _await_audit(
    bootstrap: str, topic: str, model_id: str, role: str, timeout_s: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [a for a in kafka_admin.read_json_topic(bootstrap, topic) if _moved(a, model_id, role)]
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(1.0)


def _newest_policy(bootstrap: str, topic: str) -> Policy | None:
    """The highest version on the policies topic (what the job and the autopilot have in force)."""
    newest: Policy | None = None
    for m in kafka_client.read_to_end(bootstrap, [topic], 30.0):
        try:
            p = parse_document(m.value())
        except PolicyError:
            continue
        if newest is None or p.version > newest.version:
            newest = p
    return newest


def _start_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit the group's offsets at the topic's end: a new runner scores requests from now on, not the
    run's history (whose mailboxes are closed: its scores would only become orphans)."""
    c = kafka_client.consumer(bootstrap, group, enable_auto_commit=False)
    try:
        c.commit(offsets=c.assign_at_end([topic]), asynchronous=False)
    finally:
        c.close()


def close_the_loop(  # noqa: C901 - the loop's steps in order, each waiting for the one before
    bootstrap: str,
    topics: dict[str, str],
    out_dir: Path,
    models_dir: Path,
    processes: stack.Processes,
    sid: str,
    expected: int,
    tag: str,
) -> dict[str, Any]:
    """On the autopilot's demotion of the degraded model: retrain it from the decoy, start the new
    model's runner, publish the policy with it as a shadow (audited), then send the third phase until
    the autopilot has promoted it (and one chunk more). Returns what happened, with epoch-ms stamps."""
    from runners.train import SAMPLE_FILE

    loop: dict[str, Any] = {"model_id": None, "model_version": None, "retrained_at_ms": None, "requests": 0,
                            "chunks": 0, "promoted": False, "wins": {}}  # fmt: skip
    demotion = _await_audit(bootstrap, topics["audit"], DEGRADING, "shadow", 30.0)
    if demotion is None:
        say(f"no applied demotion of {DEGRADING} on {topics['audit']}: nothing to retrain")
        return loop
    loop["trigger"] = {"at_ms": demotion["at_ms"], "new_version": demotion["new_version"]}
    rows, ids = archive.requests_archived(out_dir / "archive", sid, expected, timeout_s=40.0)
    labels = [r for r in kafka_admin.read_json_topic(bootstrap, topics["labels"])
              if str(r.get("request_id", "")).startswith(sid)]  # fmt: skip
    labels_file = out_dir / "data" / "labels-for-retrain.jsonl"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    labels_file.write_text("".join(json.dumps(r) + "\n" for r in labels), encoding="utf-8")
    say(f"retraining {RETRAIN_KIND}: {ids} requests of the run archived ({rows} rows), {len(labels)} labels")
    registry, done_json = out_dir / "registry", out_dir / "retrain.json"
    _evaluation(["retrain", "--archive-dir", str(out_dir / "archive"), "--labels", str(labels_file),
                 "--kind", RETRAIN_KIND, "--registry", str(registry), "--window", "1h",
                 "--base-sample", str(models_dir / SAMPLE_FILE), "--json", str(done_json)])  # fmt: skip
    done = json.loads(done_json.read_text(encoding="utf-8"))
    new_id = done["model_id"]
    loop |= {"model_id": new_id, "model_version": done["model_version"],
             "retrained_at_ms": done["meta"]["trained_at_ms"], "holdout_auc": done["meta"]["metrics"]["auc"]}  # fmt: skip

    _start_group_at_end(bootstrap, names.runner_group(new_id), topics["requests"])
    stack.start_runners(
        [stack.RunnerSpec(new_id, latency_ms=2, seed=5)], registry, bootstrap, out_dir / "logs", processes,
        requests_topic=topics["requests"], scores_topic=topics["scores"],
    )  # fmt: skip
    publisher = autopilot_kafka.Publisher(
        bootstrap, autopilot_kafka.Topics(policies=topics["policies"], audit=topics["audit"])
    )
    try:
        for attempt in range(3):  # the autopilot may publish between our read and our write
            current = _newest_policy(bootstrap, topics["policies"]) or parse_policy(POLICY)
            shadow = with_shadow(current, new_id)
            try:
                publisher.policy(shadow)
            except RuntimeError as e:
                say(f"publishing v{shadow.version} with {new_id} as a shadow: {e}; again")
                if attempt == 2:
                    raise
                continue
            why = [f"{DEGRADING}: demoted to shadow in v{demotion['new_version']} by {demotion['watcher']}"]
            now = time.time_ns() // 1_000_000
            publisher.audit(shadow_audit(now, f"retrain@degrade-{tag}", current, shadow, done["meta"], why))
            loop |= {"shadow_policy_version": shadow.version, "shadow_published_at_ms": now}
            say(f"published v{shadow.version}: {new_id} ({done['model_version']}) as a shadow")
            break
    finally:
        publisher.close()

    promoted = False
    for k in range(RETRAIN_MAX_CHUNKS):
        run_id = f"{sid}-retrained{k}"
        report = loadgen.run_load(
            bootstrap, count=RETRAIN_CHUNK, rate=RETRAIN_RATE, requests_topic=topics["requests"],
            scores_topic=topics["scores"], return_address=topics["results"], run_id=run_id, settle_ms=3000,
            seed=zlib.crc32(run_id.encode()),
        )  # fmt: skip
        loop["wins"][run_id] = dict(report.wins_by_model)
        loop["requests"] += report.sent
        loop["chunks"] = k + 1
        say(
            f"  chunk {k}: answered {report.answered}/{report.sent}; wins {dict(sorted(report.wins_by_model.items()))}"
        )
        if promoted:
            break  # one chunk under the promotion: official answers from the new model
        promoted = _await_audit(bootstrap, topics["audit"], new_id, "incumbent", 0.0) is not None
    loop["promoted"] = promoted
    return loop


def loop_timing(
    decisions: Sequence[dict[str, Any]],
    audit: Sequence[dict[str, Any]],
    model_id: str | None,
    first_bad_ms: int | None,
    retrained_at_ms: int | None,
) -> dict[str, Any]:
    """When each step of the loop happened (epoch ms) and how long after the first degraded score.

    shadow: the new model's first score in the decision log with role shadow (the job's clock);
    challenger: the autopilot's applied change that made it one (the watcher's clock); promotion: its
    first official answer under a version in which it is the incumbent (the job's clock), and the
    ``model_version`` that answer carries."""
    out: dict[str, Any] = {"shadow_at_ms": None, "challenger_at_ms": None, "promotion_version": None,
                           "promotion_at_ms": None, "promotion_model_version": None}  # fmt: skip
    if model_id is not None:
        shadow = [int(s["arrived_at_ms"]) for d in decisions for s in d.get("scores", ())
                  if s["model_id"] == model_id and s.get("role") == "shadow"]  # fmt: skip
        out["shadow_at_ms"] = min(shadow, default=None)
        challenger = [a for a in audit if _moved(a, model_id, "challenger")]
        out["challenger_at_ms"] = challenger[0]["at_ms"] if challenger else None
        incumbent = [a for a in audit if _moved(a, model_id, "incumbent")]
        if incumbent:
            version = int(incumbent[0]["new_version"])
            answers = sorted(
                (int(d["result"]["decided_at_ms"]), str(d["result"].get("model_version")))
                for d in decisions
                if d.get("result")
                and d["result"]["model_id"] == model_id
                and d["result"]["policy_version"] >= version
            )
            out["promotion_version"] = version
            if answers:
                out["promotion_at_ms"], out["promotion_model_version"] = answers[0]
    stamps = {"retrained": retrained_at_ms, "shadow": out["shadow_at_ms"],
              "challenger": out["challenger_at_ms"], "promotion": out["promotion_at_ms"]}  # fmt: skip
    for step, at in stamps.items():
        ok = at is not None and first_bad_ms is not None
        out[f"seconds_to_{step}"] = round((at - first_bad_ms) / 1000.0, 3) if ok else None
    return out


def report_events(fallback: dict[str, Any], loop: dict[str, Any]) -> dict[str, int | None]:
    """The loop's steps for the report's charts (epoch ms; null: did not happen)."""
    new = loop.get("model_id") or "new model"
    return {
        f"{DEGRADING} degrades": fallback["first_degraded_score_at_ms"],
        "fallback": fallback["fallback_decided_at_ms"]
        if fallback["seconds_to_fallback"] is not None
        else None,
        f"{new} retrained": loop.get("retrained_at_ms"),
        f"{new} shadow": loop.get("shadow_at_ms"),
        f"{new} challenger": loop.get("challenger_at_ms"),
        f"{new} promoted": loop.get("promotion_at_ms"),
    }


def fallback_timing(
    decisions: Sequence[dict[str, Any]], phase: str, model: str, seed: int, versions: set[int]
) -> dict[str, Any]:
    """When the degraded model stopped giving official answers, on the job's clock.

    The first degraded score: the earliest arrival of a ``model`` score of the phase whose output is the
    runner's noise for that request (``runners.runner.degraded``). The fallback answer: the first official
    answer after the last one ``model`` gave, if it was decided under one of ``versions`` (the
    autopilot's); otherwise the loop did not close and ``seconds_to_fallback`` is None.
    """
    rows = sorted(
        (d for d in decisions if d["request_id"].startswith(phase + "-") and d.get("result")),
        key=lambda d: int(d["result"]["decided_at_ms"]),
    )
    bad = [
        int(s["arrived_at_ms"])
        for d in rows
        for s in d["scores"]
        if s["model_id"] == model and s["status"] == "ok" and not s.get("duplicate")
        and s["output"] == noisy_output(s["output"], d["request_id"], seed)
    ]  # fmt: skip
    out: dict[str, Any] = {
        "first_degraded_score_at_ms": min(bad) if bad else None,
        "degraded_scores": len(bad),
        "degraded_official_answers": 0,
        "fallback_request_id": None,
        "fallback_decided_at_ms": None,
        "fallback_policy_version": None,
        "fallback_model": None,
        "seconds_to_fallback": None,
    }
    if not bad:
        return out
    first_bad = min(bad)
    last = max((i for i, d in enumerate(rows) if d["result"]["model_id"] == model), default=-1)
    out["degraded_official_answers"] = sum(
        1 for d in rows if d["result"]["model_id"] == model and int(d["result"]["decided_at_ms"]) >= first_bad
    )
    if last + 1 >= len(rows):
        return out
    nxt = rows[last + 1]["result"]
    out |= {
        "fallback_request_id": nxt["request_id"],
        "fallback_decided_at_ms": int(nxt["decided_at_ms"]),
        "fallback_policy_version": nxt["policy_version"],
        "fallback_model": nxt["model_id"],
    }
    if nxt["policy_version"] in versions:
        out["seconds_to_fallback"] = round((int(nxt["decided_at_ms"]) - first_bad) / 1000.0, 3)
    return out


def _quality(summary: dict[str, Any], model: str) -> str:
    def one(phase: str) -> str:
        r = summary["quality"].get(phase, {}).get(model, {})
        auc, acc, ll = r.get("auc"), r.get("accuracy"), r.get("log_loss")
        if auc is None or auc != auc:
            return "n/a"
        return f"AUC {auc:.3f} accuracy {acc:.3f} log loss {ll:.3f}"

    return f"healthy {one('healthy')} -> degraded {one('degraded')}"


def _loop_line(s: dict[str, Any]) -> str:
    loop = s["loop"]
    if loop.get("model_id") is None:
        return "not closed: no demotion to retrain from"
    steps = ", ".join(
        f"{k} {s[f'seconds_to_{k}']}" for k in ("retrained", "shadow", "challenger", "promotion")
    )
    return (
        f"{loop['model_id']} ({loop['model_version']}, holdout AUC {loop.get('holdout_auc')}): seconds to {steps}; "
        f"third phase {loop['requests']} requests in {loop['chunks']} chunk(s) at {RETRAIN_RATE:.0f}/s"
        + ("" if loop["promoted"] else "; NOT promoted")
    )


def _print_summary(s: dict[str, Any]) -> None:
    g = s["gate"]
    mine = [a for a in s["alerts"] if a["subject"] in (DEGRADING, "official")]
    fb = s["autopilot"]["fallback"]
    changes = [a for a in s["autopilot"]["audit"] if a.get("outcome") == "applied"]
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
        f"autopilot      {len(changes)} change(s): "
        + "; ".join(f"v{a['old_version']} -> v{a['new_version']} ({a['action']})" for a in changes)
        + f"; {len(s['autopilot']['audit']) - len(changes)} other audit record(s)",
        f"fallback       seconds_to_fallback {s['seconds_to_fallback']} (first degraded score -> first "
        f"answer from {fb['fallback_model']} under v{fb['fallback_policy_version']}; {DEGRADING} gave "
        f"{fb['degraded_official_answers']} official answers after going bad)",
        f"loop           {_loop_line(s)}",
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
    ap.add_argument(
        "--label-delay", type=float, default=LABEL_DELAY_S, help="seconds from a request to its label"
    )
    a = ap.parse_args(argv)
    s = run(a.out, a.count, a.rate, bootstrap=a.bootstrap, label_delay_s=a.label_delay)
    demoted = any(v["model_id"] == DEGRADING and v["new_role"] == "shadow" for v in s["gate"]["verdicts"])
    # The whole loop is what the scenario promises: the fallback, then the retrained model promoted.
    closed = demoted and s["seconds_to_fallback"] is not None and s["loop"]["promoted"]
    return 0 if closed else 1


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

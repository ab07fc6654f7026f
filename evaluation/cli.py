"""``python -m evaluation <command>``: the evaluation modules over dumped records and files.

Inputs are what the job and the tools already produce: JSON-lines dumps of the ``decisions`` and
``canary`` topics, a labels file (``schemas/label.schema.json``), the decoy archive (Parquet or the
job's JSONL), ``training_sample.parquet`` next to the trained models, and policy YAML files. Every
command prints a table; ``--json PATH`` (``-`` for stdout) also writes the numbers as JSON.
Bad input stops with ``error: <file>:<line>: <what>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evaluation import autopilot_kafka
from evaluation.autopilot import AutopilotConfig
from evaluation.bandit_sim import SimConfig, simulate
from evaluation.drift import (
    DriftConfig,
    decision_pairs,
    features_from_archive,
    input_alerts,
    input_drift,
    model_scores,
    score_alerts,
    score_drift,
    score_drift_pairs,
    self_alerts,
    self_drift,
    self_drift_windows,
)
from evaluation.gate import GateConfig, gate, policy_yaml
from evaluation.labels import join_labels, read_labels
from evaluation.quality import quality_by_model, quality_windows
from evaluation.replay import replay
from evaluation.report import latency_frame, wins_frame, write_report
from evaluation.retrain import REGISTRY_DIR, retrain, with_shadow
from evaluation.watch import ArchiveWindow, RoundResult, alert_publisher, parse_duration_ms, run_watch
from ops import kafka_client
from ops.archive import format_table
from ops.kafka_admin import read_json_topic
from runners.data import FEATURES
from udfs import names
from udfs.names import TOPIC_ALERTS, TOPIC_AUDIT
from udfs.policy import PolicyError, load_policy


class CliError(Exception):
    """Bad input: reported as one line, exit code 2."""


# --- reading ---------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects, one per line (blank lines skipped); anything else names the file and line."""
    out = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise CliError(f"{path}:{lineno}: not valid JSON: {e}") from None
                if not isinstance(obj, dict) or "request_id" not in obj:
                    raise CliError(f"{path}:{lineno}: expected a JSON object with a request_id")
                out.append(obj)
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not UTF-8 text: {e.reason}") from None
    return out


def read_decisions(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    for i, d in enumerate(records, start=1):
        missing = [k for k in ("received_at_ms", "decided_at_ms", "result", "scores") if k not in d]
        if missing:
            raise CliError(
                f"{path}: record {i} ({d['request_id']}): not a decision record, missing {missing[0]}"
            )
    return records


def read_labels_file(path: Path) -> list[Any]:
    try:
        good, bad = read_labels(path)
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    if bad:
        first = bad[0]
        print(
            f"warning: {path}: {len(bad)} bad label line(s) skipped; first at line {first.source.offset}: "
            f"{first.reason}: {first.detail}",
            file=sys.stderr,
        )
    return good


def read_policy(path: Path) -> Any:
    try:
        return load_policy(path)
    except PolicyError as e:
        raise CliError(str(e)) from None


def read_yaml_mapping(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping")
    return data


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet file, a directory of Parquet files (e.g. the compacted archive) or a JSONL file."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
            if not files:
                raise CliError(f"{path}: no Parquet files in this directory")
            return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True)
        return pd.read_parquet(path)
    except CliError:
        raise
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except Exception as e:  # pyarrow/pandas raise many types for a bad file
        raise CliError(f"{path}: cannot read as a table: {e}") from None


# --- writing ---------------------------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return _clean(v.item())
    return v


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [_clean(r) for r in df.to_dict("records")]


def write_json(target: str | None, data: Any) -> None:
    if target is None:
        return
    text = json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text, encoding="utf-8")


def print_frame(df: pd.DataFrame, title: str | None = None, limit: int = 50) -> None:
    if title:
        print(title)

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return v

    rows = [tuple(cell(v) for v in r) for r in df.itertuples(index=False)]
    print(format_table([str(c) for c in df.columns], rows, limit=limit))


# --- commands --------------------------------------------------------------------------------------------


def cmd_quality(a: argparse.Namespace) -> int:
    rows = join_labels(read_decisions(a.decisions), read_labels_file(a.labels))
    overall = quality_by_model(rows)
    print_frame(overall, f"quality over {rows['request_id'].nunique()} labelled requests")
    out: dict[str, Any] = {"overall": frame_records(overall)}
    if a.window_ms is not None:
        windows = quality_windows(rows, a.window_ms, a.slide_ms or a.window_ms)
        print()
        print_frame(windows, f"per window ({a.window_ms} ms, slide {a.slide_ms or a.window_ms} ms)")
        out["windows"] = frame_records(windows)
    write_json(a.json, out)
    return 0


def _drift_config(a: argparse.Namespace) -> Any:
    data = read_yaml_mapping(a.config) or {}
    try:
        return DriftConfig.from_dict(data)
    except ValueError as e:
        raise CliError(f"{a.config}: {e}") from None


def _input_frames(a: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, list[str]] | None:
    if a.reference is None and a.recent is None:
        return None
    if a.reference is None or a.recent is None:
        raise CliError("input drift needs both --reference and --recent")
    reference = read_table(a.reference)
    recent = features_from_archive(read_table(a.recent))
    return reference, recent, _feature_names(a, reference)


def cmd_drift(a: argparse.Namespace) -> int:
    cfg = _drift_config(a)
    if a.every is not None:
        return _drift_watch(a, cfg)
    now_ms = a.now_ms if a.now_ms is not None else int(time.time() * 1000)
    if a.canary is None and a.decisions is None and a.reference is None and a.recent is None:
        raise CliError("nothing to measure: give --canary, --decisions and/or --reference with --recent")
    out: dict[str, Any] = {}
    alerts = []
    if a.canary is not None:
        sd = score_drift(read_jsonl(a.canary), cfg)
        print_frame(sd, "official answers vs the canary")
        out["canary"] = frame_records(sd)
        alerts += score_alerts(sd, cfg, now_ms)
    if a.decisions is not None:
        sd = score_drift_pairs(decision_pairs(read_decisions(a.decisions), a.canary_model), cfg)
        print_frame(sd, f"every model vs the canary ({a.canary_model}), from the decision log")
        out["models"] = frame_records(sd)
        alerts += score_alerts(sd, cfg, now_ms)
        own = self_drift_windows(model_scores(read_decisions(a.decisions)), cfg)
        print_frame(
            own, "every model vs its own scores in the reference period (the log's first reference_ms)"
        )
        out["self"] = frame_records(own)
        alerts += self_alerts(own, cfg, now_ms)
    inputs = _input_frames(a)
    if inputs is not None:
        ind = input_drift(*inputs, cfg)
        print_frame(ind, "input drift (recent vs reference)")
        out["inputs"] = frame_records(ind)
        alerts += input_alerts(ind, cfg, now_ms)
    out["alerts"] = [x.to_dict() for x in alerts]
    print(f"\n{len(alerts)} alert(s)")
    for x in alerts:
        print(f"  ALERT {x.kind}: {x.message}")
    if a.alerts is not None:
        a.alerts.write_text("".join(json.dumps(x.to_dict()) + "\n" for x in alerts), encoding="utf-8")
    write_json(a.json, out)
    return 3 if alerts and a.fail_on_alert else 0


def _drift_watch(a: argparse.Namespace, cfg: Any) -> int:  # noqa: C901 - the watch loop's set-up and signals
    """``drift --every``: the comparison as a periodic job over a sliding window (evaluation/watch.py)."""
    try:
        every_ms = parse_duration_ms(a.every)
        window_ms = parse_duration_ms(a.window) if a.window is not None else every_ms
    except ValueError as e:
        raise CliError(f"--every/--window: {e}") from None
    if a.canary is not None:
        raise CliError("--every watches the archive (--reference, --recent) and --decisions; not --canary")
    if a.recent is not None and not a.recent.is_dir():
        raise CliError(f"{a.recent}: --every needs --recent to be the archive directory the job writes")
    inputs = None
    if a.reference is not None or a.recent is not None:
        if a.reference is None or a.recent is None:
            raise CliError("input drift needs both --reference and --recent")
        reference = read_table(a.reference)
        features = _feature_names(a, reference)
        inputs = (reference, features, ArchiveWindow(a.recent, window_ms))
    if inputs is None and a.decisions is None:
        raise CliError("nothing to watch: give --reference with --recent (an archive dir) and/or --decisions")

    def one_round(now_ms: int) -> RoundResult:
        parts, alerts = [], []
        if inputs is not None:
            reference, features, window = inputs
            recent = features_from_archive(window.recent(now_ms))
            parts.append(f"{len(recent)} requests in the last {a.window or a.every}")
            if len(recent):
                ind = input_drift(reference, recent, features, cfg)
                worst = ind.sort_values("psi", ascending=False, na_position="last").iloc[0]
                parts.append(f"max PSI {worst['psi']:.3f} ({worst['feature']})")
                alerts += input_alerts(ind, cfg, now_ms)
        if a.decisions is not None:
            scores = model_scores(read_decisions(a.decisions))
            if len(scores):
                t0 = int(scores["at_ms"].min())
                ref = (t0, t0 + (cfg.reference_ms or cfg.window_ms))
                own = self_drift(scores, ref, [(now_ms - window_ms, now_ms)], cfg)
                parts.append(f"{int(own['count'].sum()) if len(own) else 0} scores vs the reference period")
                alerts += self_alerts(own, cfg, now_ms)
        if a.alerts is not None and alerts:
            with a.alerts.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(x.to_dict()) + "\n" for x in alerts))
        return RoundResult("; ".join(parts) or "nothing yet", alerts)

    publish, close = (lambda _alerts: None), (lambda: None)
    if a.bootstrap is not None:
        try:
            publish, close = alert_publisher(a.bootstrap, a.alerts_topic)
        except SystemExit as e:
            raise CliError(f"{a.bootstrap}: no Kafka broker for the alerts topic ({e})") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    where = f" -> {a.alerts_topic} on {a.bootstrap}" if a.bootstrap else ""
    print(f"drift watch: every {a.every}, window {a.window or a.every}{where}; Ctrl-C stops", flush=True)
    try:
        run_watch(one_round, every_ms, publish=publish, stop=stop, iterations=a.iterations)
    finally:
        signal.signal(signal.SIGTERM, previous)
        close()
    return 0


def _feature_names(a: argparse.Namespace, reference: pd.DataFrame) -> list[str]:
    if a.features:
        features = [f.strip() for f in a.features.split(",") if f.strip()]
    else:
        features = [f for f in FEATURES if f in reference.columns]
    missing = [f for f in features if f not in reference.columns]
    if missing:
        raise CliError(f"{a.reference}: no column {missing[0]!r}")
    return features


def cmd_gate(a: argparse.Namespace) -> int:
    data = read_yaml_mapping(a.config) or {}
    for name in ("min_gain", "min_z", "min_labelled", "auc_floor"):
        if getattr(a, name) is not None:
            data[name] = getattr(a, name)
    try:
        cfg = GateConfig.from_dict(data)
    except ValueError as e:
        raise CliError(f"gate config: {e}") from None
    policy = read_policy(a.policy)
    rows = join_labels(read_decisions(a.decisions), read_labels_file(a.labels))
    alerts = read_jsonl_alerts(a.alerts) if a.alerts is not None else []
    result = gate(rows, policy, cfg, alerts)
    table = pd.DataFrame(
        [(v.model_id, v.role, v.new_role, v.verdict, v.labelled, v.auc) for v in result.verdicts],
        columns=["model_id", "role", "new_role", "verdict", "labelled", "auc"],
    )
    print_frame(table, f"gate: {result.action} (policy version {policy.version} -> {result.policy.version})")
    for r in result.reasons:
        print(f"  {r}")
    if result.policy_yaml is not None and a.out is not None:
        a.out.write_text(result.policy_yaml, encoding="utf-8")
        print(f"next policy written to {a.out}")
    write_json(a.json, result.to_dict())
    return 0


def read_jsonl_alerts(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise CliError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(obj, dict) or "kind" not in obj or "subject" not in obj:
                raise CliError(f"{path}:{lineno}: expected an alert object (kind, subject, ...)")
            out.append(obj)
    return out


def cmd_replay(a: argparse.Namespace) -> int:
    candidate = read_policy(a.policy)
    actual = read_policy(a.actual_policy) if a.actual_policy is not None else None
    labels = read_labels_file(a.labels) if a.labels is not None else []
    report = replay(read_decisions(a.decisions), candidate, labels=labels, actual_policy=actual)
    print_frame(report.summary, f"replay of {a.policy} (version {candidate.version}) vs what ran")
    print()
    print_frame(report.wins, "wins per model")
    changed = report.to_dict()["changed"]
    print(f"\n{changed} of {len(report.requests)} requests would get an answer from a different model")
    write_json(a.json, report.to_dict())
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    cfg = _drift_config(a)
    frames: dict[str, Any] = {"psi_alert": cfg.psi_alert, "agreement_min": cfg.agreement_min}
    window = a.window_ms or cfg.window_ms
    if a.decisions is not None:
        decisions = read_decisions(a.decisions)
        frames["latency"] = latency_frame(decisions)
        frames["wins"] = wins_frame(decisions)
        if a.labels is not None:
            rows = join_labels(decisions, read_labels_file(a.labels))
            frames["quality"] = quality_windows(rows, window, window)
    if a.canary is not None:
        frames["canary"] = score_drift(read_jsonl(a.canary), cfg)
    inputs = _input_frames(a)
    if inputs is not None:
        frames["drift"] = input_drift(*inputs, cfg)
    if a.events is not None:
        frames["events"] = _events(a.events)
    frames["generated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = write_report(a.out, **frames)
    print(f"report written to {out}")
    return 0


def cmd_retrain(a: argparse.Namespace) -> int:
    try:
        window_ms = parse_duration_ms(a.window)
    except ValueError as e:
        raise CliError(f"--window: {e}") from None
    until = a.until_ms if a.until_ms is not None else time.time_ns() // 1_000_000
    labels = read_labels_file(a.labels)
    try:
        done = retrain(a.archive_dir, labels, a.registry, a.kind, until - window_ms, until,
                       time.time_ns() // 1_000_000, a.base_sample, a.seed)  # fmt: skip
    except ValueError as e:
        raise CliError(f"retrain: {e}") from None
    r, m = done.meta["retrain"], done.meta["metrics"]
    print(
        f"registered {done.model_id} ({done.model_version}) in {done.model_dir}: {r['archive_rows']} archived "
        f"requests with labels ({r['archive_positives']} positive; skipped {r['skipped'] or 'none'}) + "
        f"{r['base_rows']} base rows; holdout AUC {m['auc']:.4f}"
    )
    print(f"serve it: rendezvous runner --model-dir {done.model_dir} --bootstrap ...")
    if a.policy is not None:
        nxt = with_shadow(read_policy(a.policy), done.model_id)
        text = policy_yaml(
            nxt, [f"{done.model_id}: retrained from the decoy ({done.model_version}), as a shadow"]
        )
        if a.out is not None:
            a.out.write_text(text, encoding="utf-8")
            print(f"next policy (v{nxt.version}, {done.model_id} as a shadow) written to {a.out}")
        else:
            print(text, end="")
    write_json(a.json, {"model_id": done.model_id, "model_version": done.model_version,
                        "model_dir": str(done.model_dir), "meta": done.meta})  # fmt: skip
    return 0


def _events(path: Path) -> dict[str, int]:
    """``--events``: a JSON object of step name -> epoch ms (null: the step did not happen)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: must be a JSON object of step -> epoch ms")
    out = {}
    for k, v in data.items():
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CliError(f"{path}: {k}: must be epoch ms (a non-negative integer) or null, got {v!r}")
        out[str(k)] = v
    return out


def cmd_bandit_sim(a: argparse.Namespace) -> int:
    try:
        cfg = SimConfig(
            steps=a.steps,
            degrade_at=a.degrade_at if a.degrade_at is not None else a.steps // 2,
            discount=a.discount,
            label_delay=a.label_delay,
            seed=a.seed,
        )
    except ValueError as e:
        raise CliError(str(e)) from None
    results = simulate(cfg)
    models = list(cfg.accuracies)
    rows = [
        (
            r.policy,
            r.regret,
            r.correct / r.steps,
            *(r.share_last_quarter[m] for m in models),
        )
        for r in results.values()
    ]
    print_frame(
        pd.DataFrame(rows, columns=["policy", "regret", "accuracy", *(f"last25%_{m}" for m in models)]),
        f"{cfg.steps} requests; {cfg.degrade_model} degrades from {cfg.accuracies[cfg.degrade_model or models[0]]} "
        f"to {cfg.degraded_accuracy} at {cfg.degrade_at}",
    )
    write_json(a.json, {name: r.to_dict() for name, r in results.items()})
    return 0


_AUTOPILOT_DURATIONS = (
    ("every", "every_ms"),
    ("window", "window_ms"),
    ("canary_window", "canary_window_ms"),
    ("min_interval", "min_interval_ms"),
)


def autopilot_config(a: argparse.Namespace) -> AutopilotConfig:
    """The config file's mapping with the flags on top, validated once; a bad value is one line."""
    data = read_yaml_mapping(a.config) or {}
    for flag, key in _AUTOPILOT_DURATIONS:
        text = getattr(a, flag)
        if text is None:
            continue
        try:
            data[key] = 0 if flag == "min_interval" and text.strip() == "0" else parse_duration_ms(text)
        except ValueError as e:
            raise CliError(f"--{flag.replace('_', '-')}: {e}") from None
    if a.demote_on_canary:
        data["demote_on_canary"] = True
    try:
        return AutopilotConfig.from_dict(data)
    except ValueError as e:
        raise CliError(f"{a.config or 'autopilot'}: {e}") from None


def cmd_autopilot(a: argparse.Namespace) -> int:
    cfg = autopilot_config(a)
    policy = read_policy(a.policy)
    topics = autopilot_kafka.Topics(
        decisions=a.decisions_topic,
        labels=a.labels_topic,
        canary=a.canary_topic,
        policies=a.policies_topic,
        audit=a.audit_topic,
    )
    watcher = a.name if a.name is not None else f"autopilot@{socket.gethostname()}"
    if not 1 <= len(watcher) <= 256:
        raise CliError(f"--name: must be 1 to 256 characters, got {len(watcher)}")
    autopilot_kafka.serve(
        a.bootstrap, topics, policy, cfg, watcher, dry_run=a.dry_run, iterations=a.iterations
    )
    return 0


def cmd_collect(a: argparse.Namespace) -> int:
    topics = {
        "decisions": a.decisions_topic or names.TOPIC_DECISIONS,
        "canary": a.canary_topic or names.TOPIC_CANARY,
        "labels": a.labels_topic or names.TOPIC_LABELS,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for kind, topic in topics.items():
        try:
            records = read_json_topic(a.bootstrap, topic, timeout_s=a.timeout_s)
        except Exception as e:  # an unreachable broker or a missing topic: one line, no traceback
            raise CliError(f"{a.bootstrap}: cannot read topic {topic!r}: {e}") from None
        unreadable = sum(1 for r in records if not isinstance(r, dict) or "request_id" not in r)
        kept = [
            r for r in records if isinstance(r, dict) and str(r.get("request_id", "")).startswith(a.prefix)
        ]
        path = a.out / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), encoding="utf-8")
        print(f"{kind:9s} {len(kept):7d} records from {topic!r} -> {path}" + (
            f"  ({unreadable} unreadable skipped)" if unreadable else ""))  # fmt: skip
        out[kind] = {"topic": topic, "path": str(path), "records": len(kept), "unreadable": unreadable}
    write_json(a.json, out)
    return 0


# --- parser ----------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluate the rendezvous server from its records: quality from labels, drift, the "
        "promotion gate, policy replay, an HTML report, a bandit simulation, and the autopilot that "
        "applies the gate's next policy live.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", metavar="PATH", help="also write the numbers as JSON ('-': stdout)")
        return sp

    q = add("quality", "accuracy, ROC AUC and log loss per model (and 'official') from labels")
    q.add_argument("--decisions", type=Path, required=True, help="decision log dump (JSONL)")
    q.add_argument("--labels", type=Path, required=True, help="labels (JSONL, schemas/label.schema.json)")
    q.add_argument("--window-ms", type=_positive_int, help="also per sliding window of this length")
    q.add_argument("--slide-ms", type=_positive_int, help="window slide (default: the window length)")
    q.set_defaults(run=cmd_quality)

    def drift_inputs(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--canary", type=Path, help="canary topic dump (JSONL)")
        sp.add_argument(
            "--reference", type=Path, help="reference features, e.g. var/models/training_sample.parquet"
        )
        sp.add_argument(
            "--recent", type=Path, help="recent requests: decoy archive Parquet file/dir or JSONL"
        )
        sp.add_argument("--features", help="comma-separated feature names (default: the generator's)")
        sp.add_argument("--config", type=Path, help="drift thresholds (YAML mapping, see DriftConfig)")

    d = add("drift", "score drift against the canary, input drift against a reference; alerts")
    drift_inputs(d)
    d.add_argument("--decisions", type=Path, help="decision log dump: every model vs the canary")
    d.add_argument("--canary-model", default="base", help="the canary's model id (default: base)")
    d.add_argument("--alerts", type=Path, help="write alerts here (JSONL, schemas/alert.schema.json)")
    d.add_argument("--now-ms", type=int, help="the alerts' at_ms (default: now)")
    d.add_argument("--fail-on-alert", action="store_true", help="exit with code 3 if any alert fired")
    d.add_argument(
        "--every",
        metavar="DURATION",
        help="run as a periodic job: compare every DURATION (30s, 5m, 1h) the archive's requests of the "
        "last --window (and, with --decisions, each model's scores then against its reference period); "
        "alerts appended to --alerts and/or published with --bootstrap; Ctrl-C stops",
    )
    d.add_argument("--window", metavar="DURATION", help="with --every: the sliding window (default: --every)")
    d.add_argument("--bootstrap", help="with --every: publish alerts to --alerts-topic on this broker")
    d.add_argument("--alerts-topic", default=TOPIC_ALERTS, help=f"with --bootstrap (default: {TOPIC_ALERTS})")
    d.add_argument("--iterations", type=_positive_int, help="with --every: stop after this many rounds")
    kafka_client.add_config_argument(d)  # with --bootstrap: a secured broker's operator.properties
    d.set_defaults(run=cmd_drift)

    g = add("gate", "promote / keep / demote models and write the next policy file")
    g.add_argument("--decisions", type=Path, required=True)
    g.add_argument("--labels", type=Path, required=True)
    g.add_argument("--policy", type=Path, required=True, help="the policy that is running (YAML)")
    g.add_argument("--alerts", type=Path, help="drift alerts (JSONL from `drift --alerts`)")
    g.add_argument("--config", type=Path, help="gate settings (YAML mapping, see GateConfig)")
    g.add_argument("--min-gain", type=float, help="AUC a challenger must win by")
    g.add_argument(
        "--min-z",
        type=float,
        help="standard errors its gain must lie above zero (paired, DeLong; 1.645: 95 %%)",
    )
    g.add_argument("--min-labelled", type=int, help="labelled answers each side needs")
    g.add_argument("--auc-floor", type=float, help="demote official models below this AUC")
    g.add_argument("--out", type=Path, help="write the next policy file here (only when something changes)")
    g.set_defaults(run=cmd_gate)

    r = add("replay", "re-run a candidate policy over the decision log, side by side with what ran")
    r.add_argument("--decisions", type=Path, required=True)
    r.add_argument("--policy", type=Path, required=True, help="the candidate policy (YAML)")
    r.add_argument("--actual-policy", type=Path, help="the policy that ran (for its deadline)")
    r.add_argument("--labels", type=Path, help="labels, for quality on labelled requests")
    r.set_defaults(run=cmd_replay)

    h = add("report", "a self-contained HTML page with charts and tables")
    drift_inputs(h)
    h.add_argument("--decisions", type=Path)
    h.add_argument("--labels", type=Path)
    h.add_argument("--window-ms", type=_positive_int, help="quality window (default: the drift config's)")
    h.add_argument("--events", type=Path, help="steps to mark on the charts (JSON: name -> epoch ms)")
    h.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    h.set_defaults(run=cmd_report)

    t = add("retrain", "train a new model version on the decoy archive's recent requests and their labels")
    t.add_argument("--archive-dir", type=Path, required=True, help="the job's --archive-dir (Parquet)")
    t.add_argument("--labels", type=Path, required=True, help="labels (JSONL, e.g. from `collect`)")
    t.add_argument("--kind", required=True, help="what to train: gbt, logreg, tree, mlp (runners/train.py)")
    t.add_argument("--registry", type=Path, default=REGISTRY_DIR, help="where models are registered")
    t.add_argument("--window", default="1h", help="requests received in the last DURATION (default 1h)")
    t.add_argument("--until-ms", type=int, help="the window's end, epoch ms (default: now)")
    t.add_argument("--base-sample", type=Path, help="also train on this sample (training_sample.parquet)")
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--policy", type=Path, help="the running policy: print the next one, the model a shadow")
    t.add_argument("--out", type=Path, help="with --policy: write the next policy file here")
    t.set_defaults(run=cmd_retrain)

    about = "the closed loop: the gate's next policy published live, under guards, every change audited"
    ap = sub.add_parser("autopilot", help=about, description=about)
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    ap.add_argument("--policy", type=Path, required=True, help="the policy file the job was started with")
    ap.add_argument("--config", type=Path, help="windows, guards, gate settings (YAML: AutopilotConfig)")
    ap.add_argument("--every", metavar="DURATION", help="a round every DURATION (default 10s)")
    ap.add_argument("--window", metavar="DURATION", help="decisions and labels judged (default 10m)")
    ap.add_argument("--canary-window", metavar="DURATION", help="canary agreement over (default 1m)")
    ap.add_argument("--min-interval", metavar="DURATION", help="one change per DURATION (0: any)")
    ap.add_argument("--demote-on-canary", action="store_true", help="a canary-agreement alert demotes")
    ap.add_argument("--dry-run", action="store_true", help="report what it would do; publish nothing")
    ap.add_argument("--name", help="who changes the policy, in the audit (default: autopilot@<host>)")
    ap.add_argument("--decisions-topic", default=names.TOPIC_DECISIONS)
    ap.add_argument("--labels-topic", default=names.TOPIC_LABELS)
    ap.add_argument("--canary-topic", default=names.TOPIC_CANARY)
    ap.add_argument("--policies-topic", default=names.TOPIC_POLICIES, help="the job's --policies-topic")
    ap.add_argument("--audit-topic", default=TOPIC_AUDIT)
    ap.add_argument("--iterations", type=_positive_int, help="stop after this many rounds")
    kafka_client.add_config_argument(ap)
    ap.set_defaults(run=cmd_autopilot)

    c = add("collect", "dump the decisions, canary and labels topics to JSONL files for the other commands")
    c.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    c.add_argument("--out", type=Path, required=True, help="directory for decisions/canary/labels.jsonl")
    c.add_argument("--decisions-topic", help="default: decisions")
    c.add_argument("--canary-topic", help="default: canary")
    c.add_argument("--labels-topic", help="default: labels")
    c.add_argument("--prefix", default="", help="keep only request ids starting with this (e.g. a run id)")
    c.add_argument("--timeout-s", type=float, default=60.0, help="give up reading a topic after this long")
    kafka_client.add_config_argument(c)  # a secured broker's operator.properties
    c.set_defaults(run=cmd_collect)

    b = add("bandit-sim", "Thompson sampling vs fixed policies, with a model degrading mid-run")
    b.add_argument("--steps", type=_positive_int, default=10_000)
    b.add_argument("--degrade-at", type=int, help="step at which gbt degrades (default: half way)")
    b.add_argument("--discount", type=float, default=0.999)
    b.add_argument("--label-delay", type=int, default=0, help="labels arrive this many requests later")
    b.add_argument("--seed", type=int, default=7)
    b.set_defaults(run=cmd_bandit_sim)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The commands that talk to Kafka (collect, drift --every --bootstrap) take --kafka-config FILE.
    kafka_client.use_config_file(getattr(args, "kafka_config", None), f"rendezvous eval {args.command}")
    try:
        return int(args.run(args))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

"""`make demo`: the whole rendezvous on this machine, then an honest summary of what happened.

Starts a single-node KRaft broker, trains the models (once), starts the model runners (five models, in
one process unless ``--runners processes``; with a slow, sometimes failing incumbent so the policy has
something to do), starts the rendezvous job
on the embedded Flink mini cluster, sends load, and prints what came back. Stops everything it
started, by PID, whatever happens.

``--secure`` (``make demo SECURE=1``): the broker is started with SASL/SCRAM and ACLs and every process
runs as its role, with its role's client properties file (ops/kafka_security.py): the runners as
``runner``, the job as ``job``, the load (and the probes) as ``client``, the summary's reads of the dead
letters and the canary as ``operator``. The client may not write the scores topic, so the malformed
records go to the requests topic only. ``--tls`` (``make demo TLS=1``): the same over TLS (SASL_SSL), every
process trusting the CA the broker made for its data dir.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import loadgen, runinfo, stack
from ops import archive, kafka_admin, kafka_client, procs
from ops.broker import KafkaBroker
from udfs import names
from udfs.policy import load_policy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "var" / "demo"
SUMMARY_JSON = DEMO_DIR / "summary.json"  # the summary's figures; `make publish --demo` commits a copy
TARGET_WITHIN_DEADLINE = 0.99  # the demo's target: this share of answers within the policy's deadline
MODELS_DIR = REPO_ROOT / "var" / "models"
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"

# The incumbent is accurate but slow and a little unreliable: about a fifth of its answers miss
# its 40 ms wait, 2% fail, 1% never come. The others are quick. So all reasons show up.
DEMO_RUNNERS = (
    stack.RunnerSpec("gbt", latency_ms=20, jitter_ms=30, fail_rate=0.02, drop_rate=0.01, seed=1),
    stack.RunnerSpec("logreg", latency_ms=5, jitter_ms=5, fail_rate=0.01, seed=2),
    stack.RunnerSpec("tree", latency_ms=1, seed=3),
    stack.RunnerSpec("base", latency_ms=2, seed=4),
    stack.RunnerSpec("mlp", latency_ms=8, jitter_ms=4, seed=5),
)
# The same five models, each with its own latency and faults, served by one runner process (one fetch
# of each request, one produce of its scores: ~0.5 ms of CPU per request less on two cores), or by a
# process each, isolated from one another (docs/performance.md, "One runner process for several models").
RUNNER_LAYOUTS = {"one": stack.one_process(DEMO_RUNNERS), "processes": DEMO_RUNNERS}
DEFAULT_RUNNER_LAYOUT = "one"


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress(total: int) -> loadgen.Progress:
    def show(sent: int, answered: int, elapsed_s: float) -> None:
        sys.stderr.write("\r" + loadgen.progress_line(sent, answered, total, elapsed_s))
        sys.stderr.flush()

    return show


def run(
    count: int,
    rate: float,
    bad: int,
    policy_path: Path,
    keep: bool,
    warmup_s: float = 0.0,
    warmup_max_s: float = 0.0,
    args: dict[str, Any] | None = None,
    secure: bool = False,
    tls: bool = False,
    runners: str = DEFAULT_RUNNER_LAYOUT,
) -> int:
    from runners.train import ensure_trained

    policy = load_policy(policy_path)  # fail fast, before starting anything
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    processes = stack.Processes()
    broker: KafkaBroker | None = None
    t0 = time.monotonic()
    try:
        say(
            "starting a single-node Kafka broker (KRaft)"
            + (" with SASL/SCRAM and ACLs" if secure else "")
            + (" over TLS" if tls else "")
            + " ..."
        )
        broker = stack.start_broker(DEMO_DIR / "broker", secure=secure, tls=tls)
        say(f"broker ready at {broker.bootstrap} (pid {broker.pid}); topics: {', '.join(names.ALL_TOPICS)}")
        if secure:
            clients = broker.client_config(names.ROLE_CLIENT)
            say(
                f"secured: one principal per role, their client properties in {clients.parent if clients else '?'}"
            )

        say(f"models in {MODELS_DIR.relative_to(REPO_ROOT)} (training them the first time) ...")
        trained = ensure_trained(MODELS_DIR)
        for model_id, meta in sorted(trained.items()):
            metrics = meta.get("metrics", {})
            say(
                f"  {model_id:7s} {meta.get('model_version', '?'):24s} holdout AUC {metrics.get('auc', float('nan')):.3f}"
            )

        say("starting model runners: " + ", ".join(
            f"{s.model_id} ({policy.role_of(s.model_id)}, ~{s.latency_ms:.0f}±{s.jitter_ms:.0f} ms"
            + (f", fails {s.fail_rate:.0%}" if s.fail_rate else "")
            + (f", drops {s.drop_rate:.0%}" if s.drop_rate else "") + ")"
            for s in DEMO_RUNNERS
        ) + (" in one runner process" if runners == "one" else ", a process each"))  # fmt: skip
        stack.start_runners(
            RUNNER_LAYOUTS[runners], MODELS_DIR, broker.bootstrap, DEMO_DIR / "logs", processes,
            kafka_config=broker.client_config(names.ROLE_RUNNER),
        )  # fmt: skip

        say(f"starting the rendezvous job on the Flink mini cluster (policy v{policy.version}: "
            f"{policy.decide}, deadline {policy.deadline_ms} ms) ...")  # fmt: skip
        archive_dir = DEMO_DIR / "archive"
        job = stack.start_job(
            policy_path,
            broker.bootstrap,
            archive_dir,
            DEMO_DIR / "flink",
            DEMO_DIR / "logs" / "job.log",
            processes,
            kafka_config=broker.client_config(names.ROLE_JOB),
        )
        with kafka_client.security_context(broker.client_security(names.ROLE_CLIENT)):
            waited, probes = stack.wait_until_answering(broker.bootstrap, job)
            say(f"job answering after {waited:.1f} s ({probes} probe request(s))")

            warmup_backlog = None
            if warmup_s > 0:
                jvms = {"job": job.pid, "broker": broker.pid}
                rounds = stack.warm_up(
                    broker.bootstrap,
                    rate,
                    warmup_s,
                    max(warmup_max_s, warmup_s),
                    jvms,
                    say,
                    policy.deadline_ms,
                )
                warmup_backlog = stack.drain_after_warm_up(
                    rounds, lambda s: stack.wait_until_answering(broker.bootstrap, job, timeout_s=s), say
                )

            say(f"sending {count} requests at {rate:.0f}/s (+{bad} malformed records) ...")
            report = loadgen.run_load(
                broker.bootstrap,
                count=count,
                rate=rate,
                deadline_ms=policy.deadline_ms,  # the policy's own deadline, stated per request so misses are counted
                bad_records=bad,
                bad_topic_scores=not secure,  # a client may not write the scores topic
                progress=_progress(count),
                settle_ms=3000,
            )
            sys.stderr.write("\n")

        say("waiting for a checkpoint to commit the decoy archive and for mailboxes to close ...")
        time.sleep(policy.late_window_ms / 1000)
        archived, archived_distinct = archive.requests_archived(
            archive_dir, f"{report.run_id}-", report.sent, ARCHIVE_WAIT_S
        )
        with kafka_client.security_context(broker.client_security(names.ROLE_OPERATOR)):
            dead = kafka_admin.read_json_topic(broker.bootstrap, names.TOPIC_DEAD_LETTERS)
            canary = [c for c in kafka_admin.read_json_topic(broker.bootstrap, names.TOPIC_CANARY)
                      if str(c.get("request_id", "")).startswith(report.run_id)]  # fmt: skip
        _print_summary(report, policy.deadline_ms, archived, archived_distinct, dead, canary, probes)
        summary = runinfo.run_info() | {
            "args": args or {"count": count, "rate": rate, "bad": bad},
            "deadline_ms": policy.deadline_ms,
            "target_within_deadline": TARGET_WITHIN_DEADLINE,
            "report": report.to_dict(),
            "warmup_backlog": warmup_backlog,
            "archived": archived,
            "archived_distinct": archived_distinct,
            "dead_letters": dict(Counter(str(d.get("reason")) for d in dead)),
            "canary_agree": sum(1 for c in canary if c.get("agree") is True),
            "canary_compared": sum(1 for c in canary if c.get("agree") is not None),
        }
        SUMMARY_JSON.write_text(json.dumps(summary, indent=2) + "\n")
        say(
            f"done in {time.monotonic() - t0:.0f} s; logs and data in {DEMO_DIR.relative_to(REPO_ROOT)}/, "
            f"the summary in {SUMMARY_JSON.relative_to(REPO_ROOT)}"
        )
        ok = report.answered == report.sent and report.conflicting == 0 and archived_distinct == report.sent
        return 0 if ok else 1
    finally:
        if not keep:
            say("stopping runners, job and broker ...")
            processes.stop_all()
            if broker is not None:
                broker.stop()


# The archive's files are committed by the job's checkpoints (flink-conf/config.yaml: every 10 s).
ARCHIVE_WAIT_S = 40.0


def _print_summary(
    r: loadgen.LoadReport,
    deadline_ms: int,
    archived: int,
    archived_distinct: int,
    dead: list[dict],
    canary: list[dict],
    probes: int,
) -> None:
    lat = r.latency_ms
    dead_reasons = Counter(str(d.get("reason")) for d in dead)
    agree = [c["agree"] for c in canary if c.get("agree") is not None]
    lines = [
        "",
        "================ rendezvous demo summary ================",
        f"requests sent           {r.sent} at {r.achieved_rate or 0:.0f}/s (target {r.target_rate:.0f}/s)",
        f"official results        {r.answered} answered, {r.unanswered} unanswered, "
        f"{r.duplicates} duplicated ({r.conflicting} with a different answer)",
        "wins per model          " + ", ".join(f"{k}: {v}" for k, v in sorted(r.wins_by_model.items())),
        "results per reason      " + ", ".join(f"{k}: {v}" for k, v in sorted(r.by_reason.items())),
        "decided by              " + ", ".join(f"{k}: {v}" for k, v in sorted(r.by_trigger.items())),
        f"end-to-end latency      p50 {_ms(lat.p50)}  p90 {_ms(lat.p90)}  p99 {_ms(lat.p99)}  max {_ms(lat.max)}"
        "  (request produced -> result consumed)",
        f"deadline ({deadline_ms} ms)     {_misses(r, deadline_ms)}",
        f"where the time went     {loadgen.format_legs(r.legs_ms)}",
        f"... for the late ones   {loadgen.format_legs(r.late_legs_ms)}",
        f"decoy archive (SQL)     {archived} rows for this run, {archived_distinct} distinct request ids "
        f"(of {r.sent} sent; not counting the {probes} probe request(s), archived if the job read them)",
        f"dead letters            {len(dead)}: " + ", ".join(f"{k} {v}" for k, v in sorted(dead_reasons.items()))
        + f"  (malformed records sent: {sum(r.bad_sent.values())})",
        f"canary agreement        {sum(agree)}/{len(agree)} official answers agree with the canary"
        if agree else "canary agreement        no comparable canary answers",
        "=========================================================",
    ]  # fmt: skip
    print("\n".join(lines), flush=True)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def _misses(r: loadgen.LoadReport, deadline_ms: int) -> str:
    return (
        f"{r.deadline_misses} of {r.deadline_checked} results consumed later than {deadline_ms} ms "
        "after the request was produced"
    )


def parser() -> argparse.ArgumentParser:
    """`make demo`'s options (harness.publish reads their defaults to name a run's command)."""
    ap = argparse.ArgumentParser(prog="rendezvous demo", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--bad", type=int, default=20, help="malformed records to send, to show the dead letters")
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument(
        "--warmup-s", type=float, default=45.0,
        help="at least this many seconds of traffic at --rate before the measured run (0: no warm-up)",
    )  # fmt: skip
    ap.add_argument(
        "--warmup-max-s", type=float, default=180.0,
        help="at most this many: the warm-up goes on while the job's or the broker's JIT compiler is busy",
    )  # fmt: skip
    ap.add_argument("--keep-running", action="store_true", help="leave broker, runners and job running")
    ap.add_argument(
        "--runners",
        choices=sorted(RUNNER_LAYOUTS),
        default=DEFAULT_RUNNER_LAYOUT,
        help="the five models in one runner process (default), or a process each",
    )
    ap.add_argument(
        "--secure",
        action="store_true",
        help="a broker with SASL/SCRAM and ACLs; each process runs as its role with its own client properties "
        "file (`make demo SECURE=1`)",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="with --secure: the clients' listener over TLS (SASL_SSL) with the broker's own CA (`make demo TLS=1`)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.tls and not a.secure:
        ap.error("--tls goes with --secure (TLS for the authenticated listener)")
    args = runinfo.plain_args(a)
    return run(
        a.count, a.rate, a.bad, a.policy, a.keep_running, a.warmup_s, a.warmup_max_s, args,
        secure=a.secure, tls=a.tls, runners=a.runners,
    )  # fmt: skip


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

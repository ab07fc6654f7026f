"""`rendezvous <command> ...`: one entry point that hands over to each part's own CLI."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "broker": ("ops.broker", "start/stop/status a single-node KRaft Kafka broker"),
    "train": ("runners.train", "train the demo models on synthetic data"),
    "runner": ("runners.runner", "run one model runner (Kafka in, scores out)"),
    "labeller": ("runners.labeller", "publish each request's true label later (demo data; labels topic)"),
    "job": ("jobs.rendezvous_job", "run the rendezvous job on the embedded Flink mini cluster"),
    "load": ("harness.loadgen", "open-loop load generator and result collector"),
    "sql": ("ops.archive", "SQL (DuckDB or Flink) over the decoy archive"),
    "policy": ("ops.policy_cli", "live policy changes: check, publish, show (the policies topic)"),
    "cluster": ("ops.cluster", "Flink session cluster: up, submit, status, cancel, down"),
    "bench": ("harness.bench", "benchmarks (what `make bench` runs)"),
    "faults": ("harness.faults", "fault injection under load, invariants checked (what `make faults` runs)"),
    "demo": ("harness.demo", "the whole stack with load and a summary (what `make demo` runs)"),
    "eval": ("evaluation.cli", "evaluation: quality, drift, gate, replay, report, bandit-sim, autopilot"),
}


def usage() -> str:
    lines = ["usage: rendezvous <command> [args...]", "", "commands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`rendezvous <command> --help` shows each command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

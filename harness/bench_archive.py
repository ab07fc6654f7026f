"""`make bench-archive`: what the decoy archive costs the job, and how fast SQL reads a big one.

Two parts, each reported, never asserted (benchmarks are not tests):

1. ``job``: the job alone (harness/bench.py's backlog drain: requests with 4 scores each, preloaded,
   drained as fast as the job can) with the archive as shipped (Parquet, compacted every checkpoint),
   with the archive but no compaction (``--archive-compact-every 0``), and with no archive at all
   (``--no-archive``), the variants alternating over ``--rounds``. Per variant: records/s, the job's
   CPU µs per request over the drain's last 2/3, and what the archive then holds (rows, files, bytes).
   The archive's cost per request is the difference in CPU µs per request. The mailbox builds each
   archive row (a JSON line) in every variant: that Python part is not in the difference; the sink's
   (the line crossing into Java, parsing, Parquet encoding, ZSTD, compaction, commits) is.
2. ``query``: ``--rows`` archived requests (1,000,000 by default) generated with pyarrow in the job's
   layout (Hive partitions of the hour, ``--files-per-hour`` Parquet files each, as the job writes
   them at its defaults: one per checkpoint, every 10 s), then DuckDB queries through the ``decoy``
   view (``rendezvous sql``), each timed as the best of ``--query-repeats`` fresh connections, with the
   files each one read (partition pruning). Repeated for each layout of ``--files-per-hour`` (360: the
   job at its defaults; 12: ``--archive-compact-every 30``; 1: an hour in one file).

Writes var/bench/archive.json and var/bench/archive.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness import bench, runinfo, stack
from ops import archive, procs

OUT_DIR = bench.OUT_DIR
JOB_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("archive (shipped)", ()),
    ("archive, no compaction", ("--archive-compact-every=0",)),
    ("no archive", ("--no-archive",)),
)
COMMIT_WAIT_S = 30.0  # after the drain: checkpoints (every 10 s) commit and compact the last files
DAY_START_MS = 1_796_515_200_000  # 2026-12-06T00:00:00Z: where the generated archive starts
HOUR_MS = archive.HOUR_MS
FEATURE_NAMES = ("amount", "hour", "merchant_risk", "distance_km", "account_age_days", "velocity_1h")


def say(msg: str) -> None:
    print(f"[bench-archive] {msg}", file=sys.stderr, flush=True)


# --- 1. the job with and without the archive ------------------------------------------------------


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def job_drain(
    name: str, extra: Sequence[str], backlog: int, warmup_s: float, probe_rate: float
) -> dict[str, Any]:
    """One job on a fresh broker: warm up, drain a backlog, then what its archive holds."""
    slug = _slug(name)
    broker = bench._fresh_broker(f"archive-{slug}")
    processes = stack.Processes()
    work = OUT_DIR / "work" / f"archive-{slug}"
    shutil.rmtree(work / "flink", ignore_errors=True)
    shutil.rmtree(work / "archive", ignore_errors=True)
    try:
        job = stack.start_job(
            bench.BENCH_POLICY, broker.bootstrap, work / "archive", work / "flink", work / "job.log",
            processes, list(extra),
        )  # fmt: skip
        stack.wait_until_answering(broker.bootstrap, job)
        if warmup_s > 0:
            bench.job_probe(broker.bootstrap, job, probe_rate, warmup_s)
        drain = bench.drain_backlog(broker.bootstrap, job, backlog, watch={})
        time.sleep(COMMIT_WAIT_S)
        return {
            "variant": name,
            "args": list(extra),
            "drain": drain,
            "archive": archive_size(work / "archive"),
        }
    except (RuntimeError, TimeoutError) as e:
        return {"variant": name, "args": list(extra), "error": str(e).splitlines()[0]}
    finally:
        processes.stop_all()
        broker.stop()


def archive_size(archive_dir: Path) -> dict[str, Any]:
    files = archive.committed_files(archive_dir)
    rows = archive.query(archive_dir, f"SELECT count(*) FROM {archive.TABLE}")[1][0][0] if files else 0
    partitions = {f.parent for f in files}
    return {
        "rows": int(rows),
        "files": len(files),
        "partitions": len(partitions),
        "bytes": sum(f.stat().st_size for f in files),
    }


def job_part(rounds: int, backlog: int, warmup_s: float, probe_rate: float) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        order = JOB_VARIANTS if r % 2 == 0 else tuple(reversed(JOB_VARIANTS))  # alternate: drift evens out
        for name, extra in order:
            say(f"round {r + 1}/{rounds}: job drain, {name}")
            runs.append({"round": r + 1, **job_drain(name, extra, backlog, warmup_s, probe_rate)})
    return {"backlog": backlog, "runs": runs, "summary": job_summary(runs)}


def job_summary(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: median records/s and CPU µs per request, and the difference to no archive."""
    out = []
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if "drain" in run:
            by_name.setdefault(run["variant"], []).append(run)
    base = _median_us(by_name.get("no archive", []))
    for name, _ in JOB_VARIANTS:
        got = by_name.get(name, [])
        if not got:
            continue
        rps = [r["drain"]["records_per_s"] for r in got if r["drain"].get("records_per_s")]
        us = _median_us(got)
        out.append(
            {
                "variant": name,
                "runs": len(got),
                "records_per_s": round(statistics.median(rps)) if rps else None,
                "job_cpu_us_per_request": us,
                "archive_cpu_us_per_request": None if us is None or base is None else us - base,
                "archive": got[-1]["archive"],
            }
        )
    return out


def _median_us(runs: Sequence[dict[str, Any]]) -> int | None:
    us = [r["drain"]["cpu_us_per_request"]["job"] for r in runs if "cpu_us_per_request" in r["drain"]]
    return round(statistics.median(us)) if us else None


# --- 2. SQL over a big archive ------------------------------------------------------------------


def generate(out_dir: Path, rows: int, hours: int, files_per_hour: int, seed: int = 7) -> dict[str, Any]:
    """``rows`` archive rows in the job's layout, spread evenly over ``hours`` from DAY_START_MS, each
    hour in ``files_per_hour`` ZSTD Parquet files (one row group each, as the job's sink writes them)."""
    rng = np.random.default_rng(seed)
    shutil.rmtree(out_dir, ignore_errors=True)
    started = time.monotonic()
    received = DAY_START_MS + np.sort(rng.integers(0, hours * HOUR_MS, rows))
    sent = received - rng.integers(0, 20, rows)
    features = np.round(rng.gamma(2.0, 30.0, (rows, len(FEATURE_NAMES))), 3)
    ids = [f"gen-{i:08d}" for i in range(rows)]
    feature_json = [
        "{" + ", ".join(f'"{k}": {v}' for k, v in zip(FEATURE_NAMES, row, strict=True)) + "}"
        for row in features.tolist()
    ]
    raw = [
        f'{{"request_id":"{rid}","sent_at_ms":{s},"return_address":"results","features":{f}}}'
        for rid, s, f in zip(ids, sent.tolist(), feature_json, strict=True)
    ]
    table = pa.table(
        {
            "request_id": ids,
            "received_at_ms": received,
            "sent_at_ms": sent,
            "return_address": pa.array(["results"] * rows),
            "source_topic": pa.array(["requests"] * rows),
            "partition": pa.array(np.zeros(rows, dtype=np.int32)),
            "offset": np.arange(rows, dtype=np.int64),
            "features": feature_json,
            "raw": raw,
        },
        schema=archive.ARCHIVE_SCHEMA,
    )
    built_s = time.monotonic() - started
    hour_of = (received - DAY_START_MS) // HOUR_MS
    bounds = np.searchsorted(hour_of, np.arange(hours + 1))
    files = 0
    for h in range(hours):
        lo, hi = int(bounds[h]), int(bounds[h + 1])
        partition = out_dir / archive.partition_of(DAY_START_MS + h * HOUR_MS)
        partition.mkdir(parents=True, exist_ok=True)
        cuts = np.linspace(lo, hi, files_per_hour + 1).astype(int)
        for n in range(files_per_hour):
            part = table.slice(int(cuts[n]), int(cuts[n + 1] - cuts[n]))
            pq.write_table(part, partition / f"compacted-part-gen-{n}.parquet", compression="zstd")
            files += 1
    return {
        "rows": rows,
        "hours": hours,
        "files_per_hour": files_per_hour,
        "files": files,
        "bytes": sum(f.stat().st_size for f in archive.committed_files(out_dir)),
        "build_s": round(built_s, 1),
        "generate_s": round(time.monotonic() - started, 1),
    }


def queries(hours: int) -> list[tuple[str, str]]:
    one_hour = archive.partition_of(DAY_START_MS + (hours // 2) * HOUR_MS)
    dt, hour = one_hour.split("/")
    where_hour = f"dt = DATE '{dt[3:]}' AND hour = {int(hour[5:])}"
    t = archive.TABLE
    return [
        ("count all", f"SELECT count(*) FROM {t}"),
        ("count one hour", f"SELECT count(*) FROM {t} WHERE {where_hour}"),
        ("mean amount one hour", f"SELECT avg((features->>'amount')::DOUBLE) FROM {t} WHERE {where_hour}"),
        ("requests per hour", f"SELECT dt, hour, count(*) FROM {t} GROUP BY ALL ORDER BY ALL"),
        ("one request by id", f"SELECT raw FROM {t} WHERE request_id = 'gen-{0:08d}'"),
        ("mean amount all", f"SELECT avg((features->>'amount')::DOUBLE) FROM {t}"),
    ]


def time_queries(archive_dir: Path, hours: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    for name, sql in queries(hours):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            archive.query(archive_dir, sql)  # a fresh connection each time, as `rendezvous sql` runs
            times.append(time.perf_counter() - started)
        read, total = archive.files_read(archive_dir, sql)
        out.append(
            {"query": name, "sql": sql, "best_s": round(min(times), 3), "files_read": read, "files": total}
        )
        say(f"  {name}: {min(times):.3f} s, {read}/{total} files")
    return out


def query_part(rows: int, hours: int, files_per_hour: Sequence[int], repeats: int) -> dict[str, Any]:
    layouts = []
    for per_hour in dict.fromkeys(files_per_hour):
        work = OUT_DIR / "work" / f"archive-query-{per_hour}"
        say(f"generating {rows:,} rows over {hours} h, {per_hour} file(s) per hour ...")
        made = generate(work, rows, hours, per_hour)
        say(f"  {made['files']} files, {made['bytes'] / 1e6:.1f} MB in {made['generate_s']} s")
        layouts.append({"layout": made, "queries": time_queries(work, hours, repeats)})
        shutil.rmtree(work, ignore_errors=True)
    return {"layouts": layouts}


# --- report -----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = ["# The decoy archive: its cost in the job, and SQL over a big one", ""]
    run = result["run"]
    lines.append(f"{run['date']}, {run['machine']['cpus']} CPUs, commit {run['commit']}.")
    if "job" in result:
        lines += [
            "",
            f"## The job draining {result['job']['backlog']:,} requests with 4 scores each",
            "",
            "| variant | records/s | job CPU µs/request | archive's µs/request | archive rows | files | MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in result["job"]["summary"]:
            a = s["archive"]
            cells = [s["records_per_s"], s["job_cpu_us_per_request"], s["archive_cpu_us_per_request"]]
            shown = " | ".join("–" if c is None else str(c) for c in cells)  # None: the drain was too short
            lines.append(
                f"| {s['variant']} | {shown} | {a['rows']:,} | {a['files']} | {a['bytes'] / 1e6:.1f} |"
            )
    for layout in result.get("query", {}).get("layouts", []):
        made = layout["layout"]
        lines += [
            "",
            f"## DuckDB over {made['rows']:,} requests, {made['hours']} h, {made['files_per_hour']} file(s) per "
            f"hour ({made['files']} files, {made['bytes'] / 1e6:.1f} MB)",
            "",
            "| query | best of runs, s | files read |",
            "|---|---|---|",
        ]
        for q in layout["queries"]:
            lines.append(f"| {q['query']} | {q['best_s']} | {q['files_read']} of {q['files']} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.bench_archive", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="job,query", help="comma-separated parts: job, query")
    ap.add_argument("--rounds", type=int, default=2, help="job: rounds of the three variants, alternating")
    ap.add_argument("--backlog", type=int, default=20000, help="job: requests preloaded for each drain")
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="job: seconds of warm-up load before each drain"
    )
    ap.add_argument("--probe-rate", type=float, default=300.0, help="job: requests/s of the warm-up")
    ap.add_argument("--rows", type=int, default=1_000_000, help="query: archived requests generated")
    ap.add_argument("--hours", type=int, default=24, help="query: hours (partitions) they spread over")
    ap.add_argument(
        "--files-per-hour",
        default="360,12,1",
        help="query: files per partition, one layout each (the job writes one per --archive-compact-every "
        "checkpoints: 360 an hour at the default 1, 12 at 30)",
    )
    ap.add_argument("--query-repeats", type=int, default=3, help="query: runs of each query, the best kept")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where archive.json and archive.md go")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    parts = {p.strip() for p in a.only.split(",") if p.strip()}
    unknown = parts - {"job", "query"}
    if unknown:
        print(f"error: --only: unknown part(s) {', '.join(sorted(unknown))} (job, query)", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"run": runinfo.run_info(), "rows": a.rows if "query" in parts else 0}
    if "job" in parts:
        result["job"] = job_part(a.rounds, a.backlog, a.seconds, a.probe_rate)
    if "query" in parts:
        per_hour = [int(x) for x in a.files_per_hour.split(",") if x.strip()]
        result["query"] = query_part(a.rows, a.hours, per_hour, a.query_repeats)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "archive.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "archive.md").write_text(markdown(result))
    say(f"wrote {a.out / 'archive.json'} and {a.out / 'archive.md'}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    procs.exit_on_sigterm()
    sys.exit(main())

"""harness/bench_archive.py's bookkeeping: the generated archive is the job's layout, and the archive's
cost is the difference to the job without one (the measurements themselves are not tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from harness import bench_archive
from ops import archive


def test_the_generated_archive_has_the_jobs_layout_and_every_row_once(tmp_path: Path) -> None:
    made = bench_archive.generate(tmp_path, rows=3000, hours=3, files_per_hour=4)
    files = archive.committed_files(tmp_path)
    assert made["files"] == len(files) == 12 and made["rows"] == 3000
    for f in files:
        table = pq.read_table(f)
        assert table.schema.equals(archive.ARCHIVE_SCHEMA, check_metadata=False)
        partition = f.parent.relative_to(tmp_path).as_posix()
        assert {archive.partition_of(ms) for ms in table["received_at_ms"].to_pylist()} == {partition}
    _, rows = archive.query(tmp_path, "SELECT count(*), count(DISTINCT request_id) FROM decoy")
    assert rows == [(3000, 3000)]


def test_the_one_hour_queries_read_one_partition(tmp_path: Path) -> None:
    bench_archive.generate(tmp_path, rows=600, hours=3, files_per_hour=2)
    for name, sql in bench_archive.queries(3):
        read, total = archive.files_read(tmp_path, sql)
        assert total == 6 and read == (2 if "one hour" in name else 6), name


def _run(variant: str, us: int | None, rps: int | None = 1000) -> dict[str, Any]:
    drain: dict[str, Any] = {"records_per_s": rps}
    if us is not None:
        drain["cpu_us_per_request"] = {"job": us}
    return {
        "variant": variant,
        "drain": drain,
        "archive": {"rows": 1, "files": 1, "partitions": 1, "bytes": 9},
    }


def test_the_archives_cost_is_the_median_difference_to_no_archive() -> None:
    runs = [
        _run("archive (shipped)", 130), _run("archive (shipped)", 110), _run("no archive", 100),
        _run("no archive", 90), _run("archive, no compaction", None, None),
        {"variant": "no archive", "error": "job exited"},  # a failed run counts for nothing
    ]  # fmt: skip
    summary = {s["variant"]: s for s in bench_archive.job_summary(runs)}
    assert summary["archive (shipped)"]["archive_cpu_us_per_request"] == 120 - 95
    assert summary["no archive"]["archive_cpu_us_per_request"] == 0
    assert summary["archive, no compaction"]["job_cpu_us_per_request"] is None  # too short a drain
    assert "| archive, no compaction | – | – | – |" in bench_archive.markdown(
        {
            "run": {"date": "d", "commit": "c", "machine": {"cpus": 2}},
            "job": {"backlog": 10, "summary": list(summary.values())},
        }
    )

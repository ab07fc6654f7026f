"""ops.archive.requests_archived: the one poll of the decoy archive the demo, the fault suite and the
e2e tests share (rows appear when a checkpoint commits their file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ops import archive

T = 1_796_518_800_000  # 2026-12-06T01:00:00Z


def _file(archive_dir: Path, name: str, ids: list[str]) -> None:
    rows = [
        {
            "request_id": rid, "received_at_ms": T + i, "sent_at_ms": T, "return_address": "results",
            "source_topic": "requests", "partition": 0, "offset": i, "features": "{}",
            "raw": json.dumps({"request_id": rid}),
        }
        for i, rid in enumerate(ids)
    ]  # fmt: skip
    partition = archive_dir / archive.partition_of(T)
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=archive.ARCHIVE_SCHEMA), partition / name)


def test_counts_rows_and_distinct_ids_of_the_prefix_once_all_are_there(tmp_path: Path) -> None:
    _file(tmp_path, "compacted-part-0-0.parquet", ["run-1", "run-2", "run-2", "other-1"])
    _file(tmp_path, ".part-0-1.parquet", ["run-3"])  # not committed: not counted
    assert archive.requests_archived(tmp_path, "run-", 2, timeout_s=5) == (3, 2)


def test_gives_what_is_there_when_the_time_is_up(tmp_path: Path) -> None:
    _file(tmp_path, "compacted-part-0-0.parquet", ["run-1"])
    started = time.monotonic()
    assert archive.requests_archived(tmp_path, "run-", 2, timeout_s=0.3, poll_s=0.05) == (1, 1)
    assert time.monotonic() - started >= 0.3  # it waited for the missing one


def test_an_empty_archive_counts_nothing(tmp_path: Path) -> None:
    assert archive.requests_archived(tmp_path, "run-", 1, timeout_s=0) == (0, 0)

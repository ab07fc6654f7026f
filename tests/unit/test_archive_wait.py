"""ops.archive.requests_archived: the one poll of the decoy archive the demo, the fault suite and the
e2e tests share (rows appear when a checkpoint commits their part file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ops import archive


def _part(archive_dir: Path, name: str, ids: list[str]) -> None:
    bucket = archive_dir / "2026-12-03--14"
    bucket.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "request_id": rid, "received_at_ms": 2, "sent_at_ms": 1, "return_address": "results",
            "source_topic": "requests", "partition": 0, "offset": i, "features": "{}",
            "raw": json.dumps({"request_id": rid}),
        }
        for i, rid in enumerate(ids)
    ]  # fmt: skip
    (bucket / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_counts_rows_and_distinct_ids_of_the_prefix_once_all_are_there(tmp_path: Path) -> None:
    _part(tmp_path, "part-0-0.jsonl", ["run-1", "run-2", "run-2", "other-1"])
    _part(tmp_path, ".part-0-1.jsonl.inprogress", ["run-3"])  # not committed: not counted
    assert archive.requests_archived(tmp_path, "run-", 2, timeout_s=5) == (3, 2)


def test_gives_what_is_there_when_the_time_is_up(tmp_path: Path) -> None:
    _part(tmp_path, "part-0-0.jsonl", ["run-1"])
    started = time.monotonic()
    assert archive.requests_archived(tmp_path, "run-", 2, timeout_s=0.3, poll_s=0.05) == (1, 1)
    assert time.monotonic() - started >= 0.3  # it waited for the missing one

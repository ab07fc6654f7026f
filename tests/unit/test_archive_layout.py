"""The decoy archive's layout as ops/archive.py reads it: Hive partitions of the request's hour, committed
files only, DuckDB with typed partition columns and partition pruning, the Flink SQL table, and the
import of an archive written before Parquet. (The job writing it: tests/e2e/test_policy_scenarios.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops import archive

T = 1_796_518_800_000  # 2026-12-06T01:00:00Z
HOUR = 3_600_000


def _row(rid: str, received_at_ms: int, **extra: object) -> dict[str, object]:
    return {
        "request_id": rid, "received_at_ms": received_at_ms, "sent_at_ms": received_at_ms - 3,
        "return_address": "results", "source_topic": "requests", "partition": 0, "offset": 7,
        "features": json.dumps({"amount": 1.5}), "raw": json.dumps({"request_id": rid}), **extra,
    }  # fmt: skip


def _write(archive_dir: Path, name: str, rows: list[dict[str, object]]) -> Path:
    """One file in the partition of its first row, as the job's sink writes it."""
    partition = archive_dir / archive.partition_of(int(str(rows[0]["received_at_ms"])))
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=archive.ARCHIVE_SCHEMA), partition / name)
    return partition / name


def test_a_request_goes_to_the_utc_hour_it_was_received_in() -> None:
    assert archive.partition_of(0) == "dt=1970-01-01/hour=00"
    assert archive.partition_of(T) == "dt=2026-12-06/hour=01"
    assert archive.partition_of(T - 1) == "dt=2026-12-06/hour=00"
    assert archive.partition_of(T + HOUR - 1) == "dt=2026-12-06/hour=01"
    assert archive.partition_of(T + 23 * HOUR) == "dt=2026-12-07/hour=00"  # the day rolls over


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970 to 2100
def test_a_partition_starts_at_the_hour_of_every_time_in_it(ms: int) -> None:
    start = archive.partition_start_ms(Path("/a") / archive.partition_of(ms))
    assert start is not None and start <= ms < start + HOUR and start % HOUR == 0


def test_directories_that_are_not_partitions_have_no_start() -> None:
    assert archive.partition_start_ms(Path("/a/2026-12-06--01")) is None  # the JSON-lines buckets
    assert archive.partition_start_ms(Path("/a/dt=2026-13-06/hour=01")) is None
    assert archive.partition_start_ms(Path("/a/dt=2026-12-06/hour=xx")) is None


def test_only_committed_files_of_partitions_are_listed_and_old_hours_pruned(tmp_path: Path) -> None:
    first = _write(tmp_path, "compacted-part-a-0.parquet", [_row("r1", T)])
    second = _write(tmp_path, "compacted-part-a-1.parquet", [_row("r2", T + HOUR)])
    _write(tmp_path, ".part-a-2.parquet", [_row("r3", T + HOUR)])  # waiting for compaction: hidden
    (tmp_path / "2026-12-06--01").mkdir()
    (tmp_path / "2026-12-06--01" / "part-0-0.jsonl").write_text("{}\n")  # the old layout: not read
    assert archive.committed_files(tmp_path) == [first, second]
    assert archive.committed_files(tmp_path, since_ms=T + HOUR) == [second]
    assert archive.committed_files(tmp_path, since_ms=T + HOUR - 1) == [first, second]


def test_the_view_has_the_row_schema_typed_partitions_and_reads_committed_rows(tmp_path: Path) -> None:
    _write(tmp_path, "compacted-part-a-0.parquet", [_row("r1", T), _row("r2", T + 5)])
    _write(tmp_path, ".part-a-1.parquet", [_row("r3", T)])
    columns, rows = archive.query(
        tmp_path, "SELECT request_id, dt, hour, features->>'amount', received_at FROM decoy ORDER BY 1"
    )
    assert [r[0] for r in rows] == ["r1", "r2"]
    assert str(rows[0][1]) == "2026-12-06" and rows[0][2] == 1 and rows[0][3] == "1.5"
    con = archive.connect(tmp_path)
    types = {name: kind for name, kind, *_ in con.execute("DESCRIBE decoy").fetchall()}
    con.close()
    assert types["dt"] == "DATE" and types["hour"] == "INTEGER" and types["received_at_ms"] == "BIGINT"
    assert list(types)[:9] == [f.name for f in archive.ARCHIVE_SCHEMA]


def test_an_empty_archive_is_a_table_with_the_same_columns(tmp_path: Path) -> None:
    full = tmp_path / "full"
    _write(full, "compacted-part-a-0.parquet", [_row("r1", T)])
    empty_columns, rows = archive.query(tmp_path / "none", "SELECT * FROM decoy")
    assert rows == [] and empty_columns == archive.query(full, "SELECT * FROM decoy")[0]


def test_a_filter_on_the_partition_columns_reads_only_those_files(tmp_path: Path) -> None:
    for h in range(4):
        _write(tmp_path, "compacted-part-a-0.parquet", [_row(f"r{h}", T + h * HOUR)])
    where = "SELECT count(*) FROM decoy WHERE dt = DATE '2026-12-06' AND hour = 2"
    assert archive.files_read(tmp_path, where) == (1, 4)
    assert archive.query(tmp_path, where)[1] == [(1,)]
    assert archive.files_read(tmp_path, "SELECT count(*) FROM decoy") == (4, 4)
    assert archive.files_read(tmp_path, "SELECT count(*) FROM decoy WHERE hour >= 3") == (2, 4)


def test_the_flink_table_is_partitioned_by_dt_and_hour_over_the_archive_format(tmp_path: Path) -> None:
    ddl = archive.flink_sql_ddl(tmp_path)
    assert "PARTITIONED BY (`dt`, `hour`)" in ddl and "'format' = 'rendezvous-archive'" in ddl
    assert f"'path' = '{tmp_path.resolve().as_uri()}'" in ddl
    for field in archive.ARCHIVE_SCHEMA:
        assert f"`{field.name}` " in ddl


def test_an_archive_from_before_parquet_is_imported_into_its_hours_once(tmp_path: Path) -> None:
    legacy = tmp_path / "jsonl"
    (legacy / "2026-12-06--01").mkdir(parents=True)
    rows = [_row("r1", T), _row("r2", T + HOUR), _row("r3", T + HOUR + 1)]
    (legacy / "2026-12-06--01" / "part-0-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (legacy / "2026-12-06--01" / ".part-0-1.jsonl.inprogress").write_text(json.dumps(_row("r4", T)) + "\n")
    out = tmp_path / "archive"
    assert archive.import_jsonl(out, legacy) == archive.ImportReport(1, 2, 3)
    assert archive.import_jsonl(out, legacy) == archive.ImportReport(1, 0, 0)  # idempotent
    _, got = archive.query(out, "SELECT request_id, hour, raw FROM decoy ORDER BY 1")
    assert [(r, h) for r, h, _ in got] == [("r1", 1), ("r2", 2), ("r3", 2)]
    assert [json.loads(raw) for *_, raw in got] == [json.loads(str(r["raw"])) for r in rows]


@pytest.mark.parametrize("argv", [["--import-jsonl", "/nonexistent"], ["--archive-dir", "/nonexistent"]])
def test_the_command_refuses_a_missing_directory_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert archive.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

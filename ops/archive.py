"""The decoy archive: compact the job's JSONL part files to Parquet and query them with SQL.

The job writes every request, exactly as received, through a Flink FileSink in row format
(JSON lines, one bucket directory per hour, files committed on checkpoint). Only finished part
files (`part-*.jsonl`; in-progress ones are hidden dot-files) are read, so a query never sees a
row that a job restart could take back. Compaction is idempotent: one Parquet file per finished
part file, named after it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE_DIR = REPO_ROOT / "var" / "archive"
TABLE = "decoy"

# The Parquet schema of an archive row (schemas/archive_row.schema.json).
ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("received_at_ms", pa.int64(), nullable=False),
        pa.field("sent_at_ms", pa.int64()),
        pa.field("return_address", pa.string()),
        pa.field("source_topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("features", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def parquet_dir_for(archive_dir: Path) -> Path:
    return archive_dir.parent / f"{archive_dir.name}-parquet"


def finished_parts(archive_dir: Path) -> list[Path]:
    """Committed part files only: Flink keeps in-progress and pending files dot-prefixed."""
    return sorted(p for p in archive_dir.glob("*/part-*.jsonl") if p.is_file())


@dataclass(frozen=True)
class CompactReport:
    parts_seen: int
    parts_written: int
    rows_written: int


def compact(archive_dir: Path, out_dir: Path | None = None) -> CompactReport:
    """Convert every finished JSONL part file not yet converted into a Parquet file."""
    out_dir = out_dir or parquet_dir_for(archive_dir)
    parts = finished_parts(archive_dir)
    written = rows = 0
    for part in parts:
        target = out_dir / f"hour={part.parent.name}" / (part.stem + ".parquet")
        if target.exists():
            continue
        table = _read_part(part)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name("." + target.name + ".tmp")  # dot-prefixed: invisible to readers
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(target)
        written += 1
        rows += table.num_rows
    return CompactReport(len(parts), written, rows)


def _read_part(part: Path) -> pa.Table:
    if part.stat().st_size == 0:
        return ARCHIVE_SCHEMA.empty_table()
    parse = pa_json.ParseOptions(explicit_schema=ARCHIVE_SCHEMA, unexpected_field_behavior="ignore")
    return pa_json.read_json(part, parse_options=parse)


def connect(archive_dir: Path) -> Any:
    """A DuckDB connection with the view ``decoy`` over the (freshly compacted) archive."""
    import duckdb

    out_dir = parquet_dir_for(archive_dir)
    compact(archive_dir, out_dir)
    con = duckdb.connect()
    files = sorted(out_dir.glob("hour=*/part-*.parquet"))
    if files:
        listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        source = f"read_parquet([{listing}], hive_partitioning = true)"
    else:  # an empty archive is still a table with the right columns
        cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in ARCHIVE_SCHEMA)
        source = f"(SELECT {cols}, CAST(NULL AS VARCHAR) AS hour WHERE false)"
    con.execute(
        f"CREATE VIEW {TABLE} AS SELECT *, to_timestamp(received_at_ms / 1000.0) AS received_at FROM {source}"
    )
    return con


def _duck_type(t: pa.DataType) -> str:
    return {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER"}[t]


def query(archive_dir: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = connect(archive_dir)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall()
    finally:
        con.close()


def requests_archived(
    archive_dir: Path, id_prefix: str, expected: int, timeout_s: float, poll_s: float = 1.0
) -> tuple[int, int]:
    """(rows, distinct request ids) archived whose id starts with ``id_prefix``, once ``expected`` ids
    are there or ``timeout_s`` has passed: rows appear when a checkpoint of the job commits their file."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, rows = query(
            archive_dir,
            f"SELECT count(*), count(DISTINCT request_id) FROM {TABLE} WHERE request_id LIKE '{id_prefix}%'",
        )
        got = (int(rows[0][0]), int(rows[0][1]))
        if got[1] >= expected or time.monotonic() > deadline:
            return got
        time.sleep(poll_s)


def flink_sql_ddl(archive_dir: Path, table: str = TABLE) -> str:
    """The same table for Flink SQL (SQL client on a cluster, or PyFlink batch): the JSONL files.

    Flink's file source skips dot-prefixed (in-progress) files, so it also reads committed rows only.
    """
    columns = ",\n  ".join(f"`{f.name}` {_flink_type(f.type)}" for f in ARCHIVE_SCHEMA)
    return (
        f"CREATE TABLE `{table}` (\n  {columns}\n) WITH (\n"
        f"  'connector' = 'filesystem',\n  'path' = '{archive_dir.resolve().as_uri()}',\n  'format' = 'json'\n)"
    )


def _flink_type(t: pa.DataType) -> str:
    return {pa.string(): "STRING", pa.int64(): "BIGINT", pa.int32(): "INT"}[t]


def query_flink(archive_dir: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL over the archive with Flink SQL in batch mode (starts a local PyFlink gateway)."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("parallelism.default", "1")
    t_env.execute_sql(flink_sql_ddl(archive_dir))
    result = t_env.execute_sql(sql)
    columns = list(result.get_resolved_schema().get_column_names())
    with result.collect() as rows:
        return columns, [tuple(r) for r in rows]


def format_table(columns: list[str], rows: list[tuple[Any, ...]], limit: int = 50) -> str:
    shown = [[("NULL" if v is None else str(v)) for v in r] for r in rows[:limit]]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in shown]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows")
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous sql", description="SQL over the decoy archive (DuckDB).")
    ap.add_argument("sql", nargs="?", default=f"SELECT count(*) AS requests FROM {TABLE}")
    ap.add_argument("--archive-dir", type=Path, default=DEFAULT_ARCHIVE_DIR)
    ap.add_argument("--compact-only", action="store_true", help="only convert finished JSONL to Parquet")
    ap.add_argument("--engine", choices=("duckdb", "flink"), default="duckdb", help="who runs the SQL")
    ap.add_argument("--flink-ddl", action="store_true", help="print the Flink SQL CREATE TABLE and exit")
    a = ap.parse_args(argv)
    if a.flink_ddl:
        print(flink_sql_ddl(a.archive_dir) + ";")
        return 0
    if not a.archive_dir.is_dir():
        print(f"error: no archive at {a.archive_dir} (run the job or `make demo` first)", file=sys.stderr)
        return 2
    if a.compact_only:
        r = compact(a.archive_dir)
        print(f"{r.parts_seen} finished part files, {r.parts_written} converted ({r.rows_written} rows)")
        return 0
    if a.engine == "flink":
        columns, rows = query_flink(a.archive_dir, a.sql)
        print(format_table(columns, rows))
        return 0
    import duckdb

    try:
        columns, rows = query(a.archive_dir, a.sql)
    except duckdb.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

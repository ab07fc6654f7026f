"""The decoy archive: query the Parquet files the job writes, with SQL (DuckDB or Flink SQL).

The job writes every request, exactly as received, as Parquet (deps/archive-parquet, through Flink's
FileSink): one Hive partition per hour of the request's ``received_at_ms`` (UTC), committed on
checkpoint and compacted in the job before the commit::

    <archive-dir>/dt=2026-12-06/hour=01/compacted-part-<uuid>-<n>.parquet

Files not yet committed are dot-prefixed (in-progress, or waiting to be compacted); every reader here
skips them, so a query never sees a row a job restart could take back, nor one counted twice. The
columns are those of schemas/archive_row.schema.json (``features``: the JSON text of the features
object); ``dt`` and ``hour`` come from the directory names, so a filter on them reads only the matching
partitions (partition pruning).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE_DIR = REPO_ROOT / "var" / "archive"
# The job's Parquet sink and Flink SQL's reader of its files (deps/archive-parquet, built by make setup).
ARCHIVE_JAR = REPO_ROOT / "build" / "jars" / "flink" / "rendezvous-archive-parquet.jar"
TABLE = "decoy"
HOUR_MS = 3_600_000
# Committed files only: DuckDB's "*" also matches dot-files, which are the sink's uncommitted ones.
FILE_GLOB = "[!.]*.parquet"
PARTITION_GLOB = f"dt=*/hour=*/{FILE_GLOB}"
# The partition columns, typed (DuckDB would read "01" as text otherwise).
PARTITION_TYPES = {"dt": "DATE", "hour": "INTEGER"}

# The Parquet schema of an archive row (schemas/archive_row.schema.json), as the job writes it
# (deps/archive-parquet's ArchiveRows.SCHEMA).
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


def partition_of(received_at_ms: int) -> str:
    """The partition path of a request received at this time (UTC), as the job's sink names it."""
    t = datetime.fromtimestamp(received_at_ms / 1000, UTC)
    return f"dt={t:%Y-%m-%d}/hour={t:%H}"


def partition_start_ms(partition: Path) -> int | None:
    """The first millisecond of a partition directory ``.../dt=YYYY-MM-DD/hour=HH`` (None: not one)."""
    dt, hour = partition.parent.name, partition.name
    if not (dt.startswith("dt=") and hour.startswith("hour=")):
        return None
    try:
        day = datetime.strptime(dt[3:], "%Y-%m-%d").replace(tzinfo=UTC)
        return int(day.timestamp() * 1000) + int(hour[5:]) * HOUR_MS
    except ValueError:
        return None


def committed_files(archive_dir: Path, since_ms: int | None = None) -> list[Path]:
    """The archive's committed Parquet files, oldest partition first; with ``since_ms``, only those of
    the partitions whose hour ends after it (the others hold no row received at or after it)."""
    files = []
    for f in archive_dir.glob(PARTITION_GLOB):
        if since_ms is not None:
            start = partition_start_ms(f.parent)
            if start is not None and start + HOUR_MS <= since_ms:
                continue
        files.append(f)
    return sorted(files)


def connect(archive_dir: Path) -> Any:
    """A DuckDB connection with the view ``decoy`` over the archive's committed files.

    The view reads through a glob, so every query sees the files committed by then, and DuckDB prunes
    partitions from the paths before it opens a file (``WHERE dt = ... AND hour = ...``)."""
    import duckdb

    con = duckdb.connect()
    if committed_files(archive_dir):
        glob = str(archive_dir.resolve() / PARTITION_GLOB).replace("'", "''")
        types = ", ".join(f"'{k}': {v}" for k, v in PARTITION_TYPES.items())
        source = f"read_parquet('{glob}', hive_partitioning = true, hive_types = {{{types}}})"
    else:  # an empty archive is still a table with the right columns
        cols = [f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in ARCHIVE_SCHEMA]
        cols += [f"CAST(NULL AS {t}) AS {k}" for k, t in PARTITION_TYPES.items()]
        source = f"(SELECT {', '.join(cols)} WHERE false)"
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


_FILES_READ = re.compile(r"Total Files Read: (\d+)")


def files_read(archive_dir: Path, sql: str) -> tuple[int, int]:
    """(files a query read, committed files in the archive), from DuckDB's profile of the query (it is
    run, by EXPLAIN ANALYZE): what partition pruning left of the archive.

    >>> import tempfile; files_read(Path(tempfile.mkdtemp()), f"SELECT 1 FROM {TABLE}")
    (0, 0)
    """
    total = len(committed_files(archive_dir))
    if total == 0:
        return 0, 0
    _, rows = query(archive_dir, f"EXPLAIN ANALYZE {sql}")
    found = _FILES_READ.findall("\n".join(str(v) for row in rows for v in row))
    if not found:
        raise ValueError(f"no files read in DuckDB's profile of {sql!r}: is it a query of {TABLE}?")
    return sum(int(n) for n in found), total


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


@dataclass(frozen=True)
class ImportReport:
    parts_seen: int
    files_written: int
    rows_written: int


def import_jsonl(archive_dir: Path, legacy_dir: Path) -> ImportReport:
    """Bring an archive the job wrote before Parquet (``<YYYY-MM-DD--HH>/part-*.jsonl``, committed files
    only) into the Parquet layout: each part's rows go to the partitions of their ``received_at_ms``, as
    ``jsonl-<part>.parquet``. Idempotent: a part already imported is skipped; nothing is deleted."""
    parts = sorted(p for p in legacy_dir.glob("*/part-*.jsonl") if p.is_file())
    written = rows = 0
    for part in parts:
        name = f"jsonl-{part.parent.name}-{part.stem}.parquet"
        if any(archive_dir.glob(f"dt=*/hour=*/{name}")):
            continue
        table = _read_jsonl(part)
        hours = pa.array([partition_of(ms) for ms in table.column("received_at_ms").to_pylist()])
        for hour in sorted(set(hours.to_pylist())):
            target = archive_dir / hour / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name("." + target.name + ".tmp")  # dot-prefixed: invisible to readers
            pq.write_table(table.filter(pc.equal(hours, hour)), tmp, compression="zstd")
            tmp.replace(target)
            written += 1
        rows += table.num_rows
    return ImportReport(len(parts), written, rows)


def _read_jsonl(part: Path) -> pa.Table:
    if part.stat().st_size == 0:
        return ARCHIVE_SCHEMA.empty_table()
    parse = pa_json.ParseOptions(explicit_schema=ARCHIVE_SCHEMA, unexpected_field_behavior="ignore")
    return pa_json.read_json(part, parse_options=parse)


FLINK_FORMAT = "rendezvous-archive"  # deps/archive-parquet's ArchiveFormatFactory


def flink_sql_ddl(archive_dir: Path, table: str = TABLE) -> str:
    """The same table for Flink SQL (SQL client on a cluster, or PyFlink batch): the Parquet files,
    partitioned by ``dt`` and ``hour``, so Flink's filesystem source prunes partitions like DuckDB.

    The format is the project's own reader of the archive's files (``'format' = 'rendezvous-archive'``,
    in build/jars/flink/rendezvous-archive-parquet.jar): Flink's Parquet format is not to be had here.
    Flink's file source skips dot-prefixed (uncommitted) files, so it reads committed rows only.
    """
    columns = ",\n  ".join(f"`{f.name}` {_flink_type(f.type)}" for f in ARCHIVE_SCHEMA)
    return (
        f"CREATE TABLE `{table}` (\n  {columns},\n  `dt` STRING,\n  `hour` INT\n) PARTITIONED BY (`dt`, `hour`)"
        f" WITH (\n  'connector' = 'filesystem',\n  'path' = '{archive_dir.resolve().as_uri()}',\n"
        f"  'format' = '{FLINK_FORMAT}'\n)"
    )


def _flink_type(t: pa.DataType) -> str:
    return {pa.string(): "STRING", pa.int64(): "BIGINT", pa.int32(): "INT"}[t]


def query_flink(archive_dir: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL over the archive with Flink SQL in batch mode (starts a local PyFlink gateway)."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("parallelism.default", "1")
    t_env.get_config().set("pipeline.jars", ARCHIVE_JAR.resolve().as_uri())
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
    ap.add_argument("--engine", choices=("duckdb", "flink"), default="duckdb", help="who runs the SQL")
    ap.add_argument("--flink-ddl", action="store_true", help="print the Flink SQL CREATE TABLE and exit")
    ap.add_argument(
        "--import-jsonl",
        type=Path,
        metavar="DIR",
        help="copy a JSON-lines archive written before Parquet (DIR/<YYYY-MM-DD--HH>/part-*.jsonl) into "
        "the Parquet layout of --archive-dir, and exit",
    )
    a = ap.parse_args(argv)
    if a.flink_ddl:
        print(flink_sql_ddl(a.archive_dir) + ";")
        return 0
    if a.import_jsonl is not None:
        if not a.import_jsonl.is_dir():
            print(f"error: --import-jsonl: no directory {a.import_jsonl}", file=sys.stderr)
            return 2
        r = import_jsonl(a.archive_dir, a.import_jsonl)
        print(
            f"{r.parts_seen} JSON-lines part files, {r.files_written} Parquet files written ({r.rows_written} rows)"
        )
        return 0
    if not a.archive_dir.is_dir():
        print(f"error: no archive at {a.archive_dir} (run the job or `make demo` first)", file=sys.stderr)
        return 2
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

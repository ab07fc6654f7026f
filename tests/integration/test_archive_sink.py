"""The decoy archive's Parquet sink (deps/archive-parquet, built by jobs/rendezvous_job.py) on the PyFlink
mini cluster, at parallelism 2, fed archive lines spanning several hours: every row lands once, in the
partition of its hour, in committed files only, every column as the mailbox wrote it; with compaction
(the compacted files only, no part file left behind) and without. (The whole job on a real broker:
tests/e2e/test_policy_scenarios.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ops import archive

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
T = 1_796_515_200_000  # 2026-12-06T00:00:00Z
ROWS = 3000  # one every 4 s: 3 h 20 min, 4 partitions
HUGE = 7  # this row's sent_at_ms is beyond 64 bits, as a client may send it (the schema sets no maximum)

# In a child process: its own PyFlink gateway, the archive jar put on its class path by the job's code.
WRITE = """
import json, sys
from pathlib import Path
from pyflink.common import Configuration, Types
from pyflink.datastream import StreamExecutionEnvironment
from jobs import rendezvous_job as rj

out, compact_every, lines = Path(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
conf = Configuration()
for k, v in {
    "pipeline.jars": ";".join(p.resolve().as_uri() for p in rj.connector_jars()),
    "execution.checkpointing.interval": "500ms",
    "parallelism.default": "2",
    "restart-strategy.type": "none",
    "rest.port": "0",
}.items():
    conf.set_string(k, v)
env = StreamExecutionEnvironment.get_execution_environment(conf)
rj._archive_sink(env.from_collection(lines, type_info=Types.STRING()).rebalance(), out, compact_every)
env.execute("archive sink")
"""


def _row(i: int) -> dict[str, object]:
    return {
        "request_id": f"r{i}", "received_at_ms": T + 4000 * i, "sent_at_ms": 10**20 if i == HUGE else T + 4000 * i - 2,
        "return_address": "results", "source_topic": "requests", "partition": i % 3, "offset": i,
        "features": json.dumps({"amount": i / 10}, sort_keys=True),
        "raw": json.dumps({"request_id": f"r{i}", "features": {"amount": i / 10}}),
    }  # fmt: skip


def _line(i: int) -> str:
    return json.dumps(_row(i), separators=(",", ":"))


def _write(tmp_path: Path, compact_every: int) -> Path:
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps([_line(i) for i in range(ROWS)]))
    out = tmp_path / "archive"
    done = subprocess.run(
        [sys.executable, "-c", WRITE, str(out), str(compact_every), str(lines)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("compact_every", [1, 0])
def test_every_line_lands_once_typed_in_the_partition_of_its_hour(tmp_path: Path, compact_every: int) -> None:
    out = _write(tmp_path, compact_every)
    files = archive.committed_files(out)
    assert {f.parent.relative_to(out).as_posix() for f in files} == {
        f"dt=2026-12-06/hour={h:02d}" for h in range(4)
    }
    seen: dict[str, dict[str, object]] = {}
    for f in files:
        table = pq.read_table(f)
        assert table.schema.equals(archive.ARCHIVE_SCHEMA, check_metadata=False)
        for row in table.to_pylist():
            assert archive.partition_of(int(row["received_at_ms"])) == f.parent.relative_to(out).as_posix()
            assert row["request_id"] not in seen
            seen[str(row["request_id"])] = row
    assert sorted(seen) == sorted(f"r{i}" for i in range(ROWS))
    # Every column as the mailbox wrote it, in the schema's order; a sent_at_ms beyond 64 bits is NULL (its
    # raw text keeps it) rather than a failure that every replay would repeat.
    assert [seen[f"r{i}"] for i in range(ROWS)] == [
        {**_row(i), "sent_at_ms": None} if i == HUGE else _row(i) for i in range(ROWS)
    ]
    assert list(seen["r0"]) == [f.name for f in archive.ARCHIVE_SCHEMA]
    # Nothing uncommitted is left behind once the job has finished.
    assert [p.name for p in out.rglob(".*")] == []
    prefix = "compacted-part-" if compact_every else "part-"
    assert all(f.name.startswith(prefix) for f in files)

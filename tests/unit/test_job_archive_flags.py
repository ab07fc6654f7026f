"""The job's decoy archive options (no Flink, no broker): compaction every N checkpoints, validated once
with a one-line error naming the flag, and no archive only when asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import rendezvous_job as rj

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
BASE = ["--policy", str(DEFAULT_POLICY), "--bootstrap", "b:9"]


def test_the_archive_is_on_and_compacted_every_checkpoint_by_default() -> None:
    cfg = rj.parse_args(BASE)
    assert cfg.archive and cfg.archive_compact_every == rj.DEFAULT_ARCHIVE_COMPACT_EVERY == 1
    assert rj.parse_args([*BASE, "--archive-compact-every", "30"]).archive_compact_every == 30
    assert rj.parse_args([*BASE, "--archive-compact-every", "0"]).archive_compact_every == 0
    assert not rj.parse_args([*BASE, "--no-archive"]).archive


@pytest.mark.parametrize("value", ["-1", str(rj.MAX_ARCHIVE_COMPACT_EVERY + 1)])
def test_a_compaction_interval_out_of_range_is_refused_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        rj.parse_args([*BASE, "--archive-compact-every", value])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"rendezvous-job: error: --archive-compact-every: must be 0 to 360, got {value}"

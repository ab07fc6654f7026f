"""Upgrading a job from before the Parquet archive: ops/upgrade.py lets the old JSON-lines sink's state go
only with ``-D execution.savepoint.ignore-unclaimed-state=true`` (tests/unit/test_upgrade.py). This
checks the other half: that override, among the job's arguments as the upgrade passes them, reaches the
job graph the staged client submits from the savepoint (built here exactly so; no cluster, no broker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ops import upgrade

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
import sys, tempfile
from pathlib import Path
from pyflink.common import Configuration
from jobs import rendezvous_job as rj
d = Path(tempfile.mkdtemp())
args = ["--policy", "policies/default.yaml", "--bootstrap", "127.0.0.1:9", "--archive-dir", str(d / "a"),
        "--state-dir", str(d / "s"), *sys.argv[1:]]
cfg = rj.parse_args(args)
env = rj.make_env(cfg)
rj.build_job(env, cfg)
conf = Configuration()
conf.set_string("execution.savepoint.path", str(d / "savepoint"))  # as jobs/staged_upgrade.py does
env.configure(conf)
s = env._j_stream_execution_environment.getStreamGraph(False).getSavepointRestoreSettings()
print("RESTORE", s.getRestorePath() == str(d / "savepoint"), s.allowNonRestoredState())
"""


def _settings(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SETTINGS, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return next(line for line in out.stdout.splitlines() if line.startswith("RESTORE "))


def test_the_override_lets_unclaimed_state_go_and_only_when_given() -> None:
    assert _settings("-D", f"{upgrade.IGNORE_UNCLAIMED_STATE}=true") == "RESTORE True True"
    assert _settings() == "RESTORE True False"

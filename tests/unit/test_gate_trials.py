"""harness/gate_trials.py: the offline promotion trials docs/evaluation.md quotes, on a small scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import gate_trials
from runners import train


def test_the_base_rows_are_the_training_split(tmp_path: Path) -> None:
    x_all, y_all = gate_trials.base_rows("all", rows=2000)
    x_few, _ = gate_trials.base_rows("5000", rows=8000)
    assert len(x_all) == len(y_all) == 2000 * (1 - train.HOLDOUT_SHARE)
    assert len(x_few) == 5000 and set(y_all.tolist()) == {0, 1}


@pytest.mark.parametrize("base", ["all", "5000"])
def test_a_trial_retrains_and_tests_against_logreg(base: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    out = tmp_path / "trials.json"
    assert gate_trials.main(["--base", base, "--trials", "1", "--requests", "1200", "--models-dir",
                             str(models), "--json", str(out)]) == 0  # fmt: skip
    got = json.loads(out.read_text())
    [row] = got["trials"]
    assert got["summary"]["trials"] == 1 and got["summary"]["passed"] in (0, 1)
    assert -1.0 < row["gain"] < 1.0 and row["passed_at"] in (None, 1000, 1100, 1200)
    # the retrained gbt beats logreg on fresh requests (every trial of --base all did, docs/evaluation.md)
    if base == "all":
        assert row["gain"] > 0


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gate_trials.main(["--requests", "10"])
    assert "--requests >= 1000" in capsys.readouterr().err

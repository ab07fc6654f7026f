"""Label feedback is opt-in: the job's flag, and a thompson policy without it (no Flink, no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import rendezvous_job as rj
from udfs import names

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def _thompson(tmp_path: Path) -> Path:
    doc: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY.read_text())
    path = tmp_path / "thompson.yaml"
    path.write_text(yaml.safe_dump({**doc, "decide": "thompson"}))
    return path


def test_feedback_is_off_unless_a_labels_topic_is_named() -> None:
    assert rj.parse_args(["--policy", str(DEFAULT_POLICY), "--bootstrap", "b:9"]).labels_topic is None
    on = rj.parse_args(["--policy", str(DEFAULT_POLICY), "--bootstrap", "b:9", "--labels-topic", "lab"])
    assert on.labels_topic == "lab"


def test_a_thompson_policy_without_feedback_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _thompson(tmp_path)
    with pytest.raises(SystemExit) as e:
        rj.parse_args(["--policy", str(path), "--bootstrap", "b:9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "decide: thompson" in err and f"--labels-topic {names.TOPIC_LABELS}" in err
    cfg = rj.parse_args(["--policy", str(path), "--bootstrap", "b:9", "--labels-topic", names.TOPIC_LABELS])
    assert cfg.policy.decide == "thompson"

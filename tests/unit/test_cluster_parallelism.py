"""`cluster submit/upgrade --parallelism N`: one Flink override the manifest records, checked against the
cluster's free slots before ``flink run`` (else Flink waits minutes for slots before it fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import cluster as cluster_mod
from ops.cluster import Cluster, ClusterError, Submission
from ops.flink_conf import effective_conf, job_parallelism


class SlotsCluster(Cluster):
    """A Cluster whose REST overview reports ``free`` slots; nothing else answers."""

    def __init__(self, base: Path, free: int) -> None:
        super().__init__(base)
        self.free = free

    def config(self) -> dict[str, Any]:
        return {}

    def overview(self) -> dict[str, Any] | None:
        return {"taskmanagers": self.free, "slots-available": self.free}


def submission(tmp_path: Path, job_args: list[str]) -> Submission:
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump({"parallelism.default": 1}))
    return Submission(tmp_path / "p.yaml", None, "b:1", job_args, conf, {}, [])


def test_the_override_sets_the_parallelism_and_a_later_one_wins() -> None:
    args = ["--group-id", "g", *cluster_mod.parallelism_override(2)]
    assert job_parallelism(effective_conf({}, {"parallelism.default": "1"}, args)) == 2
    again = [*args, *cluster_mod.parallelism_override(1)]
    assert job_parallelism(effective_conf({}, {}, again)) == 1


@pytest.mark.parametrize("text", ["0", "-1", "two"])
def test_the_cli_refuses_a_bad_parallelism(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cluster_mod.main(["submit", "--policy", "p.yaml", "--bootstrap", "b:1", "--parallelism", text])
    assert e.value.code == 2
    assert f"a whole number of at least 1, got '{text}'" in capsys.readouterr().err


def test_too_few_free_slots_is_refused_naming_both_numbers(tmp_path: Path) -> None:
    sub = submission(tmp_path, cluster_mod.parallelism_override(2))
    with pytest.raises(ClusterError, match=r"parallelism is 2 but the cluster has 1 free slot"):
        SlotsCluster(tmp_path / "c", free=1)._check_slots(sub)
    SlotsCluster(tmp_path / "c", free=2)._check_slots(sub)  # enough: no error
    SlotsCluster(tmp_path / "c", free=1)._check_slots(submission(tmp_path, []))

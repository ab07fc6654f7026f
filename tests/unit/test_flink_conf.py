"""The one Flink-configuration reader (ops/flink_conf.py) that the job, the cluster and the upgrade share."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

from jobs import rendezvous_job
from ops import flink_conf, upgrade
from ops.flink_conf import FlinkConfError, effective_conf, flatten, parse_overrides, read_conf

ROOT = Path(__file__).resolve().parents[2]


def test_doctests() -> None:
    result = doctest.testmod(flink_conf)
    assert result.attempted >= 2 and result.failed == 0


def test_overrides_and_effective_conf_follow_the_jobs_order() -> None:
    args = ["--group-id", "g", "-D", "a=1", "-Da=2", "-Db=x=y", "-D"]
    assert parse_overrides(args) == {"a": "2", "b": "x=y"}
    conf = effective_conf(
        {"python": {"execution-mode": "process"}, "c": True},
        {"python.execution-mode": "thread"},
        ["-Dpython.execution-mode=process"],
    )
    assert conf["python.execution-mode"] == "process" and conf["c"] == "true"
    nested_over_dotted = effective_conf(
        {"python.execution-mode": "process"}, {"python": {"execution-mode": "thread"}}, []
    )
    assert nested_over_dotted["python.execution-mode"] == "thread"


def test_lists_and_booleans_take_flinks_string_form() -> None:
    # Before one reader, the upgrade's check turned a list into "['a', 'b']" while the job passed "a;b".
    assert flatten({"pipeline": {"jars": ["file:/a.jar", "file:/b.jar"]}, "x": False, "n": 3}) == {
        "pipeline.jars": "file:/a.jar;file:/b.jar",
        "x": "false",
        "n": "3",
    }


def test_bad_files_fail_with_one_line_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for path, fragment in (
        (broken, "cannot read"),
        (listed, "must be a YAML mapping"),
        (tmp_path / "none.yaml", "cannot read"),
    ):
        with pytest.raises(FlinkConfError) as e:
            read_conf(path)
        assert str(path) in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)
    assert read_conf(empty) == {}


def test_the_job_and_the_upgrade_check_read_the_project_conf_alike(tmp_path: Path) -> None:
    cfg = rendezvous_job.parse_args(
        [
            "--policy",
            str(ROOT / "policies" / "default.yaml"),
            "--bootstrap",
            "127.0.0.1:9",
            "--state-dir",
            str(tmp_path),
            "-Dpipeline.max-parallelism=64",
        ]
    )
    job_conf = rendezvous_job.flink_configuration(cfg)  # needs the connector jar `make setup` fetches
    checked = effective_conf({}, read_conf(cfg.flink_conf), ["-Dpipeline.max-parallelism=64"])
    assert upgrade.compat_of(checked) == upgrade.compat_of(job_conf)
    assert {k: job_conf[k] for k in checked} == checked


MIXED = """\
python.execution-mode: THREAD
table:
  exec.uid.generation: always
pipeline:
  max-parallelism: 64
  jars: [file:/a.jar, file:/b.jar]
execution:
  checkpointing:
    interval: 10s
execution.checkpointing.timeout: 60s
state.changelog.enabled: false
unset:
"""


def test_nested_and_dotted_keys_lists_and_booleans_read_as_one(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MIXED)
    assert flink_conf.load_conf(path)["pipeline"]["jars"] == ["file:/a.jar", "file:/b.jar"]  # as written
    assert (
        read_conf(path)
        == flatten(flink_conf.load_conf(path))
        == {
            "python.execution-mode": "THREAD",
            "table.exec.uid.generation": "always",
            "pipeline.max-parallelism": "64",
            "pipeline.jars": "file:/a.jar;file:/b.jar",
            "execution.checkpointing.interval": "10s",
            "execution.checkpointing.timeout": "60s",
            "state.changelog.enabled": "false",
        }
    )


def test_the_job_and_the_upgrade_check_read_any_conf_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nested or dotted, the job's configuration and the compatibility facts the upgrade checks (and
    a submission records) come from the same reading of the same file."""
    monkeypatch.setattr(rendezvous_job, "connector_jars", lambda: [tmp_path / "connector.jar"])
    path = tmp_path / "config.yaml"
    path.write_text(MIXED)
    args = ["-D", "pipeline.max-parallelism=128"]
    cfg = rendezvous_job.parse_args(
        ["--policy", str(ROOT / "policies" / "default.yaml"), "--bootstrap", "127.0.0.1:9"]
        + ["--state-dir", str(tmp_path / "state"), "--flink-conf", str(path), *args]
    )
    job_conf = rendezvous_job.flink_configuration(cfg)
    checked = effective_conf({}, upgrade._read_conf(path), args)  # what ops.upgrade.prepare compares
    assert {k: job_conf[k] for k in checked if k != "pipeline.jars"} == {
        k: v
        for k, v in checked.items()
        if k != "pipeline.jars"  # the job sets its own jars
    }
    compat = upgrade.compat_of(checked, flink="x")
    assert compat == upgrade.compat_of(job_conf, flink="x")
    assert compat[upgrade.COMPAT_EXECUTION_MODE] == "thread"
    assert compat[upgrade.COMPAT_UID_GENERATION] == "ALWAYS"
    assert compat[upgrade.COMPAT_MAX_PARALLELISM] == "128"  # the -D item over the file


def test_the_image_conf_is_read_by_the_same_functions() -> None:
    spec = importlib.util.spec_from_file_location(
        "docker_flink_conf_reader", ROOT / "docker" / "flink_conf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.flatten is flatten and module.load_conf is flink_conf.load_conf

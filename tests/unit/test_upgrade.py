"""The pure decisions of ops/upgrade.py: what a savepoint can carry into the new job, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import upgrade
from ops.flink_conf import FlinkConfError, effective_conf, job_parallelism, read_conf
from udfs import mailbox, names
from udfs.policy import parse_policy

POLICY = {
    "version": 3,
    "deadline_ms": 100,
    "decide": "first_in_order",
    "models": [{"id": "gbt", "role": "incumbent", "wait_ms": 40}, {"id": "tree", "role": "backstop"}],
}
THREAD = {"python.execution-mode": "thread", "table.exec.uid.generation": "ALWAYS"}


def compat(**conf: str) -> dict[str, Any]:
    return upgrade.compat_of({**THREAD, **conf}, flink="2.2.1")


def manifest(version: int = 3, **conf: str) -> dict[str, Any]:
    return {
        "manifest_format": 1,
        "job_id": "j" * 32,
        "policy": {"version": version},
        "compat": compat(**conf),
    }


def policy(**changes: Any) -> Any:
    return parse_policy({**POLICY, **changes})


def test_compat_records_mode_state_format_uids_and_state_names() -> None:
    c = compat()
    assert c["python.execution-mode"] == "thread"
    assert c["mailbox_state_version"] == mailbox.STATE_VERSION
    assert c["operator_uids"]["UID_MAILBOX"] == names.UID_MAILBOX
    assert set(c["operator_uids"]) >= {"UID_KAFKA_OUT", "UID_KAFKA_REQUESTS_IN", "UID_SINK_ARCHIVE"}
    assert c["state_names"] == {
        "STATE_MAILBOX": names.STATE_MAILBOX,
        "STATE_POLICIES": names.STATE_POLICIES,
        "STATE_BANDIT": names.STATE_BANDIT,
        "STATE_LABEL_JOIN": names.STATE_LABEL_JOIN,
    }
    assert c["table.exec.uid.generation"] == "ALWAYS"
    json.dumps(c)  # goes into a JSON manifest as is


def test_policy_content_change_with_higher_version_is_allowed() -> None:
    new = policy(
        version=4,
        deadline_ms=250,
        decide="majority_vote",
        models=[{"id": "logreg", "role": "incumbent"}, {"id": "gbt", "role": "challenger"}],
    )
    assert upgrade.check_upgrade(manifest(), new, compat()) == []


@pytest.mark.parametrize("version", [3, 2])
def test_version_must_increase(version: int) -> None:
    problems = upgrade.check_upgrade(manifest(3), policy(version=version), compat())
    assert len(problems) == 1 and problems[0].startswith("version: must increase")
    assert f"v3 and the new file says v{version}" in problems[0]


def test_execution_mode_change_is_refused_in_both_directions() -> None:
    to_process = upgrade.compat_problems(compat(), compat(**{"python.execution-mode": "process"}))
    assert (
        len(to_process) == 1 and "python.execution-mode would change ('thread' -> 'process')" in to_process[0]
    )
    assert "EMPTY" in to_process[0]
    assert upgrade.compat_problems(compat(**{"python.execution-mode": "process"}), compat())
    # Unset means Flink's default, process mode: also a change from thread.
    assert upgrade.compat_problems(compat(), upgrade.compat_of({}, flink="2.2.1"))
    # Spelling is not a change.
    assert upgrade.compat_problems(compat(), compat(**{"python.execution-mode": " THREAD"})) == []


def test_state_format_uid_and_state_name_changes_are_refused() -> None:
    new = compat()
    new["mailbox_state_version"] = mailbox.STATE_VERSION + 1
    new["mailbox_state_reads"] = [mailbox.STATE_VERSION + 1]
    new["operator_uids"] = {**new["operator_uids"], "UID_MAILBOX": "mailbox-v2"}
    new["state_names"] = {"STATE_MAILBOX": "mailbox2"}
    problems = upgrade.compat_problems(compat(), new)
    assert [p.split(" ")[0] for p in problems] == ["mailbox_state_version", "operator_uids", "state_names"]
    assert "UID_MAILBOX: 'rendezvous-mailbox' -> 'mailbox-v2'" in problems[1]


def test_a_state_version_the_new_code_reads_is_allowed_one_it_does_not_is_refused() -> None:
    v1 = compat()
    v1["mailbox_state_version"] = 1
    del v1["mailbox_state_reads"]  # manifests written before state version 2 do not record it
    v2 = compat()
    v2["mailbox_state_version"], v2["mailbox_state_reads"] = 2, [1, 2]
    assert upgrade.compat_problems(v1, v2) == []  # 1 -> 2: version 2 read version 1 mailboxes
    back = upgrade.compat_problems(v2, v1)  # 2 -> 1: the old code cannot read compact tombstones
    assert len(back) == 1 and back[0].startswith("mailbox_state_version would change (2 -> 1)")
    # Version 3: a byte-array state, which Flink cannot restore from version 2's string state.
    v3 = compat()
    v3["mailbox_state_version"], v3["mailbox_state_reads"] = 3, [3]
    # This code: version 4, a String key, which Flink cannot restore from version 3's Row key.
    v4 = compat()
    assert v4["mailbox_state_version"] == 4 and v4["mailbox_state_reads"] == [4]
    for older, newer in ((v1, v3), (v2, v3), (v1, v4), (v2, v4), (v3, v4)):
        [problem] = upgrade.compat_problems(older, newer)
        assert problem.startswith(
            f"mailbox_state_version would change ({older['mailbox_state_version']} -> "
            f"{newer['mailbox_state_version']})"
        )
        assert "cannot read" in problem
    assert upgrade.compat_problems(v4, compat()) == []
    v5 = compat()
    v5["mailbox_state_version"], v5["mailbox_state_reads"] = 5, [4, 5]
    assert upgrade.compat_problems(v4, v5) == []


def test_added_operators_and_states_are_allowed_removed_ones_are_refused() -> None:
    """A savepoint from a job without the live-policy operators restores into one with them."""
    old = compat()
    old["operator_uids"] = {k: v for k, v in old["operator_uids"].items() if k != "UID_TAG_POLICIES"}
    old["state_names"] = {"STATE_MAILBOX": names.STATE_MAILBOX}
    assert upgrade.compat_problems(old, compat()) == []
    problems = upgrade.compat_problems(compat(), old)  # the other way round orphans state
    assert [p.split(" ")[0] for p in problems] == ["operator_uids", "state_names"]
    assert "UID_TAG_POLICIES: 'tag-policies' -> '(none)'" in problems[0]


def test_a_job_from_before_the_one_kafka_sink_is_refused() -> None:
    """The per-output sinks and the parse and route operators of earlier versions are gone: their
    savepoints are refused (docs/operations.md, "Changing the policy on a running cluster")."""
    old = compat()
    old["operator_uids"] = {k: v for k, v in old["operator_uids"].items() if k != "UID_KAFKA_OUT"} | {
        "UID_KAFKA_RESULTS_OUT": "kafka-results-out",
        "UID_PARSE_REQUESTS": "parse-requests",
    }
    (problem,) = upgrade.compat_problems(old, compat())
    assert problem.startswith("operator_uids would change") and "kafka-results-out" in problem


def test_uid_generation_max_parallelism_and_flink_version_changes_are_refused() -> None:
    assert upgrade.compat_problems(compat(), compat(**{"table.exec.uid.generation": "PLAN_ONLY"}))
    assert upgrade.compat_problems(compat(), compat(**{"pipeline.max-parallelism": "256"}))
    newer = upgrade.compat_of(THREAD, flink="2.3.0")
    assert upgrade.compat_problems(compat(), newer)[0].startswith("flink_version would change")


def test_a_manifest_without_a_fact_is_refused_not_assumed() -> None:
    old = compat()
    del old["python.execution-mode"]
    problems = upgrade.compat_problems(old, compat())
    assert problems == [
        "python.execution-mode: not recorded for the running job; cannot tell whether it would change"
    ]


def test_a_file_version_at_or_below_the_newest_live_version_is_refused() -> None:
    assert upgrade.live_version_problem(5, None) is None
    assert upgrade.live_version_problem(5, 4) is None
    for live in (5, 7):
        problem = upgrade.live_version_problem(5, live)
        assert problem is not None and f"not higher than v{live}" in problem


def test_the_policies_topic_comes_from_the_job_arguments() -> None:
    assert upgrade.policies_topic_of(["--bootstrap", "b"]) == names.TOPIC_POLICIES
    assert upgrade.policies_topic_of(["--policies-topic", "p2", "-D", "x=y"]) == "p2"
    assert upgrade.policies_topic_of(["--policies-topic=p3"]) == "p3"


def test_a_job_from_before_the_named_table_uids_is_refused() -> None:
    """Its Kafka offsets sit under planner-numbered uids the new job no longer has."""
    old = compat()
    del old["table.exec.uid.format"]
    (problem,) = upgrade.compat_problems(old, compat())
    assert problem.startswith("table.exec.uid.format: not recorded")


def test_every_problem_is_reported_at_once() -> None:
    problems = upgrade.check_upgrade(
        manifest(3), policy(version=3), compat(**{"python.execution-mode": "process"})
    )
    assert len(problems) == 2


def test_project_flink_conf_is_thread_mode_with_planner_uids() -> None:
    conf = effective_conf({}, read_conf(Path("flink-conf/config.yaml")), [])
    c = upgrade.compat_of(conf)
    assert c["python.execution-mode"] == "thread"
    assert c["table.exec.uid.generation"] == "ALWAYS"


def test_manifest_round_trip_and_savepoint_paths(tmp_path: Path) -> None:
    pfile = tmp_path / "p.yaml"
    pfile.write_text(yaml.safe_dump(POLICY))
    m = upgrade.build_manifest(
        job_id="a" * 32, policy_path=pfile, policy=policy(), bootstrap="127.0.0.1:9092",
        job_args=["--group-id", "g"], flink_conf=Path("flink-conf/config.yaml"), compat=compat(),
    )  # fmt: skip
    path = upgrade.manifest_path(tmp_path)
    upgrade.write_manifest(path, m)
    assert upgrade.read_manifest(path) == m
    assert m["policy"]["version"] == 3 and len(m["policy"]["sha256"]) == 64
    assert upgrade.read_manifest(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"manifest_format": 99}')
    with pytest.raises(upgrade.UpgradeRefused):
        upgrade.read_manifest(tmp_path / "bad.json")
    for loc in ("file:/x/sp/savepoint-ab-12", "file:///x/sp/savepoint-ab-12", "/x/sp/savepoint-ab-12"):
        assert upgrade.savepoint_local_path(loc) == Path("/x/sp/savepoint-ab-12")
        assert upgrade.savepoint_manifest_path(loc) == Path("/x/sp/savepoint-ab-12.rendezvous.json")


class FakeCluster:
    """Enough of ops.cluster.Cluster for the refusal paths: they must not call anything that changes the job."""

    def __init__(self, state_dir: Path, state: str = "RUNNING") -> None:
        self.state_dir = state_dir
        self.state = state
        self.calls: list[str] = []

    def jobs(self) -> list[dict[str, Any]]:
        return [{"jid": "j" * 32, "state": self.state}]

    def config(self) -> dict[str, Any]:
        return {}

    def __getattr__(self, name: str) -> Any:  # anything else would touch the cluster
        raise AssertionError(f"refusal path called Cluster.{name}")


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeCluster, Path]:
    live: dict[str, int | None] = {"v": None}  # nothing published on the policies topic
    monkeypatch.setattr(upgrade, "newest_live_version", lambda _b, _t: live["v"])
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(THREAD))
    m = manifest()
    m["flink_conf"] = str(conf)
    m["job_args"] = ["--group-id", "g"]
    upgrade.write_manifest(upgrade.manifest_path(tmp_path), m)
    cluster = FakeCluster(tmp_path)
    cluster.live = live  # type: ignore[attr-defined]
    return cluster, conf


def _policy_file(tmp_path: Path, **changes: Any) -> Path:
    p = tmp_path / "new.yaml"
    p.write_text(yaml.safe_dump({**POLICY, **changes}))
    return p


def test_prepare_refuses_a_version_the_live_topic_already_passed(
    running: tuple[FakeCluster, Path], tmp_path: Path
) -> None:
    cl, _ = running
    cl.live["v"] = 4  # type: ignore[attr-defined]
    with pytest.raises(upgrade.UpgradeRefused, match=r"not higher than v4, the newest policy published live"):
        upgrade.prepare(cl, _policy_file(tmp_path, version=4))
    cl.live["v"] = 3  # type: ignore[attr-defined]
    assert upgrade.prepare(cl, _policy_file(tmp_path, version=4))[1].version == 4


def test_bad_policy_is_refused_naming_the_field(running: tuple[FakeCluster, Path], tmp_path: Path) -> None:
    cl, _ = running
    with pytest.raises(upgrade.UpgradeRefused, match=r"deadline_ms: must be an integer"):
        upgrade.prepare(cl, _policy_file(tmp_path, version=4, deadline_ms="soon"))


def test_prepare_accepts_a_good_upgrade(running: tuple[FakeCluster, Path], tmp_path: Path) -> None:
    cl, conf = running
    m, pol, job_args, conf_path = upgrade.prepare(
        cl, _policy_file(tmp_path, version=4), overrides=["-D", "x=1"]
    )
    assert pol.version == 4 and conf_path == conf
    assert job_args == ["--group-id", "g", "-D", "x=1"]


def test_prepare_refuses_mode_change_other_overrides_and_stopped_jobs(
    running: tuple[FakeCluster, Path], tmp_path: Path
) -> None:
    cl, _ = running
    good = _policy_file(tmp_path, version=4)
    with pytest.raises(upgrade.UpgradeRefused, match="python.execution-mode would change"):
        upgrade.prepare(cl, good, overrides=["-Dpython.execution-mode=process"])
    with pytest.raises(upgrade.UpgradeRefused, match="only -D key=value"):
        upgrade.prepare(cl, good, overrides=["--group-id", "other"])
    cl.state = "RESTARTING"
    with pytest.raises(upgrade.UpgradeRefused, match="is RESTARTING, not RUNNING"):
        upgrade.prepare(cl, good)


def test_no_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(upgrade.UpgradeRefused, match="no job manifest"):
        upgrade.prepare(FakeCluster(tmp_path), _policy_file(tmp_path, version=4))


def test_cli_exit_code_2_on_refusal(running: tuple[FakeCluster, Path], tmp_path: Path, capsys: Any) -> None:
    cl, _ = running
    rc = upgrade.main_upgrade(cl, _policy_file(tmp_path, version=3), None, [], False, False)
    assert rc == upgrade.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "version: must increase" in err and "the running job was not touched" in err
    rc = upgrade.main_upgrade(cl, _policy_file(tmp_path, version=4), None, [], True, False)
    assert rc == 0 and "can be upgraded from policy v3 to v4" in capsys.readouterr().out


def test_an_unset_max_parallelism_is_flinks_default_for_small_jobs() -> None:
    """Jobs from before flink-conf/ fixed it at 128 ran with Flink's default, 128: their savepoints
    restore; any other value is a change."""
    assert not upgrade.compat_problems(compat(), compat(**{"pipeline.max-parallelism": "128"}))
    assert not upgrade.compat_problems(compat(**{"pipeline.max-parallelism": "128"}), compat())
    assert upgrade.compat_problems(compat(), compat(**{"pipeline.max-parallelism": "64"}))


def test_project_flink_conf_fixes_the_max_parallelism() -> None:
    conf = effective_conf({}, read_conf(Path("flink-conf/config.yaml")), [])
    assert upgrade.compat_of(conf)["pipeline.max-parallelism"] == "128"


@pytest.mark.parametrize(
    ("old_args", "new_args", "running", "fresh"),
    [
        ([], [], 2, 2),  # parallelism 1 and a standby: the same again
        ([], [], 1, 1),
        ([], ["-D", "parallelism.default=2"], 2, 3),  # rescale to 2, the standby kept
        ([], ["-D", "parallelism.default=2"], 1, 2),
        (["-D", "parallelism.default=2"], ["-D", "parallelism.default=2", "-Dparallelism.default=1"], 2, 1),
        (["-D", "parallelism.default=2"], ["-D", "parallelism.default=2"], 3, 3),
    ],
)
def test_fresh_taskmanagers_are_the_new_parallelism_plus_the_standbys(
    tmp_path: Path, old_args: list[str], new_args: list[str], running: int, fresh: int
) -> None:
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(THREAD))
    m = {**manifest(), "flink_conf": str(conf), "job_args": ["--group-id", "g", *old_args]}
    job_args = [*m["job_args"], *new_args]
    assert upgrade.fresh_taskmanagers({}, m, job_args, conf, running) == fresh


def test_a_bad_parallelism_is_one_line() -> None:
    with pytest.raises(FlinkConfError, match=r"parallelism.default: a whole number of at least 1, got '0'"):
        job_parallelism({"parallelism.default": "0"})


def _before_parquet() -> dict[str, Any]:
    """A running job from before the Parquet archive: its archive sink is the JSON-lines one."""
    old = compat()
    old["operator_uids"] = {**old["operator_uids"], "UID_SINK_ARCHIVE": upgrade.ARCHIVE_SINK_BEFORE_PARQUET}
    del old[upgrade.COMPAT_DROPS_UNCLAIMED]  # manifests of those jobs do not record it
    return old


def test_the_json_lines_archive_sink_is_refused_with_what_to_do() -> None:
    (problem,) = upgrade.compat_problems(_before_parquet(), compat())
    assert problem.startswith("operator_uids: the decoy archive is Parquet now")
    assert f"-D {upgrade.IGNORE_UNCLAIMED_STATE}=true" in problem and "--import-jsonl" in problem


def test_dropping_the_json_lines_archive_state_is_allowed_when_asked_for_and_nothing_else() -> None:
    drops = compat(**{upgrade.IGNORE_UNCLAIMED_STATE: "true"})
    assert drops[upgrade.COMPAT_DROPS_UNCLAIMED] is True and compat()[upgrade.COMPAT_DROPS_UNCLAIMED] is False
    assert upgrade.compat_problems(_before_parquet(), drops) == []
    # Any other uid change is still refused: the flag lets only the old archive sink's state go.
    renamed = {**drops, "operator_uids": {**drops["operator_uids"], "UID_MAILBOX": "mailbox-2"}}
    (problem,) = upgrade.compat_problems(_before_parquet(), renamed)
    assert problem.startswith("operator_uids would change") and "UID_MAILBOX" in problem
    assert "UID_SINK_ARCHIVE" not in problem


def test_a_parquet_archive_job_is_not_held_to_the_archive_rule() -> None:
    assert upgrade.compat_problems(compat(), compat()) == []
    back = upgrade.compat_problems(compat(), _before_parquet())  # back to the JSON-lines sink: refused
    assert [p.split(" ")[0] for p in back] == ["operator_uids"] and "sink-decoy-archive" in back[0]

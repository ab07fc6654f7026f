"""Savepoint-safe policy upgrade of the rendezvous job on the session cluster (ops/cluster.py).

    python -m ops.cluster upgrade --dir var/cluster --policy policies/v2.yaml [--check] [-D key=value ...]

1. Validate the new policy file (``udfs.policy.load_policy``); a bad file is refused with the
   message naming the field, and nothing on the cluster is touched.
2. Read the running job's **manifest** (``<cluster>/state/job-manifest.json``, written by every
   ``submit``) and refuse unless the new policy's version is higher and nothing the savepoint's
   state depends on would change: the Python execution mode (a process<->thread switch restores
   with *empty* Python keyed state, silently), the mailbox state format (``udfs.mailbox.STATE_VERSION``),
   operator uids and state names (``udfs/names.py``), ``table.exec.uid.generation`` (the Kafka
   sources' and sinks' uids), the max parallelism (key groups) and the Flink version.
3. While the old job keeps running: start the new job's ``flink run`` client, which builds the
   job graph and then waits for a savepoint path (``StagedClient``), and start fresh TaskManagers
   next to the old ones (thread mode keeps the old Python modules loaded, and a second thread-mode
   job in one TaskManager fails: pemja, FLINK-37727). Anything failing here leaves the job untouched.
4. Stop the job with a savepoint (REST ``POST /jobs/<id>/stop``, no drain: timers and open
   mailboxes stay in the savepoint), stop the old TaskManagers by PID and wait until the
   JobManager has let them go, then hand the savepoint to the waiting client, which submits with
   ``execution.savepoint.path`` set (as ``flink run -s``; no ``--allowNonRestoredState``: every
   piece of state must find its operator). Wait until every task is RUNNING.

If the new job does not come up, the old policy is resubmitted from the same savepoint (rollback).
The pure decisions (``check_upgrade`` and friends) are separate from the REST and process calls.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops import kafka_client, policy_cli, procs
from ops.flink_conf import FlinkConfError, effective_conf, job_parallelism, read_conf
from udfs import mailbox, names
from udfs.policy import Policy, PolicyError, load_policy

if TYPE_CHECKING:  # ops.cluster imports this module; here its Cluster is only handed in and annotated
    from ops.cluster import Cluster, Submission

MANIFEST_NAME = "job-manifest.json"
MANIFEST_FORMAT = 1
SAVEPOINT_MANIFEST_SUFFIX = ".rendezvous.json"  # next to each savepoint directory: what it was taken from
EXIT_REFUSED = 2
STOP_TIMEOUT_S = 120.0
RUNNING_TIMEOUT_S = 240.0
HANDOFF_TIMEOUT_S = 600.0  # how long a staged client waits for its savepoint before giving up
# What the staged client runs under `flink run -py`: an entry point of the job layer, above this module.
STAGED_CLIENT_SCRIPT = procs.repo_root() / "jobs" / "staged_upgrade.py"
TM_STOP_TIMEOUT_S = 60.0
# Job states from which a job never becomes RUNNING again without outside help.
FAILED_STATES = ("FAILED", "FAILING", "CANCELED", "CANCELLING", "FINISHED", "RESTARTING", "SUSPENDED")

# What the savepoint's state depends on: a change in any of these is refused (see compat_problems).
COMPAT_EXECUTION_MODE = "python.execution-mode"
COMPAT_STATE_VERSION = "mailbox_state_version"
# The state versions the new code reads (udfs.mailbox.READABLE_STATE_VERSIONS): a savepoint written in
# any of them restores. Recorded in manifests since state version 2; absent: only its own version.
COMPAT_STATE_READS = "mailbox_state_reads"
COMPAT_UIDS = "operator_uids"
COMPAT_STATE_NAMES = "state_names"
COMPAT_UID_GENERATION = "table.exec.uid.generation"
COMPAT_TABLE_UID_FORMAT = "table.exec.uid.format"
COMPAT_MAX_PARALLELISM = "pipeline.max-parallelism"
COMPAT_FLINK_VERSION = "flink_version"
# Whether the new submission may drop savepoint state that has no operator (-D of this key), recorded
# next to the facts above; only the retired archive sink's state is ever let go that way.
IGNORE_UNCLAIMED_STATE = "execution.savepoint.ignore-unclaimed-state"
COMPAT_DROPS_UNCLAIMED = "drops_unclaimed_state"
# The decoy archive's sink before it wrote Parquet: a JSON-lines FileSink under this uid. Its state (the
# files of the last checkpoint, committed when the job stops with its savepoint) cannot be restored into
# the Parquet sink (udfs/names.py UID_SINK_ARCHIVE), whose files and partitions differ.
ARCHIVE_SINK_BEFORE_PARQUET = "sink-decoy-archive"
DEFAULT_MAX_PARALLELISM = "128"

# Maps where the new job may add entries (a new operator or state starts empty) but must keep every
# old one: a savepoint restored without allowNonRestoredState fails on state it cannot map.
ADDITIVE = (COMPAT_UIDS, COMPAT_STATE_NAMES)

_WHY = {
    COMPAT_EXECUTION_MODE: (
        "a savepoint taken in one Python execution mode restores with EMPTY Python keyed state in the "
        "other, without any error (measured); every open mailbox would be lost"
    ),
    COMPAT_STATE_VERSION: (
        "the mailboxes in the savepoint are stored in a format the new code cannot read (it reads the "
        "versions in mailbox_state_reads); this needs a state migration, not a policy upgrade "
        "(docs/operations.md, 'Crossing a mailbox state format')"
    ),
    COMPAT_UIDS: "savepoint state is mapped to operators by uid; a renamed uid orphans its state",
    COMPAT_STATE_NAMES: "keyed state is looked up by name; a renamed state starts empty",
    COMPAT_UID_GENERATION: (
        "the Kafka sources and sinks get planner uids only with ALWAYS; otherwise their offsets and "
        "writer state cannot be mapped"
    ),
    COMPAT_TABLE_UID_FORMAT: (
        "the Kafka sources' offsets and the sinks' state are mapped by the uids this format gives them; "
        "jobs before it had planner-numbered uids that shift when a table is added"
    ),
    COMPAT_MAX_PARALLELISM: "keyed state is split into key groups by the max parallelism; it cannot change",
    COMPAT_FLINK_VERSION: "savepoint compatibility across Flink versions is a separate, tested step",
}


class UpgradeRefused(Exception):
    """The upgrade was refused before anything on the cluster changed (exit code 2)."""


class UpgradeFailed(RuntimeError):
    """The upgrade started (the old job may be stopped) and did not finish; the message says where it is."""


# --- pure: configuration, manifests, compatibility --------------------------------------------------


def flink_version() -> str:
    try:
        return version("apache-flink")
    except PackageNotFoundError:
        return "unknown"


def compat_of(conf: Mapping[str, str], flink: str | None = None) -> dict[str, Any]:
    """The facts a savepoint's state depends on, from the effective conf and the code on disk."""
    return {
        COMPAT_EXECUTION_MODE: conf.get("python.execution-mode", "process").strip().lower(),
        COMPAT_STATE_VERSION: mailbox.STATE_VERSION,
        COMPAT_STATE_READS: list(mailbox.READABLE_STATE_VERSIONS),
        COMPAT_UIDS: {k: v for k, v in sorted(vars(names).items()) if k.startswith("UID_")},
        COMPAT_STATE_NAMES: {k: v for k, v in sorted(vars(names).items()) if k.startswith("STATE_")},
        COMPAT_UID_GENERATION: conf.get("table.exec.uid.generation", "PLAN_ONLY").strip().upper(),
        COMPAT_TABLE_UID_FORMAT: names.table_uid_format("<uid>"),
        COMPAT_MAX_PARALLELISM: conf.get("pipeline.max-parallelism"),
        COMPAT_FLINK_VERSION: flink if flink is not None else flink_version(),
        COMPAT_DROPS_UNCLAIMED: conf.get(IGNORE_UNCLAIMED_STATE, "false").strip().lower() == "true",
    }


def archive_sink_change(
    old_uids: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The running job's uids as far as the archive is concerned, and why the change is refused (None: it
    is not). A job from before the Parquet archive has its JSON-lines sink under the same name: the new
    job may go only with ``-D execution.savepoint.ignore-unclaimed-state=true``, which lets the old sink's
    state go (its files are committed by the stop with savepoint); every other uid is still compared."""
    name, parquet = "UID_SINK_ARCHIVE", names.UID_SINK_ARCHIVE
    new_uids = new.get(COMPAT_UIDS) or {}
    if old_uids.get(name) != ARCHIVE_SINK_BEFORE_PARQUET or new_uids.get(name) != parquet:
        return dict(old_uids), None
    as_new = {**old_uids, name: parquet}  # the rest of the map is checked as usual
    if new.get(COMPAT_DROPS_UNCLAIMED):
        return as_new, None
    return as_new, (
        f"{COMPAT_UIDS}: the decoy archive is Parquet now, written by a new sink ({name}: "
        f"{ARCHIVE_SINK_BEFORE_PARQUET!r} -> {parquet!r}); the savepoint's JSON-lines sink state has no "
        "operator to go to. Its files are committed when the job stops with the savepoint, so that state "
        f"may be dropped: run the upgrade again with -D {IGNORE_UNCLAIMED_STATE}=true (every other uid and "
        "state name is still checked). The old JSON-lines files stay where they were; "
        "`rendezvous sql --import-jsonl DIR` copies them into the Parquet layout"
    )


def _dict_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}")
    return out


def compat_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a savepoint taken with ``old`` must not be restored by a job with ``new`` (empty: it may)."""
    problems = []
    for key in (
        COMPAT_EXECUTION_MODE,
        COMPAT_STATE_VERSION,
        COMPAT_UIDS,
        COMPAT_STATE_NAMES,
        COMPAT_UID_GENERATION,
        COMPAT_TABLE_UID_FORMAT,
        COMPAT_MAX_PARALLELISM,
        COMPAT_FLINK_VERSION,
    ):
        if key not in old:
            problems.append(f"{key}: not recorded for the running job; cannot tell whether it would change")
            continue
        a, b = old.get(key), new.get(key)
        if key == COMPAT_UIDS and isinstance(a, dict):
            a, archive_problem = archive_sink_change(a, new)
            if archive_problem:
                problems.append(archive_problem)
        if a == b:
            continue
        if key == COMPAT_MAX_PARALLELISM and _max_parallelism(a) == _max_parallelism(b):
            continue  # unset is Flink's default, 128, for jobs of parallelism up to 85
        if key == COMPAT_STATE_VERSION and a in new.get(COMPAT_STATE_READS, [b]):
            continue  # the new code reads the old format (and writes its own from then on)
        if isinstance(a, dict) and isinstance(b, dict):
            if key in ADDITIVE and all(b.get(k) == v for k, v in a.items()):
                continue  # only additions: a new operator or state starts empty, nothing is orphaned
            change = "; ".join(_dict_changes(a, b))
        else:
            change = f"{a!r} -> {b!r}"
        problems.append(f"{key} would change ({change}): {_WHY[key]}")
    return problems


def _max_parallelism(value: Any) -> str:
    """A recorded max parallelism; unset (jobs before flink-conf/ fixed it) is what Flink then chose:
    128 for any parallelism up to 85 (KeyGroupRangeAssignment.computeDefaultMaxParallelism)."""
    return DEFAULT_MAX_PARALLELISM if value in (None, "") else str(value)


def live_version_problem(new_version: int, newest_live: int | None) -> str | None:
    """A file version at or below the newest live version would change nothing: the job keeps the
    highest version it knows (udfs/policy_registry.py), so the upgrade would restart it for no effect."""
    if newest_live is not None and new_version <= newest_live:
        return (
            f"version: v{new_version} is not higher than v{newest_live}, the newest policy published live on "
            "the policies topic, which the job would keep in force; use a higher version"
        )
    return None


def newest_live_version(bootstrap: str, topic: str) -> int | None:
    """The newest valid version on the job's policies topic (None: nothing published)."""
    return policy_cli.newest_version(policy_cli.read_topic(bootstrap, topic))


def job_arg(job_args: Sequence[str], flag: str) -> str | None:
    """The value of one of the job's options in its submitted arguments (None: not given)."""
    for i, arg in enumerate(job_args):
        if arg == flag and i + 1 < len(job_args):
            return job_args[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def policies_topic_of(job_args: Sequence[str]) -> str:
    """The job's --policies-topic (its default unless the submission named one)."""
    return job_arg(job_args, "--policies-topic") or names.TOPIC_POLICIES


def policies_reader(job_args: Sequence[str]) -> kafka_client.ClientSecurity | None:
    """Who reads the policies topic for the upgrade's check on a secured broker: this process's own
    ``--kafka-config`` (``cluster upgrade --kafka-config``, e.g. the operator's file) if it has one, else
    the running job's (its role reads that topic), else nobody (a broker without authentication)."""
    current = kafka_client.current_security()
    given = job_arg(job_args, "--kafka-config")
    if current is not None or given is None:
        return current
    try:
        return kafka_client.load_client_properties(Path(given))
    except kafka_client.KafkaConfigError as e:
        raise UpgradeRefused(f"the running job's --kafka-config: {e}") from None


def version_problem(old_version: int | None, new_version: int) -> str | None:
    if old_version is None:
        return "version: the running job's policy version is not recorded"
    if new_version <= old_version:
        return (
            f"version: must increase, the running job has policy v{old_version} and the new file "
            f"says v{new_version} (every result carries the version that decided it)"
        )
    return None


def check_upgrade(
    manifest: Mapping[str, Any], new_policy: Policy, new_compat: Mapping[str, Any]
) -> list[str]:
    """Every reason to refuse upgrading the job ``manifest`` describes to ``new_policy`` (empty: go)."""
    problems = []
    old_policy = manifest.get("policy") or {}
    vp = version_problem(old_policy.get("version"), new_policy.version)
    if vp:
        problems.append(vp)
    problems += compat_problems(manifest.get("compat") or {}, new_compat)
    return problems


def policy_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(
    *,
    job_id: str,
    policy_path: Path,
    policy: Policy,
    bootstrap: str,
    job_args: Sequence[str],
    flink_conf: Path,
    compat: Mapping[str, Any],
    restored_from: str | None = None,
    previous_job_id: str | None = None,
) -> dict[str, Any]:
    return {
        "manifest_format": MANIFEST_FORMAT,
        "job_id": job_id,
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "policy": {
            "path": str(policy_path.resolve()),
            "version": policy.version,
            "sha256": policy_sha256(policy_path),
        },
        "bootstrap": bootstrap,
        "job_args": list(job_args),
        "flink_conf": str(flink_conf.resolve()),
        "restored_from": restored_from,
        "previous_job_id": previous_job_id,
        "compat": dict(compat),
    }


def manifest_path(state_dir: Path) -> Path:
    return state_dir / MANIFEST_NAME


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UpgradeRefused(f"cannot read the job manifest {path}: {e}") from None
    if not isinstance(data, dict) or data.get("manifest_format") != MANIFEST_FORMAT:
        raise UpgradeRefused(f"{path}: not a job manifest of format {MANIFEST_FORMAT}")
    return data


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def savepoint_local_path(location: str) -> Path:
    """``file:/a/b`` or ``file:///a/b`` (what Flink reports) -> /a/b."""
    if location.startswith("file:"):
        rest = location[len("file:") :]
        while rest.startswith("//"):
            rest = rest[1:]
        return Path(rest)
    return Path(location)


def savepoint_manifest_path(location: str) -> Path:
    sp = savepoint_local_path(location)
    return sp.parent / (sp.name + SAVEPOINT_MANIFEST_SUFFIX)


def _read_conf(path: Path) -> dict[str, str]:
    try:
        return read_conf(path)
    except FlinkConfError as e:
        raise UpgradeRefused(str(e)) from None


# --- REST and processes ---------------------------------------------------------------------------


@dataclass
class UpgradeReport:
    old_job_id: str
    new_job_id: str
    old_version: int
    new_version: int
    savepoint: str
    build_s: float  # new job graph built, fresh TaskManagers registered (the old job still running)
    stop_s: float  # stop requested -> savepoint complete, job FINISHED
    tm_stop_s: float  # old TaskManagers stopped and let go by the JobManager
    submit_s: float  # savepoint handed to the waiting client -> JobID
    running_s: float  # submitted -> every task RUNNING (fresh TaskManager registered meanwhile)
    down_s: float  # stop requested -> new job RUNNING: no job was processing records
    stop_requested_ms: int  # wall clock, for matching with records' timestamps
    savepoint_done_ms: int
    running_ms: int
    taskmanagers_stopped: list[int] = field(default_factory=list)
    taskmanagers_started: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"upgraded: policy v{self.old_version} -> v{self.new_version}",
            f"  savepoint      {self.savepoint}",
            f"  new job built, fresh TaskManager(s) up in {self.build_s:.1f} s while the old job ran; "
            f"then: stop with savepoint "
            f"{self.stop_s:.1f} s, TaskManagers stopped {self.tm_stop_s:.1f} s (PIDs "
            f"{self.taskmanagers_stopped} -> {self.taskmanagers_started}), submit {self.submit_s:.1f} s, "
            f"until RUNNING {self.running_s:.1f} s",
            f"  no job running for {self.down_s:.1f} s (stop requested -> new job RUNNING)",
            f"  new job        {self.new_job_id} (was {self.old_job_id})",
        ]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def job_state(cluster: Cluster, job_id: str) -> str | None:
    for j in cluster.jobs():
        if j.get("jid") == job_id:
            return str(j.get("state"))
    return None


def root_exception(cluster: Cluster, job_id: str) -> str:
    try:
        exc = cluster.rest(f"/jobs/{job_id}/exceptions?maxExceptions=1")
    except RuntimeError as e:
        return f"(no exception history: {e})"
    text = str(exc.get("root-exception") or "")
    if not text:
        hist = (exc.get("exceptionHistory") or {}).get("entries") or []
        text = str(hist[0].get("stacktrace", "")) if hist else ""
    lines = text.strip().splitlines()
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    return "\n".join((lines[:1] + causes[-3:]) if lines else ["(none recorded)"])


def stop_with_savepoint(
    cluster: Cluster, job_id: str, target_dir: Path, timeout_s: float = STOP_TIMEOUT_S
) -> str:
    """POST /jobs/<id>/stop (no drain), poll the trigger; the savepoint's location."""
    target_dir.mkdir(parents=True, exist_ok=True)
    body = {"targetDirectory": target_dir.resolve().as_uri(), "drain": False, "formatType": "CANONICAL"}
    trigger = cluster.rest(f"/jobs/{job_id}/stop", body=body, timeout_s=30.0)
    request_id = trigger.get("request-id")
    if not request_id:
        raise UpgradeFailed(f"stop-with-savepoint for {job_id} was not accepted: {trigger}")
    deadline = time.monotonic() + timeout_s
    while True:
        status = cluster.rest(f"/jobs/{job_id}/savepoints/{request_id}", timeout_s=10.0)
        if (status.get("status") or {}).get("id") == "COMPLETED":
            op = status.get("operation") or {}
            if op.get("location"):
                return str(op["location"])
            cause = op.get("failure-cause") or {}
            trace = str(cause.get("stack-trace") or cause)
            raise UpgradeFailed(
                f"stop-with-savepoint of {job_id} failed; the job keeps running if it can:\n"
                + "\n".join(trace.splitlines()[:12])
            )
        if time.monotonic() > deadline:
            raise UpgradeFailed(f"stop-with-savepoint of {job_id} did not complete in {timeout_s:.0f} s")
        time.sleep(0.2)


def wait_job_finished(cluster: Cluster, job_id: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        state = job_state(cluster, job_id)
        if state in ("FINISHED", "CANCELED", "FAILED"):
            return state
        if time.monotonic() > deadline:
            raise UpgradeFailed(f"job {job_id} is still {state} {timeout_s:.0f} s after its savepoint")
        time.sleep(0.1)


def wait_running(cluster: Cluster, job_id: str, timeout_s: float = RUNNING_TIMEOUT_S) -> None:
    """Until the job and every one of its tasks is RUNNING; a failure on the way raises at once."""
    deadline = time.monotonic() + timeout_s
    state: str | None = None
    while True:
        try:
            detail = cluster.rest(f"/jobs/{job_id}", timeout_s=5.0)
        except RuntimeError:
            detail = {}
        state = detail.get("state")
        if state in FAILED_STATES:
            raise UpgradeFailed(f"job {job_id} went {state}:\n{root_exception(cluster, job_id)}")
        vertices = detail.get("vertices") or []
        if state == "RUNNING" and vertices and all(v.get("status") == "RUNNING" for v in vertices):
            return
        if time.monotonic() > deadline:
            raise UpgradeFailed(
                f"job {job_id} not RUNNING after {timeout_s:.0f} s (state {state}); logs:\n"
                f"{cluster.log_tail(30)}"
            )
        time.sleep(0.2)


def prepare(
    cluster: Cluster,
    policy_path: Path,
    flink_conf: Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], Policy, list[str], Path]:
    """Validate everything without touching the job: (running job's manifest, new policy, job args,
    flink conf). Raises UpgradeRefused with every reason at once."""
    try:
        policy = load_policy(policy_path)
    except PolicyError as e:
        raise UpgradeRefused(f"invalid policy: {e}") from None
    mpath = manifest_path(cluster.state_dir)
    manifest = read_manifest(mpath)
    if manifest is None:
        raise UpgradeRefused(
            f"no job manifest at {mpath}: only a job started by `ops.cluster submit` can be upgraded"
        )
    job_id = str(manifest.get("job_id"))
    state = job_state(cluster, job_id)
    if state != "RUNNING":
        raise UpgradeRefused(f"job {job_id} (from {mpath}) is {state or 'not on the cluster'}, not RUNNING")
    bad = [
        a for i, a in enumerate(overrides) if not a.startswith("-D") and (i == 0 or overrides[i - 1] != "-D")
    ]
    if bad:
        raise UpgradeRefused(f"only -D key=value overrides may change in an upgrade, got {' '.join(bad)}")
    job_args = [*manifest.get("job_args", []), *overrides]
    conf_path = flink_conf or Path(str(manifest.get("flink_conf")))
    new_compat = compat_of(effective_conf(cluster.config(), _read_conf(conf_path), job_args))
    problems = check_upgrade(manifest, policy, new_compat)
    with kafka_client.security_context(policies_reader(job_args)):
        live = newest_live_version(str(manifest.get("bootstrap")), policies_topic_of(job_args))
    live_problem = live_version_problem(policy.version, live)
    if live_problem:
        problems.append(live_problem)
    if problems:
        raise UpgradeRefused("\n  " + "\n  ".join(problems))
    return manifest, policy, job_args, conf_path


class StagedClient:
    """The new job's ``flink run`` client, started while the old job still runs.

    Building the job graph (the Python program, the table planner) takes most of a submission's
    time (~25 s on 2 busy cores). The client runs ``jobs/staged_upgrade.py``: it builds the
    job, says so in ``<handoff>.ready``, then waits for the savepoint path in ``<handoff>`` and only
    then submits. A client that cannot build the job fails before the old job is touched.
    """

    def __init__(self, cluster: Cluster, sub: Submission, handoff: Path) -> None:
        self.cluster = cluster
        self.sub = sub
        self.handoff = handoff
        self.ready_file = handoff.with_name(handoff.name + ".ready")
        handoff.parent.mkdir(parents=True, exist_ok=True)
        for f in (handoff, self.ready_file):
            f.unlink(missing_ok=True)
        argv = [
            str(cluster.bin("flink")),
            *cluster.run_args(sub, [], STAGED_CLIENT_SCRIPT, "--handoff", str(handoff)),
        ]
        self.log_path = cluster.log_dir / f"submit-{handoff.stem}.log"
        self.proc = procs.ManagedProcess.start(argv, self.log_path, cwd=procs.repo_root(), env=cluster.env())

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if not self.proc.is_running() or time.monotonic() > deadline:
                self.abort("the new job did not build")
                raise UpgradeRefused(
                    f"the new job could not be built (flink run -py, log {self.log_path}):\n"
                    f"{procs.tail(self.log_path, 25)}"
                )
            time.sleep(0.1)

    def go(self, savepoint: str) -> None:
        write_atomic(self.handoff, json.dumps({"savepoint": savepoint}))

    def abort(self, reason: str) -> None:
        if not self.handoff.exists():
            write_atomic(self.handoff, json.dumps({"abort": reason}))
        if self.proc.is_running():
            try:
                procs.wait_for(lambda: not self.proc.is_running(), 10.0, "the staged client to exit")
            except TimeoutError:
                self.proc.stop(grace_s=5.0)

    def job_id(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while self.proc.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
            job_id = self.cluster.job_id_in(procs.tail(self.log_path, 200))
            if job_id:
                return job_id
        if self.proc.is_running():
            self.proc.stop(grace_s=5.0)
        job_id = self.cluster.job_id_in(procs.tail(self.log_path, 200))
        if not job_id:
            raise UpgradeFailed(
                f"the new job was not submitted (log {self.log_path}):\n{procs.tail(self.log_path, 25)}"
            )
        return job_id


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file, so the staged client never reads half a handoff."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def fresh_taskmanagers(
    cluster_conf: Mapping[str, Any],
    manifest: Mapping[str, Any],
    job_args: Sequence[str],
    conf_path: Path,
    running: int,
) -> int:
    """TaskManagers to start for the new job: one per slot it needs (its parallelism), plus as many
    standbys as the cluster had beyond the old job's parallelism (one slot per TaskManager)."""
    old_conf = effective_conf(
        cluster_conf, _read_conf(Path(str(manifest.get("flink_conf")))), manifest.get("job_args", [])
    )
    new_conf = effective_conf(cluster_conf, _read_conf(conf_path), job_args)
    standbys = max(0, running - job_parallelism(old_conf))
    return job_parallelism(new_conf) + standbys


def upgrade(
    cluster: Cluster,
    policy_path: Path,
    flink_conf: Path | None = None,
    overrides: Sequence[str] = (),
    running_timeout_s: float = RUNNING_TIMEOUT_S,
    log: Callable[[str], None] = print,
) -> UpgradeReport:
    manifest, policy, job_args, conf_path = prepare(cluster, policy_path, flink_conf, overrides)
    old_job = str(manifest["job_id"])
    old_version = int(manifest["policy"]["version"])
    try:
        sub = cluster.prepare_submission(policy_path, str(manifest["bootstrap"]), job_args, conf_path)
    except RuntimeError as e:
        raise UpgradeRefused(str(e)) from None
    handoff = cluster.state_dir / "upgrades" / f"v{old_version}-to-v{policy.version}-{int(time.time())}"
    t_build = time.monotonic()
    log(
        f"upgrade: building the job with policy v{policy.version} and starting fresh TaskManager(s) "
        f"while v{old_version} keeps running"
    )
    old_tm_pids, old_tm_ids = cluster.taskmanager_pids(), cluster.taskmanager_ids()
    client = StagedClient(cluster, sub, handoff)
    spare: list[int] = []
    try:
        # Fresh TaskManagers next to the old ones: the new job must not run in a JVM whose embedded
        # Python already ran the old one (stale modules; pemja, FLINK-37727).
        fresh = fresh_taskmanagers(cluster.config(), manifest, job_args, conf_path, len(old_tm_ids))
        spare = cluster.start_taskmanagers(fresh, spare=True)
        procs.wait_for(
            lambda: len(cluster.taskmanager_ids() - old_tm_ids) >= len(spare),
            running_timeout_s,
            "the fresh TaskManager(s) to register",
            interval_s=0.2,
        )
        client.wait_ready(running_timeout_s)
    except (UpgradeRefused, RuntimeError, TimeoutError) as e:
        client.abort(f"preparation failed: {e}")
        if spare:
            cluster.stop_taskmanagers(TM_STOP_TIMEOUT_S, pids=spare, rest_ids=set())
        raise e if isinstance(e, UpgradeRefused) else UpgradeRefused(str(e)) from e
    new_tm_ids = cluster.taskmanager_ids() - old_tm_ids
    build_s = time.monotonic() - t_build
    log(f"upgrade: new job built, TaskManager(s) {spare} ready ({build_s:.1f} s); stopping job {old_job}")
    t0 = time.monotonic()
    stop_ms = _now_ms()
    try:
        savepoint = stop_with_savepoint(cluster, old_job, cluster.state_dir / "savepoints")
    except Exception:
        client.abort("stop-with-savepoint failed")
        cluster.stop_taskmanagers(TM_STOP_TIMEOUT_S, pids=spare, rest_ids=new_tm_ids)
        raise
    wait_job_finished(cluster, old_job)
    t_stop = time.monotonic()
    sp_ms = _now_ms()
    shutil.copyfile(manifest_path(cluster.state_dir), savepoint_manifest_path(savepoint))
    log(f"upgrade: savepoint {savepoint} ({t_stop - t0:.1f} s); stopping the old TaskManager(s), submitting")
    old_policy_path = Path(str(manifest["policy"]["path"]))
    try:
        # Once the JobManager has let the old TaskManagers go, the fresh ones hold the only free slots.
        # Let go, not yet gone: their JVMs finish shutting down while the new job deploys.
        stopped = cluster.stop_taskmanagers(
            TM_STOP_TIMEOUT_S, pids=old_tm_pids, rest_ids=old_tm_ids, wait_exit=False
        )
        t_tm = time.monotonic()
        client.go(savepoint)
        new_job = client.job_id()
        t_sub = time.monotonic()
        cluster.record_submission(sub, new_job, savepoint, old_job)
        wait_running(cluster, new_job, running_timeout_s)
        t_run, running_ms = time.monotonic(), _now_ms()
        cluster.stop_taskmanagers(TM_STOP_TIMEOUT_S, pids=stopped, rest_ids=set())  # gone by now
    except Exception as e:
        log(f"upgrade FAILED after the stop: {e}")
        client.abort(f"upgrade failed: {e}")
        _rollback(cluster, manifest, old_policy_path, savepoint, log)
        raise UpgradeFailed(
            f"the upgrade to v{policy.version} failed ({e.__class__.__name__}: {e}); the old policy "
            f"v{old_version} was resubmitted from {savepoint} (see above)"
        ) from e
    return UpgradeReport(
        old_job_id=old_job,
        new_job_id=new_job,
        old_version=old_version,
        new_version=policy.version,
        savepoint=savepoint,
        build_s=build_s,
        stop_s=t_stop - t0,
        tm_stop_s=t_tm - t_stop,
        submit_s=t_sub - t_tm,
        running_s=t_run - t_sub,
        down_s=t_run - t0,
        stop_requested_ms=stop_ms,
        savepoint_done_ms=sp_ms,
        running_ms=running_ms,
        taskmanagers_stopped=stopped,
        taskmanagers_started=spare,
    )


def _rollback(
    cluster: Cluster,
    manifest: Mapping[str, Any],
    old_policy: Path,
    savepoint: str,
    log: Callable[[str], None],
) -> None:
    """Best effort: the old policy, from the same savepoint, on fresh TaskManagers."""
    log(f"rollback: resubmitting policy {old_policy} from {savepoint}")
    try:
        cluster.cancel_running()
        cluster.stop_taskmanagers(TM_STOP_TIMEOUT_S)
        cluster.start_taskmanagers(1)
        job = cluster.submit(
            old_policy,
            str(manifest["bootstrap"]),
            list(manifest.get("job_args", [])),
            Path(str(manifest["flink_conf"])),
            savepoint=savepoint,
            previous_job_id=str(manifest["job_id"]),
        )
        wait_running(cluster, job)
        log(f"rollback: job {job} RUNNING with the old policy")
    except Exception as e:  # report both failures; the savepoint is still there
        log(
            f"rollback FAILED too ({e}); resume by hand: python -m ops.cluster submit --dir {cluster.base} "
            f"--savepoint {savepoint} --policy {old_policy} --bootstrap {manifest['bootstrap']} "
            f"{' '.join(manifest.get('job_args', []))}"
        )


def main_upgrade(
    cluster: Cluster,
    policy_path: Path,
    flink_conf: Path | None,
    overrides: Sequence[str],
    check_only: bool,
    as_json: bool,
) -> int:
    """The CLI's ``upgrade`` command: 0 done, 2 refused (nothing touched), 1 failed."""
    try:
        if check_only:
            manifest, policy, _, _ = prepare(cluster, policy_path, flink_conf, overrides)
            print(
                f"ok: job {manifest['job_id']} can be upgraded from policy v{manifest['policy']['version']} "
                f"to v{policy.version} (nothing was changed)"
            )
            return 0
        report = upgrade(cluster, policy_path, flink_conf, overrides)
    except UpgradeRefused as e:
        print(f"error: upgrade refused: {e}\nthe running job was not touched", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(report.to_dict(), indent=1) if as_json else "\n".join(report.lines()), flush=True)
    return 0

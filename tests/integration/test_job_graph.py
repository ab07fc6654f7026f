"""The job's stream graph, built by PyFlink exactly as a submission builds it (no broker, no run).

Savepoint state is mapped to operators by uid. The Kafka tables' operators used to get uids numbered
by the planner in translation order, so adding the policies source renamed every sink after it; a
restore then fails (or, with allowNonRestoredState, silently drops state). Every uid must come from
udfs/names.py and none may carry a planner number.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from udfs import names

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process: the PyFlink gateway (a JVM) is started once per process and this test
# must not share one with the mini-cluster tests' environments.
DUMP = """
import sys, tempfile
from pathlib import Path
from jobs import rendezvous_job as rj
from udfs.policy import load_policy
d = Path(tempfile.mkdtemp())
labels = sys.argv[1] if len(sys.argv) > 1 else None
delivery = dict(rj.DEFAULT_DELIVERY, results="exactly-once") if labels else dict(rj.DEFAULT_DELIVERY)
cfg = rj.JobConfig(policy=load_policy(Path("policies/default.yaml")), bootstrap="127.0.0.1:9",
                   archive_dir=d / "archive", state_dir=d / "state", labels_topic=labels, delivery=delivery)
env = rj.make_env(cfg)
rj.build_job(env, cfg)
graph = env._j_stream_execution_environment.getStreamGraph(False)
graph.getJobGraph()  # hashes every uid, as the JobMaster does: two equal uids fail here
nodes = graph.getStreamNodes().iterator()
while nodes.hasNext():
    n = nodes.next()
    print("NODE", n.getTransformationUID(), "|", n.getOperatorName())
"""


@pytest.fixture(scope="module", params=["no-feedback", "feedback"])
def graph(request: pytest.FixtureRequest) -> list[tuple[str | None, str]]:
    """The default job, and one with every optional operator: label feedback (--labels-topic) and
    exactly-once results (the transactional sink)."""
    args = [] if request.param == "no-feedback" else ["labels"]
    out = subprocess.run(
        [sys.executable, "-c", DUMP, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = []
    for line in out.stdout.splitlines():
        if line.startswith("NODE "):
            uid, _, name = line[5:].partition(" | ")
            nodes.append((None if uid == "None" else uid, name))
    assert nodes, out.stdout[-2000:]
    return nodes


def test_no_two_operators_share_a_uid(graph: list[tuple[str | None, str]]) -> None:
    uids = [uid for uid, _ in graph if uid is not None]
    assert sorted(u for u in set(uids) if uids.count(u) > 1) == []


def test_no_operator_uid_carries_a_planner_number(graph: list[tuple[str | None, str]]) -> None:
    numbered = [(uid, name) for uid, name in graph if uid and re.search(r"(^|: )\d+_", uid)]
    assert numbered == []


def test_every_uid_comes_from_names_and_every_named_uid_is_in_the_graph(
    graph: list[tuple[str | None, str]],
) -> None:
    declared = {v for k, v in vars(names).items() if k.startswith("UID_")}
    kafka = {v for k, v in vars(names).items() if k.startswith("UID_KAFKA_")}
    seen = set()
    for uid, name in graph:
        if uid is None:
            # PyFlink's own stateless Python map operators (type conversion, key_by): hash-identified.
            assert name in {"Map", "_stream_key_by_map_operator"}, name
            continue
        base = uid.removeprefix("Sink Committer: ")
        # A sink's own operators carry its uid: the archive's compaction ("<uid>: FileSinkCompactorCoordinator").
        owned, _, _ = base.partition(": ")
        base = owned if owned in declared else base
        # The longest name that prefixes it: "kafka-out-exactly-once-sink" is not the "kafka-out" sink's.
        prefixes = [k for k in kafka if base.startswith(k + "-")]
        owner = base if base in declared else max(prefixes, key=len, default=None)
        assert owner is not None, f"uid {uid!r} ({name}) is not derived from udfs/names.py"
        seen.add(owner)
    optional = {
        names.UID_KAFKA_LABELS_IN, names.UID_KAFKA_DECISIONS_IN, names.UID_PARSE_LABELS,
        names.UID_PARSE_DECISIONS, names.UID_LABEL_JOIN, names.UID_KAFKA_OUT_EXACTLY_ONCE,
    }  # fmt: skip
    has_feedback = any(name.startswith("label join") for _, name in graph)
    assert seen == (declared if has_feedback else declared - optional)
    # The stateful Kafka ends by their full uid: the source (offsets) and each sink's writer.
    uids = {uid for uid, _ in graph}
    assert {f"{names.UID_KAFKA_REQUESTS_IN}-source", f"{names.UID_KAFKA_SCORES_IN}-source"} <= uids
    assert f"{names.UID_KAFKA_OUT}-sink" in uids


# Each --start-from as the Kafka connector reads it: the starting-offsets initializer of every Kafka
# source in the built graph (private fields, read by reflection: the connector has no getter for them).
STARTS = """
import sys, tempfile
from pathlib import Path
from jobs import rendezvous_job as rj
from udfs.policy import load_policy

def field(obj, name):
    cls = obj.getClass()
    while cls is not None:
        try:
            f = cls.getDeclaredField(name)
        except Exception:
            cls = cls.getSuperclass()
            continue
        f.setAccessible(True)
        return f.get(obj)
    raise AttributeError(name)

for text in sys.argv[1:]:
    d = Path(tempfile.mkdtemp())
    cfg = rj.JobConfig(policy=load_policy(Path("policies/default.yaml")), bootstrap="127.0.0.1:9",
                       archive_dir=d / "archive", state_dir=d / "state", labels_topic="labels",
                       start_from=rj.parse_start_from(text))
    env = rj.make_env(cfg)
    rj.build_job(env, cfg)
    nodes = env._j_stream_execution_environment.getStreamGraph(False).getStreamNodes().iterator()
    while nodes.hasNext():
        n = nodes.next()
        uid = n.getTransformationUID()
        if not (uid or "").startswith("kafka-") or not uid.endswith("-in-source"):
            continue
        init = field(field(n.getOperatorFactory(), "source"), "startingOffsetsInitializer")
        kind = init.getClass().getSimpleName()
        detail = ""
        if kind == "ReaderHandledOffsetsInitializer":
            detail = str(field(init, "startingOffset"))
        elif kind == "TimestampOffsetsInitializer":
            detail = str(field(init, "startingTimestamp"))
        print("START", text, uid, kind, str(init.getAutoOffsetResetStrategy()).lower(), detail)
"""
# KafkaPartitionSplit's markers for an offset the reader resolves.
EARLIEST_MARKER, COMMITTED_MARKER = "-2", "-3"


def test_each_start_position_reaches_the_kafka_connector_and_policies_start_at_the_earliest() -> None:
    when, when_ms = "2026-01-01T00:00:00Z", "1767225600000"
    out = subprocess.run(
        [sys.executable, "-c", STARTS, "committed", "latest", "earliest", when],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("START "):
            text, uid, *rest = line.split(" ")[1:]
            seen[(text, uid.removesuffix("-source"))] = tuple(x for x in rest if x)
    data = (
        names.UID_KAFKA_REQUESTS_IN, names.UID_KAFKA_SCORES_IN,
        names.UID_KAFKA_LABELS_IN, names.UID_KAFKA_DECISIONS_IN,
    )  # fmt: skip
    expected = {
        # The group's committed offsets; without one, the end (auto.offset.reset latest), not the start.
        "committed": ("ReaderHandledOffsetsInitializer", "latest", COMMITTED_MARKER),
        "latest": ("LatestOffsetsInitializer", "latest"),
        "earliest": ("ReaderHandledOffsetsInitializer", "earliest", EARLIEST_MARKER),
        when: ("TimestampOffsetsInitializer", "latest", when_ms),
    }
    policies_earliest = ("ReaderHandledOffsetsInitializer", "earliest", EARLIEST_MARKER)
    for text, want in expected.items():
        for uid in data:
            assert seen.get((text, uid)) == want, (text, uid, seen.get((text, uid)))
        assert seen.get((text, names.UID_KAFKA_POLICIES_IN)) == policies_earliest, text
    assert len(seen) == len(expected) * (len(data) + 1), sorted(seen)

"""Every name that must stay stable lives here: topics, output tags, operator uids, metrics.

Operator uids are part of the savepoint contract: renaming one orphans its state on restore.
"""

from __future__ import annotations

# --- Kafka topics (defaults; the job config may override them) -----------------------------
TOPIC_REQUESTS = "requests"
TOPIC_SCORES = "scores"
TOPIC_RESULTS_DEFAULT = "results"  # the usual return address; requests may name any topic
TOPIC_CANARY = "canary"
TOPIC_DECISIONS = "decisions"
TOPIC_DEAD_LETTERS = "dead-letters"

ALL_TOPICS = (
    TOPIC_REQUESTS,
    TOPIC_SCORES,
    TOPIC_RESULTS_DEFAULT,
    TOPIC_CANARY,
    TOPIC_DECISIONS,
    TOPIC_DEAD_LETTERS,
)

# --- Consumer groups ------------------------------------------------------------------------
GROUP_RENDEZVOUS = "rendezvous-job"


def runner_group(model_id: str) -> str:
    """Each model runner reads every request, so each has a consumer group of its own."""
    return f"runner-{model_id}"


# --- Side output tags -----------------------------------------------------------------------
TAG_DEAD_LETTERS = "dead-letters"
TAG_CANARY = "canary"
TAG_DECISIONS = "decisions"
TAG_ARCHIVE = "decoy-archive"

# --- Operator uids (never rename: savepoints map state by these) ----------------------------
# The Kafka sources and sinks are built from Table DDL and get planner-generated uids
# (table.exec.uid.generation: ALWAYS in flink-conf/); only DataStream operators are named here.
UID_PARSE_REQUESTS = "parse-requests"
UID_PARSE_SCORES = "parse-scores"
UID_MAILBOX = "rendezvous-mailbox"
UID_SINK_ARCHIVE = "sink-decoy-archive"

# --- State names (part of the savepoint contract, like uids) --------------------------------
STATE_MAILBOX = "mailbox"

# --- Metric names (registered under the operator's metric group) ----------------------------
METRIC_REQUESTS = "requests"
METRIC_SCORES = "scores"
METRIC_RESULTS = "results"
METRIC_NO_ANSWER = "no_answer"
METRIC_LATE_SCORES = "late_scores"
METRIC_DUPLICATES = "duplicates"
METRIC_ORPHANS = "orphan_scores"
METRIC_DEAD_LETTERS = "dead_letters"

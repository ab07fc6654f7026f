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
# Live policy changes: policy documents (JSON, the policy file's structure), read by the job as
# broadcast state from the earliest offset. Compacted, keyed by version (ops/policy_cli.py), so every
# accepted version stays readable by a job started fresh. Not in ALL_TOPICS: the job and
# `rendezvous policy publish` create it with TOPIC_CONFIGS (ops.policy_cli.ensure_policies_topic);
# the generic creators (kafka_admin.ensure_default_topics, docker compose) would make it a topic that
# deletes documents after the default retention (7 days).
TOPIC_POLICIES = "policies"
# Labels (the truth about a request, known later): written by runners/labeller.py, read by evaluation
# and by the job (joined with the decisions topic, read back, into rewards for `decide: thompson`).
# Not in ALL_TOPICS: the labeller creates it, and so does the job (jobs/rendezvous_job.prepare).
TOPIC_LABELS = "labels"
# Drift alerts (schemas/alert.schema.json) from `rendezvous eval drift --every`; keyed by subject.
TOPIC_ALERTS = "alerts"
# The autopilot's audit trail (schemas/audit.schema.json): one record per policy change it applied,
# would apply (--dry-run), was refused by a guard, or failed to publish; keyed v<new version>.
# Written by `rendezvous eval autopilot` (evaluation/autopilot.py), which creates it.
TOPIC_AUDIT = "audit"

ALL_TOPICS = (
    TOPIC_REQUESTS,
    TOPIC_SCORES,
    TOPIC_RESULTS_DEFAULT,
    TOPIC_CANARY,
    TOPIC_DECISIONS,
    TOPIC_DEAD_LETTERS,
)
# Topic settings beyond the defaults, applied when the topic is created.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {TOPIC_POLICIES: {"cleanup.policy": "compact"}}

# --- Consumer groups ------------------------------------------------------------------------
GROUP_RENDEZVOUS = "rendezvous-job"
RUNNER_GROUP_PREFIX = "runner-"


def runner_group(model_id: str) -> str:
    """Each model runner reads every request, so each has a consumer group of its own."""
    return f"{RUNNER_GROUP_PREFIX}{model_id}"


# The labeller's consumer group (runners/labeller.py).
GROUP_LABELLER = "labeller"


# --- Security (ops/broker.py --secure, ops/kafka_security.py) --------------------------------------
# One SASL principal per role, named as the role; each gets its own Kafka client properties file
# (<data-dir>/clients/<role>.properties) and the ACLs of its role, derived from the topics, groups and
# transactional ids above. The broker's own principal (inter-broker, controller, ACL set-up) is a super user.
ROLE_CLIENT = "client"  # writes requests, reads the results topics under its own prefix
ROLE_RUNNER = "runner"  # reads requests, writes scores
ROLE_JOB = "job"  # what the rendezvous job's topology reads and writes
ROLE_OPERATOR = "operator"  # policies and topic administration
ROLE_LABELLER = "labeller"  # reads requests, writes labels (runners/labeller.py)
ROLES = (ROLE_CLIENT, ROLE_RUNNER, ROLE_JOB, ROLE_OPERATOR, ROLE_LABELLER)
PRINCIPAL_BROKER = "admin"
# The results topics the job may write (and create): every return address starts with this on a secured
# broker (the job refuses others as bad_return_address, jobs/rendezvous_job.py --return-address-prefix).
RESULTS_PREFIX = TOPIC_RESULTS_DEFAULT


def assigned_group_prefix(principal: str | None) -> str:
    """The throw-away consumer group of a reader that assigns partitions itself (librdkafka needs a group
    id, and asks for the group's coordinator even if it never commits): ``rendezvous-assigned-``, or on a
    secured broker ``<principal>.assigned-``, the groups each principal may describe (its own only)."""
    return "rendezvous-assigned-" if principal is None else f"{principal}.assigned-"


def client_results_prefix(principal: str) -> str:
    """The results topics one client principal may create and read (return addresses of its requests):
    ``results.<principal>.``; another client's prefix is out of its reach."""
    return f"{RESULTS_PREFIX}.{principal}."


# --- Delivery guarantees of the Kafka outputs (jobs/rendezvous_job.py --<output>-delivery) ---------
DELIVERY_AT_LEAST_ONCE = "at-least-once"  # visible at once; after a job restart, possibly twice
DELIVERY_EXACTLY_ONCE = "exactly-once"  # Kafka transactions: visible to read_committed readers at checkpoints
DELIVERIES = (DELIVERY_AT_LEAST_ONCE, DELIVERY_EXACTLY_ONCE)
# The job's Kafka outputs, as named by the delivery flags (the archive FileSink is always exactly-once).
OUTPUT_RESULTS = "results"
OUTPUT_CANARY = "canary"
OUTPUT_DECISIONS = "decisions"
OUTPUT_DEAD_LETTERS = "dead-letters"
KAFKA_OUTPUTS = (OUTPUT_RESULTS, OUTPUT_CANARY, OUTPUT_DECISIONS, OUTPUT_DEAD_LETTERS)
# The mailbox's ticks (--clock log): a Kafka output without a delivery flag, always at-least-once.
OUTPUT_TICKS = "ticks"

# --- The mailbox's clock (jobs/rendezvous_job.py --clock) ------------------------------------------
# log: a wait or deadline that runs out is written as a tick record into the scores topic, under the
# request's key (so into the partition of its scores), and acted on when the job reads it back. A
# decision then depends only on the order of records in Kafka, so a replay after a crash decides every
# request the same way; a job that falls behind answers late, from the queued scores. local: acted on
# in the timer itself (a Kafka round trip sooner, `no_answer` at the deadline when the job is behind;
# after a crash a replay can decide differently): docs/guarantees.md.
CLOCK_LOG = "log"
CLOCK_LOCAL = "local"
CLOCKS = (CLOCK_LOG, CLOCK_LOCAL)

# --- Where a job without restored state starts reading (jobs/rendezvous_job.py --start-from) --------
# The requests, scores, labels and decisions-read-back sources, all from the same position. committed:
# the consumer group's committed offsets (Flink commits them at each completed checkpoint), the end of
# the topics for a partition without one, so a fresh job answers only requests sent after it is up.
# latest: the end, whatever the group committed. earliest, or a time (START_TIMESTAMP): a replay, which
# answers the requests already in the topics again. A restore from a checkpoint or savepoint always
# continues from the offsets in it; the policies topic is always read from its earliest offset.
START_COMMITTED = "committed"
START_LATEST = "latest"
START_EARLIEST = "earliest"
START_TIMESTAMP = "timestamp"  # not a flag value: the flag takes the time itself
START_POSITIONS = (START_COMMITTED, START_LATEST, START_EARLIEST)


def transactional_id_prefix(group_id: str, sink_uid: str) -> str:
    """The Kafka transactional-id prefix of one exactly-once sink of one job.

    Unique per sink (two sinks sharing ids fence each other) and per job (its consumer group, which
    every job on a broker must have of its own), and stable across restarts and savepoint upgrades, so
    a restored job finds and aborts the transactions its predecessor left open.
    """
    return f"{group_id}.{sink_uid}"


# --- Side output tags -----------------------------------------------------------------------
TAG_DEAD_LETTERS = "dead-letters"  # the label join's parsers
TAG_ARCHIVE = "decoy-archive"  # the mailbox's archive lines (emitted from process_element only)

# --- Operator uids (never rename: savepoints map state by these) ----------------------------
# The Kafka sources and sinks are built from Table DDL. The planner numbers their uids in the order it
# translates them ("7_source"), so adding one source would shift every later uid and orphan its state.
# Each table is translated under its own prefix instead (``table.exec.uid.format``,
# jobs/rendezvous_job.py): its operators get "<prefix>-<transformation>", e.g. "kafka-requests-in-source"
# and "kafka-results-out-sink". tests/integration/test_job_graph.py checks no planner number is left.
UID_KAFKA_REQUESTS_IN = "kafka-requests-in"
UID_KAFKA_SCORES_IN = "kafka-scores-in"
UID_KAFKA_POLICIES_IN = "kafka-policies-in"
UID_KAFKA_LABELS_IN = "kafka-labels-in"
# The job reads its own decisions topic back: the label join needs every model's answer, and a stream
# from the mailbox back into its own broadcast input would be a cycle (Kafka closes the loop instead).
UID_KAFKA_DECISIONS_IN = "kafka-decisions-in"
# One Kafka sink writes every Kafka output of the mailbox (results, canary, decisions, dead letters,
# ticks), each row naming its topic: one producer, and each record converted once. A second,
# transactional sink takes the outputs whose --<output>-delivery is exactly-once, if any.
UID_KAFKA_OUT = "kafka-out"
UID_KAFKA_OUT_EXACTLY_ONCE = "kafka-out-exactly-once"
UID_MAILBOX = "rendezvous-mailbox"
# The decoy archive's Parquet sink (deps/archive-parquet). Until Parquet it was "sink-decoy-archive", a
# JSON-lines FileSink whose state this sink cannot take (ops/upgrade.py: ARCHIVE_SINK_BEFORE_PARQUET).
UID_SINK_ARCHIVE = "sink-decoy-archive-parquet"
# Its operator's name: Flink names the sink's task threads after it (ops/background_priority.py finds them so).
OPERATOR_ARCHIVE = "decoy archive"
# Label feedback for `decide: thompson` (udfs/feedback.py): parse labels and decisions read back, join
# them by request id (keyed state + timers), and tag policy documents so one broadcast stream carries
# both policies and rewards into the mailbox.
UID_PARSE_LABELS = "parse-labels"
UID_PARSE_DECISIONS = "parse-decisions"
UID_LABEL_JOIN = "label-join"
UID_TAG_POLICIES = "tag-policies"


def table_uid_format(prefix: str) -> str:
    """The ``table.exec.uid.format`` under which one Kafka table's operators are translated."""
    return f"{prefix}-<transformation>"


# --- State names (part of the savepoint contract, like uids) --------------------------------
STATE_MAILBOX = "mailbox"
# Broadcast (operator) state of the mailbox operator: accepted live policies, version -> policy JSON.
STATE_POLICIES = "policies"
# Broadcast state of the mailbox operator: the Thompson-sampling posteriors (udfs/bandit.py JSON) under
# one key, the same on every parallel instance (every instance applies every reward).
STATE_BANDIT = "bandit-posteriors"
# Keyed state of the label join: one request's decision answers and/or label (udfs/feedback.py JSON).
STATE_LABEL_JOIN = "label-join"

# --- Metric names (registered under the operator's metric group) ----------------------------
METRIC_REQUESTS = "requests"
METRIC_SCORES = "scores"
METRIC_RESULTS = "results"
METRIC_NO_ANSWER = "no_answer"
METRIC_LATE_SCORES = "late_scores"
METRIC_DUPLICATES = "duplicates"
METRIC_ORPHANS = "orphan_scores"
METRIC_DEAD_LETTERS = "dead_letters"
METRIC_DUPLICATE_REQUESTS = "duplicate_requests"  # also counted in METRIC_DUPLICATES
METRIC_DUPLICATE_SCORES = "duplicate_scores"  # also counted in METRIC_DUPLICATES
METRIC_TICKS_WRITTEN = "ticks_written"  # --clock log: waits and deadlines run out, written to Kafka
METRIC_TICKS_READ = "ticks_read"  # ticks read back that moved an open mailbox's clock
METRIC_TICKS_IGNORED = "ticks_ignored"  # ticks for decided or closed mailboxes, or already passed
METRIC_UNKNOWN_MODEL_SCORES = "unknown_model_scores"  # scores from a model id the policy does not list
# State size: mailboxes created and cleared by this subtask, and the difference (live keyed state).
METRIC_MAILBOXES_OPENED = "mailboxes_opened"
METRIC_MAILBOXES_CLEARED = "mailboxes_cleared"
METRIC_MAILBOXES_LIVE = "mailboxes_live"
# Live policy changes (the policies topic): documents accepted and refused, and the version in force.
METRIC_POLICIES_ACCEPTED = "policies_accepted"
METRIC_POLICIES_REFUSED = "policies_refused"  # each also counts in dead_letters_<reason>
METRIC_POLICY_VERSION = "policy_version"  # a gauge: the version new requests are decided under
# Label feedback: in the label join operator, labels matched with their decision, labels whose decision
# never came (within the join's TTL), decisions that got no label, and second deliveries of either; in
# the mailbox, reward events applied to the posteriors and requests whose first model the bandit chose.
METRIC_LABELS_MATCHED = "labels_matched"
METRIC_LABELS_UNMATCHED = "labels_unmatched"
METRIC_DECISIONS_UNLABELLED = "decisions_unlabelled"
METRIC_FEEDBACK_DUPLICATES = "feedback_duplicates"
METRIC_BANDIT_REWARDS = "bandit_rewards"
METRIC_BANDIT_CHOICES = "bandit_choices"

# Per-model counters (udfs/model_metrics.py derives them from each decision record at close), one set
# per model the policy lists, named ``model_<model id>_<metric>`` by ``model_metric``:
MODEL_METRIC_SCORES = "scores"  # scores received (ok or error; duplicates not counted)
MODEL_METRIC_WINS = "wins"  # official answers given by this model
MODEL_METRIC_LATE = "late"  # scores that arrived after the official decision (still recorded)
MODEL_METRIC_TIMEOUTS = "timeouts"  # mailboxes closed with no score at all from this model
MODEL_METRIC_ERRORS = "errors"  # error scores (status != ok)
MODEL_METRIC_LATENCY_SUM = "latency_ms_sum"  # sum of (score arrival - request arrival), ms
# Latency histogram as cumulative counters, Prometheus style: ``latency_ms_le_<bound>`` counts the
# scores that arrived within <bound> ms of their request (``le_inf`` = all scores). PyFlink's thread
# mode has no histogram metric (its "distribution" is a last-value gauge), hence counters.
MODEL_LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


def latency_bucket_metric(bound_ms: int | None) -> str:
    """``latency_ms_le_100``; None is the +Inf bucket, ``latency_ms_le_inf``."""
    return f"latency_ms_le_{'inf' if bound_ms is None else bound_ms}"


MODEL_METRICS = (
    MODEL_METRIC_SCORES,
    MODEL_METRIC_WINS,
    MODEL_METRIC_LATE,
    MODEL_METRIC_TIMEOUTS,
    MODEL_METRIC_ERRORS,
    MODEL_METRIC_LATENCY_SUM,
    *(latency_bucket_metric(b) for b in MODEL_LATENCY_BUCKETS_MS),
    latency_bucket_metric(None),
)


def model_metric(model_id: str, metric: str) -> str:
    """The per-model counter's name in the mailbox operator's metric group, e.g. ``model_gbt_wins``."""
    return f"model_{model_id}_{metric}"


# --- Dead-letter reason codes (schemas/dead_letter.schema.json lists the same) ----------------------
# Parsing (udfs/wire_in.py):
REASON_NULL_VALUE = "null_value"
REASON_NOT_UTF8 = "not_utf8"
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_object"
REASON_TOO_LARGE = "too_large"
REASON_MISSING_FIELD = "missing_field"
REASON_BAD_FIELD = "bad_field"
REASON_UNKNOWN_FIELD = "unknown_field"
REASON_BAD_REQUEST_ID = "bad_request_id"
REASON_BAD_RETURN_ADDRESS = "bad_return_address"
REASON_BAD_OUTPUT = "bad_output"
# The mailbox (udfs/mailbox.py):
REASON_DUPLICATE_REQUEST = "duplicate_request"
REASON_ORPHAN_SCORE = "orphan_score"
REASON_SCORE_AFTER_CLOSE = "score_after_close"
REASON_TOO_MANY_SCORES = "too_many_scores"
# The record's Kafka key (which keys the mailbox) is not its request_id: it sits in another request's
# partition and mailbox, so it cannot be used (schemas/README.md: the key is the request id).
REASON_KEY_MISMATCH = "key_mismatch"
# Live policy documents (udfs/policy_registry.py):
REASON_BAD_POLICY = "bad_policy"  # not UTF-8, not JSON, too large, or a field udfs.policy refuses
REASON_STALE_POLICY_VERSION = "stale_policy_version"  # version not higher than the one in force
# Label feedback (udfs/feedback.py; bad labels get the parse reasons above):
REASON_BAD_DECISION = "bad_decision"  # a record on the decisions topic that is not a decision record

PARSE_REASONS = (
    REASON_NULL_VALUE,
    REASON_NOT_UTF8,
    REASON_NOT_JSON,
    REASON_NOT_OBJECT,
    REASON_TOO_LARGE,
    REASON_MISSING_FIELD,
    REASON_BAD_FIELD,
    REASON_UNKNOWN_FIELD,
    REASON_BAD_REQUEST_ID,
    REASON_BAD_RETURN_ADDRESS,
    REASON_BAD_OUTPUT,
)
MAILBOX_REASONS = (
    REASON_DUPLICATE_REQUEST,
    REASON_ORPHAN_SCORE,
    REASON_SCORE_AFTER_CLOSE,
    REASON_TOO_MANY_SCORES,
    REASON_KEY_MISMATCH,
)
POLICY_REASONS = (
    REASON_BAD_POLICY,
    REASON_STALE_POLICY_VERSION,
)
FEEDBACK_REASONS = (REASON_BAD_DECISION,)
DEAD_LETTER_REASONS = PARSE_REASONS + MAILBOX_REASONS + POLICY_REASONS + FEEDBACK_REASONS


def dead_letter_metric(reason: str) -> str:
    """The per-reason dead-letter counter, e.g. ``dead_letters_not_json`` (next to the total)."""
    return f"{METRIC_DEAD_LETTERS}_{reason}"

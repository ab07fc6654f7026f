#!/usr/bin/env bash
# Entrypoint of the rendezvous image: the first argument picks the role of the container.
#
#   jobmanager                   Flink JobManager (standalone session cluster), in the foreground
#   taskmanager                  Flink TaskManager, in the foreground
#   runner MODEL [runner flags]  a model runner for /opt/rendezvous/models/MODEL (python -m runners.runner)
#   submit [job flags]           submit jobs/rendezvous_job.py to the JobManager (flink run -py), detached;
#                                does nothing if a rendezvous job is already running there
#   train [train flags]          (re)train the models into /opt/rendezvous/models
#   load [loadgen flags]         the load generator (python -m harness.loadgen) against the broker
#   labeller [labeller flags]    the labeller (python -m runners.labeller): true labels, later
#   policy COMMAND [args]        live policy changes (python -m ops.policy_cli): check, publish, show
#   kafka-secrets [flags]        one-shot, before the broker: every principal's password and file, one
#                                directory (volume) per reader under $SECRETS_DIR (python -m ops.kafka_init)
#   kafka-setup [flags]          one-shot, once the broker answers: every role's ACLs and every topic
#   sql [SQL]                    SQL (DuckDB) over the decoy archive (python -m ops.archive)
#   flink [args]                 the Flink CLI against the JobManager (list, stop --savepointPath, cancel, ...)
#   help                         this text
#   anything else                run as a command (bash, python, flink, ...)
#
# Settings (environment): KAFKA_BOOTSTRAP, KAFKA_CONFIG, ADMIN_CONFIG, SECRETS_DIR, POLICY, ARCHIVE_DIR,
# STATE_DIR, MODELS_DIR, FLINK_REST_URL, SUBMIT_WAIT_S, FROM_SAVEPOINT, FORCE_SUBMIT, RUNNER_INSTANCE_ID
# (a runner's --instance-id, unique per copy and stable across its restarts; default: none); defaults below.
# KAFKA_CONFIG: the role's Kafka client properties file, given to every command that talks to Kafka as
# --kafka-config (empty: a broker without authentication); ADMIN_CONFIG: the broker's own, for kafka-setup.
set -euo pipefail

APP_DIR=${APP_DIR:-/opt/rendezvous/app}
MODELS_DIR=${MODELS_DIR:-/opt/rendezvous/models}
PYFILES=${PYFILES:-/opt/rendezvous/pyfiles/udfs.zip}
KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:9092}
KAFKA_CONFIG=${KAFKA_CONFIG:-}
ADMIN_CONFIG=${ADMIN_CONFIG:-}
SECRETS_DIR=${SECRETS_DIR:-/opt/rendezvous/secrets}
POLICY=${POLICY:-$APP_DIR/policies/default.yaml}
ARCHIVE_DIR=${ARCHIVE_DIR:-/opt/rendezvous/archive/decoy}
STATE_DIR=${STATE_DIR:-/opt/rendezvous/state}
FLINK_REST_URL=${FLINK_REST_URL:-http://jobmanager:8081}
SUBMIT_WAIT_S=${SUBMIT_WAIT_S:-180}
RUNNER_INSTANCE_ID=${RUNNER_INSTANCE_ID:-}
FLINK_HOME=${FLINK_HOME:?FLINK_HOME must point at the pyflink package directory}
FLINK_CONF_DIR=${FLINK_CONF_DIR:?FLINK_CONF_DIR must point at the generated Flink configuration}

# Modules run from the source tree, so that what the code finds next to itself (flink-conf/,
# policies/, schemas/, build/jars/flink/) is there; the dependencies come from the installed venv.
cd "$APP_DIR"

# --kafka-config FILE when KAFKA_CONFIG names one (the file's path; what is in it never reaches argv).
kafka_config=()
if [[ -n "$KAFKA_CONFIG" ]]; then
    kafka_config=(--kafka-config "$KAFKA_CONFIG")
fi

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# Exit 0 if the JobManager at $1 runs a job named "rendezvous ..." (printing it), 1 if not.
# Waits up to $2 seconds for the REST endpoint to answer; exits 2 if it never does.
rendezvous_job_running() {
    python - "$1" "$2" <<'PY'
import json, sys, time, urllib.request

url, wait_s = sys.argv[1].rstrip("/") + "/jobs/overview", float(sys.argv[2])
deadline = time.monotonic() + wait_s
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            jobs = json.load(resp)["jobs"]
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            print(f"submit: no answer from {url} after {wait_s:.0f} s: {exc}", file=sys.stderr)
            sys.exit(2)
        time.sleep(2)
finished = {"FINISHED", "FAILED", "CANCELED"}
live = [j for j in jobs if j["name"].startswith("rendezvous ") and j["state"] not in finished]
for j in live:
    print(f"submit: {j['name']!r} is already {j['state']} as job {j['jid']}; not submitting another copy")
sys.exit(0 if live else 1)
PY
}

submit() {
    local rest_port=${FLINK_REST_URL##*:}
    rest_port=${rest_port%%/*}
    if ! [[ $rest_port =~ ^[0-9]+$ ]]; then
        echo "submit: FLINK_REST_URL must name the port, e.g. http://jobmanager:8081 (got $FLINK_REST_URL)" >&2
        return 2
    fi
    if [[ "${FORCE_SUBMIT:-0}" != 1 ]]; then
        local status=0
        rendezvous_job_running "$FLINK_REST_URL" "$SUBMIT_WAIT_S" || status=$?
        case $status in
            0) return 0 ;;                 # already running: a second copy would answer every request twice
            1) ;;                          # none yet: submit
            *) return "$status" ;;
        esac
    fi
    local flink_args=(run --detached)
    if [[ -n "${FROM_SAVEPOINT:-}" ]]; then
        flink_args+=(--fromSavepoint "$FROM_SAVEPOINT")
    fi
    # -py: the job script from the source tree (the job finds build/jars/flink/ next to it and puts
    # the connector jar in pipeline.jars); -pyfs: the udfs package shipped with the job.
    flink_args+=(-py "$APP_DIR/jobs/rendezvous_job.py" -pyfs "$PYFILES")
    # Everything from --policy on belongs to the job's own CLI. The job lays its configuration over
    # the cluster's, so it is given the container's Flink configuration and, to be explicit, the
    # JobManager's REST port.
    exec "$FLINK_HOME/bin/flink" "${flink_args[@]}" \
        --policy "$POLICY" \
        --bootstrap "$KAFKA_BOOTSTRAP" \
        "${kafka_config[@]}" \
        --archive-dir "$ARCHIVE_DIR" \
        --state-dir "$STATE_DIR" \
        --flink-conf "$FLINK_CONF_DIR/config.yaml" \
        -D "rest.port=$rest_port" \
        "$@"
}

role=${1:-help}
if [[ $# -gt 0 ]]; then
    shift
fi

case "$role" in
    jobmanager)
        exec "$FLINK_HOME/bin/jobmanager.sh" start-foreground "$@"
        ;;
    taskmanager)
        exec "$FLINK_HOME/bin/taskmanager.sh" start-foreground "$@"
        ;;
    runner)
        if [[ $# -lt 1 ]]; then
            models=("$MODELS_DIR"/*/)
            models=("${models[@]%/}")
            echo "usage: runner MODEL [runner flags]; models: ${models[*]##*/}" >&2
            exit 2
        fi
        model=$1
        shift
        # RUNNER_INSTANCE_ID: a static member of its group (docs/operations.md, "Recovery").
        static=()
        if [[ -n "$RUNNER_INSTANCE_ID" ]]; then
            static=(--instance-id "$RUNNER_INSTANCE_ID")
        fi
        exec python -m runners.runner --model-dir "$MODELS_DIR/$model" --bootstrap "$KAFKA_BOOTSTRAP" \
            "${static[@]}" "${kafka_config[@]}" "$@"
        ;;
    submit)
        submit "$@"
        ;;
    train)
        exec python -m runners.train --out "$MODELS_DIR" "$@"
        ;;
    load)
        exec python -m harness.loadgen --bootstrap "$KAFKA_BOOTSTRAP" "${kafka_config[@]}" "$@"
        ;;
    labeller)
        exec python -m runners.labeller --bootstrap "$KAFKA_BOOTSTRAP" "${kafka_config[@]}" "$@"
        ;;
    policy)
        command=${1:-show}
        if [[ $# -gt 0 ]]; then
            shift
        fi
        if [[ "$command" == check ]]; then  # a file only: no broker
            exec python -m ops.policy_cli check "$@"
        fi
        exec python -m ops.policy_cli "$command" --bootstrap "$KAFKA_BOOTSTRAP" "${kafka_config[@]}" "$@"
        ;;
    kafka-secrets)
        exec python -m ops.kafka_init secrets --dir "$SECRETS_DIR" "$@"
        ;;
    kafka-setup)
        admin=()
        if [[ -n "$ADMIN_CONFIG" ]]; then
            admin=(--admin-config "$ADMIN_CONFIG")
        fi
        exec python -m ops.kafka_init setup --bootstrap "$KAFKA_BOOTSTRAP" "${admin[@]}" "$@"
        ;;
    sql)
        exec python -m ops.archive --archive-dir "$ARCHIVE_DIR" "$@"
        ;;
    flink)
        exec "$FLINK_HOME/bin/flink" "$@"
        ;;
    help | -h | --help)
        usage
        ;;
    *)
        exec "$role" "$@"
        ;;
esac

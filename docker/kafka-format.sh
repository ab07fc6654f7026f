#!/usr/bin/env bash
# One-shot, before the broker (docker/compose.yaml's kafka-format service, in the apache/kafka image, with
# the kafka service's environment): format the KRaft storage once, with every principal's SCRAM credential
# in the new metadata (KIP-900), so that the secured broker starts with its users, as
# `rendezvous broker start --secure` does. The image formats at every start too, but without credentials;
# finding the storage formatted, it goes on ("already formatted").
#
# The broker's configuration is rendered from the KAFKA_* variables by the image's own rule
# (kafka.docker.KafkaDockerWrapper: KAFKA_A_B -> a.b, ___ -> -, __ -> _), after the mounted
# server.properties, as the image does. The credentials (scram.args, from `python -m ops.kafka_init
# secrets`) reach the storage tool in a JVM argument file, never its command line, and are deleted after.
#
# Settings (environment): CLUSTER_ID, KAFKA_LOG_DIRS and the other KAFKA_* variables; CONFIG_DIR
# (default /mnt/shared/config), KAFKA_HOME (default /opt/kafka).
set -euo pipefail

CONFIG_DIR=${CONFIG_DIR:-/mnt/shared/config}
KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
: "${CLUSTER_ID:?CLUSTER_ID must be set (as the kafka service)}"
: "${KAFKA_LOG_DIRS:?KAFKA_LOG_DIRS must be set (as the kafka service)}"
scram="$CONFIG_DIR/scram.args"

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f "$scram"' EXIT  # no copy of the credentials stays behind

if [[ -e "$KAFKA_LOG_DIRS/meta.properties" ]]; then
    echo "kafka-format: $KAFKA_LOG_DIRS is formatted already; the broker keeps its users"
    exit 0
fi
if [[ ! -s "$scram" ]]; then
    echo "kafka-format: no $scram (the kafka-secrets step writes it); nothing formatted" >&2
    exit 1
fi

# The variables the image leaves out of server.properties (KafkaDockerWrapper's ExcludeServerPropsEnv).
excluded=" KAFKA_VERSION KAFKA_HEAP_OPT KAFKA_LOG4J_OPTS KAFKA_OPTS KAFKA_JMX_OPTS KAFKA_JVM_PERFORMANCE_OPTS \
KAFKA_GC_LOG_OPTS KAFKA_LOG4J_ROOT_LOGLEVEL KAFKA_LOG4J_LOGGERS KAFKA_TOOLS_LOG4J_LOGLEVEL KAFKA_JMX_HOSTNAME "
render() {
    if [[ -f "$CONFIG_DIR/server.properties" ]]; then
        cat "$CONFIG_DIR/server.properties"
        echo
    fi
    local var key
    while IFS= read -r var; do
        [[ $excluded == *" $var "* ]] && continue
        key=${var#KAFKA_}
        key=${key,,}
        key=${key//_/.}
        key=${key//.../-}
        key=${key//../_}
        printf '%s=%s\n' "$key" "${!var}"
    done < <(compgen -e | grep '^KAFKA_' || true)
}
render > "$work/server.properties"

{
    printf '%s\n' kafka.tools.StorageTool format --cluster-id "$CLUSTER_ID" --config "$work/server.properties"
    cat "$scram"
} > "$work/format.args"

java=${JAVA_HOME:+$JAVA_HOME/bin/}java
status=0
output=$("$java" -Dlog4j.configuration="file:$KAFKA_HOME/config/tools-log4j.properties" \
    -cp "$KAFKA_HOME/libs/*" "@$work/format.args" 2>&1) || status=$?
# The tool may echo an argument it could not parse: never a password in the log.
echo "$output" | sed -E 's/password=[^],]*/password=***/g'
if [[ $status -ne 0 ]]; then
    echo "kafka-format: formatting $KAFKA_LOG_DIRS failed (exit $status)" >&2
    exit "$status"
fi
echo "kafka-format: $KAFKA_LOG_DIRS formatted with every principal's SCRAM credential"

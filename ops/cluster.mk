# Flink standalone session cluster from the PyFlink package (ops/cluster.py). Included by the Makefile.
# make cluster-up [CLUSTER_REST_PORT=8081] [CLUSTER_TASKMANAGERS=2]; make cluster-submit POLICY=policies/default.yaml BOOTSTRAP=127.0.0.1:9092
# make cluster-status; make cluster-cancel JOB=<jobid>; make cluster-down; make test-cluster
# make cluster-upgrade POLICY=policies/v2.yaml [UPGRADE_ARGS=--check]   (savepoint-safe, ops/upgrade.py)
CLUSTER_DIR       ?= var/cluster
CLUSTER_REST_PORT ?= 8081
CLUSTER_TASKMANAGERS ?= 2
POLICY            ?= policies/default.yaml
BOOTSTRAP         ?= 127.0.0.1:9092
JOB_ARGS          ?=
UPGRADE_ARGS      ?=

.PHONY: cluster-up cluster-down cluster-submit cluster-status cluster-cancel cluster-upgrade test-cluster test-upgrade

cluster-up: setup
	$(PY) -m ops.cluster up --dir $(CLUSTER_DIR) --rest-port $(CLUSTER_REST_PORT) --taskmanagers $(CLUSTER_TASKMANAGERS)

cluster-down:
	$(PY) -m ops.cluster down --dir $(CLUSTER_DIR)

cluster-submit:
	$(PY) -m ops.cluster submit --dir $(CLUSTER_DIR) --policy $(POLICY) --bootstrap $(BOOTSTRAP) $(JOB_ARGS)

cluster-status:
	$(PY) -m ops.cluster status --dir $(CLUSTER_DIR)

cluster-cancel:
	@[ -n "$(JOB)" ] || { echo "usage: make cluster-cancel JOB=<jobid>" >&2; exit 2; }
	$(PY) -m ops.cluster cancel --dir $(CLUSTER_DIR) $(JOB)

cluster-upgrade:
	@[ "$(origin POLICY)" = "command line" ] || { echo "usage: make cluster-upgrade POLICY=<new policy file> [UPGRADE_ARGS=--check]" >&2; exit 2; }
	$(PY) -m ops.cluster upgrade --dir $(CLUSTER_DIR) --policy $(POLICY) $(UPGRADE_ARGS)

test-upgrade: setup
	$(PY) -m pytest -q -s tests/e2e/test_upgrade.py $(PYTEST_ARGS)

test-cluster: setup
	$(PY) -m pytest -q tests/e2e/test_session_cluster.py $(PYTEST_ARGS)

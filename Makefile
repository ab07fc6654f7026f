# rendezvous: the two commands are `make demo` and `make test`; both run `make setup` first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
JARS   := build/jars
PYTEST_ARGS ?=

.PHONY: help setup demo test test-unit test-faults lint bench bench-archive bench-tuning profile episodes faults soak publish scenario-degrade clean distclean sql

help:
	@echo "make setup   - virtualenv + pinned Python deps + Kafka broker and Flink connector jars (idempotent)"
	@echo "make demo    - broker, models, runners, rendezvous job, load; prints a summary; stops everything (SECURE=1: SASL/SCRAM + ACLs; TLS=1: and TLS)"
	@echo "make test    - the whole test suite (unit, mini cluster, end-to-end on a real broker)"
	@echo "make lint    - ruff + mypy"
	@echo "make bench   - Kafka floor, job alone, whole stack on a rate ladder (first_in_order vs wait-for-all) -> var/bench/"
	@echo "make faults  - every fault scenario under load, both delivery modes; invariants checked -> var/faults/ (~25 min)"
	@echo "make soak    - 30 min at half the measured capacity, a fault every 5 min: memory, state, lag level off? -> var/soak/ (not in make test)"
	@echo "make profile - where the job's and a runner's CPU goes, stage by stage (py-spy, JFR) -> var/profile/ (~4 min)"
	@echo "make episodes - the stack at 833/s for 60 s: each second's latency next to every thread's CPU and wait for a core, the host's steal, checkpoints -> var/episodes/ (~4 min)"
	@echo "make publish - copy the runs' JSON from var/ into docs/results/ and render README.md/docs/performance.md from it"
	@echo "make bench-tuning - the job alone under each candidate Flink setting -> var/bench/tuning.md (~15 min)"
	@echo "make bench-archive - the archive's cost in the job (drains with/without it) and SQL over 1 M archived requests -> var/bench/archive.md"
	@echo "make scenario-degrade - a model degrades mid-run: metrics, quality, drift/canary alerts, the autopilot demotes it live, it is retrained from the decoy, shadowed, made a challenger, then promoted (var/degrade/summary.json: seconds_to_fallback ... seconds_to_promotion; exit 1 without the promotion)"
	@echo "make sql Q='SELECT ...' - SQL over the decoy archive of the last demo"
	@echo "make cluster-up | cluster-submit BOOTSTRAP=host:port | cluster-status | cluster-cancel JOB=id | cluster-down"

setup: $(VENV)/.installed $(JARS)/.fetched

$(VENV)/.installed: pyproject.toml
	@ver=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  if [ "$$ver" != "3.11" ]; then \
	    echo "error: Python 3.11 is required (apache-flink 2.2.1 wheels + pinned deps); found '$(PYTHON)' $$ver." >&2; \
	    echo "       Install python3.11 or run: make setup PYTHON=/path/to/python3.11" >&2; exit 1; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

$(JARS)/.fetched: deps/pom.xml deps/kafka-sink-context/pom.xml $(shell find deps/kafka-sink-context/src -name '*.java') \
                 deps/archive-parquet/pom.xml $(shell find deps/archive-parquet/src -type f) \
                 deps/metrics-prometheus/pom.xml $(shell find deps/metrics-prometheus/src -type f)
	@command -v java >/dev/null || { echo "error: Java 17+ is required (Debian: apt-get install openjdk-17-jdk-headless)." >&2; exit 1; }
	@jv=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  if [ -z "$$jv" ] || [ "$$jv" -lt 17 ]; then echo "error: Java 17+ is required, found version '$$jv'." >&2; exit 1; fi
	@command -v mvn >/dev/null || { echo "error: Maven is required to fetch the Kafka broker and Flink connector jars (Debian: apt-get install maven)." >&2; exit 1; }
	@echo "fetching Kafka broker + Flink Kafka connector jars from Maven Central (deps/pom.xml) ..."
	mvn --batch-mode --quiet -f deps/pom.xml package
	@touch $@

# SECURE=1: the broker with SASL/SCRAM and ACLs, every process as its role (docs/operations.md#security);
# TLS=1 as well: the clients' listener over TLS (SASL_SSL), every process trusting the broker's own CA.
demo: setup
	$(PY) -m harness.demo $(if $(SECURE),--secure) $(if $(TLS),--secure --tls)

# Long fault scenarios (marker `slow`) are left to `make faults` / `make test-faults`. The 20 slowest
# tests are listed at the end: where the suite's time goes, in every CI log.
test: setup
	$(PY) -m pytest -m "not slow" --durations=20 $(PYTEST_ARGS)

test-faults: setup
	$(PY) -m pytest -s tests/e2e/test_faults.py $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m harness.bench $(BENCH_ARGS)

# The decoy archive: the job draining with and without it, and DuckDB over 1 M archived requests.
bench-archive: setup
	$(PY) -m harness.bench_archive $(BENCH_ARGS)

faults: setup
	$(PY) -m harness.faults $(FAULTS_ARGS)

# SOAK_ARGS: e.g. --minutes 60 --rate 100 --fault-every 3 --delivery exactly-once (python -m harness.soak --help).
soak: setup
	$(PY) -m harness.soak $(SOAK_ARGS)

bench-tuning: setup
	$(PY) -m harness.bench --tuning $(BENCH_ARGS)

profile: setup
	$(PY) -m harness.profile $(PROFILE_ARGS)

# EPISODES_ARGS: e.g. --rate 1000 --seconds 120 (python -m harness.episodes --help)
episodes: setup
	$(PY) -m harness.episodes $(EPISODES_ARGS)

# PUBLISH_ARGS: --bench/--profile/--demo/--faults [PATH] copy only those; empty: copy nothing, only render.
PUBLISH_ARGS ?= --all
publish: $(VENV)/.installed
	$(PY) -m harness.publish $(PUBLISH_ARGS)

scenario-degrade: setup
	$(PY) -m harness.degrade_scenario $(SCENARIO_ARGS)

sql: setup
	$(PY) -m ops.archive --archive-dir var/demo/archive "$(Q)"

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis

distclean: clean
	rm -rf $(VENV) build deps/target *.egg-info

# Flink session cluster targets: cluster-up, cluster-submit, cluster-status, cluster-cancel, cluster-down.
include ops/cluster.mk

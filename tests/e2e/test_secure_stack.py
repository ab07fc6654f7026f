"""The whole stack on a secured broker (`broker start --secure`): runners as ``runner``, the job as
``job``, the load generator as ``client``; every request answered, once, under the client's own
results prefix. Also: what Flink shows of the job's Kafka credentials (its REST API and logs: nothing),
and a request whose return address the job role may not write becomes a dead letter while the job goes
on answering. The broker's only client listener is SASL_SSL (`broker start --secure --tls`): the job's
Kafka tables (the connector's Java clients, trusting the data dir's CA), the runners and the load
generator (librdkafka) all go through TLS. One stack for both, to keep the suite short; SASL without TLS
is the same job configuration less the trust store, and its clients are covered by
tests/integration/test_secure_broker.py."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import loadgen, stack
from ops import kafka_admin, kafka_client, procs
from runners.train import ensure_trained
from tests.e2e.conftest import STACK_POLICY
from udfs import names

pytestmark = pytest.mark.e2e

POLICY = {**STACK_POLICY, "version": 3}
COUNT = 300


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _rest_texts(base: str) -> dict[str, str]:
    """What the job's Flink REST API shows about it: the job, its plan, its config, the cluster's config."""
    (job,) = _get(f"{base}/jobs")["jobs"]
    jid = job["id"]
    out = {}
    for path in (f"/jobs/{jid}", f"/jobs/{jid}/plan", f"/jobs/{jid}/config", "/jobmanager/config",
                 f"/jobs/{jid}/exceptions", "/taskmanagers"):  # fmt: skip
        out[path] = json.dumps(_get(base + path))
    return out


def test_the_secured_stack_answers_every_request_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    base: Path = tmp_path_factory.mktemp("secure-stack")
    models = tmp_path_factory.mktemp("models")
    ensure_trained(models, rows=3000)
    policy = base / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    broker = stack.start_broker(base / "broker", secure=True, tls=True)
    processes = stack.Processes()
    rest_port = procs.free_port()
    try:
        job_file = broker.client_config(names.ROLE_JOB)
        assert job_file is not None
        job_security = kafka_client.load_client_properties(job_file)
        assert job_security.protocol == kafka_client.SASL_SSL and job_security.ca_file
        specs = [
            stack.RunnerSpec("gbt", latency_ms=2, fail_rate=0.05, seed=1),
            stack.RunnerSpec("logreg", latency_ms=1, seed=2),
            stack.RunnerSpec("tree", seed=3),
            stack.RunnerSpec("base", seed=4),
        ]
        stack.start_runners(specs, models, broker.bootstrap, base / "logs", processes,
                            kafka_config=broker.client_config(names.ROLE_RUNNER))  # fmt: skip
        job = stack.start_job(
            policy, broker.bootstrap, base / "archive", base / "flink", base / "job.log", processes,
            extra_args=["-D", f"rest.port={rest_port}"], kafka_config=job_file,
        )  # fmt: skip
        client = broker.client_security(names.ROLE_CLIENT)
        with kafka_client.security_context(client):
            stack.wait_until_answering(broker.bootstrap, job)
            report = loadgen.run_load(broker.bootstrap, count=COUNT, rate=60, settle_ms=8000, bad_records=6,
                                      bad_topic_scores=False)  # fmt: skip
            # a request the job must not answer where it asks: the job role may write results topics only
            p = kafka_client.producer(broker.bootstrap, linger_ms=0)
            rid = f"elsewhere-{report.run_id}"
            req = {"request_id": rid, "return_address": names.TOPIC_POLICIES, "sent_at_ms": int(time.time() * 1000),
                   "features": {}}  # fmt: skip
            p.send_tracked(names.TOPIC_REQUESTS, json.dumps(req).encode(), rid.encode()).get(15)
            p.finish()

        assert report.return_address.startswith(names.client_results_prefix(names.ROLE_CLIENT))
        assert report.sent == COUNT and report.send_errors == 0
        assert report.answered == COUNT, f"unanswered: {report.unanswered_sample}"
        assert report.duplicates == 0 and report.invalid_results == 0

        with kafka_client.security_context(broker.client_security(names.ROLE_OPERATOR)):
            deadline = time.monotonic() + 60
            refused: list[dict[str, Any]] = []
            while not refused and time.monotonic() < deadline:
                dead = kafka_admin.read_json_topic(broker.bootstrap, names.TOPIC_DEAD_LETTERS)
                refused = [d for d in dead if d.get("request_id") == rid]
                time.sleep(1)
        assert [d["reason"] for d in refused] == [names.REASON_BAD_RETURN_ADDRESS]
        assert job.is_running()  # no refused write failed the sink

        # Flink shows none of the job's credentials: not in its REST API (the plan, the job's and the
        # cluster's config), not in its logs.
        password = job_security.password
        assert password
        texts = _rest_texts(f"http://127.0.0.1:{rest_port}")
        for path, text in texts.items():
            assert password not in text, path
        logs = {
            log: log.read_text(errors="replace")
            for log in [job.log_path, *(base / "flink" / "log").glob("*")]
        }
        for log, text in logs.items():
            assert password not in text, log
        # The connector's own clients went through TLS, trusting the data dir's CA (Kafka logs each
        # client's settings).
        everything = "".join(logs.values())
        assert "security.protocol = SASL_SSL" in everything
        assert f"ssl.truststore.location = {job_security.ca_file}" in everything
    finally:
        processes.stop_all()
        broker.stop()

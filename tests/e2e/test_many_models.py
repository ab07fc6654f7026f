"""The 20-model policy on the real job and broker: one runner process serves every model id
(``runners/runner.py --model-ids``), and every request is answered once, with all 20 scores in its
decision log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import loadgen, stack
from runners.train import ensure_trained
from tests.e2e.conftest import RunningJob, TopicReader
from udfs.policy import load_policy

pytestmark = pytest.mark.e2e

MANY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "many-models.yaml")
IDS = [m.id for m in MANY.models]
# The file's models, roles and order, with waits and a deadline generous enough for a busy 2-core
# machine: this test is about 20 scores per request, not about speed.
POLICY: dict[str, Any] = MANY.to_dict() | {
    "deadline_ms": 2000,
    "late_window_ms": 500,
    "models": [
        m | ({"wait_ms": m["wait_ms"] * 20} if "wait_ms" in m else {}) for m in MANY.to_dict()["models"]
    ],
}
COUNT = 200


def test_twenty_models_score_every_request_and_each_is_answered_once(
    rendezvous_job_factory: Callable[[dict[str, Any]], RunningJob], tmp_path_factory: pytest.TempPathFactory
) -> None:
    job = rendezvous_job_factory(POLICY)
    models_dir = tmp_path_factory.mktemp("models")
    ensure_trained(models_dir, rows=3000)
    spec = stack.RunnerSpec("logreg", latency_ms=1, seed=1, model_ids=tuple(IDS))
    stack.start_runners(
        [spec], models_dir, job.bootstrap, tmp_path_factory.mktemp("runner-logs"), job.processes,
        requests_topic=job.requests, scores_topic=job.scores,
    )  # fmt: skip
    decisions = TopicReader(job.bootstrap, job.decisions)
    dead_letters = TopicReader(job.bootstrap, job.dead_letters)
    try:
        report = loadgen.run_load(
            job.bootstrap, count=COUNT, rate=50, requests_topic=job.requests, scores_topic=job.scores,
            return_address=job.results, settle_ms=5000,
        )  # fmt: skip
        assert report.answered == COUNT, f"unanswered: {report.unanswered_sample}"
        assert report.duplicates == 0 and report.conflicting == 0 and report.invalid_results == 0
        # The runner writes the 20 scores of a request together, the incumbent's first: it wins, unless
        # the machine stalls past the 2 s deadline (no_answer: rare, not forbidden, as in test_load_with_runners).
        assert set(report.by_reason) <= {"preferred", "no_answer"}, report.by_reason
        assert report.wins_by_model.get("gbt", 0) >= COUNT * 0.98, report.wins_by_model

        def ours(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in records if str(r.get("request_id", "")).startswith(f"{report.run_id}-")]

        decisions.wait_for(lambda rs: len(ours(rs)) >= COUNT, 30, f"{COUNT} decision records")
        logged = ours(decisions.records)
        assert len(logged) == COUNT and len({d["request_id"] for d in logged}) == COUNT
        for d in logged:
            assert sorted(s["model_id"] for s in d["scores"]) == sorted(IDS), d["request_id"]
            assert not any(s["duplicate"] or s["role"] == "unknown" for s in d["scores"])
        dead_letters.settle(1)
        assert ours(dead_letters.records) == []
    finally:
        decisions.close()
        dead_letters.close()

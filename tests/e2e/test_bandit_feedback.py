"""Thompson sampling in the real job on the real broker: labels teach it which model is right, and what it
learned survives a restart from a checkpoint.

The test plays the models and the labeller: for every request both contenders answer at once; the truth is
a seeded coin, ``logreg`` (the challenger) answers it right 90% of the time and ``gbt`` (the incumbent)
20%. A preference-order policy would always answer with gbt; the bandit should move the official answers to
logreg once labels arrive. What it shows, and what it does not:

- phase "prior": requests before any label, so every model is at the prior: the share is a coin toss;
- phase "learned": after the labels of the first phase went round (labels topic + decisions topic read back
  -> label join -> reward events -> broadcast posteriors), logreg's share of the official answers;
- restart: the job process is stopped (as a crash would) and a new one is started from the newest retained
  checkpoint (``execution.state-recovery.path``); with no labels sent any more, logreg keeps its share only
  if the posteriors came back with the broadcast state (at the prior, 45 of 50 happens with p < 1e-8), and
  the mailbox logs the posteriors it restored. It does not exercise a savepoint upgrade on a session
  cluster, nor parallelism above 1.

Run with ``-s`` to see the shares and the restored posteriors.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import stack
from ops import kafka_client, procs
from tests.e2e.conftest import (
    CHECKPOINT_INTERVAL,
    TopicReader,
    fresh_topics,
    request_record,
    score_record,
    topic_args,
)

pytestmark = pytest.mark.e2e

POLICY = {
    "version": 1,
    "deadline_ms": 1000,
    "decide": "thompson",
    "models": [
        {"id": "gbt", "role": "incumbent", "wait_ms": 800},
        {"id": "logreg", "role": "challenger", "wait_ms": 800},
        {"id": "tree", "role": "backstop"},
    ],
    "late_window_ms": 100,
    "dedupe_retention_ms": 5000,
    "bandit": {"prior": [1, 1], "discount": 1.0},
}
RIGHT = {"gbt": 0.2, "logreg": 0.9}  # how often each model's answer matches the truth
# From a decision record committed to its reward in the mailbox's posteriors: the label join reads the
# decisions topic as the test does (read_committed), and its reward events go to the mailbox in the job.
JOIN_SETTLE_S = 2.0


class Feedback:
    """One job (restartable) on its own topics, with a producer playing the models and the labeller."""

    def __init__(self, bootstrap: str, base: Path) -> None:
        self.bootstrap = bootstrap
        self.base = base
        tag = uuid.uuid4().hex[:8]
        self.topics = fresh_topics(bootstrap, tag, "labels")
        self.group = f"rendezvous-{tag}"
        (base / "policy.yaml").write_text(yaml.safe_dump(POLICY))
        self.producer = kafka_client.producer(bootstrap, client_id="test-bandit", linger_ms=0)
        self.processes = stack.Processes()
        self.job: procs.ManagedProcess | None = None
        self.rng = random.Random(42)
        self.truth: dict[str, int] = {}

    def start(self, restore_from: Path | None = None, log_name: str = "job.log") -> None:
        t = self.topics
        extra = topic_args(t, self.group) + stack.checkpoint_every(CHECKPOINT_INTERVAL)
        if restore_from is not None:
            extra += ["-D", f"execution.state-recovery.path={restore_from.resolve().as_uri()}"]
        self.job = stack.start_job(
            self.base / "policy.yaml", self.bootstrap, self.base / "archive", self.base / "flink",
            self.base / log_name, self.processes, extra_args=extra,
        )  # fmt: skip
        try:
            stack.wait_until_answering(self.bootstrap, self.job, requests_topic=t["requests"])
        except Exception:
            print(self.job.log_tail(80))
            raise

    def stop(self) -> None:
        self.processes.stop_all()
        self.job = None

    def send(self, rid: str) -> None:
        """A request, and both contenders' answers: right with their RIGHT probability."""
        truth = self.rng.randint(0, 1)
        self.truth[rid] = truth
        req = request_record(rid, self.topics["results"])
        self.producer.send(self.topics["requests"], key=rid.encode(), value=json.dumps(req).encode())
        for model, p_right in RIGHT.items():
            label = truth if self.rng.random() < p_right else 1 - truth
            score = score_record(rid, model, 0.9 if label == 1 else 0.1)
            self.producer.send(self.topics["scores"], key=rid.encode(), value=json.dumps(score).encode())
        self.producer.flush()

    def label(self, rids: list[str]) -> None:
        for rid in rids:
            record = {"request_id": rid, "label": self.truth[rid], "labelled_at_ms": int(time.time() * 1000)}
            self.producer.send(self.topics["labels"], key=rid.encode(), value=json.dumps(record).encode())
        self.producer.flush()

    def close(self) -> None:
        self.producer.finish()
        self.stop()


@pytest.fixture(scope="module")
def fb(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feedback]:
    f = Feedback(kafka_bootstrap, tmp_path_factory.mktemp("bandit"))
    try:
        yield f
    finally:
        f.close()


def _phase(fb: Feedback, results: TopicReader, name: str, n: int, rate: float = 25.0) -> list[dict[str, Any]]:
    rids = [f"{name}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for rid in rids:
        fb.send(rid)
        results.settle(1.0 / rate)
    results.wait_for(lambda _: all(results.for_id(r) for r in rids), 60, f"{n} results of phase {name}")
    out = [results.for_id(r)[0] for r in rids]
    assert all(len(results.for_id(r)) == 1 for r in rids)
    return out


def _rewards_applied(decisions: TopicReader, phase: list[dict[str, Any]]) -> None:
    """Once the phase's labels are sent: its decision records committed (a mailbox writes one when it
    closes, ~1.1 s after its request, visible at the next checkpoint), which the label join reads as
    this reader does; then a moment for the join's reward events to reach the mailbox."""
    rids = [r["request_id"] for r in phase]
    decisions.wait_for(lambda _: all(decisions.for_id(r) for r in rids), 60, f"{len(rids)} decision records")
    decisions.settle(JOIN_SETTLE_S)


def _share(results: list[dict[str, Any]], model: str) -> float:
    return sum(r["model_id"] == model for r in results) / len(results)


def _checkpoint_after(state_dir: Path, since: float, timeout_s: float) -> Path:
    """The newest completed checkpoint whose metadata was written after ``since`` (epoch s)."""
    end = time.monotonic() + timeout_s
    while True:
        done = sorted(
            (m for m in (state_dir / "checkpoints").glob("*/chk-*/_metadata") if m.stat().st_mtime > since),
            key=lambda m: int(m.parent.name.split("-")[1]),
        )
        if done:
            return done[-1].parent
        assert time.monotonic() < end, (
            f"no checkpoint completed under {state_dir / 'checkpoints'} in {timeout_s} s"
        )
        time.sleep(0.5)


def test_labels_move_official_answers_to_the_better_model_and_the_posteriors_survive_a_restart(
    fb: Feedback, capsys: pytest.CaptureFixture[str]
) -> None:
    fb.start()
    results = TopicReader(fb.bootstrap, fb.topics["results"])
    decisions = TopicReader(fb.bootstrap, fb.topics["decisions"])
    try:
        prior = _phase(fb, results, "prior", 30)
        # Every answer is the bandit's choice (both contenders answered at once): no fallbacks.
        assert {r["reason"] for r in prior} == {"preferred"}
        fb.label([r["request_id"] for r in prior])
        _rewards_applied(decisions, prior)

        learned = _phase(fb, results, "learned", 50)
        fb.label([r["request_id"] for r in learned])
        _rewards_applied(decisions, learned)
        # Then a checkpoint completed after those rewards (CHECKPOINT_INTERVAL): the restart restores it.
        checkpoint = _checkpoint_after(fb.base / "flink", time.time(), timeout_s=40)
        fb.stop()
        fb.start(restore_from=checkpoint, log_name="job-restored.log")
        results.settle(1.0)
        restored = _phase(fb, results, "restored", 50)  # no labels from here on
        log = (fb.base / "job-restored.log").read_text(errors="replace")
    finally:
        results.close()
        decisions.close()

    line = next((ln for ln in log.splitlines() if "bandit posteriors restored" in ln), None)
    with capsys.disabled():
        print(
            f"\nlogreg's share of official answers: prior {_share(prior, 'logreg'):.2f} (n={len(prior)}), "
            f"learned {_share(learned, 'logreg'):.2f} (n={len(learned)}), after the restore from "
            f"{checkpoint.name} {_share(restored, 'logreg'):.2f} (n={len(restored)})\n{line}"
        )
    # Before any label: a coin toss between the contenders (both shares well away from 0 and 1).
    assert 0.15 <= _share(prior, "logreg") <= 0.85
    # After 30 labels (logreg right 9 times in 10, gbt 2 in 10) the bandit answers with logreg.
    assert _share(learned, "logreg") >= 0.9
    # After the restart, without a single new label: the posteriors came back with the checkpoint.
    assert _share(restored, "logreg") >= 0.9
    assert line is not None, "the restored job did not log restored posteriors"
    means = dict(re.findall(r"(\w+) Beta\([^)]*\) mean ([0-9.]+)", line))
    labels = int(re.search(r"posteriors restored: (\d+) labels", line).group(1))  # type: ignore[union-attr]
    assert labels >= 60  # the first two phases' labels (80), less any the join had not matched yet
    assert float(means["logreg"]) > 0.75 and float(means["gbt"]) < 0.4

"""The fault suite's verifier (harness/faults.py ``verify``): pure counting, checked with hand-made records."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from harness import faults, stack
from harness.faults import BadSent, Observed, verify
from udfs import names

EO = names.DELIVERY_EXACTLY_ONCE
ALO = names.DELIVERY_AT_LEAST_ONCE


def result(rid: str, model: str | None = "gbt", reason: str = "preferred", label: int = 1) -> dict[str, Any]:
    output = None if model is None else {"label": label}
    return {"request_id": rid, "model_id": model, "output": output, "reason": reason, "decided_at_ms": 1}


def decision(rid: str, model: str | None = "gbt", reason: str = "preferred", late: int = 0) -> dict[str, Any]:
    scores = [{"model_id": "gbt", "late": True}] * late + [{"model_id": "tree", "late": False}]
    return {"request_id": rid, "result": result(rid, model, reason), "scores": scores}


SENT = {f"s-t-{i}": 1000.0 + 100 * i for i in range(5)}  # ids s-t-0 .. s-t-4, sent at 1000 .. 1400 ms


def clean(**kw: Any) -> faults.Verdict:
    """verify() on a run where everything went right, with ``kw`` replacing what went otherwise; the
    decision log follows the results given (one record per request, the first result's answer)."""
    results = kw.get("results", [Observed(2000.0 + i, result(rid)) for i, rid in enumerate(SENT)])
    first: dict[str, dict[str, Any]] = {}
    for o in results:
        first.setdefault(o.record["request_id"], o.record)
    decisions = [Observed(9000.0, {"request_id": rid, "result": r, "scores": []}) for rid, r in first.items()]
    args: dict[str, Any] = {
        "scenario": "s",
        "delivery": EO,
        "sent": SENT,
        "results": results,
        "decisions": decisions,
        "archive": (5, 5),
    }
    return verify(**(args | kw))


def test_every_request_answered_once_passes() -> None:
    v = clean()
    assert (v.sent, v.answered, v.lost, v.duplicated_same, v.duplicated_different) == (5, 5, 0, 0, 0)
    assert v.passed and v.problems == []


def test_a_lost_request_is_counted_and_fails() -> None:
    v = clean(results=[Observed(2000.0, result(rid)) for rid in list(SENT)[:4]])
    assert (v.answered, v.lost, v.lost_sample) == (4, 1, ["s-t-4"])
    assert not v.passed and "1 of 5 requests never answered" in v.problems[0]


def test_a_send_the_producer_reported_failed_is_unsent_not_lost() -> None:
    # s-t-4 never reached Kafka: the archive (4 rows) and the answers agree with the 4 that did.
    v = clean(
        results=[Observed(2000.0, result(rid)) for rid in list(SENT)[:4]], unsent={"s-t-4"}, archive=(4, 4)
    )
    assert (v.sent, v.unsent, v.answered, v.lost) == (4, 1, 4, 0)
    assert v.problems == ["1 of 5 requests never reached Kafka (the producer reported their delivery failed), "
                          "e.g. ['s-t-4']"]  # fmt: skip
    # Reported failed but answered all the same (written before the timeout): sent, and nothing wrong.
    v = clean(unsent={"s-t-4"})
    assert (v.sent, v.unsent, v.answered, v.lost) == (5, 0, 5, 0) and v.passed
    # An unsent id this scenario never sent changes nothing.
    assert clean(unsent={"elsewhere-1"}).passed


def test_duplicates_are_split_into_same_and_different_answers() -> None:
    rs = [Observed(2000.0, result(rid)) for rid in SENT]
    rs += [Observed(2500.0, result("s-t-0"))]  # the same answer again
    rs += [Observed(2600.0, result("s-t-1", None, "no_answer"))]  # a different one
    v = clean(results=rs, delivery=ALO, job_restarted=True)
    assert (v.duplicated_same, v.duplicated_different) == (1, 1)
    assert v.different_sample[0]["request_id"] == "s-t-1"
    # The log clock replays its decisions: a different answer fails even across a restart ...
    assert v.problems == [f"1 requests with two different results, e.g. {v.different_sample[:1]}"]
    # ... which only the local clock may give (the same answer again is allowed in both).
    local = clean(results=rs, delivery=ALO, job_restarted=True, clock=names.CLOCK_LOCAL)
    assert local.passed and local.duplicated_different == 1
    strict = clean(results=rs, delivery=ALO, job_restarted=False, clock=names.CLOCK_LOCAL)
    assert len(strict.problems) == 2  # without a restart, at-least-once must not repeat itself either
    eo = clean(results=rs, delivery=EO, job_restarted=True)
    assert any("two different results" in p for p in eo.problems)
    assert any("answered twice" in p for p in eo.problems)


def test_timestamps_alone_do_not_make_a_different_answer() -> None:
    a, b = result("s-t-0"), result("s-t-0") | {"decided_at_ms": 99}
    assert faults.answer_of(a) == faults.answer_of(b)
    assert faults.answer_of(a) != faults.answer_of(result("s-t-0", label=0))


def test_foreign_results_fail() -> None:
    rs = [Observed(2000.0, result(rid)) for rid in SENT] + [Observed(2000.0, result("s-t-x-bad-0"))]
    v = clean(results=rs)
    assert v.foreign == 1 and not v.passed


def test_recovery_gap_and_requests_sent_while_down() -> None:
    # Fault at 1150 ms: s-t-2 (sent 1200) and s-t-3 (1300) go out while nothing answers; the first
    # answer to a request sent after the fault arrives at 5000 ms.
    rs = [
        Observed(1100.0, result("s-t-0")),
        Observed(1180.0, result("s-t-1", "logreg", "fallback")),
        Observed(5000.0, result("s-t-3")),
        Observed(5200.0, result("s-t-2")),
        Observed(5300.0, result("s-t-4")),
    ]
    v = clean(results=rs, fault_ms=1150.0)
    assert v.recovery_s == pytest.approx(3.85)
    assert v.longest_gap_s == pytest.approx((5000 - 1180) / 1000)
    assert (v.sent_while_down, v.answered_after_recovery) == (3, 3)  # sent at 1200, 1300, 1400 ms
    assert v.incumbent_back_s == pytest.approx(3.85)


def test_no_answer_after_the_fault_leaves_recovery_unknown_and_fails() -> None:
    rs = [Observed(1100.0, result("s-t-0"))]
    v = clean(results=rs, fault_ms=1050.0)
    assert v.recovery_s is None and v.lost == 4 and not v.passed


def test_the_silent_incumbent_must_not_win() -> None:
    rs = [Observed(2000.0, result(rid, "logreg", "fallback")) for rid in SENT]
    assert clean(results=rs, incumbent_silent_from=0).passed
    rs[3] = Observed(2000.0, result("s-t-3"))  # gbt answered request 3, after it hung at 2
    v = clean(results=rs, incumbent_silent_from=2)
    assert v.incumbent_wins_after_fault == 1 and not v.passed
    assert clean(results=rs, incumbent_silent_from=4).passed


def test_after_a_fault_it_survives_the_incumbent_must_win_again() -> None:
    """A runner that a broker restart stopped and nobody started again leaves every answer to the
    fallback: all answered, and still a failure."""
    fallback = [Observed(2000.0 + i, result(rid, "logreg", "fallback")) for i, rid in enumerate(SENT)]
    v = clean(results=fallback, fault_ms=1150.0, incumbent_returns=True)
    assert v.lost == 0 and v.incumbent_back_s is None
    assert v.problems == ["no official answer from gbt to a request sent after the fault"]
    assert clean(results=fallback, fault_ms=1150.0).passed  # not asked (the incumbent was silenced)
    # gbt wins request 3, sent at 1300 ms, after the fault at 1150: back 0.853 s after it.
    back = [*fallback[:3], Observed(2003.0, result("s-t-3")), fallback[4]]
    v = clean(results=back, fault_ms=1150.0, incumbent_returns=True)
    assert v.passed and v.incumbent_back_s == pytest.approx(0.85)
    # A gbt win for a request sent before the fault does not count.
    before = [Observed(2000.0, result("s-t-0")), *fallback[1:]]
    assert not clean(results=before, fault_ms=1150.0, incumbent_returns=True).passed
    # A broker restart: what was sent while the broker was still stopping went out at once; gbt must
    # win a request sent once it was gone (1350 ms on), so its win of request 3 (1300 ms) is not enough.
    assert not clean(
        results=back, fault_ms=1150.0, incumbent_returns=True, incumbent_returns_after_ms=1350.0
    ).passed
    assert clean(
        results=back, fault_ms=1150.0, incumbent_returns=True, incumbent_returns_after_ms=1250.0
    ).passed


def test_decision_log_missing_duplicated_and_disagreeing() -> None:
    ds = [Observed(3000.0, decision(rid, late=1)) for rid in list(SENT)[:4]]  # s-t-4 has none
    ds.append(Observed(3100.0, decision("s-t-0", "tree", "backstop")))  # replayed, decided otherwise
    v = clean(decisions=ds, delivery=ALO, job_restarted=True)
    assert (v.decisions_missing, v.decisions_duplicated, v.decisions_disagreeing) == (1, 1, 1)
    assert v.late_scores == 4
    assert [p for p in v.problems if "decision" in p] == ["1 answered requests without a decision record"]
    eo = clean(decisions=ds, delivery=EO)
    assert len([p for p in eo.problems if "decision" in p]) == 3


def test_archive_must_hold_every_request_exactly_once() -> None:
    assert not clean(archive=(6, 5)).passed  # one archived twice
    assert not clean(archive=(4, 4)).passed  # one missing
    assert clean(archive=None).passed  # not checked


def test_every_malformed_record_needs_its_dead_letter() -> None:
    bad = [BadSent("requests-t", 0, 7, "not_json"), BadSent("scores-t", 0, 3, "bad_output")]
    letters = [
        Observed(1.0, {"source_topic": "requests-t", "partition": 0, "offset": 7, "reason": "not_json"}),
        Observed(1.0, {"source_topic": "requests-t", "partition": 0, "offset": 8, "reason": "not_json"}),
    ]
    v = clean(bad=bad, dead_letters=letters)
    assert (v.malformed_sent, v.malformed_dead_lettered) == (2, 1) and not v.passed
    letters.append(Observed(1.0, {"source_topic": "scores-t", "partition": 0, "offset": 3}))
    assert clean(bad=bad, dead_letters=letters).passed


def test_data_caused_restarts_fail_and_infrastructure_ones_do_not() -> None:
    assert not clean(restarts=1, data_restarts=1).passed
    assert clean(restarts=2, data_restarts=0, job_restarted=True).passed


def test_exception_classification() -> None:
    data = (
        "pemja.core.PythonException: <class 'KeyError'>: 'x'\nTraceback (most recent call last):\n  udfs/x.py"
    )
    lost_tm = (
        "org.apache.flink.runtime.jobmaster.JobMasterException: TaskManager with id x is no longer reachable."
    )
    kafka_via_python = (
        "pemja.core.PythonException: ... org.apache.kafka.common.errors.TimeoutException: expired"
    )
    assert faults.is_data_caused(data)
    assert not faults.is_data_caused(lost_tm)
    assert not faults.is_data_caused(kafka_via_python)
    entries = [
        {"timestamp": 100, "stacktrace": data},
        {"timestamp": 200, "stacktrace": lost_tm},
        {"timestamp": 900, "stacktrace": data},  # outside the window
    ]
    n, from_data, firsts = faults.restarts_in(entries, 50, 500)
    assert (n, from_data) == (2, 1)
    assert firsts[1].startswith("org.apache.flink.runtime.jobmaster.JobMasterException")


def test_request_index() -> None:
    assert faults.request_index("model-hang-ab12cd-17") == 17
    assert faults.request_index("model-hang-ab12cd-x-bad-0") == 0
    assert faults.request_index("probe-abc") is None


def test_markdown_lists_every_scenario_and_the_totals() -> None:
    v = clean().to_dict()
    mode = {
        "delivery": EO,
        "wall_s": 10,
        "scenarios": [v | {"scenario": "runner-crash"}],
        "state_bytes_at_end": 2048,
    }
    text = faults.markdown({"date": "d", "machine": {"cpus": 2}, "rate": 20, "seconds": 30, "modes": [mode]})
    assert "| runner-crash | 5 | 5 | 0 | 0 | 0 |" in text
    assert "Total: 5 sent, 5 answered, 0 lost" in text and "2 KB" in text


def test_wins_are_split_at_the_fault() -> None:
    rs = [Observed(2000.0, result(rid)) for rid in list(SENT)[:2]]
    rs += [Observed(2000.0, result(rid, "logreg", "fallback")) for rid in list(SENT)[2:]]
    v = clean(results=rs, fault_ms=1150.0)
    assert v.wins_before_fault == {"gbt": 2} and v.wins_after_fault == {"logreg": 3}


def test_markdown_shows_a_scenario_that_raised() -> None:
    mode = {"delivery": EO, "wall_s": 1, "scenarios": [{"scenario": "savepoint-resume", "error": "boom"}]}
    text = faults.markdown({"date": "d", "machine": {"cpus": 2}, "rate": 20, "seconds": 30, "modes": [mode]})
    assert "| savepoint-resume | ERROR: boom |" in text and "Total: 0 sent" in text


class _Delivered:
    """What a delivery report carries that the traffic reads: the topic and the key."""

    def __init__(self, topic: str, key: bytes | None) -> None:
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key


def test_the_traffic_keeps_the_ids_of_the_requests_whose_delivery_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from confluent_kafka import KafkaError

    topics = {k: f"{k}-x" for k in ("requests", "scores", "results", "canary", "decisions", "dead-letters")}
    traffic = faults.Traffic("127.0.0.1:9", topics, "p-", rate=10.0, seconds=1.0)  # never started: no broker
    try:
        timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
        traffic._on_error(timed_out, _Delivered("requests-x", b"p-3"))
        traffic._on_error(timed_out, _Delivered("scores-x", b"p-4"))  # a malformed score's: not a request
        traffic._on_error(None, _Delivered("requests-x", b"p-5"))  # delivered
    finally:
        traffic.producer.close()
    assert traffic.unsent == {"p-3"} and traffic.send_errors == 2
    assert "delivery to requests-x failed" in capsys.readouterr().err


class _Runner:
    """A runner process as the rig sees it: running, or stopped with an exit code."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.stopped = False

    def is_running(self) -> bool:
        return self.running

    def returncode(self) -> int | None:
        return None if self.running else 1

    def stop(self, grace_s: float = 0.0) -> None:
        self.stopped = True


def test_the_rig_starts_again_a_runner_that_stopped_by_itself(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = faults.Rig(tmp_path, names.DELIVERY_EXACTLY_ONCE, tmp_path / "models")
    runners = {spec.model_id: _Runner(running=spec.model_id != faults.INCUMBENT) for spec in faults.RUNNERS}
    rig.runners = dict(runners)
    rig.processes.started.extend(runners.values())
    started: list[str] = []
    monkeypatch.setattr(rig, "start_runner", lambda spec: started.append(spec.model_id))

    assert rig.restart_stopped_runners() == [faults.INCUMBENT] == started
    assert runners[faults.INCUMBENT].stopped and not any(r.stopped for m, r in runners.items() if m != "gbt")
    assert f"runner {faults.INCUMBENT} had stopped (exit 1); starting it again" in capsys.readouterr().out
    assert rig.restart_stopped_runners() == [] and started == [faults.INCUMBENT]  # the others run on


class _Cluster:
    """A session cluster as ``switch_delivery`` sees it: it records what it was asked to submit."""

    def __init__(self) -> None:
        self.submitted: list[list[str]] = []

    def submit(self, policy: Any, bootstrap: str, job_args: list[str]) -> str:
        self.submitted.append(list(job_args))
        return f"job-{len(self.submitted)}"


def test_switching_delivery_submits_a_job_in_that_mode_with_its_checkpoint_interval(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = faults.Rig(tmp_path, names.DELIVERY_EXACTLY_ONCE, tmp_path / "models", checkpoint_interval="2s")
    cluster = _Cluster()
    rig.cluster = cluster  # type: ignore[assignment]
    rig.broker = type("Broker", (), {"bootstrap": "127.0.0.1:9"})()  # type: ignore[assignment]
    rig.topics = {t: f"{t}-x" for t in ("requests", "scores", "canary", "decisions", "dead-letters")}
    monkeypatch.setattr(rig, "stop_with_savepoint", lambda: ("sp", 0.0))
    monkeypatch.setattr(rig, "wait_running", lambda: None)

    rig.switch_delivery(names.DELIVERY_AT_LEAST_ONCE)  # flink-conf/'s interval
    rig.switch_delivery(names.DELIVERY_EXACTLY_ONCE, "2s")

    shipped, short = cluster.submitted
    assert shipped.count(names.DELIVERY_AT_LEAST_ONCE) == len(names.KAFKA_OUTPUTS)
    assert not any(a.startswith(stack.CHECKPOINT_INTERVAL_KEY) for a in shipped)
    assert short.count(names.DELIVERY_EXACTLY_ONCE) == len(names.KAFKA_OUTPUTS)
    assert " ".join(stack.checkpoint_every("2s")) in " ".join(short)
    assert rig.job_id == "job-2" and rig.delivery == names.DELIVERY_EXACTLY_ONCE


def test_the_rig_gives_its_traffic_a_debug_log_only_when_asked(tmp_path: Any) -> None:
    rig = faults.Rig(tmp_path, names.DELIVERY_EXACTLY_ONCE, tmp_path / "models")
    assert rig.traffic_client_settings("s-") == {}
    rig.kafka_debug = "broker"
    topics = {t: f"{t}-x" for t in ("requests", "scores", "results")}
    traffic = faults.Traffic("127.0.0.1:9", topics, "s-", 10.0, 1.0, rig.traffic_client_settings("s-"))
    log = tmp_path / "kafka-debug" / "s-traffic.log"
    try:
        end = time.monotonic() + 10.0
        while "Added new broker" not in (log.read_text() if log.exists() else "") and time.monotonic() < end:
            traffic.producer.poll(0.05)
    finally:
        traffic.producer.close()
    assert traffic.producer.log.file.closed  # the producer's debug log closes with it
    assert "faults-traffic-s-" in log.read_text()  # its client id: this traffic's producer


def test_an_unknown_kafka_debug_context_stops_the_fault_suite_before_it_starts(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        faults.main(["--kafka-debug", "nonsense", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--kafka-debug: debug contexts 'nonsense': Invalid value \"nonsense\"" in err
    assert not (tmp_path / "out").exists()


def test_after_a_broker_restart_the_rig_restarts_stopped_runners_until_the_incumbent_wins_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class FakeReader:
        def __init__(self) -> None:
            self.results: list[Observed] = []

        def of(self, role: str, prefix: str) -> list[Observed]:
            assert (role, prefix) == ("results", "br-")
            return list(self.results)

    class FakeRig:
        def __init__(self) -> None:
            self.reader = FakeReader()
            self.polls = 0

        def restart_stopped_runners(self) -> list[str]:
            self.polls += 1
            if self.polls == 1:  # found stopped at the first look: started again
                return ["gbt"]
            if self.polls == 3:  # ... and answering two looks later, for a request sent after the fault
                self.reader.results.append(Observed(9500.0, result("br-7")))
            return []

    class FakeTraffic:
        prefix = "br-"
        sent = {"br-1": 1000.0, "br-7": 7000.0}

    monkeypatch.setattr(faults.time, "sleep", lambda s: None)
    rig = FakeRig()
    rig.reader.results.append(Observed(1500.0, result("br-1")))  # a gbt win from before the fault
    traffic: Any = FakeTraffic()
    back_s, restarted = faults._await_incumbent(cast(Any, rig), traffic, since_ms=5000.0)
    assert (back_s, restarted) == (4.5, ["gbt"])

    never: Any = FakeRig()
    never.polls = 10  # nothing stopped, nothing answers
    ticks = iter(range(0, 1000, 10))
    monkeypatch.setattr(faults.time, "monotonic", lambda: float(next(ticks)))
    assert faults._await_incumbent(never, traffic, since_ms=5000.0, timeout_s=30.0) == (None, [])

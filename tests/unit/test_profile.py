"""The profile's bookkeeping: thread names and CPU, py-spy and JFR stacks into stages, the table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from harness import profile

THREAD_PRINT = """2026-12-02 14:00:00
Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing):

"rendezvous mailbox -> (Map, Calc[11] -> kafka_out[12]: Writer) (1/1)#0" #85 prio=5 os_prio=0 cpu=5123.45ms elapsed=60.12s tid=0x00007f0c3c0e1000 nid=0x2e1a runnable  [0x00007f0bd8ffe000]
   java.lang.Thread.State: RUNNABLE

"C2 CompilerThread0" #6 daemon prio=9 os_prio=0 cpu=20000.00ms elapsed=61.00s tid=0x00007f0c3c0e2000 nid=11803 waiting on condition  [0x0000000000000000]
"G1 Conc#0" os_prio=0 cpu=12.50ms elapsed=61.00s tid=0x00007f0c3c0e3000 nid=0x2e1c runnable
"VM Periodic Task Thread" os_prio=0 elapsed=61.00s tid=0x00007f0c3c0e4000 nid=0x2e1d waiting on condition
"""


def test_thread_print_gives_each_threads_name_by_native_id() -> None:
    threads = profile.parse_thread_print(THREAD_PRINT)
    assert threads[0x2E1A] == (
        "rendezvous mailbox -> (Map, Calc[11] -> kafka_out[12]: Writer) (1/1)#0",
        5123.45,
    )
    assert threads[11803] == ("C2 CompilerThread0", 20000.0)
    assert threads[0x2E1C] == ("G1 Conc#0", 12.5)
    assert len(threads) == 3  # a thread without cpu= is not a thread this can measure


def test_thread_cpu_counts_only_threads_alive_at_both_ends() -> None:
    names = {1: "rendezvous mailbox (1/1)#0", 2: "kafka-producer-network-thread | producer-1"}
    cpu = profile.thread_cpu_percent({1: 1000.0, 2: 0.0, 3: 50.0}, {1: 3000.0, 2: 500.0, 4: 10.0}, 2.0, names)
    assert cpu == {1: ("rendezvous mailbox (1/1)#0", 100.0), 2: (names[2], 25.0)}


def test_threads_fall_into_stages_by_name() -> None:
    assert profile.thread_stage("Time Trigger for rendezvous mailbox (1/1)#0").startswith("timers")
    assert profile.thread_stage("rendezvous mailbox -> (Map) (1/1)#0").startswith("mailbox task")
    assert profile.thread_stage("_stream_key_by_map_operator (1/1)#0").startswith("key_by task")
    assert profile.thread_stage("Source Data Fetcher for Source: scores_in[4]").startswith("Kafka source: f")
    assert profile.thread_stage("kafka-producer-network-thread | producer-1") == "Kafka sink: producer I/O"
    assert profile.thread_stage("C1 CompilerThread0") == "JVM: JIT compiler"
    assert profile.thread_stage("flink-pekko.actor.default-dispatcher-5").startswith("other JVM")


def test_py_spy_stacks_are_read_per_thread(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (11752): Dummy-1 90\n"
        "thread (11752): Dummy-1;MailboxFunction._apply (udfs/flink_fn.py:558);"
        "ValueStateImpl.update (pyflink/fn_execution/datastream/embedded/state_impl.py:68) 8\n"
        "thread (0x2e1b);OneInputFunctionOperation.process_element (pyflink/x.py:93) 2\n"
        "not a stack line\n"
    )
    stacks = profile.read_raw(raw)
    assert set(stacks) == {11752, 0x2E1B}
    split = profile.python_split(stacks[11752], profile.JOB_PY_STAGES, profile.JOB_PY_DEFAULT)
    assert split == {None: 90 / 98, "state write (to_json, update)": 8 / 98}  # no frame: outside Python


def test_the_innermost_known_frame_names_the_stage() -> None:
    def stage(*frames: str) -> str:
        return profile.classify(frames, profile.JOB_PY_STAGES, "default")

    glue = "MailboxFunction.process_element (udfs/flink_fn.py:491)"
    assert stage(glue) == "adapter: process_element glue"
    assert stage(glue, "parse_score_or_tick (udfs/wire_in.py:300)") == "parse (wire)"
    assert stage(
        glue, "MailboxFunction._on_record (udfs/flink_fn.py:513)", "on_score (udfs/mailbox.py:237)"
    ) == ("mailbox logic and policy")
    # A function of the same name in another file is not the rule's.
    assert stage("on_score (other/mailbox2.py:1)") == "default"
    assert stage(
        "OneInputFunctionOperation.process_element (pyflink/fn_execution/embedded/operations.py:93)"
    ) == ("default")


def test_a_rule_with_code_matches_only_the_line_that_calls_it() -> None:
    src = Path(profile.REPO_ROOT / "runners" / "runner.py").read_text().splitlines()
    consume = next(i for i, line in enumerate(src, 1) if "consume_ready(" in line)
    other = next(i for i, line in enumerate(src, 1) if "def run(" in line)
    rules = profile.RUNNER_PY_STAGES
    assert (
        profile.classify([f"run (runners/runner.py:{consume})"], rules, "x") == "Kafka consume (librdkafka)"
    )
    assert profile.classify([f"run (runners/runner.py:{other})"], rules, "x") == "runner loop"


JFR_TEXT = """jdk.ExecutionSample {
  startTime = 14:00:01.100 (2026-12-02)
  sampledThread = "rendezvous mailbox (1/1)#0" (javaThreadId = 85)
  state = "STATE_RUNNABLE"
  stackTrace = [
    java.util.HashMap.get(Object) line: 556
    org.apache.flink.runtime.state.heap.CopyOnWriteStateMap.get(Object, Object) line: 275
    org.apache.flink.streaming.runtime.tasks.StreamTask.processInput(MailboxDefaultAction$Controller) line: 638
    ...
  ]
}

jdk.ExecutionSample {
  startTime = 14:00:01.110 (2026-12-02)
  sampledThread = "rendezvous mailbox (1/1)#0" (javaThreadId = 85)
  state = "STATE_RUNNABLE"
  stackTrace = [
    org.apache.kafka.clients.producer.KafkaProducer.doSend(ProducerRecord, Callback) line: 1000
    org.apache.flink.connector.kafka.sink.KafkaWriter.write(Object, SinkWriter$Context) line: 200
  ]
}

jdk.ExecutionSample {
  startTime = 14:00:01.120 (2026-12-02)
  sampledThread = "C2 CompilerThread0" (javaThreadId = 6)
  state = "STATE_RUNNABLE"
  stackTrace = [
    java.lang.Object.wait(long) line: 1
  ]
}
"""


def test_jfr_samples_are_counted_per_thread_and_stage() -> None:
    samples = profile.parse_jfr_samples(JFR_TEXT)
    assert samples == {
        "rendezvous mailbox (1/1)#0": Counter({"state backend": 1, "Kafka producer": 1}),
        "C2 CompilerThread0": Counter({"other Java": 1}),
    }


def test_a_python_thread_is_split_into_its_python_stages_and_its_java_by_jfr() -> None:
    threads = {1: ("rendezvous mailbox (1/1)#0", 80.0), 2: ("C2 CompilerThread0", 10.0)}
    python = {1: {None: 0.5, "parse (wire)": 0.25, "mailbox logic and policy": 0.25}}
    java = {"rendezvous mailbox (1/1)#0": Counter({"state backend": 3, "Kafka producer": 1})}
    report = profile.job_report(threads, python, java, 10.0, 1000.0, 5)
    rows = {r["stage"]: r for r in report["stages"]}
    mailbox = "mailbox task (and the Kafka sink chained to it)"
    assert rows[f"{mailbox}: Python, parse (wire)"]["cpu_percent"] == 20.0
    assert rows[f"{mailbox}: Java, state backend"]["cpu_percent"] == 30.0
    assert rows[f"{mailbox}: Java, Kafka producer"]["cpu_percent"] == 10.0
    assert rows["JVM: JIT compiler"]["cpu_percent"] == 10.0
    # 5,000 records/s in: 20 % of a core is 40 µs per record.
    assert rows[f"{mailbox}: Python, parse (wire)"]["us_per_record"] == 40.0
    assert report["records_per_s"] == 5000 and report["python_percent"] == 40.0
    assert report["cpu_percent_total"] == 90.0
    assert report["stages"][0]["stage"].startswith(mailbox)  # the Python tasks come first
    md = profile.markdown({"date": "d", "job": report})
    assert f"| {mailbox}: Java, state backend | 30.0 | 60.0 |" in md


def test_the_report_says_when_the_jit_was_still_busy_inside_the_window() -> None:
    def md(jit_pct: float) -> str:
        threads = {1: ("rendezvous mailbox (1/1)#0", 50.0), 2: ("C2 CompilerThread0", jit_pct)}
        return profile.markdown({"date": "d", "job": profile.job_report(threads, {}, {}, 10.0, 100.0, 2)})

    assert "The JIT compiler used 40 % of a core inside the window" in md(40.0)
    assert "JIT compiler used" not in md(2.0)

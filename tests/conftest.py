"""Shared pytest fixtures. The Kafka broker starts only when a test asks for it, so unit tests stay fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings

from harness import stack
from ops.broker import KafkaBroker

# No per-example deadline: the machine is shared, and a slow example is not a wrong one (speed is for
# the benchmarks, never a timed assertion in a test).
settings.register_profile("rendezvous", deadline=None)
settings.load_profile("rendezvous")

BOOTSTRAP_ENV = "RDV_TEST_BOOTSTRAP"
# The JVM flags of every Flink JVM the tests start (a job's mini cluster, a session cluster's daemons,
# the Flink CLI), through Flink's JVM_ARGS. By default the client compiler only: a job in a test lives
# for seconds at a few hundred records/s, where C2's compiles only cost CPU (docs/testing.md: what it
# saves, measured side by side). The broker keeps the shipped JIT. Set it empty for the shipped JIT.
TEST_JVM_ARGS_ENV = "RDV_TEST_JVM_ARGS"
TEST_JVM_ARGS_DEFAULT = "-XX:TieredStopAtLevel=1"


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs (RDV_TEST_BOOTSTRAP); we only know its address."""

    bootstrap: str


@pytest.fixture(scope="session", autouse=True)
def flink_jvm_args() -> Iterator[str]:
    """JVM_ARGS for the session: the tests' own flags before any the environment already gives."""
    flags = os.environ.get(TEST_JVM_ARGS_ENV, TEST_JVM_ARGS_DEFAULT)
    value = " ".join(filter(None, [flags, os.environ.get("JVM_ARGS", "")]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JVM_ARGS", value)
        yield value


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker | ExternalBroker]:
    """One real broker for the session: the one in RDV_TEST_BOOTSTRAP if set, else our own on free ports.

    Our own broker's address is exported as RDV_TEST_BOOTSTRAP for the session, so tests that run
    subprocesses find it too; the variable is restored afterwards and the broker stopped by PID.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield ExternalBroker(external)
        return
    broker = stack.start_broker(tmp_path_factory.mktemp("kafka-broker"), topics=())  # tests make their own
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(BOOTSTRAP_ENV, broker.bootstrap)
            yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker | ExternalBroker) -> str:
    """host:port of the session broker."""
    return kafka_broker.bootstrap

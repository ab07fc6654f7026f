"""Topic administration on top of kafka-python's KafkaAdminClient, idempotent so scripts can re-run."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import kafka.errors as kerrors
from kafka import KafkaAdminClient

from udfs.names import ALL_TOPICS

DEFAULT_TIMEOUT_S = 30.0


@contextmanager
def admin_client(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[KafkaAdminClient]:
    """An admin client that is always closed; a TimeoutError (not a kafka error) if nobody answers."""
    try:
        client = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="rendezvous-admin",
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(max(timeout_s, 5.0) * 1000),
        )
    except (kerrors.KafkaTimeoutError, kerrors.KafkaConnectionError) as exc:
        raise TimeoutError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s; "
            "is it running? (python -m ops.broker start --data-dir var/broker)"
        ) from exc
    try:
        yield client
    finally:
        client.close()


def cluster_brokers(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int]:
    """Ids of the brokers the cluster reports as serving (empty while ours is still fenced)."""
    with admin_client(bootstrap, timeout_s) as admin:
        return [int(b["broker_id"]) for b in admin.describe_cluster()["brokers"]]


def list_topics(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> set[str]:
    """Names of all topics, internal ones (like __consumer_offsets) included."""
    with admin_client(bootstrap, timeout_s) as admin:
        return set(admin.list_topics())


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[str]:
    """Create the topics that do not exist yet and wait until all are usable; returns the new ones.

    Topics that already exist are left as they are (even with another partition count).
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    with admin_client(bootstrap, timeout_s) as admin:
        response = admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1} for name in wanted},
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
        created = []
        for topic in response["topics"]:
            error = kerrors.for_code(topic["error_code"])
            if error is kerrors.NoError:
                created.append(topic["name"])
            elif error is not kerrors.TopicAlreadyExistsError:
                raise RuntimeError(
                    f"creating topic {topic['name']!r} on {bootstrap} failed: "
                    f"{error.__name__}: {topic.get('error_message') or ''}"
                )
        _wait_for_topics(admin, wanted, timeout_s, bootstrap)
    return created


def wait_topics(bootstrap: str, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Block until every topic exists with a leader for each partition (creation is asynchronous)."""
    with admin_client(bootstrap, timeout_s) as admin:
        _wait_for_topics(admin, list(names), timeout_s, bootstrap)


def _wait_for_topics(admin: KafkaAdminClient, names: list[str], timeout_s: float, bootstrap: str) -> None:
    try:
        admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))
    except kerrors.KafkaTimeoutError as exc:
        raise TimeoutError(f"topics not ready on {bootstrap} after {timeout_s:.0f}s: {exc}") from exc


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Delete the topics that exist and wait until they are gone; returns the deleted ones."""
    with admin_client(bootstrap, timeout_s) as admin:
        existing = set(admin.list_topics())
        present = [name for name in dict.fromkeys(names) if name in existing]
        if not present:
            return []
        response = admin.delete_topics(present, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        for topic in response["topics"]:
            error = kerrors.for_code(topic["error_code"])
            if error not in (kerrors.NoError, kerrors.UnknownTopicOrPartitionError):
                raise RuntimeError(
                    f"deleting topic {topic['name']!r} on {bootstrap} failed: {error.__name__}"
                )
        deadline = time.monotonic() + timeout_s
        while set(present) & set(admin.list_topics()):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topics {present} still listed on {bootstrap} after {timeout_s:.0f}s")
            time.sleep(0.1)
    return present


def ensure_default_topics(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Create every topic rendezvous uses (udfs.names.ALL_TOPICS); returns the ones that were missing."""
    return create_topics(bootstrap, ALL_TOPICS, timeout_s=timeout_s)


WARM_UP_TOPIC = "_rendezvous-warm-up"


def warm_up_group_coordinator(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Join one consumer group and wait for its assignment, so `__consumer_offsets` exists.

    On a new broker the first group join creates the offsets topic; several clients joining their
    groups at that moment (runners starting together) were seen to wait over a minute for a
    coordinator. Doing it once, alone, right after start-up avoids that.
    """
    from kafka import KafkaConsumer

    create_topics(bootstrap, [WARM_UP_TOPIC], timeout_s=timeout_s)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id="rendezvous-warm-up", enable_auto_commit=False
    )
    try:
        consumer.subscribe([WARM_UP_TOPIC])
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no consumer-group assignment from the broker at {bootstrap} in {timeout_s:.0f} s"
                )
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close()


STARTUP_PROBE_TIMEOUT_S = 15.0


def require_broker(bootstrap: str, who: str, timeout_s: float = STARTUP_PROBE_TIMEOUT_S) -> None:
    """Start-up check: exit with one clear line (no stack trace) if no broker answers at ``bootstrap``.

    Called by the job, the runners and the load generator before they build anything, so an
    unreachable or mistyped address fails in ``timeout_s`` instead of retrying forever inside Kafka
    or Flink clients.
    """
    try:
        cluster_brokers(bootstrap, timeout_s)
    except (TimeoutError, OSError, kerrors.KafkaError, ValueError) as exc:
        message = str(exc) if bootstrap in str(exc) else f"cannot reach Kafka at {bootstrap}: {exc}"
        raise SystemExit(f"error: {who}: {' '.join(message.split())}") from None

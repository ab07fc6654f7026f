"""Topic administration on top of confluent-kafka's AdminClient, idempotent so scripts can re-run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from ops import kafka_client, procs
from udfs.names import ALL_TOPICS

DEFAULT_TIMEOUT_S = 30.0


def _no_broker(bootstrap: str, timeout_s: float) -> str:
    if kafka_client.current_security() is None and _listens(bootstrap):
        # a secured broker hangs up on a client that does not authenticate; librdkafka only says "down"
        return (
            f"the server at {bootstrap} accepts connections but did not answer a Kafka client without "
            f"authentication within {timeout_s:.0f}s (still starting? a broker started with --secure needs "
            "--kafka-config FILE, <data-dir>/clients/<role>.properties)"
        )
    return (
        f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s; "
        "is it running? (python -m ops.broker start --data-dir var/broker)"
    )


def _listens(bootstrap: str) -> bool:
    """Whether the first bootstrap address accepts TCP connections."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        return procs.port_accepts(host.strip("[]") or "127.0.0.1", int(port))
    except (ValueError, OSError):
        return False


class KafkaAuthError(RuntimeError):
    """The broker refused this client's credentials; the message is one line (never the password)."""


def authentication_refused(bootstrap: str, error: KafkaError) -> str:
    """One line: whose credentials the broker at ``bootstrap`` refused, and librdkafka's reason."""
    security = kafka_client.current_security()
    who = "this client" if security is None else f"{security.describe()} from {security.source or 'code'}"
    reason = error.str().split(" (after ", 1)[0]  # librdkafka appends timing details
    return f"Kafka at {bootstrap} refused the credentials of {who}: {reason}"


@contextmanager
def admin_client(
    bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S, quiet: bool = False
) -> Iterator[AdminClient]:
    """An admin client that has reached the broker; a TimeoutError (not a Kafka error) if nobody
    answers within ``timeout_s``, a KafkaAuthError at once if the broker refuses the credentials.
    ``quiet``: librdkafka prints nothing meanwhile."""
    errors = kafka_client.ClientErrors("rendezvous-admin", quiet=quiet)
    client = kafka_client.admin(bootstrap, quiet=quiet, errors=errors)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            client.poll(0)  # serves error_cb: an authentication failure is reported there
            refused = exc.args[0] if kafka_client.is_authentication_error(exc.args[0]) else errors.last
            if kafka_client.is_authentication_error(refused):
                assert refused is not None
                raise KafkaAuthError(authentication_refused(bootstrap, refused)) from None
            if time.monotonic() >= deadline:
                raise TimeoutError(_no_broker(bootstrap, timeout_s)) from exc
    yield client


def cluster_brokers(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S, quiet: bool = False) -> list[int]:
    """Ids of the brokers the cluster reports as serving (empty while ours is still fenced)."""
    with admin_client(bootstrap, timeout_s, quiet) as admin:
        try:
            described = admin.describe_cluster(request_timeout=timeout_s).result()
        except KafkaException as exc:
            raise TimeoutError(_no_broker(bootstrap, timeout_s)) from exc
        return [int(node.id) for node in described.nodes]


def list_topics(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> set[str]:
    """Names of all topics, internal ones (like __consumer_offsets) included."""
    with admin_client(bootstrap, timeout_s) as admin:
        return set(admin.list_topics(timeout=timeout_s).topics)


def partition_counts(
    bootstrap: str, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, int]:
    """Partitions per topic (0 for a topic that does not exist)."""
    with admin_client(bootstrap, timeout_s) as admin:
        topics = admin.list_topics(timeout=timeout_s).topics
        return {n: len(topics[n].partitions) if n in topics else 0 for n in names}


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet and wait until all are usable; returns the new ones.

    Topics that already exist are left as they are (even with another partition count or configs), and
    are not asked for again: on a secured broker a role may use a topic it has no right to create.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    with admin_client(bootstrap, timeout_s) as admin:
        existing = admin.list_topics(timeout=timeout_s).topics
        missing = [n for n in wanted if n not in existing]
        created: list[str] = []
        if missing:
            new = [NewTopic(n, partitions, 1, config=dict(configs or {})) for n in missing]
            futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
            created = _settle(
                futures, missing, KafkaError.TOPIC_ALREADY_EXISTS, f"creating topic {{}} on {bootstrap}"
            )
        _wait_for_topics(admin, wanted, timeout_s, bootstrap)
    return created


def _settle(futures: Mapping[str, Any], names: list[str], harmless: int, doing: str) -> list[str]:
    """Wait for each topic's admin result; the topics it took effect on. The ``harmless`` error (the
    topic already there, or already gone) is no failure; any other raises one line naming the topic
    (``doing``: what was asked, with {} for the topic)."""
    done = []
    for name in names:
        try:
            futures[name].result()
            done.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != harmless:
                raise RuntimeError(
                    f"{doing.format(repr(name))} failed: {error.name()}: {error.str()}"
                ) from None
    return done


def wait_topics(bootstrap: str, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Block until every topic exists with a leader for each partition (creation is asynchronous)."""
    with admin_client(bootstrap, timeout_s) as admin:
        _wait_for_topics(admin, list(names), timeout_s, bootstrap)


def _ready(admin: AdminClient, names: list[str], timeout_s: float) -> list[str]:
    """The topics of ``names`` that are not usable yet (missing, or a partition without a leader)."""
    topics = admin.list_topics(timeout=timeout_s).topics
    missing = []
    for name in names:
        meta = topics.get(name)
        if (
            meta is None
            or meta.error is not None
            or not meta.partitions
            or any(p.leader < 0 or p.error is not None for p in meta.partitions.values())
        ):
            missing.append(name)
    return missing


def _wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float, bootstrap: str) -> None:
    deadline = time.monotonic() + timeout_s
    while missing := _ready(admin, names, timeout_s):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready on {bootstrap} after {timeout_s:.0f}s: {missing}")
        time.sleep(0.1)


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Delete the topics that exist and wait until they are gone; returns the deleted ones."""
    with admin_client(bootstrap, timeout_s) as admin:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
        present = [name for name in dict.fromkeys(names) if name in existing]
        if not present:
            return []
        futures = admin.delete_topics(present, operation_timeout=timeout_s, request_timeout=timeout_s)
        _settle(futures, present, KafkaError.UNKNOWN_TOPIC_OR_PART, f"deleting topic {{}} on {bootstrap}")
        deadline = time.monotonic() + timeout_s
        while set(present) & set(admin.list_topics(timeout=timeout_s).topics):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topics {present} still listed on {bootstrap} after {timeout_s:.0f}s")
            time.sleep(0.1)
    return present


def ensure_default_topics(
    bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S, partitions: int = 1
) -> list[str]:
    """Create every topic rendezvous uses (udfs.names.ALL_TOPICS); returns the ones that were missing."""
    return create_topics(bootstrap, ALL_TOPICS, partitions=partitions, timeout_s=timeout_s)


WARM_UP_TOPIC = "_rendezvous-warm-up"


def warm_up_group_coordinator(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Join one consumer group and wait for its assignment, so `__consumer_offsets` exists.

    On a new broker the first group join creates the offsets topic; several clients joining their
    groups at that moment (runners starting together) were seen to wait over a minute for a
    coordinator. Doing it once, alone, right after start-up avoids that.
    """
    create_topics(bootstrap, [WARM_UP_TOPIC], timeout_s=timeout_s)
    consumer = kafka_client.consumer(
        bootstrap, "rendezvous-warm-up", topics=[WARM_UP_TOPIC], client_id="rendezvous-warm-up",
        enable_auto_commit=False,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no consumer-group assignment from the broker at {bootstrap} in {timeout_s:.0f} s"
                )
            consumer.take(100, 0.2)
    finally:
        consumer.close()


STARTUP_PROBE_TIMEOUT_S = 15.0


def require_broker(bootstrap: str, who: str, timeout_s: float = STARTUP_PROBE_TIMEOUT_S) -> None:
    """Start-up check: exit with one clear line (no stack trace) if no broker answers at ``bootstrap``.

    Called by the job, the runners and the load generator before they build anything, so an
    unreachable or mistyped address fails in ``timeout_s`` instead of retrying forever inside Kafka
    or Flink clients. librdkafka says nothing meanwhile: the line below is all the output.
    """
    try:
        cluster_brokers(bootstrap, timeout_s, quiet=True)
    except (TimeoutError, OSError, KafkaException, ValueError, KafkaAuthError) as exc:
        message = str(exc) if bootstrap in str(exc) else f"cannot reach Kafka at {bootstrap}: {exc}"
        raise SystemExit(f"error: {who}: {' '.join(message.split())}") from None


def read_json_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every JSON record now in a (single- or multi-partition) topic, from the beginning to the end."""
    if not partition_counts(bootstrap, [topic], timeout_s)[topic]:
        return []
    records: list[dict[str, Any]] = []
    for msg in kafka_client.read_to_end(bootstrap, [topic], timeout_s):
        try:
            records.append(json.loads(msg.value() or b""))
        except ValueError:
            records.append({"_unreadable": True})
    return records

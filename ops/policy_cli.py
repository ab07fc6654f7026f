"""`rendezvous policy`: change the running job's policy live, through the policies topic.

    rendezvous policy check FILE                      validate a policy file (exit 2 if it is refused)
    rendezvous policy publish --bootstrap B FILE      validate, then publish it to the policies topic
    rendezvous policy show --bootstrap B              the versions on the topic and which one is newest

The job reads the policies topic as broadcast state (``udfs.flink_fn.MailboxFunction``): a document
whose version is higher than the one in force takes over for requests that arrive after it, within
about a second; requests already open finish under the version they started with. ``publish`` runs the
same validation as the job (``udfs.policy``) first, so a bad file is refused here with the message
naming the field; it also refuses a version that is not higher than the newest valid one on the topic
(the job would refuse it as ``stale_policy_version``). The job still validates every document itself:
anything it refuses goes to the dead letters and changes nothing.

Documents are the policy file's structure as JSON (defaults filled in), keyed ``v<version>`` on a
compacted topic, so a job started without a savepoint finds every published version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ops import kafka_admin, kafka_client
from udfs import names
from udfs.policy import Policy, PolicyError, load_policy
from udfs.policy_registry import parse_document

EXIT_REFUSED = 2


def ensure_policies_topic(bootstrap: str, topic: str = names.TOPIC_POLICIES) -> bool:
    """Create the policies topic (one partition, compacted) if it is missing; True if it was created.

    One partition keeps the documents in publication order for every reader.
    """
    configs = names.TOPIC_CONFIGS.get(names.TOPIC_POLICIES, {})
    created = kafka_admin.create_topics(bootstrap, [topic], partitions=1, configs=dict(configs))
    return topic in created


def document(policy: Policy) -> bytes:
    """The policy as the JSON document the job reads (the file's structure, every default explicit)."""
    return json.dumps(policy.to_dict(), separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class Published:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the record's timestamp (producer time)


def publish(
    bootstrap: str, policy: Policy, topic: str = names.TOPIC_POLICIES, timeout_s: float = 30.0
) -> Published:
    """Write one policy document and wait for the broker's acknowledgement (acks=all)."""
    producer = kafka_client.producer(bootstrap, client_id="rendezvous-policy", linger_ms=0)
    try:
        done = producer.send_tracked(
            topic, document(policy), f"v{policy.version}".encode(), timestamp_ms=int(time.time() * 1000)
        ).get(timeout_s)
    finally:
        producer.finish(timeout_s=5)
    assert done.topic is not None and done.partition is not None and done.offset is not None
    return Published(done.topic, done.partition, done.offset, done.timestamp_ms or 0)


@dataclass(frozen=True)
class TopicRecord:
    offset: int
    version: int | None  # None: not a valid policy document
    error: str | None


def read_topic(
    bootstrap: str, topic: str = names.TOPIC_POLICIES, timeout_s: float = 30.0
) -> list[TopicRecord]:
    """Every document on the topic, in order, each validated as the job would (versions unchecked)."""
    if not kafka_admin.partition_counts(bootstrap, [topic], timeout_s)[topic]:
        return []
    out: list[TopicRecord] = []
    for m in kafka_client.read_to_end(bootstrap, [topic], timeout_s):
        try:
            out.append(TopicRecord(m.offset() or 0, parse_document(m.value()).version, None))
        except PolicyError as e:
            out.append(TopicRecord(m.offset() or 0, None, str(e)))
    return out


def newest_version(records: list[TopicRecord]) -> int | None:
    """The highest version of a valid document on the topic (what a job ends on, if above its file)."""
    versions = [r.version for r in records if r.version is not None]
    return max(versions) if versions else None


def _load(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as e:
        raise SystemExit(_refuse(f"invalid policy: {e}")) from None


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous policy", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a policy file; changes nothing")
    check.add_argument("file", type=Path)
    pub = sub.add_parser("publish", help="validate a policy file, then publish it to the policies topic")
    pub.add_argument("file", type=Path)
    show = sub.add_parser("show", help="the documents on the policies topic")
    for p in (pub, show):
        p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
        p.add_argument("--topic", default=names.TOPIC_POLICIES, help="the job's --policies-topic")
        kafka_client.add_config_argument(p)
    a = ap.parse_args(argv)

    if a.command == "check":
        checked = _load(a.file)
        print(f"ok: {a.file} is a valid policy, version {checked.version} ({checked.decide})")
        return 0
    policy = _load(a.file) if a.command == "publish" else None  # a bad file never reaches the broker
    kafka_client.use_config_file(a.kafka_config, "rendezvous policy")
    kafka_admin.require_broker(a.bootstrap, "rendezvous policy")
    ensure_policies_topic(a.bootstrap, a.topic)
    if policy is None:
        records = read_topic(a.bootstrap, a.topic)
        for r in records:
            print(
                f"offset {r.offset}: " + (f"v{r.version}" if r.version is not None else f"refused: {r.error}")
            )
        newest = newest_version(records)
        print(f"newest valid version: {'none' if newest is None else f'v{newest}'}")
        return 0
    newest = newest_version(read_topic(a.bootstrap, a.topic))
    if newest is not None and policy.version <= newest:
        return _refuse(
            f"version: must be higher than the newest published version (v{newest}), got {policy.version} "
            f"(the job would refuse it as {names.REASON_STALE_POLICY_VERSION})"
        )
    done = publish(a.bootstrap, policy, a.topic)
    print(
        f"published policy v{policy.version} ({policy.decide}) to {done.topic} "
        f"(partition {done.partition}, offset {done.offset}); the job applies it to requests that arrive "
        "from now on, if its version is higher than the one in force"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

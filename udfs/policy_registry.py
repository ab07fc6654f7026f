"""Live policy versions: which published documents are accepted, and which policy decides a mailbox.

Pure Python, no pyflink. The job starts with the policy file (the *base* policy, version N); policy
documents (``schemas/policy.schema.json``) published on the policies topic (``ops/policy_cli.py``) are
offered here one by one:

- a document is **accepted** only if it is UTF-8 JSON within ``MAX_DOCUMENT_BYTES``, passes
  ``udfs.policy.parse_policy`` (the same validation as the file, the same field-naming messages) and
  its version is **higher** than the version in force; anything else is **refused** with a dead-letter
  reason (``bad_policy``, ``stale_policy_version``) and changes nothing;
- the version in force (``current``) is the highest accepted one, or the base policy's if that is
  higher (a savepoint upgrade with a newer file wins over older live versions, and the reverse);
- **atomic per request**: a mailbox records the version in force when its request arrived
  (``Mailbox.policy_version``) and is decided, closed and counted under that version to the end, even
  if newer versions arrive meanwhile (``policy_for``). The registry therefore keeps superseded versions:
  the newest ``MAX_KEPT_VERSIONS`` accepted ones (a count, not a time, so every parallel instance of
  the broadcast function evicts the same ones). A mailbox whose version is no longer known (evicted
  after that many newer versions, or a file version of the job before a savepoint upgrade) is decided
  by the version in force, which is what a savepoint upgrade always did; its result says so in
  ``policy_version``.

The Flink adapter keeps the accepted versions in broadcast state (``to_state`` / ``from_state``: version
-> versioned JSON text, never pickled project classes) and this registry as its in-memory index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from udfs import names, wire_in
from udfs.policy import Policy, PolicyError, parse_policy
from udfs.wire_in import Source
from udfs.wire_out import DeadLetterRecord, dead_letter_to_dict

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_KEPT_VERSIONS = 16
STATE_FORMAT = 1


@dataclass(frozen=True)
class Accepted:
    """A document that became the version in force; ``evicted`` versions leave the registry."""

    policy: Policy
    previous_version: int
    evicted: tuple[int, ...] = ()


@dataclass(frozen=True)
class Refused:
    """A document that changed nothing: a dead-letter reason and a message naming the problem."""

    reason: str
    detail: str
    version: int | None = None  # the document's version, when one could be read


def parse_document(raw: bytes | bytearray | str | None) -> Policy:
    """A policy document as published (JSON text of the policy file's structure) -> Policy.

    Raises ``PolicyError`` with a message naming the problem (the field, for an invalid policy).

    >>> parse_document(b'{"version": 3, "deadline_ms": 50, "models": [{"id": "gbt", "role": "incumbent"}]}').version
    3
    >>> parse_document(b'{"version": 3}')
    Traceback (most recent call last):
    ...
    udfs.policy.PolicyError: deadline_ms: required
    """
    if raw is None:
        raise PolicyError("document: empty (a record without a value)")
    data = bytes(raw) if isinstance(raw, bytes | bytearray) else raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise PolicyError(f"document: {len(data)} bytes, over the limit of {MAX_DOCUMENT_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"document: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise PolicyError(f"document: not JSON ({e})") from None
    return parse_policy(obj)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _document_version(raw: bytes | bytearray | str | None) -> int | None:
    """The ``version`` of a refused document, if it can be read at all (for the dead letter's detail)."""
    try:
        obj = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError, TypeError):
        return None
    v = obj.get("version") if isinstance(obj, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class PolicyRegistry:
    """The base policy plus the accepted live versions; mutated only by ``offer`` (deterministically)."""

    def __init__(self, base: Policy, published: Iterable[Policy] = (), feedback: bool = True) -> None:
        self.base = base
        # Without the job's label feedback (--labels-topic) a thompson policy would draw from its prior
        # for ever: a uniform random choice dressed up as learning. Such documents are refused.
        self.feedback = feedback
        self._published: dict[int, Policy] = {}
        for p in sorted(published, key=lambda p: p.version):
            self._published[p.version] = p
        self._evict()

    @property
    def current(self) -> Policy:
        """The policy new requests are decided under: the highest version known."""
        if self._published:
            newest = self._published[max(self._published)]
            if newest.version > self.base.version:
                return newest
        return self.base

    @property
    def versions(self) -> tuple[int, ...]:
        """Every version a mailbox can be decided under, ascending (the base one included)."""
        return tuple(sorted({self.base.version, *self._published}))

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The base policy and every kept published one, ascending by version."""
        by_version = {self.base.version: self.base, **self._published}
        return tuple(by_version[v] for v in sorted(by_version))

    def policy_for(self, version: int | None) -> Policy:
        """The policy a mailbox recorded (None: no request yet, so the one in force)."""
        if version is not None:
            if version in self._published:
                return self._published[version]
            if version == self.base.version:
                return self.base
        return self.current

    def offer(self, raw: bytes | bytearray | str | None) -> Accepted | Refused:
        """Validate a published document against the version in force; accept it or refuse it.

        >>> doc = '{"version": %d, "deadline_ms": 50, "models": [{"id": "gbt", "role": "incumbent"}]}'
        >>> registry = PolicyRegistry(parse_document(doc % 3))
        >>> registry.offer(doc % 4).previous_version, registry.current.version
        (3, 4)
        >>> registry.offer(doc % 4).reason
        'stale_policy_version'
        """
        try:
            policy = parse_document(raw)
        except PolicyError as e:
            return Refused(names.REASON_BAD_POLICY, f"policy refused: {e}", _document_version(raw))
        if policy.decide == "thompson" and not self.feedback:
            return Refused(
                names.REASON_BAD_POLICY,
                "policy refused: decide: thompson needs label feedback, and this job runs without "
                "--labels-topic",
                policy.version,
            )
        current = self.current.version
        if policy.version <= current:
            return Refused(
                names.REASON_STALE_POLICY_VERSION,
                f"policy refused: version: must be higher than the version in force ({current}), "
                f"got {policy.version}",
                policy.version,
            )
        self._published[policy.version] = policy
        return Accepted(policy, current, self._evict())

    def _evict(self) -> tuple[int, ...]:
        extra = sorted(self._published)[:-MAX_KEPT_VERSIONS]
        for v in extra:
            del self._published[v]
        return tuple(extra)

    # --- broadcast state: version -> versioned JSON -------------------------------------------------

    def to_state(self) -> dict[str, str]:
        """What the broadcast state holds: every kept published version (the base comes from the file)."""
        return {state_key(v): state_value(p) for v, p in self._published.items()}

    @classmethod
    def from_state(
        cls, base: Policy, entries: Iterable[tuple[str, str]], feedback: bool = True
    ) -> PolicyRegistry:
        """Rebuild from broadcast state entries; an entry that cannot be read is skipped (never raises)."""
        published = (p for _, text in entries if (p := read_state_value(text)) is not None)
        return cls(base, published, feedback=feedback)


def dead_letter(
    refused: Refused, raw: bytes | bytearray | str | None, source: Source, now_ms: int
) -> DeadLetterRecord:
    """The dead-letter record (``schemas/dead_letter.schema.json``) for a refused document: the document
    as read (``udfs.wire_in.dead_letter``: its text cut, or base64 when it is not UTF-8), no request id."""
    return dead_letter_to_dict(wire_in.dead_letter(refused.reason, refused.detail, source, raw), now_ms)


def state_key(version: int) -> str:
    return str(version)


def state_value(policy: Policy) -> str:
    return json.dumps({"format": STATE_FORMAT, "policy": policy.to_dict()}, separators=(",", ":"))


def read_state_value(text: str | None) -> Policy | None:
    """A stored policy, or None if the entry is not a readable one of this format."""
    try:
        d = json.loads(text) if text is not None else None
        if not isinstance(d, Mapping) or d.get("format") != STATE_FORMAT:
            return None
        return parse_policy(d.get("policy"))
    except (ValueError, TypeError):  # PolicyError is a ValueError
        return None

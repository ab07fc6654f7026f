"""The project's Kafka client: confluent-kafka (librdkafka), with the project's settings in one place.

Every producer, consumer and admin client of the runners, the labeller, the load generator, the bench,
the fault suite, the demo and the tests is made here, so one change of a setting reaches all of them:

- ``partitioner: murmur2_random``: a keyed record lands in the partition Java's default partitioner
  (``Utils.toPositive(Utils.murmur2(key)) % partitions``) picks, like the Flink Kafka sink's ticks
  and every Java client; librdkafka's own default (``consistent_random``, CRC32) would not.
  ``java_partition`` computes the same placement in Python, for tests and checks.
- ``linger.ms: 1`` (producers): less added latency when the load is light (docs/performance-history.md).
- ``fetch.wait.max.ms: 100`` (consumers): the broker answers a waiting fetch as soon as a record
  arrives (``fetch.min.bytes`` 1), so this bounds the idle fetch rate (10 a second per consumer), not
  the latency; librdkafka's 500 ms would only slow down re-fetches after an assignment changes.
- ``enable.partition.eof: false``; ``isolation.level`` ``read_uncommitted`` unless a reader asks for
  ``read_committed`` (librdkafka's default is read_committed; Java's and kafka-python's is not).
- Security (``--kafka-config FILE``): one Kafka client properties file with Java keys
  (``security.protocol``, ``sasl.mechanism``, ``sasl.jaas.config``; what ``rendezvous broker start
  --secure`` writes for each role), read by ``load_client_properties`` and turned into librdkafka
  settings (``ClientSecurity.librdkafka``) for every client made here, and into the Flink Kafka
  connector's ``properties.*`` table options (``ClientSecurity.flink_table_options``) for the job. A
  process uses one file (``use_config_file``; ``security_context`` switches it for a block).

librdkafka's own log lines (a refused connection is logged ~10 times a second per client while a broker
is down) go through ``LibrdkafkaLog``: each kind at most once a minute per client, with a count, like
``ClientErrors`` does for the errors.

librdkafka semantics the callers must keep: a producer's delivery callbacks run only inside
``poll()``/``flush()`` (``Producer.send`` polls after each record; long-lived producers must keep
polling or flush); ``Consumer.consume(n, timeout)`` returns records and events (errors, EOF) mixed
(``records()`` separates them); consumers must be ``close()``d to commit and leave their group.
A failed delivery is never dropped silently: it is counted on ``producer.delivery_errors`` and logged.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from udfs import names

PARTITIONER = "murmur2_random"
LINGER_MS = 1
FETCH_WAIT_MAX_MS = 100
# A subscribed topic missing from the first metadata answer is found at the next refresh (5 min by
# default); 10 s bounds that for a consumer started before its topic.
METADATA_REFRESH_MS = 10_000
READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"
OFFSET_BEGINNING = confluent_kafka.OFFSET_BEGINNING
OFFSET_END = confluent_kafka.OFFSET_END
ERROR_NOTE_EVERY_S = 60.0  # the same client error is printed at most this often (with a count)
# How often a client's statistics tell BrokerWatch which brokers it knows, and how long it may know none.
BROKER_WATCH_EVERY_MS = 5_000
NO_BROKER_FATAL_S = 15.0
DELIVERY_ERRORS_LOGGED = 5  # the first failed deliveries are printed one by one, later ones counted

_COMMON: dict[str, Any] = {
    # The broker closes idle connections after 10 min; librdkafka reconnects when needed and would
    # print a line each time.
    "log.connection.close": False,
}


# --- Java's partitioner, in Python ----------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (signed 32-bit), as the Java clients and the Flink sink hash keys."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and ``murmur2_random``) picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- errors are counted and shown, never dropped ---------------------------------------------------


class _OnceAMinute:
    """Counts lines by kind and prints each kind at most once a minute (``always``: every time), with
    how many of that kind came since the last one printed: what a client says while a broker is down."""

    def __init__(self, name: str, out: TextIO | None = None) -> None:
        self.name = name
        self.out = out
        self.counts: Counter[str] = Counter()
        self._noted: dict[str, tuple[float, int]] = {}  # kind -> (when printed, count then)

    def note(self, kind: str, text: str, *, quiet: bool = False, always: bool = False) -> None:
        self.counts[kind] += 1
        if quiet:
            return
        now = time.monotonic()
        noted = self._noted.get(kind)
        if noted is not None and now - noted[0] < ERROR_NOTE_EVERY_S and not always:
            return
        since = "" if noted is None else f" ({self.counts[kind] - noted[1]} of this kind since the last note)"
        self._noted[kind] = (now, self.counts[kind])
        print(f"kafka {self.name}: {text}{since}", file=self.out or sys.stderr, flush=True)


class LibrdkafkaLog(_OnceAMinute):
    """librdkafka's ``logger``: each log facility (``FAIL``, ``METADATAUPDATE``, ...) of one client at
    most once a minute; what librdkafka would otherwise print to stderr itself, once per reconnect
    attempt. confluent-kafka calls ``log(level, "%s [%s] %s", fac, client, text)`` from
    ``poll``/``consume``/``flush``."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        fac = str(args[0]) if args else "LOG"
        text = str(args[-1]) if len(args) >= 3 else (fmt % args if args else fmt)
        self.note(fac, f"[{fac}] {text}")


class DebugLog:
    """librdkafka's ``logger`` for a client with ``debug`` contexts on: every line, stamped with this
    machine's wall clock, appended to a file (the usual logger shows each facility once a minute). For
    reproducing a client's behaviour, e.g. librdkafka's issue 5301 under the fault suite's broker restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8", buffering=1)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        now = time.time()
        stamp = f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d}"
        self.file.write(f"{stamp} {level} {text}\n")

    def close(self) -> None:
        self.file.close()


class _Discard:
    """A librdkafka ``logger`` that keeps nothing: the throwaway client that checks debug contexts."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        pass


def check_debug_contexts(contexts: str) -> None:
    """ValueError, with librdkafka's own word, unless every one of ``contexts`` ("metadata,broker") is
    a debug context librdkafka knows."""
    try:
        confluent_kafka.Producer({"debug": contexts, "logger": _Discard()}).flush(0)
    except KafkaException as e:
        raise ValueError(f"debug contexts {contexts!r}: {e.args[0].str()}") from None


def debug_settings(contexts: str, path: Path) -> dict[str, Any]:
    """A client's settings (overrides) for librdkafka's debug log of ``contexts`` into ``path``."""
    check_debug_contexts(contexts)
    return {"debug": contexts, "logger": DebugLog(path)}


class ClientErrors(_OnceAMinute):
    """librdkafka's ``error_cb``: counts every client error and prints each kind at most once a minute.

    Most are transient (librdkafka reconnects and retries by itself: a broker restarting, all brokers
    down); a fatal one is printed every time.
    """

    def __init__(self, name: str, out: TextIO | None = None, quiet: bool = False) -> None:
        super().__init__(name, out)
        self.quiet = quiet
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.last = error
        self.note(error.name(), error.str(), quiet=self.quiet, always=error.fatal())

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BrokerWatch:
    """librdkafka's ``stats_cb``: fails the client once it has had no broker to ask for metadata for
    ``fatal_after_s``, so that its process stops and is started again rather than waiting forever.

    librdkafka 2.13 to 2.16 (its issue 5301, open) drops every broker a Metadata answer does not list,
    and stops looking for others when that answer lists none. A single broker in controlled shutdown
    answers so for a moment: in two of six broker restarts under the fault tests (2026-12-06), the
    traffic's producer then knew no broker at all and delivered nothing more. A broker merely down
    stays known (``learned``), and so does the bootstrap address until the first answer
    (``configured``): only the stuck client is left with none. The KafkaException it raises comes out of
    the ``poll()``, ``consume()`` or ``flush()`` that served the statistics.
    """

    USABLE = frozenset({"learned", "configured"})  # the other sources: "internal", "logical"

    def __init__(
        self, name: str, fatal_after_s: float = NO_BROKER_FATAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.fatal_after_s = fatal_after_s
        self.clock = clock
        self.none_since: float | None = None  # when the statistics first showed no usable broker
        self.brokers = 0  # usable brokers in the last statistics
        self.updates = 0  # statistics seen

    def __call__(self, stats_json: str) -> None:
        self.updates += 1
        brokers = json.loads(stats_json).get("brokers") or {}
        self.brokers = sum(1 for b in brokers.values() if b.get("source") in self.USABLE)
        if self.brokers:
            self.none_since = None
            return
        now = self.clock()
        if self.none_since is None:
            self.none_since = now
        elif now - self.none_since >= self.fatal_after_s:
            raise KafkaException(
                KafkaError(
                    KafkaError._FATAL,
                    f"{self.name} has known no broker for {now - self.none_since:.0f} s and looks for none "
                    "(librdkafka drops brokers a Metadata answer does not list): start it again",
                    fatal=True,
                )
            )


def is_fatal(error: BaseException) -> bool:
    """A Kafka error its client will not recover from (fenced by a twin, no broker left): its process
    must stop, or start the client anew."""
    first = error.args[0] if isinstance(error, KafkaException) and error.args else None
    return isinstance(first, KafkaError) and (first.fatal() or first.code() == KafkaError._FATAL)


def _watched(watch: BrokerWatch) -> dict[str, Any]:
    return {"statistics.interval.ms": BROKER_WATCH_EVERY_MS, "stats_cb": watch}


class DeliveryErrors:
    """A producer's default delivery callback: counts failed deliveries and prints the first few."""

    def __init__(self, name: str, out: TextIO | None = None) -> None:
        self.name = name
        self.out = out
        self.count = 0
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            return
        self.count += 1
        self.last = error
        if self.count <= DELIVERY_ERRORS_LOGGED or self.count % 1000 == 0:
            print(
                f"kafka {self.name}: delivery to {msg.topic()} failed: {error.str()} "
                f"({self.count} failed so far)",
                file=self.out or sys.stderr,
                flush=True,
            )


class Delivery:
    """What became of one record sent with ``Producer.send_tracked``: filled in by its callback."""

    __slots__ = ("_producer", "done", "error", "topic", "partition", "offset", "timestamp_ms")

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.done = False
        self.error: KafkaError | None = None
        self.topic: str | None = None
        self.partition: int | None = None
        self.offset: int | None = None
        self.timestamp_ms: int | None = None

    def _report(self, error: KafkaError | None, msg: Message) -> None:
        self.done = True
        self.error = error
        self.topic, self.partition, self.offset = msg.topic(), msg.partition(), msg.offset()
        self.timestamp_ms = msg.timestamp()[1]
        if error is not None:
            self._producer.delivery_errors(error, msg)

    def get(self, timeout_s: float = 30.0) -> Delivery:
        """Wait for the broker's answer; KafkaException if the record was not delivered."""
        deadline = time.monotonic() + timeout_s
        while not self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no delivery report for a record to {self.topic} within {timeout_s:.0f} s"
                )
            self._producer.poll(min(left, 0.1))
        if self.error is not None:
            raise KafkaException(self.error)
        return self


# --- security: one Kafka client properties file (Java keys) for every client ----------------------

PLAINTEXT = "PLAINTEXT"
SASL_PLAINTEXT = "SASL_PLAINTEXT"
SASL_SSL = "SASL_SSL"
SSL = "SSL"
PROTOCOLS = (PLAINTEXT, SASL_PLAINTEXT, SASL_SSL, SSL)
SCRAM_SHA_512 = "SCRAM-SHA-512"
SCRAM_SHA_256 = "SCRAM-SHA-256"
PLAIN = "PLAIN"
# Kafka's login module of each SASL mechanism (the class named in sasl.jaas.config).
LOGIN_MODULES = {
    SCRAM_SHA_512: "org.apache.kafka.common.security.scram.ScramLoginModule",
    SCRAM_SHA_256: "org.apache.kafka.common.security.scram.ScramLoginModule",
    PLAIN: "org.apache.kafka.common.security.plain.PlainLoginModule",
}
# The Flink Kafka connector's fat jar relocates Kafka's classes under this package: a JAAS login module
# named in its ``properties.sasl.jaas.config`` must carry it (the unshaded class is not on its path).
FLINK_SHADED_PREFIX = "org.apache.flink.kafka.shaded."
# The keys a properties file may hold. Anything else is refused rather than ignored: a security setting
# this reader does not translate (a key store for mutual TLS, say) must not be dropped silently.
KEY_PROTOCOL = "security.protocol"
KEY_MECHANISM = "sasl.mechanism"
KEY_JAAS = "sasl.jaas.config"
KEY_TRUSTSTORE = "ssl.truststore.location"
KEY_TRUSTSTORE_TYPE = "ssl.truststore.type"
KEY_ENDPOINT_CHECK = "ssl.endpoint.identification.algorithm"
KNOWN_KEYS = (KEY_PROTOCOL, KEY_MECHANISM, KEY_JAAS, KEY_TRUSTSTORE, KEY_TRUSTSTORE_TYPE, KEY_ENDPOINT_CHECK)
_JAAS_RE = re.compile(
    r"\s*([A-Za-z_$][\w.$]*)\s+(required|requisite|sufficient|optional)\b(.*?);?\s*\Z", re.S
)
_JAAS_OPTION_RE = re.compile(r'\s*([\w.]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s";]+))')


class KafkaConfigError(ValueError):
    """A Kafka client properties file this project cannot use; the message is one line naming the file
    and the key (and never a secret's value)."""


def read_properties(path: Path) -> dict[str, str]:
    """A Java ``.properties`` file as ``java.util.Properties.load`` reads it: ``#``/``!`` comments,
    ``key=value``, ``key: value`` or ``key value``, a trailing backslash continues the line, and the
    escapes ``\\t \\n \\r \\f \\uXXXX`` (any other escaped character stands for itself).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KafkaConfigError(
            f"{path}: cannot read the Kafka client properties: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError:
        raise KafkaConfigError(f"{path}: not a text file (UTF-8 Kafka client properties)") from None
    out: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:  # an odd number of backslashes at the end: the line goes on
            logical += line[:-1]
            continue
        logical += line
        key, value = _split_property(logical)
        out[key] = value
        logical = ""
    if logical:
        key, value = _split_property(logical)
        out[key] = value
    return out


def _split_property(line: str) -> tuple[str, str]:
    """One logical line: the key ends at the first unescaped ``=``, ``:`` or blank."""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest)


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client authenticates to the broker (and whether it encrypts), as read from one Kafka
    client properties file (``load_client_properties``). ``password`` is never shown by ``repr``."""

    source: str  # the file it came from (for messages), or "" when built in code
    protocol: str = PLAINTEXT
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # a PEM file of the certificates that sign the broker's (TLS)
    verify_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol in (SASL_PLAINTEXT, SASL_SSL)

    @property
    def tls(self) -> bool:
        return self.protocol in (SSL, SASL_SSL)

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka settings (confluent-kafka) of this file."""
        out: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            out.update({"sasl.mechanisms": self.mechanism, "sasl.username": self.username,
                        "sasl.password": self.password})  # fmt: skip
        if self.tls:
            if self.ca_file:
                out["ssl.ca.location"] = self.ca_file
            out["ssl.endpoint.identification.algorithm"] = "https" if self.verify_hostname else "none"
        return out

    def java(self, login_module_prefix: str = "") -> dict[str, str]:
        """The Java client settings of this file (``login_module_prefix``: the package a relocated
        Kafka lives under, ``FLINK_SHADED_PREFIX`` inside the Flink connector's fat jar)."""
        out = {KEY_PROTOCOL: self.protocol}
        if self.sasl:
            assert self.mechanism is not None and self.username is not None and self.password is not None
            module = login_module_prefix + LOGIN_MODULES[self.mechanism]
            out[KEY_MECHANISM] = self.mechanism
            out[KEY_JAAS] = (
                f'{module} required username="{_jaas_quote(self.username)}" '
                f'password="{_jaas_quote(self.password)}";'
            )
        if self.tls:
            if self.ca_file:
                out[KEY_TRUSTSTORE_TYPE] = "PEM"
                out[KEY_TRUSTSTORE] = self.ca_file
            out[KEY_ENDPOINT_CHECK] = "https" if self.verify_hostname else ""
        return out

    def flink_table_options(self) -> dict[str, str]:
        """The Flink Kafka connector's table options (``properties.*``) of this file, with the login
        module under the connector's shaded package."""
        return {f"properties.{k}": v for k, v in self.java(FLINK_SHADED_PREFIX).items()}

    def describe(self) -> str:
        """Who this file authenticates as, for messages (never the password)."""
        if not self.sasl:
            return f"{self.protocol} without authentication"
        return f"user {self.username!r} ({self.mechanism} over {self.protocol})"


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _jaas_unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def load_client_properties(path: Path) -> ClientSecurity:
    """Read one Kafka client properties file (Java keys, usable as-is by Kafka's console tools);
    ``KafkaConfigError`` with one line naming the file and the key if it cannot be used."""
    props = read_properties(path)
    for key in props:
        if key not in KNOWN_KEYS:
            raise KafkaConfigError(
                f"{path}: {key}: not a setting rendezvous translates for its clients "
                f"(known: {', '.join(KNOWN_KEYS)})"
            )
    protocol = _choice(path, props, KEY_PROTOCOL, "protocol", PROTOCOLS)
    mechanism = username = password = None
    if protocol in (SASL_PLAINTEXT, SASL_SSL):
        mechanism, username, password = _sasl(path, props)
    elif KEY_MECHANISM in props or KEY_JAAS in props:
        key = KEY_MECHANISM if KEY_MECHANISM in props else KEY_JAAS
        raise KafkaConfigError(f"{path}: {key}: set, but {KEY_PROTOCOL} {protocol} does not use SASL")
    ca_file, verify = _tls(path, props, protocol)
    return ClientSecurity(str(path), protocol, mechanism, username, password, ca_file, verify)


def _choice(path: Path, props: Mapping[str, str], key: str, what: str, allowed: Sequence[str]) -> str:
    """A required setting that is one of ``allowed`` (case-insensitive), upper-cased; else one line."""
    value = props.get(key)
    if value is None:
        raise KafkaConfigError(f"{path}: {key}: missing (one of {', '.join(allowed)})")
    if value.strip().upper() not in allowed:
        raise KafkaConfigError(f"{path}: {key}: unknown {what} {value!r} (one of {', '.join(allowed)})")
    return value.strip().upper()


def _sasl(path: Path, props: Mapping[str, str]) -> tuple[str, str, str]:
    mechanism = _choice(path, props, KEY_MECHANISM, "mechanism", tuple(LOGIN_MODULES))
    jaas = props.get(KEY_JAAS)
    if jaas is None:
        raise KafkaConfigError(
            f'{path}: {KEY_JAAS}: missing (e.g. {LOGIN_MODULES[mechanism]} required username="..." '
            'password="...";)'
        )
    options = _jaas_options(path, mechanism, jaas)
    return mechanism, options["username"], options["password"]


def _jaas_options(path: Path, mechanism: str, jaas: str) -> dict[str, str]:
    """The options of a ``sasl.jaas.config`` login entry for ``mechanism``, username and password
    required (messages never quote the entry: it holds the password)."""
    m = _JAAS_RE.fullmatch(jaas)
    if m is None:
        raise KafkaConfigError(
            f'{path}: {KEY_JAAS}: not a JAAS login entry (expected: LoginModuleClass required username="..." '
            'password="...";)'
        )
    module, flag, rest = m.groups()
    expected = LOGIN_MODULES[mechanism]
    if module not in (expected, FLINK_SHADED_PREFIX + expected):
        raise KafkaConfigError(
            f"{path}: {KEY_JAAS}: {mechanism} needs the login module {expected}, not {module}"
        )
    if flag != "required":
        raise KafkaConfigError(f"{path}: {KEY_JAAS}: the login module must be 'required', not {flag!r}")
    options: dict[str, str] = {}
    pos = 0
    while pos < len(rest.rstrip()):
        o = _JAAS_OPTION_RE.match(rest, pos)
        if o is None:
            raise KafkaConfigError(f"{path}: {KEY_JAAS}: cannot read the options after the login module")
        options[o.group(1)] = _jaas_unquote(o.group(2)) if o.group(2) is not None else o.group(3)
        pos = o.end()
    for option in ("username", "password"):
        if not options.get(option):
            raise KafkaConfigError(f'{path}: {KEY_JAAS}: no {option}="..." in the login entry')
    return options


def _tls(path: Path, props: Mapping[str, str], protocol: str) -> tuple[str | None, bool]:
    tls_keys = [k for k in (KEY_TRUSTSTORE, KEY_TRUSTSTORE_TYPE, KEY_ENDPOINT_CHECK) if k in props]
    if protocol not in (SSL, SASL_SSL):
        if tls_keys:
            raise KafkaConfigError(
                f"{path}: {tls_keys[0]}: set, but {KEY_PROTOCOL} {protocol} does not use TLS"
            )
        return None, True
    ca_file = props.get(KEY_TRUSTSTORE)
    if ca_file is not None:
        kind = props.get(KEY_TRUSTSTORE_TYPE, "JKS").strip().upper()
        if kind != "PEM":
            raise KafkaConfigError(
                f"{path}: {KEY_TRUSTSTORE_TYPE}: must be PEM (librdkafka reads no {kind} trust store)"
            )
        ca = Path(ca_file) if Path(ca_file).is_absolute() else path.parent / ca_file
        if not ca.is_file():
            raise KafkaConfigError(f"{path}: {KEY_TRUSTSTORE}: no such file {ca_file!r}")
        ca_file = str(ca.resolve())
    verify = props.get(KEY_ENDPOINT_CHECK, "https").strip().lower()
    if verify not in ("https", ""):
        raise KafkaConfigError(f"{path}: {KEY_ENDPOINT_CHECK}: must be https or empty, got {verify!r}")
    return ca_file, verify == "https"


def write_client_properties(path: Path, security: ClientSecurity, comment: str = "") -> None:
    """Write ``security`` as a Kafka client properties file (Java keys) readable only by its owner
    (mode 0600, set before any secret is written)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{k}={_escape_property(v)}" for k, v in security.java().items()]
    write_secret(path, "\n".join(lines) + "\n")


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\")


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600 from its creation, whatever the umask), replacing
    any file of that name in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


# The security every client of this process uses unless it is given its own (None: PLAINTEXT, no
# authentication: the broker started without --secure). Set once by a command's --kafka-config.
_process_security: ClientSecurity | None = None


def use_security(security: ClientSecurity | None) -> None:
    """Make ``security`` the default of every client this process makes from now on."""
    global _process_security
    _process_security = security


def current_security() -> ClientSecurity | None:
    """The security this process's clients use by default (None: none)."""
    return _process_security


@contextmanager
def security_context(security: ClientSecurity | None) -> Iterator[ClientSecurity | None]:
    """The clients made inside the block use ``security`` (one process acting in several roles: the
    demo, tests); the previous default comes back after it."""
    before = _process_security
    use_security(security)
    try:
        yield security
    finally:
        use_security(before)


def use_config_file(path: Path | None, who: str) -> ClientSecurity | None:
    """A command's ``--kafka-config``: read the file and make it this process's default; a file that
    cannot be used stops the command with one line (``error: <who>: <file>: <key>: ...``)."""
    if path is None:
        return None
    try:
        security = load_client_properties(Path(path))
    except KafkaConfigError as e:
        raise SystemExit(f"error: {who}: {e}") from None
    use_security(security)
    return security


KAFKA_CONFIG_HELP = (
    "Kafka client properties file (Java keys security.protocol, sasl.mechanism, sasl.jaas.config; "
    "`rendezvous broker start --secure` writes one per role under <data-dir>/clients/); default: no "
    "authentication (a broker started without --secure)"
)


def add_config_argument(parser: Any) -> None:
    """The ``--kafka-config FILE`` option of every command that talks to Kafka."""
    parser.add_argument("--kafka-config", type=Path, default=None, metavar="FILE", help=KAFKA_CONFIG_HELP)


def results_prefix(security: ClientSecurity | None = None) -> str:
    """Where this process's own results topics go: ``results.`` without authentication, else the
    prefix the client principal may read (``udfs.names.client_results_prefix``)."""
    security = _process_security if security is None else security
    if security is None or not security.username:
        return f"{names.TOPIC_RESULTS_DEFAULT}."
    return names.client_results_prefix(security.username)


def _assigned_group(security: ClientSecurity | None) -> str:
    """A reader's throw-away group (``assign()`` only): one its principal may describe."""
    chosen = _chosen(security)
    principal = chosen.username if chosen is not None else None
    return f"{names.assigned_group_prefix(principal)}{uuid.uuid4().hex[:12]}"


def _chosen(security: ClientSecurity | None) -> ClientSecurity | None:
    return _process_security if security is None else security


def _security_settings(security: ClientSecurity | None) -> dict[str, Any]:
    chosen = _chosen(security)
    return {} if chosen is None else chosen.librdkafka()


def is_authentication_error(error: KafkaError | None) -> bool:
    """Whether librdkafka reported that the broker refused this client's credentials."""
    return error is not None and error.code() in (
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
    )


# --- clients -------------------------------------------------------------------------------------


def _config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides as librdkafka keys: ``linger_ms=0`` is ``linger.ms``."""
    return {k.replace("_", "."): v for k, v in overrides.items()}


def _client_log(config: dict[str, Any], name: str, errors_out: TextIO | None) -> Any:
    """A client's librdkafka ``logger``: one given in its settings (a ``DebugLog``, ``debug_settings``),
    taken out of them so the client owns it, else the usual ``LibrdkafkaLog``."""
    given = config.pop("logger", None)
    return LibrdkafkaLog(name, errors_out) if given is None else given


def _close_log(log: Any) -> None:
    """Close a client's debug log with the client (the usual logger holds nothing open)."""
    if isinstance(log, DebugLog):
        log.close()


class Producer(confluent_kafka.Producer):
    """A confluent-kafka producer with the project's settings; see ``producer()``."""

    def __init__(self, config: dict[str, Any], name: str, errors_out: TextIO | None = None) -> None:
        self.name = name
        self.delivery_errors = DeliveryErrors(name, errors_out)
        self.client_errors = ClientErrors(name, errors_out)
        self.log = _client_log(config, name, errors_out)
        self.broker_watch = BrokerWatch(f"producer {name}")
        super().__init__(
            {
                "on_delivery": self.delivery_errors,
                "error_cb": self.client_errors,
                "logger": self.log,
                **_watched(self.broker_watch),
                **config,
            }
        )

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        on_delivery: Any = None,
    ) -> None:
        """``produce()``, waiting (and serving callbacks) while librdkafka's local queue is full, then
        serving the delivery callbacks that are due."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self.produce(topic, value, key, **kwargs)
                break
            except BufferError:  # queue.buffering.max.messages in flight: let some go out
                self.poll(0.05)
        self.poll(0)

    def send_tracked(self, topic: str, value: bytes | None, key: bytes | None = None, **kw: Any) -> Delivery:
        """``send()`` that returns the record's ``Delivery`` (its partition and offset once acknowledged)."""
        delivery = Delivery(self)
        self.send(topic, value, key, on_delivery=delivery._report, **kw)
        return delivery

    def close(self) -> bool:
        done = bool(super().close())
        _close_log(self.log)
        return done

    def finish(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued within ``timeout_s``, drop the rest (counted as delivery errors) and
        close. Returns how many records were not delivered."""
        left = self.flush(timeout_s)
        if left:
            self.purge(in_queue=True, in_flight=True, blocking=False)
            self.flush(1.0)  # serves the purged records' delivery reports
        self.close()
        return left


def producer_config(
    bootstrap: str, client_id: str = "rendezvous", *, security: ClientSecurity | None = None, **overrides: Any
) -> dict[str, Any]:
    """The project's producer settings (librdkafka keys); ``overrides`` use ``_`` for ``.``;
    ``security`` (None: the process's, ``use_security``) adds the authentication settings."""
    return {
        **_COMMON,
        **_security_settings(security),
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "partitioner": PARTITIONER,
        "linger.ms": LINGER_MS,
        "acks": "all",
        **_config(overrides),
    }


def producer(
    bootstrap: str,
    *,
    client_id: str = "rendezvous",
    errors_out: TextIO | None = None,
    security: ClientSecurity | None = None,
    **overrides: Any,
) -> Producer:
    """A producer with the project's settings (``producer_config``); ``overrides`` are librdkafka
    settings with ``_`` for ``.`` (``linger_ms=0``)."""
    config = producer_config(bootstrap, client_id, security=security, **overrides)
    return Producer(config, client_id, errors_out)


def consume_ready(consumer: Any, max_records: int, timeout_s: float) -> list[Message]:
    """What ``consumer.consume(max_records, timeout_s)`` reads, but returned as soon as one record (or
    event) is there, with whatever else is queued then. ``consume(n, t)`` itself waits until it has n
    records or t has passed: with n = 1000 and t = 50 ms that added up to 50 ms to every hop whenever
    fewer than 1000 records were waiting (measured: one hop p50 59 ms against 25 ms, and 206 ms at
    t = 200 ms)."""
    batch: list[Message] = consumer.consume(max_records, 0)
    if batch or timeout_s <= 0:
        return batch
    batch = consumer.consume(1, timeout_s)
    if batch and max_records > 1:
        batch += consumer.consume(max_records - 1, 0)
    return batch


class Consumer(confluent_kafka.Consumer):
    """A confluent-kafka consumer with the project's settings; see ``consumer()``."""

    def __init__(self, config: dict[str, Any], name: str, errors_out: TextIO | None = None) -> None:
        self.name = name
        self.client_errors = ClientErrors(name, errors_out)
        self._subscribed: list[str] = []
        self.log = _client_log(config, name, errors_out)
        self.broker_watch = BrokerWatch(f"consumer {name}")
        super().__init__(
            {"error_cb": self.client_errors, "logger": self.log, **_watched(self.broker_watch), **config}
        )

    def close(self) -> None:
        super().close()
        _close_log(self.log)

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None:
        self._subscribed = list(topics)
        super().subscribe(list(topics), *args, **kwargs)

    def subscription(self) -> list[str]:
        """The topics passed to ``subscribe()`` (librdkafka does not say)."""
        return list(self._subscribed)

    def take(self, max_records: int = 1000, timeout_s: float = 0.1) -> list[Message]:
        """``consume_ready()`` without the events: the records only (see ``records()``)."""
        return records(consume_ready(self, max_records, timeout_s), self.client_errors)

    def assign_all(
        self, topics: Iterable[str], offset: int = OFFSET_BEGINNING, timeout_s: float = 30.0
    ) -> list[TopicPartition]:
        """Assign every partition of ``topics`` (waiting up to ``timeout_s`` for each to exist), from
        ``offset`` (OFFSET_BEGINNING, OFFSET_END, or a number)."""
        tps = [
            TopicPartition(t, p, offset) for t in topics for p in partitions(self, t, timeout_s, wait=True)
        ]
        self.assign(tps)
        return tps

    def assign_at_end(self, topics: Iterable[str], timeout_s: float = 30.0) -> list[TopicPartition]:
        """Assign every partition of ``topics`` at its end offset now, resolved before returning: a
        record written after this call is never skipped (OFFSET_END would resolve at the first fetch)."""
        tps = []
        for t in topics:
            for p in partitions(self, t, timeout_s, wait=True):
                high = self.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s, cached=False)[1]
                tps.append(TopicPartition(t, p, high))
        self.assign(tps)
        return tps


def consumer_config(
    bootstrap: str,
    group_id: str | None = None,
    client_id: str = "rendezvous",
    isolation: str = READ_UNCOMMITTED,
    offset_reset: str = "earliest",
    *,
    security: ClientSecurity | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The project's consumer settings (librdkafka keys); see ``consumer()``."""
    if isolation not in (READ_COMMITTED, READ_UNCOMMITTED):
        raise ValueError(f"isolation must be {READ_COMMITTED} or {READ_UNCOMMITTED}, got {isolation!r}")
    return {
        **_COMMON,
        **_security_settings(security),
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "group.id": group_id or _assigned_group(security),
        "enable.auto.commit": group_id is not None,
        "auto.offset.reset": offset_reset,
        "isolation.level": isolation,
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "enable.partition.eof": False,
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **_config(overrides),
    }


def consumer(
    bootstrap: str,
    group_id: str | None = None,
    *,
    topics: Sequence[str] = (),
    client_id: str = "rendezvous",
    isolation: str = READ_UNCOMMITTED,
    offset_reset: str = "earliest",
    errors_out: TextIO | None = None,
    security: ClientSecurity | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with the project's settings (``consumer_config``), subscribed to ``topics`` if given.

    Without ``group_id`` it is for ``assign()`` only (``assign_all``): librdkafka needs a group id, so
    it gets a throw-away one and commits nothing.
    """
    config = consumer_config(
        bootstrap, group_id, client_id, isolation, offset_reset, security=security, **overrides
    )
    c = Consumer(config, client_id, errors_out)
    if topics:
        c.subscribe(list(topics))
    return c


def admin(
    bootstrap: str,
    *,
    quiet: bool = False,
    client_id: str = "rendezvous-admin",
    security: ClientSecurity | None = None,
    errors: ClientErrors | None = None,
) -> AdminClient:
    """An admin client; ``quiet``: librdkafka prints nothing (a start-up probe says one line itself);
    ``errors``: the ``error_cb`` (default: a new ``ClientErrors``)."""
    config: dict[str, Any] = {
        **_COMMON,
        **_security_settings(security),
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "error_cb": errors if errors is not None else ClientErrors(client_id, quiet=quiet),
        "logger": LibrdkafkaLog(client_id),
    }
    if quiet:
        config["log_level"] = 0
    return AdminClient(config)


# --- reading -------------------------------------------------------------------------------------


def records(messages: Sequence[Message], errors: Callable[[KafkaError], None] | None = None) -> list[Message]:
    """The messages that are records; consumer events (partition EOF, a missing topic, transport
    errors: librdkafka recovers from those) go to ``errors``. A fatal error raises KafkaException: a
    message's error says so by its code, ``_FATAL`` (measured: a static member fenced by another with
    its ``group.instance.id`` got that code with ``fatal()`` False)."""
    out = []
    for m in messages:
        error = m.error()
        if error is None:
            out.append(m)
            continue
        if error.fatal() or error.code() == KafkaError._FATAL:
            raise KafkaException(error)
        if errors is not None and error.code() != KafkaError._PARTITION_EOF:
            errors(error)
    return out


def partitions(client: Any, topic: str, timeout_s: float = 10.0, wait: bool = False) -> list[int]:
    """The topic's partition ids ([] if it does not exist); ``wait``: until it has some, up to
    ``timeout_s`` (then RuntimeError). KafkaException TOPIC_AUTHORIZATION_FAILED if this client's
    principal may not see it (a secured broker)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        meta = client.list_topics(topic, timeout=left).topics.get(topic)
        if (
            meta is not None
            and meta.error is not None
            and meta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        ):
            # A secured broker's answer, not a topic still being created: a reader assigned to it would
            # wait in silence (librdkafka reports nothing for an assigned partition it may not read).
            raise KafkaException(meta.error)
        found = sorted(meta.partitions) if meta is not None and meta.error is None else []
        if found or not wait:
            return found
        if time.monotonic() >= deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s (does it exist?)")
        time.sleep(0.2)


def read_to_end(
    bootstrap: str,
    topics: Iterable[str],
    timeout_s: float = 30.0,
    isolation: str = READ_COMMITTED,
) -> list[Message]:
    """Every record now in ``topics`` (all partitions), from the beginning to where each partition ends
    (for read_committed, its last stable offset), in each partition's order."""
    c = consumer(bootstrap, isolation=isolation, client_id="rendezvous-reader", enable_partition_eof=True)
    out: list[Message] = []
    try:
        pending = {(tp.topic, tp.partition) for tp in c.assign_all(topics, timeout_s=timeout_s)}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {sorted({t for t, _ in pending})} on {bootstrap} did not reach the end "
                    f"within {timeout_s:.0f} s"
                )
            for m in c.consume(1000, 0.2):
                error = m.error()
                if error is None:
                    out.append(m)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic() or "", m.partition() or 0))
                else:
                    records([m], c.client_errors)
    finally:
        c.close()
    return out


def end_offsets(
    client: Any, tps: Iterable[TopicPartition], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the high watermark (for a read_committed consumer, the last stable offset)."""
    out = {}
    for tp in tps:
        query = TopicPartition(tp.topic, tp.partition)
        low_high = client.get_watermark_offsets(query, timeout=timeout_s, cached=False)
        out[(tp.topic, tp.partition)] = low_high[1]
    return out

"""The secured broker (`rendezvous broker start --secure`): principals, their files, and their ACLs.

One SASL/SCRAM-SHA-512 principal per role (``udfs.names.ROLES``), created when the storage is formatted
(KIP-900), so the broker starts with its users; ``StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``: a principal may do only what an ACL below allows. Passwords
are made here (``secrets``) and written only into files readable by their owner (mode 0600):

    <data-dir>/clients/<role>.properties   one per role: Kafka client properties (Java keys), usable
                                           as-is by Kafka's console tools and by --kafka-config
    <data-dir>/admin.properties            the broker's own principal (a super user): inter-broker,
                                           controller, ACL and topic set-up
    <data-dir>/server.properties           the broker's config, with the listeners' JAAS entries

Never in argv (the storage format reads its credentials from a JVM argument file, deleted after
use), never in logs (Kafka prints password settings as ``[hidden]``).

What each role may do (``role_grants``), from the topics, groups and transactional ids of
``udfs.names`` and the job's topology (jobs/rendezvous_job.py):

- ``client``: write ``requests``; create and read the topics under its own results prefix
  ``results.<principal>.`` (``names.client_results_prefix``) and nothing else;
- ``runner``: read ``requests`` (groups ``runner-*``), write ``scores``;
- ``job``: read ``requests``, ``scores``, ``policies``, ``labels``, ``decisions`` (group
  ``rendezvous-job*``); write ``scores`` (ticks), ``canary``, ``decisions``, ``dead-letters`` and every
  results topic (prefix ``results``; it creates a return address that does not exist yet, as the
  unsecured broker's auto-creation does); transactional ids ``rendezvous-job*`` (exactly-once sinks);
- ``operator``: read and write ``policies`` (the only principal that changes a policy), read the job's
  outputs for operations (``canary``, ``decisions``, ``dead-letters``) and the ``labels`` (``eval
  collect``), write drift ``alerts`` (``eval drift --every``) and the ``audit`` trail (``eval autopilot``, which
  also publishes policies), and administer topics (create, delete,
  alter, describe their configs);
- ``labeller``: read ``requests`` (group ``labeller``), write ``labels``;
- every principal: DESCRIBE its own throw-away consumer groups ``<principal>.assigned-*``, which
  librdkafka looks up even for a reader that assigns partitions itself and commits nothing.

The controller listener stays on 127.0.0.1 and authenticates with SASL/PLAIN against a static entry
in server.properties: SCRAM credentials live in the metadata log the controller itself serves, so
Kafka does not offer SCRAM between broker and controller; PLAIN sends the password in clear, which
on loopback only the machine's root could read.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from ops import kafka_admin, kafka_client, procs
from udfs import names

CLIENTS_DIR = "clients"
ADMIN_PROPERTIES = "admin.properties"
MECHANISM = kafka_client.SCRAM_SHA_512
SCRAM_ITERATIONS = 8192
LISTENER = "SASL_PLAINTEXT"  # the clients' (and inter-broker) listener's name and protocol
TLS_LISTENER = "SASL_SSL"  # the same with --tls
LOOPBACK = "127.0.0.1"
CONTROLLER_LISTENER = "CONTROLLER"
CONTROLLER_MECHANISM = kafka_client.PLAIN
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 characters of [A-Za-z0-9_-]
PRINCIPAL_RE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"


class SecurityError(RuntimeError):
    """The secured broker's credentials cannot be made or found; the message says what to do."""


# --- what each role may do -------------------------------------------------------------------------------

TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = "topic", "group", "transactional-id", "cluster"
CLUSTER_NAME = "kafka-cluster"
ANY_TOPIC = "*"  # Kafka's wildcard resource name (a LITERAL pattern): every topic


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: ``operations`` on a resource, by ``name`` or by every name starting with it."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER
    name: str
    operations: tuple[str, ...]  # Kafka's operation names: READ, WRITE, CREATE, ...
    prefixed: bool = False

    def __str__(self) -> str:
        pattern = f"{self.name}*" if self.prefixed else self.name
        return f"{'+'.join(self.operations)} {self.resource} {pattern}"


def role_grants(role: str, principal: str | None = None) -> list[Grant]:
    """Every ACL of one role (``names.ROLES``); ``principal``: a client's own name (its results prefix)."""
    if role == names.ROLE_CLIENT:
        return [
            Grant(TOPIC, names.TOPIC_REQUESTS, ("WRITE",)),
            Grant(TOPIC, names.client_results_prefix(principal or role), ("CREATE", "READ"), prefixed=True),
        ]
    if role == names.ROLE_RUNNER:
        return [
            Grant(TOPIC, names.TOPIC_REQUESTS, ("READ",)),
            Grant(TOPIC, names.TOPIC_SCORES, ("WRITE",)),
            Grant(GROUP, names.RUNNER_GROUP_PREFIX, ("READ",), prefixed=True),
        ]
    if role == names.ROLE_JOB:
        reads = (names.TOPIC_REQUESTS, names.TOPIC_SCORES, names.TOPIC_POLICIES, names.TOPIC_LABELS,
                 names.TOPIC_DECISIONS)  # fmt: skip
        writes = (names.TOPIC_SCORES, names.TOPIC_CANARY, names.TOPIC_DECISIONS, names.TOPIC_DEAD_LETTERS)
        return [
            *(Grant(TOPIC, t, ("READ",)) for t in reads),
            *(Grant(TOPIC, t, ("WRITE",)) for t in writes),
            Grant(TOPIC, names.RESULTS_PREFIX, ("WRITE", "CREATE"), prefixed=True),
            Grant(GROUP, names.GROUP_RENDEZVOUS, ("READ",), prefixed=True),
            # names.transactional_id_prefix(group, sink uid): "<group>.<uid>", the group starting as above
            Grant(TRANSACTIONAL_ID, names.GROUP_RENDEZVOUS, ("WRITE", "DESCRIBE"), prefixed=True),
        ]
    if role == names.ROLE_OPERATOR:
        # the job's outputs, and the labels: what `eval collect` dumps for the evaluation commands
        outputs = (names.TOPIC_CANARY, names.TOPIC_DECISIONS, names.TOPIC_DEAD_LETTERS, names.TOPIC_LABELS)
        return [
            Grant(TOPIC, names.TOPIC_POLICIES, ("READ", "WRITE")),
            *(Grant(TOPIC, t, ("READ",)) for t in outputs),
            Grant(TOPIC, names.TOPIC_ALERTS, ("WRITE",)),  # `eval drift --every --bootstrap`
            Grant(TOPIC, names.TOPIC_AUDIT, ("WRITE",)),  # `eval autopilot`: its audit records
            Grant(
                TOPIC,
                ANY_TOPIC,
                ("CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
            ),
        ]
    if role == names.ROLE_LABELLER:
        return [
            Grant(TOPIC, names.TOPIC_REQUESTS, ("READ",)),
            Grant(TOPIC, names.TOPIC_LABELS, ("WRITE",)),
            Grant(GROUP, names.GROUP_LABELLER, ("READ",)),
        ]
    raise ValueError(f"unknown role {role!r} (one of {', '.join(names.ROLES)})")


def reader_grants(principal: str) -> list[Grant]:
    """Every principal's own throw-away consumer groups (``names.assigned_group_prefix``): a reader that
    assigns partitions itself still has librdkafka find its group's coordinator (DESCRIBE)."""
    return [Grant(GROUP, names.assigned_group_prefix(principal), ("DESCRIBE",), prefixed=True)]


def principal_grants(principal: str, role: str) -> list[Grant]:
    """The grants of one principal of ``role``: the role's and its own readers' groups."""
    return [*role_grants(role, principal), *reader_grants(principal)]


def all_grants(extra_clients: Iterable[str] = ()) -> dict[str, list[Grant]]:
    """principal -> its grants: every role (named as the role) and each extra client principal."""
    grants = {role: principal_grants(role, role) for role in names.ROLES}
    for principal in extra_clients:
        grants[principal] = principal_grants(principal, names.ROLE_CLIENT)
    return grants


_RESOURCE_TYPES = {
    TOPIC: ResourceType.TOPIC,
    GROUP: ResourceType.GROUP,
    TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
    CLUSTER: ResourceType.BROKER,  # librdkafka's name for the cluster resource
}


def acl_bindings(principal: str, grants: Sequence[Grant]) -> list[AclBinding]:
    """The AdminClient ACL bindings of one principal's grants (ALLOW, from any host)."""
    return [
        AclBinding(
            _RESOURCE_TYPES[g.resource],
            g.name,
            ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for g in grants
        for op in g.operations
    ]


def create_acls(bootstrap: str, bindings: Sequence[AclBinding], timeout_s: float = 30.0) -> None:
    """Create the ACLs (creating one that exists changes nothing), as this process's principal."""
    with kafka_admin.admin_client(bootstrap, timeout_s) as admin:
        futures = admin.create_acls(list(bindings), request_timeout=timeout_s)
        for binding, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                raise SecurityError(f"creating the ACL {binding} failed: {exc.args[0].str()}") from None


# --- credentials and their files -------------------------------------------------------------------------


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def scram_security(
    principal: str, password: str, source: str = "", ca_file: Path | None = None
) -> kafka_client.ClientSecurity:
    """A principal's SCRAM settings; ``ca_file``: over TLS (SASL_SSL), trusting that PEM file's CA."""
    if ca_file is None:
        return kafka_client.ClientSecurity(
            source, kafka_client.SASL_PLAINTEXT, MECHANISM, principal, password
        )
    return kafka_client.ClientSecurity(
        source, kafka_client.SASL_SSL, MECHANISM, principal, password, str(ca_file.resolve())
    )


def clients_dir(data_dir: Path) -> Path:
    return data_dir / CLIENTS_DIR


def client_properties_path(data_dir: Path, principal: str) -> Path:
    """``<data-dir>/clients/<principal>.properties``."""
    return clients_dir(data_dir) / f"{principal}.properties"


def admin_properties_path(data_dir: Path) -> Path:
    return data_dir / ADMIN_PROPERTIES


def is_secured(data_dir: Path) -> bool:
    """Whether this data dir belongs to a broker started --secure (its admin credentials exist)."""
    return admin_properties_path(data_dir).exists()


def _header(principal: str, role: str, data_dir: Path) -> str:
    return (
        f"rendezvous: Kafka client settings of the {role} role (principal User:{principal}) of the\n"
        f"broker in {data_dir}. Kafka's console tools take this file as it is (--producer.config,\n"
        "--consumer.config, --command-config); rendezvous commands take it as --kafka-config FILE.\n"
        "It holds a password: keep it readable by its owner only (mode 0600)."
    )


@dataclass(frozen=True)
class Credentials:
    """The secured broker's principals and their passwords (from the files, or new)."""

    admin: kafka_client.ClientSecurity
    roles: dict[str, kafka_client.ClientSecurity]  # principal -> security, every role's included

    @classmethod
    def load_or_create(cls, data_dir: Path, formatted: bool, tls: TlsFiles | None = None) -> Credentials:
        """The data dir's credentials; new ones (files written) for a data dir not formatted yet.

        A formatted data dir keeps the credentials it was formatted with: they are in its metadata log.
        ``tls``: the client files name its CA (SASL_SSL).
        """
        admin_file = admin_properties_path(data_dir)
        if not admin_file.exists():
            if formatted:
                raise SecurityError(
                    f"{data_dir} holds a broker formatted without --secure (no {ADMIN_PROPERTIES}); "
                    "start a secured broker on a new --data-dir"
                )
            return cls._create(data_dir, tls)
        admin = _load(admin_file)
        roles = {}
        for role in names.ROLES:
            path = client_properties_path(data_dir, role)
            if not path.exists():
                if formatted:
                    raise SecurityError(
                        f"{path} is missing: the {role} role's password is lost; use a new --data-dir"
                    )
                return cls._create(data_dir, tls)  # a start that stopped between the files and the format
            roles[role] = _load(path)
        for path in sorted(clients_dir(data_dir).glob("*.properties")):
            roles.setdefault(path.stem, _load(path))  # clients added later (add_client)
        return cls(admin, roles)

    @classmethod
    def _create(cls, data_dir: Path, tls: TlsFiles | None) -> Credentials:
        clients = clients_dir(data_dir)
        clients.mkdir(parents=True, exist_ok=True)
        clients.chmod(0o700)
        admin_file = admin_properties_path(data_dir)
        ca = None if tls is None else tls.ca_file
        admin = scram_security(names.PRINCIPAL_BROKER, new_password(), str(admin_file), ca)
        roles = {}
        for role in names.ROLES:
            path = client_properties_path(data_dir, role)
            roles[role] = scram_security(role, new_password(), str(path), ca)
            kafka_client.write_client_properties(path, roles[role], _header(role, role, data_dir))
        header = _header(names.PRINCIPAL_BROKER, "broker's own (super user)", data_dir)
        kafka_client.write_client_properties(admin_file, admin, header)
        return cls(admin, roles)

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every principal's SCRAM credential (KIP-900).
        They hold the passwords: they go into an argument file only (``format_argument_file``)."""
        out = []
        for security in (self.admin, *self.roles.values()):
            out += [
                "--add-scram",
                f"{MECHANISM}=[name={security.username},password={security.password},"
                f"iterations={SCRAM_ITERATIONS}]",
            ]
        return out


def _load(path: Path) -> kafka_client.ClientSecurity:
    try:
        security = kafka_client.load_client_properties(path)
    except kafka_client.KafkaConfigError as e:
        raise SecurityError(str(e)) from None
    if security.username is None or security.password is None:
        raise SecurityError(f"{path}: no SASL credentials in it")
    return security


def _jaas(module: str, username: str, password: str, **users: str) -> str:
    extra = "".join(f' user_{name}="{pw}"' for name, pw in users.items())
    return f'{module} required username="{username}" password="{password}"{extra};'


def jaas_settings(admin: kafka_client.ClientSecurity, listeners: Sequence[str]) -> dict[str, str]:
    """The broker's own JAAS entries (they hold the admin's password): one per SCRAM client listener
    (``listeners``: their names), and the controller listener's PLAIN entry with its one user."""
    assert admin.username is not None and admin.password is not None
    user, password = admin.username, admin.password
    scram = _jaas(kafka_client.LOGIN_MODULES[MECHANISM], user, password)
    out = {f"listener.name.{name.lower()}.{MECHANISM.lower()}.sasl.jaas.config": scram for name in listeners}
    out[f"listener.name.{CONTROLLER_LISTENER.lower()}.{CONTROLLER_MECHANISM.lower()}.sasl.jaas.config"] = (
        _jaas(kafka_client.LOGIN_MODULES[CONTROLLER_MECHANISM], user, password, **{user: password})
    )
    return out


def server_settings(
    port: int,
    controller_port: int,
    admin: kafka_client.ClientSecurity,
    host: str = LOOPBACK,
    tls: TlsFiles | None = None,
) -> dict[str, object]:
    """The listener, SASL and authorizer settings of the secured broker (over ops.broker's defaults):
    the clients' listener on ``host`` (SASL_SSL with ``tls``), the controller's on loopback."""
    listener = TLS_LISTENER if tls is not None else LISTENER
    lower = listener.lower()
    settings: dict[str, object] = {
        "listeners": f"{listener}://{host}:{port},{CONTROLLER_LISTENER}://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"{listener}://{host}:{port}",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"{listener}:{listener},{CONTROLLER_LISTENER}:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.{lower}.sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.controller.protocol": CONTROLLER_MECHANISM,
        "listener.name.controller.sasl.enabled.mechanisms": CONTROLLER_MECHANISM,
        **jaas_settings(admin, [listener]),
        "authorizer.class.name": AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{admin.username}",
        # Topics are made by the operator (or at start, by the broker's principal), and by the job for a new
        # return address under the results prefix: auto-creation needs CREATE like any other creation.
        "auto.create.topics.enable": "true",
    }
    if tls is not None:
        store_password = tls.store_password()
        settings.update({
            f"listener.name.{lower}.ssl.keystore.type": "PKCS12",
            f"listener.name.{lower}.ssl.keystore.location": tls.keystore,
            f"listener.name.{lower}.ssl.keystore.password": store_password,
            f"listener.name.{lower}.ssl.key.password": store_password,
            # the broker's own connections to itself (inter-broker) check its certificate too
            f"listener.name.{lower}.ssl.truststore.type": "PEM",
            f"listener.name.{lower}.ssl.truststore.location": tls.ca_file,
        })  # fmt: skip
    return settings


# --- TLS (--tls): a CA of the data dir's own and the broker's certificate ---------------------------------

TLS_DIR = "tls"
TLS_VALID_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """``<data-dir>/tls/``: ``ca.pem`` (the CA's certificate: public, what clients trust), ``ca.p12``
    (the CA's key), ``broker.p12`` (the broker's key and certificate) and ``store.password`` (the
    PKCS12 stores' password); all but ``ca.pem`` readable by their owner only."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_store(self) -> Path:
        return self.dir / "ca.p12"

    @property
    def keystore(self) -> Path:
        return self.dir / "broker.p12"

    @property
    def password_file(self) -> Path:
        return self.dir / "store.password"

    def store_password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def exists(self) -> bool:
        return self.ca_file.exists() and self.keystore.exists() and self.password_file.exists()


def tls_files(data_dir: Path) -> TlsFiles:
    return TlsFiles(data_dir / TLS_DIR)


def uses_tls(data_dir: Path) -> bool:
    """Whether this data dir's broker was first started with --tls."""
    return tls_files(data_dir).exists


def make_tls(data_dir: Path, hosts: Sequence[str]) -> TlsFiles:
    """The data dir's CA and the broker's certificate (for ``localhost``, 127.0.0.1 and ``hosts``),
    made once with the JDK's keytool; the stores' password is read by keytool from a file, never argv."""
    tls = tls_files(data_dir)
    if tls.exists:
        return tls
    tls.dir.mkdir(parents=True, exist_ok=True)
    tls.dir.chmod(0o700)
    kafka_client.write_secret(tls.password_file, new_password() + "\n")
    names_ = ["dns:localhost", "ip:127.0.0.1"]
    for h in hosts:
        entry = f"ip:{h}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", h) else f"dns:{h}"
        if entry not in names_:
            names_.append(entry)
    store = ["-storetype", "PKCS12", "-storepass:file", str(tls.password_file)]
    csr, crt = tls.dir / "broker.csr", tls.dir / "broker.crt"
    steps = [
        ["-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-dname", "CN=rendezvous broker CA",
         "-ext", "bc:c", "-validity", str(TLS_VALID_DAYS), "-keystore", str(tls.ca_store), *store],
        ["-exportcert", "-alias", "ca", "-rfc", "-file", str(tls.ca_file), "-keystore", str(tls.ca_store), *store],
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-dname", "CN=localhost",
         "-validity", str(TLS_VALID_DAYS), "-keystore", str(tls.keystore), *store],
        ["-certreq", "-alias", "broker", "-file", str(csr), "-keystore", str(tls.keystore), *store],
        ["-gencert", "-alias", "ca", "-infile", str(csr), "-outfile", str(crt), "-rfc",
         "-validity", str(TLS_VALID_DAYS), "-ext", f"SAN={','.join(names_)}", "-ext", "EKU=serverAuth",
         "-keystore", str(tls.ca_store), *store],
        ["-importcert", "-alias", "ca", "-file", str(tls.ca_file), "-noprompt", "-keystore", str(tls.keystore), *store],
        ["-importcert", "-alias", "broker", "-file", str(crt), "-keystore", str(tls.keystore), *store],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run([_keytool(), *step], capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise SecurityError(
                f"keytool {step[0]} failed (exit {done.returncode}): {done.stdout}{done.stderr}"
            )
    csr.unlink(missing_ok=True)
    crt.unlink(missing_ok=True)
    tls.ca_file.chmod(0o644)
    for private in (tls.ca_store, tls.keystore):
        private.chmod(0o600)
    return tls


def _keytool() -> str:
    java = Path(procs.java_bin())
    keytool = java.with_name("keytool")
    return str(keytool) if keytool.exists() else "keytool"


def format_argument_file(path: Path, argv_tail: Sequence[str]) -> None:
    """A JVM argument file (``java @file``: one argument per line) only its owner can read."""
    for arg in argv_tail:
        if any(c.isspace() or c in "\"'\\#" for c in arg):
            raise ValueError(
                "an argument of the storage format has a character an argument file would change"
            )
    kafka_client.write_secret(path, "\n".join(argv_tail) + "\n")


def run_with_argument_file(
    argv_head: Sequence[str], secret_tail: Sequence[str], arg_file: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``argv_head @arg_file`` with ``secret_tail`` in the file, not in the process's argv (which
    any local user can read in /proc); the file is removed afterwards."""
    format_argument_file(arg_file, secret_tail)
    try:
        return subprocess.run(
            [*argv_head, f"@{arg_file}"], capture_output=True, text=True, check=False, timeout=120
        )
    finally:
        arg_file.unlink(missing_ok=True)


# --- after the broker is up ------------------------------------------------------------------------------


def set_up_acls(bootstrap: str, credentials: Credentials, timeout_s: float = 30.0) -> None:
    """Every principal's ACLs, created as the broker's own principal."""
    extra = [p for p in credentials.roles if p not in names.ROLES]
    bindings = [b for principal, grants in all_grants(extra).items() for b in acl_bindings(principal, grants)]
    with kafka_client.security_context(credentials.admin):
        create_acls(bootstrap, bindings, timeout_s)


def add_client(data_dir: Path, bootstrap: str, principal: str, timeout_s: float = 30.0) -> Path:
    """One more client principal (its own results prefix ``results.<principal>.``): its SCRAM
    credential, its ACLs and ``<data-dir>/clients/<principal>.properties``; returns that file."""
    if not re.fullmatch(PRINCIPAL_RE, principal):
        raise SecurityError(f"client name {principal!r}: letters, digits, '-' and '_' only (at most 64)")
    if principal in names.ROLES or principal == names.PRINCIPAL_BROKER:
        raise SecurityError(f"client name {principal!r} is taken by a role")
    admin = _load(admin_properties_path(data_dir))
    path = client_properties_path(data_dir, principal)
    if path.exists():
        raise SecurityError(f"{path} exists already: client {principal!r} was added before")
    ca = tls_files(data_dir).ca_file if uses_tls(data_dir) else None
    security = scram_security(principal, new_password(), str(path), ca)
    assert security.password is not None
    upsert = UserScramCredentialUpsertion(
        principal,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        security.password.encode(),
    )
    with kafka_client.security_context(admin), kafka_admin.admin_client(bootstrap, timeout_s) as client:
        for future in client.alter_user_scram_credentials([upsert], request_timeout=timeout_s).values():
            try:
                future.result()
            except KafkaException as exc:
                raise SecurityError(
                    f"creating the SCRAM credential of {principal!r} failed: {exc.args[0].str()}"
                ) from None
    with kafka_client.security_context(admin):
        create_acls(
            bootstrap, acl_bindings(principal, principal_grants(principal, names.ROLE_CLIENT)), timeout_s
        )
    kafka_client.write_client_properties(path, security, _header(principal, names.ROLE_CLIENT, data_dir))
    return path

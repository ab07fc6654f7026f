"""The secured broker of docker/compose.yaml: its secrets before it starts, its ACLs and topics after.

``rendezvous broker start --secure`` makes one broker's principals, files and ACLs in one data dir
(ops/kafka_security.py). docker/compose.yaml runs the same broker (apache/kafka) and the same roles in
containers, where each container must see its own role's file only: one volume per role, filled by two
one-shot steps that docker/entrypoint.sh runs (``kafka-secrets``, ``kafka-setup``)::

    python -m ops.kafka_init secrets --dir /opt/rendezvous/secrets --listeners INTERNAL,HOST
    python -m ops.kafka_init setup --bootstrap kafka:9092 --admin-config /opt/rendezvous/secrets/admin/admin.properties

``secrets`` (before the broker, as root: it gives each volume to the user that reads it) writes once and
reads back afterwards, under ``--dir``:

    <role>/<role>.properties   one per role (udfs.names.ROLES): its Kafka client properties, for
                               --kafka-config; a volume of its own, mounted by that role's containers only
    admin/admin.properties     the broker's own principal (a super user), for the set-up
    broker/server.properties   the broker's secret settings, the listeners' JAAS entries: the apache/kafka
                               image reads it from /mnt/shared/config and adds its KAFKA_* variables
    broker/admin.properties    the same principal again, for the broker container's health check
    broker/scram.args          every principal's SCRAM credential as storage-format arguments (KIP-900),
                               written on every run; docker/kafka-format.sh uses and deletes it

``setup`` (once the broker answers): every role's ACLs (``kafka_security.all_grants``, as ``broker start
--secure`` creates them) and every topic (``broker.ensure_topics``), as the admin. Without
``--admin-config`` (docker/compose.insecure.yaml: a broker without authentication) the topics only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ops import kafka_admin, kafka_client, kafka_security
from ops.broker import ensure_topics
from udfs import names

ADMIN_DIR = "admin"
BROKER_DIR = "broker"
SCRAM_ARGS = "scram.args"
SERVER_PROPERTIES = "server.properties"
# The image's users: rendezvous:local runs as 10001 (docker/Dockerfile); apache/kafka as its appuser.
DEFAULT_OWNER = "10001:10001"
DEFAULT_BROKER_OWNER = "1000:1000"


class InitError(RuntimeError):
    """The secrets cannot be made or found; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where each secret lives under the secrets root: one directory (a volume) per reader."""

    root: Path

    def role_dir(self, role: str) -> Path:
        return self.root / role

    def role_file(self, role: str) -> Path:
        return self.role_dir(role) / f"{role}.properties"

    @property
    def admin_file(self) -> Path:
        return self.root / ADMIN_DIR / f"{ADMIN_DIR}.properties"

    @property
    def broker_dir(self) -> Path:
        return self.root / BROKER_DIR


def _header(who: str) -> str:
    return (
        f"rendezvous: Kafka client settings of {who} on the broker of docker/compose.yaml (written by\n"
        "`python -m ops.kafka_init secrets`). Kafka's console tools take this file as it is; rendezvous\n"
        "commands take it as --kafka-config FILE. It holds a password: readable by its owner only."
    )


def load_or_create(layout: Layout) -> kafka_security.Credentials:
    """The credentials under ``layout``: read back if the admin's file exists (it is written last), else
    new ones for every principal (a first run, or one that stopped half way)."""
    if layout.admin_file.exists():
        roles = {}
        for role in names.ROLES:
            path = layout.role_file(role)
            if not path.exists():
                raise InitError(
                    f"{path} is missing but the admin's file is not: the {role} role's password is lost; "
                    "start over with new volumes (`docker compose down -v`)"
                )
            roles[role] = _load(path)
        return kafka_security.Credentials(_load(layout.admin_file), roles)
    roles = {}
    for role in names.ROLES:
        path = layout.role_file(role)
        roles[role] = kafka_security.scram_security(role, kafka_security.new_password(), str(path))
        _write(path, roles[role], _header(f"the {role} role (principal User:{role})"))
    admin = kafka_security.scram_security(
        names.PRINCIPAL_BROKER, kafka_security.new_password(), str(layout.admin_file)
    )
    _write(
        layout.admin_file, admin, _header(f"the broker's own principal User:{admin.username} (a super user)")
    )
    return kafka_security.Credentials(admin, roles)


def _load(path: Path) -> kafka_client.ClientSecurity:
    try:
        security = kafka_client.load_client_properties(path)
    except kafka_client.KafkaConfigError as e:
        raise InitError(str(e)) from None
    if security.username is None or security.password is None:
        raise InitError(f"{path}: no SASL credentials in it")
    return security


def _write(path: Path, security: kafka_client.ClientSecurity, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    kafka_client.write_client_properties(path, security, header)


def broker_properties(credentials: kafka_security.Credentials, listeners: Sequence[str]) -> str:
    """The broker's secret settings (server.properties lines): the JAAS entries of its SCRAM client
    ``listeners`` and of its controller listener, all as the admin (``kafka_security.jaas_settings``)."""
    lines = [
        "# rendezvous: the broker's secret settings (written by `python -m ops.kafka_init secrets`); the",
        "# apache/kafka image adds its KAFKA_* variables (docker/compose.yaml) after these lines.",
    ]
    lines += [f"{k}={v}" for k, v in kafka_security.jaas_settings(credentials.admin, listeners).items()]
    return "\n".join(lines) + "\n"


def write_broker_files(
    layout: Layout, credentials: kafka_security.Credentials, listeners: Sequence[str]
) -> None:
    """The broker volume's files (all from ``credentials``, so written again on every run)."""
    broker = layout.broker_dir
    broker.mkdir(parents=True, exist_ok=True)
    broker.chmod(0o700)
    kafka_client.write_secret(broker / SERVER_PROPERTIES, broker_properties(credentials, listeners))
    header = _header(f"the broker's own principal User:{credentials.admin.username} (its health check)")
    kafka_client.write_client_properties(broker / f"{ADMIN_DIR}.properties", credentials.admin, header)
    kafka_security.format_argument_file(broker / SCRAM_ARGS, credentials.scram_arguments())


def _owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected UID:GID, got {text!r}") from None


def give(directory: Path, owner: tuple[int, int]) -> None:
    """``directory`` and its files to ``owner`` (only root can; anyone else keeps what it wrote)."""
    if os.geteuid() != 0:
        return
    for path in (directory, *directory.iterdir()):
        os.chown(path, *owner)


def secrets(
    layout: Layout,
    listeners: Sequence[str],
    owner: tuple[int, int] = _owner(DEFAULT_OWNER),
    broker_owner: tuple[int, int] = _owner(DEFAULT_BROKER_OWNER),
) -> kafka_security.Credentials:
    """The ``secrets`` step (module docstring); returns the credentials."""
    credentials = load_or_create(layout)
    write_broker_files(layout, credentials, listeners)
    for role in names.ROLES:
        give(layout.role_dir(role), owner)
    give(layout.admin_file.parent, owner)
    give(layout.broker_dir, broker_owner)
    return credentials


def set_up(bootstrap: str, admin: kafka_client.ClientSecurity | None, partitions: int = 1) -> list[str]:
    """The ``setup`` step: every role's ACLs (with ``admin``) and every topic; returns the new topics."""
    with kafka_client.security_context(admin):
        kafka_admin.require_broker(bootstrap, "kafka-setup")
        if admin is not None:
            # every role of udfs.names.ROLES (the compose broker has no clients added later)
            kafka_security.set_up_acls(bootstrap, kafka_security.Credentials(admin, {}))
        return ensure_topics(bootstrap, partitions, every=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.kafka_init", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("secrets", help="every principal's password and file, once (run before the broker)")
    s.add_argument(
        "--dir", type=Path, required=True, help="the secrets root: one directory (volume) per reader"
    )
    s.add_argument(
        "--listeners",
        default="INTERNAL,HOST",
        help="the broker's SCRAM client listeners (KAFKA_LISTENERS' names), comma-separated",
    )
    s.add_argument("--owner", type=_owner, default=DEFAULT_OWNER, help="UID:GID of the role and admin files")
    s.add_argument(
        "--broker-owner", type=_owner, default=DEFAULT_BROKER_OWNER, help="UID:GID of the broker's"
    )
    u = sub.add_parser("setup", help="every role's ACLs and every topic (run once the broker answers)")
    u.add_argument("--bootstrap", required=True)
    u.add_argument(
        "--admin-config",
        type=Path,
        help="the admin's client properties; without: a broker without authentication",
    )
    u.add_argument("--partitions", type=int, default=1, help="of each topic created (default 1)")
    a = ap.parse_args(argv)
    try:
        if a.command == "secrets":
            listeners = [x.strip() for x in a.listeners.split(",") if x.strip()]
            credentials = secrets(Layout(a.dir), listeners, a.owner, a.broker_owner)
            print(f"kafka-secrets: {len(credentials.roles)} roles and the admin under {a.dir}", flush=True)
        else:
            admin = _load(a.admin_config) if a.admin_config is not None else None
            created = set_up(a.bootstrap, admin, a.partitions)
            acls = "every role's ACLs and " if admin is not None else ""
            print(f"kafka-setup: {acls}topics ready on {a.bootstrap} (new: {', '.join(created) or 'none'})")
    except (InitError, kafka_security.SecurityError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

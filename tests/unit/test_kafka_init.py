"""ops/kafka_init.py, docker/compose.yaml's secured broker set-up, without a broker: one file per reader
with the right modes, the same passwords on every run, the broker's JAAS entries and the storage
format's credentials, and a set-up that creates every role's ACLs as the admin."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from ops import kafka_client, kafka_init, kafka_security
from udfs import names

LISTENERS = ["INTERNAL", "HOST"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_gives_each_reader_its_own_directory_readable_by_its_owner_only(tmp_path: Path) -> None:
    layout = kafka_init.Layout(tmp_path)
    creds = kafka_init.secrets(layout, LISTENERS)
    dirs = {p.name for p in tmp_path.iterdir()}
    assert dirs == {*names.ROLES, kafka_init.ADMIN_DIR, kafka_init.BROKER_DIR}
    for role in names.ROLES:
        assert sorted(p.name for p in layout.role_dir(role).iterdir()) == [f"{role}.properties"]
        assert mode(layout.role_dir(role)) == 0o700 and mode(layout.role_file(role)) == 0o600
        security = kafka_client.load_client_properties(layout.role_file(role))
        assert security.username == role and security.protocol == kafka_client.SASL_PLAINTEXT
        assert security.password == creds.roles[role].password
    admin = kafka_client.load_client_properties(layout.admin_file)
    assert admin.username == names.PRINCIPAL_BROKER and mode(layout.admin_file) == 0o600
    broker = sorted(p.name for p in layout.broker_dir.iterdir())
    assert broker == sorted(
        [f"{kafka_init.ADMIN_DIR}.properties", kafka_init.SCRAM_ARGS, kafka_init.SERVER_PROPERTIES]
    )
    assert all(mode(p) == 0o600 for p in layout.broker_dir.iterdir()) and mode(layout.broker_dir) == 0o700
    passwords = {s.password for s in (creds.admin, *creds.roles.values())}
    assert len(passwords) == len(names.ROLES) + 1


def test_a_second_run_reads_the_same_passwords_back_and_writes_the_broker_files_again(tmp_path: Path) -> None:
    layout = kafka_init.Layout(tmp_path)
    first = kafka_init.secrets(layout, LISTENERS)
    (layout.broker_dir / kafka_init.SCRAM_ARGS).unlink()  # what kafka-format does once it used it
    again = kafka_init.secrets(layout, LISTENERS)
    assert again.admin.password == first.admin.password
    assert {r: s.password for r, s in again.roles.items()} == {r: s.password for r, s in first.roles.items()}
    assert (layout.broker_dir / kafka_init.SCRAM_ARGS).exists()


def test_a_lost_role_file_is_an_error_not_a_new_password(tmp_path: Path) -> None:
    layout = kafka_init.Layout(tmp_path)
    kafka_init.secrets(layout, LISTENERS)
    layout.role_file(names.ROLE_JOB).unlink()
    with pytest.raises(kafka_init.InitError, match="job role's password is lost"):
        kafka_init.secrets(layout, LISTENERS)


def test_the_broker_gets_the_admins_jaas_entries_and_every_scram_credential(tmp_path: Path) -> None:
    layout = kafka_init.Layout(tmp_path)
    creds = kafka_init.secrets(layout, LISTENERS)
    props = kafka_client.read_properties(layout.broker_dir / kafka_init.SERVER_PROPERTIES)
    assert props == kafka_security.jaas_settings(creds.admin, LISTENERS)
    assert set(props) == {
        "listener.name.internal.scram-sha-512.sasl.jaas.config",
        "listener.name.host.scram-sha-512.sasl.jaas.config",
        "listener.name.controller.plain.sasl.jaas.config",
    }
    assert f'user_admin="{creds.admin.password}"' in props["listener.name.controller.plain.sasl.jaas.config"]
    health = kafka_client.load_client_properties(layout.broker_dir / f"{kafka_init.ADMIN_DIR}.properties")
    assert health.username == names.PRINCIPAL_BROKER and health.password == creds.admin.password
    args = (layout.broker_dir / kafka_init.SCRAM_ARGS).read_text().splitlines()
    assert args == creds.scram_arguments()
    assert args.count("--add-scram") == len(names.ROLES) + 1


def test_the_set_up_creates_every_roles_acls_as_the_admin_then_every_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = kafka_init.secrets(kafka_init.Layout(tmp_path), LISTENERS)
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(kafka_init.kafka_admin, "require_broker", lambda b, who: calls.append(("probe", b)))
    monkeypatch.setattr(
        kafka_security,
        "create_acls",
        lambda b, bindings, timeout_s=30.0: calls.append(
            ("acls", (kafka_client.current_security(), bindings))
        ),
    )

    def topics(bootstrap: str, partitions: int = 1, every: bool = False) -> list[str]:
        calls.append(("topics", (kafka_client.current_security(), partitions, every)))
        return ["requests"]

    monkeypatch.setattr(kafka_init, "ensure_topics", topics)
    assert kafka_init.set_up("kafka:9092", creds.admin, partitions=2) == ["requests"]
    assert [c[0] for c in calls] == ["probe", "acls", "topics"]
    admin, bindings = calls[1][1]
    assert admin == creds.admin
    want = [b for p, g in kafka_security.all_grants().items() for b in kafka_security.acl_bindings(p, g)]
    assert bindings == want
    assert {b.principal for b in bindings} == {f"User:{r}" for r in names.ROLES}
    assert calls[2][1] == (creds.admin, 2, True)
    assert kafka_client.current_security() is None  # the admin only inside the set-up

    calls.clear()
    kafka_init.set_up("kafka:9092", None)  # a broker without authentication: topics only
    assert [c[0] for c in calls] == ["probe", "topics"]


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = kafka_init.Layout(tmp_path)
    assert kafka_init.main(["secrets", "--dir", str(tmp_path), "--listeners", "INTERNAL"]) == 0
    out = capsys.readouterr().out
    assert "5 roles and the admin" in out
    for security in kafka_init.load_or_create(layout).roles.values():
        assert security.password and security.password not in out
    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n")
    assert kafka_init.main(["setup", "--bootstrap", "127.0.0.1:9", "--admin-config", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: sasl.jaas.config: missing")

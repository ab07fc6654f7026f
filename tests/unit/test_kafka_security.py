"""The Kafka client properties reader and its translations (librdkafka, Flink table options), the
secured broker's settings and each role's ACLs: all without a broker (tests/integration/
test_secure_broker.py checks them on the real one)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ops import broker, kafka_client, kafka_security
from ops.kafka_client import ClientSecurity, KafkaConfigError
from udfs import names

SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
JAAS = f'{SCRAM_MODULE} required username="runner" password="s3cr3t-pw";'


def write(tmp_path: Path, text: str, name: str = "c.properties") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def scram_file(tmp_path: Path, jaas: str = JAAS, mechanism: str = "SCRAM-SHA-512") -> Path:
    return write(
        tmp_path, f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism={mechanism}\nsasl.jaas.config={jaas}\n"
    )


# --- reading ---------------------------------------------------------------------------------------------


def test_a_properties_file_is_read_as_java_reads_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# comment\n! also a comment\n\na=1\nb : two words\n  c   spaced\nd=x\\=y\\:z\ne=line \\\n    continued\n"
        "f=\\u0041\\t\\\\\n",
    )
    assert kafka_client.read_properties(path) == {
        "a": "1",
        "b": "two words",
        "c": "spaced",
        "d": "x=y:z",
        "e": "line continued",
        "f": "A\t\\",
    }


def test_a_scram_file_becomes_librdkafka_settings(tmp_path: Path) -> None:
    security = kafka_client.load_client_properties(scram_file(tmp_path))
    assert security.librdkafka() == {
        "security.protocol": "sasl_plaintext",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "runner",
        "sasl.password": "s3cr3t-pw",
    }
    assert security.describe() == "user 'runner' (SCRAM-SHA-512 over SASL_PLAINTEXT)"
    assert "s3cr3t-pw" not in repr(security)


def test_the_flink_options_name_the_connectors_shaded_login_module(tmp_path: Path) -> None:
    options = kafka_client.load_client_properties(scram_file(tmp_path)).flink_table_options()
    assert options == {
        "properties.security.protocol": "SASL_PLAINTEXT",
        "properties.sasl.mechanism": "SCRAM-SHA-512",
        "properties.sasl.jaas.config": "org.apache.flink.kafka.shaded." + JAAS,
    }


def test_a_shaded_login_module_and_escaped_quotes_are_read_too(tmp_path: Path) -> None:
    jaas = f'org.apache.flink.kafka.shaded.{SCRAM_MODULE} required username="job" password="a\\\\"b";'
    security = kafka_client.load_client_properties(scram_file(tmp_path, jaas))
    assert (security.username, security.password) == ("job", 'a"b')
    # written back, read back: the same
    out = tmp_path / "again.properties"
    kafka_client.write_client_properties(out, security, "a comment")
    assert kafka_client.load_client_properties(out).password == 'a"b'


def test_plaintext_needs_no_credentials(tmp_path: Path) -> None:
    security = kafka_client.load_client_properties(write(tmp_path, "security.protocol=plaintext\n"))
    assert security.librdkafka() == {"security.protocol": "plaintext"}
    assert not security.sasl


def test_what_the_broker_writes_is_what_the_reader_reads(tmp_path: Path) -> None:
    security = kafka_security.scram_security("client", "pw-123")
    path = tmp_path / "client.properties"
    kafka_client.write_client_properties(path, security, "line one\nline two")
    text = path.read_text()
    assert text.startswith("# line one\n# line two\n")
    assert f'sasl.jaas.config={SCRAM_MODULE} required username="client" password="pw-123";' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = kafka_client.load_client_properties(path)
    assert (again.protocol, again.mechanism, again.username, again.password) == (
        "SASL_PLAINTEXT", "SCRAM-SHA-512", "client", "pw-123",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "security.protocol: missing"),
        ("security.protocol=SASL_PLAIN\n", "security.protocol: unknown protocol 'SASL_PLAIN'"),
        ("security.protocol=SASL_PLAINTEXT\n", "sasl.mechanism: missing"),
        (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n",
            "sasl.mechanism: unknown mechanism 'GSSAPI'",
        ),
        ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n", "sasl.jaas.config: missing"),
        (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=nonsense\n",
            "sasl.jaas.config: not a JAAS login entry",
        ),
        (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=" + JAAS + "\n",
            "sasl.jaas.config: PLAIN needs the login module org.apache.kafka.common.security.plain.PlainLoginModule",
        ),
        (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
            f'sasl.jaas.config={SCRAM_MODULE} required username="x";\n',
            'sasl.jaas.config: no password="..." in the login entry',
        ),
        (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config="
            + JAAS.replace("required", "optional")
            + "\n",
            "the login module must be 'required'",
        ),
        (
            "security.protocol=PLAINTEXT\nsasl.mechanism=PLAIN\n",
            "sasl.mechanism: set, but security.protocol PLAINTEXT",
        ),
        ("security.protocol=PLAINTEXT\nssl.keystore.location=/k\n", "ssl.keystore.location: not a setting"),
        (
            "security.protocol=SSL\nssl.truststore.location=/no/such.pem\nssl.truststore.type=PEM\n",
            "no such file",
        ),
        (
            "security.protocol=SSL\nssl.truststore.location=/etc/hostname\n",
            "ssl.truststore.type: must be PEM",
        ),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KafkaConfigError) as e:
        kafka_client.load_client_properties(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message and "s3cr3t" not in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match=r"nope\.properties: cannot read"):
        kafka_client.load_client_properties(tmp_path / "nope.properties")


def test_a_command_with_a_bad_file_stops_with_one_line_and_never_the_password(tmp_path: Path) -> None:
    path = scram_file(tmp_path, JAAS.replace('password="s3cr3t-pw"', 'pasword="s3cr3t-pw"'))
    with pytest.raises(SystemExit) as e:
        kafka_client.use_config_file(path, "runner")
    assert str(e.value) == f'error: runner: {path}: sasl.jaas.config: no password="..." in the login entry'
    assert kafka_client.current_security() is None


def test_the_process_security_reaches_every_client_config_and_a_block_can_switch_it(tmp_path: Path) -> None:
    assert "sasl.username" not in kafka_client.producer_config("b:1")  # the default: no authentication
    runner = kafka_client.load_client_properties(scram_file(tmp_path))
    job = kafka_security.scram_security("job", "pw")
    with kafka_client.security_context(runner):
        assert kafka_client.producer_config("b:1")["sasl.username"] == "runner"
        assert kafka_client.consumer_config("b:1", "g")["sasl.password"] == "s3cr3t-pw"
        assert kafka_client.producer_config("b:1", security=job)["sasl.username"] == "job"  # its own
        with kafka_client.security_context(job):
            assert kafka_client.consumer_config("b:1")["sasl.username"] == "job"
        assert kafka_client.current_security() is runner
    assert kafka_client.current_security() is None
    assert "security.protocol" not in kafka_client.consumer_config("b:1")


def test_results_prefix_follows_the_client_principal() -> None:
    assert kafka_client.results_prefix() == "results."
    assert kafka_client.results_prefix(kafka_security.scram_security("client-7", "pw")) == "results.client-7."


def test_tls_settings_translate_to_both_clients(tmp_path: Path) -> None:
    ca = write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")
    path = write(
        tmp_path,
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=" + JAAS + "\n"
        "ssl.truststore.type=PEM\nssl.truststore.location=ca.pem\n",
    )
    security = kafka_client.load_client_properties(path)
    assert security.librdkafka()["ssl.ca.location"] == str(ca.resolve())
    assert security.librdkafka()["security.protocol"] == "sasl_ssl"
    assert security.java()["ssl.truststore.location"] == str(ca.resolve())


# --- the secured broker -----------------------------------------------------------------------------------


def test_the_secured_broker_config_has_no_allow_everyone_and_a_super_user_only() -> None:
    admin = kafka_security.scram_security("admin", "pw-admin")
    props = broker.server_properties(Path("/tmp/x"), 9092, 9093, admin)
    lines = dict(line.split("=", 1) for line in props.splitlines())
    assert lines["allow.everyone.if.no.acl.found"] == "false"
    assert lines["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert lines["super.users"] == "User:admin"
    assert lines["listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert (
        lines["listener.security.protocol.map"] == "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    )
    assert lines["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert lines["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert "PLAINTEXT://" not in lines["listeners"].replace("SASL_PLAINTEXT://", "")
    # the unsecured broker is what it always was
    plain = broker.server_properties(Path("/tmp/x"), 9092, 9093)
    assert "sasl" not in plain and "authorizer" not in plain and "PLAINTEXT://127.0.0.1:9092" in plain


def test_new_credentials_are_files_only_their_owner_reads(tmp_path: Path) -> None:
    creds = kafka_security.Credentials.load_or_create(tmp_path, formatted=False)
    clients = tmp_path / "clients"
    assert stat.S_IMODE(clients.stat().st_mode) == 0o700
    files = sorted(p.name for p in clients.iterdir())
    assert files == sorted(f"{role}.properties" for role in names.ROLES)
    for path in [*clients.iterdir(), tmp_path / "admin.properties"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    passwords = {s.password for s in (creds.admin, *creds.roles.values())}
    assert len(passwords) == len(names.ROLES) + 1 and all(p and len(p) >= 32 for p in passwords)
    # a restart reads the same ones back
    again = kafka_security.Credentials.load_or_create(tmp_path, formatted=True)
    assert again.admin.password == creds.admin.password
    assert {k: v.password for k, v in again.roles.items()} == {k: v.password for k, v in creds.roles.items()}


def test_a_data_dir_formatted_without_secure_is_refused(tmp_path: Path) -> None:
    with pytest.raises(kafka_security.SecurityError, match="formatted without --secure"):
        kafka_security.Credentials.load_or_create(tmp_path, formatted=True)


def test_the_storage_format_gets_the_passwords_in_an_argument_file_only(tmp_path: Path) -> None:
    creds = kafka_security.Credentials.load_or_create(tmp_path, formatted=False)
    args = creds.scram_arguments()
    assert args.count("--add-scram") == len(names.ROLES) + 1
    assert f"SCRAM-SHA-512=[name=runner,password={creds.roles['runner'].password},iterations=8192]" in args
    arg_file = tmp_path / "args"
    kafka_security.format_argument_file(arg_file, args)
    assert stat.S_IMODE(arg_file.stat().st_mode) == 0o600
    assert arg_file.read_text().splitlines() == args


def _grants(role: str) -> set[str]:
    return {str(g) for g in kafka_security.role_grants(role)}


def test_each_role_gets_exactly_its_acls() -> None:
    assert _grants(names.ROLE_CLIENT) == {"WRITE topic requests", "CREATE+READ topic results.client.*"}
    assert _grants(names.ROLE_RUNNER) == {"READ topic requests", "WRITE topic scores", "READ group runner-*"}
    assert _grants(names.ROLE_JOB) == {
        "READ topic requests", "READ topic scores", "READ topic policies", "READ topic labels",
        "READ topic decisions", "WRITE topic scores", "WRITE topic canary", "WRITE topic decisions",
        "WRITE topic dead-letters", "WRITE+CREATE topic results*", "READ group rendezvous-job*",
        "WRITE+DESCRIBE transactional-id rendezvous-job*",
    }  # fmt: skip
    assert _grants(names.ROLE_OPERATOR) == {
        "READ+WRITE topic policies", "READ topic canary", "READ topic decisions", "READ topic dead-letters",
        "READ topic labels", "WRITE topic alerts", "WRITE topic audit",
        "CREATE+DELETE+ALTER+DESCRIBE+DESCRIBE_CONFIGS+ALTER_CONFIGS topic *",
    }  # fmt: skip
    assert _grants(names.ROLE_LABELLER) == {
        "READ topic requests",
        "WRITE topic labels",
        "READ group labeller",
    }


def test_only_the_operator_may_write_policies_and_only_the_job_results() -> None:
    grants = kafka_security.all_grants(["client-7"])
    for principal, role_grants in grants.items():
        writes = {g.name for g in role_grants if "WRITE" in g.operations and g.resource == "topic"}
        assert (names.TOPIC_POLICIES in writes) == (principal == names.ROLE_OPERATOR)
        assert any(w.startswith("results") for w in writes) == (principal == names.ROLE_JOB)
    assert {str(g) for g in grants["client-7"]} == {
        "WRITE topic requests",
        "CREATE+READ topic results.client-7.*",
        "DESCRIBE group client-7.assigned-*",  # its own readers' throw-away groups, no one else's
    }
    assert {str(g) for g in grants["runner"]} - _grants(names.ROLE_RUNNER) == {
        "DESCRIBE group runner.assigned-*"
    }


def test_a_reader_without_a_group_gets_a_throw_away_one_its_principal_may_describe() -> None:
    assert kafka_client.consumer_config("b:1")["group.id"].startswith("rendezvous-assigned-")
    seven = kafka_security.scram_security("client-7", "pw")
    assert kafka_client.consumer_config("b:1", security=seven)["group.id"].startswith("client-7.assigned-")
    assert kafka_client.consumer_config("b:1", "g", security=seven)["group.id"] == "g"


def test_the_jobs_transactional_ids_and_group_are_under_its_prefix() -> None:
    (txn,) = [g for g in kafka_security.role_grants(names.ROLE_JOB) if g.resource == "transactional-id"]
    tid = names.transactional_id_prefix(names.GROUP_RENDEZVOUS, names.UID_KAFKA_OUT_EXACTLY_ONCE)
    assert txn.prefixed and tid.startswith(txn.name)


def test_acl_bindings_are_allow_rules_with_literal_or_prefixed_patterns() -> None:
    from confluent_kafka.admin import AclPermissionType, ResourcePatternType, ResourceType

    bindings = kafka_security.acl_bindings("job", kafka_security.role_grants(names.ROLE_JOB))
    assert all(b.permission_type == AclPermissionType.ALLOW and b.principal == "User:job" for b in bindings)
    results = [b for b in bindings if b.name == "results"]
    assert {b.operation.name for b in results} == {"WRITE", "CREATE"}
    assert all(b.resource_pattern_type == ResourcePatternType.PREFIXED for b in results)
    assert {b.restype for b in bindings} == {
        ResourceType.TOPIC,
        ResourceType.GROUP,
        ResourceType.TRANSACTIONAL_ID,
    }


def test_client_names_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    for bad in ("client", "admin", "a b", "x/../y", ""):
        with pytest.raises(kafka_security.SecurityError):
            kafka_security.add_client(tmp_path, "127.0.0.1:1", bad)


def test_no_client_is_configured_by_default() -> None:
    assert kafka_client.current_security() is None
    assert ClientSecurity("").librdkafka() == {"security.protocol": "plaintext"}


def test_a_server_that_does_not_answer_a_client_without_credentials_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Something listens (a secured broker hangs up on a client that does not authenticate; librdkafka
    only reports the broker "down"): the message says what is missing. Nothing listening: as before."""
    import socket

    from ops import kafka_admin, procs

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        bootstrap = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(TimeoutError) as e:
            kafka_admin.list_topics(bootstrap, timeout_s=1)
    assert str(e.value) == (
        f"the server at {bootstrap} accepts connections but did not answer a Kafka client without authentication "
        "within 1s (still starting? a broker started with --secure needs --kafka-config FILE, "
        "<data-dir>/clients/<role>.properties)"
    )
    closed = f"127.0.0.1:{procs.free_port()}"
    with pytest.raises(TimeoutError, match=f"no Kafka broker answered at {closed} within 1s; is it running"):
        kafka_admin.list_topics(closed, timeout_s=1)


def test_with_tls_the_clients_listener_is_sasl_ssl_and_the_controller_stays_on_loopback(
    tmp_path: Path,
) -> None:
    tls = kafka_security.tls_files(tmp_path)
    tls.dir.mkdir()
    tls.password_file.write_text("store-pw\n")
    admin = kafka_security.scram_security("admin", "pw-admin", ca_file=tls.ca_file)
    lines = dict(
        line.split("=", 1)
        for line in broker.server_properties(tmp_path, 9092, 9093, admin, "10.1.2.3", tls).splitlines()
    )
    assert lines["listeners"] == "SASL_SSL://10.1.2.3:9092,CONTROLLER://127.0.0.1:9093"
    assert lines["advertised.listeners"] == "SASL_SSL://10.1.2.3:9092"
    assert lines["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    assert lines["listener.name.sasl_ssl.ssl.keystore.location"] == str(tls.keystore)
    assert lines["listener.name.sasl_ssl.ssl.keystore.password"] == "store-pw"
    assert lines["listener.name.sasl_ssl.ssl.truststore.type"] == "PEM"
    assert admin.librdkafka()["security.protocol"] == "sasl_ssl"
    assert admin.librdkafka()["ssl.ca.location"] == str(tls.ca_file.resolve())


def test_the_security_flags_keep_a_plain_listener_on_loopback(tmp_path: Path) -> None:
    check = broker._check_security_flags
    check(tmp_path, secure=False, tls=False, host="127.0.0.1")  # today's broker
    check(tmp_path, secure=True, tls=True, host="10.1.2.3")
    with pytest.raises(broker.BrokerError, match="--tls goes with --secure"):
        check(tmp_path, secure=False, tls=True, host="127.0.0.1")
    for secure in (False, True):
        with pytest.raises(broker.BrokerError, match="beyond 127.0.0.1, needs --secure --tls"):
            check(tmp_path, secure=secure, tls=False, host="0.0.0.0")

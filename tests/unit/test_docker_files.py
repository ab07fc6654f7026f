"""docker/: the compose file, the Dockerfile, the entrypoint and the Flink configuration they bake in.

No Docker engine is needed: the files are parsed and checked against the rest of the repository
(versions pinned in pyproject.toml and deps/pom.xml, the policy's models, the job's CLI).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from jobs import rendezvous_job
from ops import kafka_init, kafka_security
from ops.flink_conf import load_conf, read_conf
from udfs import names
from udfs.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
POLICY = REPO / "policies" / "default.yaml"

INSECURE = DOCKER / "compose.insecure.yaml"
KAFKA_FORMAT = DOCKER / "kafka-format.sh"

RUNNERS = {"runner-gbt", "runner-logreg", "runner-tree", "runner-base", "runner-mlp"}
KAFKA_ONE_SHOTS = {"kafka-secrets", "kafka-format", "kafka-setup"}
SERVICES = {"kafka", "jobmanager", "taskmanager", "submit"} | KAFKA_ONE_SHOTS | RUNNERS
FLINK_SHARED_MOUNTS = {"flink-state": "/opt/rendezvous/state", "decoy-archive": "/opt/rendezvous/archive"}
# Where the image's containers find the secrets (docker/entrypoint.sh's SECRETS_DIR), one volume per reader.
SECRETS = kafka_init.Layout(Path("/opt/rendezvous/secrets"))
BROKER_CONFIG_DIR = "/mnt/shared/config"  # what the apache/kafka image reads server.properties from
# The entrypoint roles that talk to Kafka, and the Kafka role (ops/kafka_security.py) each runs as.
KAFKA_ROLE_OF = {
    "runner": names.ROLE_RUNNER,
    "submit": names.ROLE_JOB,
    "load": names.ROLE_CLIENT,
    "labeller": names.ROLE_LABELLER,
    "policy": names.ROLE_OPERATOR,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def flink_conf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_flink_conf", DOCKER / "flink_conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pom_property(name: str, pom: str = "deps/pom.xml") -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(REPO / pom).getroot().find(f"m:properties/m:{name}", ns)
    assert node is not None and node.text, name
    return node.text.strip()


def pyproject_pin(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==", 1)[1] for d in deps if d.split("==", 1)[0].strip().lower() == package]
    assert len(pins) == 1, f"{package} must be pinned exactly once in pyproject.toml"
    return pins[0]


def dockerfile_lines() -> list[str]:
    """Instructions one per line (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def entrypoint_roles() -> set[str]:
    """The roles dispatched by the entrypoint's final `case "$role" in ... esac`."""
    text = ENTRYPOINT.read_text(encoding="utf-8")
    block = text[text.index('case "$role" in') :]
    return {
        alt.strip()
        for arm in re.findall(r"^    ([^\s()*][^)]*)\)\s*$", block, flags=re.MULTILINE)
        for alt in arm.split("|")
    }


def role_of(service: dict[str, Any]) -> tuple[str, list[str]]:
    """(entrypoint role, its arguments) of a service built from the rendezvous image."""
    entry = service.get("entrypoint")
    command = list(service.get("command", []))
    if entry:  # tools pin the role in the entrypoint: tini -- entrypoint.sh ROLE
        assert entry[:3] == ["/usr/bin/tini", "--", "/opt/rendezvous/bin/entrypoint.sh"], entry
        return entry[3], command
    return command[0], command[1:]


def depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in deps.items()}


def mounts(service: dict[str, Any], named: bool = True) -> dict[str, str]:
    """source -> target of a service's named volumes (or of its bind mounts, named=False)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        if source.startswith((".", "/")) != named:
            out[source] = target
    return out


# --- compose.yaml ---------------------------------------------------------------------------


def test_services_are_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES


def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: str(v) for k, v in services["kafka"]["environment"].items()}


def listeners(env: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """Listener name -> (bound host, port, security protocol)."""
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    out = {}
    for item in env["KAFKA_LISTENERS"].split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, port, protocols[name])
    return out


def secrets_volumes(service: dict[str, Any]) -> dict[str, str]:
    """A service's kafka-secrets-* volumes: name -> its mount spec's target and options."""
    return {
        spec.split(":", 1)[0]: spec.split(":", 1)[1]
        for spec in service.get("volumes", [])
        if spec.startswith("kafka-secrets-")
    }


def test_kafka_image_is_the_broker_version_of_deps_pom(services: dict[str, dict[str, Any]]) -> None:
    want = f"apache/kafka:{pom_property('kafka.version')}"
    assert want == "apache/kafka:3.9.2"
    assert services["kafka"]["image"] == want
    assert services["kafka-format"]["image"] == want


def test_kafka_is_single_node_kraft_with_an_internal_and_a_host_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    env = kafka_env(services)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    bound = listeners(env)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@127.0.0.1:{bound[controller][1]}"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["INTERNAL"] == "kafka:9092"
    host_addr, host_port = advertised["HOST"].rsplit(":", 1)
    assert host_addr == "127.0.0.1"
    assert f"127.0.0.1:{host_port}:{host_port}" in services["kafka"]["ports"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    assert env["KAFKA_LOG_DIRS"] == mounts(services["kafka"])["kafka-data"]
    assert "healthcheck" in services["kafka"]


def test_every_listener_authenticates_and_acls_decide(services: dict[str, dict[str, Any]]) -> None:
    """Secure by default, as `broker start --secure` (ops/kafka_security.server_settings): SASL on every
    listener (no PLAINTEXT one at all, the controller's on the container's loopback), SCRAM for clients
    and between brokers, the StandardAuthorizer without allow.everyone, the broker's principal the only
    super user."""
    env = kafka_env(services)
    bound = listeners(env)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    for name, (_, _, protocol) in bound.items():
        assert protocol.startswith("SASL_"), f"listener {name} is {protocol}"
    assert bound[controller][0] == kafka_security.LOOPBACK  # unreachable from other containers
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == kafka_security.MECHANISM
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == kafka_security.MECHANISM
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == kafka_security.CONTROLLER_MECHANISM
    assert (
        env[f"KAFKA_LISTENER_NAME_{controller}_SASL_ENABLED_MECHANISMS"]
        == kafka_security.CONTROLLER_MECHANISM
    )
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == kafka_security.AUTHORIZER
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == f"User:{names.PRINCIPAL_BROKER}"
    # the JAAS entries (the admin's password) are not in the compose file: kafka-secrets writes them
    assert not any("jaas" in k.lower() or "password" in k.lower() for k in env)
    assert mounts(services["kafka"])["kafka-secrets-broker"] == BROKER_CONFIG_DIR
    assert f"kafka-secrets-broker:{BROKER_CONFIG_DIR}:ro" in services["kafka"]["volumes"]


def test_kafka_secrets_writes_one_volume_per_role_for_every_broker_listener(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """kafka-secrets (ops/kafka_init.py) makes every role's file (udfs.names.ROLES, the roles
    kafka_security.role_grants knows), each into a volume of its own, and the JAAS entries of exactly the
    broker's client listeners."""
    svc = services["kafka-secrets"]
    role, args = role_of(svc)
    assert role == "kafka-secrets" and svc["user"] == "0:0" and svc["restart"] == "no"
    flags = dict(zip(args[::2], args[1::2], strict=True))
    env = kafka_env(services)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert flags["--listeners"].split(",") == [n for n in listeners(env) if n != controller]
    uid = next(ln.split()[1] for ln in reversed(dockerfile_lines()) if ln.startswith("USER "))
    assert flags["--owner"] == uid  # the rendezvous image's user reads the role files
    assert flags["--broker-owner"] == "1000:1000"  # apache/kafka's appuser reads the broker's
    assert all(kafka_security.role_grants(r) for r in names.ROLES)  # the roles ACLs are made for
    readers = [*names.ROLES, kafka_init.ADMIN_DIR, kafka_init.BROKER_DIR]
    want = {f"kafka-secrets-{r}": str(SECRETS.role_dir(r)) for r in readers}
    assert secrets_volumes(svc) == want
    declared = set(compose["volumes"])
    assert set(want) <= declared
    assert {v for v in declared if v.startswith("kafka-secrets-")} == set(want)


def test_kafka_format_formats_with_the_brokers_settings_and_the_credentials(
    services: dict[str, dict[str, Any]],
) -> None:
    svc = services["kafka-format"]
    assert svc["environment"] == services["kafka"]["environment"]  # the same configuration, formatted
    assert svc["entrypoint"] == ["bash", "/opt/rendezvous/kafka-format.sh"]
    assert "./kafka-format.sh:/opt/rendezvous/kafka-format.sh:ro" in svc["volumes"]
    assert mounts(svc) == {
        "kafka-data": kafka_env(services)["KAFKA_LOG_DIRS"],
        "kafka-secrets-broker": BROKER_CONFIG_DIR,
    }
    text = KAFKA_FORMAT.read_text(encoding="utf-8")
    assert f"CONFIG_DIR=${{CONFIG_DIR:-{BROKER_CONFIG_DIR}}}" in text
    assert f'scram="$CONFIG_DIR/{kafka_init.SCRAM_ARGS}"' in text
    assert '"@$work/format.args"' in text  # the credentials in a JVM argument file, never argv
    subprocess.run(["bash", "-n", str(KAFKA_FORMAT)], check=True)
    health = " ".join(services["kafka"]["healthcheck"]["test"])
    assert f"--command-config {BROKER_CONFIG_DIR}/{kafka_init.ADMIN_DIR}.properties" in health


def test_kafka_setup_creates_the_acls_and_topics_as_the_admin(services: dict[str, dict[str, Any]]) -> None:
    svc = services["kafka-setup"]
    assert role_of(svc)[0] == "kafka-setup"
    assert svc["environment"]["ADMIN_CONFIG"] == str(SECRETS.admin_file)
    assert secrets_volumes(svc) == {"kafka-secrets-admin": f"{SECRETS.admin_file.parent}:ro"}
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert 'exec python -m ops.kafka_init setup --bootstrap "$KAFKA_BOOTSTRAP" "${admin[@]}"' in text
    assert 'exec python -m ops.kafka_init secrets --dir "$SECRETS_DIR"' in text
    assert "SECRETS_DIR=${SECRETS_DIR:-/opt/rendezvous/secrets}" in text


def test_every_service_that_talks_to_kafka_gets_its_roles_file_and_no_other(
    services: dict[str, dict[str, Any]],
) -> None:
    """Each container that talks to Kafka authenticates with --kafka-config as its role, and can read
    that role's file only; the Flink cluster and the SQL tool read no secret at all (the job's tables
    carry the job's credentials inside the submitted job)."""
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert 'kafka_config=(--kafka-config "$KAFKA_CONFIG")' in text
    talkers = set()
    for name, svc in services.items():
        if "build" not in svc or name in KAFKA_ONE_SHOTS:
            continue
        role = role_of(svc)[0]
        kafka_role = KAFKA_ROLE_OF.get(role)
        if kafka_role is None:
            assert not secrets_volumes(svc) and "KAFKA_CONFIG" not in svc.get("environment", {}), name
            continue
        talkers.add(role)
        assert svc["environment"]["KAFKA_CONFIG"] == str(SECRETS.role_file(kafka_role)), name
        assert secrets_volumes(svc) == {
            f"kafka-secrets-{kafka_role}": f"{SECRETS.role_dir(kafka_role)}:ro"
        }, name
        assert depends(svc)["kafka-setup"] == "service_completed_successfully", name
    assert talkers == set(KAFKA_ROLE_OF)
    for role in KAFKA_ROLE_OF:  # the entrypoint passes the file on in each of these roles
        arm = text[text.index(f"    {role})\n") :]
        arm = arm[: arm.index(";;")]
        if role == "submit":
            arm = text[text.index("submit() {") : text.index("role=${1:-help}")]
        assert '"${kafka_config[@]}"' in arm, role


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override file: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_the_insecure_override_is_plaintext_everywhere_and_explicit(compose: dict[str, Any]) -> None:
    override = yaml.safe_load(INSECURE.read_text(encoding="utf-8"))
    assert set(override) == {"services"} and set(override["services"]) <= set(compose["services"])
    services = merged(compose, override)["services"]
    env = kafka_env(services)
    assert {protocol for _, _, protocol in listeners(env).values()} == {"PLAINTEXT"}
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == ""
    assert "--command-config" not in " ".join(services["kafka"]["healthcheck"]["test"])
    assert services["kafka-setup"]["environment"]["ADMIN_CONFIG"] == ""
    for name, svc in services.items():
        if "KAFKA_CONFIG" in svc.get("environment", {}):
            assert svc["environment"]["KAFKA_CONFIG"] == "", name
    # what stays: loopback-only host ports, and nothing else changed
    assert services["kafka"]["ports"] == compose["services"]["kafka"]["ports"]
    assert all("ports" not in svc for svc in override["services"].values())


def test_published_ports_are_bound_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: svc.get("ports", []) for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"kafka", "jobmanager"}
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
    assert "127.0.0.1:8081:8081" in services["jobmanager"]["ports"]


def test_one_runner_per_policy_model_on_the_internal_listener(services: dict[str, dict[str, Any]]) -> None:
    policy_models = {m.id for m in load_policy(POLICY).models}
    runners = {}
    for name, svc in services.items():
        role, args = role_of(svc) if "build" in svc else ("", [])
        if role == "runner":
            runners[name] = args[0]
            assert svc["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert set(runners) == RUNNERS
    assert all(name == f"runner-{model}" for name, model in runners.items())
    assert set(runners.values()) == policy_models


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    assert depends(services["kafka-format"]) == {"kafka-secrets": "service_completed_successfully"}
    assert depends(services["kafka"]) == {"kafka-format": "service_completed_successfully"}
    assert depends(services["kafka-setup"]) == {"kafka": "service_healthy"}
    assert depends(services["taskmanager"]) == {"jobmanager": "service_healthy"}
    for name in RUNNERS:
        assert depends(services[name]) == {"kafka-setup": "service_completed_successfully"}
    submit = depends(services["submit"])
    assert submit["kafka-setup"] == "service_completed_successfully"
    assert submit["jobmanager"] == "service_healthy"
    assert "taskmanager" in submit
    for name, svc in services.items():
        for target, condition in depends(svc).items():
            assert target in services, (name, target)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], target
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", target


def test_one_shot_services(services: dict[str, dict[str, Any]]) -> None:
    for name in ("submit", *KAFKA_ONE_SHOTS):
        assert services[name]["restart"] == "no", name


def test_volumes_are_declared_and_shared_by_jobmanager_and_taskmanager(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    assert {"kafka-data", *FLINK_SHARED_MOUNTS} <= declared
    for name, svc in services.items():
        for source in mounts(svc):
            assert source in declared, f"{name}: volume {source} is not declared"
    for name in ("jobmanager", "taskmanager"):
        assert mounts(services[name]) == FLINK_SHARED_MOUNTS, name
    assert mounts(services["sql"])["decoy-archive"] == FLINK_SHARED_MOUNTS["decoy-archive"]


def test_the_taskmanager_service_scales_to_n(services: dict[str, dict[str, Any]]) -> None:
    """N copies of the service (TASKMANAGERS=N, or --scale): nothing in it may be one of a kind, and each
    registers with its own address (taskmanager.host is left unset in the container conf)."""
    taskmanager = services["taskmanager"]
    assert taskmanager["deploy"]["replicas"] == "${TASKMANAGERS:-1}"
    assert not {"container_name", "hostname", "ports"} & set(taskmanager)
    assert all(source in FLINK_SHARED_MOUNTS for source in mounts(taskmanager))  # named volumes, shared
    container_conf = (DOCKER / "flink_conf.py").read_text(encoding="utf-8")
    assert 'REMOVED_KEYS = ("taskmanager.host",)' in container_conf
    assert read_conf(REPO / "flink-conf" / "config.yaml")["taskmanager.numberOfTaskSlots"] == "1"


def test_image_services_use_roles_the_entrypoint_knows(services: dict[str, dict[str, Any]]) -> None:
    roles = entrypoint_roles()
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(built) >= {"jobmanager", "taskmanager", "submit", "kafka-secrets", "kafka-setup"} | RUNNERS
    for name, svc in built.items():
        assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        assert role_of(svc)[0] in roles, name


def test_submit_runs_the_job_with_the_policy_and_the_internal_bootstrap(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["submit"]["environment"]
    assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["POLICY"].endswith("/opt/rendezvous/app/policies/default.yaml}")
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert '-py "$APP_DIR/jobs/rendezvous_job.py" -pyfs "$PYFILES"' in text
    assert '--policy "$POLICY"' in text and '--bootstrap "$KAFKA_BOOTSTRAP"' in text
    assert (REPO / "jobs" / "rendezvous_job.py").is_file()
    # the policies of the checkout, read-only, where POLICY points
    assert mounts(services["submit"], named=False) == {"../policies": "/opt/rendezvous/app/policies"}
    assert "../policies:/opt/rendezvous/app/policies:ro" in services["submit"]["volumes"]


# --- Dockerfile -----------------------------------------------------------------------------


def test_base_images_are_pinned() -> None:
    froms = [ln.split()[1:] for ln in dockerfile_lines() if ln.upper().startswith("FROM ")]
    assert len(froms) == 2
    stages = {args[2] for args in froms if len(args) == 3 and args[1].upper() == "AS"}
    images = [args[0] for args in froms if args[0] not in stages]
    for image in images:
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), f"{image} is not pinned"
    assert images[0].startswith("maven:3.") and "eclipse-temurin-17" in images[0]
    assert images[1].startswith("python:3.11.")


def test_the_sink_context_is_compiled_against_the_connector_the_job_runs() -> None:
    """deps/kafka-sink-context replaces one class of the connector: both poms name the same release."""
    module = pom_property("flink.kafka.connector.version", "deps/kafka-sink-context/pom.xml")
    assert module == pom_property("flink.kafka.connector.version")


def test_pyflink_version_matches_pyproject() -> None:
    args = dict(ln.split(None, 1)[1].split("=", 1) for ln in dockerfile_lines() if ln.startswith("ARG "))
    assert args["PYFLINK_VERSION"] == pyproject_pin("apache-flink") == "2.2.1"
    assert "/opt/venv/lib/python3.11/site-packages/pyflink" in DOCKERFILE.read_text()


def test_dockerfile_builds_jars_with_maven_and_runs_as_non_root() -> None:
    lines = dockerfile_lines()
    text = "\n".join(lines)
    assert "mvn --batch-mode --no-transfer-progress -f deps/pom.xml package" in text
    assert "COPY --from=jars /src/build/jars/flink/ /opt/rendezvous/app/build/jars/flink/" in text
    assert "build/jars/kafka" not in text  # the broker runs in its own container
    assert "pip install --no-cache-dir . " in text and "-e ." not in text
    assert "python -m runners.train --out /opt/rendezvous/models" in text
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert lines.index(f"USER {users[-1]}") < next(i for i, ln in enumerate(lines) if "runners.train" in ln)
    assert lines[-2].startswith('ENTRYPOINT ["/usr/bin/tini", "--", "/opt/rendezvous/bin/entrypoint.sh"]')


# --- entrypoint.sh --------------------------------------------------------------------------


def test_entrypoint_has_every_role() -> None:
    roles = {"jobmanager", "taskmanager", "runner", "submit", "train", "load", "sql", "flink", "help",
             "labeller", "policy", "kafka-secrets", "kafka-setup"}  # fmt: skip
    assert roles <= entrypoint_roles()
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert '"$FLINK_HOME/bin/jobmanager.sh" start-foreground' in text
    assert '"$FLINK_HOME/bin/taskmanager.sh" start-foreground' in text


def test_entrypoint_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


def _runner_argv(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """What the entrypoint's runner role runs: its argv, printed by a stand-in ``python`` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APP_DIR": str(tmp_path), "FLINK_HOME": str(tmp_path),
            "FLINK_CONF_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "kafka:9092"}  # fmt: skip
    done = subprocess.run(["bash", str(ENTRYPOINT), "runner", *args], env=base | env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.splitlines()


def _instance_ids(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--instance-id"]


def test_a_runner_container_is_a_static_member_only_when_given_an_instance_id(tmp_path: Path) -> None:
    """A static member's planned stop leaves its partitions waiting (docs/operations.md): opt-in only."""
    argv = _runner_argv(tmp_path, "gbt", "--seed", "1")
    assert argv[:2] == ["-m", "runners.runner"] and argv[-2:] == ["--seed", "1"]
    assert _instance_ids(argv) == []
    assert _instance_ids(_runner_argv(tmp_path, "gbt", RUNNER_INSTANCE_ID="gbt-0")) == ["gbt-0"]


# --- the Flink configuration baked into the image ------------------------------------------


@pytest.fixture(scope="module")
def container_conf(flink_conf: ModuleType) -> dict[str, Any]:
    conf = flink_conf.build_config(
        load_conf(flink_conf.pyflink_conf_dir() / "config.yaml"),
        load_conf(REPO / "flink-conf" / "config.yaml"),
        flink_conf.python_settings(
            "/opt/venv/bin/python", "/opt/rendezvous/app", "/opt/venv/lib/python3.11/site-packages"
        ),
    )
    return flink_conf.flatten(conf)


def test_container_conf_keeps_the_project_settings(container_conf: dict[str, Any]) -> None:
    project = read_conf(REPO / "flink-conf" / "config.yaml")
    overridden = {
        k for k in project if k.startswith(("jobmanager.", "taskmanager.", "rest.")) and "memory" not in k
    }
    for key, value in project.items():
        if key not in overridden:
            assert container_conf[key] == value, key
    assert container_conf["python.execution-mode"] == "thread"
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in container_conf["env.java.opts.all"]


def test_container_conf_overrides_for_compose(container_conf: dict[str, Any]) -> None:
    assert container_conf["jobmanager.bind-host"] == "0.0.0.0"
    assert container_conf["taskmanager.bind-host"] == "0.0.0.0"
    assert container_conf["jobmanager.rpc.address"] == "jobmanager"
    assert container_conf["rest.address"] == "jobmanager"
    assert container_conf["rest.bind-address"] == "0.0.0.0"
    assert container_conf["rest.port"] == "8081"
    assert "taskmanager.host" not in container_conf
    assert container_conf["python.executable"] == "/opt/venv/bin/python"
    assert container_conf["python.client.executable"] == "/opt/venv/bin/python"
    assert container_conf["python.pythonpath"] == "/opt/venv/lib/python3.11/site-packages:/opt/rendezvous/app"
    assert container_conf["execution.checkpointing.dir"] == "file:///opt/rendezvous/state/checkpoints"


def test_container_conf_refuses_to_lose_thread_mode(flink_conf: ModuleType) -> None:
    project = load_conf(REPO / "flink-conf" / "config.yaml")
    project["python"]["execution-mode"] = "process"
    with pytest.raises(ValueError, match="execution-mode"):
        flink_conf.build_config({}, project, {})
    # Written dotted, the key is the same one: it still overrides the nested one.
    dotted = load_conf(REPO / "flink-conf" / "config.yaml") | {"python.execution-mode": "process"}
    with pytest.raises(ValueError, match="execution-mode"):
        flink_conf.build_config({}, dotted, {})


def test_container_conf_layers_dotted_and_nested_keys_as_one(flink_conf: ModuleType) -> None:
    distribution = {"state": {"backend": {"type": "rocksdb", "x": 1}}, "python": {"execution-mode": "thread"}}
    project = {"state.backend.type": "hashmap", "a.b": {"c.d": [1, 2]}, "a": {"b": {"e": True}}}
    conf = flink_conf.build_config(distribution, project, {"python.executable": "/py"})
    assert conf["state"] == {"backend": {"type": "hashmap", "x": 1}}  # dotted over nested: one key
    assert conf["a"] == {"b": {"c": {"d": [1, 2]}, "e": True}}  # nested in the file it writes, types kept
    flat = flink_conf.flatten(conf)  # the project's one reader (ops/flink_conf.py), as the job reads it
    assert flat["a.b.c.d"] == "1;2" and flat["a.b.e"] == "true" and flat["python.executable"] == "/py"
    with pytest.raises(ValueError, match="a section on one side"):
        flink_conf.build_config(distribution, {"rest": 1}, {})


def test_the_image_writes_its_flink_conf_with_the_project_installed() -> None:
    """docker/flink_conf.py reads and flattens with ops/flink_conf.py: the project must be installed
    (or the app dir on sys.path) when the Dockerfile runs it."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "from ops.flink_conf import" in (DOCKER / "flink_conf.py").read_text(encoding="utf-8")
    assert 0 <= text.index("pip install --no-cache-dir .") < text.index("python docker/flink_conf.py")


@pytest.fixture
def connector_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for the fetched Kafka connector jar, so flink_configuration runs offline."""
    jars = tmp_path / "jars"
    jars.mkdir()
    jar = jars / "flink-sql-connector-kafka-5.0.0-2.2.jar"
    jar.write_bytes(b"")
    (jars / rendezvous_job.SINK_CONTEXT_JAR).write_bytes(b"")
    (jars / rendezvous_job.ARCHIVE_JAR).write_bytes(b"")
    monkeypatch.setattr(rendezvous_job, "CONNECTOR_JARS_DIR", jars)
    return jar


def test_submitted_job_points_at_the_jobmanager(
    flink_conf: ModuleType, tmp_path: Path, connector_jar: Path
) -> None:
    """Under `flink run` the job's configuration is laid over the cluster's; the entrypoint passes
    --flink-conf (the container conf) and -D rest.port so the submission goes to jobmanager:8081."""
    conf_dir = tmp_path / "flink-conf"
    flink_conf.main(["--app-dir", str(REPO), "--out", str(conf_dir), "--python", "/opt/venv/bin/python"])
    assert (conf_dir / "log4j-console.properties").is_file() and (conf_dir / "log4j-cli.properties").is_file()
    cfg = rendezvous_job.parse_args(
        ["--policy", str(POLICY), "--bootstrap", "kafka:9092", "--flink-conf", str(conf_dir / "config.yaml")]
        + ["-D", "rest.port=8081"]
    )
    conf = rendezvous_job.flink_configuration(cfg)
    assert conf["rest.address"] == "jobmanager"
    assert conf["rest.port"] == "8081"
    assert conf["python.execution-mode"] == "thread"
    assert conf["pipeline.jars"].endswith("flink-sql-connector-kafka-5.0.0-2.2.jar")
    assert '-D "rest.port=$rest_port"' in ENTRYPOINT.read_text(encoding="utf-8")


def test_changelog_state_backend_gets_its_log_beside_the_checkpoints(
    tmp_path: Path, connector_jar: Path
) -> None:
    """-D state.changelog.enabled=true alone is enough: the job puts the changelog under its state
    directory (Flink refuses to start the filesystem changelog without a base path)."""
    base = ["--policy", str(POLICY), "--bootstrap", "k:9092", "--state-dir", str(tmp_path / "st")]
    off = rendezvous_job.flink_configuration(rendezvous_job.parse_args(base))
    assert rendezvous_job.CHANGELOG_PATH_KEY not in off
    on = rendezvous_job.flink_configuration(
        rendezvous_job.parse_args([*base, "-D", "state.changelog.enabled=true"])
    )
    assert on[rendezvous_job.CHANGELOG_STORAGE_KEY] == "filesystem"
    assert on[rendezvous_job.CHANGELOG_PATH_KEY] == (tmp_path / "st" / "changelog").resolve().as_uri()
    given = rendezvous_job.flink_configuration(
        rendezvous_job.parse_args(
            [
                *base,
                "-D",
                "state.changelog.enabled=True",  # Flink reads booleans in any case
                "-D",
                "state.changelog.dstl.dfs.base-path=file:///x",
            ]
        )
    )
    assert given[rendezvous_job.CHANGELOG_PATH_KEY] == "file:///x"
    assert given[rendezvous_job.CHANGELOG_STORAGE_KEY] == "filesystem"

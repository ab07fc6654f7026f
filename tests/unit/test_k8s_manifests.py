"""deploy/k8s: the Kubernetes manifests, checked without a cluster.

Each object against its schema, as strictly as ``kubectl apply`` (built-in kinds: the Kubernetes OpenAPI
schemas of the kubernetes-validate package; custom resources: their CRD's schema, vendored in
deploy/crd-schemas/), the kustomization as kubectl renders it, and against the code it deploys: every
topic of udfs/names.py has a KafkaTopic, every role's ACLs are ops/kafka_security's, every model of the
policy has a runner, the job's and the runners' arguments parse with their own argparse, the job's Flink
configuration is flink-conf/config.yaml's, the paths exist in the image docker/Dockerfile builds.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jobs import rendezvous_job
from ops import kafka_client, kafka_security
from ops.flink_conf import read_conf
from runners import runner as runner_cli
from runners import train
from udfs import names
from udfs.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CRD_SCHEMAS = REPO / "deploy" / "crd-schemas"
POLICY = REPO / "policies" / "default.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
K8S_VERSION = "1.32"  # the Kubernetes API the built-in kinds are validated against
NOT_MANIFESTS = {"kustomization.yaml", "kustomizeconfig.yaml", "policy.yaml"}
KAFKA_CLIENT_CONFIGMAP = "rendezvous-kafka-client"
CRD_FILES = {
    ("flink.apache.org/v1beta1", "FlinkDeployment"): "flinkdeployments.flink.apache.org-v1beta1.json",
    ("kafka.strimzi.io/v1beta2", "Kafka"): "kafkas.kafka.strimzi.io-v1beta2.json",
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): "kafkanodepools.kafka.strimzi.io-v1beta2.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopics.kafka.strimzi.io-v1beta2.json",
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): "kafkausers.kafka.strimzi.io-v1beta2.json",
}
# Image paths (docker/Dockerfile; test_image_paths checks them there).
APP_DIR = "/opt/rendezvous/app"
FLINK_HOME = "/opt/venv/lib/python3.11/site-packages/pyflink"
MODELS_DIR = "/opt/rendezvous/models"
# flink-conf/config.yaml keys that configure the local session cluster only: its addresses and ports
# (native Kubernetes sets its own), the parallelism (replicas x slots) and the process sizes (the
# FlinkDeployment's resource.memory, compared separately).
SESSION_ONLY = {
    "jobmanager.bind-host", "jobmanager.rpc.address", "jobmanager.rpc.port", "taskmanager.bind-host",
    "taskmanager.host", "rest.address", "rest.bind-address", "rest.port", "parallelism.default",
    "jobmanager.memory.process.size", "taskmanager.memory.process.size",
}  # fmt: skip
# The Flink Kubernetes Operator's own checks of a FlinkDeployment (DefaultValidator, 1.15.0), as far as
# they concern this spec.
OPERATOR_NAME_RE = r"[a-z]([-a-z\d]{0,43}[a-z\d])?"
OPERATOR_FORBIDDEN_KEYS = ("kubernetes.namespace", "kubernetes.cluster-id", "high-availability.cluster-id")
JOB_FLINK_OPTIONS = ("-py", "-pym", "-pyfs", "-pyarch", "-pyexec", "-pyclientexec", "-pyreq")
STRIMZI_RESOURCE_TYPES = {
    kafka_security.TOPIC: "topic",
    kafka_security.GROUP: "group",
    kafka_security.TRANSACTIONAL_ID: "transactionalId",
    kafka_security.CLUSTER: "cluster",
}


# --- reading the manifests ------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) of every resource the kustomization lists, in order."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            if doc is not None:
                out.append((name, doc))
    return out


OBJECTS = manifests()


def object_id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[1]['kind']}/{item[1]['metadata']['name']}"


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in OBJECTS if o["kind"] == kind}


def the(kind: str) -> dict[str, Any]:
    found = list(of_kind(kind).values())
    assert len(found) == 1, f"one {kind} expected, found {len(found)}"
    return found[0]


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CRD_FILES


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod spec the manifests define: the Deployments' templates and the FlinkDeployment's."""
    out = {f"Deployment/{n}": d["spec"]["template"]["spec"] for n, d in of_kind("Deployment").items()}
    out["FlinkDeployment/rendezvous"] = the("FlinkDeployment")["spec"]["podTemplate"]["spec"]
    return out


def job_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("FlinkDeployment")["spec"]
    return spec


def flink_configuration() -> dict[str, str]:
    return {str(k): str(v) for k, v in job_spec()["flinkConfiguration"].items()}


def split_job_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """PythonDriver's arguments: its own options (first, in pairs), then the job's."""
    flink: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i] in JOB_FLINK_OPTIONS:
        flink[args[i]] = args[i + 1]
        i += 2
    return flink, args[i:]


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def partitions(topic: str) -> int:
    value: int = of_kind("KafkaTopic")[topic]["spec"]["partitions"]
    return value


def job_parallelism() -> int:
    spec = job_spec()
    return int(spec["taskManager"]["replicas"]) * int(flink_configuration()["taskmanager.numberOfTaskSlots"])


def dockerfile_env() -> dict[str, str]:
    """The ENV settings of the Dockerfile's runtime stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def pyflink_dir() -> Path:
    """The installed PyFlink (the wheel the image installs too)."""
    spec = importlib.util.find_spec("pyflink")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def flink_conf_module() -> Any:
    """docker/flink_conf.py: what the image bakes into its Flink configuration."""
    spec = importlib.util.spec_from_file_location("docker_flink_conf", REPO / "docker" / "flink_conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject_pin(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==", 1)[1] for d in deps if d.split("==", 1)[0].strip().lower() == package]
    assert len(pins) == 1
    return pins[0]


# --- schemas --------------------------------------------------------------------------------------


def kube_schema(node: Any, branch: bool = False) -> Any:
    """An OpenAPI v3 schema of a CRD as the API server applies it with strict field validation: an
    object that lists its properties refuses others (unless x-kubernetes-preserve-unknown-fields),
    nullable takes null, x-kubernetes-int-or-string takes an integer or a string. ``branch``: a
    oneOf/anyOf/allOf alternative, which only constrains the object its parent describes."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = kube_schema(node[key])
    for key in ("properties", "patternProperties", "$defs"):
        if key in node:
            out[key] = {name: kube_schema(sub) for name, sub in node[key].items()}
    for key in ("oneOf", "anyOf", "allOf"):
        if key in node:
            out[key] = [kube_schema(sub, branch=True) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not branch
    ):
        out["additionalProperties"] = False
    return out


def _cel_unchecked(
    validator: Any, rules: Any, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    """CEL rules (x-kubernetes-validations) are not evaluated here: a manifest may not rely on them."""
    yield jsonschema.ValidationError(
        f"sets a field with CEL rules this test cannot evaluate: {[r.get('rule') for r in rules]}"
    )


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-validations": _cel_unchecked}
)


def crd_validator(obj: dict[str, Any]) -> Any:
    path = CRD_SCHEMAS / CRD_FILES[(obj["apiVersion"], obj["kind"])]
    schema = kube_schema(json.loads(path.read_text(encoding="utf-8")))
    # Every object has these, whether its CRD's schema lists them or not (the Flink operator's does not).
    schema["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                            "metadata": {"type": "object"}, **schema["properties"]}  # fmt: skip
    return CrdValidator(schema)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse ``obj`` (an empty list: it would take it)."""
    if not is_custom(obj):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
        return []
    errors = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in crd_validator(obj).iter_errors(obj)]
    # A custom resource's metadata is an ObjectMeta like any other object's.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        kubernetes_validate.validate(meta, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        errors.append(f"metadata.{'.'.join(str(p) for p in e.path)}: {e.message}")
    if obj["kind"] == "FlinkDeployment":  # its Pod template, as strictly as a Pod
        template = obj["spec"]["podTemplate"]
        try:
            kubernetes_validate.validate(template, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"spec.podTemplate.{'.'.join(str(p) for p in e.path)}: {e.message}")
    return errors


# --- every object against its schema ----------------------------------------------------------


def test_every_manifest_is_in_the_kustomization() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - NOT_MANIFESTS
    assert set(kustomization()["resources"]) == files


@pytest.mark.parametrize("item", OBJECTS, ids=object_id)
def test_each_object_is_valid_for_the_api_server(item: tuple[str, dict[str, Any]]) -> None:
    assert schema_errors(item[1]) == [], item[0]


def _mutated(kind: str, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    obj = copy.deepcopy(of_kind(kind)[name])
    change(obj)
    return obj


@pytest.mark.parametrize(
    ("kind", "name", "change", "error"),
    [
        ("FlinkDeployment", "rendezvous", lambda o: o["spec"].update(jobb={}), "'jobb' was unexpected"),
        ("FlinkDeployment", "rendezvous", lambda o: o["spec"]["job"].update(upgradeMode="savepoints"), "savepoints"),
        ("FlinkDeployment", "rendezvous", lambda o: o["spec"].update(flinkVersion="v2_9"), "v2_9"),
        ("FlinkDeployment", "rendezvous", lambda o: o["spec"]["podTemplate"]["spec"].update(volumez=[]), "volumez"),
        ("FlinkDeployment", "rendezvous", lambda o: o.update(status={}), "'status' was unexpected"),
        ("Kafka", "rendezvous", lambda o: o["spec"]["kafka"]["listeners"][0].update(tls="yes"), "'yes'"),
        ("Kafka", "rendezvous", lambda o: o["spec"]["kafka"].update(metricsConfig={"type": "jmxPrometheusExporter"}), "CEL"),
        ("KafkaUser", "job", lambda o: o["spec"]["authorization"]["acls"][0].update(operations=["Reed"]), "Reed"),
        ("KafkaUser", "job", lambda o: o["spec"]["authentication"].update(type="scram-sha-1"), "scram-sha-1"),
        ("KafkaTopic", "requests", lambda o: o["spec"].update(partitions=0), "minimum"),
        ("KafkaNodePool", "dual-role", lambda o: o["spec"].update(roles=["leader"]), "leader"),
        ("Deployment", "runner-gbt", lambda o: o["spec"].update(replica=2), "'replica' was unexpected"),
        ("ConfigMap", "rendezvous-kafka-client", lambda o: o["metadata"].update(label={}), "'label' was unexpected"),
        ("KafkaTopic", "requests", lambda o: o["metadata"].update(lables={}), "'lables' was unexpected"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_the_validation_refuses_what_the_api_server_refuses(
    kind: str, name: str, change: Callable[[dict[str, Any]], None], error: str
) -> None:
    errors = schema_errors(_mutated(kind, name, change))
    assert errors and any(error in e for e in errors), errors


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` applies (kubectl's built-in kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization is not rendered")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def test_the_rendered_kustomization_is_valid_and_consistent(rendered: list[dict[str, Any]]) -> None:
    policy_cm = next(o for o in rendered if o["metadata"]["name"].startswith("rendezvous-policy-"))
    assert sorted(object_id(("", o)) for o in rendered) == sorted(
        [object_id(i) for i in OBJECTS] + [object_id(("", policy_cm))]
    )
    for obj in rendered:
        assert schema_errors(obj) == [], object_id(("", obj))
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kustomization()["namespace"], object_id(("", obj))
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rendezvous"
    assert policy_cm["data"]["policy.yaml"] == POLICY.read_text(encoding="utf-8")
    job = next(o for o in rendered if o["kind"] == "FlinkDeployment")
    volumes = {v["name"]: v for v in job["spec"]["podTemplate"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == policy_cm["metadata"]["name"]
    images = {job["spec"]["image"]} | {
        c["image"] for c in job["spec"]["podTemplate"]["spec"]["initContainers"]
    }
    for obj in rendered:
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            images |= {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
    assert images == {"rendezvous:local"}


# --- Kafka: the cluster, its topics and its principals -------------------------------------------


def test_kafka_is_kraft_with_node_pools_and_the_projects_broker_line() -> None:
    kafka = the("Kafka")
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/node-pools": "enabled",
        "strimzi.io/kraft": "enabled",
    }
    pools = of_kind("KafkaNodePool")
    assert {r for p in pools.values() for r in p["spec"]["roles"]} == {"controller", "broker"}
    for pool in pools.values():
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    # Strimzi 0.47.0 runs Kafka 3.9.1 at most; the project's broker line is 3.9 (deps/pom.xml).
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(REPO / "deps" / "pom.xml").getroot().find("m:properties/m:kafka.version", ns)
    assert node is not None and node.text
    pom_line = node.text.strip().rsplit(".", 1)[0]
    assert kafka["spec"]["kafka"]["version"].rsplit(".", 1)[0] == pom_line
    assert kafka["spec"]["kafka"]["metadataVersion"].startswith(pom_line)


def test_kafka_settings_fit_the_brokers_and_the_job() -> None:
    kafka = the("Kafka")
    config = kafka["spec"]["kafka"]["config"]
    brokers = sum(
        p["spec"]["replicas"] for p in of_kind("KafkaNodePool").values() if "broker" in p["spec"]["roles"]
    )
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert config[key] <= brokers, key
    assert config["min.insync.replicas"] < config["default.replication.factor"]
    assert config["transaction.state.log.min.isr"] < config["transaction.state.log.replication.factor"]
    assert config["transaction.max.timeout.ms"] == rendezvous_job.KAFKA_TRANSACTION_TIMEOUT_MS
    # Return addresses are made on first use, with the broker's default partitions.
    assert config["auto.create.topics.enable"] is True
    assert config["num.partitions"] >= job_parallelism()
    for topic in of_kind("KafkaTopic").values():
        assert topic["spec"]["replicas"] <= brokers
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    # Clients authenticate (SCRAM-SHA-512 over TLS, as `broker start --secure --tls`) and ACLs apply.
    [listener] = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert set(kafka["spec"]["entityOperator"]) == {"topicOperator", "userOperator"}


def test_every_topic_of_names_has_a_kafka_topic() -> None:
    declared = {v for k, v in vars(names).items() if k.startswith("TOPIC_") and isinstance(v, str)}
    topics = of_kind("KafkaTopic")
    assert set(topics) == declared
    for name, topic in topics.items():
        assert topic["spec"].get("config", {}) == names.TOPIC_CONFIGS.get(name, {}), name
    assert names.TOPIC_CONFIGS[names.TOPIC_POLICIES] == {"cleanup.policy": "compact"}


def strimzi_acls(user: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    out = set()
    for acl in user["spec"]["authorization"]["acls"]:
        assert acl.get("host", "*") == "*"
        r = acl["resource"]
        out |= {(r["type"], r["name"], r["patternType"], op) for op in acl["operations"]}
    return out


def project_acls(principal: str, role: str) -> set[tuple[str, str, str, str]]:
    """ops/kafka_security's grants of one principal, in Strimzi's words (DESCRIBE_CONFIGS -> DescribeConfigs)."""
    return {
        (
            STRIMZI_RESOURCE_TYPES[g.resource],
            g.name,
            "prefix" if g.prefixed else "literal",
            "".join(word.capitalize() for word in op.split("_")),
        )
        for g in kafka_security.principal_grants(principal, role)
        for op in g.operations
    }


def test_each_role_is_a_kafka_user_with_the_acls_of_ops_kafka_security() -> None:
    users = of_kind("KafkaUser")
    assert set(users) == set(names.ROLES)  # principals named as their roles, as on the local broker
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == the("Kafka")["metadata"]["name"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authorization"]["type"] == "simple"
        assert strimzi_acls(user) == project_acls(name, name), name


def test_the_acl_translation_sees_a_difference() -> None:
    user = copy.deepcopy(of_kind("KafkaUser")["job"])
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Write"]
    assert strimzi_acls(user) != project_acls("job", "job")
    assert ("topic", "*", "literal", "DescribeConfigs") in project_acls("operator", "operator")


# --- Kafka clients: where they connect, as whom, trusting what ------------------------------------


def kafka_endpoints() -> tuple[str, str]:
    """(bootstrap, CA Secret) of the cluster, by Strimzi's naming: <cluster>-kafka-bootstrap:<port>,
    <cluster>-cluster-ca-cert."""
    kafka = the("Kafka")
    cluster = kafka["metadata"]["name"]
    [listener] = kafka["spec"]["kafka"]["listeners"]
    return f"{cluster}-kafka-bootstrap:{listener['port']}", f"{cluster}-cluster-ca-cert"


def init_container(pod: dict[str, Any]) -> dict[str, Any]:
    [init] = [c for c in pod.get("initContainers", []) if c["name"] == "kafka-client-config"]
    return init


def test_every_pod_connects_to_the_cluster_as_a_kafka_user_and_trusts_its_ca() -> None:
    bootstrap, ca_secret = kafka_endpoints()
    users = of_kind("KafkaUser")
    base = of_kind("ConfigMap")[KAFKA_CLIENT_CONFIGMAP]["metadata"]["name"]
    for where, pod in pod_specs().items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-ca"]["secret"]["secretName"] == ca_secret, where
        assert volumes["kafka-base"]["configMap"]["name"] == base, where
        assert volumes["kafka-client"]["emptyDir"]["medium"] == "Memory", where
        for env in init_container(pod)["env"]:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] in users and ref["key"] == "sasl.jaas.config", where
        for container in pod["containers"] + pod["initContainers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (where, mount)
        for env in (e for c in pod["containers"] for e in c.get("env", [])):
            if env["name"] == "KAFKA_BOOTSTRAP":
                assert env["value"] == bootstrap, where
    assert option(split_job_args(job_spec()["job"]["args"])[1], "--bootstrap") == bootstrap


def run_init_container(pod: dict[str, Any], root: Path, secrets: dict[str, str]) -> None:
    """Run a pod's kafka-client-config script here, /etc/rendezvous/ mapped to ``root``."""
    init = init_container(pod)
    assert init["command"] == ["/bin/bash", "-ec"]
    [script] = init["args"]
    env = {e["name"]: secrets[e["valueFrom"]["secretKeyRef"]["name"]] for e in init["env"]}
    subprocess.run(
        ["bash", "-ec", script.replace("/etc/rendezvous/", f"{root}/")],
        env={"PATH": os.environ["PATH"], **env},
        check=True,
        timeout=30,
    )


@pytest.mark.parametrize("where", sorted(pod_specs()))
def test_the_init_container_writes_a_file_the_projects_reader_takes(where: str, tmp_path: Path) -> None:
    """The static part (kafka-client.yaml) and the Secret's line, as Strimzi's user operator writes it
    (KafkaUserModel: ``ScramLoginModule required username="<user>" password="<password>";``), make a
    file ops/kafka_client reads: SASL_SSL, SCRAM-SHA-512, the user, the cluster CA; mode 0600."""
    pod = pod_specs()[where]
    (tmp_path / "kafka-base").mkdir()
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka-ca").mkdir()
    (tmp_path / "kafka-ca" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    static = of_kind("ConfigMap")[KAFKA_CLIENT_CONFIGMAP]["data"]["client.properties"]
    (tmp_path / "kafka-base" / "client.properties").write_text(
        static.replace("/etc/rendezvous/", f"{tmp_path}/")
    )
    secrets = {
        user: f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="pw-{user}";'
        for user in of_kind("KafkaUser")
    }
    run_init_container(pod, tmp_path, secrets)
    [main] = [c for c in pod["containers"] if c["name"] in ("runner", "toolbox", "flink-main-container")]
    mount = next(m["mountPath"] for m in main["volumeMounts"] if m["name"] == "kafka-client")
    written = sorted((tmp_path / "kafka").iterdir())
    assert written
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        security = kafka_client.load_client_properties(path)
        assert (security.protocol, security.mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert security.password == f"pw-{security.username}"
        assert (
            security.ca_file == str((tmp_path / "kafka-ca" / "ca.crt").resolve()) and security.verify_hostname
        )
        assert security.flink_table_options()["properties.security.protocol"] == "SASL_SSL"
    # The file each container is given (--kafka-config) is one the init container wrote.
    given = [a for c in pod["containers"] for a in c.get("args", []) if a.endswith(".properties")]
    if where.startswith("FlinkDeployment"):
        given = [option(split_job_args(job_spec()["job"]["args"])[1], "--kafka-config")]
    for path in given:
        assert path.startswith(mount + "/") and (tmp_path / "kafka" / Path(path).name).is_file(), path


def test_each_workload_runs_as_its_role() -> None:
    def users_of(pod: dict[str, Any]) -> set[str]:
        return {e["valueFrom"]["secretKeyRef"]["name"] for e in init_container(pod)["env"]}

    pods = pod_specs()
    assert users_of(pods["FlinkDeployment/rendezvous"]) == {names.ROLE_JOB}
    assert users_of(pods["Deployment/toolbox"]) == {names.ROLE_OPERATOR, names.ROLE_CLIENT}
    for where, pod in pods.items():
        if where.startswith("Deployment/runner-"):
            assert users_of(pod) == {names.ROLE_RUNNER}, where


# --- the job ------------------------------------------------------------------------------------


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The policy as the job's pod sees it: the ConfigMap's key, under the volume's mount."""
    [source] = kustomization()["configMapGenerator"][0]["files"]
    path = tmp_path / Path(source).name
    path.write_text((K8S / source).read_text(encoding="utf-8"))
    return path


@pytest.fixture
def connector_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jars = tmp_path / "jars"
    jars.mkdir()
    jar = jars / "flink-sql-connector-kafka-5.0.0-2.2.jar"
    jar.write_bytes(b"")
    (jars / rendezvous_job.SINK_CONTEXT_JAR).write_bytes(b"")
    (jars / rendezvous_job.ARCHIVE_JAR).write_bytes(b"")
    monkeypatch.setattr(rendezvous_job, "CONNECTOR_JARS_DIR", jars)
    return jar


def job_config(policy_file: Path, flink_conf: Path | None = None) -> rendezvous_job.JobConfig:
    """The job's own arguments, parsed by the job's own parser (the policy and the Flink configuration
    from files standing in for the pod's)."""
    _, args = split_job_args(job_spec()["job"]["args"])
    args = list(args)
    args[args.index("--policy") + 1] = str(policy_file)
    if flink_conf is not None:
        args[args.index("--flink-conf") + 1] = str(flink_conf)
    return rendezvous_job.parse_args(args)


def test_the_policy_is_the_default_policy_mounted_where_the_job_reads_it(policy_file: Path) -> None:
    [generator] = kustomization()["configMapGenerator"]
    assert generator["name"] == "rendezvous-policy" and generator["files"] == ["policy.yaml"]
    assert (K8S / "policy.yaml").read_text(encoding="utf-8") == POLICY.read_text(encoding="utf-8")
    _, args = split_job_args(job_spec()["job"]["args"])
    policy_path = Path(option(args, "--policy"))
    pod = pod_specs()["FlinkDeployment/rendezvous"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [main] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert policy_path.name == "policy.yaml"
    assert volumes[mounts[str(policy_path.parent)]]["configMap"]["name"] == generator["name"]
    assert job_config(policy_file).policy == load_policy(POLICY)


def test_the_job_arguments_parse_with_the_jobs_own_parser(policy_file: Path) -> None:
    cfg = job_config(policy_file)
    bootstrap, _ = kafka_endpoints()
    assert cfg.bootstrap == bootstrap
    assert cfg.kafka_config == Path("/etc/rendezvous/kafka/client.properties")
    # With a Kafka config the job answers only to the results topics the job role may write.
    assert cfg.return_address_prefix == names.RESULTS_PREFIX
    assert cfg.group_id == names.GROUP_RENDEZVOUS
    pod = pod_specs()["FlinkDeployment/rendezvous"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [main] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    claims = {
        path: volumes[name].get("persistentVolumeClaim", {}).get("claimName") for path, name in mounts.items()
    }
    pvcs = of_kind("PersistentVolumeClaim")
    assert claims[str(cfg.state_dir)] in pvcs
    assert claims[str(cfg.archive_dir.parent)] in pvcs
    for claim in filter(None, claims.values()):
        assert pvcs[claim]["spec"]["accessModes"] == ["ReadWriteMany"], claim  # every TaskManager mounts it


def test_the_job_runs_under_pyflinks_driver_from_the_image() -> None:
    job = job_spec()["job"]
    env = dockerfile_env()
    version = pyproject_pin("apache-flink")
    assert env["FLINK_HOME"] == FLINK_HOME
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    jar = f"{FLINK_HOME}/opt/flink-python-{version}.jar"
    assert job["jarURI"] == f"local://{jar}"
    assert (pyflink_dir() / "opt" / f"flink-python-{version}.jar").is_file()  # the pinned wheel ships it
    flink_args, _ = split_job_args(job["args"])
    assert set(flink_args) == {"-py", "-pyfs"}
    assert flink_args["-py"].startswith(APP_DIR + "/")
    assert (REPO / Path(flink_args["-py"]).relative_to(APP_DIR)).resolve() == Path(
        rendezvous_job.__file__
    ).resolve()
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"COPY . {APP_DIR}" in dockerfile
    assert f"-c {flink_args['-pyfs']} udfs" in dockerfile  # the udfs zip the image builds
    # The flinkVersion is the pinned PyFlink's line.
    assert job_spec()["flinkVersion"] == "v" + "_".join(version.split(".")[:2])


def test_flink_starts_the_images_distribution() -> None:
    conf = flink_configuration()
    env = dockerfile_env()
    assert conf["kubernetes.flink.conf.dir"] == env["FLINK_CONF_DIR"]
    assert conf["kubernetes.flink.log.dir"] == env["FLINK_LOG_DIR"]
    entry = conf["kubernetes.entry.path"]
    assert f"docker/entrypoint.sh {entry}" in DOCKERFILE.read_text(encoding="utf-8")
    # Flink's command is `<entry> bash -c "kubernetes-jobmanager.sh ..."`: the entrypoint runs a role it
    # does not know as a command, and the script is on the PATH.
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert re.search(r'^    \*\)\n        exec "\$role" "\$@"', text, flags=re.MULTILINE)
    assert not re.search(r"^    bash[ |)]", text, flags=re.MULTILINE)
    jar = job_spec()["job"]["jarURI"].removeprefix("local://")
    for side in ("master", "taskmanager"):
        assert conf[f"containerized.{side}.env.PATH"].split(":")[:2] == [f"{FLINK_HOME}/bin", "/opt/venv/bin"]
        assert conf[f"containerized.{side}.env.HADOOP_CLASSPATH"] == jar
    assert (pyflink_dir() / "bin" / "kubernetes-jobmanager.sh").is_file()


def test_flink_configuration_is_the_projects(flink_conf_module: Any) -> None:
    conf = flink_configuration()
    project = read_conf(REPO / "flink-conf" / "config.yaml")
    for key, value in project.items():
        if key not in SESSION_ONLY:
            assert conf.get(key) == value, key
    assert conf["python.execution-mode"] == "thread"
    spec = job_spec()
    assert spec["jobManager"]["resource"]["memory"] == project["jobmanager.memory.process.size"]
    assert spec["taskManager"]["resource"]["memory"] == project["taskmanager.memory.process.size"]
    distribution = read_conf(pyflink_dir() / "conf" / "config.yaml")
    assert conf["env.java.opts.all"] == distribution["env.java.opts.all"]
    python = flink_conf_module.python_settings(
        "/opt/venv/bin/python", APP_DIR, FLINK_HOME.removesuffix("/pyflink")
    )
    assert {k: conf[k] for k in python} == python
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir"):
        assert conf[key] == flink_conf_module.CONTAINER_OVERRIDES[key], key
    # The scraper the pod annotations invite comes from another pod: every interface, on purpose.
    reporter = rendezvous_job.prometheus_reporter("9249", host="0.0.0.0")
    assert {k: conf.get(k) for k in reporter} == reporter


def test_the_job_lays_the_same_state_dirs_over_the_operators_configuration(
    policy_file: Path, connector_jar: Path, tmp_path: Path
) -> None:
    """The job reads the configuration Flink generates (--flink-conf) and sets its checkpoint and
    savepoint directories from --state-dir: they must be the ones the operator takes savepoints to."""
    generated = tmp_path / "config.yaml"
    generated.write_text(yaml.safe_dump(job_spec()["flinkConfiguration"]))
    conf = rendezvous_job.flink_configuration(job_config(policy_file, generated))
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir"):
        assert conf[key] == flink_configuration()[key], key
    assert conf["python.execution-mode"] == "thread"
    assert conf["pipeline.max-parallelism"] == flink_configuration()["pipeline.max-parallelism"]


def test_the_operator_would_accept_the_spec() -> None:
    obj = the("FlinkDeployment")
    conf = flink_configuration()
    assert re.fullmatch(OPERATOR_NAME_RE, obj["metadata"]["name"])
    assert not any(key in conf for key in OPERATOR_FORBIDDEN_KEYS)
    job = obj["spec"]["job"]
    assert (job["upgradeMode"], job["state"], job["allowNonRestoredState"]) == ("savepoint", "running", False)
    # savepoint upgrades need both directories; rollback needs HA; replicas decide the parallelism.
    assert conf["execution.checkpointing.dir"] and conf["execution.checkpointing.savepoint-dir"]
    assert conf["high-availability.type"] == "kubernetes" and conf["high-availability.storageDir"]
    assert "parallelism" not in job  # ignored when taskManager.replicas is set
    assert obj["spec"]["taskManager"]["replicas"] >= 1
    assert obj["spec"].get("jobManager", {}).get("replicas", 1) == 1


def test_parallelism_fits_the_partitions_and_the_max_parallelism() -> None:
    parallelism = job_parallelism()
    assert flink_configuration()["taskmanager.numberOfTaskSlots"] == "1"  # thread mode: scale by TaskManagers
    assert parallelism >= 2
    for topic in (names.TOPIC_REQUESTS, names.TOPIC_SCORES, names.TOPIC_RESULTS_DEFAULT):
        assert partitions(topic) >= parallelism, topic
    assert parallelism <= int(flink_configuration()["pipeline.max-parallelism"])


def test_the_job_has_the_rbac_of_native_kubernetes() -> None:
    account = job_spec()["serviceAccount"]
    assert account in of_kind("ServiceAccount")
    [binding] = of_kind("RoleBinding").values()
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": kustomization()["namespace"]}
    ]
    rules = of_kind("Role")[binding["roleRef"]["name"]]["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("", "configmaps"), ("apps", "deployments")} <= granted


# --- the runners --------------------------------------------------------------------------------


def runners() -> dict[str, dict[str, Any]]:
    return {n: d for n, d in of_kind("Deployment").items() if n.startswith("runner-")}


def runner_argv(deployment: dict[str, Any]) -> tuple[str, list[str]]:
    """(model, argv of runners.runner) of a runner container, as the image's entrypoint builds it:
    `runner MODEL flags` -> --model-dir $MODELS_DIR/MODEL --bootstrap $KAFKA_BOOTSTRAP flags."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    role, model, *flags = container["args"]
    assert role == "runner"
    env = {e["name"]: e["value"] for e in container["env"]}
    return model, ["--model-dir", f"{MODELS_DIR}/{model}", "--bootstrap", env["KAFKA_BOOTSTRAP"], *flags]


def test_one_runner_deployment_per_model_of_the_policy() -> None:
    policy_models = {m.id for m in load_policy(POLICY).models}
    models = {name: runner_argv(d)[0] for name, d in runners().items()}
    assert set(models.values()) == policy_models
    assert all(name == f"runner-{model}" for name, model in models.items())
    assert policy_models <= {spec.model_id for spec in train.SPECS}  # trained into the image
    text = re.sub(r"\\\n\s*", "", ENTRYPOINT.read_text(encoding="utf-8"))  # continuation lines joined
    assert re.search(
        r'^\s*exec python -m runners\.runner --model-dir "\$MODELS_DIR/\$model" --bootstrap "\$KAFKA_BOOTSTRAP" .*"\$@"$',
        text,
        flags=re.MULTILINE,
    )
    assert f"MODELS_DIR=${{MODELS_DIR:-{MODELS_DIR}}}" in text


def test_runner_arguments_parse_and_replicas_share_their_models_group() -> None:
    bootstrap, _ = kafka_endpoints()
    for name, deployment in runners().items():
        _, argv = runner_argv(deployment)
        args, faults = runner_cli._parse_args(argv)
        assert args.bootstrap == bootstrap
        assert args.kafka_config == Path("/etc/rendezvous/kafka/client.properties")
        assert args.group is None and not args.model_ids  # the group runner-<model>, shared by replicas
        assert faults == runner_cli.Faults()  # no injected latency or failures: these are the real models
        assert 1 <= deployment["spec"]["replicas"] <= partitions(names.TOPIC_REQUESTS), name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_toolbox_holds_the_operators_and_a_clients_files() -> None:
    pod = of_kind("Deployment")["toolbox"]["spec"]["template"]["spec"]
    [script] = init_container(pod)["args"]
    written = set(re.findall(r"> /etc/rendezvous/kafka/(\S+)", script))
    assert written == {f"{names.ROLE_OPERATOR}.properties", f"{names.ROLE_CLIENT}.properties"}
    [container] = pod["containers"]
    assert container["args"] == ["sleep", "infinity"]

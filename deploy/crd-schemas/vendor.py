"""Vendor the schemas of the custom resources deploy/k8s uses (run by hand, when an operator is upgraded).

The CRDs come with their operators (the Flink Kubernetes Operator's Helm chart, Strimzi's install
files) and are 1.2 MB of YAML, mostly descriptions and copies of the Pod schema; no registry this
project reaches serves them, so tests/unit/test_k8s_manifests.py validates against these copies. Each
keeps the openAPIV3Schema of the one version the manifests use, without ``description`` and
``example`` (documentation only) and without ``status`` (a subresource: never part of what is
applied), with every subtree that occurs more than once stored once under ``$defs`` and referenced:
the same schema, a sixth of the size.

    python deploy/crd-schemas/vendor.py flinkdeployments.flink.apache.org-v1.yml 040-Crd-kafka.yaml ...

writes ``<plural>.<group>-<version>.json`` next to this file for each CRD named in ``WANTED``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# (group, kind) -> the served version deploy/k8s writes
WANTED = {
    ("flink.apache.org", "FlinkDeployment"): "v1beta1",
    ("kafka.strimzi.io", "Kafka"): "v1beta2",
    ("kafka.strimzi.io", "KafkaNodePool"): "v1beta2",
    ("kafka.strimzi.io", "KafkaTopic"): "v1beta2",
    ("kafka.strimzi.io", "KafkaUser"): "v1beta2",
}
MIN_SHARED = 400  # characters of canonical JSON: smaller repeated subtrees stay inline


def _canon(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


# The keywords whose values are schemas, a map of schemas, or a list of schemas (OpenAPI v3 as CRDs use it);
# every other value (enum, required, default, ...) is data and is left as it is.
SCHEMA_KEYS = ("items", "additionalProperties", "not")
SCHEMA_MAP_KEYS = ("properties", "patternProperties")
SCHEMA_LIST_KEYS = ("oneOf", "anyOf", "allOf")


def map_subschemas(node: Any, fn: Any) -> Any:
    """A copy of the schema ``node`` with ``fn`` applied to each of its direct subschemas."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in SCHEMA_KEYS:
        if isinstance(node.get(key), dict):
            out[key] = fn(node[key])
    for key in SCHEMA_MAP_KEYS:
        if key in node:
            out[key] = {name: fn(sub) for name, sub in node[key].items()}
    for key in SCHEMA_LIST_KEYS:
        if key in node:
            out[key] = [fn(sub) for sub in node[key]]
    return out


DOC_KEYS = ("description", "example")  # documentation only: no bearing on what is valid


def without_descriptions(node: Any) -> Any:
    """The schema without its documentation keywords (a property named description stays)."""
    if not isinstance(node, dict):
        return node
    return map_subschemas({k: v for k, v in node.items() if k not in DOC_KEYS}, without_descriptions)


def shared_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each subschema seen twice or more moved to ``$defs`` (named by its hash)."""
    seen: dict[str, int] = {}

    def count(node: Any) -> Any:
        if isinstance(node, dict):
            text = _canon(node)
            if len(text) >= MIN_SHARED:
                seen[text] = seen.get(text, 0) + 1
            map_subschemas(node, count)
        return node

    count(schema)
    defs: dict[str, Any] = {}

    def replace(node: Any, top: bool = False) -> Any:
        if not isinstance(node, dict):
            return node
        text = _canon(node)
        if not top and seen.get(text, 0) >= 2:
            name = "d" + hashlib.sha256(text.encode()).hexdigest()[:12]
            if name not in defs:
                defs[name] = {}
                defs[name] = replace(node, top=True)
            return {"$ref": f"#/$defs/{name}"}
        return map_subschemas(node, replace)

    out = replace(schema, top=True)
    if defs:
        out["$defs"] = dict(sorted(defs.items()))
    return out


def vendor(crd_file: Path) -> Path | None:
    """Write the wanted version's schema of one CRD file; None if it is not a CRD ``WANTED`` names."""
    raw = crd_file.read_bytes()
    crd = yaml.safe_load(raw)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        return None
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    version = WANTED.get((group, kind))
    if version is None:
        return None
    served = {v["name"]: v for v in spec["versions"] if v.get("served")}
    if version not in served:
        raise SystemExit(f"error: {crd_file}: {kind} does not serve {version} (serves {', '.join(served)})")
    schema = without_descriptions(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    out = {
        "$comment": (
            f"{kind} {group}/{version}: the openAPIV3Schema of {crd_file.name} "
            f"(sha256 {hashlib.sha256(raw).hexdigest()}) by deploy/crd-schemas/vendor.py: "
            "without descriptions, examples and status, repeated subtrees under $defs"
        ),
        **shared_defs(schema),
    }
    target = HERE / f"{spec['names']['plural']}.{group}-{version}.json"
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("crds", nargs="+", type=Path, help="CRD YAML files (one CRD each)")
    a = ap.parse_args(argv)
    for path in a.crds:
        written = vendor(path)
        print(f"{path}: {written.name if written else 'not a wanted CRD, skipped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

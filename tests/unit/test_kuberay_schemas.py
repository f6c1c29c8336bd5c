"""cluster/kuberay/*.yaml pass KubeRay's own CRD schemas, as strictly as `kubectl apply` does.

The schemas are the `v1` openAPIV3Schema of KubeRay's CRDs, vendored under
tests/fixtures/kuberay/<release>/ (see its README). The API server's strict field validation
(what `kubectl apply` asks for by default) rejects a manifest with an unknown field, a value
of the wrong type or a duplicate key; a plain openAPIV3Schema allows unknown fields and
PyYAML keeps the last of two equal keys, so both are tightened here:

- every object schema is closed (`additionalProperties: false`) unless it says
  `x-kubernetes-preserve-unknown-fields` or declares its own `additionalProperties` (maps);
- `x-kubernetes-int-or-string` takes an integer or a string, `format: int32/int64` is
  range-checked, `x-kubernetes-list-type: set/map` lists must not repeat an item / a key;
- the top-level `metadata` (an object without properties in every CRD: the API server checks
  it as ObjectMeta) is checked against ObjectMeta's fields;
- the YAML is read with a loader that refuses duplicate keys.

Not evaluated: the CRDs' CEL rules (`x-kubernetes-validations`): a manifest that sets a field
carrying such rules fails here, naming them, rather than passing unchecked (none of today's
manifests sets one). Nor KubeRay's own admission checks. A null value fails here, where the
API server would drop it silently.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
RELEASE = "v1.7.0"  # the KubeRay release the manifests target (README.md's KubeRay table)
SCHEMAS = REPO / "tests" / "fixtures" / "kuberay" / RELEASE
API_VERSION = "ray.io/v1"
KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob", "RayCronJob": "raycronjob"}

# --- YAML as the API server reads it ----------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_all(text: str) -> list:
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]


# --- strict schemas ---------------------------------------------------------------------------

# Extensions this file knows how to treat; a schema using any other fails loudly, so a
# refreshed CRD with, say, x-kubernetes-embedded-resource cannot be validated half-right.
HANDLED = {
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",  # granular / atomic: how updates merge, nothing to validate
    "x-kubernetes-validations",  # CEL: not evaluated, refused (see the module docstring)
}

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# metav1.ObjectMeta's fields (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # a DNS-1123 subdomain, as every custom resource's name must be
        "name": {"type": "string", "maxLength": 253, "pattern": rf"^{DNS_LABEL}(\.{DNS_LABEL})*$"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": f"^{DNS_LABEL}$"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "selfLink": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
    },
}


def strict(schema):
    """A copy of an openAPIV3Schema node that validates like strict field validation."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    unknown = {k for k in schema if k.startswith("x-kubernetes-")} - HANDLED
    assert not unknown, f"unhandled schema extensions {unknown}"
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(s) for name, s in value.items()}
        elif key in ("items", "anyOf", "allOf", "oneOf", "not") or (
            key == "additionalProperties" and isinstance(value, dict)
        ):
            out[key] = strict(value)
        else:
            out[key] = value  # keywords, defaults and CEL rules, copied as they are
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    is_object = schema.get("type") == "object" or "properties" in schema
    if (
        is_object
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False  # also where no properties: the API prunes all
    return out


def unique_list_map_keys(validator, keys, instance, schema):
    """`x-kubernetes-list-type: map`: no two items with the same key fields (a key the item
    leaves out counts as its default, e.g. a port's protocol TCP, as the API server
    defaults before it validates)."""
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    fields = schema.get("items", {}).get("properties", {})
    seen = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k, fields.get(k, {}).get("default"))) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {i} have the same key {dict(zip(keys, key, strict=True))}"
            )
        seen[key] = i


def unchecked_cel_rules(validator, rules, instance, schema):
    """A value under CEL rules fails: this test cannot evaluate them, so it vouches for none."""
    yield jsonschema.ValidationError(
        f"has CEL rules this test does not evaluate: {[r['rule'] for r in rules]}"
    )


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


# OpenAPI v3.0's schema object is JSON Schema draft 4-5 (booleans for exclusive bounds).
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {
        "x-kubernetes-list-map-keys": unique_list_map_keys,
        "x-kubernetes-validations": unchecked_cel_rules,
    },
)


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    schema = strict(json.loads((SCHEMAS / f"{KINDS[kind]}.v1.json").read_text()))
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["properties"]["apiVersion"] = {"enum": [API_VERSION]}
    schema["properties"]["kind"] = {"enum": [kind]}
    schema["properties"]["metadata"] = {**OBJECT_META, "required": ["name"]}
    StrictValidator.check_schema(schema)
    return StrictValidator(schema, format_checker=FORMATS)


def problems(document: dict) -> list[str]:
    """What the API server would refuse in one RayCluster / RayJob / RayCronJob."""
    kind = document.get("kind")
    if kind not in KINDS:
        return [f"kind {kind!r} is none of {sorted(KINDS)}"]
    errors = validator(kind).iter_errors(document)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


# --- the manifests ----------------------------------------------------------------------------


def manifests() -> dict[str, list[dict]]:
    return {p.name: load_all(p.read_text()) for p in sorted(KUBERAY.glob("*.yaml"))}


def ray_documents() -> list[tuple[str, dict]]:
    return [
        (f"{name}#{i}", d)
        for name, documents in manifests().items()
        for i, d in enumerate(documents)
        if str(d.get("apiVersion", "")).startswith("ray.io/")
    ]


def test_every_file_in_cluster_kuberay_has_no_duplicate_keys():
    assert manifests()  # the loader raises on a duplicate key


def test_the_vendored_schemas_are_for_every_kind_the_manifests_use():
    assert {d["kind"] for _, d in ray_documents()} == set(KINDS)
    assert {p.name for p in SCHEMAS.glob("*.json")} == {f"{k}.v1.json" for k in KINDS.values()}
    assert (SCHEMAS / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert RELEASE in (SCHEMAS / "README.md").read_text()


@pytest.mark.parametrize("where", [w for w, _ in ray_documents()])
def test_kuberay_manifest_passes_the_crd_schema_strictly(where):
    document = dict(ray_documents())[where]
    assert document["apiVersion"] == API_VERSION, where
    assert problems(document) == [], where


# --- the check can fail -----------------------------------------------------------------------


def document(kind: str) -> dict:
    """The first manifest of `kind` (files in name order), a copy to mutate."""
    found = next(d for _, d in ray_documents() if d["kind"] == kind)
    return copy.deepcopy(found)


def cluster_spec(document: dict) -> dict:
    spec = document["spec"]
    spec = spec.get("jobTemplate", spec)
    return spec.get("rayClusterSpec", spec)


def rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def misspelled_worker_field(d):
    rename(cluster_spec(d)["workerGroupSpecs"][0], "minReplicas", "minReplica")


def string_replicas(d):
    group = cluster_spec(d)["workerGroupSpecs"][0]
    group["replicas"] = str(group["replicas"])


def concurrency_policy(d):
    d["spec"]["concurrencyPolicy"] = "Forbid"


def misspelled_container_field(d):  # PodSpec is inlined in the CRD: core fields are checked
    container = cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]
    rename(container, "resources", "resource")


def string_container_port(d):
    container = cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPort"] = str(container["ports"][0]["containerPort"])


def repeated_port(d):  # ports is a list-map keyed by containerPort + protocol (default TCP)
    container = cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["ports"].append({"containerPort": container["ports"][0]["containerPort"]})


def list_quantity(d):  # int-or-string takes neither a list nor a float
    resources = cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    resources["limits"]["cpu"] = [resources["limits"]["cpu"]]


def int32_overflow(d):
    cluster_spec(d)["workerGroupSpecs"][0]["maxReplicas"] = 2**31


def unknown_metadata_field(d):
    d["metadata"]["label"] = {"app": "fcn"}


def bad_name(d):
    d["metadata"]["name"] = "FCN_Train"


def unknown_top_level_field(d):
    d["specs"] = d.pop("spec")


def field_under_cel_rules(d):
    d["spec"]["managedBy"] = "ray.io/kuberay-operator"


def wrong_api_version(d):
    d["apiVersion"] = "ray.io/v1alpha1"


MUTATIONS = [
    ("RayCluster", misspelled_worker_field, "'minReplica' was unexpected"),
    ("RayJob", misspelled_worker_field, "'minReplica' was unexpected"),
    ("RayCronJob", misspelled_worker_field, "'minReplica' was unexpected"),
    ("RayCluster", string_replicas, "is not of type 'integer'"),
    ("RayJob", string_replicas, "is not of type 'integer'"),
    ("RayCronJob", concurrency_policy, "'concurrencyPolicy' was unexpected"),
    ("RayCluster", misspelled_container_field, "'resource' was unexpected"),
    ("RayCluster", string_container_port, "is not of type 'integer'"),
    ("RayCluster", repeated_port, "have the same key"),
    ("RayCluster", list_quantity, "is not valid under any of the given schemas"),
    ("RayJob", int32_overflow, "is not a 'int32'"),
    ("RayJob", unknown_metadata_field, "'label' was unexpected"),
    ("RayCronJob", bad_name, "does not match"),
    ("RayCronJob", unknown_top_level_field, "'specs' was unexpected"),
    ("RayJob", wrong_api_version, "is not one of"),
    ("RayJob", field_under_cel_rules, "has CEL rules"),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"), MUTATIONS, ids=[f"{k}-{m.__name__}" for k, m, _ in MUTATIONS]
)
def test_a_mutated_manifest_is_rejected(kind, mutate, expected):
    d = document(kind)
    mutate(d)
    found = problems(d)
    assert any(expected in p for p in found), found


def test_int_or_string_quantities_take_either():
    d = document("RayCluster")
    limits = cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    limits["limits"]["cpu"], limits["requests"]["cpu"] = 4, "4000m"
    assert problems(d) == []


def test_a_duplicate_key_is_rejected():
    text = (KUBERAY / "raycluster.yaml").read_text()
    line = re.search(r"^( +)maxReplicas: \d+$", text, re.M)
    assert line, "raycluster.yaml has no maxReplicas line"
    doubled = text[: line.end()] + f"\n{line.group(1)}maxReplicas: 2" + text[line.end() :]
    assert yaml.safe_load(doubled)  # PyYAML alone takes it, keeping the last value
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'maxReplicas'"):
        load_all(doubled)

"""The generated CRD: structural (the API server's rules), complete, in step with the models and with git."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.api import crdgen
from modelplane.api.models import OWNED_FLAGS, ConditionType, ModelDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
CRD = crdgen.build_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``spec.engine.env[]``)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


ALL = list(_nodes(SCHEMA))


FORBIDDEN_KEYS = ["$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "examples", "nullable"]


@pytest.mark.parametrize("key", FORBIDDEN_KEYS)
def test_schema_has_no(key: str) -> None:
    assert [p for p, n in ALL if key in n] == []


def test_no_additional_properties_false() -> None:
    assert [p for p, n in ALL if n.get("additionalProperties") is False] == []


def test_every_node_is_typed() -> None:
    untyped = [p for p, n in ALL if "type" not in n and not n.get("x-kubernetes-int-or-string")
               and not n.get("x-kubernetes-preserve-unknown-fields")]
    assert untyped == []


def test_objects_with_properties_say_object() -> None:
    assert [p for p, n in ALL if "properties" in n and n.get("type") != "object"] == []


def test_no_null_defaults_and_exclusive_bounds_are_boolean() -> None:
    assert [p for p, n in ALL if "default" in n and n["default"] is None] == []
    assert [p for p, n in ALL
            for k in ("exclusiveMinimum", "exclusiveMaximum") if k in n and not isinstance(n[k], bool)] == []


def test_every_property_has_a_description() -> None:
    missing = [p for p, n in ALL if p and not p.startswith("metadata") and not p.endswith("[]")
               and "description" not in n]
    assert missing == []


def test_required_fields_exist() -> None:
    for path, node in ALL:
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path


def test_list_map_keys_are_required() -> None:
    for path, node in ALL:
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"].get("required", [])), path


def test_cel_rules_are_bounded() -> None:
    """Lists a rule walks have maxItems and their strings maxLength, so the cost estimate stays in budget."""
    for path, node in ALL:
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["rule"] and rule["message"], path
            if node.get("type") == "array":
                assert "maxItems" in node, path
                items = node["items"]
                for ipath, inode in _nodes(items, path):
                    if inode.get("type") == "string":
                        assert "maxLength" in inode, ipath
            if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
                assert "maxLength" in node, path


def test_field_paths_point_at_properties() -> None:
    for path, node in ALL:
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" in rule:
                target = node
                for part in rule["fieldPath"].lstrip(".").split("."):  # ".engine.extraArgs" walks down
                    assert part in target["properties"], (path, rule)
                    target = target["properties"][part]


RULES = [
    ("spec.scaling", "minReplicas must be <= maxReplicas", ".minReplicas"),
    ("spec.scaling", "scaleToZeroAfter needs minReplicas: 0", ".scaleToZeroAfter"),
    ("spec.rollout.steps", "steps must have strictly increasing weights", None),
    ("spec", "replicas may only be set with scaling.mode: External", ".replicas"),
    ("spec", "scaling.mode External needs replicas", ".replicas"),
    ("spec.resources.gpu.count", 'must be an integer >= 1 and <= 8 or "auto"', None),
    ("spec.rollout.evaluation", "evaluation needs suiteRef or evaluator", None),
    ("spec.resources.modelCache", "sizeLimit applies to the emptyDir cache", ".sizeLimit"),
    ("spec.model.source", "malformed hf:// source", None),
    ("spec.model.source", "malformed pvc:// source", None),
    ("spec.engine.env[].name", "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN carry credentials", None),
    ("spec.engine.extraArgs", "--port", None),
    ("spec.engine.extraArgs", "--max-model-len: use spec.engine.maxModelLen", None),
    ("spec.engine.extraArgs", "--revision: use spec.model.revision", None),
    ("spec", "--load-format with an s3:// or gs:// source", ".engine.extraArgs"),
    ("spec.model.source", "malformed s3:// source: expected s3://<bucket>/<path>", None),
    ("spec.resources.cpu", "must be an integer >= 0 or a non-negative quantity such as 7500m or 64Gi", None),
]


@pytest.mark.parametrize(("path", "message", "field_path"), RULES, ids=[f"{p}:{m[:24]}" for p, m, _ in RULES])
def test_cel_rule(path: str, message: str, field_path: str | None) -> None:
    node = dict(ALL)[path]
    matching = [r for r in node.get("x-kubernetes-validations", []) if message in r["message"]]
    assert matching, node.get("x-kubernetes-validations")
    assert matching[0].get("fieldPath") == field_path


def test_every_owned_flag_has_a_rule() -> None:
    """One CEL rule per owned flag, on extraArgs or (when the source decides) on the spec."""
    messages = [r["message"] for path in ("spec.engine.extraArgs", "spec")
                for r in dict(ALL)[path].get("x-kubernetes-validations", [])]
    assert [m for m in messages if m.startswith("extraArgs must not set")] == [f.message for f in OWNED_FLAGS]


@pytest.mark.parametrize("where", ["status.conditions", "status.conditions[].type"])
@pytest.mark.parametrize("condition_type", list(ConditionType))
def test_status_documents_every_condition_type(where: str, condition_type: ConditionType) -> None:
    assert condition_type.value in dict(ALL)[where]["description"]


INT_OR_STRING = ["spec.resources.gpu.count", "spec.resources.cpu", "spec.resources.memory",
                 "spec.resources.modelCache.sizeLimit"]


@pytest.mark.parametrize("path", INT_OR_STRING)
def test_int_or_string(path: str) -> None:
    node = dict(ALL)[path]
    assert node["x-kubernetes-int-or-string"] is True
    assert "type" not in node
    assert node["x-kubernetes-validations"][0]["rule"].startswith("type(self) == int ? ")


SCHEMA_DEFAULTS = [
    ("spec.engine", {"image": "vllm/vllm-openai:v0.32.0", "dtype": "auto", "gpuMemoryUtilization": 0.9}),
    ("spec.resources", {"gpu": {"count": "auto", "maxNodes": 1}}),
    ("spec.resources.gpu", {"count": "auto", "maxNodes": 1}), ("spec.resources.gpu.maxNodes", 1),
    ("spec.scaling", {"mode": "Builtin", "minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 4.0,
                      "scaleDownDelay": "5m"}),
    ("spec.rollout", {}), ("spec.resources.gpu.count", "auto"), ("spec.scaling.mode", "Builtin"),
    ("spec.scaling.minReplicas", 1), ("spec.scaling.maxReplicas", 4), ("spec.engine.dtype", "auto"),
    ("spec.engine.gpuMemoryUtilization", 0.9), ("spec.model.revision", "main"),
]


@pytest.mark.parametrize(("path", "default"), SCHEMA_DEFAULTS, ids=[p for p, _ in SCHEMA_DEFAULTS])
def test_schema_default(path: str, default: Any) -> None:
    assert dict(ALL)[path]["default"] == default


def test_schema_defaults_match_the_models() -> None:
    """Every scalar default the API server applies is the model's default (walk the dumped spec)."""
    dumped = ModelDeploymentSpec.model_validate({"model": {"source": "hf://a/b"}}).model_dump(
        by_alias=True, mode="json")
    checked = 0
    for path, node in ALL:
        if not path.startswith("spec.") or "default" not in node or "[]" in path:
            continue
        if isinstance(node["default"], dict):  # object defaults: see SCHEMA_DEFAULTS
            continue
        value: Any = dumped
        for part in path.split(".")[1:]:
            value = None if value is None else value[part]
        if value is None:
            continue  # inside an optional object that is absent here; its defaults apply when it is set
        assert value == node["default"], path
        checked += 1
    assert checked >= 8


def test_gpu_types_enum_comes_from_the_catalog() -> None:
    from modelplane.gpus import GPU_TYPE_NAMES
    types = dict(ALL)["spec.resources.gpu.types"]
    assert types["items"]["enum"] == list(GPU_TYPE_NAMES)
    assert types["x-kubernetes-list-type"] == "set"


def test_metadata_name_is_restricted_only() -> None:
    metadata = SCHEMA["properties"]["metadata"]
    assert set(metadata) == {"type", "properties"} and set(metadata["properties"]) == {"name"}
    assert metadata["properties"]["name"]["maxLength"] == 63


def test_names_and_scope() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == "modeldeployments.modelplane.dev"
    assert (names["kind"], names["plural"], names["singular"]) == ("ModelDeployment", "modeldeployments",
                                                                   "modeldeployment")
    assert names["shortNames"] == ["md"] and names["categories"] == ["modelplane"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert (VERSION["name"], VERSION["served"], VERSION["storage"]) == ("v1alpha1", True, True)
    assert SCHEMA["required"] == ["spec"] and SPEC["required"] == ["model"]


def test_subresources() -> None:
    assert VERSION["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}}
    # The paths the scale subresource names exist with the right types.
    assert SPEC["properties"]["replicas"]["type"] == "integer"
    assert STATUS["properties"]["replicas"]["type"] == "integer"
    assert STATUS["properties"]["selector"]["type"] == "string"


PRINTER = [("Ready", ".status.readyReplicas", "integer"), ("Desired", ".status.desiredReplicas", "integer"),
           ("GPU", ".status.plan.shape", "string"), ("Phase", ".status.phase", "string"),
           ("$/h", ".status.cost.hourlyUSD", "number"), ("Canary", ".status.canary.summary", "string"),
           ("Age", ".metadata.creationTimestamp", "date")]


@pytest.mark.parametrize(("name", "json_path", "kind"), PRINTER, ids=[p[0] for p in PRINTER])
def test_printer_column(name: str, json_path: str, kind: str) -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert (columns[name]["jsonPath"], columns[name]["type"]) == (json_path, kind)
    if json_path.startswith(".status."):
        node: dict[str, Any] = SCHEMA
        for part in json_path.strip(".").split("."):
            node = node["properties"][part]  # the column points at a real status field


def test_status_conditions_are_a_map_by_type() -> None:
    conditions = STATUS["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_committed_files_are_fresh() -> None:
    for rel, text in crdgen.generated_files().items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, f"{rel} is stale: run make crds"


def test_generation_is_deterministic() -> None:
    assert crdgen.render_crd() == crdgen.render_crd()
    assert crdgen.render_reference() == crdgen.render_reference()


def test_rendered_yaml_parses_back() -> None:
    assert yaml.safe_load(crdgen.render_crd()) == CRD


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    crd_file = tmp_path / crdgen.CRD_PATH
    crd_file.write_text(crd_file.read_text().replace("maxReplicas", "maxReplica", 1))
    capsys.readouterr()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "maxReplica" in capsys.readouterr().out


def test_reference_documents_every_spec_field() -> None:
    reference = crdgen.render_reference()
    for path, _ in ALL:
        if path.startswith(("spec.", "status.")):
            assert f"| `{path.rsplit('.', 1)[-1].rstrip('[]')}` |" in reference, path
    assert "minReplicas must be <= maxReplicas" in reference


def test_unsupported_union_is_an_error() -> None:
    with pytest.raises(ValueError, match="no structural form"):
        crdgen.structural({"anyOf": [{"type": "number"}, {"type": "string"}]}, {})

"""Generates the ModelDeployment CRD and the API reference from the pydantic models.

``python -m modelplane.api.crdgen --write`` rewrites ``crds/modeldeployments.modelplane.dev.yaml`` and
``docs/api-reference.md``; ``--check`` exits 1 with a diff when the committed files differ from a fresh
generation (CI runs it, so the models and the CRD cannot drift).

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3.0 schema. The
translation is generic, so a new field in the models needs no change here:
``$ref`` inlined; ``title`` and ``additionalProperties: false`` dropped (the server prunes unknown
fields instead); ``anyOf [X, null]`` becomes X, not required; ``anyOf [integer, string]`` becomes
``x-kubernetes-int-or-string`` with a CEL rule carrying both branches' constraints; ``const`` becomes
``enum``; numeric ``exclusiveMinimum`` becomes the boolean form; a field defaulting to a model
instance gets ``default: {}`` so the server fills in the nested defaults. CEL rules and list types are
declared in the models (``json_schema_extra``) and pass through.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from modelplane.api import models
from modelplane.api.models import (
    API_VERSION,
    CATEGORIES,
    DNS1035_LABEL,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

Schema = dict[str, Any]

CRD_PATH = Path("crds") / f"{PLURAL}.{GROUP}.yaml"
REFERENCE_PATH = Path("docs") / "api-reference.md"
GENERATED_BY = "python -m modelplane.api.crdgen --write"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas",
     "description": "vLLM pods ready to serve."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas",
     "description": "Replicas wanted now."},
    {"name": "GPU", "type": "string", "jsonPath": ".status.plan.shape",
     "description": "GPUs per replica and their type."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Summary state."},
    {"name": "$/h", "type": "number", "jsonPath": ".status.cost.hourlyUSD",
     "description": "GPU cost of the running replicas, USD per hour."},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canary.summary",
     "description": "The revision being rolled out and its traffic share."},
    {"name": "Revision", "type": "string", "jsonPath": ".status.servingRevision", "priority": 1,
     "description": "The model revision serving traffic."},
    {"name": "Source", "type": "string", "jsonPath": ".spec.model.source", "priority": 1,
     "description": "Where the weights come from."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _default_object(value: BaseModel) -> Any:
    """A model instance as a schema default: its non-empty fields, on the wire."""
    def prune(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: prune(v) for k, v in node.items() if v is not None and v != []}
        return node
    return prune(value.model_dump(by_alias=True, mode="json"))


class _JsonSchema(GenerateJsonSchema):
    """Pydantic's generator, but a field whose default factory builds a model gets that model's defaults.

    With that default the API server creates the nested object when it is left out, so a stored
    ModelDeployment shows every default the operator acts on. The default is spelled out in full
    (not ``{}``) because the API server checks defaults against the CEL rules without defaulting
    them first.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            return _default_object(value) if isinstance(value, BaseModel) else NoDefault
        return super().get_default_value(schema)


def _cel_literal(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _int_or_string(branches: list[Schema], node: Schema) -> Schema:
    """``anyOf [integer, string]`` → ``x-kubernetes-int-or-string`` plus one CEL rule for both branches.

    Structural schemas cannot constrain the branches of the int-or-string ``anyOf``, so the
    branches' constraints move into CEL; ``maxLength`` stays in the schema because it bounds the CEL
    cost estimate (and applies to strings only).
    """
    int_branch = next(b for b in branches if b.get("type") == "integer")
    str_branch = next(b for b in branches if b.get("type") == "string")
    int_tests: list[str] = []
    int_words: list[str] = []
    bounds = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    for key, op in bounds:
        if key in int_branch:
            int_tests.append(f"self {op} {int_branch[key]}")
            int_words.append(f"{op} {int_branch[key]}")
    str_tests: list[str] = []
    str_words: list[str] = []
    values = [str_branch["const"]] if "const" in str_branch else list(str_branch.get("enum", []))
    if values:
        str_tests.append("self in [" + ", ".join(_cel_literal(v) for v in values) + "]")
        str_words.append(" or ".join(f'"{v}"' for v in values))
    if "pattern" in str_branch:
        str_tests.append(f"self.matches(r'{str_branch['pattern']}')")
        examples = str_branch.get("examples")
        if "description" in str_branch:  # the branch says in words what its pattern accepts
            str_words.append(str_branch["description"])
        else:
            str_words.append(f"a string such as {' or '.join(examples)}" if examples
                             else f"a string matching {str_branch['pattern']}")
    rule = (f"type(self) == int ? ({' && '.join(int_tests) or 'true'})"
            f" : ({' && '.join(str_tests) or 'true'})")
    message = f"must be an integer{' ' + ' and '.join(int_words) if int_words else ''}"
    message += f" or {' and '.join(str_words) if str_words else 'a string'}"
    out: Schema = {k: v for k, v in node.items() if k != "x-kubernetes-validations"}
    out["x-kubernetes-int-or-string"] = True
    max_length = str_branch.get("maxLength", max((len(str(v)) for v in values), default=None))
    if max_length is not None:
        out["maxLength"] = max_length
    out["x-kubernetes-validations"] = [{"rule": rule, "message": message},
                                       *node.get("x-kubernetes-validations", [])]
    return out


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic JSON-schema node (with its ``$defs``) as a structural OpenAPI v3.0 schema."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Siblings of the reference (the field's description and default) override the target's.
        return structural({**target, **node}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        return structural({**node.pop("allOf")[0], **node}, defs)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if node.get("default", NoDefault) is None:
            del node["default"]
        if len(branches) == 1:
            # Optional[X]: the server has no null, a missing field means "unset".
            return structural({**branches[0], **node}, defs)
        resolved = [structural(b, defs) for b in branches]
        if sorted(b.get("type", "") for b in resolved) == ["integer", "string"]:
            return _int_or_string(resolved, structural(node, defs))
        raise ValueError(f"no structural form for the union {branches}")
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "$defs", "examples"):  # examples: JSON Schema only, not OpenAPI v3.0
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
            elif value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            continue  # false: forbidden with properties; the server prunes unknown fields
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_JsonSchema)
    return structural(raw, raw.get("$defs", {}))


def openapi_schema() -> Schema:
    """The CRD's ``openAPIV3Schema``: the object wrapper around the spec and status models."""
    return {
        "type": "object",
        "description": f"A {KIND} serves one open-weight model with vLLM on GPU nodes: it plans the GPUs, "
                       "keeps replicas matched to traffic within a budget, and rolls new revisions out "
                       "behind an evaluation gate.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{API_VERSION}."},
            "kind": {"type": "string", "description": f"{KIND}."},
            "metadata": {
                "type": "object",
                "properties": {"name": {
                    "type": "string", "maxLength": 63, "pattern": DNS1035_LABEL,
                    "description": "A DNS-1035 label of at most 63 characters: it also names the Service."}},
            },
            "spec": model_schema(ModelDeploymentSpec),
            "status": model_schema(ModelDeploymentStatus),
        },
    }


def build_crd() -> Schema:
    """The CustomResourceDefinition, as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "modelplane", "app.kubernetes.io/part-of": "modelplane"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    # HPA and KEDA drive spec.replicas through /scale (scaling.mode External).
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


def render_crd() -> str:
    header = (f"# Generated by `{GENERATED_BY}` from operator/modelplane/api/models.py. Do not edit.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=True, width=110, allow_unicode=True)


# --- the API reference page ---

def _type_of(node: Schema) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "string" and node.get("format") == "date-time":
        return "string (date-time)"
    return kind


def _constraints(node: Schema) -> str:
    parts: list[str] = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {node['minimum']}")
    if "maximum" in node:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {node['maximum']}")
    for key, label in (("minLength", "min length"), ("maxLength", "max length"),
                       ("minItems", "min items"), ("maxItems", "max items")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    items = node.get("items", {})
    if "enum" in items:
        parts.append("items: " + ", ".join(f"`{v}`" for v in items["enum"]))
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _object_sections(path: str, node: Schema, out: list[str]) -> None:
    """A table for the object at ``path``, then one section per nested object, depth first."""
    props: dict[str, Schema] = node.get("properties", {})
    required = set(node.get("required", []))
    out.append(f"### `{path}`\n")
    if node.get("description"):
        out.append(_cell(node["description"]) + "\n")
    out.append("| Field | Type | Default | Constraints | Description |")
    out.append("| --- | --- | --- | --- | --- |")
    nested: list[tuple[str, Schema]] = []
    for name, prop in props.items():
        if "default" in prop:
            default = f"`{json.dumps(prop['default'])}`"
        else:
            default = "required" if name in required else ""
        out.append(f"| `{name}` | {_type_of(prop)} | {_cell(default)} | {_cell(_constraints(prop))} | "
                   f"{_cell(prop.get('description', ''))} |")
        target = prop.get("items", {}) if prop.get("type") == "array" else prop
        if target.get("properties"):
            nested.append((f"{path}.{name}" + ("[]" if prop.get("type") == "array" else ""), target))
    rules = [(f"`{path}`", r) for r in node.get("x-kubernetes-validations", [])]
    for name, prop in props.items():
        if "properties" not in prop:  # an object's own rules are listed in its section
            rules += [(f"`{path}.{name}`", r) for r in prop.get("x-kubernetes-validations", [])]
        item_rules = prop.get("items", {}).get("x-kubernetes-validations", [])
        rules += [(f"`{path}.{name}[]`", r) for r in item_rules]
    if rules:
        out.append("\nRules checked by the API server:\n")
        out += [f"- {where}: {_cell(rule['message'])}" for where, rule in rules]
    out.append("")
    for child_path, child in nested:
        _object_sections(child_path, child, out)


def render_reference() -> str:
    schema = openapi_schema()
    out = [
        f"# {KIND} API reference ({API_VERSION})",
        "",
        f"<!-- Generated by `{GENERATED_BY}` from operator/modelplane/api/models.py. Do not edit. -->",
        "",
        f"`kubectl explain {PLURAL}.spec` prints the same descriptions. Short name `{SHORT_NAME}`, "
        f"category `{CATEGORIES[0]}`. The object has the status and scale subresources "
        "(`.spec.replicas`, `.status.replicas`, `.status.selector`), so an HPA or KEDA can drive "
        "replicas when `spec.scaling.mode` is `External`.",
        "",
        "Durations are strings such as `30s`, `5m`, `1h30m`; quantities are Kubernetes quantities "
        "(`8`, `7500m`, `64Gi`). The operator never writes `spec`; everything it decides is in `status`.",
        "",
        "## Spec",
        "",
    ]
    _object_sections("spec", schema["properties"]["spec"], out)
    out += ["## Status", ""]
    _object_sections("status", schema["properties"]["status"], out)
    out += ["## Printer columns", "", "| Column | Path | Description |", "| --- | --- | --- |"]
    out += [f"| {_cell(c['name'])} | `{c['jsonPath']}` | {_cell(c.get('description', ''))} |"
            for c in PRINTER_COLUMNS]
    return "\n".join(out).rstrip("\n") + "\n"


# Public names for the other kinds' generator (api/kindgen.py).
object_sections = _object_sections
cell = _cell


def generated_files() -> dict[Path, str]:
    from modelplane.api import adaptercrd, kindgen, routegen  # they build on this module

    return {CRD_PATH: render_crd(), REFERENCE_PATH: render_reference(),
            **kindgen.generated_files(routegen.DOC), **kindgen.generated_files(adaptercrd.DOC)}


def _repo_root() -> Path:
    # operator/modelplane/api/crdgen.py → the repository root is three levels above the package.
    return Path(models.__file__).resolve().parents[3]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane.api.crdgen",
                                     description="Generate the CRD and the API reference from the models.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff when they are stale")
    parser.add_argument("--root", type=Path, default=_repo_root(),
                        help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = 0
    for rel, text in generated_files().items():
        path = args.root / rel
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
            continue
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{rel} (committed)", tofile=f"{rel} (generated)"))
    if stale:
        print(f"\n{stale} generated file(s) are stale; run `{GENERATED_BY}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

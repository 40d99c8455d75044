"""The ModelRoute API: offline validation names the field, and the CRD carries the same rules."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane.api import kindgen, routegen
from modelplane.api.models import InvalidSpecError
from modelplane.api.route import ModelRoute, summary

MD = {"modelDeployment": "llama"}
EXT = {"name": "api", "baseURL": "https://api.example.com/v1", "model": "gpt",
       "apiKeySecret": {"name": "api-key", "key": "token"}}


def parse(spec: dict[str, Any]) -> ModelRoute:
    return ModelRoute.parse({"metadata": {"name": "r", "namespace": "ns"}, "spec": spec})


@pytest.mark.parametrize(("spec", "path", "words"), [
    pytest.param({"rules": []}, "spec.rules", "at least 1", id="empty-rules"),
    pytest.param({}, "spec.rules", "required", id="no-rules"),
    pytest.param({"rules": [{"backends": []}]}, "spec.rules[0].backends", "at least 1", id="empty-backends"),
    pytest.param({"rules": [{"backends": [{**MD, "weight": 60}, {"modelDeployment": "b", "weight": 30}]}]},
                 "spec.rules[0]", "sum to 100", id="weights-do-not-sum"),
    pytest.param({"rules": [{"backends": [{**MD, "weight": 90}, {"modelDeployment": "b"}]}]},
                 "spec.rules[0]", "sum to 100", id="a-weight-left-out-counts-0"),
    pytest.param({"rules": [{"backends": [{**MD, "weight": 101}]}]}, "spec.rules[0].backends[0].weight",
                 "less than or equal to 100", id="weight-over-100"),
    pytest.param({"rules": [{"backends": [{**MD, "external": EXT}]}]}, "spec.rules[0].backends[0]",
                 "exactly one", id="two-kinds-in-one-backend"),
    pytest.param({"rules": [{"backends": [{}]}]}, "spec.rules[0].backends[0]", "exactly one", id="no-kind"),
    pytest.param({"rules": [{"backends": [{"modelDeploymnt": "x"}]}]},
                 "spec.rules[0].backends[0].modelDeploymnt",
                 "unknown field", id="unknown-field"),
    pytest.param({"rules": [{"backends": [MD]}, {"backends": [MD]}]}, "spec", "at most one rule",
                 id="two-defaults"),
    pytest.param({"rules": [{"match": {}, "backends": [MD]}]}, "spec.rules[0].match", "at least one of",
                 id="empty-match"),
    pytest.param({"rules": [{"match": {"minPromptTokens": 10, "maxPromptTokens": 5}, "backends": [MD]}]},
                 "spec.rules[0].match", "minPromptTokens must be <=", id="min-over-max"),
    pytest.param({"rules": [{"backends": [{"external": {**EXT, "baseURL": "api.example.com"}}]}]},
                 "spec.rules[0].backends[0].external.baseURL", "pattern", id="base-url-without-scheme"),
    pytest.param({"rules": [{"backends": [MD]}], "fallback": {"onStatus": [200]}},
                 "spec.fallback.onStatus[0]",
                 "greater than or equal to 400", id="fallback-on-success"),
    pytest.param({"rules": [{"policy": "cheapest", "backends": [{**MD, "weight": 50},
                                                                 {"external": EXT, "weight": 50}]}]},
                 "spec.rules[0]", "leave out their weights", id="cheapest-with-weights"),
    pytest.param({"rules": [{"policy": "cheapest", "backends": [MD, {"modelRoute": "other"}]}]},
                 "spec.rules[0]", "not modelRoute", id="cheapest-through-a-route"),
    pytest.param({"rules": [{"policy": "fastest", "backends": [MD]}]}, "spec.rules[0].policy",
                 "'weighted' or 'cheapest'", id="unknown-policy"),
    pytest.param({"rules": [{"backends": [MD]}], "objective": {"ttft": "5ms"}}, "spec.objective.ttft",
                 "between 10ms and 10m", id="objective-too-short"),
    pytest.param({"rules": [{"backends": [MD]}], "objective": {"ttft": "2 seconds"}}, "spec.objective.ttft",
                 "pattern", id="objective-not-a-duration"),
    pytest.param({"rules": [{"backends": [MD]}], "objective": {"ttft": "2s", "percentile": 100}},
                 "spec.objective.percentile", "less than 100", id="objective-percentile-100"),
])
def test_bad_routes_are_refused_naming_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse(spec)
    assert any(p == path and words in m for p, m in caught.value.problems), caught.value.problems


def test_a_good_route_parses_with_defaults_and_summarises() -> None:
    route = parse({"rules": [
        {"match": {"header": {"name": "x-modelplane-task", "value": "classification"}}, "backends": [MD]},
        {"backends": [{**MD, "weight": 80}, {"external": EXT, "weight": 20}]}]})
    assert route.spec.fallback.on_status == [429, 500, 502, 503, 504]
    assert route.spec.fallback.when_cold is True
    assert summary(route.spec) == "x-modelplane-task=classification→llama; *→llama|external/api"
    assert [r.policy.value for r in route.spec.rules] == ["weighted", "weighted"]
    assert route.spec.objective is None


def test_a_cheapest_rule_with_an_objective_parses() -> None:
    route = parse({"objective": {"ttft": "1500ms"},
                   "rules": [{"policy": "cheapest", "backends": [MD, {"external": EXT}]}]})
    assert route.spec.rules[0].policy.value == "cheapest"
    assert route.spec.objective is not None
    assert route.spec.objective.ttft_seconds == 1.5 and route.spec.objective.percentile == 95
    assert summary(route.spec) == "*→cheapest:llama|external/api"


def crd_rules(node: Any, path: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            out.setdefault(path, []).append(rule["message"])
        for key, value in node.get("properties", {}).items():
            for k, v in crd_rules(value, f"{path}.{key}").items():
                out.setdefault(k, []).extend(v)
        if "items" in node:
            for k, v in crd_rules(node["items"], f"{path}[]").items():
                out.setdefault(k, []).extend(v)
    return out


def test_the_crd_carries_the_rules_the_python_side_checks() -> None:
    crd = kindgen.build_crd(routegen.DOC)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = crd_rules(schema)
    assert any("sum to 100" in m for m in rules[".rules[]"])
    assert any("exactly one of" in m for m in rules[".rules[].backends[]"])
    assert any("at most one rule" in m for m in rules[""])
    assert any("leave out their weights" in m for m in rules[".rules[]"])
    assert any("not modelRoute" in m for m in rules[".rules[]"])
    assert any("between 10ms and 10m" in m for m in rules[".objective"])
    policy = schema["properties"]["rules"]["items"]["properties"]["policy"]
    assert policy["enum"] == ["weighted", "cheapest"] and policy["default"] == "weighted"
    assert schema["properties"]["rules"]["minItems"] == 1
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Rules", "Resolved", "Reason", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["mr"]
    backend = schema["properties"]["rules"]["items"]["properties"]["backends"]["items"]
    assert backend["properties"]["external"]["properties"]["baseURL"]["description"]


def test_the_generated_files_are_written_by_crdgen() -> None:
    from modelplane.api import crdgen

    files = crdgen.generated_files()
    assert files[routegen.DOC.crd_path].startswith("# Generated by")
    assert "kubectl explain modelroutes.spec" in files[routegen.DOC.reference]


def test_the_example_routes_parse_and_name_example_models() -> None:
    from pathlib import Path

    import yaml

    examples = Path(__file__).resolve().parents[2] / "examples"
    docs = [d for p in sorted(examples.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    models = {d["metadata"]["name"] for d in docs if d.get("kind") == "ModelDeployment"}
    routes = [ModelRoute.parse(d) for d in docs if d.get("kind") == "ModelRoute"]
    assert {r.name for r in routes} == {"assistant", "chat", "chat-cheapest"}
    for route in routes:
        named = {b.model_deployment for rule in route.spec.rules for b in rule.backends if b.model_deployment}
        assert named and named <= models, (route.name, named - models)
        assert any(b.external is not None for rule in route.spec.rules for b in rule.backends)


def test_plan_checks_a_route_beside_its_models(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from modelplane.cli import main as cli_main

    examples = Path(__file__).resolve().parents[2] / "examples"
    good = tmp_path / "good.yaml"
    good.write_text((examples / "llama-3.1-8b-awq.yaml").read_text() + "---\n"
                    + (examples / "model-mesh-by-task.yaml").read_text())
    assert cli_main(["plan", "-f", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text((examples / "llama-3.1-8b-awq.yaml").read_text() + "---\n"
                   + yaml_route_with_bad_weights())
    assert cli_main(["plan", "-f", str(bad)]) != 0
    said = capsys.readouterr().err
    assert "spec.rules[0]: the backends' weights must all be left out or sum to 100" in said


def yaml_route_with_bad_weights() -> str:
    return """apiVersion: modelplane.dev/v1alpha1
kind: ModelRoute
metadata: {name: r}
spec:
  rules:
    - backends: [{modelDeployment: a, weight: 50}, {modelDeployment: b, weight: 20}]
"""

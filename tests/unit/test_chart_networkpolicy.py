"""The chart's optional NetworkPolicies (networkPolicy.*), as rendered objects (the dev cluster
enforces no NetworkPolicy): the model pods' vLLM port admits the operator, the gateway and evaluator
Jobs only, in each namespace of model pods."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelplane import render as model_render
from tests.chart import lint, pick, render

RELEASE, NAMESPACE = "mp", "modelplane-system"
POLICY = "mp-modelplane-model-pods"


def policies(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(p) for p in pick(render(values, release=RELEASE, namespace=NAMESPACE), "NetworkPolicy")]


def test_off_by_default() -> None:
    assert policies({}) == []


@pytest.mark.parametrize(("values", "namespaces"), [
    ({"networkPolicy": {"enabled": True}, "watchNamespaces": ["a", "b"]}, ["a", "b"]),
    ({"networkPolicy": {"enabled": True, "namespaces": ["team"]}}, ["team"]),
], ids=["watch-namespaces", "listed-namespaces"])
def test_one_policy_per_namespace_of_model_pods(values: dict[str, Any], namespaces: list[str]) -> None:
    found = policies(values)
    assert sorted(p["metadata"]["namespace"] for p in found) == namespaces
    assert {p["metadata"]["name"] for p in found} == {POLICY}
    assert not lint(values).returncode


def test_only_the_operator_gateway_and_evaluators_reach_the_vllm_port() -> None:
    policy = policies({"networkPolicy": {"enabled": True, "namespaces": ["team"]}})[0]
    spec = policy["spec"]
    # The selector is the one the operator puts on every server pod.
    assert spec["podSelector"]["matchLabels"] == {model_render.LABEL_NAME: model_render.APP_NAME,
                                                  model_render.LABEL_COMPONENT: model_render.COMPONENT}
    assert spec["policyTypes"] == ["Ingress"]
    [rule] = spec["ingress"]
    assert rule["ports"] == [{"port": model_render.PORT, "protocol": "TCP"}]
    peers = rule["from"]
    release_ns = {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    components = [(p.get("namespaceSelector"),
                   p["podSelector"]["matchLabels"].get("app.kubernetes.io/component")) for p in peers]
    assert components == [(release_ns, "operator"), (release_ns, "gateway"), (None, "evaluation")]
    instances = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/instance") for p in peers[:2]}
    assert instances == {RELEASE}


def test_without_the_gateway_it_is_not_admitted_and_extra_peers_are() -> None:
    extra = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    policy = policies({"networkPolicy": {"enabled": True, "namespaces": ["team"], "extraFrom": [extra]},
                       "gateway": {"enabled": False}})[0]
    peers = policy["spec"]["ingress"][0]["from"]
    assert "gateway" not in str(peers)
    assert peers[-1] == extra


def test_enabled_without_namespaces_is_refused_with_the_values_to_set() -> None:
    from tests.chart import HelmError

    with pytest.raises(HelmError, match=re.escape("set watchNamespaces or networkPolicy.namespaces")):
        render({"networkPolicy": {"enabled": True}})

"""The gateway's routing table (pure): ModelDeployments, EndpointSlices, pods and Deployments in."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane import render
from modelplane.api.models import ModelDeployment
from modelplane.gateway.table import (
    Backend,
    CanarySplit,
    Endpoint,
    ModelInfo,
    build_backend,
    build_table,
    canary_revision,
    ready_endpoints,
)


def ep(ip: str, *, ready: bool | None = True, pod: str | None = None, kind: str = "Pod") -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        out["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
    if pod is not None:
        out["targetRef"] = {"kind": kind, "name": pod, "namespace": "ns"}
    return out


def eps(*endpoints: dict[str, Any], ports: list[dict[str, Any]] | None = None,
        address_type: str = "IPv4") -> dict[str, Any]:
    return {"addressType": address_type, "endpoints": list(endpoints),
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
            "metadata": {"labels": {"kubernetes.io/service-name": "chat"}}}


@pytest.mark.parametrize(("slices", "revisions", "expected"), [
    pytest.param([], {}, (), id="no-slices"),
    pytest.param([eps(ep("10.0.0.2", pod="p2"), ep("10.0.0.1", pod="p1"))], {"p1": "aaaa", "p2": "bbbb"},
                 (Endpoint("10.0.0.1:8000", "p1", "aaaa"), Endpoint("10.0.0.2:8000", "p2", "bbbb")),
                 id="sorted-with-revisions"),
    pytest.param([eps(ep("10.0.0.1", ready=False, pod="p1"), ep("10.0.0.2", pod="p2"))], {},
                 (Endpoint("10.0.0.2:8000", "p2"),), id="not-ready-left-out"),
    pytest.param([eps(ep("10.0.0.1", ready=None, pod="p1"))], {},
                 (Endpoint("10.0.0.1:8000", "p1"),), id="ready-missing-means-ready"),
    pytest.param([eps({"addresses": []}, ep("10.0.0.2"))], {}, (Endpoint("10.0.0.2:8000"),),
                 id="no-address-and-no-target"),
    pytest.param([eps(ep("10.0.0.1"), ports=[{"name": "metrics", "port": 9000},
                                             {"name": "http", "port": 8001}])], {},
                 (Endpoint("10.0.0.1:8001"),), id="the-http-port"),
    pytest.param([eps(ep("10.0.0.1"), ports=[{"name": "other", "port": 9000}])], {},
                 (Endpoint("10.0.0.1:9000"),), id="else-the-first-port"),
    pytest.param([eps(ep("10.0.0.1"), ports=[])], {}, (), id="no-port"),
    pytest.param([eps(ep("chat.example"), address_type="FQDN")], {}, (), id="fqdn-skipped"),
    pytest.param([eps(ep("fd00::1", pod="p1"), address_type="IPv6")], {"p1": "aaaa"},
                 (Endpoint("[fd00::1]:8000", "p1", "aaaa"),), id="ipv6"),
    pytest.param([eps(ep("10.0.0.1", pod="p1")), eps(ep("10.0.0.1", pod="p1"))], {},
                 (Endpoint("10.0.0.1:8000", "p1"),), id="listed-twice-counts-once"),
    pytest.param([eps(ep("10.0.0.1", pod="n1", kind="Node"))], {"n1": "x"},
                 (Endpoint("10.0.0.1:8000"),), id="target-not-a-pod"),
])
def test_ready_endpoints(slices: list[dict[str, Any]], revisions: dict[str, str],
                         expected: tuple[Endpoint, ...]) -> None:
    assert ready_endpoints(slices, revisions) == expected


def deployment(key: str, fingerprint: str | None) -> dict[str, Any]:
    annotations = {render.ANNOTATION_FINGERPRINT: fingerprint} if fingerprint else {}
    return {"metadata": {"name": f"chat-{key}", "labels": {render.LABEL_REVISION_HASH: key},
                         "annotations": annotations}}


@pytest.mark.parametrize(("deployments", "fingerprint", "expected"), [
    pytest.param([], "f2", None, id="none"),
    pytest.param([deployment("aaaa", "f1"), deployment("bbbb", "f2")], "f2", "bbbb", id="found"),
    pytest.param([deployment("aaaa", "f1"), deployment("bbbb", None)], "f2", None, id="no-annotation"),
])
def test_canary_revision(deployments: list[dict[str, Any]], fingerprint: str, expected: str | None) -> None:
    assert canary_revision(deployments, fingerprint) == expected


def md(name: str = "chat", *, served: str | None = None, status: dict[str, Any] | None = None,
       created: str = "2025-01-01T00:00:00Z", ns: str = "ns") -> ModelDeployment:
    model: dict[str, Any] = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}
    if served:
        model["servedName"] = served
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
                           "spec": {"model": model}}
    if status is not None:
        obj["status"] = status
    return ModelDeployment.parse(obj)


@pytest.mark.parametrize(("model", "expected"), [
    pytest.param(md(), ModelInfo("ns", "chat", "chat", "Pending", 1735689600), id="defaults"),
    pytest.param(md(served="llama-8b", status={"phase": "Ready"}),
                 ModelInfo("ns", "chat", "llama-8b", "Ready", 1735689600), id="served-name"),
    pytest.param(md(status={"phase": "Progressing", "canary": {"phase": "Stepping", "fingerprint": "f2",
                                                                "weight": 10}}),
                 ModelInfo("ns", "chat", "chat", "Progressing", 1735689600, "f2", 10), id="canary"),
    pytest.param(md(status={"phase": "Ready", "canary": {"phase": "Promoted", "fingerprint": None,
                                                          "weight": 0}}),
                 ModelInfo("ns", "chat", "chat", "Ready", 1735689600, None, 0), id="rollout-over"),
])
def test_model_info(model: ModelDeployment, expected: ModelInfo) -> None:
    assert ModelInfo.from_model(model) == expected


SLICES = [eps(ep("10.0.0.1", pod="stable-1"), ep("10.0.0.2", pod="canary-1"))]
PODS = {"stable-1": "aaaa", "canary-1": "bbbb"}
DEPLOYMENTS = [deployment("aaaa", "f1"), deployment("bbbb", "f2")]


@pytest.mark.parametrize(("info", "split"), [
    pytest.param(ModelInfo("ns", "chat", "chat", "Ready"), None, id="no-rollout"),
    pytest.param(ModelInfo("ns", "chat", "chat", "Progressing", canary_fingerprint="f2", canary_weight=30),
                 CanarySplit("bbbb", 30), id="canary-at-30"),
    pytest.param(ModelInfo("ns", "chat", "chat", "Progressing", canary_fingerprint="f2", canary_weight=0),
                 CanarySplit("bbbb", 0), id="canary-at-0"),
    pytest.param(ModelInfo("ns", "chat", "chat", "Progressing", canary_fingerprint="f3", canary_weight=30),
                 None, id="canary-deployment-not-seen-yet"),
])
def test_build_backend(info: ModelInfo, split: CanarySplit | None) -> None:
    backend = build_backend(info, slices=SLICES, pod_revisions=PODS, deployments=DEPLOYMENTS)
    assert backend.split == split
    assert backend.endpoints == (Endpoint("10.0.0.1:8000", "stable-1", "aaaa"),
                                 Endpoint("10.0.0.2:8000", "canary-1", "bbbb"))


def test_a_name_served_twice_goes_to_the_older_model_deployment() -> None:
    old = Backend("b", "chat", "chat", "Ready", created=100)
    new = Backend("a", "chat", "chat", "Ready", created=200)
    unknown_age = Backend("a", "chat2", "chat", "Ready")
    other = Backend("a", "code", "code", "Ready", created=300)
    table = build_table([new, unknown_age, old, other])
    assert table.get("chat") is old
    assert table.get("code") is other
    assert table.shadowed == (("chat", "a", "chat"), ("chat", "a", "chat2"))


def test_a_canary_weight_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="0-100"):
        CanarySplit("bbbb", 101)

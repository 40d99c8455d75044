"""The gateway's routing table (pure): ModelDeployments, server pods and Deployments in."""

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


def pod(name: str, ip: str | None = "10.0.0.1", *, ready: str | None = "True", revision: str | None = "aaaa",
        deleting: bool = False, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns",
                            "labels": {render.LABEL_REVISION_HASH: revision} if revision else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {}
    if ip is not None:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": ready}]
    container: dict[str, Any] = {"name": "vllm"}
    container["ports"] = [{"name": "http", "containerPort": 8000}] if ports is None else ports
    return {"metadata": meta, "spec": {"containers": [container]}, "status": status}


@pytest.mark.parametrize(("pods", "expected"), [
    pytest.param([], (), id="no-pods"),
    pytest.param([pod("p2", "10.0.0.2", revision="bbbb"), pod("p1", "10.0.0.1")],
                 (Endpoint("10.0.0.1:8000", "p1", "aaaa"), Endpoint("10.0.0.2:8000", "p2", "bbbb")),
                 id="sorted-with-revisions"),
    pytest.param([pod("p1", "10.0.0.1", ready="False"), pod("p2", "10.0.0.2")],
                 (Endpoint("10.0.0.2:8000", "p2", "aaaa"),), id="not-ready-left-out"),
    pytest.param([pod("p1", ready=None)], (), id="no-ready-condition-means-not-ready"),
    pytest.param([pod("p1", ready="Unknown")], (), id="ready-unknown-left-out"),
    pytest.param([pod("p1", ip=None)], (), id="no-ip-yet"),
    pytest.param([pod("p1", deleting=True)], (), id="terminating-left-out"),
    pytest.param([pod("p1", revision=None)], (Endpoint("10.0.0.1:8000", "p1"),), id="no-revision-label"),
    pytest.param([pod("p1", ports=[{"name": "metrics", "containerPort": 9000},
                                   {"name": "http", "containerPort": 8001}])],
                 (Endpoint("10.0.0.1:8001", "p1", "aaaa"),), id="the-http-port"),
    pytest.param([pod("p1", ports=[{"name": "other", "containerPort": 9000}])],
                 (Endpoint("10.0.0.1:9000", "p1", "aaaa"),), id="else-the-first-port"),
    pytest.param([pod("p1", ports=[])], (Endpoint("10.0.0.1:8000", "p1", "aaaa"),),
                 id="no-port-the-known-one"),
    pytest.param([pod("p1", "127.64.0.5")], (Endpoint("127.64.0.5:8000", "p1", "aaaa"),),
                 id="loopback-ip-the-dev-cluster"),
    pytest.param([pod("p1", "fd00::1")], (Endpoint("[fd00::1]:8000", "p1", "aaaa"),), id="ipv6"),
    pytest.param([pod("old", "10.0.0.1"), pod("new", "10.0.0.1", revision="bbbb")],
                 (Endpoint("10.0.0.1:8000", "new", "bbbb"),), id="an-ip-listed-twice-counts-once"),
])
def test_ready_endpoints(pods: list[dict[str, Any]], expected: tuple[Endpoint, ...]) -> None:
    assert ready_endpoints(pods) == expected


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


PODS = [pod("stable-1", "10.0.0.1", revision="aaaa"), pod("canary-1", "10.0.0.2", revision="bbbb")]
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
    backend = build_backend(info, pods=PODS, deployments=DEPLOYMENTS)
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

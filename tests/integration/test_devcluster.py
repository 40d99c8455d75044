"""The dev cluster behaves like a real GPU cluster: scheduling on GPU capacity, node affinity and
taints, readiness after a model-load delay, FailedScheduling when nothing fits, RBAC, and CRD
validation with CEL — all decided by the real kube-apiserver, scheduler and controller-manager.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from modelplane import gpus
from modelplane.controller import kube
from tests.clusterfixtures import ClusterHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def gpu_deployment(name: str, *, gpus_per_pod: int, product: str | None,
                   replicas: int = 1) -> dict[str, Any]:
    affinity = {}
    if product:
        affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": gpus.PRODUCT_LABEL, "operator": "In", "values": [product]}]}]}}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                                    "resources": {"limits": {gpus.GPU_RESOURCE: str(gpus_per_pod)}}}],
                    "tolerations": [{"key": gpus.GPU_RESOURCE, "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "affinity": affinity,
                },
            },
        },
    }


async def test_gpu_nodes_are_ready_with_gpu_capacity(kube_client: kube.Kube) -> None:
    nodes = await kube_client.list(kube.NODES, label_selector="type=kwok")
    by_product: dict[str, int] = {}
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        product = node["metadata"]["labels"].get(gpus.PRODUCT_LABEL)
        if product:
            assert int(node["status"]["allocatable"][gpus.GPU_RESOURCE]) >= 1
            by_product[product] = by_product.get(product, 0) + 1
    assert by_product == {"NVIDIA-H100-80GB-HBM3": 2, "NVIDIA-H200": 1, "NVIDIA-L40S": 2,
                          "NVIDIA-L4": 4}
    assert len(nodes) == 11


def test_kubectl_reports_the_built_version(cluster: ClusterHandle) -> None:
    out = json.loads(cluster.run_kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"].startswith("v1.37.")
    assert out["serverVersion"]["gitVersion"].startswith("v1.37.")
    nodes = cluster.run_kubectl("get", "nodes", "-o", "name").stdout.split()
    assert "node/kwok-l4-0" in nodes


async def test_gpu_pod_lands_on_an_l4_node_and_turns_ready_after_the_load_delay(
        kube_client: kube.Kube, namespace: str) -> None:
    dep = gpu_deployment("l4-model", gpus_per_pod=1, product="NVIDIA-L4")
    await kube_client.create(dep, namespace=namespace)

    async def ready_pod() -> dict[str, Any] | None:
        for pod in await kube_client.list(kube.PODS, namespace=namespace):
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
            if conds.get("Ready") == "True":
                return pod
        return None

    pod = await wait_for(ready_pod, timeout=60, what="the pod to turn Ready")
    assert pod["spec"]["nodeName"].startswith("kwok-l4-")
    assert pod["status"]["podIP"].startswith("127.")
    # It was not Ready at once: the ready transition came after the container started.
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"]
                    if c["type"] == "Ready")
    assert ready_at >= started
    node = await kube_client.get(kube.NODES, pod["spec"]["nodeName"])
    assert node is not None and node["metadata"]["labels"][gpus.PRODUCT_LABEL] == "NVIDIA-L4"


async def test_a_pod_asking_for_nine_gpus_stays_pending_with_failed_scheduling(
        kube_client: kube.Kube, namespace: str) -> None:
    await kube_client.create(gpu_deployment("too-big", gpus_per_pod=9, product=None),
                             namespace=namespace)

    async def failed_scheduling() -> dict[str, Any] | None:
        for ev in await kube_client.list(kube.EVENTS, namespace=namespace):
            if ev.get("reason") == "FailedScheduling":
                return ev
        return None

    event = await wait_for(failed_scheduling, timeout=60, what="a FailedScheduling event")
    assert "nvidia.com/gpu" in event["message"]
    pods = await kube_client.list(kube.PODS, namespace=namespace)
    assert [p["status"]["phase"] for p in pods] == ["Pending"]
    assert not pods[0]["spec"].get("nodeName")


async def test_rbac_is_enforced_for_a_service_account_without_rights(
        kube_client: kube.Kube, namespace: str) -> None:
    await kube_client.create({"apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": {"name": "nobody"}}, namespace=namespace)
    token_request = await kube_client.request(
        "POST", kube.SERVICEACCOUNTS.path(namespace=namespace, name="nobody", subresource="token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 600}})
    token = token_request["status"]["token"]
    cfg = kube.KubeConfig(server=kube_client.config.server, ca_data=kube_client.config.ca_data,
                          token=token)
    async with kube.Kube(cfg) as nobody:
        with pytest.raises(kube.Forbidden) as info:
            await nobody.list(kube.PODS, namespace=namespace)
        assert f"system:serviceaccount:{namespace}:nobody" in info.value.message
        # The token itself is valid: authentication passed, authorization refused.
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["sub"] == f"system:serviceaccount:{namespace}:nobody"


async def test_a_crd_with_a_cel_rule_refuses_an_invalid_object_with_the_servers_message(
        kube_client: kube.Kube, namespace: str) -> None:
    group = "widgets.test.modelplane.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer", "minimum": 0},
                                   "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.min <= self.max",
                                                  "message": "min must not exceed max"}],
                }}}},
            }],
        },
    }
    await kube_client.apply(crd)
    try:
        gadgets = kube.Resource(group, "v1", "gadgets", "Gadget")

        async def established() -> bool:
            got = await kube_client.get(kube.CRDS, f"gadgets.{group}")
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (got or {}).get("status", {}).get("conditions") or [])

        await wait_for(established, timeout=30, what="the CRD to be established")
        path = gadgets.path(namespace=namespace)
        with pytest.raises(kube.Invalid) as info:
            await kube_client.request("POST", path, body={
                "apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "bad"},
                "spec": {"min": 5, "max": 1}})
        assert "spec: Invalid value" in info.value.message
        assert "min must not exceed max" in info.value.message
        with pytest.raises(kube.Invalid) as info:
            await kube_client.request("POST", path, body={
                "apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "neg"},
                "spec": {"min": -1, "max": 1}})
        assert "spec.min" in info.value.message
        ok = await kube_client.request("POST", path, body={
            "apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "good"},
            "spec": {"min": 1, "max": 5}})
        assert ok["spec"] == {"min": 1, "max": 5}
    finally:
        await kube_client.delete(kube.CRDS, f"gadgets.{group}")

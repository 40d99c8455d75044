"""The operator against the dev cluster's real control plane: the CRD, children, scheduling on
the allowed GPU types, status, revision switches, InsufficientGPU, cleanup, and zero writes on a
resync of an unchanged object.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from modelplane import gpus
from modelplane.controller import kube
from tests.clusterfixtures import OperatorHandle
from tests.hfmirror import GATED_REVISION, GATED_TOKEN
from tests.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration


def manifest(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "rev-a"},
        "engine": {"maxModelLen": 8192},
        "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    for path, value in overrides.items():
        node = spec
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


async def get_md(client: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
    assert md is not None
    return md


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (md.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


async def wait_phase(client: kube.Kube, ns: str, name: str, phase: str, *,
                     timeout: float = 90) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        md = await get_md(client, ns, name)
        status = md.get("status") or {}
        if status.get("phase") == phase and status.get("observedGeneration") == \
                md["metadata"]["generation"]:
            return md
        return None

    result: dict[str, Any] = await wait_for(check, timeout=timeout, what=f"{name} phase {phase}")
    return result


async def test_a_model_deployment_gets_children_on_the_allowed_gpus_and_turns_ready(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(manifest("chat"), namespace=namespace)
    md = await wait_phase(kube_client, namespace, "chat", "Ready")
    status = md["status"]
    assert status["readyReplicas"] == status["desiredReplicas"] == 1
    assert condition(md, "Ready")["status"] == "True"
    assert status["plan"]["gpuType"] == "nvidia-l40s"
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8000/v1"
    assert status["stable"]["revision"] == "rev-a"

    deployments = await kube_client.list(kube.DEPLOYMENTS, namespace=namespace)
    assert len(deployments) == 1
    dep = deployments[0]
    assert dep["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert await kube_client.get(kube.SERVICES, "chat", namespace=namespace) is not None
    assert await kube_client.get(kube.PDBS, "chat", namespace=namespace) is not None
    pods = await kube_client.list(kube.PODS, namespace=namespace)
    assert len(pods) == 1
    node = await kube_client.get(kube.NODES, pods[0]["spec"]["nodeName"])
    assert node is not None
    assert node["metadata"]["labels"][gpus.PRODUCT_LABEL] == "NVIDIA-L40S"
    container = pods[0]["spec"]["containers"][0]
    assert container["resources"]["limits"][gpus.GPU_RESOURCE] == "1"
    assert "--served-model-name" in container["args"]

    events = await kube_client.list(kube.EVENTS, namespace=namespace,
                                    field_selector="involvedObject.name=chat")
    reasons = {e["reason"] for e in events}
    assert "Applied" in reasons, reasons


async def test_a_resync_of_an_unchanged_object_makes_no_write(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(manifest("quiet"), namespace=namespace)
    await wait_phase(kube_client, namespace, "quiet", "Ready")

    # Settled: no write for three resync beats of the operator (1 s each).
    last = {"writes": operator.writes(), "since": time.monotonic()}

    def settled() -> bool:
        now = operator.writes()
        if now != last["writes"]:
            last.update(writes=now, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= 3

    await wait_for(settled, timeout=60, what="the operator to stop writing", interval=0.5)
    # Now watch everything the operator could touch in the namespace over several resyncs.
    resources = (kube.DEPLOYMENTS, kube.SERVICES, kube.PDBS, kube.MODELDEPLOYMENTS)
    versions = {}
    for res in resources:
        versions[res] = (await kube_client.list_raw(res, namespace=namespace))["metadata"][
            "resourceVersion"]
    writes_before = operator.writes()
    seen: list[str] = []

    async def watch(res: kube.Resource) -> None:
        async for event in kube_client.watch(res, namespace=namespace,
                                             resource_version=versions[res], timeout_seconds=5):
            if event.type != "BOOKMARK":
                seen.append(f"{event.type} {res.kind} {event.object['metadata']['name']}")

    await asyncio.gather(*(watch(r) for r in resources))
    assert seen == []
    assert operator.writes() == writes_before


async def test_a_revision_change_switches_to_a_new_deployment_and_removes_the_old(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(manifest("switch"), namespace=namespace)
    await wait_phase(kube_client, namespace, "switch", "Ready")
    old = [d["metadata"]["name"] for d in await kube_client.list(kube.DEPLOYMENTS,
                                                                  namespace=namespace)]
    await kube_client.patch(kube.MODELDEPLOYMENTS, "switch", {"spec": {"model": {"revision": "rev-b"}}},
                            namespace=namespace, field_manager="kubectl-patch")

    async def switched() -> list[str] | None:
        names = [d["metadata"]["name"] for d in await kube_client.list(kube.DEPLOYMENTS,
                                                                        namespace=namespace)]
        return names if len(names) == 1 and names != old else None

    new = await wait_for(switched, timeout=90, what="the new revision's Deployment to replace the old")
    md = await wait_phase(kube_client, namespace, "switch", "Ready")
    assert md["status"]["stable"]["revision"] == "rev-b"
    assert md["status"]["stable"]["deployment"] == new[0]
    assert md["status"]["desiredRevisionLive"] is True

    # The old Deployment is deleted in the background: the garbage collector removes its
    # ReplicaSet, then marks its pods for deletion — moments after the Deployment itself is gone.
    async def only_new_pods() -> set[str] | None:
        pods = await kube_client.list(kube.PODS, namespace=namespace)
        hashes = {p["metadata"]["labels"]["modelplane.dev/revision-hash"] for p in pods
                  if not p["metadata"].get("deletionTimestamp")}
        return hashes if hashes == {new[0].rsplit("-", 1)[1]} else None

    await wait_for(only_new_pods, timeout=60, what="only the new revision's pods to remain")


async def test_a_request_larger_than_any_node_shows_insufficient_gpu_with_the_numbers(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    # L4 nodes have one GPU each; two per replica cannot be scheduled anywhere.
    await kube_client.create(manifest("toobig", resources__gpu={"count": 2, "types": ["nvidia-l4"]}),
                             namespace=namespace)
    md = await wait_phase(kube_client, namespace, "toobig", "Degraded")
    degraded = condition(md, "Degraded")
    assert degraded["reason"] == "InsufficientGPU"
    assert "asks for 2 nvidia.com/gpu" in degraded["message"]
    assert "offers 1" in degraded["message"]
    assert condition(md, "Ready")["status"] == "False"

    # The Event is posted after the status write that the wait above saw: wait for it too.
    async def warning() -> dict[str, Any] | None:
        events = await kube_client.list(kube.EVENTS, namespace=namespace,
                                        field_selector="involvedObject.name=toobig")
        return next((e for e in events if e["reason"] == "InsufficientGPU"), None)

    event = await wait_for(warning, timeout=30, what="the InsufficientGPU Event")
    assert event["type"] == "Warning"


async def test_deleting_the_model_deployment_removes_its_children(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(manifest("gone"), namespace=namespace)
    await wait_phase(kube_client, namespace, "gone", "Ready")
    await kube_client.delete(kube.MODELDEPLOYMENTS, "gone", namespace=namespace)

    async def all_gone() -> bool:
        left = [*(await kube_client.list(kube.DEPLOYMENTS, namespace=namespace)),
                *(await kube_client.list(kube.SERVICES, namespace=namespace)),
                *(await kube_client.list(kube.PDBS, namespace=namespace)),
                *(await kube_client.list(kube.PODS, namespace=namespace))]
        return not left

    await wait_for(all_gone, timeout=90, what="the garbage collector to remove the children")


async def test_the_operator_never_writes_spec_labels_or_annotations(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    body = manifest("hands-off")
    body["metadata"]["labels"] = {"team": "a"}
    body["metadata"]["annotations"] = {"owner": "gitops"}
    created = await kube_client.create(body, namespace=namespace, field_manager="gitops-sync")
    md = await wait_phase(kube_client, namespace, "hands-off", "Ready")
    assert md["spec"] == created["spec"]
    assert md["metadata"]["labels"] == {"team": "a"}
    assert md["metadata"]["annotations"] == {"owner": "gitops"}
    assert not md["metadata"].get("finalizers")
    managers = {(f["manager"], f.get("subresource", "")) for f in md["metadata"]["managedFields"]}
    assert ("modelplane", "status") in managers
    assert not any(m == "modelplane" and sub == "" for m, sub in managers)
    assert md["metadata"]["generation"] == created["metadata"]["generation"]


def test_operator_metrics_count_reconciles(operator: OperatorHandle) -> None:
    wait_until(lambda: "modelplane_reconciles_total{" in operator.metrics_text(), timeout=30,
               what="a reconcile counted in the operator's /metrics")
    text = operator.metrics_text()
    assert "modelplane_reconcile_duration_seconds_bucket" in text
    assert "modelplane_modeldeployments{" in text


async def test_the_plan_uses_the_models_config_json_from_the_hub(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle,
        hf_endpoint: tuple[str, list[str]]) -> None:
    await kube_client.create(manifest("sized"), namespace=namespace)

    async def config_read() -> dict[str, Any] | None:
        md = await get_md(kube_client, namespace, "sized")
        loaded = condition(md, "ModelConfigLoaded")
        return md if loaded.get("status") == "True" else None

    md = await wait_for(config_read, timeout=60, what="config.json to be read from the mirror")
    assert condition(md, "ModelConfigLoaded")["reason"] == "ConfigRead"
    assert "hf://meta-llama/Llama-3.1-8B-Instruct" in hf_endpoint[1]
    assert md["status"]["plan"]["shape"] == "1x nvidia-l40s"


@pytest.mark.parametrize(("secret", "reason", "message"), [
    pytest.param(None, "Unauthorized", "set credentialsSecret", id="no-secret"),
    pytest.param({"HF_TOKEN": GATED_TOKEN}, "ConfigRead", "read", id="token"),
    pytest.param({"HF_TOKEN": "hf_not_granted"}, "Forbidden", "accept its licence", id="wrong-token"),
    pytest.param("missing", "Unauthorized", "Secret hf-token not found", id="missing-secret"),
])
async def test_a_gated_models_config_is_read_with_the_token_of_its_credentials_secret(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle,
        secret: dict[str, str] | str | None, reason: str, message: str) -> None:
    model: dict[str, Any] = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct",
                             "revision": GATED_REVISION}
    if secret is not None:
        model["credentialsSecret"] = "hf-token"
    if isinstance(secret, dict):
        await kube_client.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
                                  "stringData": secret}, namespace=namespace)
    await kube_client.create(manifest("gated", model=model), namespace=namespace)

    async def loaded() -> dict[str, Any] | None:
        md = await get_md(kube_client, namespace, "gated")
        return condition(md, "ModelConfigLoaded") or None

    cond = await wait_for(loaded, timeout=60, what="the ModelConfigLoaded condition")
    assert (cond["reason"], cond["status"]) == (reason, "True" if reason == "ConfigRead" else "False"), cond
    assert message in cond["message"], cond
    # The token is used, never shown: not in the condition, not in the operator's Events.
    events = await kube_client.list(kube.EVENTS, namespace=namespace)
    assert not any(GATED_TOKEN in str(e.get("message")) for e in events)
    assert GATED_TOKEN not in str(cond)


async def test_an_unknown_model_says_its_config_could_not_be_read(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    # Not on the (mirrored) Hub and not in the catalog, but sized by hints: still served.
    body = manifest("private", model={"source": "hf://acme/secret-model-7b", "revision": "v1",
                                      "hints": {"parametersBillions": 7.0, "numLayers": 32,
                                                "hiddenSize": 4096, "numAttentionHeads": 32,
                                                "numKeyValueHeads": 8, "headDim": 128}})
    await kube_client.create(body, namespace=namespace)

    async def not_found() -> dict[str, Any] | None:
        md = await get_md(kube_client, namespace, "private")
        return md if condition(md, "ModelConfigLoaded").get("reason") == "NotFound" else None

    md = await wait_for(not_found, timeout=60, what="ModelConfigLoaded NotFound")
    assert condition(md, "ModelConfigLoaded")["status"] == "False"
    assert "spec.model.hints" in condition(md, "ModelConfigLoaded")["message"]
    await wait_phase(kube_client, namespace, "private", "Ready")

"""spec.inferencePool against the dev cluster's real API server, with the Gateway API and Inference
Extension CRDs installed from their Go modules (``modelplane_dev.devcluster.inference_extension``):
the InferencePool and HTTPRoute the operator renders are accepted by the real CRDs' schemas and CEL
rules, follow the spec (route removed, pool disabled) and go with the ModelDeployment; without the
CRDs the ModelDeployment says which one is missing, serves as usual, and the operator neither stops
nor repeats itself.

No gateway runs here: only the CRDs, so the objects are checked, not served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelplane.controller import kube
from modelplane_dev.devcluster import inference_extension
from tests.clusterfixtures import ClusterHandle, OperatorHandle
from tests.integration.test_operator import condition, get_md, manifest
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POOL: dict[str, Any] = {
    "endpointPicker": {"service": "chat-epp", "port": 9002, "failureMode": "FailOpen"},
    "httpRoute": {
        "parentRefs": [{"name": "inference-gateway", "namespace": "gateways", "sectionName": "http"},
                       {"name": "inference-gateway", "namespace": "gateways", "sectionName": "https"}],
        "hostnames": ["llm.example.com", "*.llm.example.com"],
        "matchModelHeader": True,
    },
}
#: The operator looks for an absent CRD every 30 s (Settings.optional_api_retry_seconds).
NOTICE_SECONDS = 60


@pytest.fixture(scope="module", autouse=True)
def default_cluster_afterwards(cluster: ClusterHandle) -> Iterator[None]:
    """The dev cluster's default has none of these CRDs: later tests of the session see it so."""
    yield
    inference_extension.remove(cluster.kubectl, cluster.kubeconfig)


async def wait_condition(client: kube.Kube, ns: str, name: str, status: str, reason: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = condition(await get_md(client, ns, name), "InferencePoolReady")
        return found if (found.get("status"), found.get("reason")) == (status, reason) else None

    return dict(await wait_for(check, timeout=NOTICE_SECONDS,
                               what=f"InferencePoolReady {status}/{reason} on {ns}/{name}"))


async def wait_gone(client: kube.Kube, resource: kube.Resource, ns: str, name: str) -> None:
    async def gone() -> bool:
        return await client.get(resource, name, namespace=ns) is None

    await wait_for(gone, timeout=60, what=f"{resource.kind} {ns}/{name} to be deleted")


async def wait_present(client: kube.Kube, resource: kube.Resource, ns: str, name: str) -> dict[str, Any]:
    async def there() -> dict[str, Any] | None:
        return await client.get(resource, name, namespace=ns)

    return dict(await wait_for(there, timeout=NOTICE_SECONDS, what=f"{resource.kind} {ns}/{name}"))


async def test_without_the_crds_the_model_serves_and_says_what_is_missing(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    inference_extension.remove(cluster.kubectl, cluster.kubeconfig)
    log_start = operator.log.stat().st_size
    await kube_client.create({**manifest("chat", inferencePool=POOL), "metadata": {
        "name": "chat", "namespace": namespace}})
    cond = await wait_condition(kube_client, namespace, "chat", "False", "InferencePoolCRDMissing")
    assert "inferencepools.inference.networking.k8s.io/v1" in cond["message"], cond
    assert "docs/inference-extension.md" in cond["message"], cond
    # The rest of the model is untouched: its Service exists, and it is not Degraded for this.
    assert await kube_client.get(kube.SERVICES, "chat", namespace=namespace) is not None
    md = await get_md(kube_client, namespace, "chat")
    assert condition(md, "Degraded").get("reason") != "InferencePoolCRDMissing"
    # Events are posted by the operator's own senders, after the status: wait for it, then check
    # for a while that it stays the only one (a second reconcile must not tell it again).
    async def missing_events() -> list[dict[str, Any]]:
        return await kube_client.list(kube.EVENTS, namespace=namespace,
                                      field_selector="reason=InferencePoolCRDMissing")

    async def told() -> bool:
        return len(await missing_events()) >= 1

    await wait_for(told, timeout=40, what="the InferencePoolCRDMissing Event")
    # Three more reconciles of the object (its resyncs): still the one Event.
    seen = operator.reconciles(namespace, "chat")
    await wait_for(lambda: operator.reconciles(namespace, "chat") >= seen + 3, timeout=60,
                   what="three more reconciles")
    events = await missing_events()
    assert len(events) == 1, events
    # No crash, and no log line per reconcile: the absence is said once per informer.
    assert operator.process.poll() is None
    log = operator.log.read_bytes()[log_start:].decode(errors="replace")
    assert log.count("does not serve inferencepools") <= 1, log[-3000:]


async def test_the_pool_and_route_are_accepted_and_follow_the_spec(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    crd_dir = inference_extension.install(cluster.kubectl, Path(cluster.kubeconfig))
    assert (crd_dir / "inference.networking.k8s.io_inferencepools.yaml").is_file()
    body = manifest("chat", inferencePool=POOL, model__servedName="llama-3.1-8b")
    await kube_client.create({**body, "metadata": {"name": "chat", "namespace": namespace}})

    # Accepted by the real CRDs (a refusal would show as ChildRejected instead).
    pool = await wait_present(kube_client, kube.INFERENCEPOOLS, namespace, "chat")
    route = await wait_present(kube_client, kube.HTTPROUTES, namespace, "chat")
    await wait_condition(kube_client, namespace, "chat", "True", "InferencePoolApplied")
    md = await get_md(kube_client, namespace, "chat")
    service = await kube_client.get(kube.SERVICES, "chat", namespace=namespace)
    assert service is not None
    assert pool["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {"group": "", "kind": "Service", "name": "chat-epp",
                                                 "port": {"number": 9002}, "failureMode": "FailOpen"}
    for obj in (pool, route):
        [owner] = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("ModelDeployment", md["metadata"]["uid"])
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"][0]["group"] == "inference.networking.k8s.io"
    assert rule["backendRefs"][0]["kind"] == "InferencePool" and rule["backendRefs"][0]["name"] == "chat"
    assert {"type": "Exact", "name": "X-Gateway-Model-Name", "value": "llama-3.1-8b"} in \
        rule["matches"][0]["headers"]
    assert route["spec"]["hostnames"] == ["llm.example.com", "*.llm.example.com"]
    assert [p.get("sectionName") for p in route["spec"]["parentRefs"]] == ["http", "https"]

    # The route no longer asked for: deleted; the pool stays.
    await kube_client.patch(kube.MODELDEPLOYMENTS, "chat", {"spec": {"inferencePool": {"httpRoute": None}}},
                            namespace=namespace)
    await wait_gone(kube_client, kube.HTTPROUTES, namespace, "chat")
    assert await kube_client.get(kube.INFERENCEPOOLS, "chat", namespace=namespace) is not None

    # Disabled: the pool goes, and so does the condition.
    await kube_client.patch(kube.MODELDEPLOYMENTS, "chat", {"spec": {"inferencePool": {"enabled": False}}},
                            namespace=namespace)
    await wait_gone(kube_client, kube.INFERENCEPOOLS, namespace, "chat")

    async def no_condition() -> bool:
        return not condition(await get_md(kube_client, namespace, "chat"), "InferencePoolReady")

    await wait_for(no_condition, timeout=30, what="InferencePoolReady to be removed")

    # Enabled again, then the ModelDeployment deleted: the garbage collector takes the pool.
    await kube_client.patch(kube.MODELDEPLOYMENTS, "chat", {"spec": {"inferencePool": {"enabled": True}}},
                            namespace=namespace)
    await wait_present(kube_client, kube.INFERENCEPOOLS, namespace, "chat")
    await kube_client.delete(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)
    await wait_gone(kube_client, kube.INFERENCEPOOLS, namespace, "chat")

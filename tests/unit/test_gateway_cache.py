"""The gateway's watch-fed routing table, against a scripted cluster (no API server)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

from modelplane import render
from modelplane.controller import kube
from modelplane.gateway.cache import ClusterRoutes
from modelplane.gateway.table import SERVER_SELECTOR, CanarySplit, Endpoint
from tests.waiting import wait_for

Obj = dict[str, Any]


class FakeCluster:
    """LIST answers the objects given; WATCH yields what the test pushes."""

    def __init__(self, objects: dict[str, list[Obj]]) -> None:
        self.objects = objects
        self.events: dict[str, asyncio.Queue[tuple[str, Obj]]] = {}
        self.selectors: dict[str, str | None] = {}

    def push(self, plural: str, event_type: str, obj: Obj) -> None:
        self.events.setdefault(plural, asyncio.Queue()).put_nowait((event_type, obj))

    async def list_raw(self, resource: kube.Resource, *, label_selector: str | None = None,
                       **_: Any) -> Obj:
        self.selectors[resource.plural] = label_selector
        return {"metadata": {"resourceVersion": "1"},
                "items": copy.deepcopy(self.objects.get(resource.plural, []))}

    async def watch(self, resource: kube.Resource, **_: Any) -> AsyncIterator[kube.WatchEvent]:
        queue = self.events.setdefault(resource.plural, asyncio.Queue())
        while True:
            event_type, obj = await queue.get()
            yield kube.WatchEvent(event_type, obj)


def meta(name: str, rv: str = "1", **extra: Any) -> Obj:
    return {"name": name, "namespace": "ns", "resourceVersion": rv, **extra}


def model_deployment(rv: str = "1", weight: int = 30) -> Obj:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": meta("chat", rv, creationTimestamp="2025-01-01T00:00:00Z"),
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"}},
            "status": {"phase": "Progressing",
                       "canary": {"phase": "Stepping", "fingerprint": "f2", "weight": weight}}}


def owned(name: str, key: str, **extra: Any) -> Obj:
    labels = {render.LABEL_MODEL_DEPLOYMENT: "chat", render.LABEL_REVISION_HASH: key}
    return meta(name, labels=labels, **extra)


def endpoint_slice(rv: str, canary_ready: bool) -> Obj:
    return {"metadata": meta("chat-x1", rv, labels={"kubernetes.io/service-name": "chat"}),
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8000}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                 "targetRef": {"kind": "Pod", "name": "chat-aaaa-1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": canary_ready},
                 "targetRef": {"kind": "Pod", "name": "chat-bbbb-1"}}]}


async def test_the_table_follows_the_cluster() -> None:
    cluster = FakeCluster({
        "modeldeployments": [model_deployment()],
        "endpointslices": [endpoint_slice("1", canary_ready=True)],
        "pods": [{"metadata": owned("chat-aaaa-1", "aaaa")}, {"metadata": owned("chat-bbbb-1", "bbbb")}],
        "deployments": [
            {"metadata": owned("chat-aaaa", "aaaa", annotations={render.ANNOTATION_FINGERPRINT: "f1"})},
            {"metadata": owned("chat-bbbb", "bbbb", annotations={render.ANNOTATION_FINGERPRINT: "f2"})}],
    })
    routes = ClusterRoutes(cluster)  # type: ignore[arg-type]
    assert not routes.synced
    task = asyncio.create_task(routes.run())
    try:
        await wait_for(lambda: routes.synced, timeout=5, what="the informers to sync")
        assert cluster.selectors == {"modeldeployments": None, "endpointslices": SERVER_SELECTOR,
                                     "pods": SERVER_SELECTOR, "deployments": SERVER_SELECTOR}
        backend = routes.table().get("llama")
        assert backend is not None and (backend.namespace, backend.name) == ("ns", "chat")
        assert backend.split == CanarySplit("bbbb", 30)
        assert backend.endpoints == (Endpoint("10.0.0.1:8000", "chat-aaaa-1", "aaaa"),
                                     Endpoint("10.0.0.2:8000", "chat-bbbb-1", "bbbb"))

        # The canary's pod stops being ready: a held request waiting on the table wakes up.
        waiting = asyncio.create_task(routes.wait_changed(5))
        await asyncio.sleep(0)
        cluster.push("endpointslices", "MODIFIED", endpoint_slice("2", canary_ready=False))
        assert await waiting
        await wait_for(lambda: len(routes.table().models["llama"].endpoints) == 1, timeout=5,
                       what="the canary endpoint to leave the table")

        # The rollout moves the weight; then the ModelDeployment goes.
        cluster.push("modeldeployments", "MODIFIED", model_deployment("3", weight=60))
        await wait_for(lambda: routes.table().models["llama"].split == CanarySplit("bbbb", 60), timeout=5,
                       what="the new weight")
        cluster.push("modeldeployments", "DELETED", model_deployment("3", weight=60))
        await wait_for(lambda: routes.table().get("llama") is None, timeout=5, what="the model to go")
        assert routes.health() == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_invalid_model_deployment_is_not_routed() -> None:
    bad = model_deployment()
    bad["spec"]["model"]["source"] = "ftp://nowhere"
    cluster = FakeCluster({"modeldeployments": [bad]})
    routes = ClusterRoutes(cluster, namespaces=("ns",))  # type: ignore[arg-type]
    task = asyncio.create_task(routes.run())
    try:
        await wait_for(lambda: routes.synced, timeout=5, what="the informers to sync")
        assert routes.table().models == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

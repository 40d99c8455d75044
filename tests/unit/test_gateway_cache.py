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
    return {**meta(name), "labels": labels, **extra}


def server_pod(name: str, key: str, ip: str, rv: str = "1", ready: bool = True) -> Obj:
    return {"metadata": owned(name, key, resourceVersion=rv),
            "spec": {"containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


async def test_the_table_follows_the_cluster() -> None:
    cluster = FakeCluster({
        "modeldeployments": [model_deployment()],
        "pods": [server_pod("chat-aaaa-1", "aaaa", "127.64.0.1"),
                 server_pod("chat-bbbb-1", "bbbb", "127.64.0.2")],
        "deployments": [
            {"metadata": owned("chat-aaaa", "aaaa", annotations={render.ANNOTATION_FINGERPRINT: "f1"})},
            {"metadata": owned("chat-bbbb", "bbbb", annotations={render.ANNOTATION_FINGERPRINT: "f2"})}],
    })
    routes = ClusterRoutes(cluster)  # type: ignore[arg-type]
    assert not routes.synced
    task = asyncio.create_task(routes.run())
    try:
        await wait_for(lambda: routes.synced, timeout=5, what="the informers to sync")
        # Pods, not EndpointSlices: the gateway watches exactly these (its RBAC, test_chart.py).
        assert cluster.selectors == {"modeldeployments": None, "pods": SERVER_SELECTOR,
                                     "deployments": SERVER_SELECTOR, "leaderworkersets": SERVER_SELECTOR,
                                     "modeladapters": None}
        backend = routes.table().get("llama")
        assert backend is not None and (backend.namespace, backend.name) == ("ns", "chat")
        assert backend.split == CanarySplit("bbbb", 30)
        assert backend.endpoints == (Endpoint("127.64.0.1:8000", "chat-aaaa-1", "aaaa"),
                                     Endpoint("127.64.0.2:8000", "chat-bbbb-1", "bbbb"))

        # The canary's pod stops being ready: a held request waiting on the table wakes up.
        waiting = asyncio.create_task(routes.wait_changed(5))
        await asyncio.sleep(0)
        cluster.push("pods", "MODIFIED", server_pod("chat-bbbb-1", "bbbb", "127.64.0.2", rv="2", ready=False))
        assert await waiting
        await wait_for(lambda: len(routes.table().models["llama"].endpoints) == 1, timeout=5,
                       what="the canary endpoint to leave the table")
        # A new stable pod turns Ready; then one terminates (deletionTimestamp): in, then out.
        cluster.push("pods", "ADDED", server_pod("chat-aaaa-2", "aaaa", "127.64.0.3", rv="3"))
        await wait_for(lambda: [e.pod for e in routes.table().models["llama"].endpoints]
                       == ["chat-aaaa-1", "chat-aaaa-2"], timeout=5, what="the new pod")
        going = server_pod("chat-aaaa-1", "aaaa", "127.64.0.1", rv="4")
        going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        cluster.push("pods", "MODIFIED", going)
        await wait_for(lambda: [e.pod for e in routes.table().models["llama"].endpoints] == ["chat-aaaa-2"],
                       timeout=5, what="the terminating pod to leave the table")

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


async def test_a_canary_of_groups_is_found_through_its_leader_worker_set() -> None:
    """Multi-node replicas: the canary's revision is a LeaderWorkerSet, and only leaders are endpoints."""
    cluster = FakeCluster({
        "modeldeployments": [model_deployment()],
        "pods": [server_pod("chat-aaaa-0", "aaaa", "127.64.0.1"),
                 server_pod("chat-bbbb-0", "bbbb", "127.64.0.2")],
        "leaderworkersets": [
            {"metadata": owned("chat-aaaa", "aaaa", annotations={render.ANNOTATION_FINGERPRINT: "f1"})},
            {"metadata": owned("chat-bbbb", "bbbb", annotations={render.ANNOTATION_FINGERPRINT: "f2"})}],
    })
    routes = ClusterRoutes(cluster)  # type: ignore[arg-type]
    task = asyncio.create_task(routes.run())
    try:
        await wait_for(lambda: routes.synced, timeout=5, what="the informers to sync")
        backend = routes.table().get("llama")
        assert backend is not None and backend.split == CanarySplit("bbbb", 30)
        assert [e.pod for e in backend.endpoints] == ["chat-aaaa-0", "chat-bbbb-0"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def model_adapter(rv: str, *loaded: str) -> Obj:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelAdapter",
            "metadata": meta("sql-adapter", rv),
            "spec": {"base": "chat", "source": "hf://org/sql-lora", "servedName": "sql"},
            "status": {"phase": "Ready", "conditions": [{"type": "Loadable", "status": "True"}],
                       "replicas": [{"pod": p, "state": "Loaded", "path": "org/sql-lora"} for p in loaded]}}


async def test_adapters_follow_their_status_and_their_base() -> None:
    cluster = FakeCluster({
        "modeldeployments": [model_deployment()],
        "pods": [server_pod("chat-aaaa-1", "aaaa", "127.64.0.1"),
                 server_pod("chat-aaaa-2", "aaaa", "127.64.0.2")],
        "modeladapters": [model_adapter("1", "chat-aaaa-1")],
    })
    routes = ClusterRoutes(cluster)  # type: ignore[arg-type]
    task = asyncio.create_task(routes.run())
    try:
        await wait_for(lambda: routes.synced, timeout=5, what="the informers to sync")
        sql = routes.table().get("sql")
        assert sql is not None and [e.pod for e in sql.endpoints] == ["chat-aaaa-1"]
        assert sql.adapter_of == "chat"
        # The operator loaded it on the second replica too.
        cluster.push("modeladapters", "MODIFIED", model_adapter("2", "chat-aaaa-1", "chat-aaaa-2"))
        await wait_for(lambda: [e.pod for e in routes.table().models["sql"].endpoints]
                       == ["chat-aaaa-1", "chat-aaaa-2"], timeout=5, what="the second holder")
        # A holder stops being ready: it leaves the adapter's endpoints with the base's.
        cluster.push("pods", "MODIFIED", server_pod("chat-aaaa-1", "aaaa", "127.64.0.1", rv="2", ready=False))
        await wait_for(lambda: [e.pod for e in routes.table().models["sql"].endpoints] == ["chat-aaaa-2"],
                       timeout=5, what="the unready holder to leave")
        cluster.push("modeladapters", "DELETED", model_adapter("2", "chat-aaaa-2"))
        await wait_for(lambda: routes.table().get("sql") is None, timeout=5, what="the adapter to go")
        assert routes.table().get("llama") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

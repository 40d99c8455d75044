"""LoRA adapters on the dev cluster: ModelAdapters loaded at runtime on a base's simulator pods by the
session's operator, routed by the session's gateways (the ``gateways`` fixture).

- load, serve, unload: an applied adapter answers through the gateway (the time from ``create`` to
  the first answer is printed), on every replica, with no pod restarted or replaced; deleted, it is
  unloaded from every replica and the gateway answers 404 for it;
- a replica that is replaced under adapter traffic gets the adapter before it receives any adapter
  request: no request fails, and the new replica's simulator never answered 404 for it;
- bad inputs: refused by the API server with the field named, or reported on the adapter as a
  condition (unknown base, rank above the maximum, no headroom, served name taken, vLLM's load error);
- 50 adapters on one base reconcile, and then the operator makes no API write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelplane import render
from modelplane.controller import health, kube
from tests.clusterfixtures import Gateways, OperatorHandle
from tests.waiting import stopped, wait_for

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
LORA = {"maxLoras": 4, "maxLoraRank": 16, "maxCpuLoras": 64}


def base_model(name: str, namespace: str, *, replicas: int = 2,
               lora: Mapping[str, int] | None = None) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": f"{name}-{namespace[-8:]}"},
                     "engine": {"maxModelLen": 2048, "maxNumSeqs": 16, "lora": dict(lora or LORA)},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": {"minReplicas": replicas, "maxReplicas": replicas}}}


def adapter(name: str, namespace: str, *, base: str = "base", source: str = "hf://org/sql-lora",
            rank: int = 16, served: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelAdapter",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"base": base, "source": source, "rank": rank,
                     "servedName": served or f"{name}-{namespace[-8:]}"}}


async def get_adapter(client: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    obj = await client.get(kube.MODELADAPTERS, name, namespace=ns)
    assert obj is not None
    return obj


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), {})


async def ready_base(client: kube.Kube, ns: str, name: str = "base", replicas: int = 2) -> None:
    async def ready() -> bool:
        md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
        status = (md or {}).get("status") or {}
        return bool(status.get("phase") == "Ready" and status.get("readyReplicas") == replicas)

    await wait_for(ready, timeout=120, what=f"{name} Ready with {replicas} replicas")


async def server_pods(client: kube.Kube, ns: str, name: str = "base") -> list[dict[str, Any]]:
    selector = f"{render.LABEL_MODEL_DEPLOYMENT}={name}"
    pods = await client.list(kube.PODS, namespace=ns, label_selector=selector)
    return [p for p in pods if health.is_ready(p) and (p.get("status") or {}).get("podIP")]


def pod_identity(pods: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(name, uid, restarts) of each pod: a replaced or restarted pod changes it."""
    return {(p["metadata"]["name"], p["metadata"]["uid"],
             sum(c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses") or []))
            for p in pods}


async def pod_adapters(http: aiohttp.ClientSession, pod: Mapping[str, Any]) -> set[str]:
    async with http.get(f"http://{pod['status']['podIP']}:{render.PORT}/v1/models") as resp:
        return {c["id"] for c in (await resp.json())["data"] if c.get("parent")}


async def chat(http: aiohttp.ClientSession, url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with http.post(f"{url}{CHAT}", json=body) as resp:
        await resp.read()
        return resp.status


async def chat_counts(http: aiohttp.ClientSession, pod: Mapping[str, Any]) -> dict[str, float]:
    """The simulator's chat answers by status class (its http_requests_total)."""
    async with http.get(f"http://{pod['status']['podIP']}:{render.PORT}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "http_requests_total" and s.labels.get("handler") == CHAT:
                out[s.labels["status"]] = out.get(s.labels["status"], 0.0) + s.value
    return out


async def test_load_serve_unload_with_no_pod_restarted(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    gateways.ensure_running()
    gateway = gateways.replicas[0].url
    await kube_client.create(base_model("base", namespace))
    await ready_base(kube_client, namespace)
    before = pod_identity(await server_pods(kube_client, namespace))
    served = f"sql-{namespace[-8:]}"
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        await kube_client.create(adapter("sql", namespace))

        async def answered() -> bool:
            return await chat(http, gateway, served) == 200

        await wait_for(answered, timeout=60, what="the adapter to answer through the gateway", interval=0.05)
        took = time.monotonic() - started
        print(f"\nadapter applied -> first answer through the gateway: {took:.2f} s")

        async def everywhere() -> bool:
            obj = await get_adapter(kube_client, namespace, "sql")
            status = obj.get("status") or {}
            return status.get("phase") == "Ready" and status.get("loadedReplicas") == 2
        await wait_for(everywhere, timeout=30, what="the adapter Loaded on both replicas")
        pods = await server_pods(kube_client, namespace)
        assert pod_identity(pods) == before, "a pod was restarted or replaced"
        for pod in pods:
            assert served in await pod_adapters(http, pod)
        obj = await get_adapter(kube_client, namespace, "sql")
        assert {r["pod"] for r in obj["status"]["replicas"]} == {p["metadata"]["name"] for p in pods}
        assert condition(obj, "Loadable")["status"] == "True"
        async def listed() -> bool:
            for replica in gateways.replicas:
                async with http.get(f"{replica.url}/v1/models") as resp:
                    cards = {c["id"]: c for c in (await resp.json())["data"]}
                card = cards.get(served) or {}
                if (card.get("parent"), card.get("ready_replicas")) != ("base", 2):
                    return False
            return True
        await wait_for(listed, timeout=30, what="both gateways to list the adapter on both replicas")
        statuses = await asyncio.gather(*(chat(http, gateway, served) for _ in range(20)))
        assert set(statuses) == {200}

        await kube_client.delete(kube.MODELADAPTERS, "sql", namespace=namespace)

        async def unloaded() -> bool:
            held = await asyncio.gather(*(pod_adapters(http, p) for p in pods))
            return all(served not in h for h in held)
        await wait_for(unloaded, timeout=30, what="the adapter unloaded from every replica")

        async def gone() -> bool:
            return await chat(http, gateway, served) == 404
        await wait_for(gone, timeout=30, what="the gateway to answer 404 for the deleted adapter")
        assert pod_identity(await server_pods(kube_client, namespace)) == before


async def test_a_replaced_replica_gets_the_adapter_before_adapter_traffic(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    gateways.ensure_running()
    gateway = gateways.replicas[0].url
    await kube_client.create(base_model("base", namespace))
    await ready_base(kube_client, namespace)
    served = f"sql-{namespace[-8:]}"
    await kube_client.create(adapter("sql", namespace))

    async def loaded_on(count: int) -> bool:
        status = (await get_adapter(kube_client, namespace, "sql")).get("status") or {}
        return status.get("phase") == "Ready" and status.get("loadedReplicas") == count
    await wait_for(lambda: loaded_on(2), timeout=60, what="the adapter Loaded on both replicas")
    old = {p["metadata"]["name"] for p in await server_pods(kube_client, namespace)}

    statuses: list[int] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        async def load() -> None:
            while not stop.is_set():
                statuses.append(await chat(http, gateway, served))
                await stopped(stop, 0.02)

        traffic = asyncio.create_task(load())
        victim = sorted(old)[0]
        await kube_client.delete(kube.PODS, victim, namespace=namespace)

        async def replaced() -> list[dict[str, Any]] | None:
            pods = await server_pods(kube_client, namespace)
            names = {p["metadata"]["name"] for p in pods}
            fresh = [p for p in pods if p["metadata"]["name"] not in old]
            status = (await get_adapter(kube_client, namespace, "sql")).get("status") or {}
            holders = {r["pod"] for r in status.get("replicas") or [] if r.get("state") == "Loaded"}
            done = fresh and len(names) == 2 and {p["metadata"]["name"] for p in fresh} <= holders
            return fresh if done else None

        fresh = await wait_for(replaced, timeout=120, what="a new replica, Ready and holding the adapter")

        async def fresh_serves() -> bool:
            return (await chat_counts(http, fresh[0])).get("2xx", 0) > 0
        await wait_for(fresh_serves, timeout=60, what="the new replica to serve adapter requests")
        stop.set()
        await traffic
        counts = await chat_counts(http, fresh[0])
    assert statuses and set(statuses) == {200}, f"failed adapter requests: {sorted(set(statuses))}"
    # Never asked for the adapter before it had it: a simulator answers 404 for an adapter it lacks.
    assert counts.get("4xx", 0) == 0
    print(f"\n{len(statuses)} adapter requests during the replacement, all 200")


async def test_bad_adapters_are_refused_or_reported(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    # The API server refuses what the schema can judge, naming the field.
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"rank": 1024}, "spec.rank"), ({"source": "oci://registry.example/x:1"}, "spec.source"),
        ({"base": "Not_A_Name"}, "spec.base"), ({"source": "hf://no-org"}, "spec.source")]
    for spec, field in refusals:
        bad = adapter("bad", namespace)
        bad["spec"].update(spec)
        with pytest.raises(kube.Invalid) as refused:
            await kube_client.create(bad)
        assert field in refused.value.message, refused.value.message
    assert not await kube_client.list(kube.MODELADAPTERS, namespace=namespace)

    # What only the operator can judge becomes a condition on the adapter.
    behaviors = yaml.safe_dump({"org/missing-lora": {"lora_missing": True}})
    await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelplane-sim"},
                              "data": {"behaviors.yaml": behaviors}}, namespace=namespace)
    await kube_client.create(base_model("base", namespace, replicas=1,
                                        lora={"maxLoras": 1, "maxLoraRank": 16, "maxCpuLoras": 2}))
    await ready_base(kube_client, namespace, replicas=1)
    served_base = f"base-{namespace[-8:]}"
    # Created one by one: creation order (who keeps a slot) is this order, and equal timestamps (one
    # second resolution) fall back to the names, which sort the same way.
    for obj in (adapter("a-first", namespace), adapter("b-missing", namespace, source="hf://org/missing-lora"),
                adapter("c-extra", namespace), adapter("d-wide", namespace, rank=64),
                adapter("e-clash", namespace, served=served_base),
                adapter("f-orphan", namespace, base="nope")):
        await kube_client.create(obj)
    expected = {"a-first": ("Loadable", "True", "Accepted"),
                "b-missing": ("Ready", "False", "LoadFailed"),
                "c-extra": ("Loadable", "False", "NoLoRAHeadroom"),
                "d-wide": ("Loadable", "False", "RankAboveMaximum"),
                "e-clash": ("Loadable", "False", "ServedNameConflict"),
                "f-orphan": ("Loadable", "False", "UnknownBase")}

    seen: dict[str, tuple[Any, Any]] = {}

    async def reported() -> bool:
        for name, (type_, _, _) in expected.items():
            cond = condition(await get_adapter(kube_client, namespace, name), type_)
            seen[name] = (cond.get("status"), cond.get("reason"))
        return seen == {n: (s, r) for n, (_, s, r) in expected.items()}

    try:
        await wait_for(reported, timeout=60, what="every adapter's condition")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; conditions seen: {seen}") from None
    missing = condition(await get_adapter(kube_client, namespace, "b-missing"), "Ready")
    assert "No adapter found for org/missing-lora" in missing["message"]
    assert (await get_adapter(kube_client, namespace, "a-first"))["status"]["phase"] == "Ready"

    # `kubectl describe modeladapter` tells each failure once, as a Warning Event on the adapter.
    warnings: dict[str, list[str]] = {}

    async def told() -> bool:
        warnings.clear()
        for event in await kube_client.list(kube.EVENTS, namespace=namespace, field_selector="type=Warning"):
            involved = event.get("involvedObject") or {}
            if involved.get("kind") == "ModelAdapter":
                warnings.setdefault(str(involved.get("name")), []).append(str(event.get("reason")))
        return all(warnings.get(n) for n, (_, s, _) in expected.items() if s == "False")

    try:
        await wait_for(told, timeout=40, what="a Warning Event on each failing adapter")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Warning Events seen: {warnings}") from None
    assert {n: sorted(set(r)) for n, r in warnings.items()} == {
        n: [r] for n, (_, s, r) in expected.items() if s == "False"}, warnings
    assert all(len(r) == 1 for r in warnings.values()), warnings  # once, not at every write


async def test_fifty_adapters_reconcile_then_no_write(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(base_model("base", namespace))
    await ready_base(kube_client, namespace)
    names = [f"ad-{i:02d}" for i in range(50)]
    started = time.monotonic()
    await asyncio.gather(*(kube_client.create(adapter(n, namespace, source=f"hf://org/lora-{n}"))
                           for n in names))

    async def all_ready() -> bool:
        objs = await kube_client.list(kube.MODELADAPTERS, namespace=namespace)
        ready = sum(1 for o in objs if (o.get("status") or {}).get("phase") == "Ready"
                    and (o.get("status") or {}).get("loadedReplicas") == 2)
        return ready == len(names)

    await wait_for(all_ready, timeout=120, what="50 adapters Ready on both replicas", interval=0.5)
    print(f"\n50 adapters created -> all Ready on both replicas: {time.monotonic() - started:.1f} s")
    pods = await server_pods(kube_client, namespace)
    async with aiohttp.ClientSession() as http:
        for pod in pods:
            assert len(await pod_adapters(http, pod)) == 50
    # Steady state: five more reconciles of the base (each one reads its 2 replicas' adapters and
    # renders the 50 statuses), and not one write to any object of this namespace: every
    # resourceVersion stays. (The operator's own write counter is global, and other tests'
    # namespaces may be going away meanwhile; it is printed, and checked when nothing else runs.)
    before = await versions(kube_client, namespace)
    writes, start = operator.writes(), reconciles(operator, namespace)
    await wait_for(lambda: reconciles(operator, namespace) >= start + 5, timeout=60,
                   what="five more reconciles of the base")
    after = await versions(kube_client, namespace)
    print(f"{reconciles(operator, namespace) - start:.0f} reconciles at steady state, "
          f"{operator.writes() - writes:.0f} API writes by the operator (all namespaces), "
          f"{sum(after[k] != v for k, v in before.items())} of {len(before)} objects here changed")
    assert len(before) >= 50 + 3
    assert after == before


async def versions(client: kube.Kube, ns: str) -> dict[tuple[str, str], str]:
    """resourceVersion of every object the operator writes in the namespace."""
    out: dict[tuple[str, str], str] = {}
    for resource in (kube.MODELADAPTERS, kube.MODELDEPLOYMENTS, kube.DEPLOYMENTS, kube.SERVICES, kube.PDBS):
        for obj in await client.list(resource, namespace=ns):
            out[(resource.kind, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
    return out


def reconciles(operator: OperatorHandle, namespace: str) -> float:
    """Successful reconciles of the base, from the operator's /metrics."""
    for family in text_string_to_metric_families(operator.metrics_text()):
        for s in family.samples:
            if (s.name == "modelplane_reconciles_total" and s.labels.get("namespace") == namespace
                    and s.labels.get("name") == "base" and s.labels.get("result") == "ok"):
                return float(s.value)
    return 0.0

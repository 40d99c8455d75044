"""Adapters at the gateway: routed to the replicas that hold them, listed, and the admin API never forwarded.

Two simulated vLLM replicas with LoRA on and runtime updating allowed; the adapter is loaded on one
only, and the ModelAdapter's status (as the operator writes it) lists that one as Loaded. The table is
built from those objects by ``gateway.adapters.with_adapters``, as ``ClusterRoutes`` builds it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from modelplane.gateway.adapters import adapter_backend, loaded_pods, with_adapters
from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.server import Gateway, Settings
from modelplane.gateway.table import Backend, Endpoint, build_table
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.quality import SimBehavior
from modelplane_dev.sim.server import SimServer
from tests.unit.test_gateway_server import serving

#: vLLM's runtime admin paths and others that change a replica's state: never forwarded.
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/sleep", "/wake_up",
               "/reset_prefix_cache", "/collective_rpc", "/scale_elastic_ep", "/pause", "/resume")


def lora_sim() -> SimServer:
    base = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "chat",
                            "--max-model-len", "4096", "--enable-lora", "--max-lora-rank", "16"])
    config = replace(base, host="127.0.0.1", port=0, allow_runtime_lora_updating=True)
    return SimServer(config, behavior=SimBehavior())


def adapter_obj(*, loaded: list[str], served: str = "sql", base: str = "chat") -> dict[str, Any]:
    return {"metadata": {"name": "sql-adapter", "namespace": "ns"},
            "spec": {"base": base, "source": "hf://org/sql-lora", "servedName": served},
            "status": {"phase": "Ready", "conditions": [{"type": "Loadable", "status": "True"}],
                       "replicas": [{"pod": p, "state": "Loaded", "path": "org/sql-lora"} for p in loaded]}}


@contextlib.asynccontextmanager
async def gateway_over(table_backends: list[Backend]) -> AsyncIterator[str]:
    gateway = Gateway(StaticRoutes(build_table(table_backends)), Settings(pod_metrics_seconds=0))
    async with serving(gateway) as url:
        yield url


@pytest.fixture
async def two_replicas() -> AsyncIterator[list[SimServer]]:
    sims = [lora_sim(), lora_sim()]
    for sim in sims:
        await sim.start()
    yield sims
    for sim in sims:
        await sim.stop()


def base_backend(sims: list[SimServer]) -> Backend:
    endpoints = tuple(Endpoint(f"127.0.0.1:{s.port}", f"pod-{i}", "rev") for i, s in enumerate(sims))
    return Backend(namespace="ns", name="chat", served_name="chat", phase="Ready", endpoints=endpoints)


async def test_adapter_requests_go_only_to_replicas_that_hold_it(two_replicas: list[SimServer]) -> None:
    holder, other = two_replicas
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{holder.url}/v1/load_lora_adapter",
                             json={"lora_name": "sql", "lora_path": "org/sql-lora"}) as response:
            assert response.status == 200
        bases = {("ns", "chat"): base_backend(two_replicas)}
        backends = with_adapters(bases, [adapter_obj(loaded=["pod-0"])])
        async with gateway_over(backends) as url:
            for _ in range(20):
                body = {"model": "sql", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                async with http.post(f"{url}/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["model"] == "sql"
            async with http.get(f"{url}/v1/models") as r:
                cards = {c["id"]: c for c in (await r.json())["data"]}
    assert cards["sql"]["parent"] == "chat"
    assert cards["sql"]["model_adapter"] == "sql-adapter"
    assert cards["sql"]["ready_replicas"] == 1
    assert cards["chat"]["ready_replicas"] == 2
    # Every adapter request went to the holder; the other replica saw none (it would answer 404).
    assert holder.http_requests[("POST", "2xx", "/v1/chat/completions")] == 20
    assert not any(labels[2] == "/v1/chat/completions" for labels in other.http_requests)


@pytest.mark.parametrize("weight", [0, 30, 100])
async def test_an_adapter_rollout_splits_the_served_name_by_exact_weight(two_replicas: list[SimServer],
                                                                       weight: int) -> None:
    """Both replicas hold the serving revision as ``sql`` and the new one as ``sql@new``: the gateway
    sends the step's weight of ``model: sql`` requests to ``sql@new``, rewritten, on both replicas."""
    async with aiohttp.ClientSession() as http:
        for sim in two_replicas:
            for name, path in (("sql", "org/sql-lora"), ("sql@new", "org/sql-lora-v2")):
                async with http.post(f"{sim.url}/v1/load_lora_adapter",
                                     json={"lora_name": name, "lora_path": path}) as response:
                    assert response.status == 200
        obj = adapter_obj(loaded=["pod-0", "pod-1"])
        obj["status"]["canary"] = {"phase": "Stepping", "weight": weight, "servedName": "sql@new",
                                   "replicas": [{"pod": p, "state": "Loaded", "path": "org/sql-lora-v2"}
                                                for p in ("pod-0", "pod-1")]}
        backends = with_adapters({("ns", "chat"): base_backend(two_replicas)}, [obj])
        answered: dict[str, int] = {}
        async with gateway_over(backends) as url:
            for _ in range(100):
                body = {"model": "sql", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                async with http.post(f"{url}/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    model = (await r.json())["model"]
                    answered[model] = answered.get(model, 0) + 1
    # Stochastic rounding of the running share: within one request of the weight (one gateway).
    assert abs(answered.get("sql@new", 0) - weight) <= 1, answered
    assert sum(answered.values()) == 100
    if 0 < weight < 100:
        for sim in two_replicas:  # each revision's share goes to both replicas that hold it
            assert sim.http_requests[("POST", "2xx", "/v1/chat/completions")] > 0


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_paths_are_never_forwarded(two_replicas: list[SimServer], path: str) -> None:
    async with aiohttp.ClientSession() as http, gateway_over([base_backend(two_replicas)]) as url:
        async with http.post(f"{url}{path}", json={"lora_name": "evil", "lora_path": "org/evil"}) as response:
            assert response.status == 404
            assert json.loads(await response.text())["error"]["type"]
    for sim in two_replicas:
        assert not sim.lora.adapters
        assert not any(labels[2] == path for labels in sim.http_requests)


@pytest.mark.parametrize(("obj", "bases", "want"), [
    (adapter_obj(loaded=["pod-1"]), True, ("sql", ("pod-1",))),
    (adapter_obj(loaded=[]), True, ("sql", ())),
    (adapter_obj(loaded=["pod-0"], base="missing"), True, None),
    ({"metadata": {"name": "x", "namespace": "ns"}, "spec": {"base": "chat", "source": "oci://r/x"}}, True,
     None),
], ids=["holder-only", "none-loaded", "base-not-routed", "invalid"])
def test_adapter_backend(obj: dict[str, Any], bases: bool, want: tuple[str, tuple[str, ...]] | None) -> None:
    endpoints = (Endpoint("10.0.0.1:8000", "pod-0", "r"), Endpoint("10.0.0.2:8000", "pod-1", "r"))
    table = {("ns", "chat"): Backend(namespace="ns", name="chat", served_name="chat", phase="Ready",
                                     endpoints=endpoints)}
    got = adapter_backend(obj, table)
    assert (None if got is None else (got.served_name, tuple(e.pod for e in got.endpoints))) == want


def test_an_adapter_the_operator_did_not_accept_is_not_routed() -> None:
    chat = Backend(namespace="ns", name="chat", served_name="chat", phase="Ready")
    refused = adapter_obj(loaded=[])
    refused["status"]["conditions"] = [{"type": "Loadable", "status": "False"}]
    fresh = adapter_obj(loaded=[])
    del fresh["status"]
    assert with_adapters({("ns", "chat"): chat}, [refused, fresh]) == [chat]


def test_a_model_keeps_its_name_against_an_adapter() -> None:
    chat = Backend(namespace="ns", name="chat", served_name="chat", phase="Ready")
    backends = with_adapters({("ns", "chat"): chat}, [adapter_obj(loaded=[], served="chat")])
    assert backends == [chat]


@pytest.mark.parametrize(("status", "pods"), [
    (None, frozenset()),
    ({"replicas": [{"pod": "a", "state": "Loaded"}, {"pod": "b", "state": "Failed"}]}, frozenset({"a"})),
], ids=["no-status", "failed-not-routed"])
def test_loaded_pods(status: dict[str, Any] | None, pods: frozenset[str]) -> None:
    assert loaded_pods(status) == pods

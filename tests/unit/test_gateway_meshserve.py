"""The gateway serving ModelRoutes in-process, on real sockets (no cluster): a simulated vLLM replica
as the self-hosted backend, the simulator in provider mode (API key, faults on demand) as the
external one; routes and team keys set by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from modelplane.api.route import ModelRoute
from modelplane.gateway import metrics
from modelplane.gateway.activator import HoldLimits
from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.meshroutes import StaticMesh
from modelplane.gateway.meshserve import MeshServer
from modelplane.gateway.server import Gateway, Settings, start
from modelplane.gateway.table import Backend, Endpoint
from modelplane.gateway.teams import Team, Teams, hash_key
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.provider import ProviderMode
from modelplane_dev.sim.server import SimServer
from tests.waiting import wait_for

KEY = "sk-provider"


def sim(served: str, provider: ProviderMode | None = None) -> SimServer:
    base = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", served,
                            "--max-model-len", "4096"])
    return SimServer(replace(base, host="127.0.0.1", port=0), provider=provider)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[SimServer, SimServer]]:
    own, api = sim("llama"), sim("gpt-big", ProviderMode(KEY))
    for s in (own, api):
        await s.start()
    yield own, api
    for s in (own, api):
        await s.stop()


def external(api: SimServer, **over: Any) -> dict[str, Any]:
    return {"name": "api", "baseURL": f"{api.url}/v1", "model": "gpt-big",
            "apiKeySecret": {"name": "provider", "key": "token"},
            "inputUSDPerMillionTokens": 3, "outputUSDPerMillionTokens": 15, **over}


def route(rules: list[dict[str, Any]], name: str = "assistant", **spec: Any) -> ModelRoute:
    return ModelRoute.parse({"metadata": {"name": name, "namespace": "ns"}, "spec": {"rules": rules, **spec}})


def llama(own: SimServer | None, *, usd: float | None = 0.5) -> Backend:
    endpoints = (Endpoint(own.url.removeprefix("http://"), "pod-0", "r1"),) if own is not None else ()
    return Backend(namespace="ns", name="llama", served_name="llama", phase="Ready", endpoints=endpoints,
                   usd_per_million_tokens=usd)


@contextlib.asynccontextmanager
async def gateway(routes: list[ModelRoute], backends: list[Backend], *, keys: bool = True,
                  teams: Teams | None = None) -> AsyncIterator[str]:
    table = StaticRoutes()
    table.set_backends(backends)
    mesh = StaticMesh(routes, keys={("ns", "provider", "token"): KEY} if keys else {})
    gw = Gateway(table, Settings(pod_metrics_seconds=0), mesh=MeshServer(mesh), teams=teams)
    runner, port = await start(gw, host="127.0.0.1", port=0, shutdown_timeout=1.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def chat(http: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None,
               stream: bool = False, model: str = "assistant") -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8,
            "stream": stream}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers or {}) as resp:
        text = await resp.text()
        return resp.status, (text if stream else json.loads(text))


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_by_header_to_the_own_model_and_by_default_to_the_api(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    r = route([{"match": {"header": {"name": "x-modelplane-task", "value": "classification"}},
                "backends": [{"modelDeployment": "llama"}]},
               {"backends": [{"external": external(api)}]}], name="by-task")
    ext_before = sample("modelplane_gateway_spend_usd_total", team="", model="by-task",
                        backend="external/api", kind="external")
    async with gateway([r], [llama(own)]) as url, aiohttp.ClientSession() as http:
        status, body = await chat(http, url, headers={"x-modelplane-task": "classification"}, model="by-task")
        assert (status, body["model"]) == (200, "llama")
        status, body = await chat(http, url, model="by-task")
        assert (status, body["model"]) == (200, "gpt-big")
        async with http.get(f"{url}/v1/models") as resp:
            listed = {m["id"]: m for m in (await resp.json())["data"]}
    assert api.provider is not None and api.provider.counts["answered"] == 1
    assert listed["by-task"]["model_route"] == "by-task" and "llama" in listed
    usage = body["usage"]
    spent = sample("modelplane_gateway_spend_usd_total", team="", model="by-task", backend="external/api",
                   kind="external") - ext_before
    assert spent == pytest.approx((usage["prompt_tokens"] * 3 + usage["completion_tokens"] * 15) / 1e6)


@pytest.mark.parametrize(("mode", "reason"), [
    pytest.param({"mode": "fail"}, "status_500", id="5xx"),
    pytest.param({"mode": "throttle"}, "status_429", id="429"),
    pytest.param({"mode": "slow", "delaySeconds": 5}, "timeout", id="timeout"),
])
async def test_the_api_failing_falls_back_to_the_own_model_and_every_request_is_answered(
        servers: tuple[SimServer, SimServer], mode: dict[str, Any], reason: str) -> None:
    own, api = servers
    assert api.provider is not None
    api.provider.set(mode)
    name = f"fb-{reason.replace('_', '-')}"
    r = route([{"backends": [{"external": external(api)}, {"modelDeployment": "llama"}]}], name=name,
              fallback={"timeoutSeconds": 0.5})
    before = sample("modelplane_gateway_route_fallbacks_total", model=name, backend="external/api",
                    reason=reason)
    async with gateway([r], [llama(own)]) as url, aiohttp.ClientSession() as http:
        started = time.monotonic()
        answers = [await chat(http, url, model=name) for _ in range(3)]
        took = time.monotonic() - started
    assert [(s, b["model"]) for s, b in answers] == [(200, "llama")] * 3
    assert sample("modelplane_gateway_route_fallbacks_total", model=name, backend="external/api",
                  reason=reason) == before + 3
    if reason == "timeout":
        assert took < 5  # none waited for the slow provider's answer


async def test_the_own_model_failing_falls_back_to_the_api_and_a_stream_passes_through(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    dead = Backend(namespace="ns", name="llama", served_name="llama", phase="Ready",
                   endpoints=(Endpoint("127.0.0.1:9", "pod-0", "r1"),))  # nothing listens on port 9
    r = route([{"backends": [{"modelDeployment": "llama"}, {"external": external(api)}]}], name="own-first")
    async with gateway([r], [dead]) as url, aiohttp.ClientSession() as http:
        status, text = await chat(http, url, model="own-first", stream=True)
    assert status == 200
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert events[0]["model"] == "gpt-big" and text.rstrip().endswith("data: [DONE]")
    assert events[-1]["usage"]["completion_tokens"] > 0  # asked for by the gateway: spend is exact


async def test_a_cold_model_sends_the_request_to_the_api_until_it_is_ready(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    r = route([{"backends": [{"modelDeployment": "llama"}, {"external": external(api)}]}], name="overflow")
    before = sample("modelplane_gateway_route_fallbacks_total", model="overflow", backend="llama",
                    reason="cold")
    async with gateway([r], [llama(None)]) as url, aiohttp.ClientSession() as http:
        status, body = await chat(http, url, model="overflow")
    assert (status, body["model"]) == (200, "gpt-big")
    assert sample("modelplane_gateway_route_fallbacks_total", model="overflow", backend="llama",
                  reason="cold") == before + 1


async def test_a_cold_model_passed_over_counts_as_holding_the_request_so_it_is_woken(
        servers: tuple[SimServer, SimServer]) -> None:
    _, api = servers
    assert api.provider is not None
    api.provider.set({"mode": "slow", "delaySeconds": 0.5})
    r = route([{"backends": [{"modelDeployment": "llama"}, {"external": external(api)}]}], name="wake")
    table = StaticRoutes()
    table.set_backends([llama(None)])
    gw = Gateway(table, Settings(pod_metrics_seconds=0), mesh=MeshServer(StaticMesh(
        [r], keys={("ns", "provider", "token"): KEY})))
    runner, port = await start(gw, host="127.0.0.1", port=0, shutdown_timeout=1.0)
    try:
        async with aiohttp.ClientSession() as http:
            asked = asyncio.create_task(chat(http, f"http://127.0.0.1:{port}", model="wake"))
            await wait_for(lambda: gw.holds.held.get(("ns", "llama")) == 1, timeout=5,
                           what="llama counted as holding the request")
            assert sample("modelplane_gateway_held_requests", namespace="ns", model_deployment="llama") == 1
            status, body = await asked
    finally:
        await runner.cleanup()
    assert (status, body["model"]) == (200, "gpt-big")
    assert not gw.holds.held  # released once answered


async def test_a_cold_model_tried_after_the_api_failed_holds_the_request_once(
        servers: tuple[SimServer, SimServer]) -> None:
    _, api = servers
    assert api.provider is not None
    api.provider.set({"mode": "fail"})
    r = route([{"backends": [{"modelDeployment": "llama"}, {"external": external(api)}]}], name="wake-fail")
    table = StaticRoutes()
    table.set_backends([llama(None)])
    gw = Gateway(table, Settings(pod_metrics_seconds=0, holds=HoldLimits(timeout_seconds=1.0)),
                 mesh=MeshServer(StaticMesh([r], keys={("ns", "provider", "token"): KEY})))
    runner, port = await start(gw, host="127.0.0.1", port=0, shutdown_timeout=1.0)
    seen: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            asked = asyncio.create_task(chat(http, f"http://127.0.0.1:{port}", model="wake-fail"))
            while not asked.done():
                seen.append(gw.holds.held.get(("ns", "llama"), 0))
                await asyncio.wait({asked}, timeout=0.01)
            status, body = await asked
    finally:
        await runner.cleanup()
    assert (status, body["error"]["code"]) == (503, "no_ready_replica")  # held, then its deadline
    assert max(seen) == 1 and not gw.holds.held


async def test_a_missing_api_key_is_a_failure_before_the_answer(servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    r = route([{"backends": [{"external": external(api)}, {"modelDeployment": "llama"}]}], name="nokey")
    async with gateway([r], [llama(own)], keys=False) as url, aiohttp.ClientSession() as http:
        status, body = await chat(http, url, model="nokey")
    assert (status, body["model"]) == (200, "llama")
    assert api.provider is not None and api.provider.counts["unauthorized"] == 0  # never sent without it


async def test_past_the_route_budget_external_backends_are_skipped(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    only_api = route([{"backends": [{"external": external(api)}]}], name="budgeted",
                     budget={"externalUSDPerMonth": 0.000001})
    async with gateway([only_api], [llama(own)]) as url, aiohttp.ClientSession() as http:
        first = await chat(http, url, model="budgeted")
        second = await chat(http, url, model="budgeted")
    assert first[0] == 200
    assert second[0] == 429 and second[1]["error"]["code"] == "budget_exhausted"
    assert "spec.budget.externalUSDPerMonth" in second[1]["error"]["message"]


async def test_no_matching_rule_is_a_404_naming_the_route(servers: tuple[SimServer, SimServer]) -> None:
    own, _ = servers
    r = route([{"match": {"tools": True}, "backends": [{"modelDeployment": "llama"}]}], name="tools-only")
    async with gateway([r], [llama(own)]) as url, aiohttp.ClientSession() as http:
        status, body = await chat(http, url, model="tools-only")
    assert status == 404 and "no rule of ModelRoute ns/tools-only matches" in body["error"]["message"]


async def test_a_team_over_its_budget_is_refused_while_another_is_served(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    r = route([{"backends": [{"external": external(api)}]}], name="teams")
    teams = Teams({hash_key("key-a"): Team("alpha", monthly_budget_usd=0.000001),
                   hash_key("key-b"): Team("beta", tokens_per_minute=1_000_000)})
    async with gateway([r], [llama(own)], teams=teams) as url, aiohttp.ClientSession() as http:
        assert (await chat(http, url, model="teams", headers={"Authorization": "Bearer key-a"}))[0] == 200
        status, body = await chat(http, url, model="teams", headers={"Authorization": "Bearer key-a"})
        assert status == 429 and body["error"]["code"] == "budget_exhausted"
        assert "team alpha" in body["error"]["message"] and "monthly budget" in body["error"]["message"]
        assert (await chat(http, url, model="teams", headers={"Authorization": "Bearer key-b"}))[0] == 200
        status, body = await chat(http, url, model="teams", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert (await chat(http, url, model="teams"))[0] == 401
    assert sample("modelplane_gateway_spend_tokens_total", team="beta", model="teams",
                  backend="external/api", kind="completion") > 0


async def test_a_team_past_its_tokens_per_minute_gets_a_429_naming_the_limit(
        servers: tuple[SimServer, SimServer]) -> None:
    own, _ = servers
    teams = Teams({hash_key("key-c"): Team("gamma", tokens_per_minute=5)})
    async with gateway([], [llama(own)], teams=teams) as url, aiohttp.ClientSession() as http:
        auth = {"Authorization": "Bearer key-c"}
        assert (await chat(http, url, model="llama", headers=auth))[0] == 200
        status, body = await chat(http, url, model="llama", headers=auth)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert "5 tokens per minute" in body["error"]["message"]


async def test_cheapest_takes_the_cheap_api_until_it_misses_the_objective_then_the_own_model(
        servers: tuple[SimServer, SimServer]) -> None:
    own, api = servers
    assert api.provider is not None
    api.provider.set({"mode": "slow", "delaySeconds": 0.4})
    cheap = external(api, inputUSDPerMillionTokens=0.01, outputUSDPerMillionTokens=0.02)
    r = route([{"policy": "cheapest", "backends": [{"modelDeployment": "llama"}, {"external": cheap}]}],
              name="cheapest", objective={"ttft": "200ms"}, fallback={"timeoutSeconds": 5})
    async with gateway([r], [llama(own, usd=0.5)]) as url, aiohttp.ClientSession() as http:
        answered = []
        for _ in range(4):
            status, text = await chat(http, url, model="cheapest", stream=True)
            events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
            answered.append((status, events[0]["model"]))
    # The API is cheaper ($0.01/$0.02 vs $0.5 per generated Mtok) and unmeasured: it is taken until the
    # gateway has 3 first-token times of it, all above the 200 ms objective; then the own model is.
    assert answered == [(200, "gpt-big")] * 3 + [(200, "llama")]

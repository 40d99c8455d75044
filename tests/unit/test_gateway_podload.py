"""Picking counts each replica's whole load: its own /metrics beside the gateway's requests."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.podload import KV_FULL_PENALTY, Report, estimated_loads
from modelplane.gateway.server import Gateway, Settings
from tests.unit.test_gateway_server import CHAT, address, backend, serving, sim_server
from tests.waiting import wait_for

NOW = 100.0


def report(running: float = 0, waiting: float = 0, kv: float = 0.1, here: int = 0,
           at: float = NOW - 0.5) -> Report:
    return Report(running=running, waiting=waiting, kv_cache_usage=kv, outstanding_here=here, at=at)


@pytest.mark.parametrize(("outstanding", "reports", "expected"), [
    pytest.param({"a": 2}, {}, {"a": 2}, id="no-reports-own-count"),
    # b serves 6 requests of other clients: it counts them although this gateway sent none.
    pytest.param({"a": 2}, {"b": report(running=6)}, {"a": 2, "b": 6}, id="others-load"),
    # a's report includes this gateway's 2 requests then: they are not counted twice.
    pytest.param({"a": 2}, {"a": report(running=3, waiting=1, here=2)}, {"a": 4}, id="own-not-twice"),
    # Since the read, this gateway's requests on a finished (0 now): only the others' remain.
    pytest.param({}, {"a": report(running=5, here=5)}, {}, id="all-ours-finished"),
    pytest.param({"a": 1}, {"a": report(running=1, kv=0.97, here=1)}, {"a": 1 + KV_FULL_PENALTY},
                 id="kv-full"),
    # A stale report adds nothing: the gateway's own count alone.
    pytest.param({"a": 1}, {"a": report(running=9, at=NOW - 10)}, {"a": 1}, id="stale"),
])
def test_estimated_loads(outstanding: dict[str, int], reports: dict[str, Report],
                         expected: dict[str, int]) -> None:
    assert estimated_loads(outstanding, reports, now=NOW, max_age=3.0) == expected


async def served(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:request_success_total")


@pytest.mark.parametrize("read_pods", [True, False])
async def test_a_replica_busy_with_other_clients_gets_the_gateways_requests_last(read_pods: bool) -> None:
    busy, idle = sim_server(), sim_server()
    for s in (busy, idle):
        await s.start()
    routes = StaticRoutes()
    routes.set_backends([backend(address(busy.url), address(idle.url))])
    gateway = Gateway(routes, Settings(pod_metrics_seconds=0.05 if read_pods else 0))
    direct: list[asyncio.Task[Any]] = []
    try:
        async with serving(gateway) as url, aiohttp.ClientSession() as http:
            async def straight_to_busy() -> None:  # another client, not through this gateway
                body = {**CHAT, "max_tokens": 2000, "ignore_eos": True}
                async with http.post(f"{busy.url}/v1/chat/completions", json=body) as response:
                    await response.read()

            direct = [asyncio.create_task(straight_to_busy()) for _ in range(8)]
            if read_pods:
                await wait_for(lambda: (r := gateway.pod_loads.reports.get(address(busy.url))) is not None
                               and r.running >= 8, timeout=10, what="the busy replica's report")
            before = (await served(busy.url), await served(idle.url))
            for _ in range(20):  # one at a time: the gateway's own count is 0 on both every time
                async with http.post(f"{url}/v1/chat/completions", json={**CHAT, "max_tokens": 2}) as r:
                    assert r.status == 200
            after = (await served(busy.url), await served(idle.url))
        to_busy, to_idle = after[0] - before[0], after[1] - before[1]
        assert to_busy + to_idle == 20
        if read_pods:
            assert to_busy == 0
        else:
            assert to_busy > 0  # by its own count alone the gateway sees two idle replicas
    finally:
        for task in direct:
            task.cancel()
        await asyncio.gather(*direct, return_exceptions=True)
        for s in (busy, idle):
            await s.stop()

"""The gateway in-process, on real sockets, in front of simulated vLLM replicas (no cluster).

The routing table is fed by hand (``StaticRoutes``), as the cluster's watches would feed it. The
replicas are the vLLM simulator, or for what it does not do (embeddings, recording the exact bytes
it got, dying mid-stream) a small aiohttp app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from modelplane.gateway import metrics
from modelplane.gateway.activator import HoldLimits
from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.server import Gateway, Settings, start
from modelplane.gateway.table import Backend, CanarySplit, Endpoint, RouteTable
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.quality import SimBehavior
from modelplane_dev.sim.server import SimServer
from tests.waiting import wait_for

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Say something."}]}


def sim_server(**behavior: Any) -> SimServer:
    base = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "chat",
                            "--max-model-len", "4096"])
    return SimServer(replace(base, host="127.0.0.1", port=0), behavior=SimBehavior(**behavior))


def address(url: str) -> str:
    return url.removeprefix("http://")


def backend(*addresses: str, name: str = "chat", served: str = "chat", revision: str = "aaaa",
            split: CanarySplit | None = None, phase: str = "Ready") -> Backend:
    return Backend(namespace="ns", name=name, served_name=served, phase=phase, split=split,
                   endpoints=tuple(Endpoint(a, f"pod-{i}", revision) for i, a in enumerate(addresses)))


def closed_port() -> str:
    """An address nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextlib.asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[str]:
    runner, port = await start(gateway, host="127.0.0.1", port=0, shutdown_timeout=1.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [sim_server() for _ in range(3)]
    for s in servers:
        await s.start()
    yield servers
    for s in servers:
        await s.stop()


class Upstream:
    """A replica that records what it got; ``mode`` says how it answers."""

    def __init__(self, name: str, mode: str = "json") -> None:
        self.name, self.mode = name, mode
        self.got: list[tuple[str, bytes, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.got.append((request.path, await request.read(), dict(request.headers)))
        if self.mode == "cut":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n')
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()  # the replica dies mid-stream
            return response
        return web.json_response({"served_by": self.name, "object": "list",
                                  "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]})


@contextlib.asynccontextmanager
async def upstreams(*modes: str) -> AsyncIterator[list[Upstream]]:
    servers = [Upstream(f"u{i}", mode) for i, mode in enumerate(modes)]
    for s in servers:
        await s.start()
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


REV = {"namespace": "ns", "model_deployment": "chat", "revision": "aaaa"}


# --- the happy paths ---------------------------------------------------------------------------


async def test_chat_goes_through_to_a_replica(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(*(address(s.url) for s in sims))])
    before = sample("modelplane_gateway_requests_total", **REV, code="200")
    async with serving(Gateway(routes)) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        async with client:
            reply = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "What is 17 * 23?"}])
            models = [m async for m in client.models.list()]
    assert reply.model == "chat" and reply.choices[0].message.content
    assert sample("modelplane_gateway_requests_total", **REV, code="200") == before + 1
    assert [(m.id, m.model_extra) for m in models] == [("chat", {
        "phase": "Ready", "namespace": "ns", "model_deployment": "chat", "ready_replicas": 3})]


async def test_a_stream_is_relayed_chunk_by_chunk(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(address(sims[0].url))])
    ttft_before = sample("modelplane_gateway_time_to_first_token_seconds_count", **REV)
    async with serving(Gateway(routes)) as url, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{url}/v1/chat/completions",
                             json={**CHAT, "stream": True, "max_tokens": 60}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            arrivals: list[tuple[float, bytes]] = []
            async for chunk in response.content.iter_any():
                arrivals.append((time.monotonic() - started, chunk))
    text = b"".join(c for _, c in arrivals).decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert len(events) == 62  # the role, 60 tokens, [DONE]
    # Not buffered: the tokens arrive over the generation's time, in many reads.
    assert len(arrivals) >= 20
    first_token = next(t for t, c in arrivals if b'"content":"' in c and b'"content":""' not in c)
    assert first_token < arrivals[-1][0] / 2
    assert sample("modelplane_gateway_time_to_first_token_seconds_count", **REV) == ttft_before + 1


async def test_the_body_goes_out_byte_for_byte_and_embeddings_are_routed() -> None:
    body = b'{ "input" : "hi",\n  "model":"emb" ,"z": [1, 2.50], "a": "\\u00e9"}'
    async with upstreams("json") as (replica,):
        routes = StaticRoutes()
        routes.set_backends([backend(address(replica.url), name="emb", served="emb")])
        async with serving(Gateway(routes)) as url, aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/embeddings", data=body,
                                 headers={"Content-Type": "application/json", "X-Custom": "1",
                                          "Authorization": "Bearer k"}) as response:
                assert response.status == 200
                assert (await response.json())["served_by"] == "u0"
    path, got, headers = replica.got[0]
    assert (path, got) == ("/v1/embeddings", body)
    assert headers["X-Custom"] == "1" and headers["Authorization"] == "Bearer k"
    assert headers["Content-Type"] == "application/json"


async def test_least_outstanding_spreads_concurrent_requests(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(*(address(s.url) for s in sims))])
    gateway = Gateway(routes, rng=random.Random(1))
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.post(f"{url}/v1/completions",
                                 json={"model": "chat", "prompt": "Once", "max_tokens": 30}) as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(one() for _ in range(9))) == [200] * 9
    served = [s.http_requests[("POST", "2xx", "/v1/completions")] for s in sims]
    assert served == [3, 3, 3]


async def test_canary_weight_through_the_gateway() -> None:
    async with upstreams("json", "json") as (stable, canary):
        routes = StaticRoutes()
        routes.set_backends([Backend("ns", "chat", "chat", "Progressing", split=CanarySplit("bbbb", 25),
                                     endpoints=(Endpoint(address(stable.url), "s", "aaaa"),
                                                Endpoint(address(canary.url), "c", "bbbb")))])
        async with serving(Gateway(routes, rng=random.Random(7))) as url, aiohttp.ClientSession() as http:
            for _ in range(200):
                async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                    assert response.status == 200
            for _ in range(50):  # one session: always the same side
                async with http.post(f"{url}/v1/chat/completions", json=CHAT,
                                     headers={"x-session-id": "alice"}) as response:
                    assert response.status == 200
    assert len(canary.got) in (50, 100)  # 200 × 25% exactly, plus alice's 50 if she is on it
    assert len(stable.got) + len(canary.got) == 250


async def test_prefix_affinity_keeps_a_shared_prompt_on_one_replica(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(*(address(s.url) for s in sims))])
    gateway = Gateway(routes, Settings(prefix_chars=64))
    system = {"role": "system", "content": "You answer questions about the tax code of a small country. " * 3}
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        async def ask(messages: list[dict[str, str]]) -> None:
            body = {"model": "chat", "messages": messages, "max_tokens": 2}
            async with http.post(f"{url}/v1/chat/completions", json=body) as response:
                assert response.status == 200

        for i in range(6):  # one tenant, one after another: all on one replica
            await ask([system, {"role": "user", "content": f"question {i}"}])
        first = [s.http_requests[("POST", "2xx", "/v1/chat/completions")] for s in sims]
        assert sorted(first) == [0, 0, 6]
        for i in range(30):  # many tenants: spread over the replicas (none gets none: p ≈ 1e-5)
            await ask([{"role": "system", "content": f"tenant {i} " * 20}, {"role": "user", "content": "hi"}])
    after = [s.http_requests[("POST", "2xx", "/v1/chat/completions")] for s in sims]
    spread = [b - a for a, b in zip(first, after, strict=True)]
    assert sum(spread) == 30 and all(n > 0 for n in spread), spread


# --- the client goes away ----------------------------------------------------------------------


async def test_a_client_that_disconnects_cancels_its_upstream_request(sims: list[SimServer]) -> None:
    sim = sims[0]
    routes = StaticRoutes()
    routes.set_backends([backend(address(sim.url))])
    gateway = Gateway(routes)
    before = sample("modelplane_gateway_errors_total", **REV, reason="client_disconnected")
    async with serving(gateway) as url:
        async with aiohttp.ClientSession() as http:
            response = await http.post(f"{url}/v1/chat/completions",
                                       json={**CHAT, "stream": True, "max_tokens": 3000})
            assert response.status == 200
            await response.content.readany()
            assert sim.engine.num_running + sim.engine.num_waiting == 1
            response.close()  # 3000 tokens would take ~20 s; the client leaves after the first
        await wait_for(lambda: sim.engine.num_running + sim.engine.num_waiting == 0, timeout=5,
                       what="the replica to abort the request")
        await wait_for(lambda: not gateway.upstream.outstanding, timeout=5,
                       what="the gateway to forget the request")
        await wait_for(lambda: sample("modelplane_gateway_errors_total", **REV,
                                      reason="client_disconnected") == before + 1,
                       timeout=5, what="the disconnect to be counted")


# --- holding: the activator --------------------------------------------------------------------


async def test_held_requests_are_released_when_a_replica_gets_ready(sims: list[SimServer]) -> None:
    sim = sims[0]
    routes = StaticRoutes()
    routes.set_backends([backend(phase="ScaledToZero")])
    gateway = Gateway(routes, Settings(holds=HoldLimits(timeout_seconds=30)))
    held = {"namespace": "ns", "model_deployment": "chat"}
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        async def one(i: int) -> tuple[int, str]:
            body = {"model": "chat", "prompt": f"request {i}", "max_tokens": 5}
            async with http.post(f"{url}/v1/completions", json=body) as response:
                return response.status, (await response.json())["id"]

        calls = [asyncio.create_task(one(i)) for i in range(20)]
        await wait_for(lambda: gateway.holds.total() == 20, timeout=5, what="20 requests held")
        assert sample("modelplane_gateway_held_requests", **held) == 20
        routes.set_backends([backend()])  # a change with still no replica: they stay held
        await asyncio.sleep(0.1)
        assert gateway.holds.total() == 20 and not any(c.done() for c in calls)
        routes.set_backends([backend(address(sim.url))])
        answers = await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
    assert [status for status, _ in answers] == [200] * 20
    assert len({rid for _, rid in answers}) == 20  # twenty distinct answers, none lost
    assert sim.http_requests[("POST", "2xx", "/v1/completions")] == 20  # none sent twice
    assert sample("modelplane_gateway_held_requests", **held) == 0


async def test_a_held_request_gets_503_with_retry_after_at_its_deadline() -> None:
    routes = StaticRoutes()
    routes.set_backends([backend()])
    gateway = Gateway(routes, Settings(holds=HoldLimits(timeout_seconds=0.3, retry_after_seconds=7)))
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
            body = await response.json()
        assert 0.3 <= time.monotonic() - started < 3
    assert response.status == 503 and response.headers["Retry-After"] == "7"
    assert body["error"]["code"] == "no_ready_replica"
    assert gateway.holds.total() == 0


async def test_past_the_hold_bound_a_request_gets_429(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend()])
    gateway = Gateway(routes, Settings(holds=HoldLimits(max_per_model=2, timeout_seconds=30,
                                                         retry_after_seconds=2)))
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.post(f"{url}/v1/chat/completions", json={**CHAT, "max_tokens": 3}) as response:
                await response.read()
                return response.status

        first = [asyncio.create_task(one()) for _ in range(2)]
        await wait_for(lambda: gateway.holds.total() == 2, timeout=5, what="2 requests held")
        async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
            body = await response.json()
        assert response.status == 429 and response.headers["Retry-After"] == "2"
        assert body["error"]["code"] == "too_many_held_requests"
        routes.set_backends([backend(address(sims[0].url))])
        assert await asyncio.wait_for(asyncio.gather(*first), timeout=10) == [200, 200]


async def test_a_held_client_that_leaves_is_dropped() -> None:
    routes = StaticRoutes()
    routes.set_backends([backend()])
    gateway = Gateway(routes)
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=CHAT))
        await wait_for(lambda: gateway.holds.total() == 1, timeout=5, what="1 request held")
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await wait_for(lambda: gateway.holds.total() == 0, timeout=5, what="the held request dropped")


# --- failures upstream -------------------------------------------------------------------------


async def test_a_failure_before_the_answer_is_retried_once_on_another_replica(sims: list[SimServer]) -> None:
    dead, live = closed_port(), address(sims[0].url)
    routes = StaticRoutes()
    routes.set_backends([backend(dead, live)])
    gateway = Gateway(routes)
    before = sample("modelplane_gateway_upstream_retries_total", namespace="ns", model_deployment="chat")
    async with serving(gateway) as url, aiohttp.ClientSession() as http:
        for _ in range(3):
            gateway.upstream.outstanding[live] = 1  # so that the dead replica looks least loaded
            async with http.post(f"{url}/v1/chat/completions", json={**CHAT, "max_tokens": 3}) as response:
                assert response.status == 200
            assert gateway.upstream.outstanding == {live: 1}
    assert sample("modelplane_gateway_upstream_retries_total", namespace="ns",
                  model_deployment="chat") == before + 3


async def test_two_failed_replicas_give_502() -> None:
    dead = [closed_port(), closed_port()]
    routes = StaticRoutes()
    routes.set_backends([backend(*dead)])
    async with serving(Gateway(routes)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
            body = await response.json()
    assert response.status == 502
    assert body["error"]["code"] == "upstream_unreachable"
    assert all(d in body["error"]["message"] for d in dead)


async def test_a_replica_error_is_relayed_as_it_is() -> None:
    sim = sim_server(error_rate=1.0)
    await sim.start()
    try:
        routes = StaticRoutes()
        routes.set_backends([backend(address(sim.url))])
        before = sample("modelplane_gateway_errors_total", **REV, reason="upstream_status")
        async with serving(Gateway(routes)) as url, aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                body = await response.json()
        assert response.status == 500
        assert body["error"]["message"] == "simulated engine failure"  # the replica's own error
        assert sample("modelplane_gateway_errors_total", **REV, reason="upstream_status") == before + 1
    finally:
        await sim.stop()


async def test_a_replica_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    async with upstreams("cut") as (replica,):
        routes = StaticRoutes()
        routes.set_backends([backend(address(replica.url))])
        async with serving(Gateway(routes)) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
            async with client:
                stream = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
                seen: list[str] = []
                with pytest.raises(openai.APIError, match="mid-stream"):
                    async for chunk in stream:
                        seen.append(chunk.choices[0].delta.content or "")
    assert seen == ["Hel"]


# --- refusals ----------------------------------------------------------------------------------


async def _post(url: str, data: Any, headers: dict[str, str] | None = None,
                method: str = "POST", path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.request(method, f"{url}{path}", data=data,
                                                              headers=headers) as response:
        return response.status, await response.json()


async def _chunked(size: int) -> AsyncIterator[bytes]:
    yield b'{"model": "chat", "x": "'
    for _ in range(size // 1024):
        yield b"a" * 1024
    yield b'"}'


@pytest.mark.parametrize(("send", "status", "code"), [
    pytest.param(lambda url: _post(url, b"{not json"), 400, "invalid_body", id="malformed-json"),
    pytest.param(lambda url: _post(url, b'{"messages": []}'), 400, "invalid_body", id="missing-model"),
    pytest.param(lambda url: _post(url, json.dumps({**CHAT, "model": "gpt-4"})), 404, "model_not_found",
                 id="unknown-model"),
    pytest.param(lambda url: _post(url, b'{"model": "chat", "x": "' + b"a" * 5000 + b'"}'), 413,
                 "request_too_large", id="too-large"),
    pytest.param(lambda url: _post(url, _chunked(5000)), 413, "request_too_large", id="too-large-chunked"),
    pytest.param(lambda url: _post(url, None, method="GET"), 405, "method_not_allowed", id="get-a-post-path"),
    pytest.param(lambda url: _post(url, b"{}", path="/v1/images/generations"), 404, "not_found",
                 id="unknown-path"),
    pytest.param(lambda url: _post(url, None, method="GET", path="/v1/models/gpt-4"), 404, "model_not_found",
                 id="unknown-model-card"),
])
async def test_bad_input_gets_an_openai_error(send: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]],
                                              status: int, code: str) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(closed_port())])  # never reached: each is refused before
    async with serving(Gateway(routes, Settings(max_body_bytes=4096))) as url:
        got_status, body = await send(url)
    assert got_status == status
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_before_the_cluster_is_read_requests_get_503() -> None:
    class Unsynced(StaticRoutes):
        @property
        def synced(self) -> bool:
            return False

    async with serving(Gateway(Unsynced(RouteTable()))) as url:
        status, body = await _post(url, json.dumps(CHAT))
        models_status, _ = await _post(url, None, method="GET", path="/v1/models")
        ready_status, _ = await _post(url, None, method="GET", path="/readyz")
    assert (status, body["error"]["code"]) == (503, "gateway_starting")
    assert models_status == 503 and ready_status == 503


async def test_the_model_card_and_metrics() -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(closed_port(), served="org/model:v1")])
    async with serving(Gateway(routes, Settings(serve_metrics=True))) as url:
        status, card = await _post(url, None, method="GET", path="/v1/models/org/model:v1")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            text = await response.text()
        health_status, health = await _post(url, None, method="GET", path="/healthz")
    assert status == 200 and card["id"] == "org/model:v1" and card["ready_replicas"] == 1
    assert "modelplane_gateway_requests_total" in text
    assert health_status == 200 and health["ok"] and health["models"] == 1


async def test_tokens_are_counted_from_usage_or_from_the_stream(sims: list[SimServer]) -> None:
    routes = StaticRoutes()
    routes.set_backends([backend(address(sims[0].url))])

    def tokens() -> tuple[float, float, float]:
        return (sample("modelplane_gateway_prompt_tokens_total", **REV),
                sample("modelplane_gateway_generation_tokens_total", **REV, source="usage"),
                sample("modelplane_gateway_generation_tokens_total", **REV, source="stream"))

    async with serving(Gateway(routes)) as url, aiohttp.ClientSession() as http:
        # Not streamed: the answer's usage, exactly.
        before = tokens()
        async with http.post(f"{url}/v1/chat/completions", json={**CHAT, "max_tokens": 9}) as response:
            usage = (await response.json())["usage"]
        after = tokens()
        assert usage["completion_tokens"] > 0
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
            usage["prompt_tokens"], usage["completion_tokens"], 0)

        # Streamed with include_usage: its last event's usage.
        before = tokens()
        async with http.post(f"{url}/v1/chat/completions",
                             json={**CHAT, "stream": True, "max_tokens": 20,
                                   "stream_options": {"include_usage": True}}) as response:
            text = await response.text()
        after = tokens()
        last = [e for e in text.split("\n\n") if e.startswith("data: {")][-1]
        usage = json.loads(last.removeprefix("data: "))["usage"]
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
            usage["prompt_tokens"], usage["completion_tokens"], 0)

        # Streamed without usage: the events with output are counted; no prompt tokens.
        before = tokens()
        async with http.post(f"{url}/v1/chat/completions",
                             json={**CHAT, "stream": True, "max_tokens": 60}) as response:
            await response.read()
        after = tokens()
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (0, 0, 60)

"""The simulator's external-provider mode: the key is required, faults come and go on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.provider import ProviderMode
from modelplane_dev.sim.server import SimServer

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
AUTH = {"Authorization": "Bearer k"}


@pytest.fixture
async def provider() -> AsyncIterator[SimServer]:
    base = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "gpt"])
    server = SimServer(replace(base, host="127.0.0.1", port=0), provider=ProviderMode("k"))
    await server.start()
    yield server
    await server.stop()


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_key_is_required(provider: SimServer) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{provider.url}/v1/chat/completions"
        assert (await post(http, url, CHAT, {}))[0] == 401
        assert (await post(http, url, CHAT, {"Authorization": "Bearer nope"}))[0] == 401
        assert (await post(http, url, CHAT, AUTH))[0] == 200


@pytest.mark.parametrize(("mode", "status"), [
    pytest.param({"mode": "fail", "count": 2}, 500, id="fail"),
    pytest.param({"mode": "throttle", "count": 2}, 429, id="throttle"),
])
async def test_a_fault_for_the_next_requests_then_ok(provider: SimServer, mode: dict[str, Any],
                                                     status: int) -> None:
    async with aiohttp.ClientSession() as http:
        assert (await post(http, f"{provider.url}/sim/provider", mode, AUTH))[0] == 200
        url = f"{provider.url}/v1/chat/completions"
        got = [(await post(http, url, CHAT, AUTH))[0] for _ in range(3)]
        async with http.get(f"{provider.url}/sim/provider", headers=AUTH) as resp:
            state = await resp.json()
    assert got == [status, status, 200]
    assert state["mode"] == "ok" and state["counts"]["answered"] == 1


@pytest.mark.parametrize(("body", "words"), [
    pytest.param({"mode": "explode"}, "mode: must be one of", id="unknown-mode"),
    pytest.param({"mode": "slow", "delaySeconds": -1}, "delaySeconds", id="negative-delay"),
    pytest.param({"mode": "fail", "count": 0}, "count", id="zero-count"),
])
async def test_a_bad_mode_is_refused_naming_the_field(provider: SimServer, body: dict[str, Any],
                                                     words: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, answer = await post(http, f"{provider.url}/sim/provider", body, AUTH)
    assert status == 400 and words in answer["error"]["message"]
    assert provider.provider is not None and provider.provider.mode == "ok"

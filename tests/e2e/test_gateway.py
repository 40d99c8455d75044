"""The gateway as the request path on the dev cluster: two ``modelplane gateway`` replicas (the
``gateways`` fixture) in front of simulator pods, the session's operator reading what they hold.

- ``/v1/models`` lists every model with its phase; chat and streaming go through; each bad input
  gets its OpenAI-style error and leaves nothing behind (nothing held, in flight, or sent to a pod);
- scale from zero: 500 requests held across the two replicas, every one answered once a replica is
  Ready, none lost, none answered twice (the simulators count what they served);
- a gateway replica killed mid-stream: its clients get a clean error, and the requests the other
  replica holds are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane import render
from modelplane.controller import gateways as held_metrics
from modelplane.controller import health, kube
from tests.clusterfixtures import GATEWAY_MAX_BODY, GatewayReplica, Gateways, OperatorHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def model(name: str, namespace: str, served: str, **scaling: Any) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": served},
                     "engine": {"maxModelLen": 2048, "maxNumSeqs": 16},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": scaling}}


def served_name(name: str, namespace: str) -> str:
    """Unique in the cluster: the gateways serve every namespace, other tests' models too."""
    return f"{name}-{namespace[-8:]}"


def chat_body(model_name: str, *, stream: bool = False, max_tokens: int = 4, text: str = "hi") -> bytes:
    return json.dumps({"model": model_name, "messages": [{"role": "user", "content": text}],
                       "max_tokens": max_tokens, "stream": stream}).encode()


async def phase_of(client: kube.Kube, ns: str, name: str) -> str:
    md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
    return str(((md or {}).get("status") or {}).get("phase") or "")


async def gateway_gauges(http: aiohttp.ClientSession, replica: GatewayReplica, ns: str) -> dict[str, float]:
    """This namespace's held and in-flight requests at one replica."""
    async with http.get(replica.metrics_url) as resp:
        text = await resp.text()
    out = {"held": float(sum(n for (n_ns, _), n in held_metrics.parse_held(text).items() if n_ns == ns)),
           "in_flight": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "modelplane_gateway_in_flight_requests"
                    and sample.labels.get("namespace") == ns):
                out["in_flight"] += sample.value
    return out


async def served_by_pods(client: kube.Kube, http: aiohttp.ClientSession, ns: str, name: str) -> int:
    """Chat completions the simulator pods of ``name`` answered 2xx (their http_requests_total)."""
    total = 0
    pods = await client.list(kube.PODS, namespace=ns,
                             label_selector=f"{render.LABEL_MODEL_DEPLOYMENT}={name}")
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or not health.is_ready(pod):
            continue
        async with http.get(f"http://{ip}:{render.PORT}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name == "http_requests_total" and sample.labels.get("handler") == CHAT
                        and sample.labels.get("status") == "2xx"):
                    total += int(sample.value)
    return total


async def test_models_chat_streaming_and_bad_input_through_the_gateway(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    gateways.ensure_running()
    chat, idle = served_name("chat", namespace), served_name("idle", namespace)
    await kube_client.create(model("chat", namespace, chat, minReplicas=1, maxReplicas=1))
    await kube_client.create(model("idle", namespace, idle, minReplicas=0, maxReplicas=1,
                                   scaleToZeroAfter="10s"))
    await wait_for(lambda: _is(kube_client, namespace, "chat", "Ready"), timeout=90, what="chat Ready")
    a, b = gateways.replicas
    async with aiohttp.ClientSession() as http:
        # /v1/models on both replicas: both models, each with the phase its status says.
        async def listed() -> bool:
            phases = {"chat": await phase_of(kube_client, namespace, "chat"),
                      "idle": await phase_of(kube_client, namespace, "idle")}
            for replica in (a, b):
                async with http.get(f"{replica.url}/v1/models") as resp:
                    cards = {c["id"]: c for c in (await resp.json())["data"]}
                if any(served_name(n, namespace) not in cards
                       or cards[served_name(n, namespace)]["phase"] != p for n, p in phases.items()):
                    return False
            return True

        await wait_for(listed, timeout=30, what="both models listed with their phases on both gateways")
        async with http.get(f"{a.url}/v1/models") as resp:
            card = next(c for c in (await resp.json())["data"] if c["id"] == chat)
        assert (card["object"], card["namespace"], card["model_deployment"], card["phase"]) == (
            "model", namespace, "chat", "Ready")

        # Chat, then a stream, through either replica.
        async with http.post(f"{a.url}{CHAT}", data=chat_body(chat),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        assert answer["model"] == chat and answer["choices"][0]["message"]["role"] == "assistant"
        events: list[str] = []
        async with http.post(f"{b.url}{CHAT}", data=chat_body(chat, stream=True, max_tokens=12),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(line[6:].decode().strip())
        assert events[-1] == "[DONE]" and len(events) >= 3, events
        assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])

        # Bad input: the gateway's OpenAI-style error, and nothing held, in flight or sent on.
        served_before = await served_by_pods(kube_client, http, namespace, "chat")
        cases = [
            (chat_body(f"nobody-serves-{namespace}"), 404, "model_not_found"),
            (b'{"model": "' + chat.encode() + b'", "messages": [', 400, "invalid_body"),
            (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "invalid_body"),
            (chat_body(chat, text="x" * (GATEWAY_MAX_BODY + 1)), 413, "request_too_large"),
        ]
        for body, status, code in cases:
            async with http.post(f"{a.url}{CHAT}", data=body,
                                 headers={"Content-Type": "application/json"}) as resp:
                error = await resp.json()
                assert resp.status == status, (body[:80], error)
            assert error["error"]["code"] == code and error["error"]["message"], error
            assert set(error["error"]) >= {"message", "type", "code"}
            assert await gateway_gauges(http, a, namespace) == {"held": 0.0, "in_flight": 0.0}
        assert await served_by_pods(kube_client, http, namespace, "chat") == served_before, \
            "a refused request reached a pod"


async def _is(client: kube.Kube, ns: str, name: str, phase: str) -> bool:
    return await phase_of(client, ns, name) == phase


async def test_scale_from_zero_holds_500_across_two_gateways_and_a_killed_gateway_loses_only_its_own(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    gateways.ensure_running()
    chat, lazy, lazy2 = (served_name(n, namespace) for n in ("chat", "lazy", "lazy2"))
    await kube_client.create(model("chat", namespace, chat, minReplicas=1, maxReplicas=1))
    for name in ("lazy", "lazy2"):
        await kube_client.create(model(name, namespace, served_name(name, namespace), minReplicas=0,
                                       maxReplicas=1, scaleToZeroAfter="20s", scaleDownDelay="20s"))
    for name, phase in (("chat", "Ready"), ("lazy", "ScaledToZero"), ("lazy2", "ScaledToZero")):
        await wait_for(functools.partial(_is, kube_client, namespace, name, phase), timeout=90,
                       what=f"{name} {phase}")
    a, b = gateways.replicas
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=180)) as http:
        # --- 500 requests held across the two replicas, then all answered exactly once.
        peak = {"a": 0.0, "b": 0.0, "sum": 0.0}
        sampling = True

        async def sample() -> None:
            while sampling:
                ga, gb = await gateway_gauges(http, a, namespace), await gateway_gauges(http, b, namespace)
                peak["a"], peak["b"] = max(peak["a"], ga["held"]), max(peak["b"], gb["held"])
                peak["sum"] = max(peak["sum"], ga["held"] + gb["held"])
                await asyncio.sleep(0.05)

        async def one(i: int) -> tuple[int, str]:
            replica = (a, b)[i % 2]
            async with http.post(f"{replica.url}{CHAT}", data=chat_body(lazy, text=f"request {i}"),
                                 headers={"Content-Type": "application/json"}) as resp:
                body = await resp.json()
                return resp.status, str(body.get("id") or body)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(500)))
        waited = time.monotonic() - started
        sampling = False
        await sampler
        statuses = [s for s, _ in results]
        ids = [i for _, i in results]
        served = await served_by_pods(kube_client, http, namespace, "lazy")
        print(f"\n500 requests at zero replicas: all answered after {waited:.1f} s; held at most "
              f"{peak['a']:.0f} + {peak['b']:.0f} (together {peak['sum']:.0f}); the pods served {served}")
        assert statuses == [200] * 500, {s: statuses.count(s) for s in set(statuses)}
        assert len(set(ids)) == 500, "an answer was given twice"
        assert served == 500, "the pods served a request twice, or one was lost"
        assert peak["sum"] == 500 and peak["a"] == peak["b"] == 250, peak

        # --- a gateway replica killed mid-stream; the other one's held requests are served.
        streams_open: list[aiohttp.ClientResponse] = []
        outcomes: list[str] = []

        async def stream_until_cut() -> None:
            async with http.post(f"{a.url}{CHAT}", data=chat_body(chat, stream=True, max_tokens=1500),
                                 headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200
                streams_open.append(resp)
                last = b""
                try:
                    async for line in resp.content:
                        if line.strip():
                            last = line.strip()
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                        aiohttp.ClientConnectionError) as exc:
                    outcomes.append(f"error: {type(exc).__name__}")
                    return
                outcomes.append("done" if last == b"data: [DONE]" else "cut")

        async def held_one(i: int) -> int:
            async with http.post(f"{b.url}{CHAT}", data=chat_body(lazy2, text=f"held {i}"),
                                 headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                return resp.status

        streams = [asyncio.create_task(stream_until_cut()) for _ in range(4)]
        held = [asyncio.create_task(held_one(i)) for i in range(20)]
        await wait_for(lambda: len(streams_open) == 4, timeout=30, what="four streams under way")

        async def b_holds_20() -> bool:
            return (await gateway_gauges(http, b, namespace))["held"] == 20

        await wait_for(b_holds_20, timeout=30, what="the other replica holding 20 requests")
        a.kill()
        killed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*streams), timeout=15)
        print(f"streams through the killed replica ended {time.monotonic() - killed_at:.2f} s after the "
              f"kill: {outcomes}")
        assert len(outcomes) == 4 and all(o != "done" for o in outcomes), outcomes
        held_statuses = await asyncio.wait_for(asyncio.gather(*held), timeout=120)
        assert held_statuses == [200] * 20, held_statuses
        assert await served_by_pods(kube_client, http, namespace, "lazy2") == 20
    gateways.ensure_running()
    with contextlib.suppress(Exception):
        await kube_client.delete(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)

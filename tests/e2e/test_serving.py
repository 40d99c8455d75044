"""A ModelDeployment serves: its pods turn Ready, the simulator on each pod's IP answers an
OpenAI chat completion, and the pod's own /metrics counts the request under vLLM's names.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane.controller import kube
from tests.clusterfixtures import OperatorHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def model_deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct",
                               "revision": "rev-a", "servedName": "support-chat"},
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 1}}}


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_chat_completion_to_a_pod_ip_answers_and_is_counted(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await kube_client.create(model_deployment("chat"), namespace=namespace)

    async def ready_pod() -> dict[str, Any] | None:
        md = await kube_client.get(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)
        if (md or {}).get("status", {}).get("phase") != "Ready":
            return None
        pods = await kube_client.list(kube.PODS, namespace=namespace)
        return pods[0] if pods else None

    pod = await wait_for(ready_pod, timeout=120, what="the ModelDeployment to be Ready")
    base = f"http://{pod['status']['podIP']}:8000"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get(f"{base}/health") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/v1/models") as resp:
            models = await resp.json()
        assert [m["id"] for m in models["data"]] == ["support-chat"]
        async with http.get(f"{base}/metrics") as resp:
            before = counter(await resp.text(), "vllm:request_success_total",
                             model_name="support-chat")
        async with http.post(f"{base}/v1/chat/completions", json={
                "model": "support-chat", "max_tokens": 16,
                "messages": [{"role": "user", "content": "What is 17 * 23? Answer with a number only."}],
        }) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] >= 1
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
    assert counter(text, "vllm:request_success_total", model_name="support-chat") == before + 1
    assert counter(text, "vllm:generation_tokens_total", model_name="support-chat") >= \
        answer["usage"]["completion_tokens"]
    # The node is an L4, and the simulator on it says so through its capacity: the pod landed where
    # the plan said, and the engine model was built for that GPU.
    node = await kube_client.get(kube.NODES, pod["spec"]["nodeName"])
    assert node is not None and node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"

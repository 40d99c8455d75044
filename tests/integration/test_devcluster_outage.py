"""The dev cluster's pod agent through faults of the real control plane (issue 14).

kube-apiserver is killed with SIGKILL and started again with the same flags
(``DevCluster.kill_component`` / ``start_component``): a running pod's IP keeps answering /health
all through the outage, the agent process is the same one afterwards (it survived, it was not
restarted), it logged the outage once, and it catches up — a pod created after the restart gets
its simulator, a pod deleted after it loses its own. And when the agent process itself is killed,
its supervisor starts it again and the running pods' IPs answer again.

These tests need the dev cluster itself (they kill its processes), not an external one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelplane import gpus
from modelplane.controller import kube
from modelplane_dev.devcluster import DevCluster
from tests.clusterfixtures import ClusterHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

#: How long the tests keep kube-apiserver down while checking that a pod IP still answers.
OUTAGE_SECONDS = 5.0


def vllm_pod(name: str) -> dict[str, Any]:
    """A bare pod as the operator renders one: ``vllm serve`` on port 8000, one L4 GPU."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "containers": [{
                "name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
                "command": ["vllm", "serve"],
                "args": ["meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", name,
                         "--max-model-len", "8192", "--port", "8000"],
                "ports": [{"name": "http", "containerPort": 8000}],
                "resources": {"limits": {gpus.GPU_RESOURCE: "1"}},
            }],
            "tolerations": [{"key": gpus.GPU_RESOURCE, "operator": "Exists",
                             "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": gpus.PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-L4"]}]}]}}},
        },
    }


def dev_cluster(cluster: ClusterHandle) -> DevCluster:
    assert cluster.dev is not None, (
        "these tests kill and restart the dev cluster's own processes; they cannot run against "
        "MODELPLANE_TEST_KUBECONFIG's cluster")
    return cluster.dev


def agent_pid(dev: DevCluster) -> int | None:
    """The pod agent's pid: the one child of its supervisor (the ``sim-agent`` process)."""
    supervisor = dev.running_pids().get("sim-agent")
    if supervisor is None:
        return None
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


async def health(ip: str) -> int | None:
    """The status of GET /health on a new connection to the pod IP; None when nothing answers."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=3)) as http:
        try:
            async with http.get(f"http://{ip}:8000/health") as resp:
                return resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None


async def create_serving_pod(kube_client: kube.Kube, namespace: str, name: str) -> str:
    """Create the pod, wait until its IP answers /health with 200; its IP."""
    # Generous: after kube-apiserver restarts, kube-controller-manager's watches come back on
    # client-go's backoff, and its ServiceAccount controller with them (about a minute, seen).
    await wait_for(lambda: kube_client.get(kube.SERVICEACCOUNTS, "default", namespace=namespace),
                   timeout=120, what=f"the default ServiceAccount of {namespace}")
    await kube_client.create(vllm_pod(name), namespace=namespace)

    async def serving() -> str | None:
        pod = await kube_client.get(kube.PODS, name, namespace=namespace)
        ip = ((pod or {}).get("status") or {}).get("podIP")
        return ip if ip and await health(ip) == 200 else None

    ip: str = await wait_for(serving, timeout=120, what=f"pod {name}'s IP to answer /health with 200")
    return ip


async def test_pods_answer_through_a_kube_apiserver_restart_and_the_agent_catches_up(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str) -> None:
    dev = dev_cluster(cluster)
    ip_before = await create_serving_pod(kube_client, namespace, "before")
    agent = agent_pid(dev)
    assert agent is not None, "the pod agent is not running"
    log = dev.log_file("sim-agent")
    offset = log.stat().st_size

    def logged_since() -> str:
        with log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    try:
        await asyncio.to_thread(dev.kill_component, "kube-apiserver")
        with pytest.raises((aiohttp.ClientError, OSError)):
            await kube_client.list(kube.PODS, namespace=namespace)
        # The agent's watch broke the moment kube-apiserver died; its simulators must not care.
        answers = []
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            answers.append(await health(ip_before))
            await asyncio.sleep(0.25)
        assert set(answers) == {200}, f"/health of the running pod during the outage: {answers}"
        await wait_for(lambda: "watch of pods failed" in logged_since(), timeout=30,
                       what="the agent to log that kube-apiserver is gone")
    finally:
        if "kube-apiserver" not in dev.running_pids():
            await asyncio.to_thread(dev.start_component, "kube-apiserver")

    # Caught up: a pod created after the restart gets its simulator, a deleted one loses its own.
    ip_after = await create_serving_pod(kube_client, namespace, "after")
    assert ip_after != ip_before
    await kube_client.delete(kube.PODS, "before", namespace=namespace)

    async def stopped() -> bool:
        return await health(ip_before) is None

    await wait_for(stopped, timeout=60, what="the deleted pod's simulator to stop")
    assert await health(ip_after) == 200
    said = logged_since()
    assert agent_pid(dev) == agent, f"the agent was restarted, it did not survive:\n{said}"
    assert said.count("watch of pods failed") == 1, f"one warning per outage, not per retry:\n{said}"
    assert "watch of pods works again" in said
    assert "Traceback" not in said, said


async def test_a_killed_agent_is_started_again_and_serves_the_running_pods(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str) -> None:
    dev = dev_cluster(cluster)
    ip = await create_serving_pod(kube_client, namespace, "survivor")
    old = agent_pid(dev)
    assert old is not None, "the pod agent is not running"
    os.kill(old, signal.SIGKILL)

    def restarted() -> int | None:
        pid = agent_pid(dev)
        return pid if pid not in (None, old) else None

    await wait_for(restarted, timeout=30, what="the supervisor to start the pod agent again")

    async def answers() -> bool:
        return await health(ip) == 200

    await wait_for(answers, timeout=60, what="the pod IP to answer again after the agent's restart")
    assert "exited with signal SIGKILL" in dev.log_file("sim-agent").read_text(errors="replace")

"""Multi-node replicas end to end: the operator, the real LeaderWorkerSet controller (built from its Go
module), kwok's H100 nodes and the simulator on each group's leader.

- ``examples/deepseek-r1-multinode.yaml`` (DeepSeek-R1 on 2x 8 H100) reaches Ready: one
  LeaderWorkerSet whose group is a leader and a worker on two H100 nodes, only the leader behind
  the Service, the simulator answering on it;
- a worker pod killed: the LeaderWorkerSet controller recreates the group, the ModelDeployment is
  Ready again, and ``GroupRecreated`` says what happened;
- a rollout to a new revision is promoted, with at most one group beyond the desired one at any
  time (two groups for one desired), and the old revision's LeaderWorkerSet gone after.

The session's dev cluster (profile ``default``) has two 8x H100 nodes; this module adds two more
kwok H100 nodes (the ``multinode`` profile has four), for the rollout's extra group, and removes
them at the end. The LeaderWorkerSet controller is started into the cluster (``devcluster.lws``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from modelplane import lws, render
from modelplane.controller import kube
from modelplane_dev.devcluster import lws as dev_lws
from modelplane_dev.devcluster.cluster import NodeGroup, build_nodes
from modelplane_dev.sim.quality import generate_suite, suite_jsonl
from tests.clusterfixtures import ClusterHandle, OperatorHandle
from tests.waiting import stopped, wait_for, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deepseek-r1-multinode.yaml"
EXTRA_H100 = NodeGroup(name="mn-h100", count=2, cpu="192", memory="2048Gi", instance_type="p5.48xlarge",
                       gpu="nvidia-h100-80gb", gpus=8)
#: Groups start in seconds on the dev cluster (2 s pod-ready delay); the bound leaves room for a
#: loaded 2-core machine and for an operator started before the CRD (it looks again every 30 s).
READY_TIMEOUT = 150


@pytest.fixture(scope="module")
def multinode(cluster: ClusterHandle) -> Iterator[ClusterHandle]:
    """The LeaderWorkerSet controller running in the session's dev cluster, and two more H100 nodes."""
    assert cluster.dev is not None, "this module starts the LeaderWorkerSet controller in the dev cluster"
    dev_lws.ensure(cluster.dev)
    nodes = build_nodes([EXTRA_H100])
    docs = "---\n".join(yaml.safe_dump(n) for n in nodes)
    cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_=docs)

    def ready() -> bool:
        done = cluster.run_kubectl("wait", "--for=condition=Ready", "--timeout=5s",
                                   *(f"node/{n['metadata']['name']}" for n in nodes), check=False)
        return done.returncode == 0

    wait_until(ready, timeout=60, what="the extra H100 nodes to be Ready")
    yield cluster
    cluster.run_kubectl("delete", "node", "--ignore-not-found", "--wait=false",
                        *(n["metadata"]["name"] for n in nodes), check=False)


def example(revision: str | None = None, **rollout: Any) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d.get("kind") == "ModelDeployment"]
    doc: dict[str, Any] = copy.deepcopy(docs[0])
    if revision is not None:
        doc["spec"]["model"]["revision"] = revision
    if rollout:
        doc["spec"]["rollout"] = rollout
    # One group: the rollout test counts groups against this.
    doc["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 1}
    return doc


async def get_md(client: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
    assert md is not None
    return md


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


async def wait_md(client: kube.Kube, ns: str, name: str, check: Any, *, what: str,
                  timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        md = await get_md(client, ns, name)
        return md if md.get("status") and check(md) else None

    found: dict[str, Any] = await wait_for(probe, timeout=timeout, what=f"{name}: {what}")
    return found


def ready(md: dict[str, Any]) -> bool:
    status = md["status"]
    return bool(status.get("phase") == "Ready" and status.get("readyReplicas") == 1
                and condition(md, "Ready").get("status") == "True")


async def live_pods(client: kube.Kube, ns: str) -> list[dict[str, Any]]:
    pods = await client.list(kube.PODS, namespace=ns)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def test_deepseek_r1_example_serves_as_a_group_of_two_h100_nodes(
        multinode: ClusterHandle, operator: OperatorHandle, kube_client: kube.Kube, namespace: str) -> None:
    md = example()
    name = md["metadata"]["name"]
    await kube_client.create(md, namespace=namespace)
    done = await wait_md(kube_client, namespace, name, ready, what="Ready as one group")
    plan = done["status"]["plan"]
    assert (plan["nodes"], plan["gpusPerNode"], plan["gpusPerReplica"]) == (2, 8, 16)
    assert done["status"]["cost"]["hourlyUSD"] == pytest.approx(16 * 2.69)

    async def group_ready() -> list[dict[str, Any]] | None:
        groups = await kube_client.list(lws.LEADERWORKERSETS, namespace=namespace)
        ok = len(groups) == 1 and (groups[0].get("status") or {}).get("readyReplicas") == 1
        return groups if ok else None

    # The LeaderWorkerSet controller agrees: one group, Ready.
    groups = await wait_for(group_ready, timeout=60, what="the LeaderWorkerSet's readyReplicas 1")
    assert groups[0]["spec"]["leaderWorkerTemplate"]["size"] == 2
    pods = await live_pods(kube_client, namespace)
    leaders = [p for p in pods if not lws.is_worker(p)]
    workers = [p for p in pods if lws.is_worker(p)]
    assert len(leaders) == 1 and len(workers) == 1
    # Each on an H100 node of its own, 8 GPUs each, the group's flags set by the webhook's env.
    assert {p["spec"]["nodeName"] for p in pods} <= {f"kwok-h100-{i}" for i in range(2)} | {
        f"kwok-mn-h100-{i}" for i in range(2)}
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        env = {e["name"] for e in container.get("env") or []}
        assert {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX"} <= env, env
    assert "--headless" in workers[0]["spec"]["containers"][0]["args"]

    # Only the leader is behind the Service (its EndpointSlices cannot hold loopback IPs here, so
    # the Service's selector is matched against the pods, as kube-proxy would).
    service = await kube_client.get(kube.SERVICES, name, namespace=namespace)
    assert service is not None
    selector = service["spec"]["selector"]
    behind = [p["metadata"]["name"] for p in pods
              if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
    assert behind == [leaders[0]["metadata"]["name"]]
    # ... and the simulator answers on it as vLLM would, with the served name.
    async with aiohttp.ClientSession() as session:
        url = f"http://{leaders[0]['status']['podIP']}:{render.PORT}/v1/models"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
            assert [m["id"] for m in (await resp.json())["data"]] == ["deepseek-r1"]


async def test_a_killed_worker_recreates_the_group_and_a_condition_says_so(
        multinode: ClusterHandle, operator: OperatorHandle, kube_client: kube.Kube, namespace: str) -> None:
    md = example()
    name = md["metadata"]["name"]
    await kube_client.create(md, namespace=namespace)
    await wait_md(kube_client, namespace, name, ready, what="Ready as one group")
    before = await live_pods(kube_client, namespace)
    leader = next(p for p in before if not lws.is_worker(p))
    worker = next(p for p in before if lws.is_worker(p))
    assert condition(await get_md(kube_client, namespace, name), "GroupRecreated").get("status") == "False"

    await kube_client.delete(kube.PODS, worker["metadata"]["name"], namespace=namespace)

    async def leader_replaced() -> bool:
        now = await live_pods(kube_client, namespace)
        return any(not lws.is_worker(p) and p["metadata"]["uid"] != leader["metadata"]["uid"] for p in now)

    # RecreateGroupOnPodRestart: the controller deletes the leader, and the whole group comes back.
    await wait_for(leader_replaced, timeout=READY_TIMEOUT, what="a new leader (the group recreated)")
    done = await wait_md(kube_client, namespace, name,
                         lambda m: ready(m) and condition(m, "GroupRecreated").get("status") == "True",
                         what="Ready again, with GroupRecreated")
    told = condition(done, "GroupRecreated")
    assert told["reason"] == "GroupRecreated"
    assert f"Worker pod {worker['metadata']['name']} failed" in told["message"], told["message"]
    assert "1/1 groups ready now" in told["message"]
    after = await live_pods(kube_client, namespace)
    assert len(after) == 2 and {p["metadata"]["uid"] for p in after}.isdisjoint(
        {p["metadata"]["uid"] for p in before})


@pytest.fixture
async def group_counts(kube_client: kube.Kube, namespace: str) -> AsyncIterator[list[int]]:
    """Groups of the namespace's LeaderWorkerSets (their ``spec.replicas``, summed), sampled all along."""
    counts: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            groups = await kube_client.list(lws.LEADERWORKERSETS, namespace=namespace)
            counts.append(sum(int(g["spec"].get("replicas") or 0) for g in groups
                              if not g["metadata"].get("deletionTimestamp")))
            await stopped(stop, 0.2)

    task = asyncio.create_task(sample())
    yield counts
    stop.set()
    await task


async def test_a_rollout_of_a_new_revision_adds_at_most_one_group_at_a_time(
        multinode: ClusterHandle, operator: OperatorHandle, kube_client: kube.Kube, namespace: str,
        group_counts: list[int]) -> None:
    await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "suite"},
                              "data": {"suite.jsonl": suite_jsonl(generate_suite(40, seed=7))}},
                             namespace=namespace)
    await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelplane-sim"},
                              "data": {"behaviors.yaml": yaml.safe_dump({"rev-a": {"accuracy": 0.85},
                                                                         "rev-b": {"accuracy": 0.97}})}},
                             namespace=namespace)
    rollout = {"steps": [{"weight": 50, "pause": "3s"}],
               "evaluation": {"suiteRef": {"configMap": "suite"}, "minScore": 0.7, "maxRegression": 0.1,
                              "concurrency": 8, "timeoutSeconds": 10}}
    md = example("rev-a", **rollout)
    name = md["metadata"]["name"]
    await kube_client.create(md, namespace=namespace)
    await wait_md(kube_client, namespace, name, ready, what="Ready at rev-a")
    old = {g["metadata"]["name"] for g in await kube_client.list(lws.LEADERWORKERSETS, namespace=namespace)}

    await kube_client.patch(kube.MODELDEPLOYMENTS, name, {"spec": {"model": {"revision": "rev-b"}}},
                            namespace=namespace, field_manager="kubectl-patch")

    def promoted(m: dict[str, Any]) -> bool:
        canary = (m.get("status") or {}).get("canary") or {}
        serving = m["status"].get("servingRevision")
        return canary.get("phase") == "Promoted" and ready(m) and serving == "rev-b"

    done = await wait_md(kube_client, namespace, name, promoted, what="rev-b promoted", timeout=300)
    assert done["status"]["rolloutHistory"][-1]["decision"] == "Promoted"

    async def old_group_gone() -> bool:
        groups = await kube_client.list(lws.LEADERWORKERSETS, namespace=namespace)
        names = {g["metadata"]["name"] for g in groups if not g["metadata"].get("deletionTimestamp")}
        return names.isdisjoint(old) and len(names) == 1

    await wait_for(old_group_gone, timeout=120, what="the old revision's LeaderWorkerSet to go")
    # One group desired: at no time more than one extra group (two LeaderWorkerSets of one group).
    assert group_counts and max(group_counts) <= 2, group_counts
    assert 2 in group_counts  # the canary's group did run beside stable's

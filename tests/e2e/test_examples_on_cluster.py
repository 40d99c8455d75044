"""Every ModelDeployment in examples/ applied to the dev cluster: each reaches Ready on the GPU shape its
``# GPU shape:`` comment names, or ends in the condition its ``# Condition:`` comment documents.

The examples together need more GPUs than the dev cluster has (22 H100 against 16), and other test
sessions may hold GPUs at the same time, so they go in small batches, each in a namespace of its own,
and a batch is deleted — its pods gone and their GPUs free — before the next starts. What an example
references is created first, as a user would: the Secret it names (``credentialsSecret``) and the
suite ConfigMap of the canary example (examples/canary-rollout-suite.yaml).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane import gpus
from modelplane.controller import kube
from tests.clusterfixtures import OperatorHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHAPE_COMMENT = re.compile(r"^# GPU shape: (\d+)x ([a-z0-9-]+) per replica", re.MULTILINE)
CONDITION_COMMENT = re.compile(r"^# Condition: ([A-Za-z]+)\.", re.MULTILINE)

#: Example files by batch. Each batch stays within one H100 node's 8 GPUs, half of the H200 or L40S
#: fleet at most (the whole-node models excepted: they need a node to themselves), so a batch still
#: schedules while another session holds a few GPUs.
BATCHES: dict[str, tuple[str, ...]] = {
    "whole-nodes": ("llama-4-maverick-fp8.yaml", "deepseek-r1.yaml", "deepseek-r1-on-h100.yaml",
                    "mistral-7b-fine-tune.yaml"),
    "h100-tp4-and-l4": ("llama-3.3-70b.yaml", "llama-4-scout.yaml", "mistral-7b.yaml",
                        "deepseek-r1-distill-qwen-7b.yaml"),
    "h100-small-and-l4": ("mixtral-8x7b.yaml", "deepseek-r1-distill-qwen-32b.yaml",
                          "mistral-small-24b.yaml", "qwen3-30b-a3b.yaml", "scale-to-zero.yaml",
                          # An L40S beside the H100s: the l40s batch has its share already.
                          "llama-3.1-8b-inference-pool.yaml"),
    "l40s": ("llama-3.1-8b.yaml", "budget-capped.yaml", "canary-rollout.yaml", "llama-3.1-8b-awq.yaml"),
}
#: GPUs of each type one batch may ask for (see BATCHES).
BATCH_GPU_LIMIT = {"nvidia-h100-80gb": 8, "nvidia-h200-141gb": 8, "nvidia-l40s": 4, "nvidia-l4": 2}

#: Whole batches of pods start in a few seconds on the dev cluster; the bound leaves room for a
#: loaded 2-core machine.
READY_TIMEOUT_SECONDS = 90
GONE_TIMEOUT_SECONDS = 60


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def model_deployment(name: str) -> dict[str, Any]:
    docs = [d for d in documents(EXAMPLES / name) if d.get("kind") == "ModelDeployment"]
    assert len(docs) == 1, name
    return docs[0]


#: Examples whose replicas are groups of nodes: they need the LeaderWorkerSet controller and the
#: multinode profile's H100s, and tests/e2e/test_multinode.py applies them.
MULTI_NODE = frozenset({"deepseek-r1-multinode.yaml", "llama-3.1-405b-multinode.yaml"})


def md_example_files() -> set[str]:
    return {p.name for p in EXAMPLES.glob("*.yaml")
            if any(d.get("kind") == "ModelDeployment" for d in documents(p))} - MULTI_NODE


def shape_of(name: str) -> tuple[int, str] | None:
    """(GPUs per replica, GPU type) from the example's comment; None for a condition example."""
    found = SHAPE_COMMENT.search((EXAMPLES / name).read_text())
    return (int(found.group(1)), found.group(2)) if found else None


def condition_of(name: str) -> str:
    found = CONDITION_COMMENT.search((EXAMPLES / name).read_text())
    assert found is not None, f"{name} has neither a GPU shape nor a Condition comment"
    return found.group(1)


def starting_replicas(doc: dict[str, Any]) -> int:
    """Replicas an example runs with before any traffic: its floor.

    A scale-to-zero example (minReplicas 0) starts at zero: with no demand there is nothing to
    start (modelplane.autoscaler.policy), and the test wakes it by raising the floor to one, as its
    comment tells users to when they run without the gateway.
    """
    return int(doc["spec"].get("scaling", {}).get("minReplicas", 1))


def gpus_asked(batch: tuple[str, ...]) -> Counter[str]:
    asked: Counter[str] = Counter()
    for name in batch:
        shape = shape_of(name)
        if shape is not None:
            asked[shape[1]] += shape[0] * max(1, starting_replicas(model_deployment(name)))
    return asked


def referenced_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the example needs in its namespace: its credentials Secret and its suite ConfigMap."""
    needed: list[dict[str, Any]] = []
    secret = doc["spec"]["model"].get("credentialsSecret")
    if secret:
        # A placeholder token: the dev cluster's simulator downloads nothing.
        needed.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                       "type": "Opaque", "stringData": {"HF_TOKEN": "hf_placeholder"}})
    suite = ((doc["spec"].get("rollout") or {}).get("evaluation") or {}).get("suiteRef") or {}
    if suite.get("configMap"):
        found = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in documents(p)
                 if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == suite["configMap"]]
        assert len(found) == 1, f"the suite ConfigMap {suite['configMap']} is not among the examples"
        assert suite.get("key", "suite.jsonl") in found[0]["data"]
        needed.append(found[0])
    return needed


# --- the batches themselves, without a cluster --------------------------------------------------


def test_the_batches_apply_every_example_once() -> None:
    listed = [name for batch in BATCHES.values() for name in batch]
    assert sorted(listed) == sorted(md_example_files())


@pytest.mark.parametrize("batch", list(BATCHES), ids=list(BATCHES))
def test_a_batch_asks_for_a_modest_share_of_the_dev_clusters_gpus(batch: str) -> None:
    asked = gpus_asked(BATCHES[batch])
    assert asked, batch
    for gpu_type, count in asked.items():
        assert count <= BATCH_GPU_LIMIT[gpu_type], (gpu_type, count)


# --- on the dev cluster -------------------------------------------------------------------------


def conditions_by_type(md: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (md.get("status") or {}).get("conditions") or []}


def settled(md: dict[str, Any], example: str, pods: list[dict[str, Any]], replicas: int) -> bool:
    """Whether ``md`` and its ``pods`` are where its example's comment says they end up, with
    ``replicas`` running (0 for a scale-to-zero example before any demand)."""
    status = md.get("status") or {}
    if status.get("observedGeneration") != md["metadata"]["generation"]:
        return False
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    ready = conditions_by_type(md).get("Ready", {})
    if shape_of(example) is None:
        reason = condition_of(example)
        return bool(status.get("phase") == "Failed" and not running and ready.get("reason") == reason
                    and conditions_by_type(md).get("Degraded", {}).get("reason") == reason)
    if replicas == 0:
        return bool(status.get("phase") == "ScaledToZero" and not running
                    and ready.get("reason") == "ScaledToZero")
    # The pods too: a Ready status with a stray extra pod (a second writer, a template that
    # changed after the first apply) is not the steady state the example promises.
    return bool(status.get("phase") == "Ready" and status.get("readyReplicas") == replicas
                and status.get("desiredReplicas") == replicas and len(running) == replicas)


async def pods_by_deployment(client: kube.Kube, namespace: str) -> dict[str, list[dict[str, Any]]]:
    pods: dict[str, list[dict[str, Any]]] = {}
    for pod in await client.list(kube.PODS, namespace=namespace):
        owner = (pod["metadata"].get("labels") or {}).get("modelplane.dev/model-deployment", "")
        pods.setdefault(owner, []).append(pod)
    return pods


def gpu_request(pod: dict[str, Any]) -> int:
    return sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
               for c in pod["spec"]["containers"])


async def wait_settled(client: kube.Kube, namespace: str, replicas: dict[str, tuple[str, int]], *,
                       what: str) -> None:
    """Wait until every ModelDeployment (name → (example, replicas)) is where its example ends up."""
    waiting: list[str] = []

    async def all_settled() -> bool:
        waiting.clear()
        pods = await pods_by_deployment(client, namespace)
        for md_name, (example, count) in replicas.items():
            md = await client.get(kube.MODELDEPLOYMENTS, md_name, namespace=namespace)
            if md is None or not settled(md, example, pods.get(md_name, []), count):
                status = (md or {}).get("status") or {}
                waiting.append(f"{md_name}: {status.get('phase')} "
                               f"{status.get('readyReplicas')}/{status.get('desiredReplicas')} "
                               f"({len(pods.get(md_name, []))} pods)")
        return not waiting

    try:
        await wait_for(all_settled, timeout=READY_TIMEOUT_SECONDS, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not settled: {waiting}") from None


async def check_placement(client: kube.Kube, namespace: str, md_name: str, example: str,
                          replicas: int) -> None:
    """The plan in status is the example's GPU shape, and each pod asks for it on such a node."""
    shape = shape_of(example)
    assert shape is not None
    count, gpu_type = shape
    md = await client.get(kube.MODELDEPLOYMENTS, md_name, namespace=namespace)
    assert md is not None
    assert md["status"]["plan"]["shape"] == f"{count}x {gpu_type}", example
    assert md["status"]["plan"]["gpuType"] == gpu_type, example
    nodes = {n["metadata"]["name"]: n for n in await client.list(kube.NODES)}
    pods = (await pods_by_deployment(client, namespace)).get(md_name, [])
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == replicas, example
    for pod in running:
        assert gpu_request(pod) == count, example
        labels = nodes[pod["spec"]["nodeName"]]["metadata"]["labels"]
        assert labels.get(gpus.PRODUCT_LABEL) == gpus.GPU_TYPES[gpu_type].product, example


async def check_condition(client: kube.Kube, namespace: str, md_name: str, example: str) -> None:
    """A plan no node can hold: no pods, and a Warning Event with the documented reason."""
    pods = (await pods_by_deployment(client, namespace)).get(md_name, [])
    assert not pods, f"{example}: pods for a plan that does not fit"
    reasons: set[str] = set()

    async def warned() -> bool:
        # Events are posted by the operator's own senders, a moment after the status says it.
        events = await client.list(kube.EVENTS, namespace=namespace,
                                   field_selector=f"involvedObject.name={md_name}")
        reasons.update(e["reason"] for e in events if e["type"] == "Warning")
        return condition_of(example) in reasons

    try:
        await wait_for(warned, timeout=40, what=f"{example}: its Warning Event")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Warning Events {reasons}") from None


@pytest.mark.parametrize("batch", list(BATCHES), ids=list(BATCHES))
async def test_every_example_reaches_the_state_its_comment_documents(
        batch: str, kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    examples = {model_deployment(name)["metadata"]["name"]: name for name in BATCHES[batch]}
    created: set[tuple[str, str]] = set()
    try:
        for name in BATCHES[batch]:
            doc = model_deployment(name)
            for needed in referenced_objects(doc):
                key = (needed["kind"], needed["metadata"]["name"])
                if key not in created:
                    obj = copy.deepcopy(needed)
                    obj["metadata"]["namespace"] = namespace
                    await kube_client.create(obj)
                    created.add(key)
            md = copy.deepcopy(doc)
            md["metadata"]["namespace"] = namespace  # examples leave the namespace to the user
            await kube_client.create(md)

        starting = {md_name: (example, starting_replicas(model_deployment(example)))
                    for md_name, example in examples.items()}
        await wait_settled(kube_client, namespace, starting,
                           what=f"every example of batch {batch} to settle")
        for md_name, (example, replicas) in starting.items():
            if shape_of(example) is None:
                await check_condition(kube_client, namespace, md_name, example)
            elif replicas:
                await check_placement(kube_client, namespace, md_name, example, replicas)

        # Scale-to-zero examples wake up on the GPU shape of their comment once the floor is one.
        # scaleToZeroAfter goes too: the CRD accepts it only with minReplicas 0.
        asleep = {md_name: (example, 1) for md_name, (example, replicas) in starting.items()
                  if replicas == 0 and shape_of(example) is not None}
        for md_name in asleep:
            wake = {"spec": {"scaling": {"minReplicas": 1, "scaleToZeroAfter": None}}}
            await kube_client.patch(kube.MODELDEPLOYMENTS, md_name, wake, namespace=namespace,
                                    field_manager="kubectl-patch")
        if asleep:
            await wait_settled(kube_client, namespace, asleep, what=f"{sorted(asleep)} to wake up")
        for md_name, (example, replicas) in asleep.items():
            await check_placement(kube_client, namespace, md_name, example, replicas)
    finally:
        # Free the batch's GPUs before the next batch asks for them (a deleted pod drains for a
        # few seconds first): the namespace's own deletion does not wait for that.
        for md_name in examples:
            await kube_client.delete(kube.MODELDEPLOYMENTS, md_name, namespace=namespace)

        async def pods_gone() -> bool:
            return not await kube_client.list(kube.PODS, namespace=namespace)

        await wait_for(pods_gone, timeout=GONE_TIMEOUT_SECONDS, what=f"the pods of batch {batch} to go")

"""Problems with replicas, read from raw pods, nodes and events: one case per reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane.controller.health import (
    Reason,
    count_pods,
    first_problem,
    largest_gpu_node,
    pod_problem,
    ready_after,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def pod(name: str = "p-1", *, gpus: int = 1, node: str | None = "kwok-l4-0",
        ready: bool = False, started_ago: float | None = 10, conditions: list[Any] | None = None,
        waiting: dict[str, Any] | None = None, last_terminated: dict[str, Any] | None = None,
        products: list[str] | None = None, deleting: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node:
        spec["nodeName"] = node
    if products:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": products}]}]}}}
    status: dict[str, Any] = {"phase": "Running" if node else "Pending",
                              "conditions": list(conditions or [])}
    status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
    if started_ago is not None and node:
        status["startTime"] = (NOW - timedelta(seconds=started_ago)).isoformat().replace("+00:00", "Z")
    cs: dict[str, Any] = {"name": "vllm", "image": "vllm/vllm-openai:v0.32.0", "restartCount": 0,
                          "state": {"waiting": waiting} if waiting else {"running": {}}}
    if last_terminated:
        cs["lastState"] = {"terminated": last_terminated}
        cs["restartCount"] = 7
    status["containerStatuses"] = [cs]
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T11:00:00Z"
    return {"metadata": meta, "spec": spec, "status": status}


def node(name: str, product: str | None, gpus: int) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product} if product else {}
    alloc = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": alloc}}


NODES = [node("kwok-h100-0", "NVIDIA-H100-80GB-HBM3", 8), node("kwok-l4-0", "NVIDIA-L4", 1),
         node("kwok-cpu-0", None, 0)]
UNSCHED = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
           "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
#: What the scheduler says when no node has the product the pod's affinity asks for.
NO_MATCH = {**UNSCHED, "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                                  "affinity/selector. preemption: 0/3 nodes are available"}


@pytest.mark.parametrize(
    ("the_pod", "events", "reason", "fragments"),
    [
        (pod(gpus=9, node=None, conditions=[UNSCHED]), [], Reason.INSUFFICIENT_GPU,
         ["asks for 9 nvidia.com/gpu", "offers 8", "kwok-h100-0"]),
        (pod(gpus=2, node=None, conditions=[UNSCHED], products=["NVIDIA-L4"]), [],
         Reason.INSUFFICIENT_GPU, ["asks for 2", "(NVIDIA-L4)", "offers 1", "kwok-l4-0"]),
        (pod(gpus=9, node=None), [{"reason": "FailedScheduling", "involvedObject": {"name": "p-1"},
                                   "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
         Reason.INSUFFICIENT_GPU, ["asks for 9"]),
        (pod(node=None, conditions=[{**UNSCHED, "message": "0/3 nodes: 3 node(s) had untolerated taint"}]),
         [], Reason.UNSCHEDULABLE, ["untolerated taint"]),
        (pod(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"}), [],
         Reason.IMAGE_PULL_BACK_OFF, ["cannot be pulled", "Back-off pulling image"]),
        (pod(waiting={"reason": "CrashLoopBackOff"}, last_terminated={"exitCode": 1, "reason": "Error"}),
         [], Reason.CRASH_LOOP_BACK_OFF, ["7 restarts", "exit code 1"]),
        (pod(started_ago=1300), [], Reason.MODEL_LOAD_TIMEOUT, ["1300 s after start", "1200 s"]),
        # Issue 14: a pool scaled to zero has no node; the pod waits for one and says so.
        (pod(gpus=4, node=None, conditions=[NO_MATCH], products=["NVIDIA-A100-SXM4-80GB"]), [],
         Reason.WAITING_FOR_GPU_NODE,
         ["waits for a node with 4 GPUs of type nvidia-a100-80gb (NVIDIA-A100-SXM4-80GB)",
          "the cluster has none now", "scaled to zero", "didn't match Pod's node affinity"]),
        (pod(gpus=1, node=None, products=["NVIDIA-A10G", "NVIDIA-H200"]),
         [{"reason": "FailedScheduling", "involvedObject": {"name": "p-1"}, "message": NO_MATCH["message"]}],
         Reason.WAITING_FOR_GPU_NODE, ["nvidia-a10g (NVIDIA-A10G) or nvidia-h200-141gb (NVIDIA-H200)"]),
        (pod(gpus=9, node=None, conditions=[UNSCHED], products=["NVIDIA-L4"]), [], Reason.INSUFFICIENT_GPU,
         ["asks for 9", "offers 1"]),
    ],
    ids=["gpu-too-many", "gpu-type-too-small", "gpu-from-event", "other-unschedulable",
         "image-pull", "crash-loop", "load-timeout", "no-node-of-type", "no-node-of-any-type",
         "some-gpu-node-exists"],
)
def test_pod_problems_name_the_cause_with_numbers(the_pod: dict[str, Any], events: list[Any],
                                                  reason: Reason, fragments: list[str]) -> None:
    problem = pod_problem(the_pod, nodes=NODES, events=events, now=NOW, startup_budget_seconds=1200)
    assert problem is not None and problem.reason == reason
    for fragment in fragments:
        assert fragment in problem.message


@pytest.mark.parametrize(
    "the_pod",
    [pod(ready=True), pod(started_ago=30), pod(node=None), pod(deleting=True, started_ago=5000)],
    ids=["ready", "still-loading", "pending-not-yet-judged", "deleting"],
)
def test_healthy_or_young_pods_have_no_problem(the_pod: dict[str, Any]) -> None:
    assert pod_problem(the_pod, nodes=NODES, events=[], now=NOW, startup_budget_seconds=1200) is None


def test_first_problem_prefers_scheduling_over_later_stages() -> None:
    pods = [pod("a", started_ago=5000), pod("b", gpus=9, node=None, conditions=[UNSCHED])]
    problem = first_problem(pods, nodes=NODES, events=[], now=NOW, startup_budget_seconds=1200)
    assert problem is not None and problem.reason == Reason.INSUFFICIENT_GPU and problem.pod == "b"


def test_waiting_for_a_gpu_node_only_when_the_pod_cannot_be_scheduled() -> None:
    # Not yet judged by the scheduler, or a CPU-only pod: nothing to say about GPU nodes.
    assert pod_problem(pod(node=None, products=["NVIDIA-A10G"]), nodes=NODES, events=[], now=NOW,
                       startup_budget_seconds=1200) is None
    cpu_only = pod(gpus=0, node=None, conditions=[NO_MATCH], products=["NVIDIA-A10G"])
    problem = pod_problem(cpu_only, nodes=NODES, events=[], now=NOW, startup_budget_seconds=1200)
    assert problem is not None and problem.reason == Reason.UNSCHEDULABLE


def test_largest_node_respects_allowed_products() -> None:
    assert largest_gpu_node(NODES, None) == (8, "kwok-h100-0 (8x NVIDIA-H100-80GB-HBM3)")
    assert largest_gpu_node(NODES, {"NVIDIA-L4"})[0] == 1
    assert largest_gpu_node(NODES, {"NVIDIA-A10G"})[0] == 0


def test_count_pods_ignores_terminating_and_finished() -> None:
    done = pod("d")
    done["status"]["phase"] = "Succeeded"
    counts = count_pods([pod("a", ready=True), pod("b"), pod("c", deleting=True), done])
    assert (counts.total, counts.ready, counts.starting) == (2, 1, 1)


def _stamp(seconds_before_now: float) -> str:
    return (NOW - timedelta(seconds=seconds_before_now)).isoformat().replace("+00:00", "Z")


def _timed(*, created: float | None, ready: float | None, is_ready: bool = True,
           restarted: bool = False) -> dict[str, Any]:
    """A pod created and Ready the given seconds before NOW (None: the timestamp is missing)."""
    the_pod = pod(ready=is_ready, last_terminated={"reason": "Error"} if restarted else None)
    if created is not None:
        the_pod["metadata"]["creationTimestamp"] = _stamp(created)
    if ready is not None:
        the_pod["status"]["conditions"][-1]["lastTransitionTime"] = _stamp(ready)
    return the_pod


@pytest.mark.parametrize(("the_pod", "want"), [
    (_timed(created=300, ready=210), 90.0),
    (_timed(created=300, ready=210, is_ready=False), None),  # not Ready: no cold start yet
    (_timed(created=300, ready=210, restarted=True), None),  # Ready after a restart, not a start
    (_timed(created=None, ready=210), None),
    (_timed(created=300, ready=None), None),
], ids=["ready", "not-ready", "restarted", "no-creation-time", "no-ready-time"])
def test_ready_after_is_the_cold_start(the_pod: dict[str, Any], want: float | None) -> None:
    assert ready_after(the_pod) == want

"""What is wrong with a ModelDeployment's pods, in words a person can act on. Pure.

The handlers hand over the raw pods, nodes and events they read; this module finds the first
problem that explains why replicas are not Ready — a GPU type with no node (yet: the planner plans
from the allowed types, and a cluster autoscaler may be growing a pool from zero), a GPU request no
node can satisfy, an image that cannot be pulled, an engine that crashes, a model that does not
load within its budget — and says so with the numbers (GPUs asked, the largest node, the exit code,
the seconds waited).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelplane import gpus

Obj = Mapping[str, Any]


class Reason(StrEnum):
    """Condition reasons for problems with replicas; each has a troubleshooting entry in docs."""

    INSUFFICIENT_GPU = "InsufficientGPU"
    WAITING_FOR_GPU_NODE = "WaitingForGPUNode"  #: no node of the pod's GPU types is in the cluster
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    MODEL_LOAD_TIMEOUT = "ModelLoadTimeout"
    #: The API server refused a child the operator rendered (its message says why).
    CHILD_REJECTED = "ChildRejected"


@dataclass(frozen=True)
class Problem:
    reason: Reason
    message: str
    pod: str


@dataclass(frozen=True)
class PodCounts:
    total: int
    ready: int
    starting: int  #: scheduled or pending without a known problem, not Ready yet


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_ready(pod: Obj) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def ready_after(pod: Obj) -> float | None:
    """Seconds from the pod's creation to its Ready condition: its cold start.

    None when not Ready, when a timestamp is missing, or when a container restarted (its Ready time
    then follows the restart, not the first start).
    """
    if not is_ready(pod):
        return None
    status = pod.get("status") or {}
    if any(int(c.get("restartCount") or 0) > 0 for c in status.get("containerStatuses") or []):
        return None
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    ready_at = next((parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []
                     if c.get("type") == "Ready"), None)
    if created is None or ready_at is None:
        return None
    return max(0.0, (ready_at - created).total_seconds())


def gpus_requested(pod: Obj) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        res = container.get("resources") or {}
        value = (res.get("limits") or {}).get(gpus.GPU_RESOURCE) or \
            (res.get("requests") or {}).get(gpus.GPU_RESOURCE) or 0
        total += int(value)
    return total


def allowed_products(pod: Obj) -> set[str] | None:
    """The GPU products the pod's required node affinity allows (None: any)."""
    terms = (pod.get("spec", {}).get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms"))
    products: set[str] = set()
    for term in terms or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == gpus.PRODUCT_LABEL and expr.get("operator") == "In":
                products.update(expr.get("values") or [])
    return products or None


def largest_gpu_node(nodes: Sequence[Obj], products: set[str] | None) -> tuple[int, str]:
    """(GPUs, description) of the node with the most allocatable GPUs of the allowed products."""
    best, desc = 0, "no node has GPUs of the allowed types"
    for node in nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        product = labels.get(gpus.PRODUCT_LABEL)
        if products is not None and product not in products:
            continue
        count = int((node.get("status", {}).get("allocatable") or {}).get(gpus.GPU_RESOURCE, 0))
        if count > best:
            best, desc = count, f"{node['metadata']['name']} ({count}x {product})"
    return best, desc


def _gpu_type_names(products: set[str] | None) -> str:
    """"nvidia-h100-80gb (NVIDIA-H100-80GB-HBM3)" for each product, in the spec's terms."""
    if products is None:
        return "any GPU type"
    names = []
    for product in sorted(products):
        gpu = gpus.by_product(product)
        names.append(f"{gpu.name} ({product})" if gpu else product)
    return " or ".join(names)


def has_node_of(nodes: Sequence[Obj], products: set[str] | None) -> bool:
    """Whether any node carries one of the GPU products (any GPU node when ``products`` is None)."""
    for node in nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        product = labels.get(gpus.PRODUCT_LABEL)
        if product and (products is None or product in products):
            return True
    return False


def _unschedulable_message(pod: Obj, events: Sequence[Obj]) -> str | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            return str(cond.get("message") or "")
    name = pod.get("metadata", {}).get("name")
    for ev in events:
        if ev.get("reason") == "FailedScheduling" and \
                ev.get("involvedObject", {}).get("name") == name:
            return str(ev.get("message") or "")
    return None


def pod_problem(pod: Obj, *, nodes: Sequence[Obj], events: Sequence[Obj], now: datetime,
                startup_budget_seconds: float) -> Problem | None:
    """The problem keeping one pod from serving, or None if it is fine or just starting."""
    name = str(pod.get("metadata", {}).get("name"))
    if is_ready(pod) or pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    status = pod.get("status", {})
    unschedulable = _unschedulable_message(pod, events) if not pod.get("spec", {}).get(
        "nodeName") else None
    if unschedulable is not None:
        asked = gpus_requested(pod)
        products = allowed_products(pod)
        if asked and not has_node_of(nodes, products):
            return Problem(Reason.WAITING_FOR_GPU_NODE,
                           f"pod {name} waits for a node with {asked} GPUs of type "
                           f"{_gpu_type_names(products)}: the cluster has none now. A cluster autoscaler "
                           f"(Karpenter, cluster-autoscaler) adds one for this pod if a node pool of that "
                           f"type exists, even one scaled to zero; otherwise add such nodes or allow "
                           f"another type in spec.resources.gpu.types. Scheduler: {unschedulable}", name)
        if gpus.GPU_RESOURCE in unschedulable and asked:
            most, where = largest_gpu_node(nodes, products)
            allowed = ", ".join(sorted(products)) if products else "any type"
            return Problem(Reason.INSUFFICIENT_GPU,
                           f"each replica asks for {asked} nvidia.com/gpu ({allowed}); the largest "
                           f"node of those types offers {most}: {where}. Scheduler: {unschedulable}",
                           name)
        return Problem(Reason.UNSCHEDULABLE, f"pod {name} cannot be scheduled: {unschedulable}", name)
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            return Problem(Reason.IMAGE_PULL_BACK_OFF,
                           f"image {cs.get('image')} of pod {name} cannot be pulled: "
                           f"{waiting.get('message') or reason}", name)
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            return Problem(Reason.CRASH_LOOP_BACK_OFF,
                           f"vLLM in pod {name} keeps crashing ({cs.get('restartCount', 0)} "
                           f"restarts, last exit code {last.get('exitCode', '?')}: "
                           f"{last.get('reason') or waiting.get('message') or 'no reason given'})",
                           name)
    started = parse_time(status.get("startTime"))
    if started is not None and pod.get("spec", {}).get("nodeName"):
        waited = (now - started).total_seconds()
        if waited > startup_budget_seconds:
            return Problem(Reason.MODEL_LOAD_TIMEOUT,
                           f"pod {name} has not become Ready {waited:.0f} s after start; the "
                           f"startup budget for this model is {startup_budget_seconds:.0f} s",
                           name)
    return None


def first_problem(pods: Sequence[Obj], *, nodes: Sequence[Obj], events: Sequence[Obj],
                  now: datetime, startup_budget_seconds: float) -> Problem | None:
    """The most telling problem among the pods (scheduling first: nothing else can happen)."""
    found = [p for p in (pod_problem(pod, nodes=nodes, events=events, now=now,
                                     startup_budget_seconds=startup_budget_seconds)
                         for pod in sorted(pods, key=lambda p: p["metadata"]["name"]))
             if p is not None]
    order = list(Reason)
    found.sort(key=lambda p: order.index(p.reason))
    return found[0] if found else None


def count_pods(pods: Sequence[Obj]) -> PodCounts:
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
    ready = sum(1 for p in live if is_ready(p))
    return PodCounts(total=len(live), ready=ready, starting=len(live) - ready)

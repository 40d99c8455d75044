"""Multi-node replicas: one LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``) per revision. Pure.

When the planner makes a replica a group of whole nodes (``Plan.nodes`` > 1: tensor parallelism
within a node, one pipeline stage per node), a revision is rendered as a LeaderWorkerSet instead of
a Deployment; each of its ``replicas`` is a group of ``size`` = nodes pods, one per node:

* the **leader** (worker index 0) runs vLLM's OpenAI server, exactly as a single-node replica's pod
  does (same container, probes, volumes and labels, so the Service, the PDB, the gateway, the
  scrapes and the autoscaler see one server pod per group), plus the group's flags;
* each **worker** (index 1..size-1) runs ``vllm serve`` headless: no API server, no port, no probes;
  it holds its pipeline stage and serves the leader's engine.

The workers join the leader with vLLM's own multi-node launch for the multiprocessing executor
(vLLM's "Parallelism and Scaling" guide, "Running vLLM with MultiProcessing", documented since
December 2025, vLLM PR 30509; the pinned image, v0.32.0, is newer): every pod runs
``vllm serve MODEL --tensor-parallel-size TP --pipeline-parallel-size N --nnodes N --node-rank R
--master-addr LEADER``, the workers with ``--headless``. ``LWS_LEADER_ADDRESS`` and
``LWS_WORKER_INDEX`` are set in every pod by the LeaderWorkerSet controller's pod webhook;
Kubernetes expands ``$(VAR)`` in args. No Ray cluster to start, so no Ray head to wait for.

The group is one failure domain: ``restartPolicy: RecreateGroupOnPodRestart`` makes the controller
delete and recreate every pod of a group when any one of them fails or restarts (a worker lost
means the leader's engine is dead too). The leader's startup probe allows the whole group's load
(the planner's budget counts the workers joining). ``startupPolicy`` is ``LeaderCreated``: the
workers start with the leader. (``LeaderReady`` would create them only once the leader is Ready,
and the leader's readiness is vLLM's /health, which answers only once every worker has joined:
the group would never start.)

Workers carry the component label ``worker``, not ``server``: they are outside the server selector,
so nothing that routes or counts server pods ever sees them. The LeaderWorkerSet carries the same
labels and annotations a Deployment would (revision hash, role, fingerprint, gated snapshot), and
its ``status.readyReplicas`` counts Ready groups, so the rollout reads it as it reads a Deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelplane import render
from modelplane.api.models import ModelDeploymentSpec
from modelplane.controller import kube

LEADERWORKERSETS = kube.LEADERWORKERSETS
API_VERSION = LEADERWORKERSETS.api_version
KIND = LEADERWORKERSETS.kind

#: The component label of worker pods (leaders carry ``render.COMPONENT``, "server").
WORKER_COMPONENT = "worker"
#: Labels the LeaderWorkerSet controller puts on every pod of a group.
LABEL_LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LABEL_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LABEL_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
LABEL_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
#: Annotation the controller puts on every pod of a group: the group's size.
ANNOTATION_SIZE = "leaderworkerset.sigs.k8s.io/size"
#: The Event reason the controller records on the LeaderWorkerSet when it recreates a group
#: ("Worker pod X failed, deleted leader pod Y to recreate group N").
RECREATE_GROUP_REASON = "RecreateGroup"
#: Environment the controller's pod webhook sets in every pod of a group.
ENV_LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
ENV_WORKER_INDEX = "LWS_WORKER_INDEX"

RESTART_POLICY = "RecreateGroupOnPodRestart"
STARTUP_POLICY = "LeaderCreated"
#: vLLM's torch.distributed rendezvous port on the leader (vLLM's default --master-port).
MASTER_PORT = 29501


def group_flags(nodes: int, *, rank: str, headless: bool) -> list[str]:
    """The flags that make ``vllm serve`` one pipeline stage of a ``nodes``-node group."""
    flags = ["--pipeline-parallel-size", str(nodes), "--nnodes", str(nodes), "--node-rank", rank,
             "--master-addr", f"$({ENV_LEADER_ADDRESS})", "--master-port", str(MASTER_PORT)]
    return [*flags, "--headless"] if headless else flags


def _with_group_flags(args: list[str], spec: ModelDeploymentSpec, flags: list[str]) -> list[str]:
    # Before the user's extraArgs, as every typed flag is.
    cut = len(args) - len(spec.engine.extra_args)
    return [*args[:cut], *flags, *args[cut:]]


def build_leader_worker_set(md: render.Owner, spec: ModelDeploymentSpec,
                            workload: render.WorkloadPlan) -> render.Manifest:
    """The LeaderWorkerSet running one revision with ``workload.replicas`` groups of ``nodes`` pods."""
    if workload.nodes < 2:
        raise ValueError(f"a LeaderWorkerSet is for groups of 2 or more nodes, got {workload.nodes}")
    spec = workload.spec or spec
    key = workload.workload_key
    leader = render.build_pod_template(md, spec, workload)
    leader_container = leader["spec"]["containers"][0]
    leader_container["args"] = _with_group_flags(
        leader_container["args"], spec, group_flags(workload.nodes, rank="0", headless=False))

    worker = render.build_pod_template(md, spec, workload)
    worker["metadata"]["labels"][render.LABEL_COMPONENT] = WORKER_COMPONENT
    worker_container = worker["spec"]["containers"][0]
    worker_container["args"] = _with_group_flags(
        worker_container["args"], spec,
        group_flags(workload.nodes, rank=f"$({ENV_WORKER_INDEX})", headless=True))
    # Headless: no API server, so nothing to probe or to send requests to; the leader's probes
    # judge the group, and RecreateGroupOnPodRestart restarts all of it.
    for field in ("ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        worker_container.pop(field, None)

    template_hash = render.spec_hash({"leader": leader, "worker": worker})
    for template in (leader, worker):
        template["metadata"]["labels"][render.LABEL_SPEC_HASH] = template_hash
    labels = {**render.server_selector(md), render.LABEL_MANAGED_BY: render.MANAGED_BY,
              render.LABEL_MODEL_DEPLOYMENT: md.name, render.LABEL_REVISION_HASH: key,
              render.LABEL_ROLE: workload.role.value, render.LABEL_SPEC_HASH: template_hash}
    body: dict[str, Any] = {
        "replicas": workload.replicas,
        "startupPolicy": STARTUP_POLICY,
        # A changed template replaces one group at a time, never below the groups there are.
        "rolloutStrategy": {"type": "RollingUpdate",
                            "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 1}},
        "leaderWorkerTemplate": {
            "size": workload.nodes,
            "restartPolicy": RESTART_POLICY,
            "leaderTemplate": leader,
            "workerTemplate": worker,
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": render.workload_name(md.name, key),
            "namespace": md.namespace,
            "labels": labels,
            "annotations": {render.ANNOTATION_SOURCE: workload.source,
                            render.ANNOTATION_REVISION: workload.revision, **dict(workload.annotations)},
            "ownerReferences": render.owner_references(md),
        },
        "spec": body,
    }


def is_worker(pod: Mapping[str, Any]) -> bool:
    """A headless worker pod of a group (component ``worker``)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(render.LABEL_COMPONENT) == WORKER_COMPONENT


def _ready(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return not meta.get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def serving_pods(pods: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """The server pods among ``pods``, one per replica: a Deployment's pods, and each group's leader.

    Workers are left out. A leader counts as Ready only when every pod of its group is (as the
    LeaderWorkerSet's own ``readyReplicas`` does): a copy whose Ready condition is False, with
    reason ``GroupNotReady``, stands for a leader whose workers are missing or not Ready.
    """
    ready_workers: dict[tuple[str, str], int] = {}
    for pod in pods:
        if is_worker(pod) and _ready(pod):
            key = _group_key(pod)
            ready_workers[key] = ready_workers.get(key, 0) + 1
    out: list[Mapping[str, Any]] = []
    for pod in pods:
        if is_worker(pod):
            continue
        meta = pod.get("metadata") or {}
        size = int((meta.get("annotations") or {}).get(ANNOTATION_SIZE) or 1)
        if size > 1 and _ready(pod) and ready_workers.get(_group_key(pod), 0) < size - 1:
            status = dict(pod.get("status") or {})
            status["conditions"] = [
                {**c, "status": "False", "reason": "GroupNotReady"} if c.get("type") == "Ready" else c
                for c in status.get("conditions") or []]
            pod = {**pod, "status": status}
        out.append(pod)
    return tuple(out)


def _group_key(pod: Mapping[str, Any]) -> tuple[str, str]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return str(labels.get(LABEL_LWS_NAME, "")), str(labels.get(LABEL_GROUP_INDEX, ""))


def recreations(events: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[Mapping[str, Any]]:
    """The LeaderWorkerSet controller's ``RecreateGroup`` Events about the LeaderWorkerSets
    ``names``, oldest first."""
    wanted = set(names)
    found = [e for e in events if e.get("reason") == RECREATE_GROUP_REASON
             and (e.get("involvedObject") or {}).get("kind") == KIND
             and (e.get("involvedObject") or {}).get("name") in wanted]
    return sorted(found, key=_event_time)


def _event_time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or
               (event.get("metadata") or {}).get("creationTimestamp") or "")


def recreation_message(events: Sequence[Mapping[str, Any]], *, ready: int, desired: int) -> str | None:
    """What the ``GroupRecreated`` condition says about ``recreations(...)``; None: none happened."""
    if not events:
        return None
    last = events[-1]
    count = sum(int(e.get("count") or 1) for e in events)
    times = "once" if count == 1 else f"{count} times"
    obj = (last.get("involvedObject") or {}).get("name")
    return (f"the LeaderWorkerSet controller recreated a group {times}; the last, at {_event_time(last)}, "
            f"on {obj}: {last.get('message') or 'no message'}; {ready}/{desired} groups ready now")

"""The reconcile core: observed world → children to apply or delete, status, Events. Pure.

``prepare`` parses the spec and plans the GPU shape; the controller then scrapes the ready pods it
names; ``finish`` runs the autoscaler, decides which revision's Deployment serves, renders the
children and builds the status. Nothing here does I/O or reads a clock: time comes in
``Observed``. The controller applies what comes out, and only what changed:

- a child is in ``Result.apply`` only when its content hash differs from the one it carries;
- ``Result.status`` is None when the status would not change.

A change of the model (source or revision) without ``spec.rollout`` switches directly: the new
revision's Deployment starts beside the old one, which keeps serving until a new replica is Ready
and is deleted then. (Rollouts behind the evaluation gate drive the same two Deployments through
``modelplane.rollout``.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelplane import gpus, lws, render
from modelplane.api.adapter import with_effective_lora
from modelplane.api.models import (
    Condition,
    ConditionStatus,
    ConditionType,
    InvalidSpecError,
    ModelDeployment,
    ModelDeploymentStatus,
    Phase,
    ScalingMode,
)
from modelplane.autoscaler import cost, policy
from modelplane.controller import adapters, health, kube
from modelplane.metrics.promtext import MetricSnapshot
from modelplane.metrics.scrape import ScrapeResult, ScrapeTarget

# The published-benchmark performance profiles of GPUs the simulator also runs on.
from modelplane.planner import performance
from modelplane.planner.arch import ModelArch
from modelplane.planner.plan import (
    Plan,
    PlanRequest,
    build_plan,
    plan_request_from_spec,
)
from modelplane.rollout import driver as rollouts
from modelplane.rollout import revisions
from modelplane.rollout.analysis import GATEWAY_TTFT
from modelplane.rollout.machine import Phase as RolloutPhase
from modelplane.rollout.machine import Reason as RolloutReason
from modelplane.rollout.machine import RolloutState

Obj = Mapping[str, Any]

#: Annotation on each child with the hash of what the operator last rendered for it.
APPLIED_HASH = "modelplane.dev/applied-hash"


class Reason(StrEnum):
    """Condition reasons of the reconcile itself (problems with pods: ``health.Reason``)."""

    INVALID_SPEC = "InvalidSpec"
    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_STARTING = "ReplicasStarting"
    SCALED_TO_ZERO = "ScaledToZero"
    SWITCHING_REVISION = "SwitchingRevision"
    STABLE = "Stable"
    HEALTHY = "Healthy"
    WITHIN_LIMITS = "WithinLimits"
    APPLIED = "Applied"
    DELETED = "Deleted"
    PLANNED = "Planned"
    METRICS_READ = "MetricsRead"
    CONFIG_READ = "ConfigRead"
    ROLLOUT = "Rollout"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    EVALUATION_RUNNING = "EvaluationRunning"
    NOT_EVALUATED = "NotEvaluated"
    EVALUATION_COMPLETE = "EvaluationComplete"
    SUITE_UNDERPOWERED = "SuiteUnderpowered"
    SUITE_SUFFICIENT = "SuiteSufficient"
    INFERENCE_POOL_APPLIED = "InferencePoolApplied"
    INFERENCE_POOL_CRD_MISSING = "InferencePoolCRDMissing"
    HTTP_ROUTE_CRD_MISSING = "HTTPRouteCRDMissing"
    API_NOT_YET_LISTED = "APINotYetListed"
    LEADER_WORKER_SET_CRD_MISSING = "LeaderWorkerSetCRDMissing"
    GROUP_RECREATED = "GroupRecreated"
    NO_GROUP_RECREATED = "NoGroupRecreated"


@dataclass(frozen=True)
class Observed:
    body: Obj
    deployments: tuple[Obj, ...] = ()
    services: tuple[Obj, ...] = ()
    pdbs: tuple[Obj, ...] = ()
    pods: tuple[Obj, ...] = ()
    events: tuple[Obj, ...] = ()
    nodes: tuple[Obj, ...] = ()
    now: datetime = datetime(1970, 1, 1)
    monotonic: float = 0.0  #: the autoscaler's clock
    #: Requests the gateway replicas hold for this ModelDeployment (no Ready replica yet), summed
    #: (``controller.gateways``).
    activator_pending: int = 0
    #: The outcome of reading the model's config.json (None: not read — disabled or pending).
    model_config: ModelConfig | None = None
    #: Metrics older than this are stale; None: the policy's default (right for the direct scrape).
    metrics_max_age: float | None = None
    #: The API server's refusal of a child on the last attempt ("Deployment x: <its message>");
    #: None: every child was accepted. Shown as Degraded/ChildRejected until a write succeeds.
    rejected: str | None = None
    #: Cases in the rollout's evaluation suite, once the controller has read its ConfigMap (None:
    #: not read, unreadable, or no suite); the rollout checks the gate's power with it.
    suite_cases: int | None = None
    #: The InferencePools and HTTPRoutes labelled as this ModelDeployment's (spec.inferencePool).
    inference_pools: tuple[Obj, ...] = ()
    http_routes: tuple[Obj, ...] = ()
    #: Each gateway replica's metrics as last read, by URL, for a rollout's live analysis (None: no
    #: gateway is read, or the object has no rollout).
    gateway_metrics: Mapping[str, MetricSnapshot] | None = None
    #: Whether the API server serves InferencePool v1 / HTTPRoute v1 (their CRDs are optional):
    #: True, False (not served: the CRD is not installed), None (not known yet: not listed yet).
    inference_pool_api: bool | None = None
    http_route_api: bool | None = None
    #: This ModelDeployment's LeaderWorkerSets (multi-node replicas, ``modelplane.lws``), whether
    #: the API server serves them (None: not listed yet), and the LeaderWorkerSet controller's
    #: ``RecreateGroup`` Events in the namespace.
    leader_worker_sets: tuple[Obj, ...] = ()
    leader_worker_set_api: bool | None = None
    group_events: tuple[Obj, ...] = ()
    #: The ModelAdapters whose spec.base names this object: they turn LoRA on and size its flags.
    adapters: tuple[Obj, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """What the controller learnt from the model's config.json, or why it could not."""

    arch: ModelArch | None
    reason: str  #: ``ConfigRead`` or a ``planner.source.ConfigReadReason``
    message: str


@dataclass(frozen=True)
class EventSpec:
    type: str  #: Normal | Warning
    reason: str
    message: str
    scaling: bool = False
    rollout: bool = False


@dataclass(frozen=True)
class Prepared:
    md: ModelDeployment | None
    invalid: str | None = None
    plan: Plan | None = None
    #: Render with this many GPUs per replica; None when nothing may be rendered.
    gpus_per_replica: int | None = None
    tensor_parallel_size: int = 1
    gpu_type: str | None = None
    startup_budget_seconds: int = render.DEFAULT_STARTUP_BUDGET_SECONDS
    #: Nodes of one replica; > 1: each replica is a LeaderWorkerSet group.
    nodes: int = 1
    served_name: str | None = None
    scrape_targets: tuple[ScrapeTarget, ...] = ()
    #: A replica's token rates on the planned shape (published-benchmark profile), so the
    #: autoscaler sizes the fleet on work, not only on requests in flight; empty when unknown.
    throughput_priors: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[tuple[kube.Resource, str], ...] = ()
    status: dict[str, Any] | None = None  #: None: unchanged, nothing to write
    effective_status: dict[str, Any] = field(default_factory=dict)
    events: tuple[EventSpec, ...] = ()
    policy_state: policy.PolicyState = field(default_factory=policy.PolicyState)
    queue_depth: float | None = None
    #: The rollout's in-memory part (evaluation in flight, analysis window) for the next reconcile.
    rollout_memory: rollouts.Memory = field(default_factory=rollouts.Memory)
    #: An evaluation the controller must start (HTTP suite or Job), or stop.
    start_evaluation: rollouts.EvaluationOrder | None = None
    cancel_evaluation: bool = False


# --- prepare: spec and plan -----------------------------------------------------------------------


def _throughput_priors(md: ModelDeployment, request: PlanRequest, plan: Plan) -> dict[str, float]:
    if request.arch is None or plan.gpu_type is None:
        return {}
    try:
        params = performance.params_for(
            plan.gpu_type, request.arch.total_params / 1e9, plan.tensor_parallel_size,
            md.spec.engine.max_model_len or 8192, md.spec.engine.max_num_seqs or 256,
            quantization=md.spec.engine.quantization,
            gpu_memory_utilization=md.spec.engine.gpu_memory_utilization)
    except ValueError:
        return {}
    return {"prefill_tokens_per_second": params.prefill_tokens_per_s,
            "decode_tokens_per_second": performance.saturated_tokens_per_s(params)}


def prepare(observed: Observed, *, prices: Mapping[str, float]) -> Prepared:
    try:
        md = ModelDeployment.parse(observed.body)
    except InvalidSpecError as exc:
        return Prepared(md=None, invalid=str(exc))
    # The LoRA flags and their memory come from the adapters too (render and planner read the spec).
    md = with_effective_lora(md, adapters.parse_adapters(observed.adapters)[0])
    config = observed.model_config
    request = plan_request_from_spec(
        md.spec, config_arch=config.arch if config is not None else None,
        config_note=config.message if config is not None and config.arch is None else "")
    # Planned from the allowed types alone: a type with no node now may be a pool scaled to zero,
    # which a cluster autoscaler grows for the pending pod (health explains a pod that waits).
    plan = build_plan(request, gpus.with_prices(prices))
    served = md.spec.model.served_name or md.name
    targets = tuple(
        ScrapeTarget(pod=p["metadata"]["name"], ip=p["status"]["podIP"], port=render.PORT)
        for p in lws.serving_pods(observed.pods)  # one server per replica: a group's leader
        if health.is_ready(p) and (p.get("status") or {}).get("podIP"))
    budget = plan.startup_budget_seconds or render.DEFAULT_STARTUP_BUDGET_SECONDS
    count = md.spec.resources.gpu.count
    if plan.fits:
        return Prepared(md=md, plan=plan, gpus_per_replica=plan.gpus_per_replica,
                        tensor_parallel_size=plan.tensor_parallel_size, gpu_type=plan.gpu_type,
                        startup_budget_seconds=budget, served_name=served, scrape_targets=targets,
                        throughput_priors=_throughput_priors(md, request, plan), nodes=plan.nodes)
    if count != "auto":
        # The user fixed the count: render it and let the scheduler speak (InsufficientGPU names
        # the numbers); the plan's reason still shows in status.plan.
        return Prepared(md=md, plan=plan, gpus_per_replica=int(count),
                        tensor_parallel_size=int(count), gpu_type=None,
                        startup_budget_seconds=budget, served_name=served, scrape_targets=targets)
    return Prepared(md=md, plan=plan, served_name=served, scrape_targets=targets)


# --- finish: replicas, revisions, children, status -----------------------------------------------


def content_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()[:16]


def _with_hash(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(manifest))
    out["metadata"].setdefault("annotations", {})[APPLIED_HASH] = content_hash(manifest)
    return dict(out)


def _autoscale(prepared: Prepared, observed: Observed, metrics: Sequence[ScrapeResult],
               state: policy.PolicyState, current: int) -> tuple[int, policy.Decision | None]:
    md = prepared.md
    assert md is not None
    scaling = md.spec.scaling
    if scaling.mode == ScalingMode.EXTERNAL:
        # HPA or KEDA writes spec.replicas through /scale; the built-in autoscaler steps aside.
        return (md.spec.replicas if md.spec.replicas is not None else max(current, 1)), None
    plan = prepared.plan
    usd = plan.usd_per_hour_per_replica if plan is not None and plan.fits else 0.0
    tunables: dict[str, float] = dict(prepared.throughput_priors)
    if observed.metrics_max_age is not None:
        tunables["metrics_max_age"] = observed.metrics_max_age
    spec = policy.policy_spec_from_scaling(
        md.spec.scaling, usd_per_replica_hour=usd, replica_concurrency=md.spec.engine.max_num_seqs or 256,
        **tunables)
    by_pod = {m.pod: m for m in metrics}
    ready, starting = [], []
    for pod in observed.pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name"))
        if health.is_ready(pod):
            result = by_pod.get(name)
            ready.append(policy.ReadyPod(name=name, metrics=result.metrics if result else None,
                                         ready_after=health.ready_after(pod)))
        else:
            started = health.parse_time(meta.get("creationTimestamp"))
            age = (observed.now - started).total_seconds() if started else 0.0
            starting.append(policy.StartingPod(name=name, age_seconds=age))
    gateway_ttft: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()
    if scaling.objective is not None and observed.gateway_metrics:
        # The gateways' TTFT of this deployment (every revision), per gateway replica.
        selector = {"namespace": md.namespace, "model_deployment": md.name}
        gateway_ttft = tuple((url, tuple(b)) for url, snap in sorted(observed.gateway_metrics.items())
                             if (b := snap.buckets(GATEWAY_TTFT, **selector)))
    obs = policy.Observation(now=observed.monotonic, current_replicas=current,
                             ready=tuple(ready), starting=tuple(starting),
                             activator_pending=observed.activator_pending, gateway_ttft=gateway_ttft)
    decision = policy.decide(obs, spec, state)
    return decision.desired_replicas, decision


def _condition(type_: ConditionType, status: bool, reason: str, message: str, *, now: datetime,
               generation: int | None, previous: Mapping[str, Condition]) -> Condition:
    value = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    prev = previous.get(type_)
    # The transition time moves only when the status flips, as Kubernetes conventions ask.
    since = prev.last_transition_time if prev is not None and prev.status == value else now
    return Condition(type=type_, status=value, reason=reason, message=message,
                     last_transition_time=since, observed_generation=generation)


def _normalise(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status as the API would hand it back, so that equal statuses compare equal."""
    try:
        model = ModelDeploymentStatus.model_validate(dict(status))
    except ValueError:
        return {}
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def _children(md: ModelDeployment, observed: Observed, revs: revisions.Revisions,
              rollout: rollouts.Outcome, *,
              desired: int, shape: rollouts.Shape, switching: bool, service_key: str | None,
              events: list[EventSpec]) -> tuple[list[dict[str, Any]], list[tuple[kube.Resource, str]]]:
    """The children to apply (content hash changed) and the Deployments to delete; Events for each."""
    revision = md.spec.model.revision
    apply: list[dict[str, Any]] = []
    delete: list[tuple[kube.Resource, str]] = []
    workloads = list(rollout.workloads) if rollout.driving else [
        revisions.plain_workload(md, revs, desired=desired, shape=shape)]
    existing = {(c["kind"], c["metadata"]["name"]): c
                for c in (*observed.deployments, *observed.services, *observed.pdbs)}
    groups = {str((c.get("metadata") or {}).get("name")) for c in observed.deployments
              if c.get("kind") == lws.KIND}

    def kind_of(name: str) -> tuple[kube.Resource, str]:
        return (lws.LEADERWORKERSETS, lws.KIND) if name in groups else (kube.DEPLOYMENTS, "Deployment")

    applied: list[str] = []
    for child in render.build_children(md, md.spec, workloads, service_key=service_key):
        manifest = _with_hash(child)
        have = existing.get((child["kind"], child["metadata"]["name"]))
        have_hash = ((have or {}).get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
        if have_hash != manifest["metadata"]["annotations"][APPLIED_HASH]:
            apply.append(manifest)
            verb = "updated" if have else "created"
            detail = f" ({desired} replicas)" if child["kind"] in ("Deployment", lws.KIND) else ""
            applied.append(f"{verb} {child['kind']} {child['metadata']['name']}{detail}")
    if applied:
        # One Event for the children of one reconcile (a new object's three used to be three).
        events.append(EventSpec("Normal", Reason.APPLIED, "; ".join(applied)))
    if rollout.driving:
        for dep_name in rollout.delete:
            resource, kind = kind_of(dep_name)
            delete.append((resource, dep_name))
            events.append(EventSpec("Normal", Reason.DELETED, f"deleted {kind} {dep_name}: "
                                    f"rollout {rollout.state.phase.value}", rollout=True))
    else:
        for dep_name in revisions.plain_deletes(revs, switching=switching):
            resource, kind = kind_of(dep_name)
            delete.append((resource, dep_name))
            events.append(EventSpec("Normal", Reason.DELETED,
                                    f"deleted {kind} {dep_name}: revision {revision} serves now"))
    return apply, delete


Cond = Callable[[ConditionType, bool, str, str], Condition]

#: What the operator says when the cluster lacks a CRD that spec.inferencePool needs.
_CRDS = {
    "InferencePool": (kube.INFERENCEPOOLS, Reason.INFERENCE_POOL_CRD_MISSING,
                      "the Gateway API Inference Extension's CRD (InferencePool v1)"),
    "HTTPRoute": (kube.HTTPROUTES, Reason.HTTP_ROUTE_CRD_MISSING, "the Gateway API's CRDs (HTTPRoute v1)"),
}


def _owned_by(obj: Obj, md: ModelDeployment) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == md.uid and r.get("controller") for r in refs)


def _inference_children(md: ModelDeployment, observed: Observed, *, service_key: str | None, served_name: str,
                        events: list[EventSpec], cond: Cond,
                        ) -> tuple[list[dict[str, Any]], list[tuple[kube.Resource, str]], Condition | None]:
    """The InferencePool and HTTPRoute to apply or delete, and the InferencePoolReady condition.

    A child whose CRD the API server does not serve is neither applied nor deleted (there is
    nothing to delete): the condition names the missing CRD and the rest of the model serves as
    usual. Objects of this ModelDeployment that the spec no longer asks for are deleted.
    """
    wanted = render.build_inference_children(md, md.spec, served_name=served_name, key=service_key)
    served = {"InferencePool": observed.inference_pool_api, "HTTPRoute": observed.http_route_api}
    existing = {(str(o.get("kind")), str((o.get("metadata") or {}).get("name"))): o
                for o in (*observed.inference_pools, *observed.http_routes) if _owned_by(o, md)}
    apply: list[dict[str, Any]] = []
    delete: list[tuple[kube.Resource, str]] = []
    missing: list[str] = []
    for child in wanted:
        kind, name = child["kind"], child["metadata"]["name"]
        if served[kind] is not True:
            missing.append(kind)
            continue
        manifest = _with_hash(child)
        have = existing.get((kind, name))
        if ((have or {}).get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH) != \
                manifest["metadata"]["annotations"][APPLIED_HASH]:
            apply.append(manifest)
            verb = "updated" if have else "created"
            events.append(EventSpec("Normal", Reason.APPLIED, f"{verb} {kind} {name}"))
    keep = {(c["kind"], c["metadata"]["name"]) for c in wanted}
    # The route first, so that no gateway is left routing to a pool that is going away.
    for kind, name in sorted(existing, key=lambda k: (k[0] != "HTTPRoute", k)):
        if (kind, name) not in keep and kind in _CRDS:
            delete.append((_CRDS[kind][0], name))
            events.append(EventSpec("Normal", Reason.DELETED,
                                    f"deleted {kind} {name}: spec.inferencePool no longer asks for it"))
    if not wanted:
        return apply, delete, None
    names = " and ".join(f"{c['kind']} {c['metadata']['name']}" for c in wanted)
    if missing:
        kind = missing[0]
        if served[kind] is None:
            condition = cond(ConditionType.INFERENCE_POOL_READY, False, Reason.API_NOT_YET_LISTED,
                             f"the operator has not yet listed {_CRDS[kind][0].plural}."
                             f"{_CRDS[kind][0].group} (its watch is starting, or lacks RBAC)")
        else:
            _, reason, what = _CRDS[kind]
            applied = [c for c in wanted if c["kind"] not in missing]
            done = f"; {applied[0]['kind']} {applied[0]['metadata']['name']} is applied" if applied else ""
            condition = cond(ConditionType.INFERENCE_POOL_READY, False, reason,
                             f"the API server does not serve {_CRDS[kind][0].plural}.{_CRDS[kind][0].group}/"
                             f"{_CRDS[kind][0].version}: install {what} (docs/inference-extension.md), or "
                             f"remove spec.inferencePool{'.httpRoute' if kind == 'HTTPRoute' else ''}{done}")
    elif observed.rejected is not None:
        # The pool and route are applied last: a refusal of any child stops them too.
        condition = cond(ConditionType.INFERENCE_POOL_READY, False, health.Reason.CHILD_REJECTED,
                         f"the API server refused {observed.rejected}")
    else:
        condition = cond(ConditionType.INFERENCE_POOL_READY, True, Reason.INFERENCE_POOL_APPLIED,
                         f"{names} applied")
    return apply, delete, condition


def _health_conditions(prepared: Prepared, counts: health.PodCounts, problem: health.Problem | None, *,
                       desired: int, switching: bool, revision: str,
                       cond: Cond) -> tuple[Phase, list[Condition]]:
    """Phase, Ready, Degraded and Progressing from the plan, the pods and the first problem seen."""
    plan = prepared.plan
    conditions: list[Condition] = []
    if plan is not None and prepared.gpus_per_replica is None:
        return Phase.FAILED, [cond(ConditionType.READY, False, plan.reason_code, plan.reason),
                              cond(ConditionType.DEGRADED, True, plan.reason_code, plan.reason)]
    ready_ok = desired >= 1 and counts.ready >= desired and problem is None
    if problem is not None:
        phase = Phase.DEGRADED
        conditions.append(cond(ConditionType.READY, counts.ready >= 1 and counts.ready >= desired,
                               problem.reason, problem.message))
        conditions.append(cond(ConditionType.DEGRADED, True, problem.reason, problem.message))
    else:
        if desired == 0 and counts.total == 0:
            phase = Phase.SCALED_TO_ZERO
            conditions.append(cond(ConditionType.READY, False, Reason.SCALED_TO_ZERO,
                                   "no replicas: scaled to zero until requests arrive"))
        elif ready_ok and not switching:
            phase = Phase.READY
            conditions.append(cond(ConditionType.READY, True, Reason.ALL_REPLICAS_READY,
                                   f"{counts.ready}/{desired} replicas ready"))
        else:
            phase = Phase.PROGRESSING
            conditions.append(cond(ConditionType.READY, False, Reason.REPLICAS_STARTING,
                                   f"{counts.ready}/{desired} replicas ready"))
        conditions.append(cond(ConditionType.DEGRADED, False, Reason.HEALTHY, "no problem seen"))
    progressing = switching or counts.ready != desired or counts.total != desired
    if switching:
        conditions.append(cond(ConditionType.PROGRESSING, True, Reason.SWITCHING_REVISION,
                               f"starting revision {revision}; the previous revision serves "
                               "until a new replica is ready"))
    else:
        conditions.append(cond(ConditionType.PROGRESSING, progressing,
                               Reason.REPLICAS_STARTING if progressing else Reason.STABLE,
                               f"{counts.ready}/{desired} replicas ready"))
    return phase, conditions


def _rollout_conditions(phase: Phase, conditions: list[Condition], rollout: rollouts.Outcome,
                        counts: health.PodCounts, cond: Cond) -> tuple[Phase, list[Condition]]:
    """While a rollout drives, Progressing (and Ready) say so; Evaluating when there is a gate."""
    state = rollout.state
    if rollout.driving or state.phase in rollouts.DRIVING:
        rollout_message = f"rollout {state.phase.value}: {state.message}"
        conditions = [c for c in conditions if c.type != ConditionType.PROGRESSING]
        active = state.phase in rollouts.DRIVING
        conditions.append(cond(ConditionType.PROGRESSING, active,
                               state.reason.value if state.reason else Reason.ROLLOUT,
                               rollout_message))
        if active and phase in (Phase.READY, Phase.PROGRESSING):
            phase = Phase.PROGRESSING
            conditions = [c for c in conditions if c.type != ConditionType.READY] + [
                cond(ConditionType.READY, counts.ready >= 1, Reason.ROLLOUT_IN_PROGRESS,
                     f"{counts.ready}/{counts.total} replicas ready; {rollout_message}")]
    if rollout.rollout_spec is not None and rollout.rollout_spec.evaluation or state.eval_score is not None:
        conditions.append(evaluating_condition(state, cond))
    if state.power is not None:
        # A warning, never a block: the gate refuses most equal canaries on this suite.
        under = state.power.underpowered
        conditions.append(cond(ConditionType.SUITE_UNDERPOWERED, under,
                               Reason.SUITE_UNDERPOWERED if under else Reason.SUITE_SUFFICIENT,
                               state.power.message))
    return phase, conditions


def _scaling_conditions(decision: policy.Decision | None, model_config: ModelConfig | None,
                        cond: Cond) -> list[Condition]:
    """ScalingLimited and MetricsAvailable (with the autoscaler), ModelConfigLoaded (once read)."""
    conditions: list[Condition] = []
    if decision is not None:
        conditions.append(cond(ConditionType.SCALING_LIMITED, decision.limited,
                               decision.reason if decision.limited else Reason.WITHIN_LIMITS,
                               decision.message))
        # Metrics missing or stale: the autoscaler holds its last decision until they return.
        blind = decision.reason == policy.Reason.METRICS_UNAVAILABLE
        conditions.append(cond(ConditionType.METRICS_AVAILABLE, not blind,
                               policy.Reason.METRICS_UNAVAILABLE if blind else Reason.METRICS_READ,
                               decision.message if blind else "every ready replica's metrics read"))
    if model_config is not None:
        conditions.append(cond(ConditionType.MODEL_CONFIG_LOADED, model_config.arch is not None,
                               model_config.reason, model_config.message))
    return conditions


def _cost(decision: policy.Decision | None, *, total: int, desired: int,
          replica_usd: float) -> dict[str, Any]:
    """``status.cost``: $/hour of the pods there are, and $ per million tokens at that cost.

    The token rate is the autoscaler's, over the pods' counters of the last ``cost_window``; it is
    computed afresh at every reconcile, and with none (idle, metrics missing longer than the
    window, a fresh operator, External mode) the field is left out rather than kept from before.
    """
    doc = cost.cost_status(hourly_usd=total * replica_usd,
                           tokens_per_second=decision.tokens_per_second if decision is not None else None)
    return {**doc, "desiredHourlyUSD": round(desired * replica_usd, 4)}


def _autoscaler_status(decision: policy.Decision, old_status: Mapping[str, Any],
                       now: datetime) -> dict[str, Any]:
    queue_depth = decision.waiting / decision.ready if decision.ready else decision.waiting
    previous = (old_status.get("autoscaler") or {}).get("lastDecision") or {}
    changed = previous.get("desiredReplicas") != decision.desired_replicas or \
        not str(previous.get("reason") or "").startswith(f"{decision.reason}:")
    fresh = changed or not previous
    out: dict[str, Any] = {"lastDecision": {
        # Only a new decision gets a new time: a resync that decides the same writes nothing.
        "time": now.isoformat().replace("+00:00", "Z") if fresh else previous.get("time"),
        "desiredReplicas": decision.desired_replicas,
        "reason": f"{decision.reason}: {decision.message}" if fresh else previous.get("reason"),
        "queueDepth": round(queue_depth, 3),
        "runningRequests": round(decision.running, 3),
        "coldStartSeconds": round(decision.cold_start_seconds, 1),
    }}
    feedback = decision.objective
    if feedback is not None:
        objective: dict[str, Any] = {"capacityFactor": round(feedback.factor, 3)}
        if decision.replica_capacity is not None:
            objective["replicaCapacity"] = round(decision.replica_capacity, 3)
        if feedback.source is not None:
            objective["source"] = "Gateway" if feedback.source == "gateway" else "Pods"
        if feedback.attainment is not None:
            objective.update(attainment=round(feedback.attainment, 4), requests=feedback.requests,
                             met=feedback.met)
        out["objective"] = objective
    return out


def finish(prepared: Prepared, observed: Observed, *, metrics: Sequence[ScrapeResult] = (),
           policy_state: policy.PolicyState | None = None,
           rollout_memory: rollouts.Memory | None = None) -> Result:
    """Autoscale, drive the rollout, render the children and build the status (see the module doc)."""
    policy_state = policy_state or policy.PolicyState()
    rollout_memory = rollout_memory or rollouts.Memory()
    body = observed.body
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    now = observed.now.replace(microsecond=0)
    old_status = dict(body.get("status") or {})
    try:
        previous_conditions = {c.type: c for c in ModelDeploymentStatus.model_validate(
            old_status).conditions}
    except ValueError:
        previous_conditions = {}

    def cond(type_: ConditionType, status: bool, reason: str, message: str) -> Condition:
        return _condition(type_, status, reason, message, now=now, generation=generation,
                          previous=previous_conditions)

    events: list[EventSpec] = []
    md = prepared.md
    # Replicas are server pods: a Deployment's pods and each group's leader (Ready only with its
    # whole group); workers only count for the problems they show. A revision's workload is a
    # Deployment or, for multi-node replicas, a LeaderWorkerSet: the rollout reads both alike.
    all_pods = observed.pods
    observed = replace(observed, pods=lws.serving_pods(observed.pods),
                       deployments=(*observed.deployments, *observed.leader_worker_sets))
    if md is None or prepared.invalid is not None:
        message = f"the spec cannot be served: {prepared.invalid}"
        status = ModelDeploymentStatus(
            observed_generation=generation, phase=Phase.FAILED,
            conditions=[cond(ConditionType.READY, False, Reason.INVALID_SPEC, message),
                        cond(ConditionType.DEGRADED, True, Reason.INVALID_SPEC, message)])
        return _result(status, old_status, events=[EventSpec("Warning", Reason.INVALID_SPEC, message)],
                       policy_state=policy_state)

    # Which revision serves, and the fleet the autoscaler sizes.
    revs = revisions.revisions(md, observed.deployments)
    current = revisions.current_replicas(revs, RolloutState.from_status(old_status))
    desired, decision = _autoscale(prepared, observed, metrics, policy_state, current)
    new_policy_state = decision.state if decision is not None else policy_state
    if decision is not None and decision.desired_replicas != (policy_state.last_desired
                                                              if policy_state.last_desired is not None
                                                              else current):
        events.append(EventSpec("Normal", decision.reason, decision.message, scaling=True))

    # The rollout.
    shape = None if prepared.gpus_per_replica is None else rollouts.Shape(
        prepared.gpu_type, prepared.gpus_per_replica, prepared.tensor_parallel_size,
        prepared.startup_budget_seconds, prepared.nodes)
    lws_missing: str | None = None
    if shape is not None and shape.nodes > 1 and observed.leader_worker_set_api is not True:
        # Nothing to render a group with: say so, and leave what runs alone.
        lws_missing = (
            f"a replica spans {shape.nodes} nodes, which needs the LeaderWorkerSet controller; the API "
            f"server does not serve leaderworkersets.leaderworkerset.x-k8s.io/v1" if
            observed.leader_worker_set_api is False else
            "the operator has not yet listed leaderworkersets.leaderworkerset.x-k8s.io (its watch is "
            "starting, or lacks RBAC)")
        lws_missing += (": install LeaderWorkerSet (docs/multi-node.md), or set "
                        "spec.resources.gpu.maxNodes to 1")
    rollout = rollouts.drive(
        md_meta=meta, spec=md.spec, status=old_status, deployments=observed.deployments,
        services=observed.services, pods=observed.pods, metrics=metrics, memory=rollout_memory,
        total=desired, shape=shape, served_name=prepared.served_name or md.name, now=now,
        suite_cases=observed.suite_cases, gateways=observed.gateway_metrics)
    events += [EventSpec(e.type, e.reason.value, e.message, rollout=True) for e in rollout.events]
    # While a rollout drives, it (not the plain switch) says which revision serves.
    switching = revs.switching and not rollout.driving

    # Children.
    apply: list[dict[str, Any]] = []
    delete: list[tuple[kube.Resource, str]] = []
    # The one workload the Service (and an InferencePool) selects: stable's while a rollout runs.
    service_key = rollout.service_key if rollout.driving else \
        revisions.plain_service_key(md, revs, switching=switching)
    if shape is not None and lws_missing is None:
        apply, delete = _children(md, observed, revs, rollout, desired=desired, shape=shape,
                                  switching=switching, service_key=service_key, events=events)
    inference_condition: Condition | None = None
    if shape is not None or md.spec.inference_pool is None or not md.spec.inference_pool.enabled:
        # Rendered with the other children (never before the Service exists); removed whenever.
        pool_apply, pool_delete, inference_condition = _inference_children(
            md, observed, service_key=service_key,
            served_name=prepared.served_name or md.name, events=events, cond=cond)
        apply += pool_apply
        delete += pool_delete

    # Status.
    plan = prepared.plan
    counts = health.count_pods(observed.pods)
    problem = health.first_problem(all_pods, nodes=observed.nodes, events=observed.events,
                                   now=observed.now,
                                   startup_budget_seconds=prepared.startup_budget_seconds)
    if observed.rejected is not None:
        # Nothing the pods say matters more: the workload the spec asks for cannot be written.
        problem = health.Problem(health.Reason.CHILD_REJECTED,
                                 f"the API server refused {observed.rejected}", pod="")
    if lws_missing is not None:
        problem = health.Problem(Reason.LEADER_WORKER_SET_CRD_MISSING, lws_missing, pod="")  # type: ignore[arg-type]
    phase, conditions = _health_conditions(prepared, counts, problem, desired=desired, switching=switching,
                                           revision=md.spec.model.revision, cond=cond)
    if prepared.nodes > 1 or observed.leader_worker_sets:
        conditions.append(_group_condition(md, observed, counts, desired, cond))
    phase, conditions = _rollout_conditions(phase, conditions, rollout, counts, cond)
    conditions += _scaling_conditions(decision, observed.model_config, cond)
    if inference_condition is not None:
        conditions.append(inference_condition)
        if inference_condition.status == ConditionStatus.FALSE and not any(
                c.get("type") == ConditionType.INFERENCE_POOL_READY
                and c.get("reason") == inference_condition.reason
                for c in old_status.get("conditions") or []):
            events.append(EventSpec("Warning", inference_condition.reason, inference_condition.message))

    state = rollout.state
    machine_status = state.to_status()
    canary_doc = {k: v for k, v in machine_status["canary"].items() if v is not None}
    if state.phase in rollouts.DRIVING:
        canary_doc["summary"] = f"{state.canary_label} {state.weight}% {state.phase.value}"
    replica_usd = plan.usd_per_hour_per_replica if plan is not None and plan.fits else 0.0
    status_doc: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "replicas": counts.total,
        "readyReplicas": counts.ready,
        "desiredReplicas": desired,
        "selector": render.selector_string(md),
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                       for c in conditions],
        **revisions.serving(md, revs, rollout, switching),
        "endpoint": render.endpoint(md),
        "canary": canary_doc,
        "rolloutHistory": [{k: v for k, v in h.items() if v is not None}
                           for h in machine_status["rolloutHistory"]],
        "cost": _cost(decision, total=counts.total, desired=desired, replica_usd=replica_usd),
    }
    if plan is not None:
        status_doc["plan"] = plan.to_status()
        if prepared.gpus_per_replica is not None and not plan.fits:
            status_doc["plan"]["gpusPerReplica"] = prepared.gpus_per_replica
            status_doc["plan"]["tensorParallelSize"] = prepared.tensor_parallel_size
            status_doc["plan"]["shape"] = f"{prepared.gpus_per_replica}x any allowed GPU"
    queue_depth = None
    if decision is not None:
        status_doc["autoscaler"] = _autoscaler_status(decision, old_status, now)
        queue_depth = decision.waiting / decision.ready if decision.ready else decision.waiting
    status = ModelDeploymentStatus.model_validate(
        {k: v for k, v in status_doc.items() if v is not None})

    if plan is not None and (old_status.get("plan") or {}).get("reason") != plan.reason:
        events.append(EventSpec("Normal" if plan.fits else "Warning",
                                Reason.PLANNED if plan.fits else plan.reason_code, plan.reason))
    if problem is not None and not any(
            c.get("type") == ConditionType.DEGRADED and c.get("reason") == problem.reason
            for c in old_status.get("conditions") or []):
        events.append(EventSpec("Warning", problem.reason, problem.message))
    return replace(_result(status, old_status, events=events, policy_state=new_policy_state, apply=apply,
                           delete=delete, queue_depth=queue_depth),
                   rollout_memory=rollout.memory, start_evaluation=rollout.start_evaluation,
                   cancel_evaluation=rollout.cancel_evaluation)


def _group_condition(md: ModelDeployment, observed: Observed, counts: health.PodCounts, desired: int,
                     cond: Cond) -> Condition:
    """``GroupRecreated``: whether the LeaderWorkerSet controller recreated a group of this object
    (a pod of it failed, restarted or was deleted), from its Events, which the API server keeps for
    its event TTL (1 h by default)."""
    names = [str((o.get("metadata") or {}).get("name")) for o in observed.leader_worker_sets
             if _owned_by(o, md)]
    message = lws.recreation_message(lws.recreations(observed.group_events, names),
                                     ready=counts.ready, desired=desired)
    if message is None:
        return cond(ConditionType.GROUP_RECREATED, False, Reason.NO_GROUP_RECREATED,
                    "no group recreated in the Events the API server keeps")
    return cond(ConditionType.GROUP_RECREATED, True, Reason.GROUP_RECREATED, message)


def evaluating_condition(state: RolloutState, cond: Cond) -> Condition:
    """``Evaluating``: True while the gate runs; afterwards False with the last gate's numbers."""
    if state.phase is RolloutPhase.EVALUATING:
        return cond(ConditionType.EVALUATING, True, Reason.EVALUATION_RUNNING,
                    f"attempt {state.evaluation_attempts}: {state.message}")
    if state.eval_score is None:
        return cond(ConditionType.EVALUATING, False, Reason.NOT_EVALUATED, "no evaluation has run")
    baseline = f"{state.baseline_score:.3f}" if state.baseline_score is not None else "n/a"
    bound = f"{state.eval_lower_bound:+.3f}" if state.eval_lower_bound is not None else "n/a"
    failing = ", ".join(state.failing_case_ids[:5])
    who = state.canary_label or state.stable_label
    message = (f"revision {who}: canary {state.eval_score:.3f} vs stable "
               f"{baseline} on {state.eval_cases} cases, lower bound of the difference {bound}"
               + (f"; failing cases include {failing}" if failing else ""))
    if state.eval_canary_errors or state.eval_stable_errors:
        message += (f"; request errors left cases out: canary {state.eval_canary_errors}, "
                    f"stable {state.eval_stable_errors}")
    if state.reason is RolloutReason.EVALUATION_ERRORS:
        return cond(ConditionType.EVALUATING, False, RolloutReason.EVALUATION_ERRORS, message)
    return cond(ConditionType.EVALUATING, False, Reason.EVALUATION_COMPLETE, message)


def _result(status: ModelDeploymentStatus, old_status: Mapping[str, Any], *,
            events: list[EventSpec], policy_state: policy.PolicyState,
            apply: Sequence[dict[str, Any]] = (), delete: Sequence[tuple[kube.Resource, str]] = (),
            queue_depth: float | None = None) -> Result:
    new = dict(status.model_dump(mode="json", by_alias=True, exclude_none=True))
    unchanged = _normalise(old_status) == new
    return Result(apply=tuple(apply), delete=tuple(delete), status=None if unchanged else new,
                  effective_status=new, events=tuple(events), policy_state=policy_state,
                  queue_depth=queue_depth)


"""The rollout inside the reconcile: observed children + status + memory → machine inputs, workloads. Pure.

``modelplane.rollout.machine`` decides; this module is the adapter the reconcile core calls once per
reconcile. It

* reads the machine's state from status and the world from the observed Deployments (each carries
  its fingerprint and the snapshot of the gated fields it runs, ``render.ANNOTATION_GATED``),
* feeds ``advance`` until it has nothing more to do this tick, computing what is pure on the way:
  a ``RunAnalysis`` verdict from the window's start snapshots and this tick's scrapes, a
  ``BeginAnalysisWindow`` snapshot, the order for an evaluation (``EvaluationOrder``) the controller
  then runs (I/O),
* turns the new state into the workloads to render (stable from ITS snapshot, the canary from the
  spec, replicas by ``replicas_for``), the Deployments to remove and the workload the Service selects.

How a canary gets its share of requests: the weight is written to ``status.canary.weight``, which
the gateway (``modelplane.gateway``) follows exactly, per request; the canary runs enough replicas
for that share (``machine.canary_replicas``) beside stable's whole fleet. The ModelDeployment's
Service selects one workload only, stable's, whatever the phase, so a client that goes straight to
the Service is served by stable until the promotion, and a canary at weight 0 (Deploying,
Evaluating, paused before traffic, RollingBack) is reached by no client: the gateway sends it
nothing, the Service does not select it, and the evaluation talks to it by pod IP. The selector
changes once per rollout, when a promoted canary has its whole fleet ready (it is stable from then
on); no pod template label ever changes, so no pod restarts for it.

A promotion goes in this order: the canary scales to the whole fleet at the weight it had (the
machine keeps the last step's weight, 0 without steps); once that fleet is ready the machine sets
weight 100 and this tick writes it to status; the Service moves to the canary only in a later tick,
one that read weight 100 from status (the gateways have had it since) and finds the fleet ready;
the old stable is deleted ``DRAIN_SECONDS`` after the Service was seen on the canary.

Drain before delete: the old stable after a promotion leaves the Service ``DRAIN_SECONDS`` before it
is deleted; a rolled-back canary is deleted ``DRAIN_SECONDS`` after the phase that set its weight
to 0 began, so the gateways have seen the weight and the requests they sent it have finished.

The actions ``DeployCanary``, ``SetWeight``, ``Promote``, ``Rollback`` and ``SwitchStable`` need no
executing here: the workloads follow from the state. ``StartEvaluation`` and ``CancelEvaluation``
become orders for the controller, ``EmitEvent`` becomes Events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from modelplane import render
from modelplane.api import models
from modelplane.api.models import EvaluationSpec, EvaluatorSpec, ModelDeploymentSpec
from modelplane.controller.health import is_ready
from modelplane.metrics.promtext import MetricSnapshot, PromTextError, delta, merge, parse_snapshot
from modelplane.metrics.scrape import ScrapeResult
from modelplane.rollout.analysis import (
    AnalysisResult,
    AnalysisThresholds,
    WindowStats,
    analyse_window,
    gateway_stats,
)
from modelplane.rollout.analysis import analyse as analyse_stats
from modelplane.rollout.machine import (
    ACTIVE,
    CONTROL_ANNOTATION,
    BeginAnalysisWindow,
    CancelEvaluation,
    EmitEvent,
    EvalResult,
    Inputs,
    Phase,
    RolloutState,
    RunAnalysis,
    StartEvaluation,
    advance,
    parse_control,
    replicas_for,
)
from modelplane.rollout.spec import (
    RolloutSpec,
    gated_fields,
    revision_fingerprint,
    rollout_spec_from_api,
    spec_with_gated,
)

Obj = Mapping[str, Any]

#: Phases in which the rollout, not the plain revision switch, decides the workloads.
DRIVING = ACTIVE | {Phase.PROMOTING, Phase.ROLLING_BACK}
#: One reconcile advances the machine at most this often (each call makes one transition).
MAX_TRANSITIONS = 8
#: Failed requests in a window: real vLLM's HTTP instrumentation (``status`` "5xx", or the code).
HTTP_REQUESTS = "http_requests_total"
#: A workload leaves the Service (or, for a rolled-back canary, goes to weight 0 in status) this long
#: before it is deleted: endpoints and status propagate to every kube-proxy and gateway within a
#: second or two, and requests already sent to it finish.
DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class Shape:
    """The GPU shape a workload is rendered with (kept in its snapshot so stable keeps its own)."""

    gpu_type: str | None
    gpus_per_replica: int
    tensor_parallel_size: int
    startup_budget_seconds: int
    nodes: int = 1  #: > 1: a replica is a group of nodes (a LeaderWorkerSet, ``modelplane.lws``)


@dataclass(frozen=True)
class EvalSlot:
    """What the controller knows of the evaluation of one canary attempt."""

    revision: str
    attempt: int
    running: bool
    result: EvalResult | None = None
    error: str | None = None


@dataclass(frozen=True)
class Window:
    """The start of an analysis window: each pod's metrics then, by pod name, and each gateway
    replica's, by its /metrics URL (None: no gateway is read)."""

    revision: str
    step: int
    started: Mapping[str, MetricSnapshot] = field(default_factory=dict)
    gateways: Mapping[str, MetricSnapshot] | None = None


@dataclass(frozen=True)
class Memory:
    """What lives between reconciles in the controller's memory only (lost on restart, by design)."""

    evaluation: EvalSlot | None = None
    window: Window | None = None
    #: Since when the observed Service has selected this workload key (the drain before a delete).
    narrowed: tuple[str, datetime] | None = None


@dataclass(frozen=True)
class EvaluationOrder:
    """Run the gate for one canary attempt (the controller does it: HTTP or a Job)."""

    namespace: str
    md_name: str
    md_uid: str
    revision: str  #: the canary's fingerprint
    label: str  #: its model revision, for people
    stable_revision: str
    attempt: int
    report_name: str  #: the report ConfigMap
    job_name: str  #: the custom evaluator's Job (when ``evaluator`` is set)
    canary_url: str | None
    stable_url: str | None
    served_name: str
    suite_config_map: str | None
    suite_key: str
    evaluator: EvaluatorSpec | None
    #: The ModelDeployment (same namespace) that grades ``judge`` cases; None without one.
    judge: str | None
    min_score: float
    max_regression: float
    confidence: float
    max_error_rate: float
    concurrency: int
    timeout_seconds: float
    #: The model name the canary answers to, when not ``served_name`` (an adapter revision loaded
    #: beside the serving one on the same pod: ``controller/adapterrollout.py``).
    canary_served_name: str | None = None
    #: The kind that owns the report ConfigMap and the Job (same API group and version).
    owner_kind: str = models.KIND


@dataclass(frozen=True)
class Outcome:
    state: RolloutState
    rollout_spec: RolloutSpec | None
    driving: bool  #: the rollout decides the workloads (else the plain revision switch does)
    workloads: tuple[render.WorkloadPlan, ...] = ()
    #: The workload key the Service selects (``render.build_service``); None: every server pod.
    service_key: str | None = None
    delete: tuple[str, ...] = ()  #: Deployment names
    memory: Memory = field(default_factory=Memory)
    start_evaluation: EvaluationOrder | None = None
    cancel_evaluation: bool = False
    events: tuple[EmitEvent, ...] = ()
    analysis: AnalysisResult | None = None  #: the verdict computed this tick, if any


# --- spec helpers ---------------------------------------------------------------------------------


def snapshot_annotation(spec: ModelDeploymentSpec, shape: Shape) -> str:
    """The ``ANNOTATION_GATED`` value: gated fields and shape, canonical JSON."""
    doc: dict[str, Any] = {
        "gpuType": shape.gpu_type, "gpusPerReplica": shape.gpus_per_replica,
        "tensorParallelSize": shape.tensor_parallel_size,
        "startupBudgetSeconds": shape.startup_budget_seconds}
    if shape.nodes > 1:  # absent for one node: the snapshots written before groups stay identical
        doc["nodes"] = shape.nodes
    return json.dumps({"gated": gated_fields(spec), "shape": doc}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class _Known:
    """One Deployment as the rollout sees it."""

    name: str
    key: str
    fingerprint: str | None
    gated: Mapping[str, Any] | None
    shape: Shape | None
    ready: int
    replicas: int


def _known(dep: Obj) -> _Known:
    meta = dep.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    gated: Mapping[str, Any] | None = None
    shape: Shape | None = None
    raw = annotations.get(render.ANNOTATION_GATED)
    if raw:
        try:
            doc = json.loads(raw)
            gated = doc["gated"]
            s = doc["shape"]
            shape = Shape(s.get("gpuType"), int(s["gpusPerReplica"]), int(s["tensorParallelSize"]),
                          int(s["startupBudgetSeconds"]), int(s.get("nodes", 1)))
        except (ValueError, KeyError, TypeError):
            gated, shape = None, None
    name = str(meta.get("name"))
    return _Known(name=name, key=str(labels.get(render.LABEL_REVISION_HASH) or name.rsplit("-", 1)[-1]),
                  fingerprint=annotations.get(render.ANNOTATION_FINGERPRINT), gated=gated, shape=shape,
                  ready=int((dep.get("status") or {}).get("readyReplicas") or 0),
                  replicas=int((dep.get("spec") or {}).get("replicas") or 0))


def new_key(source: str, revision: str, fingerprint: str, taken: Mapping[str, str | None]) -> str:
    """The key of a new workload: ``revision_hash(source, revision)`` unless a Deployment of another
    fingerprint holds it (the same checkpoint with another image or args), then the fingerprint's."""
    default = render.revision_hash(source, revision)
    holder = taken.get(default, fingerprint)
    return default if holder == fingerprint else fingerprint[:10]


def workload(*, role: render.Role, spec: ModelDeploymentSpec, fingerprint: str, key: str, replicas: int,
             shape: Shape) -> render.WorkloadPlan:
    """A workload rendered from ``spec`` (already carrying the workload's gated fields)."""
    annotations = ((render.ANNOTATION_FINGERPRINT, fingerprint),
                   (render.ANNOTATION_GATED, snapshot_annotation(spec, shape)))
    return render.WorkloadPlan(
        role=role, source=spec.model.source, revision=spec.model.revision, replicas=replicas,
        gpu_type=shape.gpu_type, gpus_per_replica=shape.gpus_per_replica,
        tensor_parallel_size=shape.tensor_parallel_size, startup_budget_seconds=shape.startup_budget_seconds,
        key=key, spec=spec, annotations=annotations, nodes=shape.nodes)


# --- analysis -------------------------------------------------------------------------------------


def _snapshots(metrics: Sequence[ScrapeResult]) -> dict[str, MetricSnapshot]:
    out: dict[str, MetricSnapshot] = {}
    for m in metrics:
        if m.text is None:
            continue
        try:
            out[m.pod] = parse_snapshot(m.text)
        except PromTextError:
            continue
    return out


def server_errors(snapshot: MetricSnapshot) -> int:
    """Requests answered 5xx, from ``http_requests_total{status="5xx"|"500"…}`` (0 when not exposed)."""
    total = 0.0
    for (name, labels), value in snapshot.counters.items():
        if name == HTTP_REQUESTS and dict(labels).get("status", "").startswith("5"):
            total += value
    return int(round(total))


def analyse(window: Window, metrics: Sequence[ScrapeResult], pod_keys: Mapping[str, str], *,
            canary_key: str, stable_key: str, thresholds: AnalysisThresholds,
            gateways: Mapping[str, MetricSnapshot] | None = None,
            md: tuple[str, str] = ("", "")) -> AnalysisResult:
    """The window's verdict.

    Where gateways run and saw the canary's requests in the window, from their view (what clients
    got: the gateway's own 502/503/504 included, TTFT as the client saw it); the gateways time the
    first token of streamed requests only, so without streamed requests in the window TTFT comes
    from the pods. Otherwise from each pod's increase since the window began, summed by revision.
    """
    now = _snapshots(metrics)
    deltas: dict[str, list[MetricSnapshot]] = {canary_key: [], stable_key: []}
    for pod, snap in sorted(now.items()):
        key = pod_keys.get(pod)
        if key in deltas:
            deltas[key].append(delta(window.started.get(pod, MetricSnapshot()), snap))
    canary, stable = merge(deltas[canary_key]), merge(deltas[stable_key])
    if gateways is not None and window.gateways is not None:
        seen = merge(delta(window.gateways.get(url, MetricSnapshot()), snap)
                     for url, snap in gateways.items())
        gw_canary = gateway_stats(seen, namespace=md[0], name=md[1], revision=canary_key)
        if gw_canary.requests > 0:
            gw_stable = gateway_stats(seen, namespace=md[0], name=md[1], revision=stable_key)
            pods_canary = WindowStats.from_window(canary, errors=server_errors(canary))
            pods_stable = WindowStats.from_window(stable, errors=server_errors(stable))
            if gw_canary.ttft_p95 is None:
                gw_canary = replace(gw_canary, ttft_p95=pods_canary.ttft_p95)
            if gw_stable.ttft_p95 is None:
                gw_stable = replace(gw_stable, ttft_p95=pods_stable.ttft_p95)
            verdict = analyse_stats(gw_canary, gw_stable, thresholds)
            return replace(verdict, reason=f"{verdict.reason} (as the gateways saw it)")
    return analyse_window(canary_window=canary, canary_errors=server_errors(canary),
                          stable_window=stable, stable_errors=server_errors(stable), thresholds=thresholds)


# --- the tick -------------------------------------------------------------------------------------


def ready_pod_url(pods: Sequence[Obj], key: str | None = None) -> str | None:
    """The URL of the first Ready pod (by name) with an IP, of revision ``key`` when given."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if (key is None or labels.get(render.LABEL_REVISION_HASH) == key) and ip and is_ready(pod):
            return f"http://{ip}:{render.PORT}"
    return None


def drive(
    *,
    md_meta: Mapping[str, Any],
    spec: ModelDeploymentSpec,
    status: Mapping[str, Any],
    deployments: Sequence[Obj],
    services: Sequence[Obj],
    pods: Sequence[Obj],
    metrics: Sequence[ScrapeResult],
    memory: Memory,
    total: int,
    shape: Shape | None,
    served_name: str,
    now: datetime,
    suite_cases: int | None = None,
    gateways: Mapping[str, MetricSnapshot] | None = None,
) -> Outcome:
    """One reconcile's worth of rollout: advance the machine, then say what to run.

    ``suite_cases``: the size of the evaluation suite when the controller has read it (the machine
    checks the gate's power with it once per canary). ``gateways``: each gateway replica's metrics
    as last read (None: no gateway is read); live analysis then judges by what clients got.
    """
    rspec = rollout_spec_from_api(spec.rollout)
    desired = revision_fingerprint(spec)
    label = spec.model.revision
    annotations = md_meta.get("annotations") or {}
    control = parse_control(annotations.get(CONTROL_ANNOTATION))
    known = [_known(d) for d in deployments]
    by_fp = {k.fingerprint: k for k in known if k.fingerprint}
    pod_keys = {str(p["metadata"]["name"]): str((p["metadata"].get("labels") or {}).get(
        render.LABEL_REVISION_HASH, "")) for p in pods}
    evaluation = spec.rollout.evaluation
    thresholds = AnalysisThresholds.from_api(evaluation.analysis if evaluation is not None else None)

    state = RolloutState.from_status(status)
    #: The weight the gateways have had since the last tick wrote status (the canary it was for).
    written = (state.canary_revision, state.weight)
    events: list[EmitEvent] = []
    order: EvaluationOrder | None = None
    cancel = False
    slot = memory.evaluation
    window = memory.window
    verdict: AnalysisResult | None = None
    pending_verdict: AnalysisResult | None = None
    started_now: set[str] = set()

    def key_of(fp: str | None) -> str | None:
        k = by_fp.get(fp or "")
        return k.key if k else None

    for _ in range(MAX_TRANSITIONS):
        canary = by_fp.get(state.canary_revision or "")
        stable = by_fp.get(state.stable_revision or "")
        if state.phase is Phase.PROMOTING:
            others = [k for k in known if k.fingerprint != state.canary_revision]
            canary_present = bool(others)
            live = state.canary_revision if canary is not None and canary.ready >= 1 and not others \
                else state.stable_revision
        else:
            canary_present = canary is not None
            live = state.stable_revision if stable is not None and stable.ready >= 1 else None
        current = slot is not None and slot.revision == state.canary_revision
        this_attempt = current and slot is not None and slot.attempt == state.evaluation_attempts
        inputs = Inputs(
            desired_revision=desired, desired_label=label, total_replicas=total,
            canary_present=canary_present, canary_ready_replicas=canary.ready if canary else 0,
            stable_revision_live=live,
            evaluation=slot.result if this_attempt and slot is not None and not slot.running else None,
            evaluation_error=slot.error if this_attempt and slot is not None and not slot.running else None,
            evaluation_running=(state.canary_revision in started_now) or bool(
                current and slot is not None and slot.running),
            analysis=pending_verdict,
            analysis_window_open=window is not None and window.revision == state.canary_revision
            and window.step == state.step,
            control=control,
            suite_cases=suite_cases,
        )
        pending_verdict = None
        new, actions = advance(state, inputs, rspec, now)
        for action in actions:
            if isinstance(action, StartEvaluation):
                started_now.add(action.revision)
                slot = EvalSlot(action.revision, action.attempt, running=True)
                order = evaluation_order(md_meta=md_meta, evaluation=evaluation, rspec=rspec,
                               state=new, action=action, pods=pods, served_name=served_name,
                               canary_key=key_of(action.revision), stable_key=key_of(new.stable_revision))
                cancel = False
            elif isinstance(action, CancelEvaluation):
                cancel, order, slot = True, None, None
            elif isinstance(action, BeginAnalysisWindow):
                window = Window(new.canary_revision or "", action.step, _snapshots(metrics),
                                None if gateways is None else dict(gateways))
            elif isinstance(action, RunAnalysis):
                if window is None:
                    window = Window(new.canary_revision or "", action.step)
                verdict = analyse(window, metrics, pod_keys, canary_key=key_of(new.canary_revision) or "",
                                  stable_key=key_of(new.stable_revision) or "", thresholds=thresholds,
                                  gateways=gateways,
                                  md=(str(md_meta.get("namespace") or ""), str(md_meta.get("name") or "")))
                pending_verdict = verdict
            elif isinstance(action, EmitEvent):
                events.append(action)
        state = new
        if not actions:
            break

    slot, order, window, cancel = after_tick(state.phase, slot, order, window, cancel)
    new_memory = Memory(evaluation=slot, window=window)

    driving = state.phase in DRIVING or (
        state.stable_revision is not None and state.stable_revision != desired
        and state.stable_revision in by_fp)
    outcome = Outcome(state=state, rollout_spec=rspec, driving=driving, memory=new_memory,
                      start_evaluation=order, cancel_evaluation=cancel, events=tuple(events),
                      analysis=verdict)
    if not driving or shape is None:
        return outcome
    return _render(outcome, known=known, by_fp=by_fp, spec=spec, desired=desired, total=total,
                   shape=shape, services=services, narrowed=memory.narrowed, now=now, written=written)


def after_tick(phase: Phase, slot: EvalSlot | None, order: EvaluationOrder | None, window: Window | None,
               cancel: bool) -> tuple[EvalSlot | None, EvaluationOrder | None, Window | None, bool]:
    """What of the evaluation and the analysis window outlives a tick that ended in ``phase``."""
    if phase is not Phase.EVALUATING:
        # The gate is decided (or skipped): whatever still runs for it is no longer wanted.
        cancel = cancel or (slot is not None and slot.running)
        slot, order = None, None
    if phase is not Phase.ANALYZING:
        window = None
    return slot, order, window, cancel


def suite_to_count(spec: ModelDeploymentSpec, status: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The suite ConfigMap and key whose size the machine's power check needs now, or None.

    Only a built-in suite (a custom evaluator reports aggregates, there is no paired test), and only
    while a rollout can be admitted or is running: the desired revision is not the stable one, not
    the rejected one, or the canary is still Deploying or Evaluating.
    """
    evaluation = spec.rollout.evaluation
    if evaluation is None or evaluation.suite_ref is None or evaluation.evaluator is not None:
        return None
    status = status or {}
    canary = status.get("canary") or {}
    stable = (status.get("stable") or {}).get("fingerprint")
    desired = revision_fingerprint(spec)
    waiting = canary.get("phase") in (Phase.DEPLOYING.value, Phase.EVALUATING.value)
    if not waiting and (stable is None or desired in (stable, canary.get("rejectedFingerprint"))):
        return None
    return evaluation.suite_ref.config_map, evaluation.suite_ref.key


def evaluation_order(*, md_meta: Mapping[str, Any], evaluation: EvaluationSpec | None,
                     rspec: RolloutSpec | None, state: RolloutState, action: StartEvaluation,
                     pods: Sequence[Obj], served_name: str, canary_key: str | None,
                     stable_key: str | None) -> EvaluationOrder:
    # The machine starts an evaluation only when one is configured, so both are set here.
    assert evaluation is not None and rspec is not None
    name = str(md_meta.get("name"))
    suite = evaluation.suite_ref
    fp8 = action.revision[:8]
    return EvaluationOrder(
        namespace=str(md_meta.get("namespace")), md_name=name, md_uid=str(md_meta.get("uid") or ""),
        revision=action.revision, label=state.canary_label or action.revision,
        stable_revision=state.stable_revision or "", attempt=action.attempt,
        report_name=render.workload_name(name, f"eval-{fp8}"),
        job_name=render.workload_name(name, f"eval-{fp8}-{action.attempt}"),
        canary_url=ready_pod_url(pods, canary_key) if canary_key else None,
        stable_url=ready_pod_url(pods, stable_key) if stable_key else None,
        served_name=served_name,
        suite_config_map=suite.config_map if suite is not None else None,
        suite_key=suite.key if suite is not None else models.SuiteRef.model_fields["key"].default,
        evaluator=evaluation.evaluator,
        judge=evaluation.judge.model_deployment if evaluation.judge is not None else None,
        min_score=rspec.min_score, max_regression=rspec.max_regression, confidence=rspec.confidence,
        max_error_rate=rspec.max_error_rate,
        concurrency=evaluation.concurrency,
        timeout_seconds=float(evaluation.timeout_seconds),
    )


def _render(outcome: Outcome, *, known: Sequence[_Known], by_fp: Mapping[str, _Known],
            spec: ModelDeploymentSpec, desired: str, total: int, shape: Shape,
            services: Sequence[Obj], narrowed: tuple[str, datetime] | None, now: datetime,
            written: tuple[str | None, int] = (None, 0)) -> Outcome:
    state = outcome.state
    stable_n, canary_n = replicas_for(state, total)
    taken = {k.key: k.fingerprint for k in known}
    plans: list[render.WorkloadPlan] = []
    keep: set[str] = set()

    def from_known_or_spec(fp: str) -> tuple[ModelDeploymentSpec, Shape, str] | None:
        k = by_fp.get(fp)
        if k is not None and k.gated is not None:
            return spec_with_gated(spec, k.gated), k.shape or shape, k.key
        if fp == desired:
            key = k.key if k is not None else new_key(spec.model.source, spec.model.revision, fp, taken)
            return spec, shape, key
        return None

    canary_plan: render.WorkloadPlan | None = None
    has_canary = state.canary_revision is not None and state.phase in ACTIVE | {Phase.PROMOTING}
    if has_canary and state.canary_revision:
        found = from_known_or_spec(state.canary_revision)
        if found is not None:
            spec_c, shape_c, key_c = found
            canary_plan = workload(role=render.Role.CANARY, spec=spec_c,
                                   fingerprint=state.canary_revision, key=key_c, replicas=canary_n,
                                   shape=shape_c)
            taken = {**taken, key_c: state.canary_revision}
    stable_plan: render.WorkloadPlan | None = None
    if state.stable_revision:
        found = from_known_or_spec(state.stable_revision)
        if found is not None:
            spec_s, shape_s, key_s = found
            replicas = stable_n
            if state.phase is Phase.PROMOTING:
                k = by_fp.get(state.stable_revision)
                replicas = max(k.replicas if k else 0, stable_n if state.weight < 100 else 0)
            stable_plan = workload(role=render.Role.STABLE, spec=spec_s,
                                   fingerprint=state.stable_revision, key=key_s, replicas=replicas,
                                   shape=shape_s)

    # The Service selects one workload, stable's, whatever the weight: a canary takes requests only
    # through the gateway, by status.canary.weight. A promoted canary gets the Service once the
    # gateways have it at 100% (read back from status: written by an earlier tick) and its whole
    # fleet is ready; once moved, the Service stays on it (it is stable from then on). No stable to
    # render (its Deployment gone without a snapshot): every server pod, as without a rollout.
    service_key = stable_plan.workload_key if stable_plan is not None else None
    observed_key = _observed_service_key(services)
    if state.phase is Phase.PROMOTING and canary_plan is not None:
        found_canary = by_fp.get(state.canary_revision or "")
        ready = found_canary.ready if found_canary is not None else 0
        at_100 = written == (state.canary_revision, 100)
        if at_100 and (ready >= max(total, 1) or observed_key == canary_plan.workload_key):
            service_key = canary_plan.workload_key
    since = narrowed[1] if narrowed is not None and narrowed[0] == observed_key else now
    drained = observed_key is not None and (now - since).total_seconds() >= DRAIN_SECONDS
    # The gateways learn the weight from status, written with this tick: a rolled-back canary keeps
    # its pods until they have had DRAIN_SECONDS to see weight 0 and let in-flight requests finish.
    phase_age = (now - state.phase_since).total_seconds() if state.phase_since is not None else DRAIN_SECONDS
    weight_drained = phase_age >= DRAIN_SECONDS

    if canary_plan is not None:
        plans.append(canary_plan)
        keep.add(canary_plan.workload_key)
    if stable_plan is not None and not (state.phase is Phase.PROMOTING and drained
                                        and observed_key == (canary_plan.workload_key if canary_plan
                                                              else None)):
        plans.append(stable_plan)
        keep.add(stable_plan.workload_key)
    delete = tuple(sorted(
        k.name for k in known
        if k.key not in keep and (k.ready == 0 or (
            drained and observed_key != k.key
            and (weight_drained or k.fingerprint != state.canary_revision)))))
    memory = replace(outcome.memory, narrowed=(observed_key, since) if observed_key is not None else None)
    return replace(outcome, workloads=tuple(plans), service_key=service_key, delete=delete, memory=memory)


def _observed_service_key(services: Sequence[Obj]) -> str | None:
    for svc in services:
        selector = (svc.get("spec") or {}).get("selector") or {}
        if render.LABEL_REVISION_HASH in selector:
            return str(selector[render.LABEL_REVISION_HASH])
    return None

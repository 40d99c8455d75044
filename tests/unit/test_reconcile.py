"""The pure reconcile core, case by case: what is applied, deleted, and what status says."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import pytest

from modelplane import render
from modelplane.api.models import ConditionType
from modelplane.autoscaler.policy import PodMetrics
from modelplane.controller import reconcile
from modelplane.controller.reconcile import APPLIED_HASH, ModelConfig, Observed
from modelplane.metrics.scrape import ScrapeResult

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def md(revision: str = "rev-a", **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": revision},
        "engine": {"maxModelLen": 8192},
        "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "uid-1", "generation": 2},
            "spec": spec}


def run(body: dict[str, Any], **observed: Any) -> reconcile.Result:
    obs = Observed(body=body, now=NOW, monotonic=1000.0, **observed)
    return reconcile.finish(reconcile.prepare(obs, prices={}), obs)


class Children(TypedDict):
    deployments: tuple[dict[str, Any], ...]
    services: tuple[dict[str, Any], ...]
    pdbs: tuple[dict[str, Any], ...]


def materialise(result: reconcile.Result, *, ready: int) -> Children:
    """The children as the API server would hold them after applying ``result``."""
    deployments, services, pdbs = [], [], []
    for child in result.apply:
        obj = copy.deepcopy(child)
        if obj["kind"] == "Deployment":
            obj["status"] = {"readyReplicas": ready, "replicas": obj["spec"]["replicas"]}
            deployments.append(obj)
        elif obj["kind"] == "Service":
            services.append(obj)
        elif obj["kind"] == "PodDisruptionBudget":
            pdbs.append(obj)
    return Children(deployments=tuple(deployments), services=tuple(services), pdbs=tuple(pdbs))


def pod(name: str, *, ready: bool, revision_hash: str = "x", node: str | None = "kwok-l40s-0",
        unschedulable: str | None = None, gpus: int = 1) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": unschedulable})
    limits = {"nvidia.com/gpu": str(gpus)}
    spec: dict[str, Any] = {"containers": [{"name": "vllm", "resources": {"limits": limits}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": {"modelplane.dev/revision-hash": revision_hash},
                         "creationTimestamp": "2026-11-26T11:59:00Z"},
            "spec": spec,
            "status": {"phase": "Running" if node else "Pending", "conditions": conds,
                       "podIP": "127.64.0.5" if node else None,
                       "startTime": (NOW - timedelta(seconds=30)).isoformat()}}


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_new_model_deployment_gets_a_deployment_service_and_pdb() -> None:
    result = run(md())
    assert [(c["kind"], c["metadata"]["name"]) for c in result.apply] == [
        ("Deployment", render.deployment_name("chat", "hf://meta-llama/Llama-3.1-8B-Instruct", "rev-a")),
        ("Service", "chat"), ("PodDisruptionBudget", "chat")]
    assert all(APPLIED_HASH in c["metadata"]["annotations"] for c in result.apply)
    assert result.apply[0]["spec"]["replicas"] == 1
    assert result.status is not None
    assert result.status["phase"] == "Progressing"
    assert result.status["observedGeneration"] == 2
    assert result.status["plan"]["shape"] == "1x nvidia-l40s"
    assert result.status["cost"]["desiredHourlyUSD"] == pytest.approx(1.91)
    assert {e.reason for e in result.events} >= {"Applied", "Planned"}


def test_an_unchanged_world_makes_no_write() -> None:
    first = run(md())
    children = materialise(first, ready=1)
    pods = (pod("p1", ready=True),)
    second = run(md(), pods=pods, **children)
    body = md()
    body["status"] = second.effective_status
    third = run(body, pods=pods, **children)
    assert third.apply == ()
    assert third.delete == ()
    assert third.status is None
    assert second.effective_status["phase"] == "Ready"


def test_a_revision_change_starts_the_new_deployment_and_keeps_the_old_until_ready() -> None:
    old = materialise(run(md("rev-a")), ready=1)
    result = run(md("rev-b"), pods=(pod("old-1", ready=True),), **old)
    new_name = render.deployment_name("chat", "hf://meta-llama/Llama-3.1-8B-Instruct", "rev-b")
    assert [c["metadata"]["name"] for c in result.apply if c["kind"] == "Deployment"] == [new_name]
    assert result.delete == ()
    assert result.status is not None
    assert cond(result.status, "Progressing")["reason"] == "SwitchingRevision"
    assert result.status["servingRevision"] == "rev-a"
    assert result.status["desiredRevisionLive"] is False


def test_once_the_new_revision_is_ready_the_old_deployment_is_deleted() -> None:
    old = materialise(run(md("rev-a")), ready=1)
    new = materialise(run(md("rev-b")), ready=1)
    both = {"deployments": old["deployments"] + new["deployments"], "services": new["services"],
            "pdbs": new["pdbs"]}
    result = run(md("rev-b"), pods=(pod("new-1", ready=True),), **both)
    assert [name for _, name in result.delete] == [old["deployments"][0]["metadata"]["name"]]
    assert result.status is not None and result.status["servingRevision"] == "rev-b"


def test_unschedulable_gpu_pods_make_the_deployment_degraded_with_insufficient_gpu() -> None:
    nodes = ({"metadata": {"name": "kwok-l40s-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
              "status": {"allocatable": {"nvidia.com/gpu": "4"}}},)
    body = md(resources={"gpu": {"count": 8, "types": ["nvidia-l40s"]}})
    result = run(body, nodes=nodes,
                 pods=(pod("p1", ready=False, node=None, gpus=8,
                           unschedulable="0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),))
    assert result.status is not None
    assert result.status["phase"] == "Degraded"
    degraded = cond(result.status, "Degraded")
    assert degraded["reason"] == "InsufficientGPU"
    assert "asks for 8" in degraded["message"] and "offers 4" in degraded["message"]
    assert any(e.type == "Warning" and e.reason == "InsufficientGPU" for e in result.events)
    # A fixed count is rendered even when the planner doubts it: the scheduler has the last word.
    assert any(c["kind"] == "Deployment" for c in result.apply)


L4_NODE = {"metadata": {"name": "kwok-l4-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
           "status": {"allocatable": {"nvidia.com/gpu": "1"}}}


def _container(result: reconcile.Result) -> dict[str, Any]:
    deployment = next(c for c in result.apply if c["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def _products(result: reconcile.Result) -> list[str]:
    deployment = next(c for c in result.apply if c["kind"] == "Deployment")
    terms = (deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
             ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"])
    return [v for t in terms for e in t["matchExpressions"] if e["key"] == "nvidia.com/gpu.product"
            for v in e["values"]]


def test_a_gpu_type_without_nodes_is_planned_and_its_pod_waits_for_a_node() -> None:
    """Issue 14: with the H100 pool scaled to zero and one L4 node, Llama 3.3 70B got NoAllowedGPUType
    and no pod, so the cluster autoscaler never saw a pod to scale the pool up for."""
    body = md(model={"source": "hf://meta-llama/Llama-3.3-70B-Instruct", "revision": "main"},
              resources={"gpu": {"count": "auto", "types": ["nvidia-h100-80gb"]}})
    result = run(body, nodes=(L4_NODE,))
    assert result.status is not None
    assert result.status["plan"]["shape"] == "2x nvidia-h100-80gb", result.status["plan"]["reason"]
    assert _products(result) == ["NVIDIA-H100-80GB-HBM3"]
    # The pod that the autoscaler sees: pending, no node of its type; the condition says so.
    no_match = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    waiting = pod("p1", ready=False, node=None, gpus=2, unschedulable=no_match)
    deployment = next(c for c in result.apply if c["kind"] == "Deployment")
    waiting["spec"]["affinity"] = deployment["spec"]["template"]["spec"]["affinity"]
    result = run(body, nodes=(L4_NODE,), pods=(waiting,), **materialise(result, ready=0))
    assert result.status is not None
    degraded = cond(result.status, "Degraded")
    assert degraded["reason"] == "WaitingForGPUNode"
    assert "nvidia-h100-80gb" in degraded["message"] and "scaled to zero" in degraded["message"]
    assert result.status["plan"]["shape"] == "2x nvidia-h100-80gb"


def test_hinted_precision_changes_the_plan_not_the_pod_args_or_the_revision() -> None:
    """Issue 14: spec.model.hints.precision is for planning; engine.quantization is what adds a flag."""
    source = {"source": "s3://models/acme-70b", "revision": "main"}
    hints = {"parametersBillions": 70.6, "numLayers": 80, "hiddenSize": 8192, "numAttentionHeads": 64,
             "numKeyValueHeads": 8}
    types = {"gpu": {"count": "auto", "types": ["nvidia-h100-80gb"]}}
    plain = run(md(model={**source, "hints": hints}, resources=types))
    fp8 = run(md(model={**source, "hints": {**hints, "precision": "fp8"}}, resources=types))
    assert plain.status is not None and fp8.status is not None
    assert (plain.status["plan"]["shape"], fp8.status["plan"]["shape"]) == (
        "2x nvidia-h100-80gb", "1x nvidia-h100-80gb")
    def args_but_tp(result: reconcile.Result) -> list[str]:
        args = list(_container(result)["args"])
        at = args.index("--tensor-parallel-size")
        return args[:at] + args[at + 2:]

    assert args_but_tp(fp8) == args_but_tp(plain)
    assert "--quantization" not in args_but_tp(fp8)
    assert fp8.status["stable"]["fingerprint"] == plain.status["stable"]["fingerprint"]


def test_a_model_no_allowed_gpu_can_hold_fails_without_creating_pods() -> None:
    body = md(model={"source": "hf://deepseek-ai/DeepSeek-R1", "revision": "main"},
              resources={"gpu": {"count": "auto", "types": ["nvidia-l4"]}})
    result = run(body)
    assert result.apply == ()
    assert result.status is not None and result.status["phase"] == "Failed"
    assert cond(result.status, "Ready")["status"] == "False"
    assert cond(result.status, "Degraded")["reason"] in ("NoSingleNodeFits", "NoAllowedGPUType")


@pytest.mark.parametrize(
    ("spec_field", "value", "replicas"),
    [("replicas", 3, 3), ("replicas", 0, 0)],
    ids=["external-3", "external-0"],
)
def test_external_mode_follows_spec_replicas(spec_field: str, value: int, replicas: int) -> None:
    body = md(scaling={"mode": "External", "minReplicas": 0, "maxReplicas": 5})
    body["spec"][spec_field] = value
    result = run(body)
    deployment = next(c for c in result.apply if c["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    assert result.status is not None and result.status["desiredReplicas"] == replicas
    assert not any(c["type"] == "ScalingLimited" for c in result.status["conditions"])


def test_an_object_that_fails_validation_gets_invalid_spec_and_nothing_else() -> None:
    body = md()
    body["spec"]["model"]["source"] = "ftp://nowhere"
    result = run(body)
    assert result.apply == () and result.delete == ()
    assert result.status is not None and result.status["phase"] == "Failed"
    assert cond(result.status, "Ready")["reason"] == "InvalidSpec"
    assert "spec.model.source" in cond(result.status, "Ready")["message"] or \
        "model.source" in cond(result.status, "Ready")["message"]


def test_condition_transition_time_only_moves_when_the_status_flips() -> None:
    first = run(md())
    body = md()
    body["status"] = first.effective_status
    later = Observed(body=body, now=NOW + timedelta(minutes=5), monotonic=1300.0)
    second = reconcile.finish(reconcile.prepare(later, prices={}), later)
    before = cond(first.effective_status, "Ready")["lastTransitionTime"]
    assert cond(second.effective_status, "Ready")["lastTransitionTime"] == before


def test_a_steady_autoscaler_decision_keeps_its_time_so_a_resync_writes_nothing() -> None:
    first = run(md())
    children = materialise(first, ready=1)
    pods = (pod("p1", ready=True),)
    body = md()
    body["status"] = run(md(), pods=pods, **children).effective_status
    later = Observed(body=body, now=NOW + timedelta(minutes=1), monotonic=1060.0, pods=pods,
                     **children)
    again = reconcile.finish(reconcile.prepare(later, prices={}), later)
    assert again.status is None


def test_the_autoscaler_status_shows_the_cold_start_it_learnt_from_a_pod_seen_starting() -> None:
    first = run(md())
    children = materialise(first, ready=1)
    ready_pod = pod("p1", ready=True)
    new = pod("p2", ready=False)
    before = Observed(body=md(), now=NOW, monotonic=1000.0, pods=(ready_pod, new), **children)
    seen = reconcile.finish(reconcile.prepare(before, prices={}), before)
    assert seen.effective_status["autoscaler"]["lastDecision"]["coldStartSeconds"] == 90.0  # the prior
    # p2 (created 11:59:00) turned Ready at 11:59:40: a 40 s cold start. p1 was Ready at first sight.
    now_ready = pod("p2", ready=True)
    now_ready["status"]["conditions"][0]["lastTransitionTime"] = "2026-11-26T11:59:40Z"
    ready_pod["status"]["conditions"][0]["lastTransitionTime"] = "2026-11-26T11:59:50Z"
    after = Observed(body=md(), now=NOW + timedelta(seconds=10), monotonic=1010.0,
                     pods=(ready_pod, now_ready), **children)
    got = reconcile.finish(reconcile.prepare(after, prices={}), after, policy_state=seen.policy_state)
    assert got.policy_state.cold_starts == (40.0,)
    assert got.effective_status["autoscaler"]["lastDecision"]["coldStartSeconds"] == 40.0


@pytest.mark.parametrize(("rejected", "degraded_reason", "event"), [
    (None, "Healthy", False),
    ("Deployment chat-abc: spec.template.spec.containers[0].resources.requests: Invalid value: "
     "\"-2\": must be greater than or equal to 0", "ChildRejected", True),
])
def test_a_child_the_api_server_refuses_is_shown_as_degraded(
        rejected: str | None, degraded_reason: str, event: bool) -> None:
    first = run(md())
    result = run(md(), **materialise(first, ready=1), rejected=rejected)
    assert result.status is not None
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == degraded_reason
    assert (degraded["status"] == "True") is (rejected is not None)
    if rejected is not None:
        assert rejected in degraded["message"]
        assert result.status["phase"] == "Degraded"
    warned = [e for e in result.events if e.reason == "ChildRejected"]
    assert bool(warned) is event
    # Once said, it is not said again: the next reconcile sees the condition in status.
    again = run({**md(), "status": result.status}, **materialise(first, ready=1), rejected=rejected)
    assert not [e for e in again.events if e.reason == "ChildRejected"]


def test_every_condition_written_is_a_documented_condition_type() -> None:
    """The status lists its condition types from api.models.ConditionType (and the CRD documents each
    from there), so every type the core writes must be one of them."""
    body = md(rollout={"evaluation": {"suiteRef": {"configMap": "evals"}}},
              inferencePool={"endpointPicker": {"service": "chat-epp", "port": 9002}})
    result = run(body, model_config=ModelConfig(arch=None, reason="NotFound", message="no config.json"),
                 inference_pool_api=True, http_route_api=True)
    assert result.status is not None
    written = [c["type"] for c in result.status["conditions"]]
    # SuiteUnderpowered appears only once the suite's size is known (test_rollout_machine covers it).
    # GroupRecreated only with multi-node replicas (test_multinode_reconcile covers it).
    left_out = (ConditionType.SUITE_UNDERPOWERED, ConditionType.GROUP_RECREATED)
    assert sorted(written) == sorted(t.value for t in ConditionType if t not in left_out)


@dataclass(frozen=True)
class Load:
    """From ``at`` seconds on, ``pods`` ready pods each generate ``rate`` tokens/s."""

    at: float
    pods: int
    rate: float


# (phases of load, when the last phase starts): status.cost must follow the counters within 60 s.
COST_CASES: dict[str, tuple[Load, ...]] = {
    "steady": (Load(0, 2, 500),),
    "the rate doubles": (Load(0, 2, 500), Load(130, 2, 1000)),
    "the rate falls": (Load(0, 3, 900), Load(130, 3, 300)),
    # Demand steady, one of three replicas removed: a token costs a third less.
    "a replica leaves": (Load(0, 3, 400), Load(130, 2, 600)),
    "it goes idle": (Load(0, 2, 500), Load(130, 2, 0)),
}


def _cost_run(phases: tuple[Load, ...], until: float) -> list[tuple[float, dict[str, Any]]]:
    """Reconcile every 2 s (the resync beat) with scraped counters; (time, status.cost) after each."""
    children = materialise(run(md()), ready=1)
    body, state, out = md(), None, []
    counters: dict[str, float] = {}
    t = 0.0
    while t <= until:
        load = [p for p in phases if p.at <= t][-1]
        names = [f"p{i}" for i in range(load.pods)]
        pods = tuple(pod(n, ready=True) for n in names)
        metrics = [ScrapeResult(n, PodMetrics(waiting=0, running=10, kv_cache_usage=0.1,
                                              generation_tokens=counters.get(n, 0.0),
                                              scraped_at=1000.0 + t), None, None) for n in names]
        # The Deployment asks for the pods there are (as after the autoscaler's last decision).
        deployment = copy.deepcopy(children["deployments"][0])
        deployment["spec"]["replicas"] = deployment["status"]["replicas"] = load.pods
        obs = Observed(body=body, now=NOW + timedelta(seconds=t), monotonic=1000.0 + t, pods=pods,
                       deployments=(deployment,), services=children["services"], pdbs=children["pdbs"])
        result = reconcile.finish(reconcile.prepare(obs, prices={}), obs, metrics=metrics,
                                  policy_state=state)
        state, body = result.policy_state, {**md(), "status": result.effective_status}
        out.append((t, result.effective_status["cost"]))
        for n in names:
            counters[n] = counters.get(n, 0.0) + load.rate * 2
        t += 2
    return out


@pytest.mark.parametrize("phases", list(COST_CASES.values()), ids=list(COST_CASES))
def test_cost_per_million_tokens_follows_the_counters_within_the_window(phases: tuple[Load, ...]) -> None:
    window = 60
    for t, cost in _cost_run(phases, until=phases[-1].at + 2 * window):
        load = [p for p in phases if p.at <= t][-1]
        if t < load.at + window and t >= window:
            continue  # the window still holds the previous rate: no claim
        if t < window:
            assert "usdPerMillionTokens" not in cost, (t, cost)  # not measured for a full window yet
            continue
        assert cost["hourlyUSD"] == pytest.approx(load.pods * 1.91)
        want = cost["hourlyUSD"] / (load.pods * load.rate * 3600) * 1e6 if load.rate else None
        assert cost.get("usdPerMillionTokens") == (pytest.approx(want, abs=1e-4) if want else None), (t, cost)

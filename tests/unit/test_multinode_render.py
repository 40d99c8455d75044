"""Multi-node replicas rendered as a LeaderWorkerSet: the group, the leader, the workers, the labels
that keep workers away from the Service and the gateway, and the leader's probes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from modelplane import lws, render
from modelplane.api.models import ModelDeployment
from modelplane.gateway.table import SERVER_SELECTOR
from modelplane.render import Manifest, Role, WorkloadPlan

R1 = "hf://deepseek-ai/DeepSeek-R1"


def _md(spec: dict[str, Any] | None = None) -> ModelDeployment:
    body = {"model": {"source": R1}, "resources": {"gpu": {"maxNodes": 2}}, **(spec or {})}
    return ModelDeployment.parse({"metadata": {"name": "r1", "namespace": "team-a", "uid": "uid-1"},
                                  "spec": body})


def _plan(md: ModelDeployment, **overrides: Any) -> WorkloadPlan:
    plan = WorkloadPlan(role=Role.STABLE, source=md.spec.model.source, revision=md.spec.model.revision,
                        replicas=1, gpu_type="nvidia-h100-80gb", gpus_per_replica=16, tensor_parallel_size=8,
                        startup_budget_seconds=4680, nodes=2)
    return replace(plan, **overrides)


def _lws(spec: dict[str, Any] | None = None, **overrides: Any) -> Manifest:
    md = _md(spec)
    return lws.build_leader_worker_set(md, md.spec, _plan(md, **overrides))


def _template(obj: Manifest, which: str) -> dict[str, Any]:
    template: dict[str, Any] = obj["spec"]["leaderWorkerTemplate"][f"{which}Template"]
    return template


def _container(obj: Manifest, which: str) -> dict[str, Any]:
    container: dict[str, Any] = _template(obj, which)["spec"]["containers"][0]
    return container


def _flag(obj: Manifest, which: str, flag: str) -> str | None:
    args = _container(obj, which)["args"]
    return str(args[args.index(flag) + 1]) if flag in args else None


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any], Callable[[Manifest], bool]]] = [
    ("kind", None, {}, lambda o: (o["apiVersion"], o["kind"]) == ("leaderworkerset.x-k8s.io/v1",
                                                                  "LeaderWorkerSet")),
    ("groups-are-replicas", None, {"replicas": 3}, lambda o: o["spec"]["replicas"] == 3),
    ("size-is-nodes", None, {}, lambda o: o["spec"]["leaderWorkerTemplate"]["size"] == 2),
    ("size-four", None, {"nodes": 4, "gpus_per_replica": 32},
     lambda o: o["spec"]["leaderWorkerTemplate"]["size"] == 4 and _flag(o, "leader", "--nnodes") == "4"),
    ("recreate-group", None, {},
     lambda o: o["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"),
    # LeaderReady would wait for a leader that is Ready only once its workers have joined.
    ("workers-start-with-the-leader", None, {}, lambda o: o["spec"]["startupPolicy"] == "LeaderCreated"),
    ("one-extra-group-at-a-time", None, {},
     lambda o: o["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxUnavailable": 0,
                                                                               "maxSurge": 1}),
    ("leader-serves", None, {},
     lambda o: _container(o, "leader")["command"] == ["vllm", "serve"]
     and _container(o, "leader")["args"][0] == "deepseek-ai/DeepSeek-R1"
     and _container(o, "leader")["ports"][0]["containerPort"] == render.PORT),
    ("tp-within-a-node", None, {}, lambda o: _flag(o, "leader", "--tensor-parallel-size") == "8"
     and _flag(o, "worker", "--tensor-parallel-size") == "8"),
    ("pp-across-nodes", None, {}, lambda o: _flag(o, "leader", "--pipeline-parallel-size") == "2"
     and _flag(o, "worker", "--pipeline-parallel-size") == "2"),
    ("leader-rank-0", None, {}, lambda o: _flag(o, "leader", "--node-rank") == "0"
     and "--headless" not in _container(o, "leader")["args"]),
    ("worker-rank-from-lws", None, {},
     lambda o: _flag(o, "worker", "--node-rank") == "$(LWS_WORKER_INDEX)"
     and "--headless" in _container(o, "worker")["args"]),
    ("leader-address", None, {}, lambda o: _flag(o, "leader", "--master-addr") == "$(LWS_LEADER_ADDRESS)"
     and _flag(o, "worker", "--master-addr") == "$(LWS_LEADER_ADDRESS)"),
    ("gpus-per-pod-are-one-node", None, {},
     lambda o: all(_container(o, w)["resources"]["limits"]["nvidia.com/gpu"] == "8"
                   for w in ("leader", "worker"))),
    ("both-on-the-planned-type", None, {},
     lambda o: all(str(_template(o, w)["spec"]["affinity"]).count("NVIDIA-H100-80GB-HBM3") == 1
                   for w in ("leader", "worker"))),
    ("leader-startup-probe-is-the-groups-budget", None, {"startup_budget_seconds": 4680},
     lambda o: _container(o, "leader")["startupProbe"]["failureThreshold"]
     == math.ceil(4680 / render.PROBE_PERIOD_SECONDS)),
    ("leader-readiness-and-liveness", None, {},
     lambda o: _container(o, "leader")["readinessProbe"]["httpGet"]["path"] == "/health"
     and "livenessProbe" in _container(o, "leader")),
    ("worker-headless-no-port-no-probe", None, {},
     lambda o: not {"ports", "startupProbe", "readinessProbe", "livenessProbe"}
     & set(_container(o, "worker"))),
    ("group-flags-before-extra-args", {"engine": {"extraArgs": ["--enforce-eager"]}}, {},
     lambda o: _container(o, "leader")["args"][-1] == "--enforce-eager"
     and _container(o, "worker")["args"][-1] == "--enforce-eager"),
    ("shared-memory-on-both", None, {},
     lambda o: all({"name": "dshm", "mountPath": "/dev/shm"} in _container(o, w)["volumeMounts"]
                   for w in ("leader", "worker"))),
    ("owner", None, {}, lambda o: o["metadata"]["ownerReferences"][0]["uid"] == "uid-1"),
    ("rollout-annotations", None, {"annotations": ((render.ANNOTATION_FINGERPRINT, "fp"),)},
     lambda o: o["metadata"]["annotations"][render.ANNOTATION_FINGERPRINT] == "fp"
     and o["metadata"]["annotations"][render.ANNOTATION_SOURCE] == R1),
    ("role-label", None, {"role": Role.CANARY},
     lambda o: o["metadata"]["labels"][render.LABEL_ROLE] == "canary"),
]


@pytest.mark.parametrize(("spec", "overrides", "check"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_leader_worker_set(spec: dict[str, Any] | None, overrides: dict[str, Any],
                           check: Callable[[Manifest], bool]) -> None:
    assert check(_lws(spec, **overrides))


def test_only_leaders_are_behind_the_service_the_pdb_and_the_gateway() -> None:
    md = _md()
    workload = _plan(md)
    obj = lws.build_leader_worker_set(md, md.spec, workload)
    leader = _template(obj, "leader")["metadata"]["labels"]
    worker = _template(obj, "worker")["metadata"]["labels"]
    service = render.build_service(md, key=workload.workload_key)["spec"]["selector"]
    pdb = render.build_pdb(md)["spec"]["selector"]["matchLabels"]
    gateway = dict(pair.split("=") for pair in SERVER_SELECTOR.split(","))
    for selector in (service, pdb, gateway):
        assert _matches(leader, selector) and not _matches(worker, selector)
    # The operator's own informers still see workers (owner label), to explain their problems.
    assert worker[render.LABEL_MODEL_DEPLOYMENT] == leader[render.LABEL_MODEL_DEPLOYMENT] == "r1"


def test_build_children_renders_a_group_workload_as_a_leader_worker_set() -> None:
    md = _md()
    single = replace(_plan(md), nodes=1, gpus_per_replica=8, role=Role.STABLE, revision="a")
    group = replace(_plan(md), role=Role.CANARY, revision="b")
    kinds = [c["kind"] for c in render.build_children(md, md.spec, [group, single])]
    assert kinds == ["Deployment", "LeaderWorkerSet", "Service", "PodDisruptionBudget"]


def test_template_change_changes_the_spec_hash_on_both_templates() -> None:
    a, b = _lws(), _lws({"engine": {"maxModelLen": 65536}})
    hashes = {_template(o, w)["metadata"]["labels"][render.LABEL_SPEC_HASH] for o in (a, b)
              for w in ("leader", "worker")}
    assert len(hashes) == 2 and a == _lws()  # deterministic, and a change shows


@pytest.mark.parametrize(("overrides", "message"), [
    ({"nodes": 2, "gpus_per_replica": 15}, "gpus_per_replica"),
    ({"nodes": 0}, "gpus_per_replica"),
    ({"nodes": 2, "tensor_parallel_size": 4}, "nodes x tensor_parallel_size"),
], ids=["not-divisible", "zero-nodes", "tp-not-per-node"])
def test_inconsistent_group_shapes_are_refused(overrides: dict[str, Any], message: str) -> None:
    md = _md()
    with pytest.raises(ValueError, match=message):
        _plan(md, **overrides)


def test_a_single_node_workload_is_not_a_group() -> None:
    md = _md()
    with pytest.raises(ValueError, match="2 or more nodes"):
        lws.build_leader_worker_set(md, md.spec, _plan(md, nodes=1, gpus_per_replica=8))

"""The reconcile core with multi-node replicas: a LeaderWorkerSet per revision, groups counted as
replicas (leaders only, Ready with their whole group), cost per group, the CRD missing, a recreated
group, and a revision switch between LeaderWorkerSets."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane import lws, render
from modelplane.controller import kube, reconcile
from modelplane.controller.reconcile import Observed

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
R1 = "hf://deepseek-ai/DeepSeek-R1"


def md(revision: str = "rev-a", **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": R1, "revision": revision},
        "engine": {"maxModelLen": 65536},
        "resources": {"gpu": {"types": ["nvidia-h100-80gb"], "maxNodes": 2}},
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "r1", "namespace": "ns", "uid": "uid-1", "generation": 1}, "spec": spec}


def run(body: dict[str, Any], **observed: Any) -> reconcile.Result:
    observed.setdefault("leader_worker_set_api", True)
    obs = Observed(body=body, now=NOW, monotonic=1000.0, **observed)
    return reconcile.finish(reconcile.prepare(obs, prices={}), obs)


def groups_of(result: reconcile.Result, *, ready: int) -> tuple[dict[str, Any], ...]:
    out = []
    for child in result.apply:
        if child["kind"] == lws.KIND:
            obj = copy.deepcopy(child)
            obj["status"] = {"readyReplicas": ready, "replicas": obj["spec"]["replicas"]}
            out.append(obj)
    return tuple(out)


def others_of(result: reconcile.Result) -> dict[str, tuple[dict[str, Any], ...]]:
    return {"services": tuple(c for c in result.apply if c["kind"] == "Service"),
            "pdbs": tuple(c for c in result.apply if c["kind"] == "PodDisruptionBudget")}


def group_pods(lws_name: str, key: str, group: int, *, leader_ready: bool = True,
               workers_ready: int = 1, size: int = 2) -> tuple[dict[str, Any], ...]:
    def one(index: int, ready: bool) -> dict[str, Any]:
        name = f"{lws_name}-{group}" if index == 0 else f"{lws_name}-{group}-{index}"
        component = render.COMPONENT if index == 0 else lws.WORKER_COMPONENT
        return {"metadata": {"name": name, "creationTimestamp": "2026-11-26T11:50:00Z",
                             "labels": {render.LABEL_COMPONENT: component, render.LABEL_REVISION_HASH: key,
                                        lws.LABEL_LWS_NAME: lws_name, lws.LABEL_GROUP_INDEX: str(group),
                                        lws.LABEL_WORKER_INDEX: str(index)},
                             "annotations": {lws.ANNOTATION_SIZE: str(size)}},
                "spec": {"nodeName": f"kwok-h100-{group * size + index}",
                         "containers": [{"name": "vllm", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]},
                "status": {"phase": "Running", "podIP": f"127.64.{group}.{index + 1}",
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                           "startTime": (NOW - timedelta(minutes=10)).isoformat()}}
    return (one(0, leader_ready), *(one(i, i <= workers_ready) for i in range(1, size)))


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_group_plan_renders_a_leader_worker_set_and_prices_the_group() -> None:
    result = run(md())
    assert [c["kind"] for c in result.apply] == ["LeaderWorkerSet", "Service", "PodDisruptionBudget"]
    group = result.apply[0]
    assert group["spec"]["leaderWorkerTemplate"]["size"] == 2 and group["spec"]["replicas"] == 1
    assert result.status is not None
    plan = result.status["plan"]
    assert (plan["nodes"], plan["gpusPerNode"], plan["gpusPerReplica"]) == (2, 8, 16)
    assert result.status["cost"]["desiredHourlyUSD"] == pytest.approx(16 * 2.69)
    assert any("created LeaderWorkerSet" in e.message for e in result.events)


@pytest.mark.parametrize(("workers_ready", "leader_ready", "ready"), [
    (1, True, 1), (0, True, 0), (1, False, 0),
], ids=["whole-group-ready", "worker-not-ready", "leader-not-ready"])
def test_a_group_is_one_replica_ready_only_with_all_its_pods(workers_ready: int, leader_ready: bool,
                                                              ready: int) -> None:
    first = run(md())
    name = first.apply[0]["metadata"]["name"]
    key = first.apply[0]["metadata"]["labels"][render.LABEL_REVISION_HASH]
    pods = group_pods(name, key, 0, leader_ready=leader_ready, workers_ready=workers_ready)
    result = run(md(), pods=pods, leader_worker_sets=groups_of(first, ready=ready), **others_of(first))
    assert result.status is not None
    assert (result.status["replicas"], result.status["readyReplicas"]) == (1, ready)
    assert result.status["phase"] == ("Ready" if ready else "Progressing")
    # Only the leader is a scrape target, and only once its group is whole.
    prepared = reconcile.prepare(Observed(body=md(), pods=pods, now=NOW), prices={})
    assert [t.pod for t in prepared.scrape_targets] == ([f"{name}-0"] if ready else [])


def test_external_scale_drives_groups() -> None:
    body = md(scaling={"mode": "External", "minReplicas": 0, "maxReplicas": 4})
    body["spec"]["replicas"] = 3
    result = run(body)
    group = next(c for c in result.apply if c["kind"] == lws.KIND)
    assert group["spec"]["replicas"] == 3  # three groups of two nodes: six pods
    assert result.status is not None and result.status["desiredReplicas"] == 3


@pytest.mark.parametrize(("api", "in_message"), [
    (False, "does not serve leaderworkersets"), (None, "has not yet listed"),
], ids=["crd-missing", "not-listed-yet"])
def test_without_the_crd_nothing_is_rendered_and_degraded_says_why(api: bool | None, in_message: str) -> None:
    result = run(md(), leader_worker_set_api=api)
    assert result.apply == ()
    assert result.status is not None
    degraded = cond(result.status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "LeaderWorkerSetCRDMissing"
    assert in_message in degraded["message"] and "maxNodes to 1" in degraded["message"]


def test_a_single_node_plan_needs_no_crd() -> None:
    body = md(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "a"},
              resources={"gpu": {"types": ["nvidia-l40s"]}})
    result = run(body, leader_worker_set_api=False)
    assert [c["kind"] for c in result.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    assert result.status is not None
    assert not any(c["type"] == "GroupRecreated" for c in result.status["conditions"])


def test_a_recreated_group_is_told_in_a_condition() -> None:
    first = run(md())
    name = first.apply[0]["metadata"]["name"]
    key = first.apply[0]["metadata"]["labels"][render.LABEL_REVISION_HASH]
    children = {"leader_worker_sets": groups_of(first, ready=1), **others_of(first)}
    quiet = run(md(), pods=group_pods(name, key, 0), **children)
    assert quiet.status is not None
    assert cond(quiet.status, "GroupRecreated")["status"] == "False"
    event = {"reason": lws.RECREATE_GROUP_REASON, "count": 1, "lastTimestamp": "2026-11-26T11:58:00Z",
             "involvedObject": {"kind": lws.KIND, "name": name, "namespace": "ns"},
             "message": f"Worker pod {name}-0-1 failed, deleted leader pod {name}-0 to recreate group 0"}
    other = {**event, "involvedObject": {"kind": lws.KIND, "name": "someone-else", "namespace": "ns"}}
    # Meanwhile: the group is starting again (a new leader, its worker not yet back).
    during = run(md(), pods=group_pods(name, key, 0, leader_ready=False, workers_ready=0),
                 group_events=(event, other), **children)
    assert during.status is not None
    told = cond(during.status, "GroupRecreated")
    assert told["status"] == "True" and told["reason"] == "GroupRecreated"
    assert f"Worker pod {name}-0-1 failed" in told["message"] and "0/1 groups ready now" in told["message"]
    assert "once" in told["message"] and "someone-else" not in told["message"]
    again = run(md(), pods=group_pods(name, key, 0), group_events=(event,), **children)
    assert again.status is not None and again.status["phase"] == "Ready"
    assert "1/1 groups ready now" in cond(again.status, "GroupRecreated")["message"]


def test_a_revision_switch_keeps_the_old_group_until_the_new_one_is_ready_then_deletes_it() -> None:
    old = run(md("rev-a"))
    old_name = old.apply[0]["metadata"]["name"]
    old_key = old.apply[0]["metadata"]["labels"][render.LABEL_REVISION_HASH]
    switching = run(md("rev-b"), pods=group_pods(old_name, old_key, 0),
                    leader_worker_sets=groups_of(old, ready=1), **others_of(old))
    new = [c for c in switching.apply if c["kind"] == lws.KIND]
    assert len(new) == 1 and new[0]["metadata"]["name"] != old_name and switching.delete == ()
    new_name = new[0]["metadata"]["name"]
    new_key = new[0]["metadata"]["labels"][render.LABEL_REVISION_HASH]
    done = run(md("rev-b"), pods=(*group_pods(old_name, old_key, 0), *group_pods(new_name, new_key, 0)),
               leader_worker_sets=(*groups_of(old, ready=1), *groups_of(switching, ready=1)),
               **others_of(old))
    assert done.delete == ((kube.LEADERWORKERSETS, old_name),)
    assert any(f"deleted LeaderWorkerSet {old_name}" in e.message for e in done.events)


def test_a_rollout_starts_one_canary_group_beside_stable() -> None:
    rollout = {"steps": [{"weight": 50, "pause": "3s"}], "evaluation": {"suiteRef": {"configMap": "suite"}}}
    first = run(md("rev-a", rollout=rollout))
    name = first.apply[0]["metadata"]["name"]
    key = first.apply[0]["metadata"]["labels"][render.LABEL_REVISION_HASH]
    children = {"leader_worker_sets": groups_of(first, ready=1), **others_of(first)}
    body = md("rev-a", rollout=rollout)
    body["status"] = run(body, pods=group_pods(name, key, 0), **children).effective_status
    body["spec"]["model"]["revision"] = "rev-b"
    result = run(body, pods=group_pods(name, key, 0), **children)
    # Stable's LeaderWorkerSet is unchanged (not re-applied), the canary's has one group.
    assert [(c["kind"], c["spec"]["replicas"], c["metadata"]["labels"][render.LABEL_ROLE])
            for c in result.apply] == [(lws.KIND, 1, "canary")]
    assert result.apply[0]["metadata"]["name"] != name and result.delete == ()
    assert result.status is not None and result.status["canary"]["phase"] == "Deploying"

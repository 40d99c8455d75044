"""Faults, against the dev cluster's real control plane: the operator through API-server outages,
children the API server refuses, and shutdown.

- kube-apiserver paused (SIGSTOP), and killed (SIGKILL) and started again: the operator resumes
  watching without a restart and acts on a spec change made after the outage within 30 s; its
  /healthz says 503 while a watch is down (and why), and 200 again afterwards.
- A child the API server refuses (here: a ValidatingAdmissionPolicy that denies the Deployment,
  as a cluster's policy would) makes the ModelDeployment Degraded with reason ChildRejected and the
  server's own message, with one Event and one log line, not a traceback per beat; once the policy
  is gone the object recovers.
- SIGTERM ends the operator promptly.

Each test runs an operator of its own over its own namespace, so the session's operator (and the
other tests) are not part of what is measured; they ride the outages out too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from modelplane.controller import kube
from tests.clusterfixtures import ClusterHandle, OperatorHandle, start_operator, stop_operator
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

VAP = kube.Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                    "ValidatingAdmissionPolicy", namespaced=False)
VAP_BINDING = kube.Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
                            "ValidatingAdmissionPolicyBinding", namespaced=False)


def manifest(name: str, *, min_replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "rev-a"},
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
                     "scaling": {"minReplicas": min_replicas, "maxReplicas": 3}}}


@pytest.fixture
def own_operator(cluster: ClusterHandle, namespace: str, crds: Any) -> Iterator[OperatorHandle]:
    assert cluster.dev is not None, "these tests stop and start the dev cluster's own kube-apiserver"
    handle = start_operator(cluster, cluster.dev.log_file(f"operator-{namespace}"),
                            namespaces=(namespace,))
    yield handle
    stop_operator(handle)


def healthz(handle: OperatorHandle) -> tuple[int, dict[str, Any]]:
    url = handle.metrics_url.replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def deployment_replicas(client: kube.Kube, namespace: str, name: str) -> int | None:
    deps = await client.list(kube.DEPLOYMENTS, namespace=namespace,
                             label_selector=f"modelplane.dev/model-deployment={name}")
    return int(deps[0]["spec"]["replicas"]) if deps else None


async def wait_replicas(client: kube.Kube, namespace: str, name: str, want: int, *,
                        timeout: float) -> float:
    started = time.monotonic()

    async def check() -> bool:
        try:
            return await deployment_replicas(client, namespace, name) == want
        except (kube.ApiError, OSError):
            return False

    await wait_for(check, timeout=timeout, what=f"{name}'s Deployment at {want} replicas")
    return time.monotonic() - started


async def until_api_answers(client: kube.Kube, timeout: float = 90) -> None:
    async def answers() -> bool:
        try:
            await client.request("GET", "/readyz", timeout=3)
            return True
        except (kube.ApiError, OSError, TimeoutError):
            return False

    await wait_for(answers, timeout=timeout, what="kube-apiserver to answer /readyz")


@pytest.mark.parametrize("outage", ["paused", "killed"])
async def test_the_operator_acts_on_a_change_after_an_api_server_outage(
        outage: str, cluster: ClusterHandle, kube_client: kube.Kube, namespace: str,
        own_operator: OperatorHandle) -> None:
    assert cluster.dev is not None
    await kube_client.create(manifest("chat"), namespace=namespace)
    await wait_replicas(kube_client, namespace, "chat", 1, timeout=60)
    assert healthz(own_operator)[0] == 200

    if outage == "paused":
        pid = cluster.dev.running_pids()["kube-apiserver"]
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(20)
        finally:
            os.kill(pid, signal.SIGCONT)
    else:
        await asyncio.to_thread(cluster.dev.kill_component, "kube-apiserver")
        try:
            # The watches fail at once; /healthz tells the truth once one is down 15 s.
            async def unhealthy() -> dict[str, Any] | None:
                code, body = healthz(own_operator)
                return body if code == 503 else None

            body = await wait_for(unhealthy, timeout=40, what="/healthz to turn 503 during the outage")
            assert body["watchesDown"], body
            assert any("has been down" in p for p in body["problems"]), body
        finally:
            await asyncio.to_thread(cluster.dev.start_component, "kube-apiserver")
    await until_api_answers(kube_client)
    await asyncio.sleep(10)  # the edit comes 10 s after the server is back, as in the report

    patched = time.monotonic()
    await kube_client.patch(kube.MODELDEPLOYMENTS, "chat", {"spec": {"scaling": {"minReplicas": 2}}},
                            namespace=namespace, field_manager="test")
    took = await wait_replicas(kube_client, namespace, "chat", 2, timeout=30)
    print(f"{outage}: spec change acted on {took:.2f} s after the edit "
          f"({time.monotonic() - patched:.2f} s)")

    async def observed() -> bool:
        md = await kube_client.get(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)
        assert md is not None
        return bool((md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"])

    await wait_for(observed, timeout=30, what="status to observe the new generation")

    async def healthy_again() -> bool:
        return healthz(own_operator)[0] == 200

    await wait_for(healthy_again, timeout=30, what="/healthz to answer 200 again")
    assert own_operator.process.poll() is None, "the operator must ride the outage out, not exit"


async def test_a_child_the_api_server_refuses_makes_the_object_degraded_once(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str,
        own_operator: OperatorHandle) -> None:
    policy = f"deny-{namespace}"
    message = "deployments of this model are blocked by the cluster's policy"
    await kube_client.request("POST", VAP.path(), body={
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["deployments"]}]},
                 "validations": [{"expression": "false", "message": message, "reason": "Invalid"}]}})
    await kube_client.request("POST", VAP_BINDING.path(), body={
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}})
    try:
        # A new policy takes a moment to be enforced: wait until a dry-run Deployment is refused, so
        # that the operator's first write is.
        probe = {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "probe", "namespace": namespace},
                 "spec": {"selector": {"matchLabels": {"a": "b"}},
                          "template": {"metadata": {"labels": {"a": "b"}},
                                       "spec": {"containers": [{"name": "c", "image": "x"}]}}}}

        async def admitted() -> bool:
            try:
                await kube_client.request("POST", kube.DEPLOYMENTS.path(namespace=namespace),
                                          params={"dryRun": "All"}, body=probe)
                return True
            except kube.Invalid:
                return False

        async def enforced() -> bool:
            return not await admitted()

        await wait_for(enforced, timeout=30, what="the admission policy to be enforced")
        await kube_client.create(manifest("blocked"), namespace=namespace)

        async def degraded() -> dict[str, Any] | None:
            md = await kube_client.get(kube.MODELDEPLOYMENTS, "blocked", namespace=namespace)
            for cond in ((md or {}).get("status") or {}).get("conditions") or []:
                if cond["type"] == "Degraded" and cond["reason"] == "ChildRejected":
                    return dict(cond)
            return None

        cond = await wait_for(degraded, timeout=60, what="Degraded/ChildRejected")
        assert cond["status"] == "True" and message in cond["message"], cond
        # Several more reconciles of the object (its retries): still one Event, one log line.
        seen = own_operator.reconciles(namespace, "blocked")
        await wait_for(lambda: own_operator.reconciles(namespace, "blocked") >= seen + 3, timeout=60,
                       what="three more reconciles")
        events = [e for e in await kube_client.list(kube.EVENTS, namespace=namespace)
                  if e.get("reason") == "ChildRejected"]
        assert len(events) == 1 and events[0].get("count", 1) == 1, events
        log = own_operator.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert log.count("the API server refused") == 1, log[-3000:]
    finally:
        await kube_client.delete(VAP_BINDING, policy)
        await kube_client.delete(VAP, policy)

    # A deleted policy also takes a moment to stop being enforced: wait for a dry run to pass, so the
    # edit's retry is not refused once more (and then backed off for up to a minute).
    await wait_for(admitted, timeout=30, what="the deleted admission policy to be lifted")
    # A spec edit retries at once; the object recovers and says so.
    await kube_client.patch(kube.MODELDEPLOYMENTS, "blocked", {"spec": {"scaling": {"maxReplicas": 2}}},
                            namespace=namespace, field_manager="test")

    async def recovered() -> bool:
        md = await kube_client.get(kube.MODELDEPLOYMENTS, "blocked", namespace=namespace)
        conds = {c["type"]: c for c in ((md or {}).get("status") or {}).get("conditions") or []}
        return conds.get("Degraded", {}).get("reason") != "ChildRejected" and \
            await deployment_replicas(kube_client, namespace, "blocked") == 1

    await wait_for(recovered, timeout=60, what="the object to recover once the policy is gone")


async def test_sigterm_ends_the_operator_promptly(cluster: ClusterHandle, namespace: str,
                                                  crds: Any) -> None:
    assert cluster.dev is not None
    handle = start_operator(cluster, cluster.dev.log_file(f"operator-{namespace}"),
                            namespaces=(namespace,))
    try:
        # Informers synced, workers idle: the usual state at a rollout.
        await wait_for(lambda: healthz(handle)[1].get("synced") is True, timeout=30,
                       what="the operator's informers to be synced")
        sent = time.monotonic()
        os.killpg(handle.process.pid, signal.SIGTERM)
        handle.process.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        stop_operator(handle)
    print(f"SIGTERM → exit in {took:.2f} s")
    assert handle.process.returncode == 0
    # Before this change it took ~15 s; the budget the issue sets is 2 s (a loaded CI machine
    # gets some slack here: the measured figure is printed and reported in the notes).
    assert took < 4.0, f"the operator took {took:.1f} s to exit after SIGTERM"

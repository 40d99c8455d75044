"""High availability: two operator replicas under kopf peering, as the chart's ``ha.enabled`` runs
them. Exactly one of them writes; when it stops, the other takes over and carries on.

The test runs the pair in namespaced mode, as the chart does with ``watchNamespaces: [<ns>]``: each
replica gets ``--namespace <ns>`` and ``MODELPLANE_PEERING``, and they peer through the KopfPeering
the chart renders into that namespace (a cluster-wide pair would also reconcile every other test's
namespaces, and peer through a ClusterKopfPeering instead). The namespace is outside the session
operator's ``t<SESSION>-*`` pattern, so only the pair reconciles it.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelplane.controller import kube, peering
from tests.chart import pick, render
from tests.clusterfixtures import (
    ClusterHandle,
    OperatorHandle,
    start_operator,
    stop_operator,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def chart_peering(*, name: str, namespace: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kopf peering CRDs and the KopfPeering the chart renders for HA in ``namespace``."""
    manifests = render({"ha": {"enabled": True, "peeringName": name}, "watchNamespaces": [namespace]},
                       include_crds=True)
    crds = [m for m in pick(manifests, "CustomResourceDefinition")
            if m["spec"]["group"] == "kopf.dev"]
    peerings = pick(manifests, "KopfPeering", name=name, namespace=namespace)
    assert len(crds) == 2 and len(peerings) == 1, [m["kind"] for m in manifests]
    assert not pick(manifests, "ClusterKopfPeering")  # namespaced mode peers per namespace
    return crds, peerings[0]


async def install_crds(cluster: ClusterHandle, client: kube.Kube, crds: list[dict[str, Any]]) -> None:
    """Applied as Helm would (another kopf operator's copies are left as they are), and served."""
    for crd in crds:
        if await client.get(kube.CRDS, crd["metadata"]["name"]) is None:
            await client.apply(crd, field_manager="helm")
    for crd in crds:
        cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            f"crd/{crd['metadata']['name']}")

    async def served() -> bool:
        for resource in (peering.PEERINGS, peering.CLUSTER_PEERINGS):
            try:
                await client.list(resource)
            except kube.ApiError:
                return False
        return True

    await wait_for(served, timeout=60, what="the kopf peering resources to be served")


def live_peers(status: dict[str, Any] | None) -> dict[str, int]:
    """Identity → priority of the peers whose keepalive has not expired (kopf's own rule)."""
    now = datetime.now(UTC)
    peers = {}
    for identity, info in (status or {}).items():
        if not isinstance(info, dict) or not info.get("lastseen"):
            continue
        seen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        if seen + timedelta(seconds=int(info.get("lifetime", 60))) > now:
            peers[identity] = int(info.get("priority", 0))
    return peers


def reconciles(handle: OperatorHandle) -> float:
    """Reconciles the operator has run, from its /metrics."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in handle.metrics_text().splitlines()
               if line.startswith("modelplane_reconciles_total{"))


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "a"},
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 3}}}


async def test_one_replica_writes_and_the_other_takes_over_when_it_stops(
        cluster: ClusterHandle, kube_client: kube.Kube, crds: Path,
        hf_endpoint: tuple[str, list[str]], tmp_path: Path) -> None:
    suffix = hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    ns, name = f"ha-{suffix}", f"modelplane-ha-{suffix}"
    peering_crds, peering_object = chart_peering(name=name, namespace=ns)
    await install_crds(cluster, kube_client, peering_crds)
    await kube_client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    handles: list[OperatorHandle] = []
    try:
        # Created as Helm creates it (kopf only ever patches its status).
        await kube_client.request("POST", peering.PEERINGS.path(namespace=ns), body=peering_object,
                                  params={"fieldManager": "helm"})
        for replica in ("a", "b"):
            log = (cluster.dev.log_file(f"operator-ha-{replica}") if cluster.dev is not None
                   else tmp_path / f"operator-ha-{replica}.log")
            handles.append(start_operator(cluster, log, namespaces=(ns,), hf_endpoint=hf_endpoint[0],
                                          extra_env={"MODELPLANE_PEERING": name}))

        async def peers() -> dict[str, int]:
            obj = await kube_client.get(peering.PEERINGS, name, namespace=ns)
            return live_peers((obj or {}).get("status"))

        # Both replicas announced, with different priorities: one runs, the other stands by.
        both = await wait_for(lambda: _at_least(peers(), 2), timeout=60,
                              what="both replicas' keepalives in the KopfPeering")
        assert len(both) == 2 and len(set(both.values())) == 2, both

        await kube_client.create(manifest("chat", ns))

        async def phase(replicas: int) -> bool:
            md = await kube_client.get(kube.MODELDEPLOYMENTS, "chat", namespace=ns)
            status = (md or {}).get("status") or {}
            return bool(status.get("phase") == "Ready" and status.get("readyReplicas") == replicas
                        and status.get("observedGeneration") == (md or {})["metadata"]["generation"])

        await wait_for(lambda: phase(1), timeout=90, what="Ready with 1 replica")
        writes = [h.writes() for h in handles]
        assert sorted(w > 0 for w in writes) == [False, True], f"writes per replica: {writes}"
        active, standby = (handles[0], handles[1]) if writes[0] > 0 else (handles[1], handles[0])
        assert await _events_from(kube_client, ns, active)
        # And the standby keeps out of it while the active one works: several resyncs later it
        # has neither reconciled nor written anything.
        seen = reconciles(active)
        await wait_for(lambda: reconciles(active) >= seen + 3, timeout=30,
                       what="three more reconciles by the active replica")
        assert standby.writes() == 0 and reconciles(standby) == 0

        # The active replica stops (a rolling update, a node drain): kopf removes its keepalive
        # on the way out, the standby resumes and reconciles a change made after the handover.
        stop_operator(active)
        # Gone at once on a clean exit; after a SIGKILL (stop_operator's fallback) it expires
        # when its 60 s lifetime runs out, which is when kopf resumes the standby too.
        await wait_for(lambda: _at_most(peers(), 1), timeout=90,
                       what="the stopped replica's keepalive to go")
        await kube_client.patch(kube.MODELDEPLOYMENTS, "chat", {"spec": {"scaling": {"minReplicas": 2}}},
                                namespace=ns, field_manager="kubectl-patch")
        await wait_for(lambda: phase(2), timeout=90, what="Ready with 2 replicas after the handover")
        assert standby.writes() > 0
        assert standby.process.poll() is None, "the surviving replica exited"
    finally:
        for handle in handles:
            stop_operator(handle)
        await kube_client.delete(kube.NAMESPACES, ns)


async def _at_least(peers: Any, count: int) -> dict[str, int] | None:
    found: dict[str, int] = await peers
    return found if len(found) >= count else None


async def _at_most(peers: Any, count: int) -> bool:
    found: dict[str, int] = await peers
    return len(found) <= count


async def _events_from(client: kube.Kube, namespace: str, handle: OperatorHandle) -> bool:
    """Whether the operator process of ``handle`` has posted Events (reportingInstance host-pid)."""
    events = await client.list(kube.EVENTS, namespace=namespace)
    return any(str(e.get("reportingInstance", "")).endswith(f"-{handle.process.pid}") for e in events)

"""The operator runs with the Helm chart's ServiceAccount token only — not as admin — through a
full lifecycle: create, scale, roll out a new revision behind the evaluation gate, delete. A verb
missing from the chart's ClusterRole makes a call fail with 403, which shows up as a reconcile error
and fails this test. The gateway, likewise, routes with its own ServiceAccount's token, which may
write nothing but its usage ledger's ConfigMaps in the release namespace.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.controller import kube
from modelplane_dev.sim.quality import generate_suite, suite_jsonl
from tests.chart import rbac_manifests
from tests.clusterfixtures import ClusterHandle, OperatorHandle, start_operator, stop_operator
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SYSTEM_NAMESPACE = "modelplane-system"


async def ensure_namespace(client: kube.Kube, name: str) -> None:
    try:
        await client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except kube.Conflict:
        pass


async def token_kubeconfig(client: kube.Kube, path: Path, account: str = "modelplane") -> Path:
    """A kubeconfig that authenticates as one of the chart's ServiceAccounts, with a fresh bound token."""
    request = await client.request(
        "POST", kube.SERVICEACCOUNTS.path(namespace=SYSTEM_NAMESPACE, name=account,
                                          subresource="token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 3600}})
    import base64

    assert client.config.ca_data is not None
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "dev", "cluster": {
            "server": client.config.server,
            "certificate-authority-data": base64.b64encode(client.config.ca_data).decode()}}],
        "users": [{"name": "sa", "user": {"token": request["status"]["token"]}}],
        "contexts": [{"name": "sa", "context": {"cluster": "dev", "user": "sa"}}],
    }))
    return path


def errors_in(text: str, namespace: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modelplane_reconcile_errors_total{") and f'namespace="{namespace}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_the_operator_runs_a_full_lifecycle_with_the_charts_rbac_only(
        cluster: ClusterHandle, kube_client: kube.Kube, crds: Path, tmp_path: Path) -> None:
    await ensure_namespace(kube_client, SYSTEM_NAMESPACE)
    for manifest in rbac_manifests(namespace=SYSTEM_NAMESPACE):
        await kube_client.apply(manifest, field_manager="helm")
    kubeconfig = await token_kubeconfig(kube_client, tmp_path / "sa.kubeconfig")
    suffix = hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    ns = f"rbac-{suffix}"
    await ensure_namespace(kube_client, ns)
    log = (cluster.dev.log_file("operator-rbac") if cluster.dev is not None
           else tmp_path / "operator-rbac.log")
    restricted = ClusterHandle(kubeconfig, cluster.kubectl, cluster.dev)
    offset = log.stat().st_size if log.exists() else 0  # the log file is appended to across runs
    # Cluster-wide, as the chart installs it by default. The session's admin operator watches
    # only its own test namespaces, so in rbac-* this operator alone does the work.
    handle = start_operator(restricted, log)
    try:
        body: dict[str, Any] = {
            "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "lifecycle", "namespace": ns},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "a"},
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 3},
                     # A gated rollout: the operator reads the suite, writes a report ConfigMap,
                     # and moves traffic in a step — each a verb the chart must grant.
                     "rollout": {"steps": [{"weight": 50, "pause": "3s"}],
                                 "evaluation": {"suiteRef": {"configMap": "suite"},
                                                "minScore": 0.5, "maxRegression": 0.3,
                                                "concurrency": 8, "timeoutSeconds": 10}}}}
        await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "suite", "namespace": ns},
                                  "data": {"suite.jsonl": suite_jsonl(generate_suite(40, seed=3))}})
        await kube_client.create(body)

        async def phase(want: str, replicas: int) -> bool:
            md = await kube_client.get(kube.MODELDEPLOYMENTS, "lifecycle", namespace=ns)
            status = (md or {}).get("status") or {}
            return bool(status.get("phase") == want and status.get("readyReplicas") == replicas
                        and status.get("observedGeneration") == (md or {})["metadata"]["generation"])

        await wait_for(lambda: phase("Ready", 1), timeout=120, what="Ready with 1 replica")

        async def update(spec: dict[str, Any]) -> None:
            # A merge patch, as `kubectl patch` sends it: no resourceVersion, so a status write by
            # the operator in between cannot make it fail with 409 Conflict.
            await kube_client.patch(kube.MODELDEPLOYMENTS, "lifecycle", {"spec": spec},
                                    namespace=ns, field_manager="kubectl-patch")

        # Scale: a floor of two replicas.
        await update({"scaling": {"minReplicas": 2}})
        await wait_for(lambda: phase("Ready", 2), timeout=120, what="Ready with 2 replicas")
        # Roll out a new revision behind the gate: canary, evaluation, one step, promotion.
        await update({"model": {"revision": "b"}})

        async def switched() -> bool:
            md = await kube_client.get(kube.MODELDEPLOYMENTS, "lifecycle", namespace=ns)
            deps = await kube_client.list(kube.DEPLOYMENTS, namespace=ns)
            return bool((md or {}).get("status", {}).get("servingRevision") == "b" and len(deps) == 1)

        await wait_for(switched, timeout=180, what="revision b promoted, serving alone")
        md = await kube_client.get(kube.MODELDEPLOYMENTS, "lifecycle", namespace=ns)
        history = (md or {}).get("status", {}).get("rolloutHistory") or []
        assert history and history[-1]["decision"] == "Promoted", history
        reports = [cm["metadata"]["name"] for cm in await kube_client.list(kube.CONFIGMAPS,
                                                                         namespace=ns)]
        assert any(name.startswith("lifecycle-eval-") for name in reports), reports
        await kube_client.delete(kube.MODELDEPLOYMENTS, "lifecycle", namespace=ns)

        async def gone() -> bool:
            return not (await kube_client.list(kube.DEPLOYMENTS, namespace=ns)
                        or await kube_client.list(kube.PODS, namespace=ns))

        await wait_for(gone, timeout=120, what="the children to be garbage-collected")
        assert errors_in(handle.metrics_text(), ns) == 0
        events = await kube_client.list(kube.EVENTS, namespace=ns,
                                        field_selector="involvedObject.name=lifecycle")
        assert {"Applied", "Deleted"} <= {e["reason"] for e in events}
        with log.open(errors="replace") as text:
            text.seek(offset)
            assert "Forbidden" not in text.read()
    finally:
        stop_operator(handle)
        await kube_client.delete(kube.NAMESPACES, ns)


async def test_the_gateway_routes_with_the_charts_read_only_rbac(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str, operator: OperatorHandle,
        tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import aiohttp

    from modelplane_dev.devcluster.cluster import free_port

    await ensure_namespace(kube_client, SYSTEM_NAMESPACE)
    for manifest in rbac_manifests(namespace=SYSTEM_NAMESPACE):
        await kube_client.apply(manifest, field_manager="helm")
    kubeconfig = await token_kubeconfig(kube_client, tmp_path / "gateway.kubeconfig", "modelplane-gateway")
    served = f"rbac-{namespace[-8:]}"
    await kube_client.create({
        "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                           "servedName": served},
                 "engine": {"maxModelLen": 2048, "maxNumSeqs": 4},
                 "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                 "scaling": {"minReplicas": 1, "maxReplicas": 1}}})
    port, metrics_port = free_port(), free_port()
    log = (cluster.dev.log_file("gateway-rbac") if cluster.dev is not None else tmp_path / "gateway-rbac.log")
    offset = log.stat().st_size if log.exists() else 0
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--ledger-namespace", SYSTEM_NAMESPACE],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1"))
    out.close()
    try:
        async with aiohttp.ClientSession() as http:
            async def status(path: str, port_: int) -> int:
                try:
                    async with http.get(f"http://127.0.0.1:{port_}{path}") as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return 0

            # Ready once every watch has listed: a missing list or watch verb keeps it at 503.
            await wait_for(lambda: _eq(status("/readyz", metrics_port), 200), timeout=30,
                           what="the gateway's watches to list with its own token")

            async def answered() -> bool:
                body = {"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
                async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
                    return resp.status == 200

            await wait_for(answered, timeout=90, what="a chat answered through the read-only gateway")
            assert await status("/healthz", metrics_port) == 200
        text = log.read_text(errors="replace")[offset:]
        assert "403" not in text and "orbidden" not in text, text[-2000:]
        # Read-only: the gateway's token may not write, not even a ModelDeployment's status.
        async with kube.Kube(kube.load_kubeconfig(kubeconfig)) as as_gateway:
            with pytest.raises(kube.Forbidden):
                await as_gateway.patch(kube.MODELDEPLOYMENTS, "chat", {"metadata": {"labels": {"x": "y"}}},
                                       namespace=namespace)
            with pytest.raises(kube.Forbidden):
                await as_gateway.create({"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "nope", "namespace": namespace}})
            # Its one write: a usage ledger shard in the release namespace (create, update, delete).
            name = f"modelplane-usage-rbac-{namespace[-8:]}"
            shard = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE,
                                  "labels": {"modelplane.dev/usage-shard": "gateway"}},
                     "data": {"usage.json": "{}"}}
            created = await as_gateway.create(shard)
            path = kube.CONFIGMAPS.path(namespace=SYSTEM_NAMESPACE, name=name)
            await as_gateway.request("PUT", path, body=created)
            assert await as_gateway.delete(kube.CONFIGMAPS, name, namespace=SYSTEM_NAMESPACE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


async def _eq(value: Any, want: int) -> bool:
    return bool(await value == want)

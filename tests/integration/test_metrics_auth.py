"""``modelplane run --metrics-auth=kubernetes`` against the dev cluster's real API server: /metrics
answers a ServiceAccount token that RBAC allows to get /metrics (200, with process metrics), refuses
one it does not (403) and a token the server does not know (401); /healthz needs none."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modelplane.controller import kube
from tests.clusterfixtures import ClusterHandle, start_operator, stop_operator

pytestmark = pytest.mark.integration


def status_of(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_behind_token_and_access_reviews(cluster: ClusterHandle, crds: Path,
                                                       kube_client: kube.Kube, namespace: str,
                                                       tmp_path: Path) -> None:
    reader = f"{namespace}-metrics-reader"
    for sa in ("scraper", "stranger"):
        await kube_client.create({"apiVersion": "v1", "kind": "ServiceAccount",
                                  "metadata": {"name": sa, "namespace": namespace}})
    await kube_client.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                              "metadata": {"name": reader},
                              "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]})
    await kube_client.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                              "metadata": {"name": reader},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": reader},
                              "subjects": [{"kind": "ServiceAccount", "name": "scraper",
                                            "namespace": namespace}]})
    tokens = {sa: cluster.run_kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
              for sa in ("scraper", "stranger")}
    handle = start_operator(cluster, tmp_path / "operator.log", namespaces=(namespace,),
                            extra_args=("--metrics-auth", "kubernetes"))
    try:
        url = handle.metrics_url
        allowed, text = status_of(url, tokens["scraper"])
        assert allowed == 200, text
        assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
        forbidden, why = status_of(url, tokens["stranger"])
        assert forbidden == 403 and f"system:serviceaccount:{namespace}:stranger may not get /metrics" in why
        assert status_of(url, "not-a-token")[0] == 401
        assert status_of(url, None)[0] == 401
        assert status_of(url.replace("/metrics", "/healthz"), None)[0] in (200, 503)
    finally:
        stop_operator(handle)
        await kube_client.delete(kube.CLUSTERROLEBINDINGS, reader)
        await kube_client.delete(kube.CLUSTERROLES, reader)

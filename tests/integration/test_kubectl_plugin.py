"""``kubectl modelplane`` against the dev cluster's real API server, logged in like kubectl.

kubectl itself (the dev cluster's binary) finds ``kubectl-modelplane`` on PATH and runs it. The
credentials come from an exec credential plugin — a script that prints an ExecCredential — named
by a context of a merged ``KUBECONFIG`` list: once with the dev cluster's admin client certificate,
once with a ServiceAccount token from the TokenRequest API (so RBAC decides, and a refused call is
one line). No operator runs: ``get`` shows the object as it is, ``pause`` sets its annotation.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.controller import kube
from modelplane.rollout.machine import CONTROL_ANNOTATION
from tests.clusterfixtures import ClusterHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = """#!{python}
import json, os, sys
from pathlib import Path
calls = Path(os.environ["CALLS_FILE"])
calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
status = json.loads(Path(sys.argv[1]).read_text())
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}}))
"""


def setup_exec(cluster: ClusterHandle, tmp_path: Path, status: dict[str, Any]) -> dict[str, str]:
    """A merged KUBECONFIG (an exec context first, the dev cluster's file second), kubectl and our
    plugin on PATH; returns the environment for kubectl."""
    dev = yaml.safe_load(cluster.kubeconfig.read_text())
    server = dev["clusters"][0]["cluster"]
    (tmp_path / "status.json").write_text(json.dumps(status))
    script = tmp_path / "credential-plugin"
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    first = tmp_path / "exec.kubeconfig"
    first.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "via-exec",
        "contexts": [{"name": "via-exec", "context": {"cluster": "dev-exec", "user": "exec-user"}}],
        "clusters": [{"name": "dev-exec", "cluster": server}],
        "users": [{"name": "exec-user", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
            "args": [str(tmp_path / "status.json")], "interactiveMode": "Never",
            "env": [{"name": "CALLS_FILE", "value": str(tmp_path / "calls")}]}}}]}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    plugin = bindir / "kubectl-modelplane"
    plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -m modelplane.cli \"$@\"\n")
    plugin.chmod(0o755)
    return {**os.environ, "KUBECONFIG": f"{first}{os.pathsep}{cluster.kubeconfig}",
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "devtools"), str(ROOT)])}


def kubectl(cluster: ClusterHandle, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cluster.kubectl, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


async def make_md(client: kube.Kube, namespace: str) -> None:
    await client.create({"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": namespace},
                         "spec": {"model": {"source": "hf://org/model", "revision": "a"},
                                  "rollout": {"steps": [{"weight": 10, "pause": "1m"}]}}})


async def test_kubectl_modelplane_with_a_client_certificate_from_an_exec_plugin(
        cluster: ClusterHandle, crds: Path, kube_client: kube.Kube, namespace: str, tmp_path: Path) -> None:
    dev = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]
    env = setup_exec(cluster, tmp_path, {
        "clientCertificateData": base64.b64decode(dev["client-certificate-data"]).decode(),
        "clientKeyData": base64.b64decode(dev["client-key-data"]).decode()})
    await make_md(kube_client, namespace)

    shown = kubectl(cluster, env, "modelplane", "get", "chat", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == ["Name:        chat", f"Namespace:   {namespace}"]

    paused = kubectl(cluster, env, "modelplane", "pause", "chat", "-n", namespace)
    assert paused.returncode == 0, paused.stderr
    obj = await kube_client.get(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)
    assert obj is not None and obj["metadata"]["annotations"][CONTROL_ANNOTATION].startswith("pause@")
    assert int((tmp_path / "calls").read_text()) == 2  # once per command: the plugin was what logged in

    # --context picks the dev cluster's own context from the second file of the list.
    other = kubectl(cluster, env, "modelplane", "get", "chat", "-n", namespace, "--context",
                    yaml.safe_load(cluster.kubeconfig.read_text())["current-context"])
    assert other.returncode == 0, other.stderr
    assert int((tmp_path / "calls").read_text()) == 2


async def test_kubectl_modelplane_with_a_service_account_token_from_an_exec_plugin(
        cluster: ClusterHandle, crds: Path, kube_client: kube.Kube, namespace: str, tmp_path: Path) -> None:
    await kube_client.create({"apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": {"name": "viewer", "namespace": namespace}})
    await kube_client.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                              "metadata": {"name": "md-viewer", "namespace": namespace},
                              "rules": [{"apiGroups": ["modelplane.dev"], "resources": ["modeldeployments"],
                                         "verbs": ["get", "list", "watch"]}]})
    await kube_client.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                              "metadata": {"name": "md-viewer", "namespace": namespace},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": "md-viewer"},
                              "subjects": [{"kind": "ServiceAccount", "name": "viewer",
                                            "namespace": namespace}]})
    token = cluster.run_kubectl("create", "token", "viewer", "-n", namespace, "--duration=10m").stdout.strip()
    env = setup_exec(cluster, tmp_path, {"token": token})
    await make_md(kube_client, namespace)

    shown = kubectl(cluster, env, "modelplane", "get", "chat", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert "Name:        chat" in shown.stdout

    # The token may read, not patch: RBAC's refusal is one line that says so.
    refused = kubectl(cluster, env, "modelplane", "promote", "chat", "-n", namespace)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"modelplane promote: not allowed to patch modeldeployment chat in "
                                     f"namespace {namespace}: 403 Forbidden")


async def test_kubectl_modelplane_get_watch_redraws_on_a_status_change(
        cluster: ClusterHandle, crds: Path, kube_client: kube.Kube, namespace: str, tmp_path: Path) -> None:
    dev = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]
    env = setup_exec(cluster, tmp_path, {
        "clientCertificateData": base64.b64decode(dev["client-certificate-data"]).decode(),
        "clientKeyData": base64.b64decode(dev["client-key-data"]).decode()})
    await make_md(kube_client, namespace)
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        watcher = subprocess.Popen([cluster.kubectl, "modelplane", "get", "chat", "-n", namespace, "--watch"],
                                   env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        # The first view: before or after the session's operator (if one runs) wrote a status.
        await wait_for(lambda: f"Namespace:   {namespace}" in out.read_text(), timeout=30,
                       what="the first view")
        # What the operator would write: a rollout at its first step.
        await kube_client.apply({
            "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": namespace},
            "status": {"phase": "Progressing", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2,
                       "canary": {"phase": "Stepping", "revision": "b", "weight": 10, "step": 0}}},
            subresource="status", field_manager="test")
        await wait_for(lambda: "► 1/1  weight 10%" in out.read_text(), timeout=30,
                       what="the redraw after the status changed")
        assert watcher.poll() is None  # still watching
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    assert "Traceback" not in out.read_text()

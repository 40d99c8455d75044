"""The Gateway API and Inference Extension CRDs on the dev cluster (optional, not in the default start).

``hack/inference-extension/fetch.sh`` downloads the two Go modules at pinned versions through the Go
module proxy (cached under ``~/.cache/modelplane/inference-extension``) and prints the directory of
the CRD YAMLs: GatewayClass, Gateway and HTTPRoute (standard channel) and InferencePool
(``inference.networking.k8s.io/v1``). ``install`` applies them with kubectl (server-side) and waits
until each is Established and listable; ``remove`` deletes them. Only the CRDs: no gateway runs, so
the objects the operator renders are checked by the API server's schema, not served.

From a shell: ``modelplane cluster up --with-inference-extension``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from modelplane_dev.devcluster.cluster import DevClusterError, repo_root

#: The CRDs fetch.sh provides, by name (what ``kubectl wait crd/<name>`` takes).
CRD_NAMES: tuple[str, ...] = (
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "inferencepools.inference.networking.k8s.io",
)
#: The resources to list before calling the CRDs usable (storage initialises after Established).
_LISTABLE: tuple[str, ...] = ("httproutes.gateway.networking.k8s.io",
                              "inferencepools.inference.networking.k8s.io")


def fetch_crds() -> Path:
    """The directory holding the pinned CRD YAMLs, fetched on first use (needs Go on PATH)."""
    root = repo_root()
    script = root / "hack" / "inference-extension" / "fetch.sh" if root is not None else None
    if script is None or not script.is_file():
        raise DevClusterError("cannot find hack/inference-extension/fetch.sh: run from a modelplane checkout")
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:/usr/local/go/bin"
    proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=sys.stderr,
                          text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise DevClusterError("fetching the Gateway API and Inference Extension CRDs failed (see the "
                              "messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def _kubectl(kubectl: str, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl, *args], capture_output=True, text=True, check=False, timeout=120,
                          env=dict(os.environ, KUBECONFIG=str(kubeconfig)))


def _wait(what: str, check: Sequence[str], kubectl: str, kubeconfig: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        done = _kubectl(kubectl, kubeconfig, *check)
        if done.returncode == 0:
            return
        said = (done.stderr or done.stdout).strip()
        time.sleep(0.5)
    raise DevClusterError(f"timed out waiting for {what}; kubectl said: {said or '(nothing)'}")


def install(kubectl: str, kubeconfig: Path, *, timeout: float = 60.0) -> Path:
    """Apply the CRDs and wait until they are Established and listable; the directory applied."""
    crd_dir = fetch_crds()
    files = sorted(crd_dir.glob("*.yaml"))
    args = ["apply", "--server-side", "--force-conflicts"]
    for f in files:
        args += ["-f", str(f)]
    done = _kubectl(kubectl, kubeconfig, *args)
    if done.returncode != 0:
        raise DevClusterError(f"kubectl apply of the CRDs in {crd_dir} failed: {done.stderr.strip()}")
    for name in CRD_NAMES:
        # kubectl wait fails at once while discovery has not caught up: ask again until it holds.
        _wait(f"crd/{name} to be Established",
              ["wait", "--for=condition=Established", "--timeout=10s", f"crd/{name}"],
              kubectl, kubeconfig, timeout)
    for resource in _LISTABLE:
        _wait(f"{resource} to be listable", ["get", resource, "-A"], kubectl, kubeconfig, timeout)
    return crd_dir


def remove(kubectl: str, kubeconfig: Path, *, timeout: float = 60.0) -> None:
    """Delete the CRDs (and every object of them), waiting until they are gone; safe when absent."""
    done = _kubectl(kubectl, kubeconfig, "delete", "crd", "--ignore-not-found", "--wait=true",
                    f"--timeout={int(timeout)}s", *CRD_NAMES)
    if done.returncode != 0:
        raise DevClusterError(f"deleting the Gateway API and Inference Extension CRDs failed: "
                              f"{done.stderr.strip()}")

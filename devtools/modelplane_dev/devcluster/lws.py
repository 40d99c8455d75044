"""The LeaderWorkerSet controller on the dev cluster (multi-node replicas, docs/multi-node.md).

The real controller manager of ``sigs.k8s.io/lws``, built from its Go module at the version
``hack/lws/go.mod`` pins (``hack/lws/build.sh``, cached under ``~/.cache/modelplane/lws``, next to
the CRDs of that version), runs as one more process of the dev cluster, like the control plane:

* its CRDs (``leaderworkersets.leaderworkerset.x-k8s.io``, one served version, so no conversion
  webhook; and DisaggregatedSet, which it also watches) are applied, and the first waited for until
  Established and listable;
* its webhooks (defaulting and validation of LeaderWorkerSets; the pod webhook that labels a group's
  pods and sets ``LWS_LEADER_ADDRESS``/``LWS_WORKER_INDEX``, only for pods with the
  ``leaderworkerset.sigs.k8s.io/name`` label) are registered by URL, ``https://127.0.0.1:PORT``,
  with the dev cluster's CA as ``caBundle``; their serving certificate is issued by that CA, the
  way the dev cluster issues its own (``pki.issue_serving_cert``), instead of the controller's
  internal certificate rotation (which names an in-cluster Service);
* it talks to the API server with its own client certificate (``system:masters``, as kwok's).

kwok then runs a group's pods like any other (the StatefulSets the controller makes are the
controller-manager's), and the simulator answers on each leader (workers are headless: no port).
``ensure`` does all of it on a running cluster, idempotently; ``modelplane cluster up --with-lws``
calls it. ``down`` stops the process with the rest.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelplane_dev.devcluster.cluster import DevCluster, DevClusterError, State, free_port, repo_root
from modelplane_dev.devcluster.pki import ClientIdentity, issue_client_cert, issue_serving_cert

COMPONENT = "lws-controller"
CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
IDENTITY = ClientIdentity("lws", "system:lws-controller-manager", "system:masters")
#: The webhooks of ``config/webhook`` in the module (with its kustomize patches: the pod webhooks
#: only for pods of a LeaderWorkerSet), by path.
_MUTATING = (("mleaderworkerset.kb.io", "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
              "leaderworkerset.x-k8s.io", "leaderworkersets", ["CREATE", "UPDATE"]),
             ("mpod.kb.io", "/mutate--v1-pod", "", "pods", ["CREATE"]))
_VALIDATING = (("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
                "leaderworkerset.x-k8s.io", "leaderworkersets", ["CREATE", "UPDATE"]),
               ("vpod.kb.io", "/validate--v1-pod", "", "pods", ["CREATE", "UPDATE"]))
_POD_SELECTOR = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}


def build_controller() -> Path:
    """The controller binary (built on first use; needs Go on PATH); its CRDs are in ``crds/`` beside it."""
    if os.environ.get("MODELPLANE_LWS_BIN"):
        return Path(os.environ["MODELPLANE_LWS_BIN"])
    root = repo_root()
    script = root / "hack" / "lws" / "build.sh" if root is not None else None
    if script is None or not script.is_file():
        raise DevClusterError("cannot find hack/lws/build.sh: run from a modelplane checkout, or set "
                              "MODELPLANE_LWS_BIN to the controller binary (with crds/ beside it)")
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:/usr/local/go/bin"
    proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=sys.stderr,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError("building the LeaderWorkerSet controller failed (see the messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def webhook_configurations(port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration, calling the controller on loopback."""
    def hooks(entries: tuple[tuple[str, str, str, str, list[str]], ...]) -> list[dict[str, Any]]:
        out = []
        for name, path, group, resource, operations in entries:
            hook: dict[str, Any] = {
                "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 10,
                "clientConfig": {"url": f"https://127.0.0.1:{port}{path}",
                                 "caBundle": base64.b64encode(ca_bundle).decode()},
                "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": operations,
                           "resources": [resource]}],
            }
            if resource == "pods":
                hook["objectSelector"] = _POD_SELECTOR
            out.append(hook)
        return out

    meta = {"name": "lws-webhook-configuration", "labels": {"app.kubernetes.io/part-of": "lws"}}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": meta, "webhooks": hooks(_MUTATING)},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": meta, "webhooks": hooks(_VALIDATING)},
    ]


def controller_config(*, webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """The controller's Configuration (config.lws.x-k8s.io/v1alpha1): certificates from ``cert_dir``,
    no internal rotation, no leader election, no metrics endpoint, everything on loopback."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
    }


def _kubectl(state: State, *args: str, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(state.bin_dir) / "kubectl"), *args], capture_output=True, text=True,
                          check=False, timeout=120, input=input_,
                          env=dict(os.environ, KUBECONFIG=state.kubeconfig))


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        ok, said = check()
        if ok:
            return
        time.sleep(0.5)
    raise DevClusterError(f"timed out waiting for {what}: {said or '(nothing said)'}")


def _ready(port: int) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200, ""
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _install_crds(state: State, crd_dir: Path, timeout: float) -> None:
    # Every CRD of the module: the controller manager also watches DisaggregatedSets, and logs an
    # error every 10 s while their CRD is missing.
    files = sorted(crd_dir.glob("*.yaml"))
    args = [a for f in files for a in ("-f", str(f))]
    done = _kubectl(state, "apply", "--server-side", "--force-conflicts", *args)
    if done.returncode != 0 or not files:
        raise DevClusterError(f"kubectl apply of the CRDs in {crd_dir} failed: {done.stderr.strip()}")

    def established() -> tuple[bool, str]:
        done = _kubectl(state, "wait", "--for=condition=Established", "--timeout=10s", f"crd/{CRD_NAME}")
        if done.returncode != 0:
            return False, done.stderr.strip()
        listed = _kubectl(state, "get", CRD_NAME, "-A")
        return listed.returncode == 0, listed.stderr.strip()

    _wait(f"crd/{CRD_NAME} to be Established and listable", established, timeout)


def start(cluster: DevCluster, state: State, binary: Path, *, timeout: float = 60.0) -> None:
    """Start the controller process with fresh ports and wait until it is ready."""
    work = cluster.run_dir / "lws"
    work.mkdir(parents=True, exist_ok=True)
    pki = cluster.run_dir / "pki"
    issue_client_cert(pki, IDENTITY)  # from this cluster's CA, whatever an earlier start left
    kubeconfig = cluster.write_kubeconfig(state, "lws.kubeconfig", IDENTITY.name)
    cert_dir = work / "certs"
    issue_serving_cert(pki, cert_dir, "lws-webhook")
    webhook_port, health_port = free_port(), free_port()
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(controller_config(webhook_port=webhook_port, health_port=health_port,
                                                       cert_dir=cert_dir), sort_keys=False))
    (work / "ports.json").write_text(json.dumps({"webhook": webhook_port, "health": health_port}))
    cluster.start_process(COMPONENT, [str(binary), f"--config={config}", "--leader-elect=false",
                                      f"--kubeconfig={kubeconfig}", "--zap-log-level=info"])
    _wait(f"{COMPONENT} /readyz (log: {cluster.log_file(COMPONENT)})", lambda: _ready(health_port), timeout)
    # The webhooks follow the port of this start (a restart picks new free ports).
    ca = (pki / "ca.crt").read_bytes()
    docs = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in webhook_configurations(webhook_port, ca))
    done = _kubectl(state, "apply", "--server-side", "--force-conflicts", "-f", "-", input_=docs)
    if done.returncode != 0:
        raise DevClusterError(f"registering the LeaderWorkerSet webhooks failed: {done.stderr.strip()}")


def ensure(cluster: DevCluster, *, timeout: float = 120.0) -> Path:
    """The LeaderWorkerSet controller runs in ``cluster``, with its CRD and webhooks: started if it is
    not (building it on first use); returns its binary."""
    state = cluster.state()
    if state is None or not cluster.is_healthy():
        raise DevClusterError(f"no healthy dev cluster runs in {cluster.run_dir}; `modelplane cluster up` "
                              "starts one")
    binary = build_controller()
    crd_dir = binary.parent / "crds"
    _install_crds(state, crd_dir, timeout)
    if COMPONENT in cluster.running_pids():
        return binary
    start(cluster, state, binary, timeout=timeout)
    cluster._log(f"LeaderWorkerSet controller {binary.parent.name} running (log: "  # noqa: SLF001
                 f"{cluster.log_file(COMPONENT)})")
    return binary

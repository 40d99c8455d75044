"""pytest fixtures for tests that run against the dev cluster (integration and e2e).

- ``cluster``: session-scoped. Starts the dev cluster once (or reuses the one already running in
  the run directory), with a short pod-ready delay so tests don't wait on emulated model loads.
  ``MODELPLANE_TEST_KUBECONFIG`` points the tests at another cluster instead (a user's kind).
  A cluster that fails to start fails the tests: it is never a reason to skip.
- ``kube``: an async API client for one test.
- ``namespace``: a fresh namespace per test, deleted afterwards. When the test failed, the objects
  and events in it and the tails of the control-plane logs are printed first.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelplane.controller import kube
from modelplane_dev.devcluster import DevCluster, Options
from tests.hfmirror import NOWHERE, hf_mirror
from tests.waiting import wait_until


@dataclass(frozen=True)
class ClusterHandle:
    kubeconfig: Path
    kubectl: str
    dev: DevCluster | None  #: None when the tests run against an external cluster

    def run_kubectl(self, *args: str, check: bool = True, input_: str | None = None,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        full_env.update(env or {})
        return subprocess.run([self.kubectl, *args], capture_output=True, text=True, check=check,
                              input=input_, env=full_env, timeout=60)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Collect garbage once each test's fixtures are torn down — its event loop closed too — so
    a socket or transport the test left open is reported (ResourceWarning, an error under our
    warning filter) against that test, not against whichever later test the collector happens to
    run in. (Inside pytest's own unraisable-exception wrapper, which then reports it.)"""
    result = yield
    gc.collect()
    return result


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    external = os.environ.get("MODELPLANE_TEST_KUBECONFIG")
    if external:
        yield ClusterHandle(Path(external), os.environ.get("KUBECTL", "kubectl"), None)
        return
    dev = DevCluster()
    state = dev.up(Options(profile="default", pod_ready_delay="2s", pod_ready_jitter="1s"))
    yield ClusterHandle(Path(state.kubeconfig), str(Path(state.bin_dir) / "kubectl"), dev)
    # Left running on purpose: the next pytest run (e2e after integration) reuses it in seconds.
    # `make cluster-down` and .ci/run stop it.


@pytest.fixture
async def kube_client(cluster: ClusterHandle) -> AsyncIterator[kube.Kube]:
    async with kube.Kube(kube.load_kubeconfig(cluster.kubeconfig)) as client:
        yield client


#: Namespaces of this pytest session start with ``t<SESSION>-``, and the session's operator
#: watches only those: two sessions on one dev cluster (a developer's and a helper's) never
#: reconcile each other's objects.
SESSION = hashlib.sha1(f"{os.getpid()}{time.time()}".encode()).hexdigest()[:4]
NAMESPACE_PREFIX = f"t{SESSION}-"


def _namespace_name(nodeid: str) -> str:
    digest = hashlib.sha1(f"{nodeid}{time.time()}".encode()).hexdigest()[:8]
    stem = nodeid.split("::")[-1].split("[")[0].replace("_", "-").lower()[:40].strip("-")
    return f"{NAMESPACE_PREFIX}{stem}-{digest}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def dump_namespace(cluster: ClusterHandle, namespace: str) -> str:
    """Objects, events and control-plane log tails: what a person needs to see a failure."""
    parts = []
    for args in (("get", "all,modeldeployments,pdb,configmaps,events", "-n", namespace, "-o", "wide"),
                 ("get", "modeldeployments", "-n", namespace, "-o", "yaml"),
                 ("get", "nodes", "-o", "wide")):
        result = cluster.run_kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
    if cluster.dev is not None:
        for component in ("kube-scheduler", "kube-controller-manager", "kwok", "sim-agent",
                          "operator"):
            log = cluster.dev.log_file(component)
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-25:]
                parts.append(f"--- last lines of {log}\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, cluster: ClusterHandle,
                    kube_client: kube.Kube) -> AsyncIterator[str]:
    name = _namespace_name(request.node.nodeid)
    await kube_client.create({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": name, "labels": {"modelplane.dev/test": "true"}}})
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n===== dump of namespace {name} =====\n{dump_namespace(cluster, name)}")
    await kube_client.delete(kube.NAMESPACES, name)


CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "modeldeployments.modelplane.dev.yaml"


@pytest.fixture(scope="session")
def crds(cluster: ClusterHandle) -> Path:
    """The generated CRD, installed with kubectl (server-side) and established."""
    cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    said: list[str] = []

    def established() -> bool:
        done = cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=10s",
                                   "crd/modeldeployments.modelplane.dev", check=False)
        said.append((done.stderr or done.stdout).strip())
        return done.returncode == 0

    # kubectl wait fails at once, without waiting, when it cannot resolve the CRD yet (a fresh API
    # server's discovery): seen once in a fresh-clone CI run, 64 integration tests erred on it. So
    # it is asked again until the same condition holds, and a failure says what kubectl said.
    try:
        wait_until(established, timeout=60, what="the ModelDeployment CRD to be Established")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; kubectl said: {said[-1] if said else '(nothing)'}") from exc
    # Established is not the end: the new resource's storage initialises a moment later, and an
    # operator that lists it before then backs off. Wait until a list answers.
    wait_until(lambda: cluster.run_kubectl("get", "modeldeployments", "-A",
                                           check=False).returncode == 0,
               timeout=60, what="modeldeployments to be listable after the CRD was established")
    return CRD_PATH


@dataclass
class OperatorHandle:
    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path
    #: What it was started with, so a test can start it again the same way.
    namespaces: tuple[str, ...] = ()
    hf_endpoint: str = NOWHERE

    def metrics_text(self) -> str:
        import urllib.request
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def writes(self) -> float:
        """Total writes the operator made to the API server, from its own /metrics."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("modelplane_api_writes_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_operator(cluster: ClusterHandle, log: Path, *, resync: float = 1.0,
                   namespaces: tuple[str, ...] = (), hf_endpoint: str = NOWHERE,
                   extra_env: dict[str, str] | None = None,
                   extra_args: tuple[str, ...] = ()) -> OperatorHandle:
    """``modelplane run`` as its own process, as it runs in production (no in-process shortcuts)."""
    import socket
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
    env.update(extra_env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "run", "--metrics-host", "127.0.0.1",
         "--metrics-port", str(port), "--resync-seconds", str(resync),
         "--hf-endpoint", hf_endpoint,
         *(arg for ns in namespaces for arg in ("--namespace", ns)), *extra_args],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out.close()
    handle = OperatorHandle(proc, f"http://127.0.0.1:{port}/metrics", log, namespaces, hf_endpoint)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the operator exited with {proc.returncode}; see {log}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=30, what=f"the operator's /healthz (log: {log})")
    except AssertionError:
        proc.kill()
        raise
    return handle


def stop_operator(handle: OperatorHandle) -> None:
    import signal

    if handle.process.poll() is None:
        os.killpg(handle.process.pid, signal.SIGTERM)
        try:
            handle.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait(timeout=5)


@pytest.fixture(scope="session")
def hf_endpoint() -> Iterator[tuple[str, list[str]]]:
    """The loopback Hub mirror the session's operator reads config.json from."""
    with hf_mirror() as mirror:
        yield mirror


@pytest.fixture(scope="session")
def operator(cluster: ClusterHandle, crds: Path,
             hf_endpoint: tuple[str, list[str]]) -> Iterator[OperatorHandle]:
    log = (cluster.dev.log_file("operator") if cluster.dev is not None
           else Path("/tmp/modelplane-operator.log"))
    # Only this session's per-test namespaces: tests that run an operator of their own (the RBAC
    # lifecycle, scale to zero) use other namespaces, where this one must not help.
    handle = start_operator(cluster, log, namespaces=(f"{NAMESPACE_PREFIX}*",),
                            hf_endpoint=hf_endpoint[0])
    yield handle
    stop_operator(handle)

"""pytest fixtures for tests that run against the dev cluster (integration and e2e).

- ``cluster``: session-scoped. Starts the dev cluster once (or reuses the one already running in
  the run directory), with a short pod-ready delay so tests don't wait on emulated model loads.
  ``MODELPLANE_TEST_KUBECONFIG`` points the tests at another cluster instead (a user's kind).
  A cluster that fails to start fails the tests: it is never a reason to skip.
- ``kube``: an async API client for one test.
- ``namespace``: a fresh namespace per test, deleted afterwards. When the test failed, the objects
  and events in it and the tails of the control-plane logs are printed first.
- ``gateways``: session-scoped. Two ``modelplane gateway`` processes, each on the IP of a gateway
  Pod of the dev cluster (kwok gives the Pod a loopback IP and runs nothing; the process binds that
  IP), so that the session's operator finds them as it does in a cluster: by watching the pods of
  ``GATEWAY_SELECTOR`` in ``GATEWAY_NAMESPACE`` and reading each one's /metrics.
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
#: The other kinds' CRDs, installed beside it: the operator and the gateways watch them too
#: (ModelRoute: api/route.py; ModelAdapter: api/adapter.py).
ROUTE_CRD_PATH = CRD_PATH.with_name("modelroutes.modelplane.dev.yaml")
ADAPTER_CRD_PATH = CRD_PATH.with_name("modeladapters.modelplane.dev.yaml")


@pytest.fixture(scope="session")
def crds(cluster: ClusterHandle) -> Path:
    """The generated CRD, installed with kubectl (server-side) and established."""
    cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH),
                        "-f", str(ROUTE_CRD_PATH), "-f", str(ADAPTER_CRD_PATH))
    said: list[str] = []

    def established() -> bool:
        done = cluster.run_kubectl("wait", "--for=condition=Established", "--timeout=10s",
                                   "crd/modeldeployments.modelplane.dev", "crd/modelroutes.modelplane.dev",
                                   "crd/modeladapters.modelplane.dev",
                                   check=False)
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
    wait_until(lambda: all(cluster.run_kubectl("get", kind, "-A", check=False).returncode == 0
                           for kind in ("modeldeployments", "modeladapters")),
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

    def reconciles(self, namespace: str, name: str) -> float:
        """Reconciles of one ModelDeployment so far (any result), from the operator's own /metrics."""
        labels = (f'namespace="{namespace}"', f'name="{name}"')
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics_text().splitlines()
                   if line.startswith("modelplane_reconciles_total{") and all(x in line for x in labels))

    def writes(self) -> float:
        """Total writes the operator made to the API server, from its own /metrics."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("modelplane_api_writes_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


#: Where the session's gateway pods live, and their labels: the session's operator reads the
#: requests they hold (``--gateway-selector``/``--gateway-namespace``, as the chart sets them).
GATEWAY_NAMESPACE = f"{NAMESPACE_PREFIX}gateway"
GATEWAY_LABELS = {"app.kubernetes.io/component": "gateway", "modelplane.dev/test-session": SESSION}
GATEWAY_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted(GATEWAY_LABELS.items()))
GATEWAY_PORT, GATEWAY_METRICS_PORT = 8000, 9090


def gateway_args() -> tuple[str, ...]:
    """``modelplane run`` flags that make an operator read the session's gateways."""
    return ("--gateway-selector", GATEWAY_SELECTOR, "--gateway-namespace", GATEWAY_NAMESPACE)


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
                            hf_endpoint=hf_endpoint[0], extra_args=gateway_args())
    yield handle
    stop_operator(handle)


@dataclass
class GatewayReplica:
    """One ``modelplane gateway`` process on its pod's IP."""

    pod: str
    host: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{GATEWAY_PORT}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{GATEWAY_METRICS_PORT}/metrics"

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def start(self, cluster: ClusterHandle) -> None:
        import sys
        import urllib.request

        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        out = self.log.open("ab")
        self.process = proc = subprocess.Popen(
            [sys.executable, "-m", "modelplane.cli", "gateway", "--host", self.host,
             "--port", str(GATEWAY_PORT), "--metrics-port", str(GATEWAY_METRICS_PORT),
             "--hold-timeout", "120", "--max-body-bytes", str(GATEWAY_MAX_BODY),
             "--shutdown-timeout", "2", "--ledger-namespace", GATEWAY_NAMESPACE, "--ledger-id", self.pod],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the gateway exited with {proc.returncode}; see {self.log}:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"http://{self.host}:{GATEWAY_METRICS_PORT}/readyz", timeout=2):
                    return True
            except OSError:
                return False

        try:
            wait_until(ready, timeout=30, what=f"the gateway's /readyz (log: {self.log})")
        except AssertionError:
            proc.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, as a node or OOM kill would: no draining."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


#: The e2e gateways' --max-body-bytes (small, so a test can send one byte more).
GATEWAY_MAX_BODY = 256 * 1024


@dataclass
class Gateways:
    cluster: ClusterHandle
    replicas: list[GatewayReplica]

    def ensure_running(self) -> None:
        """Start again any replica a test killed."""
        for replica in self.replicas:
            if replica.process is None or replica.process.poll() is not None:
                replica.start(self.cluster)


def _gateway_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE, "labels": GATEWAY_LABELS},
            "spec": {"containers": [{"name": "gateway", "image": "modelplane/operator:dev",
                                     "command": ["modelplane"], "args": ["gateway"],
                                     "ports": [{"name": "http", "containerPort": GATEWAY_PORT},
                                               {"name": "metrics", "containerPort": GATEWAY_METRICS_PORT}]}],
                     "tolerations": [{"operator": "Exists"}]}}


@pytest.fixture(scope="session")
def gateways(cluster: ClusterHandle, operator: OperatorHandle) -> Iterator[Gateways]:
    """Two gateway replicas for the session (the operator reads their held requests)."""
    import json

    cluster.run_kubectl("create", "namespace", GATEWAY_NAMESPACE)
    names = ["gateway-0", "gateway-1"]
    cluster.run_kubectl("apply", "-f", "-", input_="\n".join(json.dumps(_gateway_pod(n)) for n in names))
    hosts: dict[str, str] = {}

    def have_ips() -> bool:
        for name in names:
            got = cluster.run_kubectl("get", "pod", name, "-n", GATEWAY_NAMESPACE,
                                      "-o", "jsonpath={.status.podIP}", check=False)
            if got.returncode == 0 and got.stdout.strip():
                hosts[name] = got.stdout.strip()
        return len(hosts) == len(names)

    replicas: list[GatewayReplica] = []
    try:
        wait_until(have_ips, timeout=60, what="the gateway pods' IPs")
        for name in names:
            log = (cluster.dev.log_file(f"gateway-{name}") if cluster.dev is not None
                   else Path(f"/tmp/modelplane-{name}.log"))
            replica = GatewayReplica(name, hosts[name], log)
            replicas.append(replica)
            replica.start(cluster)
        yield Gateways(cluster, replicas)
    finally:
        for replica in replicas:
            replica.stop()
        cluster.run_kubectl("delete", "namespace", GATEWAY_NAMESPACE, "--wait=false", check=False)

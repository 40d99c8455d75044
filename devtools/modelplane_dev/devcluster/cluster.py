"""The dev cluster: a real Kubernetes control plane on loopback with kwok's simulated GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the upstream binaries built
by ``hack/devcluster/build.sh``; kwok fakes the kubelets of GPU nodes described by a profile in
``profiles.yaml``, and moves pods through create → Ready (after a delay that stands for a model
load) → delete. Pod IPs come from a loopback range, so a process on this machine (the simulator's
pod agent) can answer on a pod's own IP.

The same class serves ``modelplane cluster up/down`` and the pytest fixtures. Every process is
started in its own session with its log in ``<run-dir>/logs``, its pid in ``<run-dir>/pids``;
stopping ends each one by pid, so nothing outlives ``down``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from modelplane import durations, gpus
from modelplane.controller import kube
from modelplane_dev.devcluster.pki import write_pki

T = TypeVar("T")

#: kwok manages only the nodes that carry this annotation, so it never touches a real node.
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
#: Pod IPs are drawn from a /16 of loopback, so the simulator can bind each pod's IP on this
#: machine. kwok hands them out in order from the start of its range, so two dev clusters with one
#: range (two checkouts, a developer's and a helper's) would give their first pods the same IPs:
#: each run directory gets its own /16 (``pod_cidr_for``). This one is what a cluster started
#: before that (no ``pod_cidr`` in its state.json) uses.
POD_CIDR = "127.64.0.0/16"
#: The /16s ``pod_cidr_for`` chooses from: 127.64.0.0/16 to 127.191.0.0/16.
POD_CIDR_FIRST, POD_CIDR_COUNT = 64, 128
SERVICE_CIDR = "10.96.0.0/16"
#: How long a deleted pod keeps serving before kwok removes it (the preStop drain, shortened).
POD_DRAIN_MS = 3000
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: Every process of a running cluster: the binaries, then the simulator's pod agent.
PROCESSES = (*COMPONENTS, "sim-agent")
#: Processes started on demand into a running cluster (``devcluster.lws.ensure``): stopped with it,
#: never required for it to be healthy.
OPTIONAL_PROCESSES = ("lws-controller",)


#: Every component outlives the call that started it; keeping its Popen here (rather than letting
#: it be collected while the process runs) is what "detached on purpose" looks like to Python.
_DETACHED: list[subprocess.Popen[bytes]] = []


class DevClusterError(RuntimeError):
    """A failure with its cause and the fix, for a person to read."""


# --- pure parts: profiles, node manifests, kwok stages ------------------------------------------


@dataclass(frozen=True)
class NodeGroup:
    """``count`` identical nodes."""

    name: str
    count: int
    cpu: str
    memory: str
    instance_type: str
    gpu: str | None = None
    gpus: int = 0


def load_profiles(path: Path | None = None) -> dict[str, tuple[NodeGroup, ...]]:
    """The node profiles by name, from ``profiles.yaml`` (or ``path``), validated."""
    text = (path.read_text() if path else
            resources.files("modelplane_dev.devcluster").joinpath("profiles.yaml").read_text())
    doc = yaml.safe_load(text) or {}
    profiles: dict[str, tuple[NodeGroup, ...]] = {}
    for pname, body in (doc.get("profiles") or {}).items():
        groups = []
        for raw in body.get("nodes") or []:
            gpu = raw.get("gpu")
            if gpu is not None and gpu not in gpus.GPU_TYPES:
                raise DevClusterError(
                    f"profile {pname!r}, node group {raw.get('name')!r}: unknown GPU type {gpu!r}; "
                    f"known: {', '.join(gpus.GPU_TYPE_NAMES)}")
            count, ngpus = int(raw.get("count", 1)), int(raw.get("gpus", 0))
            if count < 1 or (gpu and not 1 <= ngpus <= 16):
                raise DevClusterError(f"profile {pname!r}, node group {raw.get('name')!r}: "
                                      f"count must be >= 1 and gpus 1..16 on a GPU node")
            groups.append(NodeGroup(name=str(raw["name"]), count=count, cpu=str(raw["cpu"]),
                                    memory=str(raw["memory"]),
                                    instance_type=str(raw.get("instanceType", "kwok")),
                                    gpu=gpu, gpus=ngpus if gpu else 0))
        profiles[str(pname)] = tuple(groups)
    return profiles


def build_nodes(groups: Sequence[NodeGroup]) -> list[dict[str, Any]]:
    """Node manifests labelled and tainted as NVIDIA's GPU operator leaves real GPU nodes."""
    nodes = []
    for group in groups:
        for i in range(group.count):
            name = f"kwok-{group.name}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": group.instance_type,
                "type": "kwok",
            }
            capacity = {"cpu": group.cpu, "memory": group.memory, "pods": "110"}
            taints: list[dict[str, str]] = []
            if group.gpu:
                gpu = gpus.GPU_TYPES[group.gpu]
                labels |= {
                    gpus.PRODUCT_LABEL: gpu.product,
                    gpus.MEMORY_LABEL: str(gpu.memory_mib or int(gpu.memory_gib * 1024)),
                    gpus.COUNT_LABEL: str(group.gpus),
                    "nvidia.com/gpu.present": "true",
                }
                capacity[gpus.GPU_RESOURCE] = str(group.gpus)
                taints.append({"key": gpus.GPU_RESOURCE, "value": "present",
                               "effect": "NoSchedule"})
            nodes.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {KWOK_ANNOTATION: "fake",
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": taints} if taints else {},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return nodes


def _stage(name: str, selector: list[dict[str, Any]], delay_ms: int, jitter_ms: int,
           next_: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": selector},
            "delay": {
                "durationMilliseconds": delay_ms,
                # A pod can ask for its own delay, e.g. a test that needs a slow model load.
                "durationFrom": {"expressionFrom":
                                 f'.metadata.annotations["{name}.stage.kwok.x-k8s.io/delay"]'},
                "jitterDurationMilliseconds": delay_ms + jitter_ms,
                "jitterDurationFrom": {"expressionFrom":
                                       f'.metadata.annotations["{name}.stage.kwok.x-k8s.io/jitter-delay"]'},
            },
            "next": next_,
        },
    }


_NOT_DELETING = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}

_CREATE_STATUS = """\
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: ContainersNotReady}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: ContainersNotReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_READY_STATUS = """\
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""

_COMPLETE_STATUS = """\
{{ $now := Now }}
{{ $root := . }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: PodCompleted}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: PodCompleted}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


_NODE_STATUS = """\
{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- {address: {{ NodeIP | Quote }}, type: InternalIP}
- {address: {{ NodeName | Quote }}, type: Hostname}
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: kwok
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
"""


def _node_stage(name: str, selector: list[dict[str, Any]], delay_ms: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Node"},
        "selector": {"matchExpressions": selector},
        "next": {"statusTemplate": _NODE_STATUS},
    }
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": delay_ms + 10_000}
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name},
            "spec": spec}


def pod_cidr_for(run_dir: Path) -> str:
    """The pod IP range of the cluster in ``run_dir``: a /16 of 127.0.0.0/8 picked by a hash of
    the directory's path, so clusters in different run directories almost never share one
    (two of them do with a chance of 1 in 128)."""
    import hashlib

    digest = hashlib.sha256(str(run_dir.resolve()).encode()).digest()
    return f"127.{POD_CIDR_FIRST + digest[0] % POD_CIDR_COUNT}.0.0/16"


def build_kwok_config(*, ready_delay_ms: int, ready_jitter_ms: int,
                      create_delay_ms: int = 200, pod_cidr: str = POD_CIDR) -> str:
    """kwok's configuration: its own settings and our Pod stages (which replace kwok's defaults).

    A pod gets its IP and a running-but-unready container at once (the image is "pulled"), turns
    Ready after ``ready_delay_ms`` (+ up to ``ready_jitter_ms``) as a vLLM server does once its
    model has loaded, and is removed when deleted. Pods of Jobs (``restartPolicy: Never``) run to
    completion instead, so an evaluator Job finishes.
    """
    ready_node = '.status.conditions.[] | select( .type == "Ready" ) | .status'
    stages = [
        # A node turns Ready at once; afterwards kwok renews its Lease (the kubelet's heartbeat)
        # and its status every few minutes, so the node lifecycle controller keeps it Ready.
        _node_stage("node-initialize", [{"key": ready_node, "operator": "NotIn",
                                         "values": ["True"]}], 0),
        _node_stage("node-heartbeat", [{"key": ".status.phase", "operator": "In",
                                        "values": ["Running"]},
                                       {"key": ready_node, "operator": "In", "values": ["True"]}],
                    300_000),
        _stage("pod-create", [_NOT_DELETING,
                              {"key": ".status.podIP", "operator": "DoesNotExist"}],
               create_delay_ms, 0, {"statusTemplate": _CREATE_STATUS,
                                    "event": {"type": "Normal", "reason": "Started",
                                              "message": "Started container (kwok)"}}),
        _stage("pod-ready", [_NOT_DELETING,
                             {"key": ".status.podIP", "operator": "Exists"},
                             {"key": ".spec.restartPolicy", "operator": "NotIn",
                              "values": ["Never", "OnFailure"]},
                             {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                              "operator": "In", "values": ["False"]}],
               ready_delay_ms, ready_jitter_ms, {"statusTemplate": _READY_STATUS}),
        _stage("pod-complete", [_NOT_DELETING,
                                {"key": ".status.podIP", "operator": "Exists"},
                                {"key": ".spec.restartPolicy", "operator": "In",
                                 "values": ["Never", "OnFailure"]},
                                {"key": ".status.phase", "operator": "In", "values": ["Running"]}],
               ready_delay_ms, ready_jitter_ms, {"statusTemplate": _COMPLETE_STATUS}),
        # A deleted pod lingers for a few seconds, as a vLLM pod does in its preStop pause
        # (30 s in production manifests, shortened here): requests in flight finish.
        _stage("pod-delete", [{"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                              {"key": ".metadata.finalizers", "operator": "DoesNotExist"}],
               POD_DRAIN_MS, 0, {"delete": True}),
    ]
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        # Our Stages replace kwok's built-in ones, and with them the defaults of these options.
        "options": {"cidr": pod_cidr, "nodeIP": "127.0.0.1", "enableCRDs": [],
                    "nodeLeaseDurationSeconds": 40, "nodeLeaseParallelism": 4,
                    "podPlayStageParallelism": 8, "nodePlayStageParallelism": 4,
                    "podsOnNodeSyncParallelism": 1},
    }
    return yaml.safe_dump_all([config, *stages], sort_keys=False)


def parse_duration_ms(text: str) -> int:
    """``"20s"``, ``"500ms"``, ``"1m"`` or a bare number of seconds → milliseconds."""
    try:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            return int(float(text) * 1000)
        return int(durations.seconds(text) * 1000)
    except ValueError as exc:
        raise DevClusterError(str(exc)) from None


def config_hash(options: Options) -> str:
    """Identifies what a cluster runs: its node profile and its kwok stages. (Not the code of
    this file: several test sessions may share one cluster, and an edit must not restart it
    under them; `modelplane cluster down` does that when wanted.)"""
    import hashlib

    parts = [options.profile, build_kwok_config(ready_delay_ms=0, ready_jitter_ms=0)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# --- locations ----------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The checkout this package runs from (editable install), or the one around the cwd."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "hack" / "devcluster" / "build.sh").is_file():
                return parent
    return None


def default_run_dir() -> Path:
    if os.environ.get("MODELPLANE_DEVCLUSTER_DIR"):
        return Path(os.environ["MODELPLANE_DEVCLUSTER_DIR"])
    root = repo_root()
    if root is not None:
        return root / ".run" / "devcluster"
    return Path.home() / ".cache" / "modelplane" / "run" / "devcluster"


def build_binaries(log: Callable[[str], None]) -> Path:
    """Build or reuse the binaries (``hack/devcluster/build.sh``); the directory holding them."""
    if os.environ.get("MODELPLANE_DEVCLUSTER_BIN"):
        return Path(os.environ["MODELPLANE_DEVCLUSTER_BIN"])
    root = repo_root()
    if root is None:
        raise DevClusterError("cannot find hack/devcluster/build.sh: run from a modelplane checkout, "
                              "or set MODELPLANE_DEVCLUSTER_BIN to a directory with the binaries")
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:/usr/local/go/bin"
    log("building or reusing the control-plane binaries (a cold build takes several minutes)")
    proc = subprocess.run(["bash", str(root / "hack" / "devcluster" / "build.sh")], env=env,
                          stdout=subprocess.PIPE, stderr=sys.stderr, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError("building the dev cluster's binaries failed (see the messages above); "
                              "fix the cause and run `make cluster-up` again")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the cluster --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    profile: str = "default"
    pod_ready_delay: str = "20s"
    pod_ready_jitter: str = "5s"
    apiserver_port: int | None = None
    start_timeout: float = 120.0


@dataclass
class State:
    """What a running cluster is, saved as ``state.json`` in the run directory."""

    run_dir: str
    bin_dir: str
    profile: str
    ports: dict[str, int]
    kubeconfig: str
    pod_ready_delay: str
    started_at: float
    nodes: list[str] = field(default_factory=list)
    #: What the cluster was started with (stages, profile, versions); reuse only on a match.
    config_hash: str = ""
    #: Where its pod IPs come from (``pod_cidr_for``).
    pod_cidr: str = POD_CIDR

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"


class DevCluster:
    """Start, reuse and stop the dev cluster in one run directory."""

    def __init__(self, run_dir: Path | None = None, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.run_dir = (run_dir or default_run_dir()).resolve()
        self._log = log or (lambda msg: print(f"[devcluster] {msg}", file=sys.stderr, flush=True))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # paths
    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def log_file(self, component: str) -> Path:
        return self.run_dir / "logs" / f"{component}.log"

    def _pid_file(self, component: str) -> Path:
        return self.run_dir / "pids" / f"{component}.pid"

    # status
    def state(self) -> State | None:
        try:
            return State(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running_pids(self) -> dict[str, int]:
        """Components whose recorded process is still alive (and is still ours)."""
        alive = {}
        for component in (*PROCESSES, *OPTIONAL_PROCESSES):
            pid = self._read_pid(component)
            if pid is not None and self._is_ours(pid):
                alive[component] = pid
        return alive

    def is_healthy(self) -> bool:
        state = self.state()
        if state is None or not set(PROCESSES) <= set(self.running_pids()):
            return False
        try:
            return asyncio.run(self._readyz()) == "ok"
        except Exception:  # noqa: BLE001 — any failure to answer means "not healthy"
            return False

    # start
    def up(self, options: Options = Options(), *, reuse: bool = True) -> State:
        """Start the cluster, or reuse the one already running in this run directory."""
        state = self.state()
        wanted = config_hash(options)
        if state is not None and reuse and self.is_healthy():
            if state.profile != options.profile:
                raise DevClusterError(
                    f"a dev cluster with profile {state.profile!r} is running in {self.run_dir}; "
                    f"run `modelplane cluster down` first to start one with {options.profile!r}")
            if state.config_hash == wanted:
                self._log(f"reusing the running dev cluster; KUBECONFIG={self.kubeconfig}")
                return state
            self._log("the running dev cluster was started from an older configuration of this "
                      "checkout; restarting it")
        if self.state_file.exists() or self.running_pids():
            self._log(f"found a stale run directory {self.run_dir} (its cluster is not healthy); "
                      "stopping what is left of it and starting afresh")
            self.down(remove=True, quiet=True)

        profiles = load_profiles()
        if options.profile not in profiles:
            raise DevClusterError(f"unknown profile {options.profile!r}; known: "
                                  f"{', '.join(sorted(profiles))} (see profiles.yaml)")
        ready_ms = parse_duration_ms(options.pod_ready_delay)
        jitter_ms = parse_duration_ms(options.pod_ready_jitter)
        if options.apiserver_port is not None and port_in_use(options.apiserver_port):
            raise DevClusterError(
                f"port {options.apiserver_port} on 127.0.0.1 is in use; free it (`ss -ltnp "
                f"'sport = :{options.apiserver_port}'` shows who holds it) or pass another --port")

        bin_dir = build_binaries(self._log)
        for component in COMPONENTS:
            if not (bin_dir / component).is_file():
                raise DevClusterError(f"{bin_dir / component} is missing; run "
                                      "`bash hack/devcluster/build.sh` and read its log")
        started = time.monotonic()
        for sub in ("pki", "logs", "pids", "etcd-data"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        write_pki(self.run_dir / "pki")
        ports = {"etcd": free_port(), "etcd-peer": free_port(),
                 "apiserver": options.apiserver_port or free_port(),
                 "controller-manager": free_port(), "scheduler": free_port(),
                 "kwok": free_port()}
        state = State(run_dir=str(self.run_dir), bin_dir=str(bin_dir), profile=options.profile,
                      ports=ports, kubeconfig=str(self.kubeconfig),
                      pod_ready_delay=options.pod_ready_delay, started_at=time.time(),
                      config_hash=wanted, pod_cidr=pod_cidr_for(self.run_dir))
        self._write_kubeconfigs(state)
        (self.run_dir / "kwok.yaml").write_text(build_kwok_config(
            ready_delay_ms=ready_ms, ready_jitter_ms=jitter_ms, pod_cidr=state.pod_cidr))
        deadline = time.monotonic() + options.start_timeout
        try:
            self._start_etcd(state)
            self._wait("etcd", deadline, lambda: self._etcd_healthy(ports["etcd"]))
            self._start_apiserver(state)
            self._wait("kube-apiserver /readyz", deadline,
                       lambda: asyncio.run(self._readyz()) == "ok", component="kube-apiserver")
            self._start_controller_manager(state)
            self._start_scheduler(state)
            nodes = build_nodes(profiles[options.profile])
            state.nodes = [n["metadata"]["name"] for n in nodes]
            asyncio.run(self._create_nodes(nodes))
            self._start_kwok(state)
            self._wait("the default ServiceAccount", deadline,
                       lambda: asyncio.run(self._has_default_sa()),
                       component="kube-controller-manager")
            self._wait(f"{len(nodes)} nodes Ready", deadline,
                       lambda: asyncio.run(self._nodes_ready(len(nodes))), component="kwok")
            self._start_agent(state)
        except BaseException:
            self._log(f"start failed; stopping what was started (logs kept in {self.run_dir}/logs)")
            self.down(remove=False, quiet=True)
            raise
        self.state_file.write_text(json.dumps(asdict(state), indent=2))
        self._log(f"ready in {time.monotonic() - started:.1f} s: {len(nodes)} nodes "
                  f"(profile {options.profile}), API server {state.server}")
        self._log(f"export KUBECONFIG={self.kubeconfig}")
        return state

    # stop
    def down(self, *, remove: bool = False, quiet: bool = False) -> list[str]:
        """Stop every component by its pid; safe to call twice. Returns what was stopped."""
        stopped = []
        # Reverse start order: the node faker and the workers first, etcd last.
        for component in (*reversed(OPTIONAL_PROCESSES), *reversed(PROCESSES)):
            pid = self._read_pid(component)
            if pid is not None and self._is_ours(pid):
                self._terminate(pid)
                stopped.append(component)
            with contextlib.suppress(FileNotFoundError):
                self._pid_file(component).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if remove and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        if not quiet:
            what = ", ".join(stopped) if stopped else "nothing was running"
            kept = "removed" if remove else "kept for inspection"
            self._log(f"stopped: {what}; run directory {self.run_dir} {kept}")
        return stopped

    # --- one component at a time (fault tests) --------------------------------------------
    # These block (they poll the component's health); from async code call them through
    # ``asyncio.to_thread``.

    def kill_component(self, component: str) -> int:
        """Kill one component of the running cluster with SIGKILL, as a crash would, and wait until
        it is gone; returns the pid it had. The other components keep running (kube-apiserver
        killed: every client's connection drops and is refused until ``start_component``). The
        ``sim-agent`` entry is the agent's supervisor: killing it kills the agent too."""
        self._check_component(component)
        pid = self._read_pid(component)
        if pid is None or not self._is_ours(pid):
            raise DevClusterError(f"{component} is not running in {self.run_dir}; `modelplane "
                                  "cluster status` says what runs")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        proc = self._procs.pop(component, None)
        deadline = time.monotonic() + 10
        while self._is_ours(pid):
            if proc is not None:
                proc.poll()  # reaps it when we are its parent
            else:
                self._reap(pid)
            if time.monotonic() > deadline:
                raise DevClusterError(f"{component} (pid {pid}) is still alive 10 s after SIGKILL")
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file(component).unlink()
        self._log(f"killed {component} (pid {pid}) with SIGKILL")
        return pid

    def start_component(self, component: str, *, timeout: float = 60.0) -> None:
        """Start one stopped component of the running cluster again, with the flags and ports it
        was first started with (``state.json``), and wait until it works: etcd's /health,
        kube-apiserver's /readyz; the others only have to be running."""
        self._check_component(component)
        state = self.state()
        if state is None:
            raise DevClusterError(f"no dev cluster runs in {self.run_dir} (no state.json); "
                                  "`modelplane cluster up` starts one")
        pid = self._read_pid(component)
        if pid is not None and self._is_ours(pid):
            raise DevClusterError(f"{component} is already running (pid {pid})")
        if component in OPTIONAL_PROCESSES:
            from modelplane_dev.devcluster import lws  # it builds on this module

            lws.start(self, state, lws.build_controller(), timeout=timeout)
            return
        starters: dict[str, Callable[[State], None]] = {
            "etcd": self._start_etcd, "kube-apiserver": self._start_apiserver,
            "kube-controller-manager": self._start_controller_manager,
            "kube-scheduler": self._start_scheduler, "kwok": self._start_kwok,
            "sim-agent": self._start_agent}
        starters[component](state)
        deadline = time.monotonic() + timeout
        if component == "etcd":
            self._wait("etcd", deadline, lambda: self._etcd_healthy(state.ports["etcd"]),
                       component=component)
        elif component == "kube-apiserver":
            self._wait("kube-apiserver /readyz", deadline,
                       lambda: asyncio.run(self._readyz()) == "ok", component=component)
        else:
            self._check_alive(component)
            self._log(f"started {component} again")

    def restart_component(self, component: str, *, down_seconds: float = 0.0,
                          timeout: float = 60.0) -> None:
        """``kill_component``, leave it down for ``down_seconds`` (the outage), ``start_component``."""
        self.kill_component(component)
        time.sleep(down_seconds)
        self.start_component(component, timeout=timeout)

    @staticmethod
    def _check_component(component: str) -> None:
        if component not in (*PROCESSES, *OPTIONAL_PROCESSES):
            raise DevClusterError(f"unknown component {component!r}; known: "
                                  f"{', '.join((*PROCESSES, *OPTIONAL_PROCESSES))}")

    # --- process handling -----------------------------------------------------------------

    def _read_pid(self, component: str) -> int | None:
        try:
            return int(self._pid_file(component).read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_ours(self, pid: int) -> bool:
        """The pid is alive and its command line points into our run directory (not a reused pid)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(") ", 1)[-1].startswith("Z"):
            return False  # a zombie is dead; it only waits for its parent to reap it
        return str(self.run_dir) in cmdline

    def _terminate(self, pid: int, grace: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._is_ours(pid):
            self._reap(pid)
            time.sleep(0.05)
        if self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self._reap(pid)

    @staticmethod
    def _reap(pid: int) -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def start_process(self, component: str, argv: list[str],
                      env: Mapping[str, str] | None = None) -> None:
        """Start one long-running component detached from us, logging to its file."""
        log = self.log_file(component).open("ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.run_dir, env=full_env)
        log.close()
        self._procs[component] = proc
        _DETACHED.append(proc)
        self._pid_file(component).write_text(str(proc.pid))

    def _check_alive(self, component: str) -> None:
        proc = self._procs.get(component)
        if proc is not None and proc.poll() is not None:
            tail = self.log_file(component).read_text(errors="replace").splitlines()[-15:]
            raise DevClusterError(
                f"{component} exited with code {proc.returncode} during start.\n"
                f"Last lines of {self.log_file(component)}:\n  " + "\n  ".join(tail) +
                "\nA port taken by another process, or a stale data directory, are the usual "
                "causes: `modelplane cluster down --remove` and start again.")

    def _wait(self, what: str, deadline: float, check: Callable[[], bool], *,
              component: str | None = None) -> None:
        start = time.monotonic()
        while True:
            for name in self._procs:
                self._check_alive(name)
            try:
                if check():
                    self._log(f"{what}: ok ({time.monotonic() - start:.1f} s)")
                    return
            except Exception:  # noqa: BLE001 — not up yet; the deadline bounds the retries
                pass
            if time.monotonic() > deadline:
                hint = f"; read {self.log_file(component)}" if component else ""
                raise DevClusterError(f"timed out waiting for {what}{hint}")
            time.sleep(0.2)

    # --- components -----------------------------------------------------------------------

    def _bin(self, state: State, name: str) -> str:
        return str(Path(state.bin_dir) / name)

    def _start_etcd(self, state: State) -> None:
        p = state.ports
        self.start_process("etcd", [
            self._bin(state, "etcd"), "--name=devcluster",
            f"--data-dir={self.run_dir / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-cluster=devcluster=http://127.0.0.1:{p['etcd-peer']}",
            "--listen-metrics-urls=", "--log-level=warn",
            # A dev cluster trades durability for speed: no fsync on every write.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
        ])

    def _start_apiserver(self, state: State) -> None:
        pki = self.run_dir / "pki"
        self.start_process("kube-apiserver", [
            self._bin(state, "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            # 1.37 refuses a loopback advertise address for the `kubernetes` Service's endpoints;
            # nothing here reaches the API through that Service, so don't reconcile it.
            "--endpoint-reconciler-type=none",
            f"--secure-port={state.ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            # Fills the extension-apiserver-authentication ConfigMap the controller-manager and
            # scheduler read for delegated authentication (else they log errors every second).
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            # No kubelets answer on nodes: never try to reach one.
            "--kubelet-preferred-address-types=InternalIP",
            "--event-ttl=1h",
        ])

    def _start_controller_manager(self, state: State) -> None:
        pki = self.run_dir / "pki"
        self.start_process("kube-controller-manager", [
            self._bin(state, "kube-controller-manager"),
            f"--kubeconfig={self.run_dir / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={self.run_dir / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={self.run_dir / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={state.ports['controller-manager']}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--allocate-node-cidrs=false",
            # Garbage collection (owner references) and the Deployment/ReplicaSet/Job controllers
            # are what the operator relies on; all default controllers run.
            "--controllers=*",
            "--concurrent-deployment-syncs=10",
        ])

    def _start_scheduler(self, state: State) -> None:
        kc = self.run_dir / "scheduler.kubeconfig"
        self.start_process("kube-scheduler", [
            self._bin(state, "kube-scheduler"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={state.ports['scheduler']}",
            "--leader-elect=false",
        ])

    def _start_kwok(self, state: State) -> None:
        self.start_process("kwok", [
            self._bin(state, "kwok"), f"--kubeconfig={self.run_dir / 'kwok.kubeconfig'}",
            f"--config={self.run_dir / 'kwok.yaml'}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={state.pod_cidr}", "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{state.ports['kwok']}",
            # Its INFO level logs every lease renewal; warnings are what a person needs.
            "--v=WARN",
        ])

    def _start_agent(self, state: State) -> None:
        # Under a supervisor that starts it again if it ever dies: every pod IP depends on it.
        load_seconds = parse_duration_ms(state.pod_ready_delay) / 1000
        self.start_process("sim-agent", [
            sys.executable, "-m", "modelplane_dev.devcluster.supervise", "--name=sim-agent", "--",
            sys.executable, "-m", "modelplane_dev.devcluster.agent",
            f"--kubeconfig={self.kubeconfig}", f"--load-seconds={load_seconds}"])

    def _write_kubeconfigs(self, state: State) -> None:
        for name, stem in (("kubeconfig", "admin"),
                           ("controller-manager.kubeconfig", "controller-manager"),
                           ("scheduler.kubeconfig", "scheduler"), ("kwok.kubeconfig", "kwok")):
            self.write_kubeconfig(state, name, stem)

    def write_kubeconfig(self, state: State, name: str, stem: str) -> Path:
        """``<run-dir>/<name>``: a kubeconfig with the client certificate ``pki/<stem>.crt``."""
        pki = self.run_dir / "pki"
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        doc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "modelplane-dev", "cluster": {
                "server": state.server, "certificate-authority-data": ca}}],
            "users": [{"name": stem, "user": {
                "client-certificate-data": base64.b64encode(
                    (pki / f"{stem}.crt").read_bytes()).decode(),
                "client-key-data": base64.b64encode(
                    (pki / f"{stem}.key").read_bytes()).decode()}}],
            "contexts": [{"name": "modelplane-dev",
                          "context": {"cluster": "modelplane-dev", "user": stem}}],
            "current-context": "modelplane-dev",
        }
        path = self.run_dir / name
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    # --- API checks -----------------------------------------------------------------------

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    def client(self) -> kube.Kube:
        return kube.Kube(kube.load_kubeconfig(self.kubeconfig), timeout=10)

    async def _readyz(self) -> str:
        async with self.client() as k:
            async with k.session.get(k.config.server + "/readyz") as resp:
                return (await resp.text()).strip()

    async def _has_default_sa(self) -> bool:
        async with self.client() as k:
            return await k.get(kube.SERVICEACCOUNTS, "default", namespace="default") is not None

    async def _create_nodes(self, nodes: list[dict[str, Any]]) -> None:
        async with self.client() as k:
            for node in nodes:
                try:
                    await k.create(node)
                except kube.Conflict:
                    await k.apply(node, field_manager="modelplane-devcluster")

    async def _nodes_ready(self, want: int) -> bool:
        async with self.client() as k:
            ready = 0
            for node in await k.list(kube.NODES, label_selector="type=kwok"):
                for cond in node.get("status", {}).get("conditions") or []:
                    if cond.get("type") == "Ready" and cond.get("status") == "True":
                        ready += 1
            return ready >= want

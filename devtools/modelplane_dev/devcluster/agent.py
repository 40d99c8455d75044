"""The dev cluster's pod agent: a simulated vLLM server on each fake GPU pod's own IP.

kwok runs no containers, so nothing would answer on a pod's IP. The agent watches pods bound to
kwok nodes and, for each one that has an IP, starts a ``modelplane_dev.sim`` server bound to that IP
(a 127.x address, so it exists on this machine) and the container's port, configured from the
pod's own ``vllm serve`` arguments and its node's GPU type. It stops the server when the pod goes.
One process serves every pod, so the operator's scrapes and the evaluation gate's requests travel
over real sockets to what looks, byte for byte, like vLLM.

Pods and kwok nodes are read through the operator's informers (LIST, then WATCH), so an API
server outage — kube-apiserver killed or restarted, a reset connection, 410 Gone, a timeout — ends
nothing: the informers retry with bounded backoff and log once per outage, the simulators already
running keep serving from their own sockets, and once the API server answers again a fresh LIST
brings the agent up to date (new pods get a server, deleted pods' servers stop). Every change is
handled the same way: ``plan_servers`` compares the pods in the cache with what the agent serves
and says what to stop and what to start.

A checkpoint's behaviour (accuracy, error rate, slowness) comes from the ConfigMap
``modelplane-sim`` in the pod's namespace (key ``behaviors.yaml``, the format of
``modelplane_dev.sim.quality.parse_behaviors``), read when the pod's server starts; while the API
server cannot answer that read, the start is retried with backoff. ``/health`` answers 503 for
``--load-seconds`` after start, like an engine loading its weights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from modelplane import gpus
from modelplane.controller import kube
from modelplane.controller.informer import Backoff, Informer
from modelplane_dev.sim.quality import BehaviorMap, parse_behaviors
from modelplane_dev.sim.server import SimServer

log = logging.getLogger("modelplane.agent")

BEHAVIOR_CONFIGMAP = "modelplane-sim"
BEHAVIOR_KEY = "behaviors.yaml"
#: The label every kwok node of the dev cluster carries (``cluster.build_nodes``).
KWOK_NODE_SELECTOR = "type=kwok"
#: A node without a GPU label still gets simulators (they refuse big models, as vLLM would).
CPU_NODE_GPU_TYPE = "nvidia-l4"
#: What an API call can fail with while the API server is away or restarting.
API_UNAVAILABLE = (kube.ApiError, aiohttp.ClientError, TimeoutError, OSError)


@dataclass(frozen=True)
class PodTarget:
    """What a pod needs from the agent: where to listen and how to configure the simulator."""

    uid: str
    namespace: str
    name: str
    ip: str
    port: int
    argv: tuple[str, ...]
    node: str
    #: The container's literal environment variables (``valueFrom`` ones are not resolved).
    env: tuple[tuple[str, str], ...] = ()


def pod_target(pod: Mapping[str, Any], kwok_nodes: Container[str]) -> PodTarget | None:
    """The pod's simulator target, or None when the agent should not (or no longer) serve it."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName")
    ip = status.get("podIP")
    # A terminating pod keeps answering until it is gone, as vLLM does through its preStop
    # pause: the Service has already dropped it, and requests in flight finish.
    if node not in kwok_nodes or not ip or not meta.get("uid"):
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    for container in spec.get("containers") or []:
        ports = [p for p in container.get("ports") or [] if p.get("containerPort")]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if ports and any(a in ("serve", "vllm") or "api_server" in a for a in argv):
            return PodTarget(uid=str(meta["uid"]), namespace=str(meta.get("namespace")),
                             name=str(meta.get("name")), ip=str(ip),
                             port=int(ports[0]["containerPort"]), argv=tuple(argv), node=str(node),
                             env=tuple((str(e["name"]), str(e["value"])) for e in container.get("env") or []
                                       if "name" in e and "value" in e))
    return None


def node_gpu_type(node: Mapping[str, Any]) -> str:
    """The GPU type name the simulator is built for on this node (from GPU feature discovery's label)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    gpu = gpus.by_product(str(labels.get(gpus.PRODUCT_LABEL, "")))
    return gpu.name if gpu else CPU_NODE_GPU_TYPE


@dataclass(frozen=True)
class ServerPlan:
    """What to change so that the servers match the pods: stop these pods' servers, start these."""

    stop: tuple[str, ...] = ()  #: pod uids, sorted
    start: tuple[PodTarget, ...] = ()  #: sorted by uid


def plan_servers(pods: Iterable[Mapping[str, Any]], node_gpu: Mapping[str, str],
                 handled: Mapping[str, PodTarget]) -> ServerPlan:
    """Compare the pods (as cached) with the targets the agent has handled, by pod uid.

    ``handled`` holds every target the agent has acted on: served, or refused because the model
    does not fit (it is not tried again until the pod changes). A handled target that is no longer
    wanted, or wanted differently, is stopped; a wanted target not yet handled is started. A pod
    recreated under the same name has a new uid, so its old server stops and a new one starts.
    """
    wanted: dict[str, PodTarget] = {}
    for pod in pods:
        target = pod_target(pod, node_gpu)
        if target is not None:
            wanted[target.uid] = target
    stop = tuple(sorted(uid for uid, target in handled.items() if wanted.get(uid) != target))
    start = tuple(target for uid, target in sorted(wanted.items()) if handled.get(uid) != target)
    return ServerPlan(stop=stop, start=start)


class Server(Protocol):
    """A running simulator, as the agent sees it."""

    async def stop(self) -> None: ...


#: Starts a pod's simulator: (target, GPU type, behaviours) → the running server. Raises
#: ``ValueError`` when the model cannot run there, ``OSError`` when the address cannot be bound.
ServerFactory = Callable[[PodTarget, str, BehaviorMap], Awaitable[Server]]


class Agent:
    """Keeps one simulator running per served pod, through any API server outage."""

    def __init__(self, client: kube.Kube, *, load_seconds: float = 0.0,
                 serve: ServerFactory | None = None, backoff: Backoff | None = None,
                 informer_backoff: Callable[[], Backoff] = Backoff) -> None:
        self.kube = client
        self.load_seconds = load_seconds
        self._serve = serve or self.start_sim_server
        #: Every target acted on (see ``plan_servers``), and the servers of those that run.
        self.handled: dict[str, PodTarget] = {}
        self.servers: dict[str, Server] = {}
        self.changed = asyncio.Event()
        self.backoff = backoff or Backoff(first=0.5, cap=10.0)
        self.pods = Informer(client, kube.PODS, handler=self._heard, backoff=informer_backoff())
        self.nodes = Informer(client, kube.NODES, label_selector=KWOK_NODE_SELECTOR,
                              handler=self._heard, backoff=informer_backoff())
        self._api_down = False

    def _heard(self, event_type: str, obj: dict[str, Any]) -> None:
        self.changed.set()

    def node_gpu(self) -> dict[str, str]:
        return {str(node["metadata"]["name"]): node_gpu_type(node) for node in self.nodes.items()}

    async def run(self) -> None:
        """Watch pods and nodes and keep the servers in step, forever. Cancel to stop."""
        async with asyncio.TaskGroup() as group:
            # An informer never ends by itself; if one raised (a bug), the group cancels the rest
            # and the error ends the process, which the dev cluster's supervisor starts again.
            group.create_task(self.pods.run())
            group.create_task(self.nodes.run())
            group.create_task(self._keep_in_step())

    async def _keep_in_step(self) -> None:
        await self.pods.synced.wait()
        await self.nodes.synced.wait()
        while True:
            self.changed.clear()
            if await self.reconcile():
                self.backoff.reset()
                await self.changed.wait()
                continue
            # A start waits for the API server: try again after a backoff, or at the next change.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.backoff.next_delay())

    async def reconcile(self) -> bool:
        """Make the servers match the cached pods; False when a start must be tried again later."""
        node_gpu = self.node_gpu()
        plan = plan_servers(self.pods.items(), node_gpu, self.handled)
        # Stops first: a pod replaced by one on the same IP and port needs the address free.
        for uid in plan.stop:
            await self.stop(uid)
        done = True
        for target in plan.start:
            done = await self.start(target, node_gpu[target.node]) and done
        return done

    async def start(self, target: PodTarget, gpu_type: str) -> bool:
        """Start the target's server; False when the API server could not be asked for its behaviours."""
        try:
            behaviors = await self.behaviors(target.namespace)
        except API_UNAVAILABLE as exc:
            if not self._api_down:
                log.warning("cannot read %s/%s for %s (%s: %s); starting its server once the API "
                            "server answers", target.namespace, BEHAVIOR_CONFIGMAP, target.name,
                            type(exc).__name__, exc)
            self._api_down = True
            return False
        self._api_down = False
        self.handled[target.uid] = target
        try:
            self.servers[target.uid] = await self._serve(target, gpu_type, behaviors)
        except (ValueError, OSError) as exc:
            # vLLM itself would crash on a model that does not fit; say so and serve nothing.
            log.warning("cannot simulate %s/%s on %s: %s", target.namespace, target.name,
                        target.ip, exc)
            return True
        log.info("serving %s/%s on %s:%d (%s)", target.namespace, target.name, target.ip,
                 target.port, gpu_type)
        return True

    async def start_sim_server(self, target: PodTarget, gpu_type: str,
                               behaviors: BehaviorMap) -> Server:
        server = SimServer.from_vllm_args(list(target.argv), gpu_type=gpu_type, behaviors=behaviors,
                                          host=target.ip, port=target.port, env=dict(target.env))
        server.behavior = replace(server.behavior, load_seconds=max(
            server.behavior.load_seconds, self.load_seconds))
        await server.start()
        return server

    async def behaviors(self, namespace: str) -> BehaviorMap:
        cm = await self.kube.get(kube.CONFIGMAPS, BEHAVIOR_CONFIGMAP, namespace=namespace)
        text = ((cm or {}).get("data") or {}).get(BEHAVIOR_KEY)
        if not text:
            return BehaviorMap()
        try:
            return parse_behaviors(text)
        except ValueError as exc:
            log.warning("ignoring %s/%s: %s", namespace, BEHAVIOR_CONFIGMAP, exc)
            return BehaviorMap()

    async def stop(self, uid: str) -> None:
        target = self.handled.pop(uid, None)
        server = self.servers.pop(uid, None)
        if server is not None:
            await server.stop()
            if target is not None:
                log.info("stopped %s/%s", target.namespace, target.name)

    async def close(self) -> None:
        for uid in list(self.handled):
            await self.stop(uid)


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with kube.Kube(kube.load_kubeconfig(args.kubeconfig)) as client:
        agent = Agent(client, load_seconds=args.load_seconds)
        task = asyncio.create_task(agent.run())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agent.close()
        if task in done:
            task.result()  # the agent ended by itself: only a bug does that; let it be seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane_dev.devcluster.agent",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--load-seconds", type=float, default=0.0,
                        help="seconds /health answers 503 after a pod's server starts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

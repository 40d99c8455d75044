"""The dev cluster's pod agent: a simulated vLLM server on each fake GPU pod's own IP.

kwok runs no containers, so nothing would answer on a pod's IP. The agent watches pods bound to
kwok nodes and, for each one that has an IP, starts a ``modelplane_dev.sim`` server bound to that IP
(a 127.x address, so it exists on this machine) and the container's port, configured from the
pod's own ``vllm serve`` arguments and its node's GPU type. It stops the server when the pod goes.
One process serves every pod, so the operator's scrapes and the evaluation gate's requests travel
over real sockets to what looks, byte for byte, like vLLM.

A checkpoint's behaviour (accuracy, error rate, slowness) comes from the ConfigMap
``modelplane-sim`` in the pod's namespace (key ``behaviors.yaml``, the format of
``modelplane_dev.sim.quality.parse_behaviors``), read when the pod's server starts. ``/health``
answers 503 for ``--load-seconds`` after start, like an engine loading its weights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelplane import gpus
from modelplane.controller import kube
from modelplane_dev.sim.quality import BehaviorMap, parse_behaviors
from modelplane_dev.sim.server import SimServer

log = logging.getLogger("modelplane.agent")

BEHAVIOR_CONFIGMAP = "modelplane-sim"
BEHAVIOR_KEY = "behaviors.yaml"


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


def pod_target(pod: dict[str, Any], kwok_nodes: set[str]) -> PodTarget | None:
    """The pod's simulator target, or None when the agent should not (or no longer) serve it."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName")
    ip = status.get("podIP")
    # A terminating pod keeps answering until it is gone, as vLLM does through its preStop
    # pause: the Service has already dropped it, and requests in flight finish.
    if node not in kwok_nodes or not ip:
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    for container in spec.get("containers") or []:
        ports = [p for p in container.get("ports") or [] if p.get("containerPort")]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if ports and any(a in ("serve", "vllm") or "api_server" in a for a in argv):
            return PodTarget(uid=str(meta.get("uid")), namespace=str(meta.get("namespace")),
                             name=str(meta.get("name")), ip=str(ip),
                             port=int(ports[0]["containerPort"]), argv=tuple(argv), node=str(node))
    return None


class Agent:
    def __init__(self, client: kube.Kube, *, load_seconds: float) -> None:
        self.kube = client
        self.load_seconds = load_seconds
        self.servers: dict[str, tuple[PodTarget, SimServer]] = {}
        self.node_gpu: dict[str, str] = {}

    async def refresh_nodes(self) -> None:
        for node in await self.kube.list(kube.NODES, label_selector="type=kwok"):
            labels = node["metadata"].get("labels") or {}
            gpu = gpus.by_product(str(labels.get(gpus.PRODUCT_LABEL, "")))
            # A CPU-only node still gets a simulator (it will refuse big models, as vLLM would).
            self.node_gpu[node["metadata"]["name"]] = gpu.name if gpu else "nvidia-l4"

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

    async def sync(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid"))
        if pod.get("metadata", {}).get("uid") and pod.get("spec", {}).get("nodeName") not in \
                self.node_gpu and pod.get("spec", {}).get("nodeName"):
            await self.refresh_nodes()
        target = pod_target(pod, set(self.node_gpu))
        current = self.servers.get(uid)
        if current is not None and current[0] == target:
            return
        if current is not None:
            await self.stop(uid)
        if target is None:
            return
        behaviors = await self.behaviors(target.namespace)
        try:
            server = SimServer.from_vllm_args(list(target.argv), gpu_type=self.node_gpu[target.node],
                                              behaviors=behaviors, host=target.ip, port=target.port)
            server.behavior = replace(server.behavior, load_seconds=max(
                server.behavior.load_seconds, self.load_seconds))
            await server.start()
        except (ValueError, OSError) as exc:
            # vLLM itself would crash on a model that does not fit; say so and serve nothing.
            log.warning("cannot simulate %s/%s on %s: %s", target.namespace, target.name,
                        target.ip, exc)
            return
        self.servers[uid] = (target, server)
        log.info("serving %s/%s on %s:%d (%s, %s)", target.namespace, target.name, target.ip,
                 target.port, server.config.served_name, self.node_gpu[target.node])

    async def stop(self, uid: str) -> None:
        entry = self.servers.pop(uid, None)
        if entry is not None:
            await entry[1].stop()
            log.info("stopped %s/%s", entry[0].namespace, entry[0].name)

    async def run(self) -> None:
        await self.refresh_nodes()
        while True:
            listing = await self.kube.list_raw(kube.PODS)
            seen = set()
            for pod in listing.get("items") or []:
                seen.add(str(pod["metadata"]["uid"]))
                await self.sync(pod)
            for uid in set(self.servers) - seen:
                await self.stop(uid)
            version = listing["metadata"]["resourceVersion"]
            try:
                async for event in self.kube.watch(kube.PODS, resource_version=version,
                                                   timeout_seconds=120):
                    if event.type == "BOOKMARK":
                        continue
                    if event.type == "DELETED":
                        await self.stop(str(event.object["metadata"]["uid"]))
                    else:
                        await self.sync(event.object)
            except (kube.ApiError, OSError, TimeoutError) as exc:
                log.info("pod watch ended (%s); listing again", exc)

    async def close(self) -> None:
        for uid in list(self.servers):
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
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agent.close()
        if task in done and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]


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

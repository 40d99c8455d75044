"""``python -m bench.scaleup [--trials N]``: from demand to the next replica's pod, through the gateway.

Two reactions, each against Kubernetes' own floor measured in the same run. The load goes through
a ``modelplane gateway`` process that the bench starts; the operator (``modelplane run``) reads the
gateway's held requests (``--gateway-metrics-url``), as it reads the chart's gateway pods.

- **From zero** (issue 15's target: ≤ 1 s median): a ModelDeployment at zero replicas
  (``minReplicas`` 0); requests are sent to the gateway, which holds them; **held** is the moment
  the first request is sent (it is held as it arrives; the bench checks that the gateway's
  ``modelplane_gateway_held_requests`` showed it), **pod created** the first 50 ms list of the
  namespace's pods that shows the model's pod. Every request must then be answered (200).
- **From one** (issue 6's target: ≤ 5 s): a ModelDeployment (``maxNumSeqs`` 2, 1..2 replicas) with
  its first replica Ready; load through the gateway; **queue formed** is the first 50 ms read of
  the pod's ``/metrics`` with ``vllm:num_requests_waiting`` > 0, **pod created** the first list
  that shows a second pod. This one waits on the operator's scrape of the pods (``--resync-seconds
  2``): the queue is at the pod, not at the gateway.
- **The floor**: a plain Deployment patched from 0 to 1 replica until its pod shows in the same
  50 ms list — the API server and the ReplicaSet controller, which no operator can beat.

The report gives each trial's latencies, the medians and the worst, and the medians' ratios to the
floor's; it is printed and written into bench/README.md between the SCALEUP markers. The dev cluster
is started if it is not running (and stopped again at the end), as ``modelplane demo`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.readme import replace_section
from modelplane import render
from modelplane.controller import health, kube
from modelplane.controller.gateways import parse_held
from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics
from modelplane_dev import demo, loadgen
from modelplane_dev.devcluster import DevCluster, DevClusterError, Options
from modelplane_dev.devcluster.cluster import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- SCALEUP:BEGIN -->", "<!-- SCALEUP:END -->"
POLL = 0.05
TARGET_SECONDS = 5.0
ZERO_TARGET_SECONDS = 1.0


@dataclass(frozen=True)
class Trial:
    from_zero: float  #: first request held at the gateway → the model's first pod listed
    latency: float  #: queue formed → second pod listed
    floor: float  #: Deployment replicas 0 → 1 patched → its pod listed


def model(name: str, namespace: str, *, min_replicas: int = 1, max_replicas: int = 2) -> dict[str, Any]:
    scaling: dict[str, Any] = {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                               "targetQueueDepth": 1, "scaleDownDelay": "10s"}
    if min_replicas == 0:
        scaling["scaleToZeroAfter"] = "5m"
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": name},
                     "engine": {"maxModelLen": 4096, "maxNumSeqs": 2},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": scaling}}


def floor_deployment(name: str, namespace: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}],
                                           "tolerations": [{"operator": "Exists"}]}}}}


async def until(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise DevClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL)


async def pod_names(client: kube.Kube, namespace: str, selector: str | None = None) -> set[str]:
    return {p["metadata"]["name"] for p in await client.list(kube.PODS, namespace=namespace,
                                                             label_selector=selector)}


async def from_zero(client: kube.Kube, http: aiohttp.ClientSession, gateway: Gateway, namespace: str,
                    i: int) -> float:
    """First request held at the gateway → the model's first pod listed (every request answered)."""
    name = f"zero-{i}"
    await client.create(model(name, namespace, min_replicas=0, max_replicas=1))
    selector = f"{render.LABEL_MODEL_DEPLOYMENT}={name}"

    async def at_zero() -> bool:
        md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=namespace)
        return ((md or {}).get("status") or {}).get("phase") == "ScaledToZero"

    await until(at_zero, timeout=60, what=f"{name} at zero replicas")

    async def routed() -> bool:  # the gateway knows the model (else it would answer 404)
        async with http.get(f"{gateway.url}/v1/models/{name}") as resp:
            return resp.status == 200

    await until(routed, timeout=30, what=f"the gateway to route {name}")
    seen_held = False

    async def pod_created() -> float:
        nonlocal seen_held
        while True:
            if await pod_names(client, namespace, selector):
                return time.monotonic()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(gateway.metrics_url) as resp:
                    seen_held = seen_held or parse_held(await resp.text()).get((namespace, name), 0) > 0
            await asyncio.sleep(POLL)

    async def send(j: int) -> int:
        body = {"model": name, "messages": [{"role": "user", "content": f"hello {j}"}], "max_tokens": 8}
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=120)) as resp:
            await resp.read()
            return resp.status

    created = asyncio.create_task(pod_created())
    held_at = time.monotonic()
    requests = [asyncio.create_task(send(j)) for j in range(4)]
    t_pod = await asyncio.wait_for(created, timeout=60)
    statuses = await asyncio.wait_for(asyncio.gather(*requests), timeout=120)
    if statuses != [200] * len(statuses):
        raise DevClusterError(f"{name}: requests held at zero were not all answered: {statuses}")
    if not seen_held:
        raise DevClusterError(f"{name}: the gateway never showed the requests as held")
    await client.delete(kube.MODELDEPLOYMENTS, name, namespace=namespace)
    return t_pod - held_at


async def one_trial(client: kube.Kube, http: aiohttp.ClientSession, gateway: Gateway, namespace: str,
                    i: int) -> Trial:
    zero = await from_zero(client, http, gateway, namespace, i)
    name = f"scale-{i}"
    await client.create(model(name, namespace))
    selector = f"{render.LABEL_MODEL_DEPLOYMENT}={name}"

    async def ready_pod() -> dict[str, Any] | None:
        pods = await client.list(kube.PODS, namespace=namespace, label_selector=selector)
        return next((p for p in pods if health.is_ready(p) and (p.get("status") or {}).get("podIP")), None)

    pod = await until(ready_pod, timeout=120, what=f"{name}'s first replica to be Ready")
    url = f"http://{pod['status']['podIP']}:{render.PORT}"
    first = await pod_names(client, namespace, selector)

    async def queue_formed() -> float:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, MetricsError):
                async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    metrics = parse_vllm_metrics(await resp.text(), scraped_at=0.0, model_name=name)
                if metrics.waiting > 0:
                    return time.monotonic()
            await asyncio.sleep(POLL)

    async def pod_created() -> float:
        while True:
            if await pod_names(client, namespace, selector) - first:
                return time.monotonic()
            await asyncio.sleep(POLL)

    queued = asyncio.create_task(queue_formed())
    created = asyncio.create_task(pod_created())
    config = loadgen.LoadConfig(base_url=f"{gateway.url}/v1", model=name,
                                schedule=loadgen.parse_schedule("constant:8"), duration=20,
                                prompt_tokens=loadgen.Lengths(100),
                                output_tokens=loadgen.Lengths(32, maximum=48), timeout=120)
    load = asyncio.create_task(loadgen.run_load(config))
    try:
        t_queue, t_pod = await asyncio.wait_for(asyncio.gather(queued, created), timeout=60)
    finally:
        for task in (queued, created, load):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    await client.delete(kube.MODELDEPLOYMENTS, name, namespace=namespace)

    floor_name = f"floor-{i}"
    await client.create(floor_deployment(floor_name, namespace))
    started = time.monotonic()
    await client.patch(kube.DEPLOYMENTS, floor_name, {"spec": {"replicas": 1}}, namespace=namespace)

    async def floor_pod() -> bool:
        return bool(await pod_names(client, namespace, f"app={floor_name}"))

    await until(floor_pod, timeout=30, what=f"{floor_name}'s pod")
    floor = time.monotonic() - started
    await client.delete(kube.DEPLOYMENTS, floor_name, namespace=namespace)
    return Trial(from_zero=zero, latency=t_pod - t_queue, floor=floor)


@dataclass(frozen=True)
class Gateway:
    url: str
    metrics_url: str


def start_gateway(kubeconfig: str, log: Path, namespace: str) -> tuple[subprocess.Popen[bytes], Gateway]:
    """``modelplane gateway`` for ``namespace`` on loopback ports, as its own process."""
    port, metrics_port = free_port(), free_port()
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--namespace", namespace],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1"))
    out.close()
    return proc, Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")


async def run(trials: int, cluster: DevCluster, kubeconfig: str) -> list[Trial]:
    namespace = "bench-scaleup-" + hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    async with kube.Kube(kube.load_kubeconfig(kubeconfig)) as client, aiohttp.ClientSession() as http:
        await demo.install(client, namespace=namespace)
        gateway_proc, gateway = start_gateway(kubeconfig, cluster.log_file("gateway-bench"), namespace)
        operator: subprocess.Popen[bytes] | None = None
        out: list[Trial] = []
        try:
            operator = demo.start_operator(kubeconfig, cluster.log_file("operator-bench"),
                                           namespace=namespace,
                                           extra_args=("--gateway-metrics-url", gateway.metrics_url))
            async def gateway_ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(gateway.metrics_url.replace("/metrics", "/readyz")) as resp:
                        return resp.status == 200
                return False

            await until(gateway_ready, timeout=30, what="the gateway's /readyz")
            for i in range(trials):
                trial = await one_trial(client, http, gateway, namespace, i)
                print(f"trial {i + 1}/{trials}: held at the gateway → pod {trial.from_zero:.2f} s; "
                      f"queue → pod {trial.latency:.2f} s; Kubernetes floor {trial.floor:.2f} s", flush=True)
                out.append(trial)
        finally:
            if operator is not None:
                demo.stop_process(operator)
            demo.stop_process(gateway_proc)
            with contextlib.suppress(kube.ApiError):
                await client.delete(kube.NAMESPACES, namespace)
        return out


def report(trials: list[Trial], elapsed: float) -> str:
    zeros = [t.from_zero for t in trials]
    latencies = [t.latency for t in trials]
    floors = [t.floor for t in trials]
    zero, zero_worst = statistics.median(zeros), max(zeros)
    median, worst, floor = statistics.median(latencies), max(latencies), statistics.median(floors)
    rows = "\n".join(f"| {i + 1} | {t.from_zero:.2f} | {t.latency:.2f} | {t.floor:.2f} |"
                     for i, t in enumerate(trials))
    zero_verdict = "met" if zero <= ZERO_TARGET_SECONDS else "NOT met"
    verdict = "met" if worst <= TARGET_SECONDS else "NOT met"
    return (f"{BEGIN}\n{len(trials)} trials, {elapsed:.0f} s on this machine (operator "
            f"`--resync-seconds 2 --gateway-scrape-seconds 0.25`; load through `modelplane gateway`).\n\n"
            f"| trial | from zero: first request held at the gateway → pod (s) "
            f"| from one: queue formed at the pod → new pod (s) "
            f"| Kubernetes floor: replicas patched → pod (s) |\n"
            f"| ---: | ---: | ---: | ---: |\n{rows}\n\n"
            f"From zero: median {zero:.2f} s, worst {zero_worst:.2f} s (target ≤ {ZERO_TARGET_SECONDS:g} s "
            f"median: {zero_verdict}); {zero / floor:.1f}× the floor's median ({floor:.2f} s).\n"
            f"From one: median {median:.2f} s, worst {worst:.2f} s (target ≤ {TARGET_SECONDS:g} s: "
            f"{verdict}); {median / floor:.1f}× the floor's median.\n{END}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials (default 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    cluster = DevCluster()
    was_running = cluster.is_healthy()
    try:
        state = cluster.up(Options())
    except DevClusterError as exc:
        print(f"bench.scaleup: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        trials = asyncio.run(run(args.trials, cluster, state.kubeconfig))
    except DevClusterError as exc:
        print(f"bench.scaleup: {exc}", file=sys.stderr)
        return 1
    finally:
        if not was_running:
            cluster.down()
    section = report(trials, time.monotonic() - started)
    print(section)
    if not args.no_write:
        replace_section(README, section, begin=BEGIN, end=END)
        print(f"updated {README.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

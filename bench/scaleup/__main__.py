"""``python -m bench.scaleup [--trials N]``: from a queue forming to the next replica's pod.

Issue 6's target: on the dev cluster, at most 5 s from a queue forming on a replica to the pod of
the next replica being created. Each trial:

1. creates a ModelDeployment (Llama 3.1 8B on L4, ``maxNumSeqs`` 2, 1..2 replicas) and waits for
   its first replica to be Ready;
2. reads that pod's ``/metrics`` every 50 ms and lists the namespace's pods every 50 ms;
3. sends load straight to the pod; **queue formed** is the first read with
   ``vllm:num_requests_waiting`` > 0, **pod created** the first list that shows a second pod;
4. for the baseline, measured in the same run on the same cluster: patches a plain Deployment from
   0 to 1 replica and times, with the same 50 ms list, its pod appearing. That is Kubernetes' own
   floor (the API server and the ReplicaSet controller), which no operator can beat.

The report gives each trial's latency, the median and the worst, and the median's ratio to the
floor's; it is printed and written into bench/README.md between the SCALEUP markers. The dev cluster
is started if it is not running (and stopped again at the end), as ``modelplane demo`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.readme import replace_section
from modelplane import render
from modelplane.controller import health, kube
from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics
from modelplane_dev import demo, loadgen
from modelplane_dev.devcluster import DevCluster, DevClusterError, Options

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- SCALEUP:BEGIN -->", "<!-- SCALEUP:END -->"
POLL = 0.05
TARGET_SECONDS = 5.0


@dataclass(frozen=True)
class Trial:
    latency: float  #: queue formed → second pod listed
    floor: float  #: Deployment replicas 0 → 1 patched → its pod listed


def model(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": name},
                     "engine": {"maxModelLen": 4096, "maxNumSeqs": 2},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 1,
                                 "scaleDownDelay": "10s"}}}


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


async def one_trial(client: kube.Kube, http: aiohttp.ClientSession, namespace: str, i: int) -> Trial:
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
    config = loadgen.LoadConfig(base_url=f"{url}/v1", model=name,
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
    return Trial(latency=t_pod - t_queue, floor=floor)


async def run(trials: int, cluster: DevCluster, kubeconfig: str) -> list[Trial]:
    namespace = "bench-scaleup-" + hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    async with kube.Kube(kube.load_kubeconfig(kubeconfig)) as client, aiohttp.ClientSession() as http:
        await demo.install(client, namespace=namespace)
        operator = demo.start_operator(kubeconfig, cluster.log_file("operator-bench"), None,
                                       namespace=namespace)
        out: list[Trial] = []
        try:
            for i in range(trials):
                trial = await one_trial(client, http, namespace, i)
                print(f"trial {i + 1}/{trials}: queue → pod {trial.latency:.2f} s; "
                      f"Kubernetes floor {trial.floor:.2f} s", flush=True)
                out.append(trial)
        finally:
            demo.stop_process(operator)
            with contextlib.suppress(kube.ApiError):
                await client.delete(kube.NAMESPACES, namespace)
        return out


def report(trials: list[Trial], elapsed: float) -> str:
    latencies = [t.latency for t in trials]
    floors = [t.floor for t in trials]
    median, worst, floor = statistics.median(latencies), max(latencies), statistics.median(floors)
    rows = "\n".join(f"| {i + 1} | {t.latency:.2f} | {t.floor:.2f} |" for i, t in enumerate(trials))
    verdict = "met" if worst <= TARGET_SECONDS else "NOT met"
    return (f"{BEGIN}\n{len(trials)} trials, {elapsed:.0f} s on this machine "
            f"(operator `--resync-seconds 2`).\n\n"
            f"| trial | queue formed → new pod (s) | Kubernetes floor: replicas patched → pod (s) |\n"
            f"| ---: | ---: | ---: |\n{rows}\n\n"
            f"Median {median:.2f} s, worst {worst:.2f} s (target ≤ {TARGET_SECONDS:g} s: {verdict}); "
            f"the median is {median / floor:.1f}× the floor's median ({floor:.2f} s).\n{END}")


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

"""``modelplane demo``: the whole product on the local dev cluster, in one command.

It brings up the dev cluster (or reuses the running one), installs the CRD, starts the operator,
applies a ModelDeployment of Llama 3.1 8B on L4 GPUs, and sends it traffic through a stand-in for
its Service (``devcluster.serviceproxy``). A live view shows pods starting and turning Ready,
requests per second, the queue, replicas asked and running, and the fleet's $/hour, until Ctrl-C
or ``--duration``. Everything it started is stopped on the way out; a cluster that was already
running is left running.

``--ci`` prints plain lines instead of redrawing, ends after ``--duration`` seconds, and exits
non-zero unless the model became Ready and served every request it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelplane.controller import kube
from modelplane_dev import loadgen
from modelplane_dev.devcluster import DevCluster, DevClusterError, Options
from modelplane_dev.devcluster.cluster import free_port, repo_root
from modelplane_dev.devcluster.serviceproxy import ServiceProxy

NAMESPACE = "modelplane-demo"
NAME = "support-chat"

#: Small batches (maxNumSeqs 8) so that a laptop-sized load forms a queue the autoscaler answers.
DEMO_MODEL: dict[str, Any] = {
    "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": NAME, "namespace": NAMESPACE},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                  "servedName": NAME},
        "engine": {"maxModelLen": 8192, "maxNumSeqs": 8},
        "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
        "scaling": {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 2,
                    "scaleDownDelay": "30s", "cost": {"maxHourlyUSD": 3.5}},
    },
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole product on the local dev cluster, with live progress",
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ci", action="store_true",
                        help="plain output, stop after --duration, exit 1 unless all went well")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load before stopping (default: until Ctrl-C; 90 with --ci)")
    parser.add_argument("--profile", default="default", help="dev cluster node profile")
    parser.add_argument("--pod-ready-delay", default="20s",
                        help="emulated model load time of a new cluster's pods (default 20s)")
    parser.add_argument("--schedule", default="step:1@0,6@20,12@45,2@75",
                        help="request rate over time, in the load generator's syntax")
    parser.set_defaults(func=main)


@dataclass
class View:
    """What the live view shows, refreshed from status, pods and the proxy."""

    started: float = field(default_factory=time.monotonic)
    phase: str = "-"
    ready: int = 0
    pods: int = 0
    desired: int = 0
    queue: float = 0.0
    hourly_usd: float = 0.0
    reason: str = ""
    forwarded: int = 0
    failed: int = 0
    rps: float = 0.0
    max_ready: int = 0
    became_ready_at: float | None = None

    def line(self) -> str:
        return (f"{time.monotonic() - self.started:6.1f}s  phase {self.phase:<12} pods "
                f"{self.ready}/{self.pods} ready, desired {self.desired}  |  {self.rps:5.1f} answered/s, "
                f"queue/replica {self.queue:4.1f}  |  ${self.hourly_usd:.2f}/h"
                f"  |  {self.reason[:60]}")


async def refresh(view: View, client: kube.Kube, proxy: ServiceProxy, last: list[float]) -> None:
    md = await client.get(kube.MODELDEPLOYMENTS, NAME, namespace=NAMESPACE)
    status = (md or {}).get("status") or {}
    pods = [p for p in await client.list(kube.PODS, namespace=NAMESPACE)
            if not p["metadata"].get("deletionTimestamp")]
    view.phase = str(status.get("phase") or "-")
    view.pods = len(pods)
    view.ready = sum(1 for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                            for c in (p.get("status") or {}).get("conditions") or []))
    view.max_ready = max(view.max_ready, view.ready)
    view.desired = int(status.get("desiredReplicas") or 0)
    decision = (status.get("autoscaler") or {}).get("lastDecision") or {}
    view.queue = float(decision.get("queueDepth") or 0.0)
    # "Reason: message" — the message already names the reason in brackets.
    view.reason = str(decision.get("reason") or "").split(": ", 1)[-1]
    view.hourly_usd = float((status.get("cost") or {}).get("hourlyUSD") or 0.0)
    now = time.monotonic()
    view.rps = (proxy.stats.forwarded - last[1]) / max(1e-6, now - last[0])
    last[0], last[1] = now, proxy.stats.forwarded
    view.forwarded, view.failed = proxy.stats.forwarded, proxy.stats.failed
    if view.phase == "Ready" and view.became_ready_at is None:
        view.became_ready_at = now - view.started


def crd_path() -> Path:
    root = repo_root()
    if root is None:
        raise DevClusterError("run the demo from a modelplane checkout (it installs crds/)")
    return root / "crds" / "modeldeployments.modelplane.dev.yaml"


async def install(client: kube.Kube, namespace: str = NAMESPACE) -> None:
    """Apply the ModelDeployment CRD, wait until it is served, and create ``namespace``."""
    crd = yaml.safe_load(crd_path().read_text())
    await client.apply(crd)
    deadline = time.monotonic() + 60
    while True:
        got = await client.get(kube.CRDS, crd["metadata"]["name"])
        if any(c["type"] == "Established" and c["status"] == "True"
               for c in (got or {}).get("status", {}).get("conditions") or []):
            break
        if time.monotonic() > deadline:
            raise DevClusterError("the ModelDeployment CRD was not established within 60 s")
        await asyncio.sleep(0.5)
    with contextlib.suppress(kube.Conflict):
        await client.create({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": namespace}})


def start_operator(kubeconfig: str, log: Path, *, namespace: str = NAMESPACE,
                   extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """``modelplane run`` for ``namespace`` as its own process, logging to ``log``."""
    port = free_port()
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "run", "--namespace", namespace,
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--resync-seconds", "2",
         *extra_args,
         # A mirror of the Hub for config.json, e.g. inside a perimeter (tests point it at loopback).
         *(("--hf-endpoint", os.environ["MODELPLANE_HF_ENDPOINT"])
           if os.environ.get("MODELPLANE_HF_ENDPOINT") else ())],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1"))
    out.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


async def run_demo(args: argparse.Namespace, cluster: DevCluster, kubeconfig: str) -> int:
    duration = args.duration if args.duration is not None else (90.0 if args.ci else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def say(text: str) -> None:
        print(text, flush=True)

    async with kube.Kube(kube.load_kubeconfig(kubeconfig)) as client:
        say("installing the ModelDeployment CRD")
        await install(client)
        proxy = ServiceProxy(client, namespace=NAMESPACE, service=NAME)
        port = await proxy.start()
        log = cluster.log_file("operator-demo")
        operator = start_operator(kubeconfig, log)
        say(f"operator started (log: {log}); service proxy on http://127.0.0.1:{port}/v1")
        view = View()
        load_task: asyncio.Task[loadgen.LoadReport] | None = None
        report: loadgen.LoadReport | None = None
        try:
            await client.apply(DEMO_MODEL, field_manager="modelplane-demo")
            say(f"applied ModelDeployment {NAMESPACE}/{NAME} (Llama 3.1 8B on L4, 1..4 replicas, "
                "budget $3.50/h)")
            last = [time.monotonic(), 0.0]
            load_started: float | None = None
            while not stop.is_set():
                if operator.poll() is not None:
                    say(f"the operator exited with {operator.returncode}; see {log}")
                    return 1
                await refresh(view, client, proxy, last)
                say(view.line())
                if load_task is None and view.phase == "Ready":
                    say(f"model Ready after {view.became_ready_at:.1f} s; sending load "
                        f"({args.schedule}) through the Service")
                    config = loadgen.LoadConfig(
                        base_url=f"http://127.0.0.1:{port}/v1", model=NAME,
                        schedule=loadgen.parse_schedule(args.schedule),
                        duration=duration if duration is not None else 3600.0)
                    load_task = asyncio.create_task(loadgen.run_load(config))
                    load_started = time.monotonic()
                if load_task is not None and load_task.done():
                    report = load_task.result()
                    break
                if duration is not None and load_started is not None and \
                        time.monotonic() - load_started > duration + 30:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
        finally:
            if load_task is not None and not load_task.done():
                load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await load_task
            stop_process(operator)
            await proxy.stop()
            with contextlib.suppress(kube.ApiError):
                await client.delete(kube.NAMESPACES, NAMESPACE)
    summary = {
        "modelReadyAfterSeconds": view.became_ready_at,
        "maxReadyReplicas": view.max_ready,
        "requestsForwarded": view.forwarded,
        "requestsFailedAtProxy": view.failed,
        "load": report.to_dict() if report is not None else None,
    }
    say("summary: " + json.dumps(summary, sort_keys=True))
    ok = view.became_ready_at is not None and view.forwarded > 0 and view.failed == 0
    if report is not None and report.errors:
        ok = False
    return 0 if ok or not args.ci else 1


def main(args: argparse.Namespace) -> int:
    cluster = DevCluster()
    was_running = cluster.is_healthy()
    try:
        state = cluster.up(Options(profile=args.profile, pod_ready_delay=args.pod_ready_delay))
    except DevClusterError as exc:
        print(f"modelplane demo: {exc}")
        return 1
    try:
        return asyncio.run(run_demo(args, cluster, state.kubeconfig))
    finally:
        if not was_running:
            cluster.down()

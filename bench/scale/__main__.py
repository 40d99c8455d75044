"""``python -m bench.scale [--counts 100 500 1000]``: the operator with many ModelDeployments.

Issue 14's targets, on the dev cluster (real kube-apiserver, etcd, controller-manager, scheduler,
kwok GPU nodes). For each count, spread over ``--namespaces`` namespaces (most of them wait for
GPUs: the cluster has a few dozen):

1. the ModelDeployments are created first, then the operator (``modelplane run``, its own
   process, cluster-wide) is started: **time to status** is from its start until every one has a
   status for its generation (the bench's own LIST every second, not the operator's);
2. after it settles (no write for 10 s), a **steady window** of ``--window`` seconds: the
   operator's API requests and writes, counted by the operator itself
   (``modelplane_api_requests_total``, ``modelplane_api_writes_total``) and cross-checked with the
   API server's ``apiserver_request_total``: the whole server's rate with the operator running,
   minus its rate during a **baseline** window of the same length in the same run with the
   operator stopped (SIGSTOP: its watches stay open, it sends nothing), is what the operator adds;
3. the operator's **RSS** (``VmRSS`` of the process), highest seen during the window;
4. **spec change → child updated** (once the operator, continued after the baseline, has had
   every watch up for 5 s): ``--changes`` ModelDeployments, one after another, get
   ``spec.scaling.minReplicas`` 1 → 2 (a merge patch, as a user's edit); the time from the patch to
   the bench's own watch seeing that one's Deployment at 2 replicas, p50 and p99.
5. **the API server's floor** for time to status, with the operator stopped: as many new
   ModelDeployments in other namespaces, and the bench itself writes what the operator's first
   reconcile of each writes — its children (applied together) then its status — as fast as the
   API server takes them, ``max_concurrent_reconciles`` objects at a time (what the operator would
   write is computed before the clock starts, with the operator's own pure core; no Events, no
   reads). Time to status is reported against it.

The table is printed and written into bench/README.md between the SCALE markers. The dev cluster
is started if it is not running (and stopped again at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.readme import replace_section
from modelplane.controller import kube
from modelplane.controller import reconcile as core
from modelplane.controller.loop import Settings
from modelplane_dev import demo
from modelplane_dev.devcluster import DevCluster, DevClusterError, Options
from modelplane_dev.devcluster.cluster import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- SCALE:BEGIN -->", "<!-- SCALE:END -->"
PREFIX = "bench-scale-"
FLOOR_PREFIX = "bench-scale-floor-"
TARGETS = {"status_s": 60.0, "rss_mb": 250.0, "requests_per_s": 1.0, "writes": 0, "p99_s": 2.0}


@dataclass(frozen=True)
class Row:
    count: int
    status_s: float  #: operator start → every object has a status for its generation
    rss_mb: float
    requests_per_s: float  #: the operator's own count, steady window
    writes: int  #: the operator's writes in the steady window
    server_added_per_s: float  #: apiserver_request_total rate with the operator minus without
    window_s: float
    p50_s: float
    p99_s: float
    changes: int
    floor_s: float  #: the same first writes made by the bench alone (the API server's floor)


def model(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": name},
                     "engine": {"maxModelLen": 4096},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4", "nvidia-l40s"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 2}}}


async def bounded(coros: list[Any], limit: int = 16) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def operator_counts(http: aiohttp.ClientSession, port: int) -> tuple[float, float]:
    """(API requests, API writes) the operator has made, from its /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    requests = writes = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelplane_api_requests_total":
                requests += sample.value
            elif sample.name == "modelplane_api_writes_total":
                writes += sample.value
    return requests, writes


async def watching_again(http: aiohttp.ClientSession, port: int, *, timeout: float = 120.0) -> None:
    """Wait until the operator (just continued) has every watch up for 5 s in a row."""
    deadline = time.monotonic() + timeout
    up_since: float | None = None
    await asyncio.sleep(2.0)  # its timeouts fire first
    while time.monotonic() < deadline:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        down = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "modelplane_watches_down")
        up_since = (up_since or time.monotonic()) if down == 0 else None
        if up_since is not None and time.monotonic() - up_since >= 5.0:
            return
        await asyncio.sleep(0.5)
    raise DevClusterError(f"the operator's watches were not all up {timeout:.0f} s after SIGCONT")


async def server_requests(client: kube.Kube) -> float:
    """The API server's ``apiserver_request_total``, summed over every label."""
    text = await client.request("GET", "/metrics", content_type="text/plain")
    body = str(text.get("message", "")) if isinstance(text, dict) else str(text)
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                total += sample.value
    return total


async def all_have_status(client: kube.Kube, count: int) -> bool:
    items = await client.list(kube.MODELDEPLOYMENTS)
    done = sum(1 for md in items if md["metadata"]["name"].startswith("m-")
               and (md.get("status") or {}).get("observedGeneration") == md["metadata"].get("generation"))
    return done >= count


async def measure(count: int, namespaces: int, window: float, changes: int, cluster: DevCluster,
                  kubeconfig: str) -> Row:
    async with kube.Kube(kube.load_kubeconfig(kubeconfig)) as client, aiohttp.ClientSession() as http:
        names = [f"{PREFIX}{i}" for i in range(namespaces)]
        await demo.install(client, namespace=names[0])
        for ns in names[1:]:
            with contextlib.suppress(kube.Conflict):
                await client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        objects = [(names[i % namespaces], f"m-{i}") for i in range(count)]
        print(f"[{count}] creating {count} ModelDeployments in {namespaces} namespaces", flush=True)
        await bounded([client.create(model(n, ns)) for ns, n in objects])

        port = free_port()
        log = cluster.log_file(f"operator-scale-{count}").open("ab")
        operator = subprocess.Popen(
            [sys.executable, "-m", "modelplane.cli", "run", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port), "--no-model-config", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1"))
        log.close()
        try:
            started = time.monotonic()
            while not await all_have_status(client, count):
                if operator.poll() is not None:
                    raise DevClusterError(f"the operator exited with {operator.returncode}")
                if time.monotonic() - started > 900:
                    raise DevClusterError("not every ModelDeployment had a status within 900 s")
                await asyncio.sleep(1.0)
            status_s = time.monotonic() - started
            print(f"[{count}] every object has a status after {status_s:.1f} s", flush=True)

            # Settle: no write for 10 s (pods scheduled, statuses written), at most 5 minutes.
            last_writes, quiet_since, deadline = -1.0, time.monotonic(), time.monotonic() + 300
            while time.monotonic() - quiet_since < 10 and time.monotonic() < deadline:
                _, writes = await operator_counts(http, port)
                if writes != last_writes:
                    last_writes, quiet_since = writes, time.monotonic()
                await asyncio.sleep(1.0)

            # The steady window, then the baseline window with the operator stopped.
            req0, wr0 = await operator_counts(http, port)
            srv0, t0 = await server_requests(client), time.monotonic()
            peak_rss = rss_mb(operator.pid)
            while time.monotonic() - t0 < window:
                await asyncio.sleep(min(5.0, window))
                peak_rss = max(peak_rss, rss_mb(operator.pid))
            req1, wr1 = await operator_counts(http, port)
            srv1, t1 = await server_requests(client), time.monotonic()
            os.killpg(operator.pid, signal.SIGSTOP)
            try:
                srv2, t2 = await server_requests(client), time.monotonic()
                await asyncio.sleep(window)
                srv3, t3 = await server_requests(client), time.monotonic()
            finally:
                os.killpg(operator.pid, signal.SIGCONT)
            # Stopped that long, its watches timed out: it lists again. The spec changes are timed
            # once it watches again and has caught up, as they would be in its steady state.
            await watching_again(http, port)
            with_operator = (srv1 - srv0) / (t1 - t0)
            without = (srv3 - srv2) / (t3 - t2)
            print(f"[{count}] steady: operator {(req1 - req0) / (t1 - t0):.3f} req/s, "
                  f"{wr1 - wr0:.0f} writes in {t1 - t0:.0f} s; API server {with_operator:.2f} req/s "
                  f"with it, {without:.2f} without; RSS {peak_rss:.0f} MiB", flush=True)

            latencies = await spec_changes(client, objects, changes)
            demo.stop_process(operator)
            floor_s = await write_floor(client, count, namespaces)
            print(f"[{count}] the API server's floor for the same first writes: {floor_s:.1f} s", flush=True)
            return Row(count=count, status_s=status_s, rss_mb=peak_rss,
                       requests_per_s=(req1 - req0) / (t1 - t0), writes=int(wr1 - wr0),
                       server_added_per_s=with_operator - without, window_s=t1 - t0,
                       p50_s=statistics.median(latencies),
                       p99_s=statistics.quantiles(latencies, n=100, method="inclusive")[98]
                       if len(latencies) > 1 else latencies[0],
                       changes=len(latencies), floor_s=floor_s)
        finally:
            demo.stop_process(operator)
            gone = [*names, *(f"{FLOOR_PREFIX}{i}" for i in range(namespaces))]
            for ns in gone:
                with contextlib.suppress(kube.ApiError):
                    await client.delete(kube.NAMESPACES, ns)
            await wait_gone(client, gone)


async def write_floor(client: kube.Kube, count: int, namespaces: int) -> float:
    """Seconds for the bench alone to make the first writes of ``count`` new objects (see 5.)."""
    names = [f"{FLOOR_PREFIX}{i}" for i in range(namespaces)]
    for ns in names:
        with contextlib.suppress(kube.Conflict):
            await client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    created: list[dict[str, Any]] = []

    async def create(ns: str, name: str) -> None:
        created.append(await client.create(model(name, ns)))

    await bounded([create(names[i % namespaces], f"m-{i}") for i in range(count)])
    writes: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    for body in created:
        observed = core.Observed(body=body, now=datetime.now(UTC), monotonic=time.monotonic())
        result = core.finish(core.prepare(observed, prices={}), observed)
        meta = body["metadata"]
        status = {"apiVersion": body["apiVersion"], "kind": body["kind"],
                  "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                  "status": result.effective_status}
        writes.append((list(result.apply), status))

    async def first_writes(children: list[dict[str, Any]], status: dict[str, Any]) -> None:
        await asyncio.gather(*(client.apply(child, field_manager="bench-scale-floor") for child in children))
        await client.apply(status, subresource="status", field_manager="bench-scale-floor")

    started = time.monotonic()
    await bounded([first_writes(children, status) for children, status in writes],
                  limit=Settings().max_concurrent_reconciles)
    return time.monotonic() - started


async def spec_changes(client: kube.Kube, objects: list[tuple[str, str]], changes: int) -> list[float]:
    """Patch ``minReplicas`` 1 → 2 on ``changes`` objects, one by one; the time to each child."""
    picked = random.Random(14).sample(objects, min(changes, len(objects)))
    seen: dict[tuple[str, str], float] = {}
    listed = await client.list_raw(kube.DEPLOYMENTS, label_selector="modelplane.dev/model-deployment")
    rv = str(listed["metadata"]["resourceVersion"])

    async def watch() -> None:
        async for event in client.watch(kube.DEPLOYMENTS, label_selector="modelplane.dev/model-deployment",
                                        resource_version=rv, timeout_seconds=600):
            meta = event.object.get("metadata") or {}
            owner = (meta.get("labels") or {}).get("modelplane.dev/model-deployment")
            key = (str(meta.get("namespace")), str(owner))
            if (event.object.get("spec") or {}).get("replicas") == 2 and key not in seen:
                seen[key] = time.monotonic()

    watcher = asyncio.create_task(watch())
    latencies: list[float] = []
    try:
        for ns, name in picked:
            patched = time.monotonic()
            await client.patch(kube.MODELDEPLOYMENTS, name, {"spec": {"scaling": {"minReplicas": 2}}},
                               namespace=ns, field_manager="bench-scale")
            deadline = patched + 60
            while (ns, name) not in seen and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if (ns, name) not in seen:
                raise DevClusterError(f"{ns}/{name}: its Deployment did not reach 2 replicas in 60 s")
            latencies.append(seen[(ns, name)] - patched)
            await asyncio.sleep(0.2)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return latencies


async def wait_gone(client: kube.Kube, names: list[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        left = [ns for ns in names if await client.get(kube.NAMESPACES, ns) is not None]
        if not left:
            return
        await asyncio.sleep(2.0)
    raise DevClusterError(f"namespaces {left} were not deleted within 300 s")


def report(rows: list[Row], command: str) -> str:
    lines = [f"{BEGIN}", f"`{command}`, on this machine (2 cores); the operator cluster-wide with its "
             "defaults (`--resync-seconds 2`).", "",
             "| ModelDeployments | all with a status (s) | API server's floor (s) | RSS (MiB) | operator "
             "requests/s, steady | writes in the window | API server req/s added | window (s) | spec "
             "change → child p50 / p99 (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.count} | {r.status_s:.1f} | {r.floor_s:.1f} ({r.status_s / r.floor_s:.1f}×) | "
                     f"{r.rss_mb:.0f} | {r.requests_per_s:.3f} | "
                     f"{r.writes} | {r.server_added_per_s:+.2f} | {r.window_s:.0f} | "
                     f"{r.p50_s:.3f} / {r.p99_s:.3f} ({r.changes} changes) |")
    last = rows[-1]
    checks = [
        ("all with a status", last.status_s <= TARGETS["status_s"], f"{last.status_s:.1f} s ≤ 60 s"),
        ("RSS", last.rss_mb <= TARGETS["rss_mb"], f"{last.rss_mb:.0f} MiB ≤ 250 MB"),
        ("steady requests", last.requests_per_s <= TARGETS["requests_per_s"],
         f"{last.requests_per_s:.3f}/s ≤ 1/s"),
        ("steady writes", last.writes == 0, f"{last.writes} = 0"),
        ("spec change → child p99", last.p99_s <= TARGETS["p99_s"], f"{last.p99_s:.3f} s ≤ 2 s"),
    ]
    lines += ["", f"Targets at {last.count}: " + "; ".join(
        f"{name} {text}: {'met' if ok else 'NOT met'}" for name, ok, text in checks) + ".",
        "'API server req/s added' is the server's whole `apiserver_request_total` rate with the "
        "operator running minus its rate with the operator stopped (SIGSTOP) for a window as long, "
        "in the same run: it includes the other components' noise, so it can be slightly negative.",
        "'API server's floor' is the time the bench alone takes to make the same first writes (each "
        "object's children, then its status; 8 objects at a time, no Events, no reads) for as many new "
        "objects with the operator stopped, in the same run: what the API server allows on this "
        "machine, against which time to status is shown as a ratio.",
        END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--window", type=float, default=300.0, help="steady window, seconds (default 300)")
    parser.add_argument("--changes", type=int, default=50, help="spec changes timed (default 50)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args(argv)
    if min(args.counts) < 1 or args.namespaces < 1 or args.window <= 0 or args.changes < 1:
        parser.error("--counts, --namespaces and --changes must be >= 1 and --window > 0")
    cluster = DevCluster()
    was_running = cluster.is_healthy()
    try:
        state = cluster.up(Options())
    except DevClusterError as exc:
        print(f"bench.scale: {exc}", file=sys.stderr)
        return 1
    rows: list[Row] = []
    try:
        for count in args.counts:
            rows.append(asyncio.run(measure(count, args.namespaces, args.window, args.changes,
                                            cluster, state.kubeconfig)))
    except DevClusterError as exc:
        print(f"bench.scale: {exc}", file=sys.stderr)
        return 1
    finally:
        if not was_running:
            cluster.down()
    command = "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    section = report(rows, command.strip())
    print(section)
    if not args.no_write:
        replace_section(README, section, begin=BEGIN, end=END,
                        heading="## Many ModelDeployments (`bench/scale`)")
        print(f"updated {README.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

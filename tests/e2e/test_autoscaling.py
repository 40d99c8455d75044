"""Autoscaling end to end: the operator scrapes the simulator's /metrics on each pod, scales up
when a queue forms, holds the fleet at the budget cap with ScalingLimited/BudgetCap, scales down
after the window, and scales to zero and back — with the gateway (``modelplane gateway``) holding the
first requests so that none is lost, and the operator reading what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from modelplane import render
from modelplane.controller import health, kube
from modelplane_dev import loadgen
from modelplane_dev.devcluster.serviceproxy import ServiceProxy
from tests.clusterfixtures import ClusterHandle, Gateways, OperatorHandle, start_operator, stop_operator
from tests.promfake import FakePrometheus
from tests.promreal import RealPrometheus
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

#: How often the status is sampled while the load runs.
SAMPLE_SECONDS = 0.5

#: The latency objective's e2e. The simulated replica (8B on an L4, ``maxNumSeqs`` 4, 100-token
#: prompts, 16 output tokens) runs a request in ~1.6 s on one of its 4 slots, in real time on this
#: host: one replica alone, measured, completes ~2.6 requests/s; at 3/s its TTFT p90 is 1.5 s, at
#: 4/s it queues without bound (p50 2.7 s and growing). So at 4 requests/s one replica misses any
#: objective, while 3 replicas carry ~1.3/s each, well inside 2 s at p90 even on a loaded host. The
#: default dev cluster has 4 L4 nodes of one GPU: ``maxReplicas`` 4 (a fifth replica would stay
#: Pending, and a fleet with a replica "starting" forever is never settled for the feedback).
#: (An earlier version sent 14 requests/s against ``maxReplicas`` 4: four replicas serve at most
#: ~11/s, so the queue grew at the cap and attainment could only fall.)
PERCENTILE = 90
OBJECTIVE: dict[str, Any] = {"ttft": "2s", "percentile": PERCENTILE}
OBJECTIVE_RATE = 4.0
OBJECTIVE_MAX_REPLICAS = 4
#: Attainment is over the last 5 minutes (``objective.ObjectiveSpec.window``): the misses of the
#: cold start before the fleet grew (~20 s here) leave it at the latest that long after.
ATTAINMENT_WINDOW = 300.0


def model(name: str, namespace: str, served: str | None = None, **scaling: Any) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
                               "servedName": served or name},
                     # Small batches so that a modest load queues.
                     "engine": {"maxModelLen": 4096, "maxNumSeqs": 4},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l4"]}},
                     "scaling": scaling}}


async def status_of(client: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
    return dict((md or {}).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def test_load_scales_up_to_the_budget_cap_and_back_down_after_the_window(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    # L4 at $0.80/h: a $1.70 budget pays for two replicas, while maxReplicas would allow four.
    await kube_client.create(model("chat", namespace, minReplicas=1, maxReplicas=4,
                                   targetQueueDepth=1, scaleDownDelay="10s",
                                   cost={"maxHourlyUSD": 1.7}))
    await wait_for(lambda: _phase(kube_client, namespace, "chat", "Ready"), timeout=90,
                   what="Ready with one replica")
    proxy = ServiceProxy(kube_client, namespace=namespace, service="chat")
    port = await proxy.start()
    seen_desired: list[int] = []
    try:
        # About what three replicas serve: a queue forms, the policy asks for more than the two
        # the budget pays for, and two replicas drain it.
        config = loadgen.LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", model="chat",
                                    schedule=loadgen.parse_schedule("constant:14"), duration=15,
                                    prompt_tokens=loadgen.Lengths(100),
                                    output_tokens=loadgen.Lengths(16, maximum=24), timeout=240)
        started = time.monotonic()
        load = asyncio.create_task(loadgen.run_load(config))
        scaled_at: float | None = None
        capped = None
        ready_pods: dict[str, dict[str, Any]] = {}  # each pod as last seen Ready
        while not load.done():
            status = await status_of(kube_client, namespace, "chat")
            seen_desired.append(int(status.get("desiredReplicas") or 0))
            pods = await kube_client.list(kube.PODS, namespace=namespace)
            ready_pods.update((p["metadata"]["name"], p) for p in pods if health.is_ready(p))
            if scaled_at is None and len(pods) > 1:
                scaled_at = time.monotonic() - started
            limited = condition(status, "ScalingLimited")
            if limited.get("status") == "True" and limited.get("reason") == "BudgetCap":
                capped = limited
            # Sample again in half a second, or at once when the load has finished.
            await asyncio.wait({load}, timeout=SAMPLE_SECONDS)
        report = load.result()
        after = await kube_client.list(kube.PODS, namespace=namespace)
        ready_pods.update((p["metadata"]["name"], p) for p in after if health.is_ready(p))
    finally:
        await proxy.stop()
    print(f"\nsecond pod created {scaled_at} s after the load started; desired over time: "
          f"{seen_desired}")
    assert report.errors == 0 and report.ok == report.sent
    assert scaled_at is not None, "no scale-up under a queue"
    assert max(seen_desired) == 2, "the budget allows two replicas, never more"
    assert capped is not None and "BudgetCap" in capped["message"]
    events = await kube_client.list(kube.EVENTS, namespace=namespace,
                                    field_selector="involvedObject.name=chat")
    assert {"ScaleUp", "BudgetCap"} & {e["reason"] for e in events}
    # Both pods turned Ready after the operator's first decision (made before any pod existed): the
    # cold start it shows is the median of theirs, read from the pods' own timestamps, not the
    # 90 s prior (which it still looks ahead by: their cold start is shorter).
    starts = [health.ready_after(p) for p in ready_pods.values()]
    assert len(starts) == 2 and all(s is not None for s in starts), starts
    learnt = round(statistics.median(s for s in starts if s is not None), 1)

    async def cold_start_shown() -> bool:
        status = await status_of(kube_client, namespace, "chat")
        return ((status.get("autoscaler") or {}).get("lastDecision") or {}).get("coldStartSeconds") == learnt

    await wait_for(cold_start_shown, timeout=30, what=f"coldStartSeconds {learnt} (pods: {starts})")

    async def back_to_one() -> bool:
        status = await status_of(kube_client, namespace, "chat")
        pods = [p for p in await kube_client.list(kube.PODS, namespace=namespace)
                if not p["metadata"].get("deletionTimestamp")]
        return status.get("desiredReplicas") == 1 and len(pods) == 1

    await wait_for(back_to_one, timeout=90, what="scale-down to one replica after the window")


async def _phase(client: kube.Kube, ns: str, name: str, phase: str) -> bool:
    return (await status_of(client, ns, name)).get("phase") == phase


async def test_scale_to_zero_and_back_loses_no_request(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    # The load goes through the session's gateway, which holds it while no replica is ready; the
    # session's operator reads the held requests from the gateway's /metrics and scales from zero.
    gateways.ensure_running()
    served = f"lazy-{namespace[-8:]}"  # the gateway serves every namespace: a name of its own
    await kube_client.create(model("lazy", namespace, minReplicas=0, maxReplicas=2,
                                   scaleToZeroAfter="10s", scaleDownDelay="5s", served=served))
    await wait_for(lambda: _phase(kube_client, namespace, "lazy", "ScaledToZero"), timeout=90,
                   what="ScaledToZero with no demand")
    assert await kube_client.list(kube.PODS, namespace=namespace) == []
    gateway = gateways.replicas[0]
    config = loadgen.LoadConfig(base_url=f"{gateway.url}/v1", model=served,
                                schedule=loadgen.parse_schedule("constant:2"), duration=3,
                                prompt_tokens=loadgen.Lengths(50),
                                output_tokens=loadgen.Lengths(8, maximum=16), timeout=120)
    started = time.monotonic()
    report = await loadgen.run_load(config)
    waited = time.monotonic() - started
    held = _held_total(gateway.metrics_text(), namespace, "lazy")
    print(f"\n{report.sent} requests sent at zero replicas; all answered after {waited:.1f} s; "
          f"held by the gateway: {held}")
    assert report.sent >= 2
    assert report.errors == 0 and report.ok == report.sent, report.to_dict()
    assert held >= 1, "the first request had to wait for a replica, at the gateway"
    status = await status_of(kube_client, namespace, "lazy")
    assert status.get("desiredReplicas", 0) >= 1
    # And down to zero again once idle.
    await wait_for(lambda: _phase(kube_client, namespace, "lazy", "ScaledToZero"), timeout=120,
                   what="back to zero after scaleToZeroAfter of idleness")


def _held_total(text: str, namespace: str, name: str) -> int:
    """Requests the gateway has held for ``namespace/name`` so far (its hold-duration count)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(int(s.value) for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "modelplane_gateway_hold_duration_seconds_count"
               and s.labels.get("namespace") == namespace and s.labels.get("model_deployment") == name)


@pytest.mark.parametrize("backend", ["prometheus", "fake"])
async def test_with_a_prometheus_source_a_queue_read_from_prometheus_scales_up_and_stale_data_holds(
        cluster: ClusterHandle, kube_client: kube.Kube, crds: Path, backend: str) -> None:
    # Its own namespace and operator, which reads the pods' metrics only through the query API of
    # a Prometheus that scrapes the simulator pods every second: a real Prometheus server
    # (hack/prometheus, file discovery), or tests.promfake, which also records the queries.
    ns = "prom-" + hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    await kube_client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    prom: FakePrometheus | RealPrometheus
    if backend == "fake":
        prom = await FakePrometheus(interval=1.0).start()
    else:
        plog = cluster.dev.log_file("prometheus") if cluster.dev else Path("/tmp/prometheus.log")
        prom = await asyncio.to_thread(RealPrometheus(plog).start)
    scraping = True

    async def discover() -> None:
        # Prometheus' pod discovery: the Ready pods of the namespace, by pod IP, from a watch.
        while True:
            pods: dict[str, dict[str, Any]] = {}  # a new watch starts with every pod ADDED
            async for event in kube_client.watch(kube.PODS, namespace=ns, timeout_seconds=30):
                if event.type == "BOOKMARK":
                    continue
                name = event.object["metadata"]["name"]
                if event.type == "DELETED":
                    pods.pop(name, None)
                else:
                    pods[name] = event.object
                if scraping:
                    prom.targets = {(ns, n): f"http://{p['status']['podIP']}:{render.PORT}/metrics"
                                    for n, p in pods.items()
                                    if (p.get("status") or {}).get("podIP") and health.is_ready(p)}

    discovery = asyncio.create_task(discover())
    log = cluster.dev.log_file("operator-prom") if cluster.dev else Path("/tmp/operator-prom.log")
    handle = None
    try:
        handle = start_operator(cluster, log, namespaces=(ns,),
                                extra_args=("--prometheus-url", prom.url, "--prometheus-max-age", "10"))
        # With a latency objective: its attainment too comes from what Prometheus scraped (the
        # pods' TTFT histograms; this operator reads no gateway).
        await kube_client.create(model("chat", ns, minReplicas=1, maxReplicas=3, targetQueueDepth=1,
                                       scaleDownDelay="30s", objective=OBJECTIVE))
        await wait_for(lambda: _phase(kube_client, ns, "chat", "Ready"), timeout=90,
                       what="Ready with one replica")

        async def metrics_read() -> bool:
            status = await status_of(kube_client, ns, "chat")
            return condition(status, "MetricsAvailable").get("status") == "True"

        await wait_for(metrics_read, timeout=30, what="MetricsAvailable from Prometheus")
        if isinstance(prom, FakePrometheus):
            pod_names = [p["metadata"]["name"] for p in await kube_client.list(kube.PODS, namespace=ns)]
            assert any(all(name in q or name.replace("-", "\\\\-") in q for name in pod_names)
                       for q in prom.queries), prom.queries[-3:]

        proxy = ServiceProxy(kube_client, namespace=ns, service="chat")
        port = await proxy.start()
        try:
            config = loadgen.LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", model="chat",
                                        schedule=loadgen.parse_schedule("constant:8"), duration=15,
                                        prompt_tokens=loadgen.Lengths(100),
                                        output_tokens=loadgen.Lengths(16, maximum=24), timeout=240)
            load = asyncio.create_task(loadgen.run_load(config))
            desired: list[int] = []
            while not load.done():
                desired.append(int((await status_of(kube_client, ns, "chat")).get("desiredReplicas") or 0))
                await asyncio.wait({load}, timeout=SAMPLE_SECONDS)
            report = load.result()
        finally:
            await proxy.stop()
        print(f"\nthrough Prometheus, desired over time: {desired}")
        assert report.errors == 0 and report.ok == report.sent
        assert max(desired) >= 2, "no scale-up on the queue Prometheus saw"

        async def attainment() -> dict[str, Any] | None:
            status = await status_of(kube_client, ns, "chat")
            got = dict((status.get("autoscaler") or {}).get("objective") or {})
            return got if "attainment" in got and int(got.get("requests") or 0) > 0 else None

        seen = await wait_for(attainment, timeout=60, what="attainment read through Prometheus")
        print(f"the objective as read through Prometheus: {seen}")
        assert seen["source"] == "Pods" and 0 <= seen["attainment"] <= 1, seen
        assert seen["requests"] <= report.sent, seen
        assert seen["met"] == (seen["attainment"] >= PERCENTILE / 100), seen

        # Prometheus stops getting the pods: once their newest samples are older than the max age,
        # the autoscaler holds what it has and says why.
        held = int((await status_of(kube_client, ns, "chat")).get("desiredReplicas") or 0)
        scraping = False
        prom.targets = {}

        async def blind() -> dict[str, Any] | None:
            c = condition(await status_of(kube_client, ns, "chat"), "MetricsAvailable")
            return c if c.get("status") == "False" else None

        stale = await wait_for(blind, timeout=60, what="MetricsAvailable=False once the samples are stale")
        assert stale["reason"] == "MetricsUnavailable", stale
        # Stale by --prometheus-max-age (10 s), not the direct scrape's 30 s.
        ages = [int(a) for a in re.findall(r"are (\d+)s old", stale["message"])]
        assert ages and all(10 <= a < 30 for a in ages), stale["message"]
        status = await status_of(kube_client, ns, "chat")
        assert status.get("desiredReplicas") == held, "stale metrics hold the last decision"
    finally:
        discovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await discovery
        if isinstance(prom, FakePrometheus):
            await prom.stop()  # before the operator, for the reason the scale-to-zero test gives
        else:
            await asyncio.to_thread(prom.stop)
        if handle is not None:
            stop_operator(handle)
        await kube_client.delete(kube.NAMESPACES, ns)


@pytest.mark.timeout(ATTAINMENT_WINDOW + 600)
async def test_a_latency_objective_is_met_by_scaling_up_under_load_and_attainment_is_in_status(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    # Through the session's gateway, whose TTFT histogram the operator reads (what clients see).
    gateways.ensure_running()
    served = f"slo-{namespace[-8:]}"  # the gateway serves every namespace: a name of its own
    await kube_client.create(model("slo", namespace, served=served, minReplicas=1,
                                   maxReplicas=OBJECTIVE_MAX_REPLICAS, objective=OBJECTIVE))
    await wait_for(lambda: _phase(kube_client, namespace, "slo", "Ready"), timeout=90,
                   what="Ready with one replica")
    gateway = gateways.replicas[0]
    config = loadgen.LoadConfig(base_url=f"{gateway.url}/v1", model=served,
                                schedule=loadgen.parse_schedule(f"constant:{OBJECTIVE_RATE:g}"),
                                duration=3600, prompt_tokens=loadgen.Lengths(100),
                                output_tokens=loadgen.Lengths(16), timeout=240)
    stop = asyncio.Event()
    load = asyncio.create_task(loadgen.run_load(config, stop=stop))
    desired: list[int] = []
    objective: dict[str, Any] = {}

    async def sample() -> tuple[int, int]:
        """(desired replicas, ready pods) now; records the status' objective as it goes."""
        if load.done():
            raise AssertionError(f"the load ended early: {load.result().to_dict()}")
        status = await status_of(kube_client, namespace, "slo")
        desired.append(int(status.get("desiredReplicas") or 0))
        objective.clear()
        objective.update((status.get("autoscaler") or {}).get("objective") or {})
        pods = await kube_client.list(kube.PODS, namespace=namespace)
        return desired[-1], sum(1 for p in pods if health.is_ready(p) and not p["metadata"].get(
            "deletionTimestamp"))

    async def grown() -> int:
        want, ready = await sample()
        return ready if want > 1 and ready > 1 else 0

    async def met() -> bool:
        await sample()
        return objective.get("met") is True

    try:
        started = time.monotonic()
        ready = await wait_for(grown, timeout=180, what="more than one replica Ready under load",
                               interval=SAMPLE_SECONDS)
        grew = time.monotonic() - started
        # Scaled, the fleet meets the objective: once the misses of before fall out of the window.
        await wait_for(met, timeout=ATTAINMENT_WINDOW + 240, interval=SAMPLE_SECONDS,
                       what=f"status.autoscaler.objective.met under load (objective {OBJECTIVE})")
        at_met = dict(objective)
        fleet = desired[-1]
    finally:
        stop.set()
        report = await load
    within = sum(1 for t in report.ttft if t <= 2.0) / max(1, len(report.ttft))
    print(f"\n{ready} replicas Ready {grew:.0f} s into the load, the objective met at {fleet} "
          f"{time.monotonic() - started:.0f} s into it; status objective then: {at_met}; the load generator "
          f"saw {within:.1%} of {len(report.ttft)} within 2 s over the whole run, p50 TTFT "
          f"{report.to_dict()['ttftSeconds']['p50']:.3f} s")
    assert report.errors == 0 and report.ok == report.sent, report.to_dict()
    # Measured where the clients are: the gateway's histogram, not the pods'.
    assert at_met["source"] == "Gateway", at_met
    assert at_met["attainment"] >= PERCENTILE / 100 and at_met["requests"] > 0, at_met
    # The learnt capacity: a factor within (0, 1] of the profile, and the load one replica is sized for.
    assert 0 < at_met["capacityFactor"] <= 1 and at_met["replicaCapacity"] > 0, at_met
    assert 1 < fleet <= OBJECTIVE_MAX_REPLICAS, desired

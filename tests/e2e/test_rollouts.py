"""Checkpoint rollouts end to end: the operator, the dev cluster, the simulator behind pod IPs.

Each test deploys a ModelDeployment at ``rev-a``, then changes ``spec.model.revision`` to a checkpoint
whose simulated behaviour (``modelplane-sim`` ConfigMap, keyed by revision) makes the gate or the
live analysis decide: ``rev-good`` answers better, ``rev-bad`` worse, ``rev-slow`` as well but with
a slow engine, ``rev-flaky`` as well but failing a share of its requests with HTTP 500. Load runs
through the session's gateway (``gateways``: ``modelplane gateway`` processes reading the dev
cluster), which splits requests between canary and stable by ``status.canary.weight`` like in a real
cluster (the ModelDeployment's Service selects stable only, so load sent to it would never reach a
canary), and every test that runs load checks that no request failed because of a promotion or a
rollback (with ``rev-flaky``, only its own 500s fail). Short steps (4 s) and a 60-case suite keep
the file within a few minutes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml

from modelplane import render
from modelplane.controller import kube
from modelplane.rollout.controls import send_control
from modelplane.rollout.machine import Command
from modelplane_dev.sim.quality import TaskKind, generate_suite, suite_jsonl
from tests.clusterfixtures import ClusterHandle, OperatorHandle, gateway_args, start_operator
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

#: The session fixture ``gateways`` (tests.clusterfixtures.Gateways, from the gateway's e2e branch):
#: ``replicas[i].url``, ``replicas[i].metrics_text()``, ``ensure_running()``.
Gateways = Any

BEHAVIORS = {
    "rev-a": {"accuracy": 0.85},
    "rev-good": {"accuracy": 0.97},
    "rev-bad": {"accuracy": 0.5},
    # Slow enough to fail the TTFT comparison (1.5x stable + 50 ms), fast enough to serve the
    # 20 requests a window needs to conclude.
    "rev-slow": {"accuracy": 0.97, "latency_factor": 6.0},
    # Fails a fifth of its requests. The gate retries a 5xx twice, so a case stays failed with
    # probability 0.2**3 = 0.008 (about 0.5 of 60 cases): it scores ~0.95 against rev-a's ~0.87 and
    # passes (at 0.3 a case stays failed with 0.027, and ~2% of gates would lose 5 cases and fail).
    # Under live traffic, 20% errors against maxErrorRate 5% is significant from ~20 requests on.
    "rev-flaky": {"accuracy": 0.97, "error_rate": 0.2},
    "judge-v1": {"accuracy": 1.0},  # the judge model of the judge test: never misjudges
}
STEPS = [{"weight": 34, "pause": "4s"}, {"weight": 67, "pause": "4s"}]
SLOW_STEPS = [{"weight": 34, "pause": "8s"}, {"weight": 67, "pause": "8s"}]


SOURCE = "hf://meta-llama/Llama-3.1-8B-Instruct"


def served_name(name: str, ns: str) -> str:
    """A served name of its own per test: the gateways route by it, and a ModelDeployment of an
    earlier test's namespace still being deleted would otherwise keep the name (the older one wins)."""
    return f"{name}-{ns}"


def manifest(name: str, *, steps: list[dict[str, Any]] | None = None,
             evaluation: dict[str, Any] | None = None, served: str | None = None,
             replicas: int = 1) -> dict[str, Any]:
    ev = {"suiteRef": {"configMap": "suite"}, "minScore": 0.75, "maxRegression": 0.1,
          "concurrency": 8, "timeoutSeconds": 10,
          "analysis": {"maxErrorRate": 0.05, "maxTTFTSecondsP95": 1.0}}
    ev.update(evaluation or {})
    ev = {k: v for k, v in ev.items() if v is not None}
    model: dict[str, Any] = {"source": SOURCE, "revision": "rev-a"}
    if served is not None:
        model["servedName"] = served
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": model,
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-h100-80gb"]}},
                     # A fixed fleet (one replica unless asked): stable keeps it through the steps and
                     # the canary runs ceil(weight% of it) beside it, so no serving pod is scaled away;
                     # a workload is deleted only once nothing sends it requests. (The dev cluster's pod
                     # agent stops a pod's server the moment it is deleted, unlike vLLM behind a preStop
                     # sleep, so an ordinary scale-down there cuts in-flight requests.)
                     "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
                     "rollout": {"steps": STEPS if steps is None else steps, "evaluation": ev}}}


async def setup(client: kube.Kube, ns: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """The simulator's behaviours, the suite, and the ModelDeployment at rev-a, Ready."""
    await client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelplane-sim"},
                         "data": {"behaviors.yaml": yaml.safe_dump(BEHAVIORS)}}, namespace=ns)
    await client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "suite"},
                         "data": {"suite.jsonl": suite_jsonl(generate_suite(60, seed=7))}}, namespace=ns)
    await client.create(manifest(name, served=served_name(name, ns), **kwargs), namespace=ns)
    replicas = int(kwargs.get("replicas", 1))
    return await wait_md(client, ns, name, lambda md: md["status"].get("phase") == "Ready"
                         and md["status"].get("readyReplicas") == replicas, what="Ready at rev-a")


async def get_md(client: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    md = await client.get(kube.MODELDEPLOYMENTS, name, namespace=ns)
    assert md is not None
    return md


async def wait_md(client: kube.Kube, ns: str, name: str, check: Any, *, what: str,
                  timeout: float = 120) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        md = await get_md(client, ns, name)
        return md if md.get("status") and check(md) else None

    result: dict[str, Any] = await wait_for(probe, timeout=timeout, what=f"{name}: {what}")
    return result


def canary(md: dict[str, Any]) -> dict[str, Any]:
    return dict((md.get("status") or {}).get("canary") or {})


def rollout_phase(phase: str) -> Any:
    return lambda md: canary(md).get("phase") == phase


async def set_revision(client: kube.Kube, ns: str, name: str, revision: str) -> None:
    # A merge patch of the one field, as `kubectl patch` does: no resourceVersion, so a status
    # write by the operator in between cannot make it fail with 409.
    await client.patch(kube.MODELDEPLOYMENTS, name, {"spec": {"model": {"revision": revision}}},
                       namespace=ns, field_manager="kubectl-patch")


async def revisions_of_pods(client: kube.Kube, ns: str) -> set[str]:
    """The revisions the serving pods run (not an evaluator Job's pod)."""
    pods = [p for p in await client.list(kube.PODS, namespace=ns)
            if (p["metadata"].get("labels") or {}).get(render.LABEL_COMPONENT) != "evaluation"]
    return {next((a for i, a in enumerate(p["spec"]["containers"][0]["args"]) if i > 0 and
                  p["spec"]["containers"][0]["args"][i - 1] == "--revision"), "?")
            for p in pods if not p["metadata"].get("deletionTimestamp")}


async def only_revisions_remain(client: kube.Kube, ns: str, want: set[str]) -> None:
    """Wait until the pods not being deleted run exactly ``want``: a removed Deployment's pods are
    marked for deletion by the garbage collector moments after the Deployment is gone."""
    async def check() -> bool:
        return await revisions_of_pods(client, ns) == want

    await wait_for(check, timeout=60, what=f"only pods of {sorted(want)} to remain")


async def reasons(client: kube.Kube, ns: str, name: str) -> list[str]:
    events = await client.list(kube.EVENTS, namespace=ns, field_selector=f"involvedObject.name={name}")
    return [e["reason"] for e in sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])]


@dataclass
class Load:
    """Chat requests through a gateway from a few workers; every non-200 is a failure."""

    url: str
    model: str
    workers: int = 6
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def worker(self, session: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            body = {"model": self.model, "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"hello {i}-{n}"}]}
            try:
                async with session.post(f"{self.url}/v1/chat/completions", json=body,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    text = await resp.text()
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {resp.status} at {time.strftime('%X')}: {text[:120]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self.worker(session, i) for i in range(self.workers)))

    def stop(self) -> None:
        self._stop.set()

    def start(self) -> None:
        """Run in the background until ``stop`` (``finish`` waits for the workers)."""
        self._task = asyncio.create_task(self.run())

    async def finish(self) -> None:
        self.stop()
        if self._task is not None:
            await self._task


@pytest.fixture
async def traffic(namespace: str, gateways: Gateways) -> AsyncIterator[Load]:
    """Load through a gateway to the ModelDeployment ``chat`` (started by the test, after setup)."""
    # No proxy to wait for: the gateway holds a request until it sees a ready replica.
    gateways.ensure_running()
    load = Load(gateways.replicas[0].url, served_name("chat", namespace))
    yield load
    await load.finish()


async def test_a_better_checkpoint_passes_the_gate_and_is_promoted_through_every_step(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, traffic: Load) -> None:
    await setup(kube_client, namespace, "chat")
    traffic.start()
    await set_revision(kube_client, namespace, "chat", "rev-good")

    weights: set[int] = set()

    async def promoted() -> dict[str, Any] | None:
        md = await get_md(kube_client, namespace, "chat")
        c = canary(md)
        if c.get("phase") in ("Stepping", "Analyzing"):
            weights.add(int(c.get("weight") or 0))
        return md if c.get("phase") == "Promoted" else None

    md = await wait_for(promoted, timeout=180, what="rev-good promoted", interval=0.2)
    traffic.stop()
    status = md["status"]
    assert weights == {34, 67}, weights
    assert status["stable"]["revision"] == "rev-good"
    history = status["rolloutHistory"][-1]
    assert history["revision"] == "rev-good" and history["decision"] == "Promoted"
    assert history["evalScore"] > history["baselineScore"]
    md = await wait_md(kube_client, namespace, "chat", lambda m: m["status"].get("phase") == "Ready"
                       and m["status"].get("desiredRevisionLive") is True, what="Ready at rev-good")
    assert md["status"]["servingRevision"] == "rev-good"
    deployments = await kube_client.list(kube.DEPLOYMENTS, namespace=namespace)
    assert len(deployments) == 1
    report = await kube_client.get(kube.CONFIGMAPS, f"chat-eval-{history['fingerprint'][:8]}",
                                   namespace=namespace)
    assert report is not None and '"passed": true' in report["data"]["report.json"]
    seen = await reasons(kube_client, namespace, "chat")
    for reason in ("RolloutStarted", "EvaluationStarted", "EvaluationPassed", "StepStarted",
                   "AnalysisPassed", "Promoted"):
        assert reason in seen, seen
    assert traffic.ok > 50
    assert traffic.failures == [], traffic.failures[:5]


def answered_by_revision(metrics_text: str, ns: str) -> dict[str, float]:
    """``modelplane_gateway_requests_total`` of ModelDeployment ``chat`` in ``ns``, by revision-hash."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "modelplane_gateway_requests_total" and labels.get("namespace") == ns \
                    and labels.get("model_deployment") == "chat":
                out[labels["revision"]] = out.get(labels["revision"], 0.0) + sample.value
    return out


async def test_a_10_percent_step_on_two_replicas_is_10_percent_at_the_gateway_and_none_at_the_service(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, gateways: Gateways) -> None:
    await setup(kube_client, namespace, "chat", steps=[{"weight": 10, "pause": "10m"}],
                evaluation={"analysis": None}, replicas=2)
    await set_revision(kube_client, namespace, "chat", "rev-good")
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Analyzing"), what="the 10% step",
                       timeout=120)
    assert canary(md)["weight"] == 10
    # The weight is not a replica ratio: stable keeps both replicas, the canary runs ceil(10% of 2).
    deployments = await kube_client.list(kube.DEPLOYMENTS, namespace=namespace)
    replicas = {d["metadata"]["annotations"][render.ANNOTATION_REVISION]: d["spec"]["replicas"]
                for d in deployments}
    assert replicas == {"rev-a": 2, "rev-good": 1}, replicas
    # The Service selects stable only: a client that skips the gateway gets no canary.
    service = await kube_client.get(kube.SERVICES, "chat", namespace=namespace)
    assert service is not None
    stable_key, canary_key = render.revision_hash(SOURCE, "rev-a"), render.revision_hash(SOURCE, "rev-good")
    assert service["spec"]["selector"][render.LABEL_REVISION_HASH] == stable_key

    gateways.ensure_running()
    gateway = gateways.replicas[0]
    before = answered_by_revision(gateway.metrics_text(), namespace)
    load = Load(gateway.url, served_name("chat", namespace), workers=8)
    task = asyncio.create_task(load.run())
    await wait_for(lambda: load.ok >= 2000, timeout=180, what="2000 requests through the gateway")
    load.stop()
    await task
    after = answered_by_revision(gateway.metrics_text(), namespace)
    canary_n = after.get(canary_key, 0.0) - before.get(canary_key, 0.0)
    stable_n = after.get(stable_key, 0.0) - before.get(stable_key, 0.0)
    share = canary_n / (canary_n + stable_n)
    assert abs(share - 0.10) <= 0.02, (canary_n, stable_n)
    assert load.failures == [], load.failures[:5]


async def test_a_worse_checkpoint_is_rolled_back_at_the_gate_with_the_scores_in_status(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, traffic: Load) -> None:
    await setup(kube_client, namespace, "chat")
    traffic.start()
    await set_revision(kube_client, namespace, "chat", "rev-bad")
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("RolledBack"), what="rolled back",
                       timeout=120)
    traffic.stop()
    c, status = canary(md), md["status"]
    assert c["reason"] == "EvaluationFailed"
    assert c["rejectedRevision"] == "rev-bad"
    assert c["evalScore"] < 0.75 <= c["baselineScore"]
    assert c["cases"] == 60 and c["failingCases"]
    assert "lowerBound" in c
    assert status["desiredRevisionLive"] is False and status["servingRevision"] == "rev-a"
    assert md["spec"]["model"]["revision"] == "rev-bad"  # the spec is the user's
    evaluating = next(x for x in status["conditions"] if x["type"] == "Evaluating")
    assert evaluating["status"] == "False" and "on 60 cases" in evaluating["message"]
    await only_revisions_remain(kube_client, namespace, {"rev-a"})
    assert traffic.failures == [], traffic.failures[:5]
    # It stays rolled back: the operator does not retry the rejected revision on its own.
    assert canary(await get_md(kube_client, namespace, "chat"))["phase"] == "RolledBack"


async def test_a_checkpoint_that_slows_under_live_traffic_is_rolled_back_at_a_step(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, traffic: Load) -> None:
    await setup(kube_client, namespace, "chat", steps=SLOW_STEPS)
    traffic.start()
    await set_revision(kube_client, namespace, "chat", "rev-slow")
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("RolledBack"), what="rolled back",
                       timeout=180)
    traffic.stop()
    c = canary(md)
    assert c["reason"] == "AnalysisFailed", c
    assert "TTFT" in c["message"]
    assert c["evalScore"] >= 0.75  # it passed the gate
    assert md["status"]["servingRevision"] == "rev-a"
    await only_revisions_remain(kube_client, namespace, {"rev-a"})
    assert traffic.failures == [], traffic.failures[:5]


async def event_messages(client: kube.Kube, ns: str, name: str, reason: str) -> list[str]:
    events = await client.list(kube.EVENTS, namespace=ns, field_selector=f"involvedObject.name={name}")
    return [str(e.get("message")) for e in events if e["reason"] == reason]


async def test_a_checkpoint_that_fails_requests_under_live_traffic_is_rolled_back_at_a_step(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, traffic: Load) -> None:
    await setup(kube_client, namespace, "chat", evaluation={"analysis": {"maxErrorRate": 0.05}})
    traffic.start()
    await set_revision(kube_client, namespace, "chat", "rev-flaky")
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("RolledBack"), what="rolled back",
                       timeout=180)
    c = canary(md)
    assert c["reason"] == "AnalysisFailed", c
    assert "error rate" in c["message"] and "maxErrorRate" in c["message"], c["message"]
    assert c["evalScore"] >= 0.75 and c["rejectedRevision"] == "rev-flaky"  # it passed the gate
    assert md["status"]["servingRevision"] == "rev-a" and md["status"]["desiredRevisionLive"] is False
    assert "EvaluationPassed" in await reasons(kube_client, namespace, "chat")
    failed = await event_messages(kube_client, namespace, "chat", "AnalysisFailed")
    assert any("error rate" in m for m in failed), failed

    # Stable serves alone afterwards: once the canary's pod is gone, every request succeeds.
    async def only_stable() -> bool:
        return await revisions_of_pods(kube_client, namespace) == {"rev-a"}

    await wait_for(only_stable, timeout=60, what="only rev-a pods left")
    ok, failures = traffic.ok, len(traffic.failures)
    await wait_for(lambda: traffic.ok >= ok + 100, timeout=60, what="100 more requests served")
    traffic.stop()
    assert traffic.failures[failures:] == []
    # The canary's failures reached the users (that is why it was rolled back) and they are only its
    # own simulated 500s: none failed because of the rollback.
    assert traffic.failures
    assert all(f.startswith("HTTP 500") and "simulated engine failure" in f for f in traffic.failures), \
        traffic.failures[:5]


def kill_and_restart(cluster: ClusterHandle, operator: OperatorHandle) -> None:
    """``kill -9`` the session's operator and start a new one in its place (same log, and reading the
    session's gateways as the session's operator does)."""
    os.killpg(operator.process.pid, signal.SIGKILL)
    operator.process.wait(timeout=10)
    fresh = start_operator(cluster, operator.log, namespaces=operator.namespaces,
                           hf_endpoint=operator.hf_endpoint, extra_args=gateway_args())
    operator.process, operator.metrics_url = fresh.process, fresh.metrics_url


async def test_kill_9_of_the_operator_during_a_step_resumes_and_reaches_the_same_decision(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, cluster: ClusterHandle,
        traffic: Load) -> None:
    await setup(kube_client, namespace, "chat", steps=SLOW_STEPS)
    traffic.start()
    await set_revision(kube_client, namespace, "chat", "rev-slow")
    await wait_md(kube_client, namespace, "chat", rollout_phase("Analyzing"), what="a step's window",
                  timeout=120)
    kill_and_restart(cluster, operator)
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("RolledBack"), what="rolled back",
                       timeout=180)
    traffic.stop()
    c = canary(md)
    assert c["reason"] == "AnalysisFailed" and c["rejectedRevision"] == "rev-slow"
    await only_revisions_remain(kube_client, namespace, {"rev-a"})
    assert traffic.failures == [], traffic.failures[:5]


async def test_pause_holds_the_weight_and_resume_goes_on_to_promotion(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await setup(kube_client, namespace, "chat", steps=[{"weight": 34, "pause": "4s"},
                                                       {"weight": 67, "pause": "4s"}],
                evaluation={"analysis": None})
    await set_revision(kube_client, namespace, "chat", "rev-good")
    in_steps = lambda m: canary(m).get("phase") in ("Stepping", "Analyzing")  # noqa: E731
    await wait_md(kube_client, namespace, "chat", in_steps, what="first step", timeout=120)
    await send_control(kube_client, name="chat", namespace=namespace, command=Command.PAUSE)
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Paused"), what="paused")
    held = canary(md)["weight"]
    # Held: several resyncs later it is still paused at the same weight.
    since = time.monotonic()
    await wait_for(lambda: time.monotonic() - since > 6, timeout=10, what="a few resyncs")
    md = await get_md(kube_client, namespace, "chat")
    assert canary(md)["phase"] == "Paused" and canary(md)["weight"] == held
    await send_control(kube_client, name="chat", namespace=namespace, command=Command.RESUME)
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Promoted"), what="promoted",
                       timeout=120)
    assert md["status"]["stable"]["revision"] == "rev-good"
    assert {"PausedByUser", "Resumed"} <= set(await reasons(kube_client, namespace, "chat"))


async def test_promote_skips_the_remaining_steps(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await setup(kube_client, namespace, "chat", steps=[{"weight": 34, "pause": "10m"}],
                evaluation={"analysis": None})
    await set_revision(kube_client, namespace, "chat", "rev-good")
    await wait_md(kube_client, namespace, "chat", rollout_phase("Analyzing"), what="first step window",
                  timeout=120)
    await send_control(kube_client, name="chat", namespace=namespace, command=Command.PROMOTE)
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Promoted"), what="promoted",
                       timeout=120)
    history = md["status"]["rolloutHistory"][-1]
    assert history["decision"] == "Promoted" and history["reason"] == "PromotedByUser"
    await only_revisions_remain(kube_client, namespace, {"rev-good"})


async def test_abort_rolls_back_and_the_revision_is_not_retried(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await setup(kube_client, namespace, "chat", steps=[{"weight": 34, "pause": "10m"}],
                evaluation={"analysis": None})
    await set_revision(kube_client, namespace, "chat", "rev-good")
    await wait_md(kube_client, namespace, "chat", rollout_phase("Analyzing"), what="first step window",
                  timeout=120)
    await send_control(kube_client, name="chat", namespace=namespace, command=Command.ABORT)
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Aborted"), what="aborted",
                       timeout=120)
    assert canary(md)["rejectedRevision"] == "rev-good"
    assert md["status"]["desiredRevisionLive"] is False
    await only_revisions_remain(kube_client, namespace, {"rev-a"})
    # The annotation is the user's: the operator read it and never wrote it back.
    assert md["metadata"]["annotations"]["modelplane.dev/rollout-control"].startswith("abort@")


@pytest.mark.parametrize(("score", "phase"), [(0.9, "Promoted"), (0.6, "RolledBack")],
                         ids=["passes", "below-the-floor"])
async def test_a_custom_evaluator_job_gets_the_endpoints_and_its_score_decides_the_gate(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle, score: float,
        phase: str) -> None:
    evaluator = {"image": "ghcr.io/acme/lm-eval:1", "args": ["--tasks", "gsm8k"]}
    await setup(kube_client, namespace, "chat",
                evaluation={"suiteRef": None, "evaluator": evaluator, "analysis": None})
    await set_revision(kube_client, namespace, "chat", "rev-good")

    async def job() -> dict[str, Any] | None:
        jobs = await kube_client.list(kube.JOBS, namespace=namespace,
                                      label_selector="modelplane.dev/model-deployment=chat")
        return jobs[0] if jobs else None

    created = await wait_for(job, timeout=120, what="the evaluator Job")
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == evaluator["image"] and container["args"] == evaluator["args"]
    assert created["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert created["metadata"]["ownerReferences"][0]["name"] == "chat"
    env = {e["name"]: e["value"] for e in container["env"]}
    # What the evaluator would do (the dev cluster runs no image): ask both endpoints, then write
    # its aggregate score to the ConfigMap it was told.
    async with aiohttp.ClientSession() as http:
        for url in (env["CANARY_URL"], env["STABLE_URL"]):
            async with http.get(f"{url}/models", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200, url
                assert (await resp.json())["data"][0]["id"] == env["MODEL"]
    await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": env["RESULT_CONFIGMAP"]},
                              "data": {"result": f'{{"score": {score}, "baseline": 0.85}}'}},
                             namespace=env["RESULT_NAMESPACE"])
    md = await wait_md(kube_client, namespace, "chat", rollout_phase(phase), what=phase, timeout=120)
    c = canary(md)
    assert c["evalScore"] == pytest.approx(score) and c["baselineScore"] == pytest.approx(0.85)
    if phase == "Promoted":
        assert md["status"]["rolloutHistory"][-1]["decision"] == "Promoted"
        await only_revisions_remain(kube_client, namespace, {"rev-good"})
    else:
        assert c["reason"] == "EvaluationFailed" and "below the floor" in c["message"], c
        assert md["status"]["desiredRevisionLive"] is False
        await only_revisions_remain(kube_client, namespace, {"rev-a"})


async def test_cases_graded_by_a_judge_are_graded_by_the_judge_model_deployment(
        kube_client: kube.Kube, namespace: str, operator: OperatorHandle) -> None:
    await setup(kube_client, namespace, "chat",
                evaluation={"suiteRef": {"configMap": "judged"}, "judge": {"modelDeployment": "judge"},
                            "analysis": None})  # no live traffic here: the steps' pauses decide
    judge = manifest("judge")
    judge["spec"]["model"]["revision"] = "judge-v1"
    del judge["spec"]["rollout"]
    await kube_client.create(judge, namespace=namespace)
    # Every case graded by the judge: without a working judge each would count as wrong, the canary
    # would score 0 and be rolled back.
    # (The kinds whose expected answer is plain text a judge compares with: not a regex, schema or
    # number with a tolerance.)
    kinds = [TaskKind.ARITHMETIC, TaskKind.COMPARISON, TaskKind.REPEAT, TaskKind.CHOICE,
             TaskKind.CONTAINS]
    cases = [{"id": c["id"], **{k: c[k] for k in ("prompt", "messages") if k in c},
              "expected": c["expected"], "grader": "judge"}
             for c in generate_suite(60, seed=7, kinds=kinds)]
    await kube_client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "judged"},
                              "data": {"suite.jsonl": suite_jsonl(cases)}}, namespace=namespace)
    await wait_md(kube_client, namespace, "judge", lambda md: md["status"].get("phase") == "Ready",
                  what="the judge Ready")
    await set_revision(kube_client, namespace, "chat", "rev-good")
    md = await wait_md(kube_client, namespace, "chat", rollout_phase("Promoted"), what="promoted",
                       timeout=180)
    history = md["status"]["rolloutHistory"][-1]
    assert history["decision"] == "Promoted"
    # The judge is always right, so the scores are the checkpoints' accuracies (0.97 and 0.85).
    assert history["evalScore"] > 0.85 and 0.65 < history["baselineScore"] < 0.97, history
    report = await kube_client.get(kube.CONFIGMAPS, f"chat-eval-{history['fingerprint'][:8]}",
                                   namespace=namespace)
    assert report is not None
    assert '"canaryErrors": {}' in report["data"]["report.json"], report["data"]["report.json"][:500]

"""The dev cluster's pod agent, without a cluster: which pods it serves (pure tables), and how it
keeps serving through an API server outage and catches up afterwards (a scripted API client and
fake simulators). The same outage against the real kube-apiserver, killed and restarted, is
tests/integration/test_devcluster_outage.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelplane import gpus
from modelplane.controller import kube
from modelplane.controller.informer import Backoff
from modelplane_dev.devcluster.agent import (
    CPU_NODE_GPU_TYPE,
    Agent,
    PodTarget,
    ServerPlan,
    node_gpu_type,
    plan_servers,
    pod_target,
)
from modelplane_dev.devcluster.supervise import describe_exit, restart_delay
from modelplane_dev.sim.quality import BehaviorMap
from tests.waiting import wait_for, wait_until

L4 = "kwok-l4-0"
H100 = "kwok-h100-0"
ARGV = ("vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000")


def pod(name: str, *, uid: str | None = None, ip: str | None = "127.64.0.2", node: str | None = L4,
        phase: str = "Running", argv: tuple[str, ...] = ARGV, port: int | None = 8000,
        rv: str = "1", deleting: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "vllm", "command": list(argv[:2]), "args": list(argv[2:])}
    if port is not None:
        container["ports"] = [{"containerPort": port, "name": "http"}]
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}",
                            "resourceVersion": rv}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [container]},
            "status": status}


def target(name: str, *, uid: str | None = None, ip: str = "127.64.0.2", node: str = L4,
           argv: tuple[str, ...] = ARGV) -> PodTarget:
    return PodTarget(uid=uid or f"uid-{name}", namespace="ns", name=name, ip=ip, port=8000,
                     argv=argv, node=node)


def node(name: str, product: str | None) -> dict[str, Any]:
    labels = {"type": "kwok"} | ({gpus.PRODUCT_LABEL: product} if product else {})
    return {"metadata": {"name": name, "labels": labels, "resourceVersion": "1"}}


KWOK = {L4: "nvidia-l4", H100: "nvidia-h100-80gb"}


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "expected"), [
    pytest.param(pod("a"), target("a"), id="a vllm pod with an IP on a kwok node"),
    pytest.param(pod("a", ip=None), None, id="no IP yet"),
    pytest.param(pod("a", node=None), None, id="not scheduled"),
    pytest.param(pod("a", node="real-node"), None, id="not on a kwok node"),
    pytest.param(pod("a", phase="Succeeded"), None, id="completed"),
    pytest.param(pod("a", phase="Failed"), None, id="failed"),
    pytest.param(pod("a", deleting=True), target("a"),
                 id="terminating: keeps serving through its drain until it is gone"),
    pytest.param(pod("a", port=None), None, id="no container port"),
    pytest.param(pod("a", argv=("python", "-m", "evaluator")), None, id="not a vLLM server"),
    pytest.param(pod("a", argv=("python3", "-m", "vllm.entrypoints.openai.api_server", "--model",
                                "m")),
                 target("a", argv=("python3", "-m", "vllm.entrypoints.openai.api_server",
                                   "--model", "m")),
                 id="the api_server entry point"),
    pytest.param({"metadata": {"name": "x"}, "spec": {"nodeName": L4},
                  "status": {"podIP": "127.64.0.9"}}, None, id="no uid, no containers"),
])
def test_pod_target(obj: dict[str, Any], expected: PodTarget | None) -> None:
    assert pod_target(obj, KWOK) == expected


@pytest.mark.parametrize(("product", "gpu_type"), [
    ("NVIDIA-L4", "nvidia-l4"),
    ("NVIDIA-H100-80GB-HBM3", "nvidia-h100-80gb"),
    (None, CPU_NODE_GPU_TYPE),
    ("Some-Unknown-GPU", CPU_NODE_GPU_TYPE),
])
def test_node_gpu_type(product: str | None, gpu_type: str) -> None:
    assert node_gpu_type(node("n", product)) == gpu_type


A, B = target("a"), target("b", ip="127.64.0.3")


@pytest.mark.parametrize(("pods", "nodes", "handled", "plan"), [
    pytest.param([pod("a")], KWOK, {}, ServerPlan(start=(A,)), id="a new pod: start"),
    pytest.param([pod("a")], KWOK, {"uid-a": A}, ServerPlan(), id="already served: nothing"),
    pytest.param([], KWOK, {"uid-a": A}, ServerPlan(stop=("uid-a",)), id="the pod is gone: stop"),
    pytest.param([pod("a", phase="Succeeded")], KWOK, {"uid-a": A}, ServerPlan(stop=("uid-a",)),
                 id="the pod completed: stop"),
    pytest.param([pod("a", uid="uid-a2")], KWOK, {"uid-a": A},
                 ServerPlan(stop=("uid-a",), start=(target("a", uid="uid-a2"),)),
                 id="recreated under the same name: stop the old, start the new"),
    pytest.param([pod("a", ip="127.64.0.7")], KWOK, {"uid-a": A},
                 ServerPlan(stop=("uid-a",), start=(target("a", ip="127.64.0.7"),)),
                 id="its address changed: move the server"),
    pytest.param([pod("a"), pod("b", ip="127.64.0.3")], {}, {}, ServerPlan(),
                 id="its node is not known yet: wait for the node"),
    pytest.param([pod("b", ip="127.64.0.3"), pod("a")], KWOK, {"uid-a": A, "uid-c": target("c")},
                 ServerPlan(stop=("uid-c",), start=(B,)),
                 id="after an outage: what vanished stops, what appeared starts, the rest serves on"),
])
def test_plan_servers(pods: list[dict[str, Any]], nodes: dict[str, str],
                      handled: dict[str, PodTarget], plan: ServerPlan) -> None:
    assert plan_servers(pods, nodes, handled) == plan


@pytest.mark.parametrize(("failures", "delay"), [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (99, 30.0)])
def test_supervisor_restart_delay_is_bounded(failures: int, delay: float) -> None:
    assert restart_delay(failures) == delay


@pytest.mark.parametrize(("code", "text"), [(0, "code 0"), (1, "code 1"), (-9, "signal SIGKILL"),
                                            (-15, "signal SIGTERM")])
def test_supervisor_describes_an_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


# --- the agent through outages, against a scripted API ----------------------------------------

REFUSED = aiohttp.ClientConnectionError("Cannot connect to host 127.0.0.1:6443 [Connection refused]")
RESET = aiohttp.ServerDisconnectedError()
GONE = kube.ApiError(410, "Gone", "too old resource version")


class FakeApi:
    """LISTs, WATCHes and GETs that follow a script per resource; a step is a result or an error.
    A watch whose script is over hangs, like an idle watch; ``idle`` tells when both do. Before
    each watch, ``settle`` lets the agent act on what it has heard, as the time a real watch
    takes to come back would."""

    def __init__(self, *, pod_lists: list[Any], pod_watches: list[Any],
                 gets: list[Any] | None = None) -> None:
        self.lists = {"pods": list(pod_lists), "nodes": [([node(L4, "NVIDIA-L4")], "5")]}
        self.watches: dict[str, list[Any]] = {"pods": list(pod_watches), "nodes": []}
        self.gets = list(gets or [])
        self.idle = {"pods": asyncio.Event(), "nodes": asyncio.Event()}
        self.calls: list[str] = []
        self.settle: Callable[[], Awaitable[None]] | None = None

    async def list_raw(self, resource: kube.Resource, **_: Any) -> dict[str, Any]:
        self.calls.append(f"list {resource.plural}")
        step = self.lists[resource.plural].pop(0)
        if isinstance(step, BaseException):
            raise step
        items, rv = step
        return {"metadata": {"resourceVersion": rv}, "items": items}

    async def watch(self, resource: kube.Resource, *, resource_version: str | None = None,
                    **_: Any) -> AsyncIterator[kube.WatchEvent]:
        self.calls.append(f"watch {resource.plural}@{resource_version}")
        if self.settle is not None:
            await self.settle()
        script = self.watches[resource.plural]
        if not script:
            self.idle[resource.plural].set()
            await asyncio.Event().wait()
        step = script.pop(0)
        if isinstance(step, BaseException):
            raise step
        for event_type, obj in step:
            if isinstance(obj, BaseException):
                raise obj
            yield kube.WatchEvent(event_type, obj)

    async def get(self, resource: kube.Resource, name: str, **_: Any) -> dict[str, Any] | None:
        self.calls.append(f"get {resource.plural}/{name}")
        step = self.gets.pop(0) if self.gets else None
        if isinstance(step, BaseException):
            raise step
        return step


class FakeServer:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def run_agent(api: FakeApi, *, refuse: frozenset[str] = frozenset(),
                    until: set[str]) -> tuple[Agent, list[str], asyncio.Task[None]]:
    """Run the agent until the script is over and it serves ``until``; the task still runs."""
    log: list[str] = []

    async def serve(t: PodTarget, gpu_type: str, behaviors: BehaviorMap) -> FakeServer:
        log.append(f"start {t.name} on {t.ip} ({gpu_type})")
        if t.name in refuse:
            raise ValueError("the model does not fit")
        return FakeServer(t.name, log)

    fast = Backoff(first=0.001, cap=0.002)
    agent = Agent(api, serve=serve, backoff=fast,  # type: ignore[arg-type]
                  informer_backoff=lambda: Backoff(first=0.001, cap=0.002))

    async def settled() -> None:
        def acted() -> bool:
            return (agent.pods.synced.is_set() and agent.nodes.synced.is_set()
                    and not agent.changed.is_set())
        await wait_for(acted, timeout=5, what="the agent to act on what it heard", interval=0.001)

    api.settle = settled
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(asyncio.gather(api.idle["pods"].wait(), api.idle["nodes"].wait()), 5)

    def serving() -> bool:
        return {t.name for uid, t in agent.handled.items() if uid in agent.servers} == until

    await wait_for(serving, timeout=5, what=f"the agent to serve {sorted(until)}")
    assert not task.done(), "the agent ended"
    return agent, log, task


async def stop_agent(agent: Agent, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.close()


P1, P2, P3 = pod("p1", ip="127.64.0.1"), pod("p2", ip="127.64.0.2"), pod("p3", ip="127.64.0.3")


@pytest.mark.parametrize(("pod_lists", "pod_watches", "serving", "log", "warnings"), [
    pytest.param(
        [([P1], "10"), REFUSED, REFUSED, ([P2, P3], "20")],
        [[("ADDED", P2), ("MODIFIED", RESET)]],
        {"p2", "p3"},
        ["start p1 on 127.64.0.1 (nvidia-l4)", "start p2 on 127.64.0.2 (nvidia-l4)",
         "stop p1", "start p3 on 127.64.0.3 (nvidia-l4)"],
        1,
        id="kube-apiserver restarts: the stream is reset, LISTs are refused, then it catches up"),
    pytest.param(
        [([P1], "10"), ([P1, P3], "30")],
        [GONE],
        {"p1", "p3"},
        ["start p1 on 127.64.0.1 (nvidia-l4)", "start p3 on 127.64.0.3 (nvidia-l4)"],
        0,
        id="410 Gone: LIST again; the running server is left alone"),
    pytest.param(
        [([P1, P2], "10"), ([P2], "30")],
        [[("ERROR", {"kind": "Status", "code": 410, "message": "too old"})]],
        {"p2"},
        ["start p1 on 127.64.0.1 (nvidia-l4)", "start p2 on 127.64.0.2 (nvidia-l4)", "stop p1"],
        0,
        id="an ERROR event: LIST again; a pod deleted meanwhile stops"),
    pytest.param(
        [REFUSED, REFUSED, ([P1], "10")],
        [],
        {"p1"},
        ["start p1 on 127.64.0.1 (nvidia-l4)"],
        1,
        id="the API server is not up yet when the agent starts"),
    pytest.param(
        [([P1], "10"), ([P1], "11")],
        [[("MODIFIED", pod("p1", ip="127.64.0.1", rv="2")), ("MODIFIED", TimeoutError())]],
        {"p1"},
        ["start p1 on 127.64.0.1 (nvidia-l4)"],
        1,
        id="a status update and a timed-out watch: the server is not restarted"),
])
async def test_the_agent_serves_on_through_an_outage_and_catches_up(
        pod_lists: list[Any], pod_watches: list[Any], serving: set[str], log: list[str],
        warnings: int, caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi(pod_lists=pod_lists, pod_watches=pod_watches)
    with caplog.at_level(logging.INFO):
        agent, got, task = await run_agent(api, until=serving)
    assert got == log
    assert [c for c in api.calls if "pods" in c][-1].startswith("watch pods@"), api.calls
    # One warning per outage, however many retries it took.
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == warnings, said
    await stop_agent(agent, task)


async def test_a_start_waits_for_the_api_server_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    behaviors = {"data": {"behaviors.yaml": "checkpoints: {}\n"}}
    api = FakeApi(pod_lists=[([P1], "10")], pod_watches=[], gets=[REFUSED, REFUSED, RESET, behaviors])
    with caplog.at_level(logging.INFO):
        agent, log, task = await run_agent(api, until={"p1"})
    assert log == ["start p1 on 127.64.0.1 (nvidia-l4)"]
    assert api.calls.count("get configmaps/modelplane-sim") == 4
    said = [r.getMessage() for r in caplog.records if "cannot read ns/modelplane-sim" in r.getMessage()]
    assert len(said) == 1 and "Connection refused" in said[0]
    await stop_agent(agent, task)
    assert log[-1] == "stop p1"


async def test_a_model_that_does_not_fit_is_not_tried_again_until_its_pod_changes() -> None:
    api = FakeApi(pod_lists=[([P1, P2], "10")],
                  pod_watches=[[("MODIFIED", pod("p1", ip="127.64.0.1", rv="2")),
                                ("MODIFIED", pod("p1", ip="127.64.0.1", rv="3"))]])
    agent, log, task = await run_agent(api, refuse=frozenset({"p1"}), until={"p2"})
    assert log == ["start p1 on 127.64.0.1 (nvidia-l4)", "start p2 on 127.64.0.2 (nvidia-l4)"]
    assert set(agent.handled) == {"uid-p1", "uid-p2"} and set(agent.servers) == {"uid-p2"}
    await stop_agent(agent, task)


def test_the_supervisor_starts_a_crashed_child_again_and_ends_it_on_sigterm(tmp_path: Path) -> None:
    """The dev cluster runs its pod agent under this supervisor: a crash (here exit code 3) is
    followed by a new start; SIGTERM to the supervisor alone is passed on, and both end."""
    starts = tmp_path / "starts"
    child = ("import pathlib, sys, time\n"
             f"p = pathlib.Path({str(starts)!r})\n"
             "n = len(p.read_text()) if p.exists() else 0\n"
             "p.write_text('x' * (n + 1))\n"
             "sys.exit(3) if n == 0 else time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "modelplane_dev.devcluster.supervise",
                             "--name=crashy", "--", sys.executable, "-c", child],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: starts.exists() and starts.read_text() == "xx", timeout=15,
                   what="the child to be started a second time")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.stderr is not None
    said = proc.stderr.read()
    proc.stderr.close()
    assert "crashy (pid " in said and "exited with code 3 after" in said, said
    assert "starting it again in 1.0 s" in said, said

    def group_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_gone, timeout=15, what="the supervised child to end with its supervisor")
    assert starts.read_text() == "xx"  # not started a third time

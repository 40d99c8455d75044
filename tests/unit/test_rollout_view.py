"""``modelplane get NAME [--watch]``: the pure view (a table of objects → the lines they must show)
and the watch that redraws it, against a stand-in API server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from modelplane import cli
from modelplane.api.models import ScalingDecision
from modelplane.controller import kube
from modelplane.rollout.get import show
from modelplane.rollout.view import age, render
from tests.waiting import wait_for

NOW = datetime(2026, 12, 3, 14, 0, 0, tzinfo=UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


STEPS = [{"weight": 10, "pause": "5m"}, {"weight": 50, "pause": "10m"}, {"weight": 100, "pause": "1m"}]


def md(status: dict[str, Any] | None, *, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team-a", "generation": generation, "resourceVersion": "1"},
        "spec": {"model": {"source": "hf://org/m", "revision": "b"}, "rollout": {"steps": STEPS}}}
    if status is not None:
        obj["status"] = status
    return obj


READY = {"observedGeneration": 1, "phase": "Ready", "replicas": 3, "readyReplicas": 3, "desiredReplicas": 3,
         "stable": {"revision": "rev-a"}, "endpoint": "http://chat.team-a.svc:8000/v1",
         "plan": {"shape": "1x nvidia-l40s", "hourlyUSDPerReplica": 2.25},
         "cost": {"hourlyUSD": 6.75, "usdPerMillionTokens": 0.42},
         "conditions": [{"type": "Ready", "status": "True", "reason": "AllReplicasReady",
                         "message": "3 of 3 ready", "lastTransitionTime": ts(300)}]}
STEPPING = {**READY, "phase": "Progressing", "canary": {
    "phase": "Stepping", "revision": "rev-b", "weight": 50, "step": 1, "phaseSince": ts(700),
    "stepStartedAt": ts(180), "evalScore": 0.912, "baselineScore": 0.905, "lowerBound": -0.012, "cases": 200,
    "failingCases": ["c1", "c2"], "canaryErrors": 0, "stableErrors": 1, "decision": "Pass",
    "reason": "StepAnalysis", "message": "step 2 of 3: errors 0/120"}}
EVALUATING = {**READY, "phase": "Progressing", "canary": {
    "phase": "Evaluating", "revision": "rev-b", "weight": 0, "phaseSince": ts(30)}}
ROLLED_BACK = {**READY, "canary": {
    "phase": "RolledBack", "revision": "rev-b", "weight": 0, "evalScore": 0.70, "baselineScore": 0.90,
    "decision": "Fail", "reason": "ScoreRegressed", "message": "canary 0.700 < stable 0.900 - 0.02"},
    "rolloutHistory": [{"revision": "rev-b", "decision": "RolledBack", "evalScore": 0.7, "baselineScore": 0.9,
                        "finishedAt": ts(60), "reason": "ScoreRegressed"}]}
SCALING = {**READY, "autoscaler": {"lastDecision": {
    "time": ts(4), "desiredReplicas": 4, "reason": "queue 6.0 per replica > target 4",
    "queueDepth": 6.0, "runningRequests": 40.0, "kvCacheUsage": 0.61, "coldStartSeconds": 90.0}}}

# object → lines (substrings of whole lines) the view must show, and lines it must not show
VIEWS: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "no status yet": (md(None), ["Status:      (none yet: the operator has not reconciled it)"], ["Phase:"]),
    "ready, no rollout": (md(READY), [
        "Phase:       Ready", "Replicas:    desired 3  current 3  ready 3", "Stable:      rev-a",
        "Plan:        1x nvidia-l40s  $2.25/h per replica", "Cost:        $6.75/h  $0.420 per million tokens",
        "Rollout:     none in progress", "  Ready  True    AllReplicasReady  5m   3 of 3 ready"],
        ["Steps:", "Autoscaler:"]),
    "a status from an older generation": (md(READY, generation=2),
                                          ["Phase:       Ready  (status is from an older generation)"], []),
    "stepping at the second of three steps": (md(STEPPING), [
        "Rollout:     Stepping  revision rev-b  canary weight 50%  (since 11m)",
        "    ✔ 1/3  weight 10%  pause 5m", "    ► 2/3  weight 50%  pause 10m  (started 3m ago)",
        "      3/3  weight 100%  pause 1m",
        "  Gate:        canary 0.912  stable 0.905  lower bound -0.012  cases 200  failing 2",
        "  Analysis:    canary errors 0  stable errors 1", "  Decision:    Pass",
        "  Reason:      StepAnalysis: step 2 of 3: errors 0/120"], []),
    "evaluating before any traffic": (md(EVALUATING), [
        "Rollout:     Evaluating  revision rev-b  canary weight 0%  (since 30s)",
        "      1/3  weight 10%  pause 5m"], ["►", "✔", "Gate:"]),
    "rolled back, with its history": (md(ROLLED_BACK), [
        "Rollout:     RolledBack  revision rev-b  canary weight 0%",
        "  Gate:        canary 0.700  stable 0.900", "  Reason:      ScoreRegressed: canary 0.700 < stable",
        "History:", "  rev-b     RolledBack  0.700   0.900   1m        ScoreRegressed"], ["►", "✔"]),
    "the autoscaler's last decision": (md(SCALING), [
        "Autoscaler:", "  AGE  DESIRED  QUEUE  RUNNING  KV CACHE  COLD START  REASON",
        "  4s   4        6.0    40       61%       90s         queue 6.0 per replica > target 4"], []),
}


@pytest.mark.parametrize(("obj", "shows", "hides"), list(VIEWS.values()), ids=list(VIEWS))
def test_the_view(obj: dict[str, Any], shows: list[str], hides: list[str]) -> None:
    text = render(obj, now=NOW)
    lines = text.splitlines()
    assert lines[:2] == ["Name:        chat", "Namespace:   team-a"]
    for want in shows:
        assert any(want in line for line in lines), f"{want!r} not in:\n{text}"
    for unwanted in hides:
        assert unwanted not in text, f"{unwanted!r} in:\n{text}"


def test_decisions_seen_are_listed_newest_first() -> None:
    older = [ScalingDecision(time=NOW - timedelta(seconds=s), desired_replicas=r, reason=f"r{r}")
             for s, r in ((60, 1), (30, 2))]
    lines = render(md(SCALING), decisions=older, now=NOW).splitlines()
    start = lines.index("Autoscaler:")
    assert [line.split()[1] for line in lines[start + 2:start + 5]] == ["4", "2", "1"]


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (5, "5s"), (59, "59s"), (60, "1m"),
                                               (3599, "59m"), (7200, "2h"), (86400 * 3, "3d"), (-5, "0s")])
def test_age(seconds: int | None, text: str) -> None:
    assert age(None if seconds is None else NOW - timedelta(seconds=seconds), NOW) == text


# --- the watch ----------------------------------------------------------------------------------

@pytest.fixture
async def api() -> AsyncIterator[dict[str, Any]]:
    """GET returns ``state['obj']``; a watch streams ``state['events']`` and then holds."""
    state: dict[str, Any] = {"obj": md(READY), "events": [], "watches": []}
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            state["watches"].append(dict(request.query))
            resp = web.StreamResponse()
            await resp.prepare(request)
            for event in state["events"]:
                await resp.write(json.dumps(event).encode() + b"\n")
            state["events"] = []
            await stop.wait()
            return resp
        if state["obj"] is None:
            return web.json_response({"kind": "Status", "reason": "NotFound", "message": "nope"}, status=404)
        return web.json_response(state["obj"])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    stop.set()
    await runner.cleanup()


async def test_get_draws_once(api: dict[str, Any]) -> None:
    out = io.StringIO()
    async with kube.Kube(kube.KubeConfig(server=api["url"])) as client:
        await show(client, name="chat", namespace="team-a", watch=False, out=out, clear=False)
    assert "Phase:       Ready" in out.getvalue() and not api["watches"]


async def test_watch_redraws_on_every_change(api: dict[str, Any]) -> None:
    stepping = md(STEPPING)
    stepping["metadata"]["resourceVersion"] = "2"
    scaling = md(SCALING)
    api["events"] = [{"type": "MODIFIED", "object": stepping}, {"type": "MODIFIED", "object": scaling}]
    out = io.StringIO()
    async with kube.Kube(kube.KubeConfig(server=api["url"])) as client:
        task = asyncio.create_task(show(client, name="chat", namespace="team-a", watch=True, out=out,
                                        clear=True))
        await wait_for(lambda: out.getvalue().count("\x1b[H\x1b[2J") == 3, timeout=5, what="three redraws")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    frames = out.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 3
    assert "Rollout:     none in progress" in frames[0]
    assert "► 2/3  weight 50%" in frames[1]
    assert "Autoscaler:" in frames[2]
    assert api["watches"][0]["fieldSelector"] == "metadata.name=chat"
    assert api["watches"][0]["resourceVersion"] == "1"


async def test_get_of_a_missing_object_is_one_line(api: dict[str, Any], tmp_path: Any,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    api["obj"] = None
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u",
                                                                      "namespace": "team-a"}}],
        "clusters": [{"name": "c", "cluster": {"server": api["url"]}}],
        "users": [{"name": "u", "user": {}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # The command runs its own event loop: in a thread, while this one serves the stand-in API.
    assert await asyncio.to_thread(cli.main, ["get", "chat", "--kubeconfig", str(path)]) == 1
    assert capsys.readouterr().err == ("modelplane get: modeldeployment chat in namespace team-a not found "
                                       "(kubectl get md -n team-a lists them)\n")


async def test_watch_without_a_terminal_separates_views_by_a_blank_line(api: dict[str, Any]) -> None:
    api["events"] = [{"type": "MODIFIED", "object": md(STEPPING)}]
    out = io.StringIO()
    async with kube.Kube(kube.KubeConfig(server=api["url"])) as client:
        task = asyncio.create_task(show(client, name="chat", namespace="team-a", watch=True, out=out,
                                        clear=False))
        await wait_for(lambda: out.getvalue().count("Name:") == 2, timeout=5, what="two views")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    text = out.getvalue()
    assert "\x1b" not in text and text.count("Name:") == 2
    assert "\n\nName:        chat" in text and not text.startswith("\n")

"""The informer's cache and its recovery, against a scripted client (no cluster).

The real API server's side of it — a watch across kube-apiserver being killed and restarted — is
tests/integration/test_faults.py; here each way a LIST or WATCH can end is scripted, so that each
recovery path is exercised on purpose: the server's watch timeout, 410 Gone as a status and as an
ERROR event, a refused connection, a dropped stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from modelplane.controller import kube
from modelplane.controller.informer import Backoff, Informer
from tests.waiting import wait_for

POD = kube.PODS


def pod(name: str, rv: str, *, owner: str = "md", ns: str = "a") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "labels": {"modelplane.dev/model-deployment": owner},
                         "managedFields": [{"manager": "x"}]}}


class Script:
    """A client whose LISTs and WATCHes follow a script; each step is a list or an exception."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = list(lists), list(watches)
        self.calls: list[str] = []
        self.done = asyncio.Event()

    async def list_raw(self, resource: kube.Resource, **_: Any) -> dict[str, Any]:
        self.calls.append("list")
        step = self.lists.pop(0)
        if isinstance(step, BaseException):
            raise step
        items, rv = step
        return {"metadata": {"resourceVersion": rv}, "items": items}

    async def watch(self, resource: kube.Resource, *, resource_version: str | None = None,
                    **_: Any) -> AsyncIterator[kube.WatchEvent]:
        self.calls.append(f"watch@{resource_version}")
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()  # the script is over: hang like an idle watch
        step = self.watches.pop(0)
        if isinstance(step, BaseException):
            raise step
        for event_type, obj in step:
            if isinstance(obj, BaseException):
                raise obj
            yield kube.WatchEvent(event_type, obj)


async def run_script(script: Script, **kwargs: Any) -> tuple[Informer, list[tuple[str, str]]]:
    heard: list[tuple[str, str]] = []
    informer = Informer(script, POD, backoff=Backoff(first=0.001, cap=0.002),  # type: ignore[arg-type]
                        index=lambda o: [o["metadata"]["labels"]["modelplane.dev/model-deployment"]],
                        handler=lambda t, o: heard.append((t, o["metadata"]["name"])), **kwargs)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(script.done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return informer, heard


GONE = kube.ApiError(410, "Gone", "too old resource version")
REFUSED = aiohttp.ClientConnectionError("Cannot connect to host 127.0.0.1:6443")


@pytest.mark.parametrize(("lists", "watches", "calls", "heard", "left"), [
    pytest.param(
        [([pod("p1", "1")], "10")],
        [[("ADDED", pod("p2", "11")), ("MODIFIED", pod("p1", "12")), ("DELETED", pod("p2", "13"))]],
        ["list", "watch@10", "watch@13"],
        [("ADDED", "p1"), ("ADDED", "p2"), ("MODIFIED", "p1"), ("DELETED", "p2")], {"p1": "12"},
        id="list then watch; the server's timeout: watch again from the last version"),
    pytest.param(
        [([pod("p1", "1")], "10"), ([pod("p1", "1"), pod("p3", "20")], "21")],
        [GONE],
        ["list", "watch@10", "list", "watch@21"],
        [("ADDED", "p1"), ("ADDED", "p3")], {"p1": "1", "p3": "20"},
        id="410 Gone as a status: list again at once, report what appeared"),
    pytest.param(
        [([pod("p1", "1"), pod("p2", "2")], "10"), ([pod("p2", "5")], "30")],
        [[("ERROR", {"kind": "Status", "code": 410, "message": "too old"})]],
        ["list", "watch@10", "list", "watch@30"],
        [("ADDED", "p1"), ("ADDED", "p2"), ("DELETED", "p1"), ("MODIFIED", "p2")], {"p2": "5"},
        id="410 as an ERROR event: list again; what vanished meanwhile is DELETED"),
    pytest.param(
        [([pod("p1", "1")], "10"), REFUSED, REFUSED, ([pod("p1", "7")], "40")],
        [[("MODIFIED", pod("p1", "3")), ("MODIFIED", REFUSED)]],
        ["list", "watch@10", "list", "list", "list", "watch@40"],
        [("ADDED", "p1"), ("MODIFIED", "p1"), ("MODIFIED", "p1")], {"p1": "7"},
        id="the API server goes away mid-stream: retry with backoff until it is back"),
    pytest.param(
        [kube.Forbidden(403, "Forbidden", "pods is forbidden"), ([pod("p1", "1")], "10")],
        [],
        ["list", "list", "watch@10"],
        [("ADDED", "p1")], {"p1": "1"},
        id="403 before RBAC is granted: retried, never fatal"),
])
async def test_informer_recovers(lists: list[Any], watches: list[Any], calls: list[str],
                                 heard: list[tuple[str, str]], left: dict[str, str]) -> None:
    script = Script(lists, watches)
    informer, got = await run_script(script)
    assert script.calls == calls
    assert got == heard
    assert {k[1]: o["metadata"]["resourceVersion"] for k, o in informer.store.items()} == left
    assert informer.down_since is None and informer.synced.is_set()
    assert all("managedFields" not in o["metadata"] for o in informer.items())
    assert all(o["kind"] == "Pod" and o["apiVersion"] == "v1" for o in informer.items())


async def test_index_follows_label_changes() -> None:
    moved = pod("p1", "2", owner="other")
    script = Script([([pod("p1", "1"), pod("p2", "1")], "10")], [[("MODIFIED", moved)]])
    informer, _ = await run_script(script)
    assert [o["metadata"]["name"] for o in informer.by_index("md")] == ["p2"]
    assert [o["metadata"]["name"] for o in informer.by_index("other")] == ["p1"]


async def test_down_for_counts_while_failing() -> None:
    script = Script([REFUSED] * 1000, [])  # more refusals than the wait below can use
    informer = Informer(script, POD, backoff=Backoff(first=0.01, cap=0.01))  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await wait_for(lambda: informer.down_since is not None and informer.down_for() > 0, timeout=5,
                   what="the informer to count itself down")
    assert informer.last_error is not None and "Cannot connect" in informer.last_error
    assert not informer.synced.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_handler_does_not_end_the_informer() -> None:
    script = Script([([pod("p1", "1")], "10")], [[("ADDED", pod("p2", "11"))]])

    def boom(_: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    informer = Informer(script, POD, handler=boom)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(script.done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(k[1] for k in informer.store) == {"p1", "p2"}


@pytest.mark.parametrize(("failures", "low", "high"), [
    (0, 0.1, 0.2), (1, 0.2, 0.4), (3, 0.8, 1.6), (5, 2.5, 5.0), (50, 2.5, 5.0),
])
def test_backoff_is_bounded(failures: int, low: float, high: float) -> None:
    backoff = Backoff(first=0.2, cap=5.0, failures=failures)
    for _ in range(20):
        assert low <= Backoff(first=0.2, cap=5.0, failures=failures).next_delay() <= high
    backoff.next_delay()
    assert backoff.failures == failures + 1
    backoff.reset()
    assert backoff.failures == 0

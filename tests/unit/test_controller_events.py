"""The controller posts Events from its own senders, so a reconcile never waits on them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelplane.controller import kube, loop, opmetrics
from modelplane.controller import reconcile as core
from modelplane.controller.loop import Controller
from tests.waiting import wait_for

BODY = {"metadata": {"namespace": "ns", "name": "chat", "uid": "u1"}}


class FakeKube:
    """Event creates only: each is recorded; some fail as the API server or the network can."""

    def __init__(self, fail: dict[str, BaseException] | None = None, *,
                 gate: asyncio.Event | None = None) -> None:
        self.fail = fail or {}
        self.gate = gate
        self.posted: list[str] = []

    async def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        if self.gate is not None:
            await self.gate.wait()
        reason = str(obj["reason"])
        if reason in self.fail:
            raise self.fail[reason]
        assert obj["kind"] == "Event" and obj["involvedObject"]["name"] == "chat"
        self.posted.append(reason)
        return obj


def event(reason: str) -> core.EventSpec:
    return core.EventSpec("Normal", reason, f"{reason} happened")


async def start_senders(controller: Controller) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(controller._send_events()) for _ in range(loop.EVENT_SENDERS)]  # noqa: SLF001


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(("fail", "posted"), [
    pytest.param({}, ["A", "B", "C"], id="all-posted"),
    # A refusal is logged and the Event lost; the next ones are still posted.
    pytest.param({"B": kube.Forbidden(403, "Forbidden", "events is forbidden")}, ["A", "C"], id="refused"),
    # A network error (not an ApiError) must not end the sender either.
    pytest.param({"A": OSError("connection reset")}, ["B", "C"], id="network-error"),
])
async def test_events_are_posted_by_the_senders_and_a_failure_loses_only_its_own(
        fail: dict[str, BaseException], posted: list[str]) -> None:
    client = FakeKube(fail)
    controller = Controller(client)  # type: ignore[arg-type]
    senders = await start_senders(controller)
    try:
        for reason in ("A", "B", "C"):
            controller.record_event(BODY, event(reason))
        await asyncio.wait_for(controller._events.join(), timeout=5)  # noqa: SLF001
        assert sorted(client.posted) == posted
        assert all(not t.done() for t in senders)
    finally:
        await stop(senders)


async def test_recording_never_waits_and_a_full_queue_drops_and_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()  # the API server hangs until the gate opens
    client = FakeKube(gate=gate)
    monkeypatch.setattr(loop, "EVENT_QUEUE_SIZE", 3)
    controller = Controller(client)  # type: ignore[arg-type]
    senders = await start_senders(controller)
    dropped_before = opmetrics.EVENTS_DROPPED._value.get()  # noqa: SLF001
    try:
        # The senders each take one and hang; three more fill the queue; the rest are dropped.
        for i in range(loop.EVENT_SENDERS):
            controller.record_event(BODY, event(f"taken{i}"))
            await wait_for(lambda: controller._events.empty(), timeout=5,  # noqa: SLF001
                           what="a sender to take the Event")
        for i in range(5):
            controller.record_event(BODY, event(f"queued{i}"))  # returns at once: no await
        assert opmetrics.EVENTS_DROPPED._value.get() - dropped_before == 2  # noqa: SLF001
        gate.set()
        await asyncio.wait_for(controller._events.join(), timeout=5)  # noqa: SLF001
        assert sorted(client.posted) == sorted([f"taken{i}" for i in range(loop.EVENT_SENDERS)]
                                               + ["queued0", "queued1", "queued2"])
    finally:
        await stop(senders)


async def test_an_event_waits_while_a_change_waits_for_a_worker_but_not_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "EVENT_DEFER_POLL_SECONDS", 0.01)
    client = FakeKube()
    controller = Controller(client)  # type: ignore[arg-type]
    senders = await start_senders(controller)
    try:
        controller._queue.put_nowait((loop.URGENT, 0, ("ns", "new")))  # noqa: SLF001
        controller.record_event(BODY, event("A"))
        await asyncio.sleep(0.1)  # ten looks at the queue: still a change waiting
        assert client.posted == []
        controller._queue.get_nowait()  # noqa: SLF001  # a worker took it
        await asyncio.wait_for(controller._events.join(), timeout=5)  # noqa: SLF001
        assert client.posted == ["A"]

        # A change that never leaves the queue holds an Event back at most EVENT_MAX_DEFER_SECONDS.
        monkeypatch.setattr(loop, "EVENT_MAX_DEFER_SECONDS", 0.2)
        controller._queue.put_nowait((loop.URGENT, 1, ("ns", "stuck")))  # noqa: SLF001
        controller.record_event(BODY, event("B"))
        await asyncio.wait_for(controller._events.join(), timeout=5)  # noqa: SLF001
        assert client.posted == ["A", "B"]
    finally:
        await stop(senders)


async def test_a_periodic_resync_in_the_queue_holds_no_event_back() -> None:
    client = FakeKube()
    controller = Controller(client)  # type: ignore[arg-type]
    senders = await start_senders(controller)
    try:
        controller._queue.put_nowait((loop.PERIODIC, 0, ("ns", "idle")))  # noqa: SLF001
        controller.record_event(BODY, event("A"))
        await asyncio.wait_for(controller._events.join(), timeout=5)  # noqa: SLF001
        assert client.posted == ["A"]
    finally:
        await stop(senders)


@pytest.mark.parametrize(("exc", "refused"), [
    (kube.Invalid(422, "Invalid", "spec.replicas: must be >= 0"), True),
    (kube.Forbidden(403, "Forbidden", "denied by ValidatingAdmissionPolicy"), True),
    # Its namespace is going away: not the child's fault, the reconcile ends as for a deletion.
    (kube.Forbidden(403, "Forbidden", "namespace x is being terminated"), False),
    (kube.ApiError(500, "InternalError", "etcd timeout"), False),
    (OSError("connection reset"), False),
])
def test_which_failures_are_a_refused_child(exc: BaseException, refused: bool) -> None:
    assert loop._refused(exc) is refused  # noqa: SLF001

"""A reconcile reads the object as its own last status write left it, not as the watch last said."""

from __future__ import annotations

import copy
from typing import Any

from modelplane.controller.loop import Controller
from tests.unit.test_reconcile import md


class ApplyingKube:
    """Server-side apply as the API server answers it: the whole object after the write.

    Its watch events are never delivered: the test is the window before they come back.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        self.stored = copy.deepcopy(body)
        self.version = 1
        self.status_writes = 0

    async def apply(self, obj: dict[str, Any], *, subresource: str | None = None,
                    **_: Any) -> dict[str, Any]:
        if subresource != "status":
            return copy.deepcopy(obj)  # a child, as created
        self.status_writes += 1
        self.version += 1
        self.stored["status"] = copy.deepcopy(obj["status"])
        self.stored["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.stored)

    async def delete(self, *_: Any, **__: Any) -> bool:
        return True


def queued_reasons(controller: Controller) -> list[str]:
    reasons = []
    while not controller._events.empty():  # noqa: SLF001
        _, _, event = controller._events.get_nowait()  # noqa: SLF001
        reasons.append(event.reason)
    return reasons


async def test_a_second_reconcile_before_the_watch_event_does_not_repeat_the_first_step() -> None:
    body = md()
    client = ApplyingKube(body)
    controller = Controller(client)  # type: ignore[arg-type]
    key = ("ns", "chat")
    controller.known[key] = body

    assert await controller.reconcile(key)
    first = queued_reasons(controller)
    assert "InitialDeploy" in first, first
    # A child's watch event wakes it again at once; its own status write has not come back yet.
    assert await controller.reconcile(key)
    second = queued_reasons(controller)
    assert "InitialDeploy" not in second, second
    assert controller.known[key]["status"] == client.stored["status"]


async def test_a_status_write_does_not_bring_back_an_object_deleted_meanwhile() -> None:
    controller = Controller(ApplyingKube(md()))  # type: ignore[arg-type]
    written = {**md(), "status": {"phase": "Pending"}}
    controller._wrote(("ns", "chat"), written)  # noqa: SLF001
    assert ("ns", "chat") not in controller.known
    controller.known[("ns", "chat")] = md()
    controller._wrote(("ns", "chat"), written)  # noqa: SLF001
    assert controller.known[("ns", "chat")]["status"] == {"phase": "Pending"}

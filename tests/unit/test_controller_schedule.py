"""The controller's schedule: an object woken by a change goes before periodic resyncs."""

from __future__ import annotations

import time
from typing import Any

import pytest

from modelplane.controller.loop import PERIODIC, URGENT, Controller, Key


def controller_with(keys: list[Key]) -> Controller:
    controller = Controller(None)  # type: ignore[arg-type]  # no API calls in scheduling
    for informers in controller.informers.values():
        for informer in informers:
            informer.synced.set()
    controller.known = {k: {"metadata": {"namespace": k[0], "name": k[1]}} for k in keys}
    return controller


async def schedule(controller: Controller) -> None:
    """One pass of the scheduler; an unknown key due in 1 ms keeps its wait short."""
    controller._due.pop(SENTINEL, None)  # noqa: SLF001
    controller.poke(SENTINEL, at=time.monotonic() + 0.001)
    await controller._schedule_once()  # noqa: SLF001


def drain(controller: Controller) -> list[Key]:
    """The keys in the order the workers would take them, skipping superseded entries."""
    order: list[Key] = []
    queued = controller._queued  # noqa: SLF001
    while not controller._queue.empty():  # noqa: SLF001
        priority, _, key = controller._queue.get_nowait()  # noqa: SLF001
        if queued.get(key) == priority:
            del queued[key]
            order.append(key)
    return order


KEYS = [("ns", f"m{i}") for i in range(5)]
SENTINEL = ("ns", "sentinel")


@pytest.mark.parametrize(("periodic", "changed", "expected"), [
    # Four resyncs due, then an edit of m4: m4 is taken first, the rest in their order.
    pytest.param(KEYS[:4], [KEYS[4]], [KEYS[4], *KEYS[:4]], id="edit-before-resyncs"),
    # m2's resync is queued, then m2 is edited: it moves ahead and is reconciled once.
    pytest.param(KEYS[:4], [KEYS[2]], [KEYS[2], KEYS[0], KEYS[1], KEYS[3]], id="moved-ahead-once"),
    # Only resyncs: first come, first served.
    pytest.param(KEYS, [], KEYS, id="resyncs-in-order"),
    # Two changes keep their order too.
    pytest.param(KEYS[:2], [KEYS[4], KEYS[3]], [KEYS[4], KEYS[3], KEYS[0], KEYS[1]], id="changes-in-order"),
])
async def test_changes_go_before_resyncs(periodic: list[Key], changed: list[Key],
                                         expected: list[Key]) -> None:
    controller = controller_with(KEYS)
    past = time.monotonic() - 1
    for key in periodic:
        controller.poke(key, at=past)  # a resync that came due
    await schedule(controller)
    for key in changed:
        controller.poke(key)  # a watch event
    await schedule(controller)
    assert drain(controller) == expected


async def test_a_wake_with_a_time_is_periodic_and_one_without_is_urgent() -> None:
    controller = controller_with(KEYS[:2])
    controller.poke(KEYS[0], at=time.monotonic() - 1)
    controller.poke(KEYS[1])
    await schedule(controller)
    assert controller._queued == {KEYS[0]: PERIODIC, KEYS[1]: URGENT}  # noqa: SLF001


async def test_an_object_that_is_gone_is_not_queued() -> None:
    controller = controller_with(KEYS[:1])
    controller.poke(("ns", "gone"))
    await schedule(controller)
    assert drain(controller) == []


def md(*, generation: int = 1, rv: str = "1", status: dict[str, Any] | None = None,
       annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "m0", "generation": generation, "resourceVersion": rv,
                         "annotations": annotations or {}, "managedFields": [{"manager": rv}]},
            "spec": {"model": {"source": "hf://a/b"}}, "status": status or {}}


@pytest.mark.parametrize(("after", "priority"), [
    # The operator's own status write coming back: behind the objects others changed.
    pytest.param(md(rv="2", status={"phase": "Ready"}), PERIODIC, id="status-only"),
    pytest.param(md(generation=2, rv="2"), URGENT, id="spec-edit"),
    # The rollout controls are annotations: a person's act, taken at once.
    pytest.param(md(rv="2", annotations={"modelplane.dev/control": "pause"}), URGENT, id="annotation"),
])
async def test_what_a_modeldeployment_event_changed_sets_its_priority(after: dict[str, Any],
                                                                      priority: int) -> None:
    controller = controller_with([])
    controller.observe("ADDED", md())
    await schedule(controller)
    assert drain(controller) == [("ns", "m0")]  # reconciled once
    controller.observe("MODIFIED", after)
    await schedule(controller)
    assert controller._queued == {("ns", "m0"): priority}  # noqa: SLF001


async def test_a_new_object_is_urgent() -> None:
    controller = controller_with([])
    controller.observe("ADDED", md())
    await schedule(controller)
    assert controller._queued == {("ns", "m0"): URGENT}  # noqa: SLF001

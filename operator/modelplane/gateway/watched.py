"""A source the gateway keeps from informers (routes, models, teams' keys): synced once every
informer has listed; down while one's watch is; run until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from modelplane.controller.informer import Informer


class Watched:
    """A source kept by informers: synced once all have listed; down while one's watch is."""

    _informers: list[Informer]  #: set by a subclass, or ``informers`` overridden

    @property
    def informers(self) -> list[Informer]:
        return self._informers

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def health(self, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        return {i.name: i.down_for(now) for i in self.informers if i.down_since is not None}

    async def run(self) -> None:
        await run_informers(self.informers)


async def run_informers(informers: Sequence[Informer]) -> None:
    """Run the informers until cancelled."""
    tasks = [asyncio.create_task(i.run(), name=f"gateway-watch-{i.name}") for i in informers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

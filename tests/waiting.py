"""Waiting on a condition with a deadline: the one polling loop every test tier uses.

A test never sleeps for a fixed time to let something happen; it names the condition, the
deadline and what it waits for, so a failure says what did not happen. ``wait_until`` is for
synchronous checks, ``wait_for`` for checks that may be coroutines; ``stopped`` paces a load or
sampling loop by waiting on its stop event (so it ends as soon as it is told, not a pause later).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

#: How often a condition is checked; short, since every check here is cheap and local.
POLL_SECONDS = 0.1


def wait_until(check: Callable[[], Any], *, timeout: float, what: str,
               interval: float = POLL_SECONDS) -> Any:
    """Call ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


async def wait_for(check: Callable[[], Any], *, timeout: float, what: str,
                   interval: float = POLL_SECONDS) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def stopped(stop: asyncio.Event, within: float) -> bool:
    """Wait up to ``within`` seconds for ``stop``; whether it was set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=within)
    except TimeoutError:
        return False
    return True

"""Which replica is active under kopf peering, from the peering object's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane.controller.peering import is_active

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 5, lifetime: int = 60) -> dict[str, Any]:
    seen = (NOW - timedelta(seconds=seen_ago)).isoformat().replace("+00:00", "Z")
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


@pytest.mark.parametrize(
    ("status", "mine", "active"),
    [
        ({"me": peer(10)}, 10, True),
        ({"me": peer(10), "other": peer(5)}, 10, True),
        ({"me": peer(5), "other": peer(10)}, 5, False),
        ({"me": peer(5), "other": peer(10, seen_ago=120)}, 5, True),
        ({"me": peer(7), "twin": peer(7)}, 7, False),
        ({}, 7, False),
        (None, 7, False),
        ({"other": peer(3)}, 7, False),
        ({"me": peer(7), "junk": "not a mapping"}, 7, True),
    ],
    ids=["alone", "highest", "outranked", "outranked-by-dead", "same-priority-conflict",
         "not-announced", "no-status", "only-others", "garbage-entry"],
)
def test_is_active(status: dict[str, Any] | None, mine: int, active: bool) -> None:
    assert is_active(status, mine, NOW) is active

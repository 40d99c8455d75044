"""The canary split, per request (pure): exact weights whatever the replica counts.

While a rollout runs, ``status.canary.weight`` says what percent of requests the canary takes.
Each request is assigned to a group, canary or stable, then to an endpoint of that group:

1. Weight 0 → stable, always (a canary at weight 0 is reached only by its evaluation); weight
   100 → canary.
2. A request with a session key (the session header or the body's ``user``) → a point in [0, 1)
   hashed from the key and the canary's revision: canary when the point is below weight/100. The
   same session stays on the same side while the weight holds, and stays on the canary as the
   weight grows; a new rollout reshuffles who goes first.
3. Any other request → stochastic rounding of the running share: ``deficit`` carries how many
   canary requests are owed (expected minus sent, between -1 and 1); the request goes to the
   canary with probability ``deficit + weight/100`` clipped to [0, 1]. Each pick is random (no
   pattern for a periodic client to align with) and after N requests the canary has had
   ``N × weight/100`` of them within one request, in each gateway process.
4. A group with no ready endpoint falls back to the other (a canary not yet up, or the stable
   replicas all busy starting) — except that weight 0 never falls back to the canary. A fallback
   does not move the deficit, so the share stays exact over the requests that had the choice.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from modelplane.gateway.table import Backend, Endpoint


class Group(StrEnum):
    STABLE = "stable"
    CANARY = "canary"


def session_point(session: str, salt: str) -> float:
    """A uniform point in [0, 1) for a session key, fixed for a given salt."""
    digest = hashlib.blake2b(f"{salt}\x1f{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose_group(weight: int, *, deficit: float, u: float,
                 session_u: float | None = None) -> tuple[Group, float]:
    """(group, the deficit after this request) — rules 1-3 of the module docstring.

    ``u`` is a uniform draw in [0, 1); ``session_u`` the request's ``session_point``, or None.
    """
    if weight <= 0:
        return Group.STABLE, 0.0
    if weight >= 100:
        return Group.CANARY, 0.0
    if session_u is not None:
        return (Group.CANARY if session_u < weight / 100 else Group.STABLE), deficit
    owed = deficit + weight / 100
    if u < owed:
        return Group.CANARY, owed - 1.0
    return Group.STABLE, owed


def group_endpoints(backend: Backend, group: Group) -> tuple[tuple[Endpoint, ...], Group]:
    """The endpoints of ``group`` — or of the other group when it has none (rule 4) — and which.

    Without a canary split every endpoint is stable. An endpoint whose revision is unknown (its pod
    not yet seen) is stable.
    """
    split = backend.split
    if split is None:
        return backend.endpoints, Group.STABLE
    canary = tuple(e for e in backend.endpoints if e.revision == split.revision)
    stable = tuple(e for e in backend.endpoints if e.revision != split.revision)
    if split.weight <= 0:
        return stable, Group.STABLE
    if group is Group.CANARY:
        return (canary, Group.CANARY) if canary else (stable, Group.STABLE)
    return (stable, Group.STABLE) if stable else (canary, Group.CANARY)

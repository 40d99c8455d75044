"""Which operator replica is active in a highly available install (kopf peering). Pure.

With several replicas (the chart's ``ha.enabled``), each one runs kopf with its own random
priority and a shared peering object; kopf pauses its watchers in every replica but the one with
the highest priority. Our controller's resync loop runs outside kopf's watchers, so it asks the
same question of the same peering object before it writes anything: a replica reconciles only
while no live peer has a higher priority and none shares its own (kopf pauses everyone then).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from modelplane.controller import kube

CLUSTER_PEERINGS = kube.Resource("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering",
                                 namespaced=False)
PEERINGS = kube.Resource("kopf.dev", "v1", "kopfpeerings", "KopfPeering")


def _seen(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_active(status: Mapping[str, Any] | None, priority: int, now: datetime) -> bool:
    """True when this replica (known by its ``priority``) is the one kopf lets run."""
    same = 0
    for info in (status or {}).values():
        if not isinstance(info, Mapping):
            continue
        seen = _seen(info.get("lastseen"))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        if seen is None or seen + lifetime < now:
            continue  # a dead peer: kopf ignores it (and cleans it up)
        peer_priority = int(info.get("priority", 0))
        if peer_priority > priority:
            return False
        if peer_priority == priority:
            same += 1
    # Exactly one live entry with our priority: our own keepalive. None yet: kopf has not
    # announced us, so it has not resumed either. More: a conflict, and kopf pauses everyone.
    return same == 1

"""Endpoint picking (pure): the least outstanding requests, as this gateway process sees them.

Among the candidate endpoints (one group of the canary split), the one with the fewest requests
this process has sent and not yet seen finish; a tie is broken by a uniform draw, so that idle
replicas share the load instead of the first one taking it all. Endpoints to ``avoid`` (one that
just failed) are passed over unless nothing else is left.

Outstanding requests are a good proxy of a vLLM replica's load (its running plus waiting
requests) when this gateway sends it most of its traffic; the replicas' own queue and KV-cache
figures and prefix affinity are later refinements (docs/gateway.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from modelplane.gateway.table import Endpoint


def pick_endpoint(candidates: Sequence[Endpoint], outstanding: Mapping[str, int], *, u: float,
                  avoid: Collection[str] = ()) -> Endpoint | None:
    """The least loaded of ``candidates`` (None when there are none); ``u`` in [0, 1) breaks ties."""
    pool = [e for e in candidates if e.address not in avoid] or list(candidates)
    if not pool:
        return None
    least = min(outstanding.get(e.address, 0) for e in pool)
    tied = [e for e in pool if outstanding.get(e.address, 0) == least]
    return tied[min(len(tied) - 1, int(u * len(tied)))]

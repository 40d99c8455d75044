"""Endpoint picking (pure): least outstanding requests, or prefix affinity with bounded load.

**Least outstanding** (the default): among the candidate endpoints (one group of the canary
split), the one with the fewest requests this process has sent and not yet seen finish; a tie is
broken by a uniform draw, so that idle replicas share the load instead of the first one taking
it all. Outstanding requests are a good proxy of a vLLM replica's load (its running plus waiting
requests) when this gateway sends it most of its traffic.

**Prefix affinity** (a request with a prompt prefix, ``--prefix-chars``): consistent hashing with
bounded load, in its rendezvous form. The endpoints are ranked by a hash of (prefix, address) —
a prefix's ranking changes only where endpoints come or go — and the request goes to the first
one whose outstanding requests are below ``ceil(load_factor × (total + 1) / n)``: requests that
share a prefix (a system prompt, a conversation's history) meet on the replica that has it in its
prefix cache, until it holds ``load_factor`` times its share, then spill to the next in their
ranking. Some endpoint is always under the bound, so no request waits for one.

Either way, endpoints to ``avoid`` (one that just failed) are passed over unless nothing else is
left.
"""

from __future__ import annotations

import hashlib
import math
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


def affinity_score(prefix_digest: bytes, address: str) -> int:
    """The rendezvous weight of an endpoint for a prefix (higher: preferred)."""
    return int.from_bytes(hashlib.blake2b(prefix_digest + address.encode(), digest_size=8).digest(), "big")


def prefix_digest(prefix: str) -> bytes:
    return hashlib.blake2b(prefix.encode(), digest_size=16).digest()


def pick_by_prefix(candidates: Sequence[Endpoint], outstanding: Mapping[str, int], *, prefix: str,
                   load_factor: float, avoid: Collection[str] = ()) -> Endpoint | None:
    """The endpoint ``prefix`` hashes to, unless it is over the load bound; then the next in rank."""
    if load_factor < 1:
        raise ValueError(f"load_factor must be >= 1, got {load_factor}")
    pool = [e for e in candidates if e.address not in avoid] or list(candidates)
    if not pool:
        return None
    total = sum(outstanding.get(e.address, 0) for e in pool)
    bound = math.ceil(load_factor * (total + 1) / len(pool))
    digest = prefix_digest(prefix)
    ranked = sorted(pool, key=lambda e: affinity_score(digest, e.address), reverse=True)
    for endpoint in ranked:
        if outstanding.get(endpoint.address, 0) < bound:
            return endpoint
    return ranked[0]  # not reached: the least loaded is below the mean, so below the bound

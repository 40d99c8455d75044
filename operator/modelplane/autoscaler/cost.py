"""What a fleet costs: $/hour from the GPU catalog and $ per million generated tokens from counters.

Prices come from ``modelplane.gpus`` and can be overridden per provider (the operator's
configuration passes its price table). Token throughput is measured from two samples of each pod's
``vllm:generation_tokens_total`` counter, the way Prometheus' ``increase()`` does: a counter that
went down restarted from zero, so its new value is the increase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from modelplane import gpus


def replica_hourly_usd(gpu_type: str, gpus_per_replica: int, *,
                       prices: Mapping[str, float] | None = None) -> float:
    """$/hour of one replica: GPUs per replica × the $/GPU-hour of its type (catalog or override)."""
    if gpus_per_replica < 0:
        raise ValueError(f"gpus_per_replica must be >= 0, got {gpus_per_replica}")
    catalog = gpus.with_prices(prices or {})
    if gpu_type not in catalog:
        raise ValueError(f"unknown GPU type {gpu_type!r}; known: {', '.join(gpus.GPU_TYPE_NAMES)}")
    return gpus_per_replica * catalog[gpu_type].usd_per_hour


def fleet_hourly_usd(replicas: int, gpu_type: str, gpus_per_replica: int, *,
                     prices: Mapping[str, float] | None = None) -> float:
    """$/hour of ``replicas`` replicas (starting replicas cost as much as ready ones)."""
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    return replicas * replica_hourly_usd(gpu_type, gpus_per_replica, prices=prices)


@dataclass(frozen=True)
class TokenSample:
    """The generation-token counter of each pod at one instant (seconds on any monotonic clock)."""

    at: float
    counters: tuple[tuple[str, float], ...]  #: (pod name, counter value), one entry per pod

    @classmethod
    def of(cls, at: float, counters: Mapping[str, float]) -> TokenSample:
        return cls(at=at, counters=tuple(sorted(counters.items())))


def tokens_between(previous: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Tokens generated between two samples of per-pod counters.

    A counter lower than before restarted (the pod's engine restarted), so its whole value is new.
    A pod absent from ``previous`` became ready after it, so its counter, which started at zero,
    is all new as well. A pod absent from ``current`` left; what it made since ``previous`` is lost,
    which under-counts rather than inventing tokens.
    """
    total = 0.0
    for pod, value in current.items():
        before = previous.get(pod)
        if before is None or value < before:
            total += value
        else:
            total += value - before
    return total


def usd_per_million_tokens(*, hourly_usd: float, tokens: float, seconds: float) -> float | None:
    """$ per million generated tokens over an interval; None when nothing was generated (idle)."""
    if seconds <= 0 or tokens <= 0 or not math.isfinite(tokens):
        return None
    tokens_per_hour = tokens * 3600.0 / seconds
    return hourly_usd / tokens_per_hour * 1e6


def usd_per_million_tokens_between(previous: TokenSample, current: TokenSample, *,
                                   hourly_usd: float) -> float | None:
    """$ per million generated tokens between two counter samples, at a fleet cost of ``hourly_usd``."""
    tokens = tokens_between(dict(previous.counters), dict(current.counters))
    return usd_per_million_tokens(hourly_usd=hourly_usd, tokens=tokens, seconds=current.at - previous.at)


def tokens_per_second_between(previous: TokenSample, current: TokenSample) -> float | None:
    """Generation throughput between two samples; None when they are not in time order."""
    seconds = current.at - previous.at
    if seconds <= 0:
        return None
    return tokens_between(dict(previous.counters), dict(current.counters)) / seconds

"""What a fleet costs: $/hour from the GPU catalog and $ per million generated tokens from counters.

The one implementation of the cost arithmetic: the autoscaler uses it, and ``modelplane.planner.cost``
(status and ``modelplane plan``) re-exports it, with two call forms where their callers differ
(``fleet_hourly_usd`` by GPU type or by price; ``usd_per_million_tokens`` from a rate or from
tokens over seconds).

Prices come from ``modelplane.gpus`` and can be overridden per provider (the operator's
configuration passes its price table). Token throughput is measured from two samples of each pod's
``vllm:generation_tokens_total`` counter, the way Prometheus' ``increase()`` does: a counter that
went down restarted from zero, so its new value is the increase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def fleet_hourly_usd(replicas: int, gpu_type: str | None = None, gpus_per_replica: int = 1, *,
                     prices: Mapping[str, float] | None = None,
                     usd_per_gpu_hour: float | None = None) -> float:
    """$/hour of ``replicas`` replicas (starting replicas cost as much as ready ones).

    Priced by ``gpu_type`` from the catalog (with ``prices`` overriding it), or directly at
    ``usd_per_gpu_hour`` (the planner's form: ``fleet_hourly_usd(replicas=, gpus_per_replica=,
    usd_per_gpu_hour=)``).
    """
    if replicas < 0 or gpus_per_replica < 0:
        raise ValueError(f"replicas and GPUs per replica must be >= 0, got {replicas}, {gpus_per_replica}")
    if usd_per_gpu_hour is not None:
        if gpu_type is not None:
            raise ValueError("give either gpu_type or usd_per_gpu_hour, not both")
        if usd_per_gpu_hour < 0:
            raise ValueError(f"usd_per_gpu_hour must be >= 0, got {usd_per_gpu_hour}")
        return replicas * gpus_per_replica * usd_per_gpu_hour
    if gpu_type is None:
        raise ValueError("need gpu_type or usd_per_gpu_hour")
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
    return sum(counter_increase(previous.get(pod), value) for pod, value in current.items())


def counter_increase(before: float | None, after: float) -> float:
    """A counter's increase between two readings; one that went down restarted from zero."""
    if before is None or after < before:
        return after
    return after - before


@dataclass(frozen=True)
class CounterSample:
    """One reading of a monotonic counter (e.g. ``vllm:generation_tokens_total``)."""

    at_seconds: float  #: when it was read (any clock, as long as both samples use the same one)
    value: float


def token_rate(earlier: CounterSample, later: CounterSample) -> float | None:
    """Tokens per second between two samples of a token counter (a reset counts from zero).

    None when no time passed, the clock went backwards, or a value is not finite.
    """
    elapsed = later.at_seconds - earlier.at_seconds
    if not (math.isfinite(elapsed) and math.isfinite(earlier.value) and math.isfinite(later.value)):
        return None
    if elapsed <= 0:
        return None
    return max(0.0, counter_increase(earlier.value, later.value)) / elapsed


def usd_per_million_tokens(hourly_usd: float, tokens_per_second: float | None = None, *,
                           tokens: float | None = None, seconds: float | None = None) -> float | None:
    """$ per million generated tokens at ``hourly_usd``, from a rate or from ``tokens`` over ``seconds``.

    None when idle (no tokens, or no rate measured) or the inputs are not usable: the price of a
    token nobody generates is undefined, not infinite, and never a division by zero.
    """
    if tokens is not None or seconds is not None:
        if tokens_per_second is not None:
            raise ValueError("give either tokens_per_second or tokens and seconds, not both")
        if tokens is None or seconds is None or seconds <= 0:
            return None
        tokens_per_second = tokens / seconds
    if tokens_per_second is None or not math.isfinite(tokens_per_second) or tokens_per_second <= 0:
        return None
    if not math.isfinite(hourly_usd) or hourly_usd < 0:
        return None
    return hourly_usd / (tokens_per_second * 3600.0) * 1e6


def cost_status(*, hourly_usd: float, tokens_per_second: float | None) -> dict[str, Any]:
    """``status.cost``: ``hourlyUSD`` always, ``usdPerMillionTokens`` only while tokens flow."""
    status: dict[str, Any] = {"hourlyUSD": round(hourly_usd, 4)}
    per_million = usd_per_million_tokens(hourly_usd, tokens_per_second)
    if per_million is not None:
        status["usdPerMillionTokens"] = round(per_million, 4)
    return status


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

"""Cost arithmetic for status and the ``plan`` command: fleet $/hour and measured $/million tokens.

Pure functions over numbers. The handler samples ``vllm:generation_tokens_total`` from each ready
pod (summed over pods), keeps the previous sample, and calls ``token_rate`` and
``usd_per_million_tokens``; ``cost_status`` shapes the result for ``status.cost``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def fleet_hourly_usd(*, replicas: int, gpus_per_replica: int, usd_per_gpu_hour: float) -> float:
    """What the fleet costs per hour: replicas x GPUs per replica x price of one GPU-hour."""
    if replicas < 0 or gpus_per_replica < 0 or usd_per_gpu_hour < 0:
        raise ValueError("replicas, GPUs per replica and price must be >= 0")
    return replicas * gpus_per_replica * usd_per_gpu_hour


@dataclass(frozen=True)
class CounterSample:
    """One reading of a monotonic counter (e.g. ``vllm:generation_tokens_total``)."""

    at_seconds: float  #: when it was read (any clock, as long as both samples use the same one)
    value: float


def token_rate(earlier: CounterSample, later: CounterSample) -> float | None:
    """Tokens per second between two samples of a token counter.

    A counter that went down was reset (the pod restarted): as Prometheus' ``rate`` does, the later
    value is taken as the increase since the reset. None when no time passed or the clock went
    backwards, or a value is not finite: there is no rate to report.
    """
    elapsed = later.at_seconds - earlier.at_seconds
    if not (math.isfinite(elapsed) and math.isfinite(earlier.value) and math.isfinite(later.value)):
        return None
    if elapsed <= 0:
        return None
    increase = later.value - earlier.value if later.value >= earlier.value else later.value
    return max(0.0, increase) / elapsed


def usd_per_million_tokens(hourly_usd: float, tokens_per_second: float | None) -> float | None:
    """$ per million generated tokens at ``hourly_usd`` while producing ``tokens_per_second``.

    None when idle (no tokens, or no rate measured): the price of a token nobody generates is
    undefined, not infinite, and must never be a division by zero.
    """
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

"""What a fleet costs: $/hour from the GPU catalog and $ per million generated tokens from counters.

The one implementation of the cost arithmetic: the autoscaler uses it, and ``modelplane.planner.cost``
(status and ``modelplane plan``) re-exports it, with two call forms where their callers differ
(``fleet_hourly_usd`` by GPU type or by price; ``usd_per_million_tokens`` from a rate or from
tokens over seconds).

Prices come from ``modelplane.gpus`` and can be overridden per provider (the operator's
configuration passes its price table). Token throughput is measured from each ready pod's
``vllm:generation_tokens_total`` counter over a sliding window (``TokenWindow``, the last
``TOKEN_WINDOW_SECONDS``), the way Prometheus' ``sum(rate(...[60s]))`` does: each pod's rate over its
own readings in the window, a counter that went down restarted from zero, summed over the pods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
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


#: Seconds of counter readings the measured throughput (and so ``status.cost.usdPerMillionTokens``
#: and the autoscaler's cost target) looks at.
TOKEN_WINDOW_SECONDS = 60.0

#: A pod's readings are kept at least this share of the window apart (the reconcile runs every few
#: seconds, and more often on events), which bounds the readings per pod to about 30.
_READING_SPACING = 1 / 30


@dataclass(frozen=True)
class TokenWindow:
    """Each ready pod's generation-token counter readings over the last ``seconds``, oldest first.

    Feed it every reading with ``observe``; ``tokens_per_second`` is the fleet's generation rate over
    the window: the sum over the pods of each one's increase over its own readings (a counter that
    went down restarted from zero) divided by the time they span. Readings carry the time the page
    was read (``PodMetrics.scraped_at``), not the time of the decision, so a late scrape or a
    Prometheus sample taken earlier does not stretch or shrink the interval.
    """

    seconds: float = TOKEN_WINDOW_SECONDS
    #: (pod name, its readings within the window, oldest first), by pod name.
    pods: tuple[tuple[str, tuple[CounterSample, ...]], ...] = ()
    #: When the current run of readings began (None: no readings). Until ``seconds`` have passed
    #: since, there is no rate: a fresh window (an operator restart, a fleet back from zero) would
    #: otherwise report the throughput of a few seconds.
    since: float | None = None

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"the token window must be > 0 s, got {self.seconds}")

    def expire(self, now: float) -> TokenWindow:
        """The window without the readings older than ``seconds`` before ``now``."""
        horizon = now - self.seconds
        kept = tuple((pod, fresh) for pod, samples in self.pods
                     if (fresh := tuple(s for s in samples if s.at_seconds >= horizon)))
        return replace(self, pods=kept, since=self.since if kept else None)

    def observe(self, now: float, readings: Mapping[str, CounterSample]) -> TokenWindow:
        """Add one reading of each ready pod's counter, and forget the pods that are not among them.

        A pod that is no longer ready (or was deleted) stops counting at once: its cost has left
        ``hourlyUSD`` too. A reading that is not finite, or not newer than the pod's last one by a
        thirtieth of the window (e.g. a Prometheus sample already seen), adds nothing.
        """
        had = dict(self.pods)
        spacing = self.seconds * _READING_SPACING
        pods: list[tuple[str, tuple[CounterSample, ...]]] = []
        for pod, reading in sorted(readings.items()):
            samples = had.get(pod, ())
            if (math.isfinite(reading.at_seconds) and math.isfinite(reading.value) and reading.value >= 0
                    and (not samples or reading.at_seconds >= samples[-1].at_seconds + spacing)):
                samples = (*samples, reading)
            if samples:
                pods.append((pod, samples))
        since = self.since if self.since is not None and self.pods else now
        return replace(self, pods=tuple(pods), since=since).expire(now)

    def tokens_per_second(self, now: float) -> float | None:
        """The fleet's generation rate over the window; None until the window has been observed for
        ``seconds``, or while no pod has two readings in it."""
        if self.since is None or now - self.since < self.seconds:
            return None
        rates = [rate for _, samples in self.pods if (rate := _pod_rate(samples)) is not None]
        return sum(rates) if rates else None


def _pod_rate(samples: tuple[CounterSample, ...]) -> float | None:
    """Tokens per second over one pod's readings (a reset in between counts from zero)."""
    if len(samples) < 2 or samples[-1].at_seconds <= samples[0].at_seconds:
        return None
    tokens = sum(counter_increase(a.value, b.value) for a, b in zip(samples, samples[1:], strict=False))
    return tokens / (samples[-1].at_seconds - samples[0].at_seconds)

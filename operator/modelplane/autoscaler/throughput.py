"""Throughput sizing: how many replicas the demand needs, from token counters and a learned capacity.

Pure; ``policy.decide`` calls ``estimate`` once per decision with the previous ``ThroughputState``.

Why not in-flight requests: a replica of a large model runs out of compute (prefill above all) long
before it fills its ``maxNumSeqs`` batch slots, so "running / maxNumSeqs" reads a healthy fleet as
too big. What a replica spends is engine time, and the counters every vLLM pod exports say how much:

- **Work** of a pod over an interval, in engine-seconds: ``Δprompt_tokens / prefill_rate +
  Δgeneration_tokens / decode_rate``. The two rates are a prior from the engine profile (the
  planner's or the simulator's figures for this GPU and model); a replica is saturated when it does
  about one engine-second of work per second.
- **Capacity** (engine-seconds per second one replica can do) is learned: whenever a pod had a
  queue (``waiting ≥ saturation_waiting``) at both ends of an interval, it ran flat out, and the work
  it did per second is a sample of its capacity. The estimate starts at 1.0 (the prior is right) and
  moves towards the samples, so a profile that is off by 2× corrects itself at the first saturation.
- **Demand** (engine-seconds per second the traffic brings) is the work served plus the growth of
  the queue (waiting + held by the activator) times the work of one request (work served / requests
  started, from the TTFT histogram's count). It is smoothed, fast up and slow down.
- **Backlog**: the queue's work, to be cleared within ``backlog_horizon`` seconds.

Replicas needed = ``(demand + backlog / horizon) / (capacity × target_utilization)``; the target
utilization leaves the headroom that keeps queues, hence time to first token, short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelplane.autoscaler.cost import counter_increase

_EPS = 1e-9


@dataclass(frozen=True)
class ThroughputSpec:
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    target_utilization: float = 0.85
    saturation_waiting: float = 8.0
    backlog_horizon: float = 60.0
    demand_up_seconds: float = 10.0  #: smoothing time constant while demand rises
    demand_down_seconds: float = 60.0  #: ... and while it falls
    capacity_seconds: float = 60.0  #: how fast the learned capacity follows its samples
    #: Seconds ahead the fleet is sized for while demand rises (about a cold start): a replica asked
    #: for now serves only that much later.
    lead_seconds: float = 90.0
    trend_fast_seconds: float = 10.0
    trend_slow_seconds: float = 60.0
    trend_noise: float = 0.1
    #: While replicas start, the queue's backlog is left to them (not sized for again).
    starting_clears_backlog: bool = True
    #: The latency objective's correction of the capacity a replica is sized for (``objective``).
    capacity_factor: float = 1.0


@dataclass(frozen=True)
class PodCounters:
    name: str
    generation_tokens: float
    prompt_tokens: float
    requests_started: float
    waiting: float


@dataclass(frozen=True)
class ThroughputState:
    at: float | None = None
    pods: tuple[PodCounters, ...] = ()
    queue: float = 0.0  #: waiting + held at ``at``
    demand: float | None = None  #: smoothed engine-seconds per second
    work_per_request: float | None = None  #: engine-seconds per request
    capacity: float = 1.0  #: engine-seconds per second one saturated replica does
    capacity_samples: int = 0
    fast: float | None = None  #: demand smoothed over ``trend_fast_seconds``
    slow: float | None = None  #: ... and over ``trend_slow_seconds``; their gap gives the trend


@dataclass(frozen=True)
class Estimate:
    replicas: int | None  #: None until two samples exist
    demand: float | None
    backlog: float
    capacity: float
    utilization: float | None  #: work served per ready replica over capacity, last interval
    state: ThroughputState
    #: The fractional fleet behind ``replicas`` (before rounding up); None until two samples exist.
    needed: float | None = None
    #: The rising trend extrapolated over the lead, engine-seconds per second per second (0: none).
    slope: float = 0.0
    #: The fleet for the demand of the last ``trend_fast_seconds`` (no trend, no slow fall): what
    #: the traffic asks right now, used to release a burst's fleet at once between bursts.
    needed_now: float | None = None
    #: The fleet for the smoothed demand alone (no trend, no backlog): what the traffic needs once
    #: the fleet has caught up with it.
    replicas_sustained: int | None = None


def _ewma(old: float | None, sample: float, dt: float, tau: float) -> float:
    if old is None:
        return sample
    alpha = dt / (dt + tau) if tau > 0 else 1.0
    return old + alpha * (sample - old)


def estimate(spec: ThroughputSpec, state: ThroughputState, *, now: float, pods: Sequence[PodCounters],
             held: float, starting: int = 0) -> Estimate:
    """Update the estimates with the pods' counters at ``now`` and size the fleet."""
    queue = sum(p.waiting for p in pods) + held
    sample_state = ThroughputState(at=now, pods=tuple(pods), queue=queue, demand=state.demand,
                                   work_per_request=state.work_per_request, capacity=state.capacity,
                                   capacity_samples=state.capacity_samples, fast=state.fast,
                                   slow=state.slow)
    if state.at is None or now - state.at <= _EPS:
        return Estimate(None, state.demand, 0.0, state.capacity, None,
                        sample_state if state.at is None else state)
    dt = now - state.at
    before = {p.name: p for p in state.pods}
    served = 0.0
    started = 0.0
    capacity = state.capacity
    samples = state.capacity_samples
    for pod in pods:
        old = before.get(pod.name)
        work = (counter_increase(old.prompt_tokens if old else None, pod.prompt_tokens)
                / spec.prefill_tokens_per_second
                + counter_increase(old.generation_tokens if old else None, pod.generation_tokens)
                / spec.decode_tokens_per_second)
        served += work
        started += counter_increase(old.requests_started if old else None, pod.requests_started)
        if (old is not None and old.waiting >= spec.saturation_waiting
                and pod.waiting >= spec.saturation_waiting):
            # Flat out for the whole interval: what it did is what a replica can do.
            sample = min(10.0, max(0.1, work / dt))
            capacity = _ewma(capacity, sample, dt, spec.capacity_seconds)
            samples += 1
    served_rate = served / dt
    wpr = state.work_per_request
    if started > 0 and served > 0:
        wpr = _ewma(wpr, served / started, dt, spec.capacity_seconds)
    growth = (queue - state.queue) / dt
    arriving = max(0.0, served_rate + growth * (wpr or 0.0))
    rising = state.demand is None or arriving > state.demand
    tau = spec.demand_up_seconds if rising else spec.demand_down_seconds
    demand = _ewma(state.demand, arriving, dt, tau)
    # The trend: two EWMAs of a ramp of slope s lag it by s × their time constants, so their gap over
    # the constants' difference is s. Only a rise is extrapolated; a fall waits for the window.
    fast = _ewma(state.fast, arriving, dt, spec.trend_fast_seconds)
    slow = _ewma(state.slow, arriving, dt, spec.trend_slow_seconds)
    # A gap within ``trend_noise`` of the slow average is Poisson noise, not a ramp.
    gap = fast - slow - spec.trend_noise * slow
    slope = max(0.0, gap / (spec.trend_slow_seconds - spec.trend_fast_seconds))
    # While replicas start, the backlog is theirs to clear: asking for more would buy replicas that
    # arrive after it is gone.
    backlog = queue * (wpr or 0.0) if not (starting and spec.starting_clears_backlog) else 0.0
    ahead = demand + slope * spec.lead_seconds
    per_replica = capacity * spec.target_utilization * spec.capacity_factor
    needed = (ahead + backlog / spec.backlog_horizon) / per_replica
    replicas = max(0, math.ceil(needed - 1e-6))
    now_needed = (fast + backlog / spec.backlog_horizon) / per_replica
    utilization = served_rate / (len(pods) * capacity) if pods else None
    new_state = ThroughputState(at=now, pods=tuple(pods), queue=queue, demand=demand, work_per_request=wpr,
                                capacity=capacity, capacity_samples=samples, fast=fast, slow=slow)
    return Estimate(replicas, demand, backlog, capacity, utilization, new_state, needed, slope,
                    max(0.0, now_needed),
                    max(0, math.ceil(demand / per_replica - 1e-6)))

"""The virtual-time cluster the policies scale: replicas on the engine model, cold starts, a gateway.

Every policy runs against the same world: requests of the trace arrive at a gateway that sends each
to the ready replica with the fewest outstanding requests (what KubeAI's proxy and the inference
gateway do) or holds it while no replica is ready (the activator). A replica is
``modelplane_dev.sim.engine.EngineModel`` (continuous batching, KV cache, preemption), Ready
``cold_start`` seconds after the policy asked for it (or after a cold start drawn, seeded, from
``ColdStarts``: pods of one model start in 40 s to minutes depending on the node's caches). A
removed replica stops taking requests and drains what it runs (at most ``drain_timeout``,
Kubernetes' grace period; what is left is lost).

The clock ticks every ``tick`` seconds: pods that finished starting become Ready, the tick's
arrivals are routed, every engine advances to the end of the tick, and policies whose interval has
come see the cluster and answer a replica count. GPU-hours are the integral of every pod that
exists (starting, ready or draining) over the trace's duration, times GPUs per replica.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bench.autoscale.traces import Request, Trace
from modelplane.gateway.metrics import TTFT_BUCKETS
from modelplane_dev.sim.engine import EngineModel, EventKind, Histogram


@dataclass(frozen=True)
class PodView:
    name: str
    waiting: int
    running: int
    kv_cache_usage: float
    generation_tokens: int
    outstanding: int  #: what the gateway counts as in flight on this pod
    prompt_tokens: int = 0  #: vllm:prompt_tokens_total
    requests_started: int = 0  #: vllm:time_to_first_token_seconds_count
    ready_after: float | None = None  #: seconds from its creation to Ready (its cold start)
    #: vllm:time_to_first_token_seconds_bucket (cumulative; from the pod's arrival, no gateway hold)
    ttft_buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class ClusterView:
    """What a policy sees at ``now``: the freshest truth; policies model their own metric lag."""

    now: float
    current: int  #: replicas asked for (starting + ready)
    ready: tuple[PodView, ...]
    starting_ages: tuple[float, ...]
    held: int  #: requests the gateway holds because no replica is ready
    starting_names: tuple[str, ...]  #: the starting pods' names, in ``starting_ages``' order
    #: The gateway's TTFT histogram (cumulative, ``gateway.metrics.TTFT_BUCKETS``): from each
    #: request's arrival, holding included, as clients see it.
    gateway_ttft: tuple[tuple[float, float], ...] = ()


class Autoscaler(Protocol):
    name: str
    interval: float  #: seconds between decisions

    def observe(self, view: ClusterView) -> None:
        """Called every tick (metrics pipelines with their own sampling keep what they would see)."""

    def decide(self, view: ClusterView) -> int:
        """Desired replicas at ``view.now``; called every ``interval``."""


@dataclass
class _Pod:
    name: str
    created: float
    ready_at: float
    engine: EngineModel | None = None
    outstanding: int = 0
    draining_until: float | None = None


@dataclass(frozen=True)
class ColdStarts:
    """Cold starts drawn from a distribution (FACTS.md: 40 s for a 7B model to 17 minutes for a
    72B one from GPU allocation; a persisted compile cache and weights in the page cache cut a
    70B FP8 start to about 90 s, an uncached one takes 3.5 minutes).

    A mixture: with probability ``cached_share`` the node has the caches (log-normal around
    ``cached_median``), else not (log-normal around ``uncached_median``), both with log-spread
    ``sigma``, clipped to [``low``, ``high``]. Seeded: pod *n* of every run gets the same cold start,
    so every policy pays the same sequence.
    """

    cached_median: float = 90.0
    uncached_median: float = 210.0
    cached_share: float = 0.7
    sigma: float = 0.3
    low: float = 40.0
    high: float = 1020.0
    seed: int = 17

    def __post_init__(self) -> None:
        medians = (self.cached_median, self.uncached_median)
        if not (0 < self.low <= min(medians) and max(medians) <= self.high):
            raise ValueError("need 0 < low <= the medians <= high")
        if not 0 <= self.cached_share <= 1 or self.sigma < 0:
            raise ValueError("cached_share must be in [0, 1] and sigma >= 0")

    def sampler(self) -> Callable[[], float]:
        rng = random.Random(self.seed)

        def draw() -> float:
            cached = rng.random() < self.cached_share
            median = self.cached_median if cached else self.uncached_median
            return min(self.high, max(self.low, rng.lognormvariate(math.log(median), self.sigma)))
        return draw

    def quantile(self, q: float, samples: int = 4000) -> float:
        """The ``q`` quantile of the distribution (by sampling it, with its own seed)."""
        draw = self.sampler()
        values = sorted(draw() for _ in range(samples))
        return values[min(samples - 1, int(q * samples))]


@dataclass
class SimConfig:
    engine_factory: Callable[[float], EngineModel]
    cold_start: float = 90.0
    #: When set, every new pod's cold start is drawn from it instead of ``cold_start``.
    cold_starts: ColdStarts | None = None
    gpus_per_replica: int = 2
    usd_per_gpu_hour: float = 2.69
    max_model_len: int = 8192
    slo_ttft: float = 2.0
    tick: float = 1.0
    drain_timeout: float = 130.0
    #: After the trace ends, keep running (without counting GPU time) so requests can finish.
    tail: float = 600.0
    sample_every: float = 10.0


@dataclass
class RunResult:
    policy: str
    trace: str
    requests: int
    completed: int
    lost: int
    within_slo: int
    gpu_hours: float
    cost_usd: float
    direction_changes: int
    max_replicas: int
    ttft_p50: float
    ttft_p95: float
    #: A sweep point's setting (a target factor, a static fleet, or the oracle's utilization and
    #: look-ahead window); None in the main table.
    setting: float | tuple[float, float] | None = None
    times: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)
    #: With ``overflow``: the trace indexes of the requests sent to the external backend instead.
    external: list[int] = field(default_factory=list)

    @property
    def slo_attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


#: The model mesh's choice at a request's arrival (bench/mesh): given the ready replicas' waiting
#: requests, True sends it to the external backend (not served here, counted in ``external``).
Overflow = Callable[[list[int]], bool]


def run(trace: Trace, policy: Autoscaler, config: SimConfig, *, initial_replicas: int,
        overflow: Overflow | None = None) -> RunResult:
    """Play ``trace`` against ``policy``; see the module docstring for the world it runs in."""
    requests = [Request(r.at, min(r.prompt_tokens, config.max_model_len - 1),
                        max(1, min(r.output_tokens, config.max_model_len - min(r.prompt_tokens,
                                                                               config.max_model_len - 1))))
                for r in trace.requests]
    arrival = [r.at for r in requests]
    first_token: list[float | None] = [None] * len(requests)
    finished = [False] * len(requests)
    pods: list[_Pod] = []
    serial = 0
    cold_start = config.cold_starts.sampler() if config.cold_starts is not None else lambda: config.cold_start

    def new_pod(now: float, ready_at: float) -> _Pod:
        nonlocal serial
        serial += 1
        return _Pod(name=f"pod-{serial}", created=now, ready_at=ready_at)

    for _ in range(max(0, initial_replicas)):
        pod = new_pod(0.0, 0.0)
        pod.engine = config.engine_factory(0.0)
        pods.append(pod)

    held: deque[int] = deque()
    gateway_ttft = Histogram(TTFT_BUCKETS)
    latency = getattr(policy, "reads_latency", False)  # histograms in the view only for who reads them
    owner: dict[str, _Pod] = {}
    lost = 0
    gpu_seconds = 0.0
    last_desired = len(pods)
    last_direction = 0
    direction_changes = 0
    max_replicas = len(pods)
    next_decision = 0.0
    next_sample = 0.0
    out = RunResult(policy.name, trace.name, len(requests), 0, 0, 0, 0.0, 0.0, 0, 0, math.nan, math.nan)
    i = 0
    now = 0.0
    end = trace.duration + config.tail
    while now < end:
        tick_end = now + config.tick
        serving = [p for p in pods if p.draining_until is None]
        # Pods whose cold start is over become Ready and take what the gateway held.
        for pod in serving:
            if pod.engine is None and pod.ready_at <= now + 1e-9:
                pod.engine = config.engine_factory(now)
        ready = [p for p in serving if p.engine is not None]
        while held and ready:
            idx = held.popleft()
            _send(min(ready, key=lambda p: p.outstanding), idx, requests[idx], now, owner)
        # This tick's arrivals.
        while i < len(requests) and requests[i].at < tick_end:
            waiting = [p.engine.num_waiting for p in ready if p.engine is not None]
            if overflow is not None and overflow(waiting):
                out.external.append(i)
            elif ready:
                _send(min(ready, key=lambda p: p.outstanding), i, requests[i], requests[i].at, owner)
            else:
                held.append(i)
            i += 1
        # Engines run to the end of the tick.
        for pod in pods:
            if pod.engine is None:
                continue
            for event in pod.engine.advance(tick_end):
                idx = int(event.request_id)
                if event.kind is EventKind.FIRST_TOKEN:
                    first_token[idx] = event.time
                    gateway_ttft.observe(event.time - arrival[idx])
                else:
                    finished[idx] = True
                    pod.outstanding -= 1
                    owner.pop(event.request_id, None)
        # Draining pods leave when empty, or when the grace period ends (their requests are lost).
        keep = []
        for pod in pods:
            if pod.draining_until is not None and (pod.outstanding == 0 or tick_end >= pod.draining_until):
                lost += pod.outstanding
                continue
            keep.append(pod)
        pods = keep
        if tick_end <= trace.duration:
            gpu_seconds += len(pods) * config.gpus_per_replica * config.tick
        now = tick_end

        serving = [p for p in pods if p.draining_until is None]
        view = _view(now, serving, len(held), gateway_ttft if latency else None)
        policy.observe(view)
        if now >= next_decision - 1e-9:
            next_decision = now + policy.interval
            desired = max(0, policy.decide(view))
            if desired != len(serving):
                direction = 1 if desired > len(serving) else -1
                if last_direction and direction != last_direction:
                    direction_changes += 1
                last_direction = direction
            if desired > len(serving):
                for _ in range(desired - len(serving)):
                    pods.append(new_pod(now, now + cold_start()))
            elif desired < len(serving):
                _remove(serving, len(serving) - desired, now, config.drain_timeout, pods)
            last_desired = desired
            max_replicas = max(max_replicas, desired)
        if now >= next_sample - 1e-9 and now <= trace.duration:
            next_sample = now + config.sample_every
            serving = [p for p in pods if p.draining_until is None]
            out.times.append(now)
            out.replicas.append(len(serving))
            out.ready.append(sum(1 for p in serving if p.engine is not None))
            out.queue.append(len(held) + sum(p.engine.num_waiting for p in serving if p.engine is not None))
        drained = i >= len(requests) and not held and all(p.outstanding == 0 for p in pods)
        if drained and now >= trace.duration:
            break
    del last_desired
    ttfts = [ft - arrival[k] for k, ft in enumerate(first_token) if ft is not None]
    out.completed = sum(finished)
    out.lost = lost
    out.within_slo = sum(1 for t in ttfts if t <= config.slo_ttft)
    out.gpu_hours = gpu_seconds / 3600.0
    out.cost_usd = out.gpu_hours * config.usd_per_gpu_hour
    out.direction_changes = direction_changes
    out.max_replicas = max_replicas
    out.ttft_p50 = _percentile(ttfts, 0.5)
    out.ttft_p95 = _percentile(ttfts + [math.inf] * (len(requests) - len(ttfts)), 0.95)
    return out


def _send(pod: _Pod, idx: int, req: Request, at: float, owner: dict[str, _Pod]) -> None:
    assert pod.engine is not None
    rid = str(idx)
    pod.engine.submit(rid, req.prompt_tokens, req.output_tokens, at, output_tokens=req.output_tokens)
    pod.outstanding += 1
    owner[rid] = pod


def _buckets(histogram: Histogram | None) -> tuple[tuple[float, float], ...]:
    return () if histogram is None else tuple((le, float(n)) for le, n in histogram.cumulative())


def _view(now: float, serving: list[_Pod], held: int, gateway_ttft: Histogram | None) -> ClusterView:
    """The view at ``now``; the latency histograms only with ``gateway_ttft`` (else left empty)."""
    ready = tuple(
        PodView(p.name, p.engine.num_waiting, p.engine.num_running, p.engine.kv_cache_usage,
                p.engine.stats.generation_tokens, p.outstanding, p.engine.stats.prompt_tokens,
                p.engine.stats.ttft.count, p.ready_at - p.created,
                _buckets(p.engine.stats.ttft if gateway_ttft is not None else None))
        for p in serving if p.engine is not None)
    starting = [p for p in serving if p.engine is None]
    return ClusterView(now=now, current=len(serving), ready=ready,
                       starting_ages=tuple(now - p.created for p in starting), held=held,
                       starting_names=tuple(p.name for p in starting),
                       gateway_ttft=_buckets(gateway_ttft))


def _remove(serving: list[_Pod], count: int, now: float, drain_timeout: float, pods: list[_Pod]) -> None:
    """Kubernetes' order: pods not Ready first (newest first), then the least busy Ready ones."""
    starting = sorted((p for p in serving if p.engine is None), key=lambda p: -p.ready_at)
    ready = sorted((p for p in serving if p.engine is not None), key=lambda p: p.outstanding)
    for pod in (starting + ready)[:count]:
        if pod.engine is None:
            pods.remove(pod)
        else:
            pod.draining_until = now + drain_timeout

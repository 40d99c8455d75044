"""The policies the benchmark compares, each as its real counterpart behaves with default settings.

- ``Ours``: ``modelplane.autoscaler.policy.decide``, the operator's code, on pod metrics scraped
  directly every ``interval`` (5 s).
- ``HPAStyle``: the HorizontalPodAutoscaler on a Pods metric, average in-flight requests
  (running + waiting) per pod, read through Prometheus (15 s scrape); 15 s sync, 10% tolerance,
  default behavior (scale up: no window, max(100%, 4 pods) per 15 s; scale down: 300 s window,
  100% per 15 s); pods without metrics count as empty on scale-up and as at target on scale-down,
  as the HPA controller does.
- ``KEDAStyle``: KEDA's Prometheus scaler on the queue, ``sum(vllm:num_requests_waiting)`` with an
  AverageValue threshold per replica; the metric refreshed every 30 s (pollingInterval), then the
  HPA above between 1 and N.
- ``KubeAIStyle``: KubeAI's autoscaler: every 10 s, a moving average over 10 minutes of the
  in-flight requests its proxy counts, ``ceil(average / targetRequests)``; scale up at once, scale
  down after ``scaleDownDelaySeconds`` (30 s) of consecutive lower answers.
- ``Static``: a fixed fleet sized for the trace's peak.
- ``Oracle``: perfect foresight of the trace: the replicas the arrival rate of the next ``window``
  seconds needs at every second (rate / the measured capacity of a saturated replica at a
  ``utilization``), asked for one cold start ahead and released as soon as they are not needed. It
  pays the same cold starts; it is the reference floor, not a proven optimum. Its two settings
  trade GPU-hours for SLO (a short window sees a spike's edge, a long one averages it away), so the
  benchmark runs it with several (``bench.autoscale.run.ORACLE_SWEEP``) and compares ours with the
  cheapest that reaches our SLO.
- ``Oracle.blind_to_timing``: the oracle that knows every burst's size but not when, within the
  trace's allowed quiet, it comes: each burst's fleet is asked for a cold start before the
  earliest it could come (the shortest quiet after the last one ended) and held until it does. The
  floor for a policy that learns a schedule perfectly but cannot see the future.

The baselines get the same per-replica target as ours (a replica's capacity plus the queue allowed
per replica), so the comparison is of the control loops, not of the targets.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.autoscale.harness import ClusterView
from bench.autoscale.traces import Trace
from modelplane.autoscaler.policy import (
    Observation,
    PodMetrics,
    PolicySpec,
    PolicyState,
    ReadyPod,
    Reason,
    StartingPod,
    decide,
)
from modelplane.planner.performance import EngineParams


class Ours:
    def __init__(self, spec: PolicySpec, *, interval: float = 5.0, name: str = "modelplane",
                 gateway: bool = True) -> None:
        self.name = name
        self.interval = interval
        self.spec = spec
        self.state = PolicyState()
        self.reasons: dict[Reason, int] = {}
        #: With an objective, read the gateway's TTFT histogram (True) or only the pods' (False).
        self.gateway = gateway
        self.factors: list[float] = []  #: the objective's capacity factor at each decision

    @property
    def reads_latency(self) -> bool:
        return self.spec.objective is not None

    def observe(self, view: ClusterView) -> None:
        return None

    def decide(self, view: ClusterView) -> int:
        obs = Observation(
            now=view.now, current_replicas=view.current,
            ready=tuple(ReadyPod(p.name, PodMetrics(p.waiting, p.running, p.kv_cache_usage,
                                                    p.generation_tokens, scraped_at=view.now,
                                                    prompt_tokens=p.prompt_tokens,
                                                    requests_started=p.requests_started,
                                                    ttft_buckets=p.ttft_buckets or None),
                                 ready_after=p.ready_after)
                        for p in view.ready),
            starting=tuple(StartingPod(name, age)
                           for name, age in zip(view.starting_names, view.starting_ages, strict=True)),
            activator_pending=view.held,
            gateway_ttft=(("gateway", view.gateway_ttft),) if self.gateway and view.gateway_ttft else ())
        decision = decide(obs, self.spec, self.state)
        if decision.objective is not None:
            self.factors.append(decision.objective.factor)
        self.state = decision.state
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
        return decision.desired_replicas


@dataclass
class _Prometheus:
    """Per-pod samples as a Prometheus scraping every ``interval`` has them (the last scrape)."""

    interval: float = 15.0
    offset: float = 7.0  #: scrapes are not aligned with the consumer's sync
    next_at: float = 0.0
    inflight: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)

    def observe(self, view: ClusterView) -> None:
        if view.now + 1e-9 >= self.next_at + self.offset:
            self.next_at = view.now - self.offset + self.interval
            self.inflight = {p.name: float(p.running + p.waiting) for p in view.ready}
            self.waiting = {p.name: float(p.waiting) for p in view.ready}


@dataclass
class _HPABehavior:
    """The HPA controller's default behavior on top of a raw recommendation."""

    min_replicas: int
    max_replicas: int
    down_window: float = 300.0
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def apply(self, now: float, current: int, recommendation: int) -> int:
        if not self.history:
            # An HPA that has been running: its window holds the current count (ours is seeded alike).
            self.history.append((now, current))
        self.history.append((now, recommendation))
        while self.history and self.history[0][0] < now - self.down_window:
            self.history.popleft()
        if recommendation > current:
            desired = min(recommendation, max(2 * current, current + 4))
        elif recommendation < current:
            desired = min(current, max(r for _, r in self.history))
        else:
            desired = current
        return min(max(desired, self.min_replicas), self.max_replicas)


class HPAStyle:
    def __init__(self, *, target_per_pod: float, min_replicas: int, max_replicas: int,
                 tolerance: float = 0.1, sync: float = 15.0, scrape: float = 15.0) -> None:
        self.name = "HPA"
        self.interval = sync
        self.target = target_per_pod
        self.tolerance = tolerance
        self.prom = _Prometheus(interval=scrape)
        self.behavior = _HPABehavior(min_replicas, max_replicas)

    def observe(self, view: ClusterView) -> None:
        self.prom.observe(view)

    def decide(self, view: ClusterView) -> int:
        current = view.current
        ready_names = {p.name for p in view.ready}
        metrics = [v for name, v in self.prom.inflight.items() if name in ready_names]
        missing = len(view.ready) - len(metrics) + len(view.starting_ages)
        rec = current
        if metrics:
            total = sum(metrics)
            usage = total / len(metrics) / self.target
            if abs(usage - 1) > self.tolerance:
                if missing and usage > 1:
                    pods = len(metrics) + missing
                    adjusted = total / pods / self.target  # missing pods count as empty on scale-up
                    if adjusted > 1 + self.tolerance:
                        rec = math.ceil(adjusted * pods)
                elif missing and usage < 1:
                    pods = len(metrics) + missing
                    adjusted = (total + missing * self.target) / pods / self.target  # as at target
                    if adjusted < 1 - self.tolerance:
                        rec = math.ceil(adjusted * pods)
                else:
                    rec = math.ceil(usage * len(metrics))
        return self.behavior.apply(view.now, current, rec)


class KEDAStyle:
    def __init__(self, *, queue_per_replica: float, min_replicas: int, max_replicas: int,
                 polling: float = 30.0, sync: float = 15.0, scrape: float = 15.0,
                 tolerance: float = 0.1) -> None:
        self.name = "KEDA"
        self.interval = sync
        self.threshold = queue_per_replica
        self.tolerance = tolerance
        self.polling = polling
        self.prom = _Prometheus(interval=scrape)
        self.behavior = _HPABehavior(min_replicas, max_replicas)
        self.cached: float = 0.0
        self.next_poll = 0.0

    def observe(self, view: ClusterView) -> None:
        self.prom.observe(view)
        if view.now + 1e-9 >= self.next_poll:
            self.next_poll = view.now + self.polling
            self.cached = sum(self.prom.waiting.values())

    def decide(self, view: ClusterView) -> int:
        current = max(view.current, 1)
        usage = self.cached / (self.threshold * current)
        rec = view.current if abs(usage - 1) <= self.tolerance else math.ceil(usage * current)
        return self.behavior.apply(view.now, view.current, rec)


class KubeAIStyle:
    def __init__(self, *, target_requests: float, min_replicas: int, max_replicas: int,
                 interval: float = 10.0, time_window: float = 600.0, scale_down_delay: float = 30.0,
                 initial_average: float = 0.0) -> None:
        self.name = "KubeAI"
        self.interval = interval
        self.target = target_requests
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        count = math.ceil(time_window / interval)
        # A KubeAI that has been running: its window is preloaded (as it does from its state ConfigMap).
        self.window: deque[float] = deque([initial_average] * count, maxlen=count)
        self.required_downs = math.ceil(scale_down_delay / interval)
        self.downs = 0

    def observe(self, view: ClusterView) -> None:
        return None

    def decide(self, view: ClusterView) -> int:
        active = sum(p.outstanding for p in view.ready) + view.held
        self.window.append(float(active))
        average = sum(self.window) / len(self.window)
        desired = min(max(math.ceil(average / self.target), self.min_replicas), self.max_replicas)
        if desired < view.current:
            self.downs += 1
            if self.downs < self.required_downs:
                return view.current
        self.downs = 0
        return desired


class Static:
    def __init__(self, replicas: int) -> None:
        self.name = "static peak"
        self.interval = 60.0
        self.replicas = replicas

    def observe(self, view: ClusterView) -> None:
        return None

    def decide(self, view: ClusterView) -> int:
        return self.replicas


def replica_capacity(params: EngineParams, trace: Trace, *, requests: int = 1500,
                     warmup: float = 60.0, measure: float = 240.0) -> float:
    """Requests/s one saturated replica completes on this trace's mix of sizes (measured on the engine).

    Prefill stalls, KV limits and preemptions are all in the figure, since it is measured, not derived.
    """
    from modelplane_dev.sim.engine import EngineModel, EventKind

    engine = EngineModel(params)
    sample = trace.requests[:: max(1, len(trace.requests) // requests)][:requests]
    if not sample:
        raise ValueError("an empty trace has no request sizes to measure with")
    submitted = 0

    def top_up(now: float) -> None:
        # Keep a queue as deep as the batch, cycling through the sample, so the replica stays saturated.
        nonlocal submitted
        while engine.num_waiting < params.max_num_seqs:
            r = sample[submitted % len(sample)]
            prompt = min(r.prompt_tokens, params.max_model_len - 1)
            output = max(1, min(r.output_tokens, params.max_model_len - prompt))
            engine.submit(str(submitted), prompt, output, now, output_tokens=output)
            submitted += 1

    done = 0
    t = 0.0
    top_up(t)
    while t < warmup + measure:
        t += 1.0
        finished = sum(1 for e in engine.advance(t) if e.kind is EventKind.FINISHED)
        if t > warmup:
            done += finished
        top_up(t)
    return done / measure


def needed_replicas(trace: Trace, capacity: float, *, utilization: float = 0.85,
                    window: float = 30.0) -> list[int]:
    """Replicas each second needs: the arrival rate of the next ``window`` s over the capacity of a
    replica kept at ``utilization`` (a little headroom keeps queues, hence TTFT, short)."""
    seconds = int(math.ceil(trace.duration)) + 1
    arrivals = [0] * (seconds + int(window) + 1)
    for r in trace.requests:
        arrivals[int(r.at)] += 1
    out = []
    in_window = sum(arrivals[: int(window)])
    for s in range(seconds):
        rate = in_window / window
        out.append(max(1, math.ceil(rate / (capacity * utilization) - 1e-9)))
        in_window += arrivals[s + int(window)] - arrivals[s]
    return out


class Oracle:
    def __init__(self, needed: list[int], *, cold_start: float, interval: float = 5.0) -> None:
        self.name = "oracle"
        self.interval = interval
        horizon = int(cold_start + interval) + 1
        # Sliding maximum over [t, t + cold start + interval]: what must be Ready or starting at t.
        self.schedule: list[int] = []
        window: deque[int] = deque()
        for t in range(len(needed) - 1, -1, -1):
            while window and needed[window[-1]] <= needed[t]:
                window.pop()
            window.append(t)
            while window[0] > t + horizon:
                window.popleft()
            self.schedule.append(needed[window[0]])
        self.schedule.reverse()

    @classmethod
    def blind_to_timing(cls, needed: list[int], bursts: Sequence[tuple[float, float]], quiet_min: float,
                        *, cold_start: float, interval: float = 5.0) -> Oracle:
        oracle = cls(needed, cold_start=cold_start, interval=interval)
        oracle.name = "oracle blind to timing"
        for (_, last_end), (start, end) in itertools.pairwise(bursts):
            first, stop = int(start), min(int(math.ceil(end)), len(needed))
            if first >= stop:
                continue
            fleet = max(needed[first:stop])
            earliest = int(last_end + quiet_min - cold_start - interval)
            for t in range(max(0, earliest), min(first, len(oracle.schedule))):
                oracle.schedule[t] = max(oracle.schedule[t], fleet)
        return oracle

    def observe(self, view: ClusterView) -> None:
        return None

    def decide(self, view: ClusterView) -> int:
        if not self.schedule:
            return 1
        return self.schedule[min(len(self.schedule) - 1, int(view.now))]

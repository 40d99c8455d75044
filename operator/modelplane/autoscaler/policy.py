"""The scaling policy: observation + spec + previous state → desired replicas, a reason and new state.

Pure and deterministic: the operator scrapes the pods, builds an ``Observation``, calls ``decide``
and applies ``Decision.desired_replicas``; the benchmark (``bench/autoscale``) calls the same
function in virtual time. ``decide`` is a pipeline; the optional rules (``Rule``, switched in
``PolicySpec.rules``; the benchmark's ablation turns each off) are marked with their names. What
each gains, and why it is there, is in docs/autoscaling.md.

1. Metrics: a ready pod's metrics missing, stale or garbled → hold the last decision
   (``MetricsUnavailable``).
2. Objective (``spec.scaling.objective``): attainment from the gateway's TTFT histogram, else the
   pods'; the feedback (``autoscaler.objective``) corrects the per-replica capacity (a factor).
3. Sizing: demand = waiting + running + held. Per-replica target ``(c + targetQueueDepth) × factor``
   (``c``: ``maxNumSeqs``, or what a KV-saturated pod runs); with the engine profile's token rates,
   throughput sizing (``autoscaler.throughput``: engine-seconds against a learnt capacity × factor)
   replaces it. ``tolerance``: no replica for a need within 10% of the fleet without a rising trend.
   ``trend``: a rising demand sized ``scale_up_lead`` ahead. ``starting-credit``: starting replicas
   are credited with the backlog of their cold start. ``learnt-cold-start``: the look-ahead grows
   to the median of the cold starts seen. ``kv-cache``: mean KV use above the threshold asks for
   ``ceil(Σ kv / threshold)``.
4. Up at once, at most to ``max(2 × current, current + 4)`` per decision.
5. Down slowly: to the highest recommendation of the ``scaleDownDelay`` window, by at most
   ``max(1, 50%)`` per 30 s. ``regret-window``: a scale-down undone within two windows doubles the
   window (up to 4×), quiet windows halve it back. ``burst-rhythm``: with a lengthened window,
   the quiet between bursts is learnt; the fleet is released after a burst and pre-warmed a cold
   start before the next. ``targetUSDPerMillionTokens`` skips the window towards the fleet that
   meets it (``TargetCost``).
6. Scale to zero after ``scaleToZeroAfter`` idle (``minReplicas: 0``); back to one on any demand.
7. Limits: ``minReplicas``, ``maxReplicas``, then the budget (``maxHourlyUSD``), which wins.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from modelplane import durations
from modelplane.api.models import ScalingSpec
from modelplane.autoscaler import cost
from modelplane.autoscaler import objective as obj
from modelplane.autoscaler import throughput as tp

_EPS = 1e-9
#: Cold starts remembered; their median, when longer than ``scale_up_lead``, is the look-ahead.
COLD_STARTS_KEPT = 5


class Reason(StrEnum):
    """Why the desired replica count is what it is (becomes a condition reason and an Event)."""

    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    HOLD = "Hold"
    BUDGET_CAP = "BudgetCap"
    MAX_REPLICAS = "MaxReplicas"
    MIN_REPLICAS = "MinReplicas"
    SCALE_TO_ZERO = "ScaleToZero"
    ACTIVATE_FROM_ZERO = "ActivateFromZero"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    TARGET_COST = "TargetCost"


#: Reasons that mean "the fleet would be larger without a limit" (the ``ScalingLimited`` condition).
LIMITING_REASONS = frozenset({Reason.BUDGET_CAP, Reason.MAX_REPLICAS})


@dataclass(frozen=True)
class PodMetrics:
    """What one ready pod's ``/metrics`` said (see ``modelplane.metrics.vllm``)."""

    waiting: float  #: vllm:num_requests_waiting
    running: float  #: vllm:num_requests_running
    kv_cache_usage: float  #: vllm:kv_cache_usage_perc, 0..1
    generation_tokens: float  #: vllm:generation_tokens_total (a counter)
    scraped_at: float  #: when the page was read, on the same clock as ``Observation.now``
    prompt_tokens: float | None = None  #: vllm:prompt_tokens_total (a counter); None: not scraped
    #: vllm:time_to_first_token_seconds_count: requests that got their first token (a counter)
    requests_started: float | None = None
    #: vllm:time_to_first_token_seconds_bucket, cumulative (le, count) with +Inf last; None: not scraped
    ttft_buckets: tuple[tuple[float, float], ...] | None = None
    #: vllm:request_time_per_output_token_seconds_bucket, likewise
    tpot_buckets: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class ReadyPod:
    name: str
    metrics: PodMetrics | None  #: None when the scrape failed or the page could not be parsed
    #: Seconds from the pod's creation to its Ready condition (its cold start), when known.
    ready_after: float | None = None


@dataclass(frozen=True)
class StartingPod:
    """A pod of the deployment that exists but is not Ready yet (pulling, loading, compiling)."""

    name: str
    age_seconds: float


@dataclass(frozen=True)
class Observation:
    """The world as the autoscaler sees it at ``now`` (seconds on a monotonic clock)."""

    now: float
    #: Replicas the workload is asked to run now (ready + starting); the last applied decision.
    current_replicas: int
    ready: tuple[ReadyPod, ...] = ()
    starting: tuple[StartingPod, ...] = ()
    #: Requests the gateway holds because no replica is ready to take them (its activator).
    activator_pending: int = 0
    #: The gateways' TTFT histogram of this deployment (cumulative buckets), by gateway replica;
    #: empty when no gateway is read. Preferred over the pods' for the latency objective.
    gateway_ttft: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()


class Rule(StrEnum):
    """The policy's optional rules, each switched on or off in ``PolicySpec.rules`` (the benchmark's
    ablation, ``python -m bench.autoscale.ablation``, runs with each one off)."""

    TOLERANCE = "tolerance"  #: no replica for a need within ``scale_up_tolerance`` of the fleet
    TREND = "trend"  #: a rising demand is extrapolated ``scale_up_lead`` ahead
    LEARNT_COLD_START = "learnt-cold-start"  #: the look-ahead grows to the cold starts seen
    STARTING_CREDIT = "starting-credit"  #: starting replicas are credited with the backlog
    KV_CACHE = "kv-cache"  #: a full KV cache asks for replicas even with no queue
    REGRET_WINDOW = "regret-window"  #: a regretted scale-down lengthens the scale-down window
    BURST_RHYTHM = "burst-rhythm"  #: with a lengthened window, release and pre-warm between bursts


#: The rules on by default.
DEFAULT_RULES = frozenset(Rule)


#: ``spec.scaling`` with nothing set: its defaults are the API's (``api.models.ScalingSpec``), the
#: one place that knows them; ``PolicySpec``'s own defaults for those fields are read from it.
_API_DEFAULTS = ScalingSpec()


@dataclass(frozen=True)
class PolicySpec:
    """``spec.scaling`` in seconds and dollars, plus what the plan knows and the policy's tunables.

    The operator builds it with ``policy_spec_from_scaling`` from the parsed spec; tests and the
    benchmark may build it directly, and then get the API's defaults for the spec's fields.
    """

    min_replicas: int = _API_DEFAULTS.min_replicas
    max_replicas: int = _API_DEFAULTS.max_replicas
    target_queue_depth: float = _API_DEFAULTS.target_queue_depth
    scale_down_delay: float = durations.seconds(_API_DEFAULTS.scale_down_delay)
    #: None: never scale to zero (a ``minReplicas`` of 0 then behaves as 1).
    scale_to_zero_after: float | None = (None if _API_DEFAULTS.scale_to_zero_after is None
                                         else durations.seconds(_API_DEFAULTS.scale_to_zero_after))
    max_hourly_usd: float | None = None
    target_usd_per_million_tokens: float | None = None
    #: $/hour of one replica (GPUs per replica × $/GPU-hour, ``cost.replica_hourly_usd``); 0 = unknown.
    usd_per_replica_hour: float = 0.0
    #: Requests a replica runs at once when full: the engine's ``maxNumSeqs`` (vLLM default 256).
    replica_concurrency: int = 256
    kv_cache_threshold: float = 0.9
    #: Metrics older than this are stale (a few scrape intervals).
    metrics_max_age: float = 30.0
    scale_up_max_factor: float = 2.0
    scale_up_max_add: int = 4
    scale_down_max_percent: float = 50.0
    scale_down_min_step: int = 1
    scale_down_period: float = 30.0
    cold_start_backlog_credit: float = 1.0
    #: $/Mtok is measured over the last this many seconds of the pods' token counters (a sliding
    #: window, so one busy scrape does not swing it and a change of rate shows within it).
    cost_window: float = cost.TOKEN_WINDOW_SECONDS
    #: Throughput sizing (``modelplane.autoscaler.throughput``), on when both priors are set: one
    #: replica's prefill tokens/s and decode tokens/s at a full batch, from the engine profile.
    prefill_tokens_per_second: float | None = None
    decode_tokens_per_second: float | None = None
    #: Share of a replica's learned capacity the fleet is sized to use (the rest keeps TTFT short).
    target_utilization: float = 0.85
    #: Seconds within which the fleet is sized to clear the queue's work.
    backlog_horizon: float = 60.0
    #: A pod with at least this many waiting requests at two scrapes in a row ran flat out.
    saturation_waiting: float = 8.0
    #: Seconds ahead the fleet is sized for while demand rises: about a cold start. A prior: once
    #: pods were seen to start, the median of their cold starts replaces it when longer (rule 5).
    scale_up_lead: float = 90.0
    #: The scale-down window grows up to this many times ``scale_down_delay`` after regrets (1: never).
    window_max_factor: float = 4.0
    #: A lengthened window halves after this many (current) windows without a regret.
    window_decay_windows: float = 3.0
    #: A scale-up is a regret when it comes within this many windows of the last scale-down and
    #: asks for at least the fleet that scale-down started from.
    regret_windows: float = 2.0
    #: Throughput sizing asks for more replicas only when its fractional need exceeds the current
    #: fleet by more than this share (HPA's tolerance is 0.1).
    scale_up_tolerance: float = 0.1
    #: Burst rhythm (with a lengthened window): the quiet gaps between bursts remembered...
    rhythm_gaps: int = 8
    #: ... and how many must be seen before the fleet is released between bursts and pre-warmed.
    rhythm_min_gaps: int = 3
    #: ... and how regular they must be: the shortest at least this share of the longest.
    rhythm_regularity: float = 0.5
    #: Between bursts the release follows the highest need of this many seconds (0: the last one).
    release_hold: float = 15.0
    #: The optional rules on (``Rule``); the others are skipped.
    rules: frozenset[Rule] = DEFAULT_RULES
    #: ``spec.scaling.objective``: attainment measured, per-replica capacity corrected (None: off).
    objective: obj.ObjectiveSpec | None = None
    #: The per-replica capacity's correction; ``decide`` sets it from the objective's feedback.
    capacity_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ValueError(f"need 0 <= minReplicas <= maxReplicas and maxReplicas >= 1, got "
                             f"{self.min_replicas}..{self.max_replicas}")
        if self.target_queue_depth < 0 or self.replica_concurrency < 1:
            raise ValueError("targetQueueDepth must be >= 0 and replica_concurrency >= 1")
        to_zero = self.scale_to_zero_after
        if self.scale_down_delay < 0 or (to_zero is not None and to_zero < 0):
            raise ValueError("durations must be >= 0")
        if not 0 < self.kv_cache_threshold <= 1:
            raise ValueError(f"kv_cache_threshold must be in (0, 1], got {self.kv_cache_threshold}")
        if self.usd_per_replica_hour < 0:
            raise ValueError("usd_per_replica_hour must be >= 0")
        for rate in (self.prefill_tokens_per_second, self.decode_tokens_per_second):
            if rate is not None and not rate > 0:
                raise ValueError(f"token rates must be > 0, got {rate}")
        if not 0 < self.target_utilization <= 1 or self.backlog_horizon <= 0:
            raise ValueError("target_utilization must be in (0, 1] and backlog_horizon > 0")
        if self.window_max_factor < 1 or self.window_decay_windows <= 0:
            raise ValueError("window_max_factor must be >= 1 and window_decay_windows > 0")
        if self.rhythm_min_gaps < 1 or self.rhythm_gaps < self.rhythm_min_gaps:
            raise ValueError("need 1 <= rhythm_min_gaps <= rhythm_gaps")
        if not 0 <= self.rhythm_regularity <= 1:
            raise ValueError(f"rhythm_regularity must be in [0, 1], got {self.rhythm_regularity}")
        if self.release_hold < 0:
            raise ValueError(f"release_hold must be >= 0, got {self.release_hold}")
        if not self.scale_up_lead >= 0:
            raise ValueError(f"scale_up_lead must be >= 0, got {self.scale_up_lead}")

    @property
    def throughput_spec(self) -> tp.ThroughputSpec | None:
        """The throughput sizing's settings; None when the profile's token rates are not known."""
        if self.prefill_tokens_per_second is None or self.decode_tokens_per_second is None:
            return None
        return tp.ThroughputSpec(
            prefill_tokens_per_second=self.prefill_tokens_per_second,
            decode_tokens_per_second=self.decode_tokens_per_second,
            target_utilization=self.target_utilization, saturation_waiting=self.saturation_waiting,
            backlog_horizon=self.backlog_horizon,
            lead_seconds=self.scale_up_lead if Rule.TREND in self.rules else 0.0,
            starting_clears_backlog=Rule.STARTING_CREDIT in self.rules,
            capacity_factor=self.capacity_factor)

    @property
    def budget_replicas(self) -> int | None:
        """Replicas ``maxHourlyUSD`` pays for; None without a cap or without a known price."""
        if self.max_hourly_usd is None or self.usd_per_replica_hour <= 0:
            return None
        return math.floor(self.max_hourly_usd / self.usd_per_replica_hour + _EPS)


@dataclass(frozen=True)
class PolicyState:
    """What ``decide`` remembers between calls; start with ``PolicyState()``."""

    #: (time, recommendation) within the scale-down window, oldest first.
    recommendations: tuple[tuple[float, int], ...] = ()
    last_desired: int | None = None
    last_scale_at: float | None = None
    last_scale_down_at: float | None = None
    #: Since when demand has been zero; None while there is demand.
    idle_since: float | None = None
    #: The ready pods' generation-token counters over the last ``cost_window`` (None: not started).
    tokens: cost.TokenWindow | None = None
    throughput: tp.ThroughputState = field(default_factory=tp.ThroughputState)
    #: The scale-down window is ``scale_down_delay × window_factor`` (1 until a regret).
    window_factor: float = 1.0
    #: When the window last changed length (a regret, or a decay step).
    window_changed_at: float | None = None
    #: Replicas before the last scale-down began (the fleet a regret wants back).
    scaled_down_from: int | None = None
    #: Burst rhythm, while the window is lengthened: a burst is on, the fleet it needed (its highest
    #: recommendation; with throughput sizing, without the ramp's trend and backlog),
    #: when the last one ended, and the quiet gaps between the last few (newest last).
    burst_on: bool = False
    burst_peak: int = 0
    burst_ended_at: float | None = None
    quiet_gaps: tuple[float, ...] = ()
    #: The fleet the last decision pre-warmed for an expected burst (0: none)...
    prewarmed: int = 0
    #: ... and the fleet pre-warmed or held for the last burst when it came (0: it came unprepared),
    #: carried through a dip; while a burst is on, it caps the trend (rule 7).
    burst_prewarmed: int = 0
    #: Between bursts: (time, the fleet the traffic asked for then) over the last ``release_hold``.
    release_recs: tuple[tuple[float, int], ...] = ()
    #: Pods seen Ready at some decision that still exist, and the cold starts of the last few pods
    #: that became Ready (seconds, newest last).
    ready_pods: tuple[str, ...] = ()
    cold_starts: tuple[float, ...] = ()
    #: (time, the sustained need) within the scale-down window: what a lengthened window holds.
    sustained_recs: tuple[tuple[float, int], ...] = ()
    #: The latency objective's measurements and capacity correction.
    objective: obj.ObjectiveState = field(default_factory=obj.ObjectiveState)


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    reason: Reason
    message: str  #: for people: the inputs and the rule that decided
    state: PolicyState  #: pass to the next ``decide``
    recommended: int  #: what demand alone asked for, before windows, rates and limits
    demand: float = 0.0
    waiting: float = 0.0
    running: float = 0.0
    ready: int = 0
    starting: int = 0
    activator_pending: int = 0
    hourly_usd: float = 0.0  #: the fleet asked for now (ready + starting)
    desired_hourly_usd: float = 0.0
    #: Generation tokens per second over the last ``cost_window`` (None: idle or not measured yet).
    tokens_per_second: float | None = None
    #: ``hourly_usd`` per million of those tokens (None with them).
    usd_per_million_tokens: float | None = None
    inputs: Mapping[str, float] = field(default_factory=dict)
    #: The cold start as measured (rule 5: the median of the last pods seen to start), or the
    #: ``scale_up_lead`` prior before any; the policy looks ahead by the larger of the two.
    cold_start_seconds: float = 0.0
    #: The latency objective's attainment and capacity correction (None without an objective).
    objective: obj.Feedback | None = None
    #: What one replica is sized to carry, after the objective's correction: engine-seconds per
    #: second with throughput sizing, else requests in flight (None before any sizing).
    replica_capacity: float | None = None

    @property
    def limited(self) -> bool:
        """True when a limit (maxReplicas, budget) keeps the fleet smaller than demand asks."""
        return self.reason in LIMITING_REASONS


def _metric_problems(obs: Observation, spec: PolicySpec) -> list[str]:
    problems = []
    for pod in obs.ready:
        m = pod.metrics
        if m is None:
            problems.append(f"no metrics from {pod.name}")
            continue
        values = (m.waiting, m.running, m.kv_cache_usage, m.generation_tokens, m.scraped_at)
        counters = tuple(v for v in (m.prompt_tokens, m.requests_started) if v is not None)
        if (not all(math.isfinite(v) for v in values + counters) or min(values[:4] + counters) < 0
                or m.kv_cache_usage > 1 + 1e-6):
            problems.append(f"garbled metrics from {pod.name}")
        elif obs.now - m.scraped_at > spec.metrics_max_age:
            problems.append(f"metrics of {pod.name} are {obs.now - m.scraped_at:.0f}s old")
    return problems


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _clamp_hold(desired: int, spec: PolicySpec) -> int:
    desired = min(max(desired, spec.min_replicas), spec.max_replicas)
    cap = spec.budget_replicas
    return desired if cap is None else min(desired, cap)


@dataclass(frozen=True)
class _Rhythm:
    on: bool  #: a burst is on (the recommendation is in the upper half of the window's range)
    spread: bool  #: the window's recommendations span a burst (its range is 2 replicas or more)
    peak: int
    ended_at: float | None
    gaps: tuple[float, ...]
    release_since: float | None = None  #: between bursts: size for what the quiet since then asks
    prewarm: int | None = None  #: the fleet to have now, one cold start before the expected burst
    expected_at: float | None = None
    prewarm_at: float | None = None
    #: The fleet pre-warmed or held for the current (or last) burst (0: it came unprepared).
    prewarmed: int = 0


def _burst_rhythm(spec: PolicySpec, state: PolicyState, now: float, recs: tuple[tuple[float, int], ...],
                  recommended: int, lengthened: bool, sustained: int, backlogged: bool,
                  held: int = 0) -> _Rhythm:
    """Bursts and the quiet between them, once a regret lengthened the window (rule 7).

    ``backlogged``: a saturated replica's queue per ready pod waits. A burst does not end while its
    backlog waits, whatever the estimate (which leaves the backlog to starting replicas) says.
    ``held``: the fleet there is while the window is lengthened; a burst that comes onto at least
    the last burst's need counts as pre-warmed, like one the rhythm pre-warmed for.
    """
    if not lengthened:
        return _Rhythm(False, False, 0, None, ())
    values = [r for _, r in recs]
    high, low = max(values), min(values)
    spread = high - low >= 2
    on = (recommended > (high + low) / 2 if spread else state.burst_on) or (state.burst_on and backlogged)
    peak, ended, gaps = state.burst_peak, state.burst_ended_at, state.quiet_gaps
    prewarmed = state.burst_prewarmed  # the last burst's, carried through a dip
    if on and not state.burst_on and ended is not None and now - ended < spec.scale_up_lead:
        # Back within a cold start: the same burst after a dip, not a new one after a quiet. As a
        # gap, it would stop the rhythm (the regularity test) until 8 more bursts pushed it out.
        peak = max(peak, sustained)
    elif on and not state.burst_on:
        if ended is not None:
            gaps = (*gaps, now - ended)[-spec.rhythm_gaps:]
        prewarmed = state.prewarmed or (held if 0 < state.burst_peak <= held else 0)
        peak = sustained
    elif on:
        peak = max(peak, sustained)
    elif state.burst_on:
        ended = now
    rhythm = _Rhythm(on, spread, peak, ended, gaps, prewarmed=prewarmed)
    if on or ended is None or len(gaps) < spec.rhythm_min_gaps or peak <= 0:
        return rhythm
    # The next burst is expected no sooner than the shortest quiet seen; the fleet it needs is asked
    # for a cold start (and a decision period) before that. Releasing is worth it only when the fleet
    # can be let go for at least two scale-down periods first.
    expected = ended + min(gaps)
    prewarm_at = expected - spec.scale_up_lead - spec.scale_down_period
    if prewarm_at - ended < 2 * spec.scale_down_period:
        return rhythm
    if min(gaps) < spec.rhythm_regularity * max(gaps):
        return rhythm  # gaps this uneven are no schedule: the next burst may come at any time
    if now < prewarm_at:
        return replace(rhythm, release_since=ended, expected_at=expected, prewarm_at=prewarm_at)
    if now <= ended + max(gaps) + spec.scale_down_period:
        return replace(rhythm, prewarm=min(peak, spec.max_replicas), expected_at=expected,
                       prewarm_at=prewarm_at)
    return rhythm  # later than any burst came back: the plain (lengthened) window again


def _objective(obs: Observation, spec: obj.ObjectiveSpec, state: obj.ObjectiveState, *, settled: bool,
               load: float | None, can_grow: bool) -> obj.Feedback:
    """The objective's feedback from the gateway's TTFT histograms, else the pods'."""
    readings: dict[str, obj.Reading]
    if obs.gateway_ttft:
        readings, source = {url: obj.Reading(ttft=b) for url, b in obs.gateway_ttft}, "gateway"
    else:
        readings = {p.name: obj.Reading(ttft=p.metrics.ttft_buckets, tpot=p.metrics.tpot_buckets)
                    for p in obs.ready if p.metrics is not None and p.metrics.ttft_buckets is not None}
        source = "pods"
    return obj.observe(spec, state, now=obs.now, readings=readings,
                       source=source if readings else None, settled=settled, load=load,
                       replicas=len(obs.ready), can_grow=can_grow)


def _token_window(state: PolicyState, spec: PolicySpec) -> cost.TokenWindow:
    """The state's token window, or a fresh one (also when ``cost_window`` changed)."""
    if state.tokens is None or state.tokens.seconds != spec.cost_window:
        return cost.TokenWindow(seconds=spec.cost_window)
    return state.tokens


def decide(obs: Observation, spec: PolicySpec, state: PolicyState) -> Decision:
    """The desired replica count for ``obs``; see the module docstring for the rules."""
    now, current = obs.now, obs.current_replicas
    price = spec.usd_per_replica_hour
    if state.last_desired is None and current > 0:
        # A fresh state (first call, or the operator restarted): the window starts now, so a restart
        # never drops replicas faster than a full window allows.
        state = replace(state, recommendations=((now, current),))
    # Cold starts: a pod Ready for the first time says how long it took. Not at the first decision
    # (those pods may have been Ready for days, their Ready time a later flap), nor again for a pod
    # that was Ready before.
    was_ready = set(state.ready_pods)
    learnt = () if state.last_desired is None else tuple(
        p.ready_after for p in obs.ready
        if p.name not in was_ready and p.ready_after is not None and p.ready_after >= 0)
    cold_starts = (*state.cold_starts, *learnt)[-COLD_STARTS_KEPT:]
    present = {p.name for p in obs.starting}
    ready_pods = tuple(sorted({p.name for p in obs.ready} | (was_ready & present)))
    state = replace(state, ready_pods=ready_pods, cold_starts=cold_starts)
    cold_start = statistics.median(cold_starts) if cold_starts else spec.scale_up_lead
    if cold_start > spec.scale_up_lead and Rule.LEARNT_COLD_START in spec.rules:
        spec = replace(spec, scale_up_lead=cold_start)

    factor = state.objective.factor if spec.objective is not None else 1.0
    spec = replace(spec, capacity_factor=factor)
    problems = _metric_problems(obs, spec)
    if problems:
        # The readings already in the window still count until they are older than it.
        tokens = _token_window(state, spec).expire(now)
        tok_s = tokens.tokens_per_second(now)
        held = _clamp_hold(state.last_desired if state.last_desired is not None else current, spec)
        return Decision(
            desired_replicas=held, reason=Reason.METRICS_UNAVAILABLE,
            message=f"holding {held} replicas: {'; '.join(problems)}",
            state=replace(state, last_desired=held, tokens=tokens), recommended=held,
            ready=len(obs.ready), starting=len(obs.starting), activator_pending=obs.activator_pending,
            hourly_usd=current * price, desired_hourly_usd=held * price, tokens_per_second=tok_s,
            usd_per_million_tokens=cost.usd_per_million_tokens(current * price, tok_s),
            cold_start_seconds=cold_start)

    metrics = [p.metrics for p in obs.ready if p.metrics is not None]
    waiting = sum(m.waiting for m in metrics)
    running = sum(m.running for m in metrics)
    held_requests = max(0, obs.activator_pending)
    demand = waiting + running + held_requests
    n_ready, n_starting = len(obs.ready), len(obs.starting)

    # Capacity of one replica: the configured concurrency, except where the KV cache is the limit.
    conc = spec.replica_concurrency
    per_pod = [min(conc, max(1.0, m.running)) if m.kv_cache_usage >= spec.kv_cache_threshold else conc
               for m in metrics]
    capacity = sum(per_pod) / len(per_pod) if per_pod else float(conc)
    feedback = None
    if spec.objective is not None:
        # The objective's feedback first, so that this decision sizes with the corrected capacity
        # (sizing one decision late would judge a fleet by a factor it was not sized with).
        # The load is over what the fleet was sized for: throughput sizing's smoothed demand, or
        # the requests in flight.
        was = state.throughput
        if spec.throughput_spec is not None and was.demand is not None and n_ready:
            load: float | None = was.demand / (n_ready * was.capacity * spec.target_utilization * factor)
        else:
            load = demand / (n_ready * (capacity + spec.target_queue_depth) * factor) if n_ready else None
        limit = min(spec.max_replicas, spec.budget_replicas if spec.budget_replicas is not None
                    else spec.max_replicas)
        feedback = _objective(obs, spec.objective, state.objective,
                              settled=not n_starting and not held_requests, load=load,
                              can_grow=current < limit)
        factor = feedback.factor
        spec = replace(spec, capacity_factor=factor)
    target = (capacity + spec.target_queue_depth) * factor

    recommended = _ceil(demand / target)
    if n_starting and recommended > current and Rule.STARTING_CREDIT in spec.rules:
        credited = demand - n_starting * target * spec.cold_start_backlog_credit
        recommended = max(current, _ceil(credited / target))
    # Throughput sizing replaces the in-flight rule when the profile's rates and the counters are known.
    tp_spec, tp_state, estimate = spec.throughput_spec, state.throughput, None
    if tp_spec is not None and metrics and all(
            m.prompt_tokens is not None and m.requests_started is not None for m in metrics):
        estimate = tp.estimate(tp_spec, tp_state, now=now, held=held_requests, starting=n_starting, pods=[
            tp.PodCounters(p.name, p.metrics.generation_tokens, p.metrics.prompt_tokens or 0.0,
                           p.metrics.requests_started or 0.0, p.metrics.waiting)
            for p in obs.ready if p.metrics is not None])
        tp_state = estimate.state
        if estimate.replicas is not None:
            recommended = estimate.replicas
            if (Rule.TOLERANCE in spec.rules and estimate.needed is not None and 0 < current < recommended
                    and estimate.slope <= 0 and estimate.needed <= current * (1 + spec.scale_up_tolerance)):
                recommended = current  # within the tolerance of the fleet there is: noise, not demand
    elif metrics or held_requests:
        tp_state = tp.ThroughputState()  # counters missing or no pods: start the estimates afresh
    replica_capacity = float(target)
    if estimate is not None and estimate.demand is not None:
        replica_capacity = estimate.capacity * spec.target_utilization * factor
    kv_sum = sum(m.kv_cache_usage for m in metrics)
    kv_mean = kv_sum / len(metrics) if metrics else 0.0
    kv_fleet = _ceil(kv_sum / spec.kv_cache_threshold)  # replicas that hold the sequences under it
    kv_over = kv_mean > spec.kv_cache_threshold and Rule.KV_CACHE in spec.rules
    if kv_over:
        recommended = max(recommended, kv_fleet)
    if demand > 0:
        recommended = max(recommended, 1)

    # Cost: the ready pods' token counters over the last ``cost_window``, at the fleet's cost now.
    tokens = _token_window(state, spec).observe(now, {
        p.name: cost.CounterSample(p.metrics.scraped_at, p.metrics.generation_tokens)
        for p in obs.ready if p.metrics is not None})
    tok_s = tokens.tokens_per_second(now)
    usd_mtok = cost.usd_per_million_tokens(current * price, tok_s)

    idle_since = None if demand > 0 else (state.idle_since if state.idle_since is not None else now)
    idle_for = now - idle_since if idle_since is not None else 0.0
    may_be_zero = spec.min_replicas == 0 and spec.scale_to_zero_after is not None and (
        (current == 0 and demand == 0) or (idle_since is not None and idle_for >= spec.scale_to_zero_after))
    floor = 0 if may_be_zero else max(spec.min_replicas, 1)

    factor, factor_at = state.window_factor, state.window_changed_at
    if factor > 1 and factor_at is not None and (
            now - factor_at >= spec.window_decay_windows * spec.scale_down_delay * factor):
        factor, factor_at = max(1.0, factor / 2), now
    window = spec.scale_down_delay * factor
    last_down = state.last_scale_down_at
    down_from = state.scaled_down_from
    if (recommended > current and last_down is not None and down_from is not None
            and recommended >= down_from and now - last_down <= spec.regret_windows * window
            and factor < spec.window_max_factor and Rule.REGRET_WINDOW in spec.rules):
        # Regret: the fleet a recent scale-down removed is wanted back, at the price of a cold
        # start. Hold the next fleet longer.
        factor, factor_at = min(spec.window_max_factor, factor * 2), now
        down_from = None
    window = spec.scale_down_delay * factor
    window_start = now - window
    recs = tuple((t, r) for t, r in state.recommendations if t >= window_start) + ((now, recommended),)
    # A burst's fleet to pre-warm next time is what its demand needed once served, not what the ramp
    # asked for on the way up (its trend and backlog are gone when the fleet is ready in advance).
    sustained = recommended
    if estimate is not None and estimate.replicas_sustained is not None:
        sustained = min(recommended, estimate.replicas_sustained)
    backlogged = held_requests + waiting >= spec.saturation_waiting * max(1, n_ready)
    sustained_recs = tuple((t, r) for t, r in state.sustained_recs if t >= window_start) + ((now, sustained),)
    rhythm = _burst_rhythm(spec, state, now, recs, recommended,
                           factor > 1 and Rule.BURST_RHYTHM in spec.rules, sustained, backlogged,
                           current if factor > 1 else 0)
    if factor > 1 and current > 0 and (rhythm.on if rhythm.spread else recommended >= current):
        # A burst is on (or, with no burst in the window, the held fleet is wanted again): the hold
        # pays off, so the decay clock starts over. Bursts that keep coming keep the long window
        # instead of losing it, and a burst's SLO with it, every ``window_decay_windows`` windows.
        factor_at = now
    release_now = None
    release_recs: tuple[tuple[float, int], ...] = ()
    if rhythm.release_since is not None and estimate is not None and estimate.needed_now is not None:
        # Between bursts: the fleet for what the traffic asks now (the last few seconds), not for
        # the estimate that falls slowly after the burst, so the burst's fleet goes at once.
        # Never to a fleet whose KV caches would be fuller than the threshold with the sequences
        # they hold now (rule 4 would ask for them back at once).
        release_now = max(_ceil(estimate.needed_now), kv_fleet, 1 if demand > 0 else 0)
        # The highest of the last ``release_hold`` seconds: one quiet scrape does not drop a
        # replica that the next asks back (a pod and a cold start for nothing).
        release_recs = tuple((t, n) for t, n in state.release_recs
                             if t > now - spec.release_hold) + ((now, release_now),)
        release_now = max(n for _, n in release_recs)
    wanted = max(recommended if release_now is None else min(recommended, release_now),
                 rhythm.prewarm or 0)
    why = ""
    if rhythm.on and rhythm.prewarmed and estimate is not None and estimate.needed_now is not None:
        # A burst that came onto the fleet pre-warmed (or held) for what the last burst needed once
        # served: the ramp's trend, extrapolated a cold start ahead, would buy replicas that are
        # ready when the burst is nearly over. More than that fleet only for what the traffic asks
        # now (beyond the tolerance) or for the KV caches.
        asks = estimate.needed_now
        now_fleet = _ceil(asks) if asks > rhythm.prewarmed * (1 + spec.scale_up_tolerance) else 0
        capped = max(rhythm.prewarmed, now_fleet, kv_fleet if kv_over else 0)
        if capped < wanted:
            wanted = max(capped, min(wanted, current))
            why = (f"; the burst came onto the {rhythm.prewarmed} pre-warmed or held for it: no trend "
                   f"extrapolation (asks {asks:.1f} now)")

    if may_be_zero and current > 0 and demand == 0 and recommended <= current:
        # Idle for scaleToZeroAfter: to zero whatever the sizing rules would keep (the
        # throughput estimate may still say one replica's worth of capacity is "needed").
        desired, reason = 0, Reason.SCALE_TO_ZERO
        why = f"; no demand for {idle_for:.0f}s"
    elif wanted > current:
        bound = max(_ceil(current * spec.scale_up_max_factor), current + spec.scale_up_max_add)
        desired = min(wanted, bound)
        reason = Reason.ACTIVATE_FROM_ZERO if current == 0 else Reason.SCALE_UP
        if wanted > recommended and rhythm.expected_at is not None:
            why = (f"; pre-warming {wanted} for the burst expected in {rhythm.expected_at - now:.0f}s "
                   f"(bursts came back after at least {min(rhythm.gaps):.0f}s of quiet)")
        if desired < wanted:
            why += f"; scale-up bounded to {desired} this step"
    elif wanted == current:
        desired, reason = current, Reason.HOLD
    else:
        goal = max(r for _, r in recs)
        if factor > 1 and not rhythm.on:
            # Between bursts a lengthened window holds what the bursts needed once served, not
            # what their ramps asked for a cold start ahead (the trend); the burst it is held
            # for gets no trend either (``_burst_rhythm``: a held fleet counts as pre-warmed).
            goal = max(recommended, max(r for _, r in sustained_recs))
        reason = Reason.SCALE_DOWN
        why = f"; highest recommendation in the {window:.0f}s window {goal}"
        if factor > 1:
            why += f" (scaleDownDelay ×{factor:g} after a scale-down was undone)"
        if rhythm.release_since is not None or rhythm.prewarm is not None:
            # Between bursts: what the quiet asks (over the last two scale-down periods, as the
            # demand estimate settles after the burst), or the burst's fleet once it is pre-warmed.
            since = max(rhythm.ended_at or now, now - 2 * spec.scale_down_period)
            quiet = max(r for t, r in recs if t >= since)
            if release_now is not None:
                quiet = min(quiet, release_now)
            goal = max(quiet, rhythm.prewarm or 0)
            if rhythm.prewarm is None and rhythm.prewarm_at is not None:
                why = (f"; between bursts: down to what the quiet asks, {goal}, until pre-warming "
                       f"in {rhythm.prewarm_at - now:.0f}s")
            elif rhythm.expected_at is not None:
                why = (f"; keeping {goal} for the burst expected in "
                       f"{max(0.0, rhythm.expected_at - now):.0f}s")
        target_cost = spec.target_usd_per_million_tokens
        if (target_cost is not None and price > 0 and waiting == 0 and held_requests == 0
                and usd_mtok is not None and tok_s is not None and usd_mtok > target_cost):
            for_target = math.floor(tok_s * 3600 / 1e6 * target_cost / price + _EPS)
            cost_goal = max(recommended, for_target, _ceil(running / conc))
            if cost_goal < goal:
                goal, reason = cost_goal, Reason.TARGET_COST
                why = (f"; ${usd_mtok:.3f}/Mtok above the target ${target_cost:.3f}, idle queue: "
                       f"towards {cost_goal}")
        if goal >= current:
            desired, reason = current, Reason.HOLD
        elif last_down is not None and now - last_down < spec.scale_down_period:
            desired, reason = current, Reason.HOLD
            why += f"; next scale-down in {spec.scale_down_period - (now - last_down):.0f}s"
        else:
            step = max(spec.scale_down_min_step,
                       math.floor(current * spec.scale_down_max_percent / 100 + _EPS))
            desired = max(goal, current - step)

    # Limits: min (or the scale-to-zero floor), max, then the budget, which wins over min.
    if desired < floor:
        desired, reason = floor, Reason.MIN_REPLICAS
        why = f"; floor {floor}"
        if current == 0 and spec.min_replicas == 0:
            reason = Reason.ACTIVATE_FROM_ZERO
    if desired > spec.max_replicas or (recommended > spec.max_replicas and desired >= spec.max_replicas):
        desired, reason = spec.max_replicas, Reason.MAX_REPLICAS
        why = f"; maxReplicas {spec.max_replicas}"
    cap = spec.budget_replicas
    if cap is not None and (desired > cap or (recommended > cap and desired >= cap)):
        desired, reason = cap, Reason.BUDGET_CAP
        why = (f"; maxHourlyUSD ${spec.max_hourly_usd:g} pays for {cap} replicas at "
               f"${price:.2f}/replica-hour")
        if cap < spec.min_replicas:
            why += f", below minReplicas {spec.min_replicas}"
    if desired == current and reason in (Reason.SCALE_UP, Reason.SCALE_DOWN, Reason.TARGET_COST):
        reason = Reason.HOLD
    if desired < current and (down_from is None or state.last_scale_at != last_down):
        down_from = current  # a scale-down episode starts (the last change was not a scale-down)

    new_state = PolicyState(
        recommendations=recs,
        last_desired=desired,
        last_scale_at=now if desired != current else state.last_scale_at,
        last_scale_down_at=now if desired < current else last_down,
        idle_since=idle_since,
        tokens=tokens,
        throughput=tp_state,
        window_factor=factor,
        window_changed_at=factor_at,
        scaled_down_from=down_from,
        burst_on=rhythm.on,
        burst_peak=rhythm.peak,
        burst_ended_at=rhythm.ended_at,
        quiet_gaps=rhythm.gaps,
        release_recs=release_recs,
        prewarmed=rhythm.prewarm or 0,
        burst_prewarmed=rhythm.prewarmed,
        ready_pods=state.ready_pods,
        cold_starts=state.cold_starts,
        sustained_recs=sustained_recs,
        objective=feedback.state if feedback is not None else state.objective,
    )
    if estimate is not None and estimate.demand is not None:
        sizing = (f"work demand {estimate.demand:.2f} engine-s/s + backlog {estimate.backlog:.1f} engine-s "
                  f"over replica capacity {estimate.capacity:.2f} at {spec.target_utilization:.0%}")
    else:
        sizing = (f"per-replica target {target:g} (capacity {capacity:g} + queue "
                  f"{spec.target_queue_depth:g})")
    message = (f"{current}→{desired} ({reason.value}): demand {demand:g} (waiting {waiting:g}, running "
               f"{running:g}, held {held_requests}) on {n_ready} ready + {n_starting} starting; "
               f"{sizing}; KV mean {kv_mean:.2f}; recommends {recommended}{why}")
    inputs = {"demand": demand, "waiting": waiting, "running": running, "kvCacheMean": kv_mean,
              "perReplicaTarget": target, "capacity": capacity, "idleSeconds": idle_for,
              "scaleDownWindowSeconds": window, "coldStartSeconds": cold_start,
              "lookAheadSeconds": spec.scale_up_lead}
    if estimate is not None and estimate.demand is not None:
        inputs.update(workDemand=estimate.demand, workBacklog=estimate.backlog,
                      replicaWorkCapacity=estimate.capacity)
    if feedback is not None and spec.objective is not None:
        inputs.update(capacityFactor=feedback.factor)
        if feedback.attainment is not None:
            inputs.update(attainment=feedback.attainment)
        met = ("no latency measured" if feedback.attainment is None else
               f"{100 * feedback.attainment:.1f}% of {feedback.requests} requests within "
               f"{spec.objective.ttft:g}s ({feedback.source}), objective {spec.objective.percentile:g}%")
        message += f"; objective: {met}, capacity ×{feedback.factor:.2f}"
        if feedback.note:
            message += f" ({feedback.note})"
    return Decision(
        desired_replicas=desired, reason=reason, message=message, state=new_state,
        recommended=recommended, demand=demand, waiting=waiting, running=running,
        ready=n_ready, starting=n_starting, activator_pending=held_requests,
        hourly_usd=current * price, desired_hourly_usd=desired * price, tokens_per_second=tok_s,
        usd_per_million_tokens=usd_mtok,
        inputs=inputs, cold_start_seconds=cold_start, objective=feedback, replica_capacity=replica_capacity,
    )


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration like ``"30s"``, ``"5m"``, ``"1h30m"`` (a bare number is seconds)."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must be >= 0, got {value}")
        return float(value)
    return durations.seconds(value.strip())


def policy_spec_from_scaling(scaling: ScalingSpec, *, usd_per_replica_hour: float,
                             replica_concurrency: int = 256, **tunables: Any) -> PolicySpec:
    """A ``PolicySpec`` from the parsed ``spec.scaling`` (defaults already applied by the API model).

    ``usd_per_replica_hour`` comes from the plan (``cost.replica_hourly_usd``) and
    ``replica_concurrency`` from ``spec.engine.maxNumSeqs`` (vLLM's default 256 when unset).
    """
    cost_spec = scaling.cost
    to_zero = scaling.scale_to_zero_after
    goal = scaling.objective
    objective = None if goal is None else obj.ObjectiveSpec(
        ttft=durations.seconds(goal.ttft), percentile=float(goal.percentile),
        tpot=None if goal.tpot is None else durations.seconds(goal.tpot))
    return PolicySpec(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_queue_depth=float(scaling.target_queue_depth),
        scale_down_delay=durations.seconds(scaling.scale_down_delay),
        scale_to_zero_after=None if to_zero is None else durations.seconds(to_zero),
        max_hourly_usd=cost_spec.max_hourly_usd if cost_spec is not None else None,
        target_usd_per_million_tokens=(cost_spec.target_usd_per_million_tokens
                                       if cost_spec is not None else None),
        usd_per_replica_hour=usd_per_replica_hour,
        replica_concurrency=replica_concurrency,
        objective=objective,
        **tunables,
    )

"""The latency objective's feedback: measured attainment corrects the per-replica capacity.

Pure; ``policy.decide`` calls ``observe`` once per decision when ``spec.scaling.objective`` is set.

- **Attainment**: the share of requests whose time to first token (and, when the objective has
  one, time per output token) is within the objective, from cumulative Prometheus histograms: the
  gateway's ``modelplane_gateway_ttft_seconds`` when the operator reads a gateway (what clients
  see, a wait at zero replicas included), else the sum of the pods'
  ``vllm:time_to_first_token_seconds`` (and ``vllm:request_time_per_output_token_seconds``). The
  count within a bound that is not a bucket edge is interpolated linearly inside its bucket, as
  Prometheus' ``histogram_quantile`` does. Attainment is over the last ``window`` seconds.
- **Feedback**: the policy sizes the fleet for ``capacity × factor`` per replica. Each time at least
  ``min_requests`` requests were measured while the fleet was settled (no replica starting and no
  request held: misses during a scale-up are the cold start's, not the capacity's), and at least
  ``min_interval`` seconds after its last move (the fleet needs that long to follow it), the
  factor moves once and the count starts afresh:

  - attainment below the percentile: ``factor × max(min_step, sqrt((1 − p) / (1 − attainment)))``,
    a larger cut for a larger miss;
  - attainment at least ``1 − (1 − p) × slack`` (comfortably met) *and* the fleet ran at least
    ``loaded`` of the load it is sized for *and* the window's attainment (scale-ups included) meets
    the objective: ``factor × (1 + raise_step)``. A fleet that meets the
    objective only because traffic is light says nothing about its capacity, so it does not raise;
  - in between: no change (the dead band keeps a noisy measurement from moving it);
  - below the percentile with the fleet at ``maxReplicas`` or the budget: no cut (it buys nothing).

  The load per replica at which the objective was missed (relative to the configured capacity) is
  remembered as a ceiling, one raise step below it, for ``ceiling_memory`` seconds: raises stop
  there instead of probing the same miss at every cycle.

  A cut after which the fleet grew but attainment did not rise by ``min_gain`` is undone, and no
  cut follows until the objective is met again: misses that more replicas do not remove (spikes
  within a second, prompts longer than the objective allows) are not bought off with idle
  replicas.

  The factor stays within [``min_factor``, ``max_factor``]. With no histogram (no signal) or too
  few requests it holds, and the policy sizes as without an objective times the last factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

#: Cumulative histogram buckets: (upper bound ``le``, count), ascending, ending with ``+Inf``.
Buckets = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class ObjectiveSpec:
    ttft: float  #: seconds
    percentile: float = 95.0  #: share of requests, in percent, that must be within the objective
    tpot: float | None = None  #: seconds per output token; None: not part of the objective
    window: float = 300.0  #: attainment reported over this many seconds
    min_requests: int = 50  #: requests measured (settled) before the factor moves
    min_interval: float = 120.0  #: seconds between two moves of the factor
    min_step: float = 0.8  #: the largest cut in one step
    raise_step: float = 0.05  #: the raise in one step
    slack: float = 0.5  #: comfortably met: misses at most this share of the allowed ones
    loaded: float = 0.7  #: ... and the fleet ran at least this share of the load it is sized for
    min_factor: float = 0.2
    max_factor: float = 1.0
    min_gain: float = 0.01  #: a cut must raise attainment by this much (a share) to be kept
    ceiling_memory: float = 1800.0  #: seconds a factor that missed caps the raises

    def __post_init__(self) -> None:
        if not self.ttft > 0 or (self.tpot is not None and not self.tpot > 0):
            raise ValueError("objective ttft and tpot must be > 0")
        if not 50 <= self.percentile < 100:
            raise ValueError(f"objective percentile must be in [50, 100), got {self.percentile}")
        if not 0 < self.min_factor <= 1 <= self.max_factor or self.min_requests < 1 or self.window <= 0:
            raise ValueError("need 0 < min_factor <= 1 <= max_factor, min_requests >= 1, window > 0")

    @property
    def target(self) -> float:
        return self.percentile / 100.0


@dataclass(frozen=True)
class Reading:
    """One source's histograms now (cumulative): TTFT, and time per output token when scraped."""

    ttft: Buckets
    tpot: Buckets | None = None


@dataclass(frozen=True)
class ObjectiveState:
    #: The last cumulative (within, total) per source and histogram, to take increases from.
    last: tuple[tuple[str, float, float], ...] = ()
    #: (time, within, total) increases within ``window``: the attainment reported.
    recent: tuple[tuple[float, float, float], ...] = ()
    #: Settled increases since the factor last moved: within, total, and the load they came with.
    settled_within: float = 0.0
    settled_total: float = 0.0
    load_sum: float = 0.0
    load_samples: int = 0
    factor: float = 1.0
    adjustments: int = 0
    #: The last cut: (factor before it, attainment that asked for it, ready replicas then); None
    #: after a raise or a hold.
    last_cut: tuple[float, float, int] | None = None
    #: A cut bought nothing: no further cut until the objective is met again.
    futile: bool = False
    #: When the factor last moved (None: never).
    moved_at: float | None = None
    #: Raises stop at this factor (one step below the last that missed) until ``ceiling_until``.
    ceiling: float | None = None
    ceiling_until: float = 0.0


@dataclass(frozen=True)
class Feedback:
    attainment: float | None  #: over ``window``; None: nothing measured in it (no signal)
    requests: int  #: requests measured in the window
    factor: float  #: the correction of the per-replica capacity, after this observation
    source: str | None  #: "gateway", "pods" or None (no histogram)
    state: ObjectiveState = field(default_factory=ObjectiveState)
    note: str = ""
    target: float = 0.95  #: the objective's percentile as a share

    @property
    def met(self) -> bool | None:
        return None if self.attainment is None else self.attainment >= self.target


def within(buckets: Buckets, bound: float) -> float:
    """Observations ``<= bound`` in cumulative ``buckets``, interpolated inside a bucket."""
    below_le, below = 0.0, 0.0
    for le, count in buckets:
        if le >= bound:
            if math.isinf(le):
                return below
            if le <= below_le:
                return count
            return below + (count - below) * (bound - below_le) / (le - below_le)
        below_le, below = le, max(below, count)
    return below


def total(buckets: Buckets) -> float:
    return max((count for _, count in buckets), default=0.0)


def _counts(spec: ObjectiveSpec, reading: Reading) -> list[tuple[str, float, float]]:
    out = [("ttft", within(reading.ttft, spec.ttft), total(reading.ttft))]
    if spec.tpot is not None and reading.tpot is not None:
        out.append(("tpot", within(reading.tpot, spec.tpot), total(reading.tpot)))
    return out


def observe(spec: ObjectiveSpec, state: ObjectiveState, *, now: float, readings: Mapping[str, Reading],
            source: str | None, settled: bool, load: float | None, replicas: int = 0,
            can_grow: bool = True) -> Feedback:
    """Take the histograms' increases since the last call and move the factor (module docstring).

    ``readings``: the source's histograms by name (a pod, or a gateway replica's URL). ``settled``:
    no replica starting and nothing held. ``load``: the fleet's load over what it is sized for now
    (1.0: exactly the sized load), None when unknown. ``replicas``: ready replicas now (a cut is
    judged only once the fleet grew after it). ``can_grow``: False at ``maxReplicas`` or the
    budget, where a cut buys nothing: none is made.
    """
    before = {(name, kind): (w, t) for name, kind_w_t in _group(state.last) for kind, w, t in kind_w_t}
    last: list[tuple[str, float, float]] = []
    inc_within = inc_total = 0.0
    for name, reading in sorted(readings.items()):
        worst: tuple[float, float] | None = None
        for kind, w, t in _counts(spec, reading):
            last.append((f"{name}\x00{kind}", w, t))
            old = before.get((name, kind))
            dw, dt = (w, t) if old is None or t < old[1] else (w - old[0], t - old[1])
            dw = min(max(dw, 0.0), dt)
            # A request meets the objective only within both bounds: count the worse of the two.
            if worst is None or (dt > 0 and dw / dt < worst[0] / max(worst[1], 1e-9)):
                worst = (dw, dt)
        if worst is not None:
            inc_within += worst[0]
            inc_total += worst[1]
    recent = tuple(s for s in state.recent if s[0] > now - spec.window)
    if inc_total > 0:
        recent += ((now, inc_within, inc_total),)
    n = sum(t for _, _, t in recent)
    attainment = sum(w for _, w, _ in recent) / n if n > 0 else None
    new = _with(replace(state, last=tuple(last), recent=recent), state.settled_within,
                state.settled_total, state.load_sum, state.load_samples)
    if source is None:
        return Feedback(None, 0, state.factor, None, new, "no latency histogram: capacity not corrected",
                        spec.target)
    if not settled or inc_total <= 0:
        return Feedback(attainment, int(n), state.factor, source, new, target=spec.target)
    s_within, s_total = new.settled_within + inc_within, new.settled_total + inc_total
    load_sum = new.load_sum + (load if load is not None else 0.0)
    load_samples = new.load_samples + (1 if load is not None else 0)
    too_soon = state.moved_at is not None and now - state.moved_at < spec.min_interval
    if s_total < spec.min_requests or too_soon:
        return Feedback(attainment, int(n), state.factor, source,
                        _with(new, s_within, s_total, load_sum, load_samples), target=spec.target)
    got = s_within / s_total
    factor, note, last_cut, futile = state.factor, "", None, state.futile
    ceiling = state.ceiling if state.ceiling is not None and now < state.ceiling_until else None
    ceiling_until = state.ceiling_until
    allowed = 1 - spec.target
    mean_load = load_sum / load_samples if load_samples else None
    cut = state.last_cut
    if got < spec.target and cut is not None and replicas > cut[2] and got < cut[1] + spec.min_gain:
        factor, futile, ceiling = cut[0], True, None  # the misses were not the load's
        note = (f"{100 * got:.1f}% within the objective, no better after the last cut: undone; "
                f"more replicas do not remove these misses")
    elif got < spec.target and not can_grow:
        note = f"{100 * got:.1f}% within the objective, and the fleet is at its limit"
    elif got < spec.target and not futile:
        factor = state.factor * max(spec.min_step, math.sqrt(allowed / max(1 - got, 1e-9)))
        carried = state.factor * (mean_load if mean_load is not None else 1.0)
        ceiling = min(ceiling or math.inf, max(factor, carried / (1 + spec.raise_step)))
        ceiling_until = now + spec.ceiling_memory
        # A cut the fleet has not followed yet is judged later, from the first one.
        last_cut = cut if cut is not None and replicas <= cut[2] else (state.factor, got, replicas)
        note = f"{100 * got:.1f}% within the objective, below {spec.percentile:g}%: less per replica"
    elif got >= spec.target:
        futile = False
        if (1 - got <= allowed * spec.slack and mean_load is not None and mean_load >= spec.loaded
                and (ceiling is None or state.factor < ceiling)
                and (attainment is None or attainment >= spec.target)):
            factor = min(state.factor * (1 + spec.raise_step), ceiling or math.inf)
            note = (f"{100 * got:.1f}% within the objective at {100 * mean_load:.0f}% of the sized load: "
                    f"more per replica")
    factor = min(spec.max_factor, max(spec.min_factor, factor))
    moved = ObjectiveState(last=new.last, recent=new.recent, factor=factor,
                           adjustments=state.adjustments + (factor != state.factor),
                           last_cut=last_cut if factor != state.factor else state.last_cut, futile=futile,
                           ceiling=ceiling, ceiling_until=ceiling_until,
                           moved_at=now if factor != state.factor else state.moved_at)
    return Feedback(attainment, int(n), factor, source, moved, note, spec.target)


def _with(state: ObjectiveState, w: float, t: float, load_sum: float, samples: int) -> ObjectiveState:
    return replace(state, settled_within=w, settled_total=t, load_sum=load_sum, load_samples=samples)


def _group(last: Sequence[tuple[str, float, float]]) -> list[tuple[str, list[tuple[str, float, float]]]]:
    out: dict[str, list[tuple[str, float, float]]] = {}
    for key, w, t in last:
        name, _, kind = key.partition("\x00")
        out.setdefault(name, []).append((kind, w, t))
    return list(out.items())

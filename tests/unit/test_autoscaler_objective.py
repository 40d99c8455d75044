"""The latency objective's feedback (modelplane.autoscaler.objective) and its use by the policy."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from modelplane.api.models import ScalingSpec
from modelplane.autoscaler import objective as obj
from modelplane.autoscaler.policy import (
    Observation,
    PodMetrics,
    PolicySpec,
    PolicyState,
    ReadyPod,
    decide,
    policy_spec_from_scaling,
)

INF = math.inf
EDGES = (0.5, 1.0, 2.0, 2.5, 5.0)


def buckets(latencies: list[float]) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets of ``latencies`` on ``EDGES`` and +Inf."""
    return tuple((le, float(sum(1 for x in latencies if x <= le))) for le in (*EDGES, INF))


@pytest.mark.parametrize(("bound", "want"), [
    (1.0, 10.0),  # an edge: exact
    (2.0, 14.0),
    (1.5, 12.0),  # halfway through (1, 2]: half of its 4
    (0.25, 2.5),  # inside the first bucket, which starts at 0
    (100.0, 20.0),  # beyond the last finite edge: what is below it (the +Inf ones are not within)
], ids=["edge", "edge-2", "interpolated", "first-bucket", "past-the-edges"])
def test_within_counts_and_interpolates(bound: float, want: float) -> None:
    histogram = ((0.5, 5.0), (1.0, 10.0), (2.0, 14.0), (5.0, 20.0), (INF, 22.0))
    assert obj.within(histogram, bound) == pytest.approx(want)


#: Raises above the profile allowed (``max_factor`` 1.5; the default, 1, never raises above it).
SPEC = obj.ObjectiveSpec(ttft=2.0, percentile=95.0, min_requests=50, min_interval=0.0, max_factor=1.5)


def _run(spec: obj.ObjectiveSpec, steps: Sequence[tuple[list[float], bool, float | None]],
         source: str | None = "pods") -> tuple[obj.Feedback, list[float]]:
    """Feed ``steps`` (new latencies, settled, load) to ``observe``; the last feedback and factors."""
    state, seen, factors = obj.ObjectiveState(), [], []
    fb = None
    for t, (latencies, settled, load) in enumerate(steps):
        seen += latencies
        readings = {"p": obj.Reading(ttft=buckets(seen))} if source is not None else {}
        # The fleet grows by one every step (so a cut can be judged at the next evaluation).
        fb = obj.observe(spec, state, now=float(5 * t), readings=readings, source=source,
                         settled=settled, load=load, replicas=t)
        state = fb.state
        factors.append(fb.factor)
    assert fb is not None
    return fb, factors


FAST, SLOW = [0.8] * 20, [3.0] * 20


@pytest.mark.parametrize(("case", "steps", "check"), [
    ("met at the sized load: more per replica",
     [(FAST, True, 0.9)] * 3, lambda f: f[-1] == pytest.approx(1.05) and f[:2] == [1.0, 1.0]),
    ("met only because traffic is light: no change",
     [(FAST, True, 0.3)] * 6, lambda f: set(f) == {1.0}),
    ("missed: less per replica, at most 20% in one step",
     [(FAST[:10] + SLOW[:10], True, 1.0)] * 3, lambda f: f[-1] == pytest.approx(0.8)),
    ("missed by less: a smaller cut",
     [([0.8] * 47 + [3.0] * 3, True, 1.0)], lambda f: f[-1] == pytest.approx(math.sqrt(0.05 / 0.06))),
    ("in the dead band: no change",
     [(FAST[:19] + SLOW[:1], True, 1.0)] * 3 + [(FAST[:19] + SLOW[:1], True, 1.0)] * 2,
     lambda f: f[-1] == pytest.approx(1.0)),
    ("misses while replicas start are the cold start's: no cut",
     [(SLOW, False, 1.0)] * 6, lambda f: set(f) == {1.0}),
    ("too few requests: no change yet",
     [(SLOW[:10], True, 1.0)] * 4, lambda f: set(f) == {1.0}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_feedback_moves_the_factor(case: str, steps: list[tuple[list[float], bool, float | None]],
                                   check: Callable[[list[float]], bool]) -> None:
    _, factors = _run(SPEC, steps)
    assert check(factors), factors


def test_by_default_the_factor_does_not_go_above_the_profile() -> None:
    _, factors = _run(replace(SPEC, max_factor=1.0), [(FAST, True, 0.9)] * 9)
    assert set(factors) == {1.0}
    # After a cut it comes back up, to one step below the load that missed (the ceiling).
    _, factors = _run(replace(SPEC, max_factor=1.0),
                      [(FAST[:10] + SLOW[:10], True, 1.0)] * 3 + [(FAST, True, 0.9)] * 120)
    assert min(factors) == pytest.approx(0.8) and factors[-1] == pytest.approx(1 / 1.05)


def test_a_cut_that_buys_nothing_is_undone_and_not_repeated() -> None:
    # Half the requests miss whatever the fleet: the first cut is tried, then undone, then no more.
    steps = [(FAST[:10] + SLOW[:10], True, 1.0)] * 3 * 5
    fb, factors = _run(SPEC, steps)
    assert min(factors) == pytest.approx(0.8) and factors[-1] == pytest.approx(1.0)
    assert fb.state.futile and "undone" in _run(SPEC, steps[:6])[0].note
    # Met again: cuts are allowed again.
    fb2, _ = _run(SPEC, steps + [(FAST, True, 0.5)] * 3)
    assert not fb2.state.futile


def test_a_cut_the_fleet_has_not_followed_is_not_judged() -> None:
    # The same misses, but the fleet never grows (a cut too small to add a replica): cut again.
    state, seen, factors = obj.ObjectiveState(), [], []
    for t in range(15):
        seen += FAST[:10] + SLOW[:10]
        fb = obj.observe(SPEC, state, now=5.0 * t, readings={"p": obj.Reading(buckets(seen))},
                         source="pods", settled=True, load=1.0, replicas=3)
        state = fb.state
        factors.append(fb.factor)
    assert factors[-1] == pytest.approx(0.8 ** 5) and not state.futile


def test_no_cut_at_the_fleets_limit() -> None:
    seen: list[float] = []
    state = obj.ObjectiveState()
    for t in range(6):
        seen += FAST[:10] + SLOW[:10]
        fb = obj.observe(SPEC, state, now=5.0 * t, readings={"p": obj.Reading(buckets(seen))},
                         source="pods", settled=True, load=1.0, replicas=4, can_grow=False)
        state = fb.state
    assert fb.factor == 1.0 and "at its limit" in fb.note


def test_the_factor_moves_at_most_once_per_min_interval() -> None:
    spec = replace(SPEC, min_interval=60.0)
    _, factors = _run(spec, [(FAST[:10] + SLOW[:10], True, 1.0)] * 30)  # a step every 5 s
    moves = [k for k in range(1, len(factors)) if factors[k] != factors[k - 1]]
    assert factors[2] == pytest.approx(0.8) and moves[0] == 2
    assert all(b - a >= 12 for a, b in zip(moves, moves[1:], strict=False)), moves


def test_no_signal_holds_and_says_so() -> None:
    fb, factors = _run(SPEC, [([], True, 1.0)] * 4, source=None)
    assert fb.attainment is None and fb.met is None and set(factors) == {1.0}
    assert "no latency histogram" in fb.note


def test_attainment_is_over_the_window_and_counters_that_reset_restart() -> None:
    spec = obj.ObjectiveSpec(ttft=2.0, window=10.0)
    state = obj.ObjectiveState()
    fb = obj.observe(spec, state, now=0.0, readings={"p": obj.Reading(buckets(SLOW))}, source="pods",
                     settled=True, load=1.0)
    fb = obj.observe(spec, fb.state, now=5.0, readings={"p": obj.Reading(buckets(SLOW + FAST))},
                     source="pods", settled=True, load=1.0)
    assert fb.attainment == pytest.approx(0.5) and fb.requests == 40
    # 11 s later the first reading left the window; the pod restarted (its counter went down).
    fb = obj.observe(spec, fb.state, now=16.0, readings={"p": obj.Reading(buckets(FAST[:10]))},
                     source="pods", settled=True, load=1.0)
    assert fb.attainment == pytest.approx(1.0) and fb.requests == 10


def test_tpot_counts_a_request_within_only_when_both_are_met() -> None:
    spec = obj.ObjectiveSpec(ttft=2.0, tpot=0.05, min_requests=1000)
    reading = obj.Reading(ttft=buckets(FAST), tpot=((0.025, 5.0), (0.05, 10.0), (INF, 20.0)))
    fb = obj.observe(spec, obj.ObjectiveState(), now=0.0, readings={"p": reading}, source="pods",
                     settled=True, load=1.0)
    assert fb.attainment == pytest.approx(0.5)  # all within TTFT, half within TPOT


@pytest.mark.parametrize("kwargs", [
    {"ttft": 0.0}, {"ttft": 2.0, "percentile": 100.0}, {"ttft": 2.0, "tpot": -1.0},
    {"ttft": 2.0, "min_factor": 1.5},
], ids=["ttft-zero", "percentile-100", "tpot-negative", "min-factor-above-1"])
def test_objective_spec_refuses(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        obj.ObjectiveSpec(**kwargs)  # type: ignore[arg-type]


# --- the policy with an objective: a replica model whose TTFT depends on its load --------------

Step = tuple[int, float | None, float]


def _world(*, slow: float | Callable[[int], float], steps: int, demand: Callable[[int], float],
           spec: PolicySpec, noise: float = 0.0, histograms: bool = True, seed: int = 5) -> list[Step]:
    """A fleet under in-flight ``demand(t)`` whose replicas are ``slow`` times slower than the
    configured concurrency says: a replica keeps TTFT within 2 s up to ``32 / slow`` requests in
    flight, and misses the share beyond it. Each step adds 100 requests to the pods' histograms.
    Returns (replicas, attainment, factor) per step."""
    rng = random.Random(seed)

    def good(t: int) -> float:
        return 32 / (slow(t) if callable(slow) else slow)
    replicas, seen, state, out = 2, [0.0, 0.0], PolicyState(), []
    for t in range(steps):
        now = 10.0 * t
        load = demand(t)
        per = load / replicas
        share = 1.0 if per <= good(t) else good(t) / per
        share = min(1.0, max(0.0, share + rng.uniform(-noise, noise)))
        seen = [seen[0] + 100 * share, seen[1] + 100]
        hist = ((2.0, seen[0]), (INF, seen[1])) if histograms else None
        waiting = max(0.0, load - 32 * replicas)
        pods = tuple(ReadyPod(f"p{i}", PodMetrics(waiting / replicas, min(32.0, per), 0.3, 1000.0 * t, now,
                                                  ttft_buckets=hist if i == 0 else None))
                     for i in range(replicas))
        d = decide(Observation(now=now, current_replicas=replicas, ready=pods), spec, state)
        state = d.state
        replicas = d.desired_replicas
        fb = d.objective
        out.append((replicas, fb.attainment if fb else None, fb.factor if fb else 1.0))
    return out


BASE = PolicySpec(min_replicas=1, max_replicas=40, target_queue_depth=0.0, replica_concurrency=32,
                  scale_down_delay=60.0, scale_down_period=10.0)
#: A step is 10 s and replicas are Ready at once here: the factor may move every other step.
WITH = PolicySpec(**{**BASE.__dict__,
                     "objective": obj.ObjectiveSpec(ttft=2.0, percentile=95.0, min_interval=20.0)})


@pytest.mark.parametrize(("case", "kwargs", "check"), [
    ("model 2x slower than configured: the objective is met by learning half the capacity",
     {"slow": 2.0, "steps": 80, "demand": lambda t: 96.0},
     lambda out: out[-1][1] is not None and out[-1][1] >= 0.95 and 0.5 <= out[-1][2] <= 0.6
     and out[-1][0] == 6 and all(r == 6 for r, _, _ in out[-40:])),
    ("model as configured: the fleet stays where the queue rule puts it",
     {"slow": 1.0, "steps": 60, "demand": lambda t: 96.0},
     lambda out: out[-1][0] <= 4 and out[-1][1] == pytest.approx(1.0)),
    ("prompt mix shifts to longer prompts: the factor follows it down",
     {"slow": lambda t: 1.0 if t < 40 else 2.0, "steps": 120, "demand": lambda t: 96.0},
     lambda out: out[39][0] == 3 and out[-1][1] is not None and out[-1][1] >= 0.95
     and all(r == 6 for r, _, _ in out[-40:])),
    ("noisy signal: still met, no oscillation to the floor",
     {"slow": 2.0, "steps": 100, "demand": lambda t: 96.0, "noise": 0.03},
     lambda out: out[-1][1] is not None and out[-1][1] >= 0.93 and out[-1][2] >= 0.35),
    ("no signal: sized as without an objective",
     {"slow": 2.0, "steps": 40, "demand": lambda t: 96.0, "histograms": False},
     lambda out: out[-1][1] is None and out[-1][2] == 1.0 and out[-1][0] == 3),
], ids=lambda v: v if isinstance(v, str) else "")
def test_policy_meets_the_objective(case: str, kwargs: dict[str, object],
                                    check: Callable[[list[tuple[int, float | None, float]]], bool]) -> None:
    out = _world(spec=WITH, **kwargs)  # type: ignore[arg-type]
    assert check(out), out[-5:]


def test_without_an_objective_a_slow_model_misses() -> None:
    out = _world(spec=BASE, slow=2.0, steps=60, demand=lambda t: 96.0)
    assert out[-1][0] == 3 and out[-1][1] is None  # the queue rule alone: 3 replicas, not measured


def test_policy_spec_from_scaling_reads_the_objective() -> None:
    scaling = ScalingSpec.model_validate({"objective": {"ttft": "1500ms", "percentile": 99, "tpot": "50ms"}})
    spec = policy_spec_from_scaling(scaling, usd_per_replica_hour=1.0)
    assert spec.objective == obj.ObjectiveSpec(ttft=1.5, percentile=99.0, tpot=0.05)
    assert policy_spec_from_scaling(ScalingSpec(), usd_per_replica_hour=1.0).objective is None


def test_the_gateway_is_preferred_over_the_pods() -> None:
    pods_hist = buckets(SLOW)
    gateway = buckets(FAST)
    obs = Observation(now=0.0, current_replicas=1, ready=(
        ReadyPod("p", PodMetrics(0, 1, 0.1, 1.0, 0.0, ttft_buckets=pods_hist)),),
        gateway_ttft=(("http://gw:9090", gateway),))
    d = decide(obs, WITH, PolicyState())
    assert d.objective is not None and d.objective.source == "gateway" and d.objective.attainment == 1.0
    d = decide(Observation(now=0.0, current_replicas=1, ready=obs.ready), WITH, PolicyState())
    assert d.objective is not None and d.objective.source == "pods" and d.objective.attainment == 0.0

"""Table tests of throughput sizing: work from token counters, learned capacity, trend, backlog."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from modelplane.autoscaler.policy import (
    Decision,
    Observation,
    PodMetrics,
    PolicySpec,
    PolicyState,
    ReadyPod,
    Reason,
    StartingPod,
    _burst_rhythm,
    decide,
)
from modelplane.autoscaler.throughput import PodCounters, ThroughputSpec, ThroughputState, estimate

# 1,000 prompt tokens/s and 100 generated tokens/s are one engine-second each.
SPEC = ThroughputSpec(prefill_tokens_per_second=1000.0, decode_tokens_per_second=100.0,
                      target_utilization=0.8, backlog_horizon=50.0)


@dataclass(frozen=True)
class Tick:
    #: per pod, the increase over 10 s of (prompt tokens, generated tokens, started requests), waiting
    pods: tuple[tuple[float, float, float, float], ...]
    held: float = 0.0
    starting: int = 0


def _play(ticks: tuple[Tick, ...], spec: ThroughputSpec = SPEC) -> list[int | None]:
    state = ThroughputState()
    totals: dict[str, list[float]] = {}
    out = []
    for k, tick in enumerate(ticks):
        pods = []
        for i, (prompt, gen, started, waiting) in enumerate(tick.pods):
            c = totals.setdefault(f"p{i}", [0.0, 0.0, 0.0])
            c[0] += prompt
            c[1] += gen
            c[2] += started
            pods.append(PodCounters(f"p{i}", c[1], c[0], c[2], waiting))
        est = estimate(spec, state, now=10.0 * k, pods=pods, held=tick.held, starting=tick.starting)
        state = est.state
        out.append(est.replicas)
    return out


# 0.4 engine-s/s: 2,000 prompt tokens (2 s) + 200 generated (2 s) in 10 s; 10 requests of 0.4 s each.
BUSY_40 = (2000.0, 200.0, 10.0, 0.0)
# Flat out with a queue: 1 engine-s/s.
FLAT_OUT = (5000.0, 500.0, 25.0, 20.0)

CASES = {
    "first sample only primes": ((Tick((BUSY_40,)),), [None]),
    "steady: 2 × 0.4 = 0.8 engine-s/s at 80% → 1 replica": (
        tuple(Tick((BUSY_40, BUSY_40)) for _ in range(4)), [None, 1, 1, 1]),
    "steady: 4 × 0.4 = 1.6 → 2 replicas, not the 4 running": (
        tuple(Tick((BUSY_40,) * 4) for _ in range(4)), [None, 2, 2, 2]),
    "saturated with a queue: demand + backlog asks for more": (
        tuple(Tick((FLAT_OUT, FLAT_OUT)) for _ in range(3)), [None, 3, 3]),
    "backlog left to starting pods": (
        (Tick((FLAT_OUT, FLAT_OUT)),) + tuple(Tick((FLAT_OUT, FLAT_OUT), starting=2) for _ in range(2)),
        [None, 3, 3]),
    # 100 requests held within 10 s: arrivals of 4.4 engine-s/s (smoothed to 2.4), a rise extrapolated
    # 90 s ahead (+2.4) and a backlog of 40 engine-s over 50 s (+0.8): 5.6 / 0.8 → 7.
    "held requests are arrivals and backlog": (
        (Tick((BUSY_40,)), Tick((BUSY_40,)), Tick((BUSY_40,), held=100.0)), [None, 1, 7]),
    "idle": (tuple(Tick(((0.0, 0.0, 0.0, 0.0),)) for _ in range(3)), [None, 0, 0]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_estimate_table(case: tuple[tuple[Tick, ...], list[int | None]]) -> None:
    ticks, want = case
    assert _play(ticks) == want


def test_saturation_teaches_the_capacity() -> None:
    # The profile is 2× too optimistic: flat out, a pod does only 0.5 engine-s/s by the prior's rates.
    state = ThroughputState()
    est = None
    for k in range(60):
        pods = [PodCounters("p0", 250.0 * k, 2500.0 * k, 12.5 * k, 20.0)]
        est = estimate(SPEC, state, now=10.0 * k, pods=pods, held=0.0)
        state = est.state
    assert est is not None
    assert est.capacity == pytest.approx(0.5, rel=0.02)
    assert est.state.capacity_samples == 59


def test_a_counter_reset_is_not_negative_work() -> None:
    state = estimate(SPEC, ThroughputState(), now=0.0, held=0.0,
                     pods=[PodCounters("p0", 1000.0, 10000.0, 50.0, 0.0)]).state
    est = estimate(SPEC, state, now=10.0, held=0.0, pods=[PodCounters("p0", 100.0, 1000.0, 5.0, 0.0)])
    assert est.demand == pytest.approx(0.2)  # (1000/1000 + 100/100) / 10 s: the restarted counters


def test_a_rising_ramp_is_sized_ahead() -> None:
    spec = ThroughputSpec(prefill_tokens_per_second=1000.0, decode_tokens_per_second=100.0,
                          target_utilization=1.0, lead_seconds=100.0)
    state = ThroughputState()
    flat = ramp = None
    for k in range(40):
        # Demand grows by 0.01 engine-s/s every second: tick k brings 0.1 × k engine-s/s × 10 s.
        total_work = 0.5 * k * (k + 1)  # cumulative engine-seconds
        pods = [PodCounters("p0", 100.0 * total_work, 0.0, 10.0 * k, 0.0)]
        est = estimate(spec, state, now=10.0 * k, pods=pods, held=0.0)
        state = est.state
        flat, ramp = est.demand, est.replicas
    assert flat is not None and ramp is not None
    # Without the lead it would ask for ceil(demand) replicas; the trend adds ~0.01 × 100 s.
    assert ramp > flat + 0.5


def _pod(name: str, waiting: float, running: float, *, gen: float, prompt: float, started: float,
         at: float) -> ReadyPod:
    return ReadyPod(name, PodMetrics(waiting, running, 0.1, gen, at, prompt_tokens=prompt,
                                     requests_started=started))


def test_policy_uses_throughput_when_the_profile_is_known() -> None:
    # 4 pods each running 20 of maxNumSeqs 32 at 0.4 engine-s/s: the in-flight rule (20 × 4 / 36 → 3)
    # and throughput (1.6 / 0.8 → 2) disagree; with the profile the throughput answer wins.
    spec = PolicySpec(max_replicas=8, replica_concurrency=32, scale_down_delay=0.0, scale_down_period=0.0,
                      prefill_tokens_per_second=1000.0, decode_tokens_per_second=100.0,
                      target_utilization=0.8)
    plain = PolicySpec(max_replicas=8, replica_concurrency=32, scale_down_delay=0.0, scale_down_period=0.0)
    answers = {}
    for name, s in (("throughput", spec), ("in-flight", plain)):
        state = PolicyState()
        for k in range(3):
            pods = tuple(_pod(f"p{i}", 0, 20, gen=200.0 * k, prompt=2000.0 * k, started=10.0 * k, at=10.0 * k)
                         for i in range(4))
            d = decide(Observation(now=10.0 * k, current_replicas=4, ready=pods), s, state)
            state = d.state
        answers[name] = (d.recommended, d.reason)
        if name == "throughput":
            assert d.inputs["workDemand"] == pytest.approx(1.6)
            assert "engine-s/s" in d.message
    assert answers == {"throughput": (2, Reason.SCALE_DOWN), "in-flight": (3, Reason.SCALE_DOWN)}


def test_policy_falls_back_without_counters() -> None:
    spec = PolicySpec(prefill_tokens_per_second=1000.0, decode_tokens_per_second=100.0)
    pods = (ReadyPod("p0", PodMetrics(0, 5, 0.1, 100, 0.0)),)
    d = decide(Observation(now=0.0, current_replicas=1, ready=pods,
                           starting=(StartingPod("s", 1.0),)), spec, PolicyState())
    assert d.state.throughput == ThroughputState()
    assert "per-replica target" in d.message


@pytest.mark.parametrize("kwargs", [
    {"prefill_tokens_per_second": 0.0}, {"decode_tokens_per_second": -1.0}, {"target_utilization": 0.0},
    {"target_utilization": 1.5}, {"backlog_horizon": 0.0},
], ids=["zero prefill", "negative decode", "zero utilization", "utilization over 1", "zero horizon"])
def test_spec_refuses(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PolicySpec(**kwargs)  # type: ignore[arg-type]


def _sized(demands: list[float], *, tolerance: float = 0.1) -> tuple[int, Reason, float]:
    """Four pods serving ``demands[k]`` engine-s/s in all during tick k (10 s); the last decision."""
    spec = PolicySpec(max_replicas=8, replica_concurrency=32, prefill_tokens_per_second=1000.0,
                      decode_tokens_per_second=100.0, target_utilization=1.0, scale_up_lead=10.0,
                      scale_up_tolerance=tolerance)
    state, gen = PolicyState(), 0.0
    for k, demand in enumerate(demands):
        gen += demand / 4 * 10 * 100  # each pod's generated tokens: its share of the work
        pods = tuple(_pod(f"p{i}", 0, 10, gen=gen, prompt=0.0, started=10.0 * k, at=10.0 * k)
                     for i in range(4))
        d = decide(Observation(now=10.0 * k, current_replicas=4, ready=pods), spec, state)
        state = d.state
    return d.recommended, d.reason, float(d.inputs["workDemand"])


@pytest.mark.parametrize(("demands", "tolerance", "want"), [
    ([4.3] * 12, 0.1, (4, Reason.HOLD)),          # 4.3 needed on 4: within 10%, noise
    ([4.3] * 12, 0.0, (5, Reason.SCALE_UP)),      # without a tolerance it rounds up
    ([4.6] * 12, 0.1, (5, Reason.SCALE_UP)),      # 15% over: demand, not noise
    ([2.0] * 8 + [3.0, 3.6, 4.0, 4.3], 0.1, (5, Reason.SCALE_UP)),  # rising: no tolerance
], ids=["within-tolerance-holds", "no-tolerance", "beyond-tolerance", "rising-trend"])
def test_scale_up_tolerance_applies_only_without_a_rising_trend(
        demands: list[float], tolerance: float, want: tuple[int, Reason]) -> None:
    recommended, reason, work = _sized(demands, tolerance=tolerance)
    assert (recommended, reason) == want, work


#: Burst rhythm with throughput sizing: a 60 s window already doubled by a regret, a 30 s cold start,
#: a decision every 5 s, bursts of 6 engine-s/s for 40 s with 100 s of 1 engine-s/s between them.
RHYTHM = PolicySpec(max_replicas=20, replica_concurrency=32, prefill_tokens_per_second=1000.0,
                    decode_tokens_per_second=100.0, target_utilization=1.0, scale_down_delay=60,
                    scale_up_lead=30, scale_down_period=10, rhythm_min_gaps=2, rhythm_gaps=4)
BURSTS = ((0, 40), (140, 180), (280, 320), (420, 460))


def _burst_run(until: int = 470, *, kv_between: float = 0.5, quiet: tuple[float, ...] = (1.0,),
               spec: PolicySpec = RHYTHM, bursts: tuple[tuple[int, int], ...] = BURSTS,
               last_burst: float = 6.0, cold_starts: tuple[float, ...] = ()) -> dict[int, Decision]:
    """Every 5 s. Between the bursts the pods share ``kv_between`` KV caches' worth of sequences
    (each pod's use is its share, at most 1); during them each pod's use is 0.1. The quiet's work
    per tick cycles through ``quiet``; bursts bring 6 engine-s/s, the last one ``last_burst``."""
    state = PolicyState(window_factor=2.0, window_changed_at=0.0, last_desired=6,
                        recommendations=((0.0, 6),), burst_on=True, burst_peak=6,
                        cold_starts=cold_starts)
    current, out, serial = 6, {}, 0
    gen: dict[str, float] = {}  # each live pod's generated tokens; a new pod starts at 0
    for t in range(0, until, 5):
        burst = any(a <= t < b for a, b in bursts)
        peak = last_burst if t >= bursts[-1][0] else 6.0
        work = peak if burst else quiet[t // 5 % len(quiet)]
        while len(gen) > current:  # scaled down: the newest pods go
            del gen[list(gen)[-1]]
        while len(gen) < current:  # scaled up (Ready at once in this table)
            gen[f"p{serial}"], serial = 0.0, serial + 1
        for name in gen:  # the pods share the work
            gen[name] += work * 5 * 100 / current
        running = 32 * work / current  # a full batch of maxNumSeqs 32 per engine-second
        kv = 0.1 if burst else min(1.0, kv_between / current)
        pods = tuple(ReadyPod(name, PodMetrics(0, running, kv, g, float(t),
                                               prompt_tokens=0.0, requests_started=g / 100))
                     for name, g in gen.items())
        d = decide(Observation(now=float(t), current_replicas=current, ready=pods), spec, state)
        out[t] = d
        state, current = d.state, d.desired_replicas
    return out


def test_between_bursts_the_fleet_goes_at_once_and_the_prewarm_is_the_bursts_sustained_need() -> None:
    got = _burst_run()
    assert got[340].state.quiet_gaps == (75.0, 95.0)  # gaps measured between the detected bursts
    # The third burst's end: released by the largest step (6 → 3, then 3 → 2) to what the last
    # seconds ask, although the smoothed estimate (falling over a minute) still recommends 4...
    assert "between bursts" in got[345].message
    assert [got[t].desired_replicas for t in (345, 355)] == [3, 2]
    assert got[355].recommended == 4
    # ... and the released fleet stays released until the pre-warm, with no step back up.
    assert {got[t].desired_replicas for t in range(355, 380, 5)} == {2}
    # The pre-warm asks for what the burst needed once served (6 engine-s/s at full use: 6), not
    # the 7 its ramp asked for while the trend was extrapolated a cold start ahead.
    assert max(got[t].recommended for t in range(280, 320, 5)) == 7
    assert (got[380].desired_replicas, got[380].reason) == (6, Reason.SCALE_UP)
    assert "pre-warming 6 for the burst expected in 40s" in got[380].message


def test_a_burst_that_comes_as_expected_gets_no_trend_extrapolation() -> None:
    # The fourth burst (420–460, seen from 425) comes onto the 6 replicas pre-warmed for it at 380.
    # Its ramp's trend recommends 7, as the third's did, but that 7th replica would be ready when
    # the burst is nearly over: the pre-warmed fleet is kept.
    got = _burst_run()
    assert got[415].state.prewarmed == 6 and not got[420].state.burst_on
    assert got[425].state.burst_on and got[425].state.burst_prewarmed == 6
    assert max(got[t].recommended for t in range(420, 460, 5)) == 7
    assert {got[t].desired_replicas for t in range(420, 460, 5)} == {6}
    assert any("no trend extrapolation" in got[t].message for t in range(420, 460, 5))
    # The second and third came before any pre-warm, onto the 6 the lengthened window held: the
    # last burst's need, so they count as pre-warmed too.
    assert got[285].state.burst_prewarmed == 6
    assert {got[t].desired_replicas for t in range(140, 330, 5)} == {6}


@pytest.mark.parametrize(("prewarm", "held", "peak", "want"), [
    (0, 5, 6, 0),   # held less than the last burst needed: not prepared, the trend applies
    (0, 6, 6, 6),   # held at least the last burst's need: as good as a pre-warm
    (7, 7, 6, 7),   # the rhythm pre-warmed 7 for it
    (0, 0, 6, 0),   # no lengthened window, nothing held
], ids=["held-too-few", "held-enough", "pre-warmed", "nothing-held"])
def test_a_burst_counts_as_pre_warmed_when_it_meets_the_fleet_it_needed_last_time(
        prewarm: int, held: int, peak: int, want: int) -> None:
    state = replace(_AFTER, burst_on=False, burst_ended_at=900.0, burst_peak=peak, prewarmed=prewarm)
    rhythm = _burst_rhythm(RHYTHM, state, 1000.0, ((950.0, 1), (990.0, 1), (1000.0, 6)), 6,
                           lengthened=True, sustained=5, backlogged=False, held=held)
    assert rhythm.on and rhythm.prewarmed == want


def test_between_bursts_a_lengthened_window_holds_what_the_bursts_needed_not_their_ramps() -> None:
    # A burst's ramp recommended 7 (its trend, a cold start ahead); served, it needed 6. Quiet now,
    # too few gaps known for the rhythm to release: the lengthened window holds 6, not 7.
    state = PolicyState(window_factor=2.0, window_changed_at=990.0, last_desired=7, burst_on=False,
                        burst_peak=6, burst_ended_at=970.0,
                        recommendations=((950.0, 7), (960.0, 7)), sustained_recs=((950.0, 6), (960.0, 6)))
    pods = tuple(ReadyPod(f"p{i}", PodMetrics(0, 4, 0.1, 0.0, 1000.0)) for i in range(7))
    d = decide(Observation(now=1000.0, current_replicas=7, ready=pods), RHYTHM, state)
    assert d.recommended == 1 and not d.state.burst_on
    assert (d.desired_replicas, d.reason) == (6, Reason.SCALE_DOWN)
    held_ramp = decide(Observation(now=1000.0, current_replicas=7, ready=pods), RHYTHM,
                       replace(state, sustained_recs=((950.0, 7), (960.0, 7))))
    assert (held_ramp.desired_replicas, held_ramp.reason) == (7, Reason.HOLD)


def test_a_burst_bigger_than_expected_still_scales_up_for_what_it_asks_now() -> None:
    # The fourth burst brings 9 engine-s/s instead of 6: what the traffic asks now is beyond the
    # pre-warmed 6 and its tolerance, so the fleet grows, to what the last seconds ask (9 once the
    # fast average caught up; the trend would have asked for 11).
    got = _burst_run(last_burst=9.0)
    assert got[420].state.burst_prewarmed == 6
    assert [got[t].desired_replicas for t in range(425, 460, 5)] == [6, 7, 8, 8, 9, 9, 9]
    assert max(got[t].recommended for t in range(425, 460, 5)) == 11


def test_a_release_between_bursts_keeps_the_kv_caches_under_the_threshold() -> None:
    # The quiet's sequences fill 1.9 KV caches: on the 2 replicas its work asks for, each would be
    # 95% full and rule 4 would ask for 3 back at once. The release stops at ceil(1.9 / 0.9) = 3.
    got = _burst_run(kv_between=1.9)
    assert [got[t].desired_replicas for t in (345, 355)] == [3, 3]
    assert {got[t].desired_replicas for t in range(355, 380, 5)} == {3}
    assert max(got[t].inputs["kvCacheMean"] for t in range(355, 380, 5)) < 0.9


@pytest.mark.parametrize(("hold", "want"), [(15.0, {3}), (0.0, {2, 3})],
                         ids=["held-15s", "no-hold-flaps"])
def test_a_release_between_bursts_holds_the_highest_need_of_a_few_seconds(
        hold: float, want: set[int]) -> None:
    # 200 s of quiet whose work swings 1.6 ↔ 2.4 engine-s/s each tick (2 on average): what the last
    # seconds ask crosses 2 replicas every tick. Holding the highest of 15 s keeps 3 replicas; without
    # it, every swing removes a replica and asks it back (a pod and a cold start for nothing).
    got = _burst_run(800, quiet=(1.6, 2.4), spec=replace(RHYTHM, release_hold=hold),
                     bursts=((0, 40), (240, 280), (480, 520), (720, 760)))
    assert not any(got[t].state.burst_on for t in range(545, 660, 5))  # all quiet: released
    assert {got[t].desired_replicas for t in range(545, 660, 5)} == want
    assert got[660].reason == Reason.SCALE_UP and "pre-warming 6" in got[660].message


def test_release_hold_and_rhythm_regularity_are_checked() -> None:
    with pytest.raises(ValueError, match="release_hold"):
        replace(RHYTHM, release_hold=-1.0)
    with pytest.raises(ValueError, match="rhythm_regularity"):
        replace(RHYTHM, rhythm_regularity=1.5)


def test_nothing_is_released_while_a_backlog_still_waits() -> None:
    # At 345 the third burst is over and the fleet of 7 is released (test above). The same tick with
    # one of the 7 pods still starting and 10 requests waiting on each ready pod (more than a
    # saturated replica's 8) since the last tick: the estimate leaves that backlog to the starting
    # pod, so by the recommendation the burst is over, but a burst does not end while its backlog
    # waits: the fleet is held until the requests are served.
    before = _burst_run(345)[340]
    at = before.state.throughput

    def decide_with(waiting: float) -> Decision:
        pods = tuple(ReadyPod(p.name, PodMetrics(waiting, 5.0, 0.1, p.generation_tokens + 5 * 100 / 7, 345.0,
                                                 prompt_tokens=0.0,
                                                 requests_started=p.requests_started + 5 / 7))
                     for p in at.pods[:6])
        state = replace(before.state, throughput=replace(at, queue=6 * waiting))  # no growth
        return decide(Observation(now=345.0, current_replicas=7, ready=pods,
                                  starting=(StartingPod("new", 10.0),)), RHYTHM, state)

    quiet, backlogged = decide_with(0.0), decide_with(10.0)
    assert quiet.desired_replicas < 7 and "between bursts" in quiet.message
    assert not quiet.state.burst_on
    assert backlogged.state.burst_on and backlogged.waiting == 60
    assert (backlogged.desired_replicas, backlogged.reason) == (7, Reason.HOLD)
    assert "between bursts" not in backlogged.message


#: After a burst (peak 6) that ended 20 s ago, at 1000 s: recommendations of 1 and 6 in the window.
_AFTER = PolicyState(window_factor=2.0, window_changed_at=0.0, last_desired=6, burst_on=True,
                     burst_peak=6, burst_ended_at=None, quiet_gaps=(100.0, 100.0))
_RECS = ((950.0, 6), (990.0, 1), (1000.0, 1))


@pytest.mark.parametrize(("gaps", "released"), [
    ((100.0, 100.0, 100.0), True),
    ((150.0, 100.0, 80.0), True),     # the shortest is 53% of the longest: a schedule
    ((250.0, 100.0, 100.0), False),   # 40%: no schedule, the held fleet stays
    ((100.0, 100.0), False),          # fewer gaps than rhythm_min_gaps (3 in this table)
], ids=["even", "uneven-enough", "too-uneven", "too-few"])
def test_the_fleet_is_released_only_between_bursts_that_keep_a_schedule(
        gaps: tuple[float, ...], released: bool) -> None:
    spec = replace(RHYTHM, rhythm_min_gaps=3)
    state = replace(_AFTER, burst_on=False, burst_ended_at=980.0, quiet_gaps=gaps)
    rhythm = _burst_rhythm(spec, state, 1000.0, _RECS, 1, lengthened=True, sustained=1,
                           backlogged=False)
    assert not rhythm.on
    assert (rhythm.release_since is not None) == released


@pytest.mark.parametrize(("backlogged", "on"), [(False, False), (True, True)])
def test_a_burst_does_not_end_while_its_backlog_waits(backlogged: bool, on: bool) -> None:
    rhythm = _burst_rhythm(RHYTHM, _AFTER, 1000.0, _RECS, 1, lengthened=True, sustained=1,
                           backlogged=backlogged)
    assert rhythm.on is on
    assert rhythm.ended_at == (None if on else 1000.0)
    # ... and a backlog alone never starts one: quiet with a queue stays quiet.
    quiet = replace(_AFTER, burst_on=False, burst_ended_at=900.0)
    assert not _burst_rhythm(RHYTHM, quiet, 1000.0, _RECS, 1, lengthened=True, sustained=1,
                             backlogged=backlogged).on


# Cold starts: each step is (ready pods as (name, ready_after), starting pod names); metrics all
# present and idle unless ``garbled`` names a pod whose page was unreadable.
Step = tuple[tuple[tuple[str, float | None], ...], tuple[str, ...]]


def _cold_starts(steps: list[Step], *, garbled: str | None = None) -> Decision:
    spec = PolicySpec(max_replicas=20)
    state = PolicyState()
    for k, (ready, starting) in enumerate(steps):
        pods = tuple(ReadyPod(name, None if name == garbled else PodMetrics(0, 1, 0.1, 0.0, 10.0 * k),
                              ready_after=after) for name, after in ready)
        d = decide(Observation(now=10.0 * k, current_replicas=len(ready) + len(starting), ready=pods,
                               starting=tuple(StartingPod(n, 5.0) for n in starting)), spec, state)
        state = d.state
    return d


def _one_by_one(afters: list[float]) -> list[Step]:
    """Pods started one after the other: each is starting for a step, then Ready with its cold start."""
    steps: list[Step] = []
    for i, after in enumerate(afters):
        steps.append(((), (f"p{i}",)))
        steps.append((((f"p{i}", after),), ()))
    return steps


@pytest.mark.parametrize(("steps", "learnt", "lead"), [
    ([((), ("a",)), ((("a", 40.0),), ())], (40.0,), 40.0),
    # Created and Ready between two decisions (a fast start): learnt too.
    ([((("b", 0.0),), ()), ((("b", 0.0), ("a", 3.0)), ())], (3.0,), 3.0),
    # Ready at the first decision (running before the operator started): its Ready time may be a
    # later readiness flap, not a cold start. Not learnt; the 90 s prior stays.
    ([((("a", 300.0),), ()), ((("a", 300.0),), ())], (), 90.0),
    # Ready, then not (a failed readiness probe), then Ready again: not a start.
    ([((("b", 0.0),), ()), ((("b", 0.0), ("a", 40.0)), ()), ((("b", 0.0),), ("a",)),
      ((("b", 0.0), ("a", 500.0)), ())], (40.0,), 40.0),
    ([((), ("a",)), ((("a", None),), ())], (), 90.0),  # its Ready time is not known
    # The last five are kept and their median is the lead: one slow start does not move it.
    (_one_by_one([30.0, 40.0, 500.0, 35.0, 45.0, 50.0]), (40.0, 500.0, 35.0, 45.0, 50.0), 45.0),
], ids=["seen-starting-then-ready", "ready-between-decisions", "ready-at-first-sight",
        "readiness-flap", "ready-time-unknown", "median-of-last-five"])
def test_cold_starts_are_learnt_from_pods_seen_starting(
        steps: list[Step], learnt: tuple[float, ...], lead: float) -> None:
    d = _cold_starts(steps)
    assert d.state.cold_starts == learnt
    assert d.inputs["coldStartSeconds"] == lead


def test_a_cold_start_is_learnt_while_metrics_are_held() -> None:
    d = _cold_starts([((), ("a",)), ((("a", 40.0),), ())], garbled="a")
    assert d.reason == Reason.METRICS_UNAVAILABLE and d.state.cold_starts == (40.0,)
    assert d.cold_start_seconds == 40.0


@pytest.mark.parametrize(("cold_starts", "want", "ahead"), [
    ((), 6, 90.0),          # the prior
    ((300.0,), 9, 300.0),   # pods seen to start in 5 minutes: the ramp is sized 5 minutes ahead
    ((10.0,), 6, 90.0),     # a shorter start does not shorten the look-ahead
], ids=["prior-90s", "learnt-300s", "learnt-10s"])
def test_the_rising_trend_looks_ahead_one_learnt_cold_start(
        cold_starts: tuple[float, ...], want: int, ahead: float) -> None:
    # The rising ramp of the tolerance table (2 → 4.3 engine-s/s on 4 pods).
    spec = PolicySpec(max_replicas=20, replica_concurrency=32, prefill_tokens_per_second=1000.0,
                      decode_tokens_per_second=100.0, target_utilization=1.0)
    state, gen = PolicyState(cold_starts=cold_starts), 0.0
    for k, demand in enumerate([2.0] * 8 + [3.0, 3.6, 4.0, 4.3]):
        gen += demand / 4 * 10 * 100
        pods = tuple(_pod(f"p{i}", 0, 10, gen=gen, prompt=0.0, started=10.0 * k, at=10.0 * k)
                     for i in range(4))
        d = decide(Observation(now=10.0 * k, current_replicas=4, ready=pods), spec, state)
        state = d.state
    assert d.recommended == want
    assert d.inputs["coldStartSeconds"] == (cold_starts[0] if cold_starts else 90.0)
    assert d.inputs["lookAheadSeconds"] == ahead


def test_the_prewarm_comes_one_learnt_cold_start_before_the_burst() -> None:
    # The rhythm table pre-warms a cold start (its 30 s prior) and a 10 s period before the burst
    # it expects. Pods seen to start in 40 s make that 50 s; pods that start in 20 s leave it at
    # 40 s: a shorter start never makes the policy later.
    def first_prewarm(got: dict[int, Decision]) -> str:
        return next(d.message for d in got.values() if "pre-warming 6 for" in d.message)

    assert "pre-warming 6 for the burst expected in 40s" in first_prewarm(_burst_run())
    assert "pre-warming 6 for the burst expected in 50s" in first_prewarm(_burst_run(cold_starts=(40.0,)))
    assert "pre-warming 6 for the burst expected in 40s" in first_prewarm(_burst_run(cold_starts=(20.0,)))


def test_scale_up_lead_is_checked() -> None:
    with pytest.raises(ValueError, match="scale_up_lead"):
        PolicySpec(scale_up_lead=-1.0)


@pytest.mark.parametrize(("back_after", "gaps"), [
    (20.0, (100.0, 100.0)),          # within the 30 s cold start: a dip in the same burst
    (60.0, (100.0, 100.0, 60.0)),    # after a quiet longer than a cold start: a new burst, a gap
], ids=["dip", "new-burst"])
def test_a_burst_back_within_a_cold_start_is_the_same_burst(
        back_after: float, gaps: tuple[float, ...]) -> None:
    # Seed 12 of the bursty benchmark: a spike's tail dipped under the window's middle twice, and
    # the 15 s and 30 s "gaps" it learnt stopped the rhythm for the next 8 bursts (103.6 GPU-h, 89.4
    # without them).
    state = replace(_AFTER, burst_on=False, burst_ended_at=1000.0 - back_after, burst_peak=6)
    rhythm = _burst_rhythm(RHYTHM, state, 1000.0, ((950.0, 1), (990.0, 1), (1000.0, 6)), 6,
                           lengthened=True, sustained=5, backlogged=False)
    assert rhythm.on and rhythm.gaps == gaps
    assert rhythm.peak == (6 if back_after < RHYTHM.scale_up_lead else 5)

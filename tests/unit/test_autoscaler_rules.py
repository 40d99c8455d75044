"""Each optional rule (``policy.Rule``) on and off: the same inputs, the rule's effect and only it.

The rules' behaviour in detail is tested in test_autoscaler_policy.py and
test_autoscaler_throughput.py; here each is switched off through ``PolicySpec.rules`` (what the
benchmark's ablation does) and the decision it owned changes back to what the pipeline gives
without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from modelplane.autoscaler.policy import (
    DEFAULT_RULES,
    Decision,
    Observation,
    PodMetrics,
    PolicySpec,
    PolicyState,
    ReadyPod,
    Rule,
    StartingPod,
    decide,
)

THROUGHPUT = PolicySpec(max_replicas=20, replica_concurrency=32, prefill_tokens_per_second=1000.0,
                        decode_tokens_per_second=100.0, target_utilization=1.0, scale_up_lead=10.0)


def _four_pods(demands: list[float], spec: PolicySpec, state: PolicyState | None = None) -> Decision:
    """Four pods serving ``demands[k]`` engine-seconds per second in all during tick k (10 s)."""
    state, gen = state or PolicyState(), 0.0
    for k, demand in enumerate(demands):
        gen += demand / 4 * 10 * 100
        pods = tuple(ReadyPod(f"p{i}", PodMetrics(0, 10, 0.3, gen, 10.0 * k, prompt_tokens=0.0,
                                                  requests_started=10.0 * k)) for i in range(4))
        d = decide(Observation(now=10.0 * k, current_replicas=4, ready=pods), spec, state)
        state = d.state
    return d


def tolerance(rules: frozenset[Rule]) -> int:
    # 4.3 engine-s/s needed on 4 replicas, steady: within 10% of the fleet.
    return _four_pods([4.3] * 12, replace(THROUGHPUT, rules=rules)).recommended


def trend(rules: frozenset[Rule]) -> int:
    # A ramp 2 → 4.3 engine-s/s: sized 90 s ahead with the trend, for now without.
    spec = replace(THROUGHPUT, scale_up_lead=90.0, rules=rules)
    return _four_pods([2.0] * 8 + [3.0, 3.6, 4.0, 4.3], spec).recommended


def learnt_cold_start(rules: frozenset[Rule]) -> float:
    # Pods were seen to start in 300 s: the look-ahead grows to it, or stays at the 90 s prior.
    spec = replace(THROUGHPUT, scale_up_lead=90.0, rules=rules)
    d = _four_pods([2.0] * 8 + [3.0, 3.6, 4.0, 4.3], spec, PolicyState(cold_starts=(300.0,)))
    return float(d.inputs["lookAheadSeconds"])


def starting_credit(rules: frozenset[Rule]) -> int:
    # In-flight sizing: 2 ready pods with 80 waiting each (T = 32 + 4: 224 in all asks for 7), and 2
    # starting, each credited with one T of that backlog: (224 - 72) / 36 → 5.
    spec = PolicySpec(max_replicas=20, replica_concurrency=32, target_queue_depth=4, rules=rules)
    pods = tuple(ReadyPod(f"p{i}", PodMetrics(80, 32, 0.5, 0.0, 0.0)) for i in range(2))
    obs = Observation(now=0.0, current_replicas=4, ready=pods,
                      starting=(StartingPod("s0", 5.0), StartingPod("s1", 5.0)))
    return decide(obs, spec, PolicyState(last_desired=4)).recommended


def kv_cache(rules: frozenset[Rule]) -> int:
    # Two pods with their KV caches 95% full and no queue: ceil(1.9 / 0.9) = 3; without the rule,
    # what the saturated pods run (20 + 4 queued each) sizes 40 requests to 2.
    spec = PolicySpec(max_replicas=20, replica_concurrency=256, rules=rules)
    pods = tuple(ReadyPod(f"p{i}", PodMetrics(0, 20, 0.95, 0.0, 0.0)) for i in range(2))
    return decide(Observation(now=0.0, current_replicas=2, ready=pods), spec, PolicyState()).recommended


def _regretted(rules: frozenset[Rule]) -> Decision:
    """In-flight sizing, 60 s window: 6 replicas' demand, down to 1 replica's, back up within two
    windows (a regret), then down again."""
    spec = PolicySpec(max_replicas=20, replica_concurrency=256, target_queue_depth=4,
                      scale_down_delay=60.0, scale_down_period=10.0, rules=rules)
    state, current = PolicyState(), 6
    schedule = [6] * 4 + [1] * 30 + [6] * 4 + [1] * 16
    d = None
    for k, need in enumerate(schedule):
        pods = tuple(ReadyPod(f"p{i}", PodMetrics(0, need * 256.0 / current, 0.3, 0.0, 5.0 * k))
                     for i in range(current))
        d = decide(Observation(now=5.0 * k, current_replicas=current, ready=pods), spec, state)
        state, current = d.state, d.desired_replicas
    assert d is not None
    return d


def regret_window(rules: frozenset[Rule]) -> tuple[float, int]:
    d = _regretted(rules)
    return d.inputs["scaleDownWindowSeconds"], d.desired_replicas


def burst_rhythm(rules: frozenset[Rule]) -> int:
    # Bursts of 6 replicas' work every 140 s with the window already lengthened: with the rhythm,
    # the quiet after the third burst is released; without it, the lengthened window holds.
    spec = PolicySpec(min_replicas=1, max_replicas=20, target_queue_depth=4, scale_down_delay=60,
                      replica_concurrency=256, scale_up_lead=30, scale_down_period=10,
                      rhythm_min_gaps=2, rhythm_gaps=4, rules=rules)
    state = PolicyState(window_factor=2.0, window_changed_at=0.0, last_desired=6,
                        recommendations=((0.0, 6),), burst_on=True, burst_peak=6)
    current, bursts = 6, ((0, 40), (140, 180), (280, 320))
    for t in range(0, 345, 5):
        work = 6 * 256.0 if any(a <= t < b for a, b in bursts) else 256.0
        pods = tuple(ReadyPod(f"pod-{i}", PodMetrics(0.0, work / current, 0.3, 0.0, float(t)))
                     for i in range(current))
        d = decide(Observation(now=float(t), current_replicas=current, ready=pods), spec, state)
        state, current = d.state, d.desired_replicas
    return current


RULE_CASES: list[tuple[Rule, Callable[[frozenset[Rule]], object], object, object]] = [
    (Rule.TOLERANCE, tolerance, 4, 5),
    (Rule.TREND, trend, 6, 4),  # without the trend, 4.3 on 4 is within the tolerance
    (Rule.LEARNT_COLD_START, learnt_cold_start, 300.0, 90.0),
    (Rule.STARTING_CREDIT, starting_credit, 5, 7),
    (Rule.KV_CACHE, kv_cache, 3, 2),
    (Rule.REGRET_WINDOW, regret_window, (120.0, 6), (60.0, 2)),  # held after the regret, or released
    (Rule.BURST_RHYTHM, burst_rhythm, 1, 6),  # released between bursts, or held
]


@pytest.mark.parametrize(("rule", "scenario", "on", "off"), RULE_CASES, ids=[r.value for r, *_ in RULE_CASES])
def test_each_rule_on_and_off(rule: Rule, scenario: Callable[[frozenset[Rule]], object], on: object,
                              off: object) -> None:
    assert scenario(DEFAULT_RULES) == on
    assert scenario(DEFAULT_RULES - {rule}) == off


def test_every_rule_has_a_case_and_is_on_by_default() -> None:
    assert {r for r, *_ in RULE_CASES} == set(Rule) == set(DEFAULT_RULES)

"""The engine model: queueing below and above capacity, KV cache, batch slowdown, exact step timing."""

from __future__ import annotations

import random

import pytest

from modelplane.planner.performance import EngineParams
from modelplane_dev.sim.engine import EngineModel, Event, EventKind, FinishReason

# A small replica with round numbers: a step takes 10 ms + 1 ms per running sequence.
PARAMS = EngineParams(max_num_seqs=16, max_model_len=4096, kv_cache_tokens=1_000_000,
                      step_base_s=0.010, step_per_seq_s=0.001, prefill_tokens_per_s=100_000.0)
OUTPUT_TOKENS = 50
PROMPT_TOKENS = 100
# At 16 sequences a step is 26 ms: 615 tokens/s, 12.3 requests/s of 50 tokens.
CAPACITY_RPS = PARAMS.max_num_seqs / (PARAMS.step_base_s + PARAMS.step_per_seq_s * 16) / OUTPUT_TOKENS


def _run_poisson(rate: float, duration: float, *, seed: int = 7, sample_every: float = 1.0
                 ) -> tuple[EngineModel, dict[str, float], list[tuple[float, int]], dict[str, float]]:
    """Poisson arrivals for ``duration`` s.

    Returns the engine, TTFT by request id, (time, num_waiting) samples and arrival times.
    """
    engine = EngineModel(PARAMS)
    rng = random.Random(seed)
    arrivals: dict[str, float] = {}
    ttft: dict[str, float] = {}
    samples: list[tuple[float, int]] = []
    t, next_sample, i = 0.0, sample_every, 0
    while True:
        t += rng.expovariate(rate)
        while next_sample <= min(t, duration):
            _collect(engine.advance(next_sample), arrivals, ttft)
            samples.append((next_sample, engine.num_waiting))
            next_sample += sample_every
        if t > duration:
            break
        _collect(engine.advance(t), arrivals, ttft)
        rid = f"r{i}"
        engine.submit(rid, PROMPT_TOKENS, OUTPUT_TOKENS, t)
        arrivals[rid] = t
        i += 1
    return engine, ttft, samples, arrivals


def _collect(events: list[Event], arrivals: dict[str, float], ttft: dict[str, float]) -> None:
    for event in events:
        if event.kind is EventKind.FIRST_TOKEN:
            ttft[event.request_id] = event.time - arrivals[event.request_id]


@pytest.mark.parametrize("load", [0.25, 0.5, 0.9], ids=["25pct", "50pct", "90pct"])
def test_no_queue_below_capacity_with_even_arrivals(load: float) -> None:
    engine = EngineModel(PARAMS)
    gap = 1.0 / (CAPACITY_RPS * load)
    first_tokens: dict[str, float] = {}
    for i in range(int(60 / gap)):
        for event in engine.advance(i * gap):
            if event.kind is EventKind.FIRST_TOKEN:
                first_tokens[event.request_id] = event.time - int(event.request_id) * gap
        assert engine.num_running < PARAMS.max_num_seqs or engine.num_waiting == 0
        engine.submit(str(i), PROMPT_TOKENS, OUTPUT_TOKENS, i * gap)
    # A request waits at most for the step in progress, then its own prefill step.
    worst_step = PARAMS.step_base_s + PARAMS.step_per_seq_s * PARAMS.max_num_seqs
    assert max(first_tokens.values()) <= 2 * worst_step + PROMPT_TOKENS / PARAMS.prefill_tokens_per_s
    assert engine.stats.preemptions == 0


@pytest.mark.parametrize("load", [0.25, 0.5], ids=["25pct", "50pct"])
def test_poisson_arrivals_below_capacity_barely_queue(load: float) -> None:
    # Poisson bursts may fill the slots for a moment, but the queue never builds up.
    _, ttft, samples, _ = _run_poisson(CAPACITY_RPS * load, 120.0)
    step = PARAMS.step_base_s + PARAMS.step_per_seq_s * PARAMS.max_num_seqs
    assert sum(ttft.values()) / len(ttft) < 2 * step
    assert sum(w for _, w in samples) / len(samples) < 0.5
    assert max(w for _, w in samples) <= 3


@pytest.mark.parametrize("load", [1.5, 2.0, 3.0], ids=["150pct", "200pct", "300pct"])
def test_growing_queue_and_rising_ttft_above_capacity(load: float) -> None:
    engine, ttft, samples, arrivals = _run_poisson(CAPACITY_RPS * load, 60.0)
    waiting = dict(samples)
    assert waiting[20.0] > 10
    assert waiting[40.0] > waiting[20.0]
    assert waiting[60.0] > waiting[40.0]
    assert engine.num_running == PARAMS.max_num_seqs
    early = [v for rid, v in ttft.items() if arrivals[rid] < 1]
    late = [v for rid, v in ttft.items() if 10 < arrivals[rid] < 15]
    assert late and min(late) > max(1.0, 3 * max(early))
    # Served throughput is the capacity, not the offered load.
    served_rps = engine.stats.success[FinishReason.LENGTH] / 60.0
    assert served_rps == pytest.approx(CAPACITY_RPS, rel=0.1)


def test_single_request_timing_is_exact() -> None:
    engine = EngineModel(PARAMS, start=100.0)
    engine.submit("a", 1000, 5, 100.0)
    events = engine.advance(200.0)
    first = PARAMS.step_base_s + PARAMS.step_per_seq_s + 1000 / PARAMS.prefill_tokens_per_s
    step = PARAMS.step_base_s + PARAMS.step_per_seq_s
    assert [(e.kind, e.request_id) for e in events] == [(EventKind.FIRST_TOKEN, "a"),
                                                        (EventKind.FINISHED, "a")]
    assert events[0].time == pytest.approx(100.0 + first)
    assert events[1].time == pytest.approx(100.0 + first + 4 * step)
    assert events[1].reason is FinishReason.LENGTH and events[1].generation_tokens == 5
    assert engine.stats.prompt_tokens == 1000 and engine.stats.generation_tokens == 5
    assert engine.stats.ttft.count == 1 and engine.stats.inter_token_latency.count == 4
    assert engine.stats.e2e_latency.sum == pytest.approx(first + 4 * step)
    assert engine.idle and engine.kv_cache_usage == 0


@pytest.mark.parametrize("tick", [0.0007, 0.013, 0.5, 1000.0], ids=["0.7ms", "13ms", "500ms", "all-at-once"])
def test_events_do_not_depend_on_how_often_advance_is_called(tick: float) -> None:
    def run(step: float) -> list[tuple[str, str, float]]:
        engine = EngineModel(PARAMS)
        rng = random.Random(3)
        arrivals = sorted(rng.uniform(0, 2) for _ in range(40))
        out: list[Event] = []
        t = 0.0
        for i, at in enumerate(arrivals):
            while t + step < at:
                t += step
                out += engine.advance(t)
            out += engine.advance(at)
            t = at
            engine.submit(f"r{i}", rng.randint(10, 3000), rng.randint(1, 80), at)
        while not engine.idle:
            t += step
            out += engine.advance(t)
        return [(e.kind.value, e.request_id, round(e.time, 9)) for e in out]

    assert run(tick) == run(0.0001)


def test_events_are_never_reported_before_they_happen() -> None:
    engine = EngineModel(PARAMS)
    engine.submit("a", 100, 20, 0.0)
    for now in (0.005, 0.0111, 0.05, 0.1, 0.2, 0.3):
        assert all(e.time <= now for e in engine.advance(now))
        assert engine.now <= now


@pytest.mark.parametrize(("prompts", "kv_tokens", "running", "waiting"), [
    ([1000, 1000, 1000], 1_000_000, 3, 0),
    ([1000, 1000, 1000], 3_000, 2, 1),
    ([400, 2000, 100], 2_300, 1, 2),  # FIFO: the third would fit, but waits behind the second
], ids=["room-for-all", "kv-limits-admission", "head-of-line"])
def test_kv_cache_fills_with_context_and_limits_admission(prompts: list[int], kv_tokens: int, running: int,
                                                           waiting: int) -> None:
    params = EngineParams(max_num_seqs=16, max_model_len=2_300, kv_cache_tokens=kv_tokens, step_base_s=0.01,
                          step_per_seq_s=0.001, prefill_tokens_per_s=1e9)
    engine = EngineModel(params)
    for i, prompt in enumerate(prompts):
        engine.submit(f"r{i}", prompt, 300, 0.0)
    engine.advance(0.05)
    assert engine.num_running == running
    assert engine.num_waiting == waiting
    used = sum(prompts[i] + engine.generated_tokens(f"r{i}") for i in range(running))
    assert engine.kv_cache_used_tokens == used
    assert engine.kv_cache_usage == pytest.approx(used / kv_tokens)


def test_kv_usage_grows_as_tokens_are_generated() -> None:
    engine = EngineModel(PARAMS)
    for i in range(4):
        engine.submit(f"r{i}", 1000, 3000, 0.0)
    usages = []
    for now in (1.0, 2.0, 4.0):
        engine.advance(now)
        # Every sequence holds its prompt plus what it generated; all four were admitted together.
        assert engine.kv_cache_used_tokens == 4 * (1000 + engine.generated_tokens("r0"))
        usages.append(engine.kv_cache_usage)
    assert 4000 / PARAMS.kv_cache_tokens < usages[0] < usages[1] < usages[2]


def test_full_kv_cache_preempts_and_every_request_still_finishes() -> None:
    params = EngineParams(max_num_seqs=16, max_model_len=1_500, kv_cache_tokens=2_400, step_base_s=0.01,
                          step_per_seq_s=0.001, prefill_tokens_per_s=1e6)
    engine = EngineModel(params)
    for i in range(3):
        engine.submit(f"r{i}", 700, 400, 0.0)
    finished: dict[str, int] = {}
    now = 0.0
    while not engine.idle:
        now += 0.1
        for event in engine.advance(now):
            if event.kind is EventKind.FINISHED:
                finished[event.request_id] = event.generation_tokens
        assert engine.kv_cache_used_tokens <= params.kv_cache_tokens
    assert finished == {"r0": 400, "r1": 400, "r2": 400}
    assert engine.stats.preemptions >= 1
    assert engine.stats.generation_tokens >= 1200


@pytest.mark.parametrize("batch", [1, 4, 16], ids=["batch1", "batch4", "batch16"])
def test_bigger_batches_slow_each_sequence_but_raise_throughput(batch: int) -> None:
    def decode(n: int) -> tuple[float, float]:
        engine = EngineModel(PARAMS)
        for i in range(n):
            engine.submit(f"r{i}", 10, 200, 0.0)
        end = now = 0.0
        while not engine.idle:
            now += 1.0
            for event in engine.advance(now):
                end = max(end, event.time)
        per_seq_tokens_per_s = 200 / end
        return per_seq_tokens_per_s, n * per_seq_tokens_per_s

    single, single_total = decode(1)
    per_seq, total = decode(batch)
    if batch == 1:
        assert per_seq == pytest.approx(single)
    else:
        assert per_seq < single
        assert single_total < total < batch * single_total  # rises, sub-linearly


def test_stop_before_max_tokens_finishes_with_stop() -> None:
    engine = EngineModel(PARAMS)
    engine.submit("a", 10, 100, 0.0, output_tokens=3)
    engine.submit("b", 10, 2, 0.0, output_tokens=3)
    events = [e for e in engine.advance(10.0) if e.kind is EventKind.FINISHED]
    assert {(e.request_id, e.reason, e.generation_tokens) for e in events} == {
        ("a", FinishReason.STOP, 3), ("b", FinishReason.LENGTH, 2)}


def test_abort_frees_the_slot_and_counts_as_abort() -> None:
    params = EngineParams(max_num_seqs=1, max_model_len=4096, kv_cache_tokens=100_000, step_base_s=0.01,
                          step_per_seq_s=0.0, prefill_tokens_per_s=1e9)
    engine = EngineModel(params)
    engine.submit("a", 10, 1000, 0.0)
    engine.submit("b", 10, 5, 0.0)
    engine.advance(0.5)
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    assert engine.abort("a", 0.5)
    assert not engine.abort("a", 0.5)
    events = engine.advance(1.0)
    assert [e.request_id for e in events if e.kind is EventKind.FINISHED] == ["b"]
    assert engine.stats.success[FinishReason.ABORT] == 1


@pytest.mark.parametrize(("call", "message"), [
    (lambda e: e.submit("x", 4000, 200, 0.0), "maximum context length"),
    (lambda e: e.submit("x", 0, 10, 0.0), ">= 1"),
    (lambda e: (e.submit("x", 10, 10, 0.0), e.submit("x", 10, 10, 0.0)), "duplicate"),
    (lambda e: (e.advance(5.0), e.advance(4.0)), "time went back"),
], ids=["too-long", "empty-prompt", "duplicate-id", "time-back"])
def test_invalid_inputs_are_refused(call: object, message: str) -> None:
    engine = EngineModel(PARAMS)
    with pytest.raises(ValueError, match=message):
        call(engine)  # type: ignore[operator]


@pytest.mark.parametrize("factor", [0.5, 2.0, 3.0], ids=["faster", "2x-slower", "3x-slower"])
def test_latency_factor_scales_every_step(factor: float) -> None:
    def e2e(params: EngineParams) -> float:
        engine = EngineModel(params)
        engine.submit("a", 500, 50, 0.0)
        return next(e.time for e in engine.advance(100.0) if e.kind is EventKind.FINISHED)

    assert e2e(PARAMS.slowed(factor)) == pytest.approx(factor * e2e(PARAMS))

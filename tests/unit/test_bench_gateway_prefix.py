"""The prefix benchmark's pure parts: trace blocks to prompt text, the workloads, the figures."""

from __future__ import annotations

import math

import pytest
from bench.gateway import prompts
from bench.gateway.prefix import busiest_over_mean, percentile, reuse_share
from bench.gateway.prefix_model import replay
from bench.gateway.prompts import TRACE_BLOCK_TOKENS, TraceRequest, block_text, prompt_text

from modelplane.planner.performance import EngineParams
from modelplane_dev.sim.prefix import BLOCK_CHARS, text_block_hashes
from modelplane_dev.sim.quality import count_tokens


def req(input_tokens: int, *ids: int, at: float = 0.0, output: int = 10) -> TraceRequest:
    return TraceRequest(arrival_s=at, input_tokens=input_tokens, output_tokens=output, hash_ids=ids)


@pytest.mark.parametrize(("request_", "tokens"), [
    (req(1, 7), 1), (req(512, 7), 512), (req(513, 7, 8), 513), (req(1500, 1, 2, 3), 1500)])
def test_a_prompt_has_the_trace_length_in_simulator_tokens(request_: TraceRequest, tokens: int) -> None:
    assert count_tokens(prompt_text(request_)) == tokens


@pytest.mark.parametrize(("a", "b", "shared_sim_blocks"), [
    pytest.param(req(1024, 0, 1), req(1024, 0, 2), 32, id="one-shared-trace-block"),
    pytest.param(req(1024, 0, 1), req(1500, 0, 1, 9), 64, id="a-conversation-goes-on"),
    pytest.param(req(1024, 3, 1), req(1024, 4, 1), 0, id="same-second-block-after-a-different-first"),
    pytest.param(req(700, 5, 6), req(700, 5, 6), 43, id="same-partial-last-block"),
    pytest.param(req(1024, 1, 12), req(1024, 12, 1), 0, id="ids-that-print-alike-differ-at-once"),
])
def test_shared_trace_blocks_become_shared_simulator_blocks(a: TraceRequest, b: TraceRequest,
                                                            shared_sim_blocks: int) -> None:
    ha, hb = text_block_hashes(prompt_text(a)), text_block_hashes(prompt_text(b))
    shared = 0
    for x, y in zip(ha, hb, strict=False):
        if x != y:
            break
        shared += 1
    assert shared == shared_sim_blocks


def test_block_text_is_a_prefix_of_the_whole_block_and_distinct_from_the_first_sim_block() -> None:
    assert block_text(42, 10) == block_text(42)[:40]
    assert len(block_text(42)) == TRACE_BLOCK_TOKENS * prompts.CHARS_PER_TOKEN
    firsts = {block_text(i)[:BLOCK_CHARS] for i in range(5000)}
    assert len(firsts) == 5000


@pytest.mark.parametrize(("line", "message"), [
    ('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1]}', "need 2 block ids"),
    ('{"timestamp": 0, "input_length": 600, "output_length": 5}', "hash_ids"),
    ("not json", "trace line 1"),
])
def test_bad_trace_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prompts.parse_mooncake([line])


def test_the_vendored_mooncake_trace_loads_whole() -> None:
    trace = prompts.load_mooncake()
    assert len(trace) == 12031
    assert trace[0] == req(6758, *range(14), output=500)
    assert trace[-1].arrival_s == pytest.approx(3536.999)


@pytest.mark.parametrize(("start", "duration", "speedup", "limit", "arrivals"), [
    (0.0, 10.0, 1.0, None, [0.0, 5.0]),
    (5.0, 100.0, 5.0, None, [0.0, 1.0]),
    (0.0, 100.0, 1.0, 600, [0.0, 5.0]),
])
def test_window_retimes_and_filters(start: float, duration: float, speedup: float, limit: int | None,
                                    arrivals: list[float]) -> None:
    trace = [req(100, 1, at=0.0), req(100, 2, at=5.0), req(1000, 3, 4, at=10.0)]
    got = prompts.window(trace, start_s=start, duration_s=duration, speedup=speedup, max_input_tokens=limit)
    assert [r.arrival_s for r in got] == arrivals


def test_tenants_are_seeded_and_share_only_their_system_prompts() -> None:
    a = prompts.synthetic_tenants(seed=3, tenants=5, system_blocks=4, rate=10.0, duration_s=20.0)
    assert a == prompts.synthetic_tenants(seed=3, tenants=5, system_blocks=4, rate=10.0, duration_s=20.0)
    assert a != prompts.synthetic_tenants(seed=4, tenants=5, system_blocks=4, rate=10.0, duration_s=20.0)
    assert 150 < len(a) < 250  # Poisson, 10/s for 20 s
    systems = {r.hash_ids[:4] for r in a}
    assert systems <= {tuple(range(t * 4, t * 4 + 4)) for t in range(5)}
    users = [h for r in a for h in r.hash_ids[4:]]
    assert len(users) == len(set(users)) and min(users) >= 20
    assert all(r.arrival_s < 20.0 for r in a)


@pytest.mark.parametrize(("trace", "share"), [
    pytest.param([req(512, 1), req(512, 1)], 0.5, id="repeat"),
    pytest.param([req(1024, 1, 2), req(1024, 3, 2)], 0.0, id="a-block-after-a-new-one-counts-not"),
    pytest.param([req(1024, 1, 2), req(600, 1, 5)], 512 / 1624, id="leading-block"),
    pytest.param([req(1024, 1, 2), req(100, 1)], 100 / 1124, id="cut-to-the-input"),
])
def test_reuse_share(trace: list[TraceRequest], share: float) -> None:
    assert reuse_share(trace) == pytest.approx(share)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([3.0, 1.0, 2.0], 0.5, 2.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
    (list(map(float, range(1, 101))), 0.99, 99.0), ([5.0], 0.99, 5.0)])
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(("counts", "ratio"), [([1, 1, 1, 1], 1.0), ([4, 0, 0, 0], 4.0), ([3, 1], 1.5)])
def test_busiest_over_mean(counts: list[float], ratio: float) -> None:
    assert busiest_over_mean(counts) == ratio


def test_no_values_give_nan() -> None:
    assert math.isnan(percentile([], 0.5)) and math.isnan(busiest_over_mean([0, 0]))


PARAMS = EngineParams(max_num_seqs=8, max_model_len=8192, kv_cache_tokens=100_000,
                      step_base_s=0.010, step_per_seq_s=0.0, prefill_tokens_per_s=10_000.0)


@pytest.mark.parametrize(("factor", "hits", "busiest"), [
    pytest.param(1.0, 5 * 1008 / 6144, 2.0, id="affinity-keeps-one-prompt-on-its-replica"),
    pytest.param(None, None, None, id="least-request-spreads-it"),
])
def test_the_virtual_replay_routes_through_the_gateways_picking(factor: float | None, hits: float | None,
                                                               busiest: float | None) -> None:
    # Six requests for the same 1,024-token prompt, one at a time, on 2 replicas.
    trace = [req(1024, 1, 2, at=10.0 * i, output=4) for i in range(6)]
    result = replay(trace, PARAMS, ["10.0.0.1:8000", "10.0.0.2:8000"], prefix_chars=64, load_factor=factor,
                    max_output=4, seed=3)
    if factor is not None:
        assert result.hit_share == pytest.approx(hits) and result.busiest == busiest
        assert result.ttft_p50 == pytest.approx(0.010 + 16 / 10_000.0)  # the last block only
    else:
        assert result.hit_share < 5 * 1008 / 6144 and result.busiest < 2.0

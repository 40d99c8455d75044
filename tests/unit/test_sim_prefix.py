"""The simulator's prefix cache: blocks from text, chained hits, LRU eviction, and the prefill it saves."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane.planner.performance import EngineParams
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.engine import EngineModel, EventKind
from modelplane_dev.sim.prefix import (
    BLOCK_CHARS,
    BLOCK_TOKENS,
    PrefixCache,
    text_block_hashes,
    token_block_hashes,
)
from modelplane_dev.sim.quality import SimBehavior
from modelplane_dev.sim.server import SimServer, offloading

# Prefill at 1,000 tokens/s and a 10 ms step: a 1,024-token prompt takes 1.034 s to its first token.
PARAMS = EngineParams(max_num_seqs=8, max_model_len=8192, kv_cache_tokens=100_000,
                      step_base_s=0.010, step_per_seq_s=0.0, prefill_tokens_per_s=1_000.0)


def text(*blocks: str) -> str:
    """A prompt made of whole blocks, each a letter repeated (``"a"`` → 64 a's)."""
    return "".join(letter * BLOCK_CHARS for letter in blocks)


@pytest.mark.parametrize(("chars", "blocks"), [
    (0, 0), (BLOCK_CHARS - 1, 0), (BLOCK_CHARS, 1), (2 * BLOCK_CHARS + 5, 2), (10 * BLOCK_CHARS, 10)])
def test_only_full_blocks_are_hashed(chars: int, blocks: int) -> None:
    assert len(text_block_hashes("x" * chars)) == blocks


@pytest.mark.parametrize(("ids", "blocks"), [(15, 0), (16, 1), (47, 2), (48, 3)])
def test_token_ids_are_cut_into_blocks_of_block_tokens(ids: int, blocks: int) -> None:
    assert len(token_block_hashes(list(range(ids)))) == blocks


def test_a_block_is_named_by_its_whole_prefix() -> None:
    # The same 64 characters after a different first block are a different block (the hash chain).
    assert text_block_hashes(text("a", "c"))[1] != text_block_hashes(text("b", "c"))[1]
    assert text_block_hashes(text("a", "c"))[1] == text_block_hashes(text("a", "c", "d"))[1]


@pytest.mark.parametrize(("cached", "prompt", "prompt_tokens", "hits"), [
    pytest.param(["aa"], "aab", 48, 2, id="leading-blocks-hit"),
    pytest.param(["ab"], "aab", 48, 1, id="stops-at-the-first-miss"),
    pytest.param(["b"], "ab", 32, 0, id="a-block-after-a-miss-is-no-hit"),
    pytest.param(["aab"], "aab", 48, 2, id="the-last-token-is-always-computed"),
    pytest.param(["aab"], "aab", 49, 3, id="a-partial-block-after-is-computed"),
    pytest.param([], "aab", 48, 0, id="cold"),
])
def test_hits_are_the_leading_cached_blocks(cached: list[str], prompt: str, prompt_tokens: int,
                                            hits: int) -> None:
    cache = PrefixCache(100)
    for entry in cached:
        cache.use(text_block_hashes(text(*entry)))
    assert cache.hit_blocks(text_block_hashes(text(*prompt)), prompt_tokens) == hits
    assert cache.hit_tokens(text_block_hashes(text(*prompt)), prompt_tokens) == hits * BLOCK_TOKENS


@pytest.mark.parametrize(("capacity", "uses", "probe", "hits"), [
    pytest.param(4, ["ab", "cd"], "ab", 2, id="fits"),
    pytest.param(4, ["ab", "cd", "ef"], "ab", 0, id="oldest-evicted"),
    pytest.param(4, ["ab", "cd", "ab", "ef"], "ab", 2, id="reuse-refreshes"),
    pytest.param(4, ["ab", "cd", "ab", "ef"], "cd", 0, id="least-recent-goes"),
    pytest.param(3, ["abcd"], "ab", 0, id="a-prompt-over-capacity-keeps-its-tail"),
    pytest.param(0, ["ab"], "ab", 0, id="capacity-zero-is-off"),
])
def test_lru_eviction_within_capacity(capacity: int, uses: list[str], probe: str, hits: int) -> None:
    cache = PrefixCache(capacity)
    for entry in uses:
        cache.use(text_block_hashes(text(*entry)))
    assert len(cache) <= capacity
    assert cache.hit_blocks(text_block_hashes(text(*probe) + "tail"), 10_000) == hits


def test_capacity_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="capacity_blocks"):
        PrefixCache(-1)
    with pytest.raises(ValueError, match="offload_blocks"):
        PrefixCache(4, -1)


@pytest.mark.parametrize(("uses", "probe", "split"), [
    pytest.param(["ab"], "ab", (2, 0), id="on-the-gpu"),
    pytest.param(["ab", "cd"], "ab", (0, 2), id="evicted-from-the-gpu-kept-offloaded"),
    pytest.param(["ab", "cd", "ef"], "ab", (0, 0), id="evicted-from-both"),
    pytest.param(["abc", "ab"], "abc", (2, 1), id="gpu-blocks-then-offloaded-ones"),
])
def test_the_host_memory_tier_keeps_what_the_gpu_evicts(uses: list[str], probe: str,
                                                         split: tuple[int, int]) -> None:
    cache = PrefixCache(2, offload_blocks=4)
    for entry in uses:
        cache.use(text_block_hashes(text(*entry)))
    assert cache.hit_split(text_block_hashes(text(*probe) + "tail"), 10_000) == split


def _ttft(engine: EngineModel, rid: str, prompt: str, at: float) -> float:
    engine.submit(rid, len(prompt) // 4, 1, at, blocks=text_block_hashes(prompt))
    events = engine.advance(at + 100.0)
    first = [e for e in events if e.kind is EventKind.FIRST_TOKEN and e.request_id == rid]
    return first[0].time - at


@pytest.mark.parametrize(("first", "second", "cached_tokens"), [
    pytest.param("abcdefgh" * 8, "abcdefgh" * 8, 63 * BLOCK_TOKENS, id="same-prompt-all-but-last-block"),
    pytest.param("s" * 48 + "abcdefghijklmnop", "s" * 48 + "qrstuvwxyzABCDEF", 48 * BLOCK_TOKENS,
                 id="shared-system-prompt"),
    pytest.param("abcdefgh" * 8, "zbcdefgh" * 8, 0, id="different-first-block"),
])
def test_cached_tokens_cost_no_prefill(first: str, second: str, cached_tokens: int) -> None:
    engine = EngineModel(PARAMS)
    _ttft(engine, "1", text(*first), 0.0)
    prompt = text(*second)
    ttft = _ttft(engine, "2", prompt, 200.0)
    assert ttft == pytest.approx(engine.step_time(1, len(prompt) // 4 - cached_tokens))
    assert engine.stats.prefix_cache_hits == cached_tokens
    assert engine.stats.prefix_cache_queries == 2 * len(prompt) // 4


def test_prefix_caching_off_hits_nothing() -> None:
    engine = EngineModel(PARAMS, prefix_caching=False)
    prompt = text(*"abcd")
    _ttft(engine, "1", prompt, 0.0)
    assert _ttft(engine, "2", prompt, 200.0) == pytest.approx(engine.step_time(1, 64))
    assert engine.stats.prefix_cache_hits == 0


def test_requests_admitted_together_share_the_blocks_computed_in_that_step() -> None:
    engine = EngineModel(PARAMS)
    prompt = text(*"abcd")
    engine.submit("1", 64, 1, 0.0, blocks=text_block_hashes(prompt))
    engine.submit("2", 64, 1, 0.0, blocks=text_block_hashes(prompt))
    engine.advance(100.0)
    assert engine.stats.prefix_cache_hits == 3 * BLOCK_TOKENS


def test_a_small_cache_forgets_and_prefills_again() -> None:
    engine = EngineModel(PARAMS, prefix_cache_blocks=4)
    _ttft(engine, "1", text(*"abcd"), 0.0)
    _ttft(engine, "2", text(*"efgh"), 100.0)
    assert _ttft(engine, "3", text(*"abcd"), 200.0) == pytest.approx(engine.step_time(1, 64))


def test_an_offloaded_hit_costs_its_copy_not_its_prefill() -> None:
    engine = EngineModel(PARAMS, prefix_cache_blocks=4, offload_blocks=100, offload_tokens_per_s=10_000.0)
    _ttft(engine, "1", text(*"abcd"), 0.0)
    _ttft(engine, "2", text(*"efgh"), 100.0)  # evicts abcd from the GPU; the host keeps it
    ttft = _ttft(engine, "3", text(*"abcd"), 200.0)
    assert ttft == pytest.approx(engine.step_time(1, 16) + 48 / 10_000.0)
    assert engine.stats.prefix_cache_hits == 48


def test_kv_offloading_size_sizes_the_host_tier() -> None:
    config = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--kv-offloading-backend",
                              "native", "--kv-offloading-size", "64"])
    assert config.kv_offloading_size == 64.0
    tier = offloading(config)
    assert tier["offload_blocks"] == 64 * 2**30 // (128 * 1024) // BLOCK_TOKENS  # 128 KiB a token (8B)
    assert tier["offload_tokens_per_s"] == pytest.approx(25e9 / (128 * 1024))
    assert offloading(parse_vllm_args(["serve", "m"])) == {}
    with pytest.raises(ValueError, match="kv-offloading-size"):
        parse_vllm_args(["serve", "m", "--kv-offloading-size", "-1"])


@pytest.mark.parametrize(("args", "enabled"), [
    ([], True), (["--enable-prefix-caching"], True), (["--no-enable-prefix-caching"], False)])
def test_the_prefix_caching_flag_is_read(args: list[str], enabled: bool) -> None:
    assert parse_vllm_args(["serve", "m", *args]).enable_prefix_caching is enabled


async def test_the_server_exports_vllm_prefix_cache_counters_in_tokens() -> None:
    from dataclasses import replace
    config = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "m",
                              "--max-model-len", "4096"])
    sim = SimServer(replace(config, host="127.0.0.1", port=0), behavior=SimBehavior())
    await sim.start()
    prompt = text(*"abcdefgh")  # 128 tokens, 8 blocks
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(f"{sim.url}/v1/completions",
                                     json={"model": "m", "prompt": prompt, "max_tokens": 2}) as response:
                    assert response.status == 200
            async with http.get(f"{sim.url}/metrics") as response:
                families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    finally:
        await sim.stop()
    queries = families["vllm:prefix_cache_queries"].samples[0]
    hits = families["vllm:prefix_cache_hits"].samples[0]
    assert queries.name == "vllm:prefix_cache_queries_total" and queries.value == 256
    assert hits.name == "vllm:prefix_cache_hits_total" and hits.value == 7 * BLOCK_TOKENS

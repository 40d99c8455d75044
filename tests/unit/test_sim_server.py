"""The simulated vLLM server on a real socket, called with the ``openai`` client and scraped like vLLM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane_dev.sim.config import SimConfig, parse_vllm_args
from modelplane_dev.sim.quality import (
    SimBehavior,
    TaskKind,
    count_tokens,
    generate_suite,
    parse_behaviors,
    render_chat,
)
from modelplane_dev.sim.server import SimServer
from tests.waiting import wait_for

ARITH = "What is 17 * 23? Answer with a number only."


def _config(**overrides: object) -> SimConfig:
    base = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "chat",
                            "--max-model-len", "4096", "--revision", "good"])
    from dataclasses import replace
    return replace(base, host="127.0.0.1", port=0, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    sim = SimServer(_config(), behavior=SimBehavior(accuracy=1.0))
    await sim.start()
    yield sim
    await sim.stop()


@contextlib.asynccontextmanager
async def _client(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0, timeout=30)
    async with client:
        yield client


async def _metrics(sim: SimServer) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_health_is_503_until_loaded_then_200() -> None:
    sim = SimServer(_config(), behavior=SimBehavior(load_seconds=0.3))
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim.url}/health") as response:
                assert response.status == 503
            async with http.get(f"{sim.url}/v1/models") as response:
                assert response.status == 503

            async def healthy() -> bool:
                async with http.get(f"{sim.url}/health") as response:
                    return response.status == 200

            await wait_for(healthy, timeout=10, what="/health to answer 200")
    finally:
        await sim.stop()


async def test_models_lists_the_served_name(server: SimServer) -> None:
    async with _client(server) as client:
        models = [m async for m in client.models.list()]
    assert [m.id for m in models] == ["chat"]
    assert models[0].owned_by == "vllm"


async def test_chat_completion_answers_and_counts_usage(server: SimServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ARITH}]
    async with _client(server) as client:
        reply = await client.chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.model == "chat"
    assert reply.choices[0].message.content == "391"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_tokens(render_chat(messages))
    assert reply.usage.completion_tokens == 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 1


async def test_streamed_chat_matches_the_unstreamed_answer(server: SimServer) -> None:
    prompt = [{"role": "user",
               "content": "Repeat the word 'falcon' exactly 4 times, separated by single spaces."}]
    async with _client(server) as client:
        stream = await client.chat.completions.create(  # type: ignore[call-overload]
            model="chat", messages=prompt, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "falcon falcon falcon falcon"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(text) == 7
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 7  # one chunk a token


async def test_completions_run_to_max_tokens(server: SimServer) -> None:
    async with _client(server) as client:
        reply = await client.completions.create(model="chat", prompt="Once upon a time", max_tokens=20)
        stream = await client.completions.create(model="chat", prompt="Once upon a time", max_tokens=20,
                                                 stream=True)
        pieces = [c.choices[0].text async for c in stream if c.choices]
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length"
    assert count_tokens(reply.choices[0].text) == 20
    assert reply.usage is not None and reply.usage.completion_tokens == 20
    assert "".join(pieces) == reply.choices[0].text


async def test_raw_sse_ends_with_done(server: SimServer) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": ARITH}], "stream": True}
    async with aiohttp.ClientSession() as http, \
            http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await response.text()).split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("call", "error"), [
    (lambda c: c.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}]),
     openai.NotFoundError),
    (lambda c: c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x" * 20000}]),
     openai.BadRequestError),
    (lambda c: c.completions.create(model="chat", prompt="hi", max_tokens=5000), openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="chat", messages=[]), openai.BadRequestError),
], ids=["unknown-model", "prompt-too-long", "max-tokens-too-big", "no-messages"])
async def test_bad_requests_get_vllm_status_codes(server: SimServer, call: Callable[[openai.AsyncOpenAI],
                                                  Awaitable[object]], error: type[Exception]) -> None:
    with pytest.raises(error):
        async with _client(server) as client:
            await call(client)


async def test_error_rate_answers_500() -> None:
    sim = SimServer(_config(), behavior=SimBehavior(error_rate=1.0))
    await sim.start()
    try:
        with pytest.raises(openai.InternalServerError):
            async with _client(sim) as client:
                await client.chat.completions.create(model="chat",
                                                     messages=[{"role": "user", "content": "hi"}])
    finally:
        await sim.stop()


async def test_metrics_carry_vllm_v1_names_types_and_labels(server: SimServer) -> None:
    async with _client(server) as client:
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": ARITH}])
        await client.completions.create(model="chat", prompt="Once upon a time", max_tokens=8)
    families = await _metrics(server)
    expected_types = {
        "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram", "vllm:request_queue_time_seconds": "histogram",
        "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
    }
    for name, kind in expected_types.items():
        assert name in families, name
        assert families[name].type == kind, name  # type: ignore[attr-defined]
    assert "vllm:gpu_cache_usage_perc" not in families
    assert "vllm:time_per_output_token_seconds" not in families
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # type: ignore[attr-defined]
    labels = (("engine", "0"), ("model_name", "chat"))

    def reason(value: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*labels, ("finished_reason", value))))
    assert samples[("vllm:prompt_tokens_total", labels)] == (
        count_tokens(render_chat([{"role": "user", "content": ARITH}])) + count_tokens("Once upon a time"))
    assert samples[("vllm:generation_tokens_total", labels)] == 1 + 8
    assert samples[("vllm:request_success_total", reason("stop"))] == 1
    assert samples[("vllm:request_success_total", reason("length"))] == 1
    assert samples[("vllm:time_to_first_token_seconds_count", labels)] == 2
    assert samples[("vllm:e2e_request_latency_seconds_bucket", tuple(sorted((*labels, ("le", "+Inf")))))] == 2
    assert samples[("vllm:num_requests_running", labels)] == 0


async def test_tokens_stream_at_the_engine_pace() -> None:
    # A 3x slowed L4 decodes one sequence at ~0.22 s a token: 6 tokens take over a second.
    sim = SimServer(_config(gpu_type="nvidia-l4"), behavior=SimBehavior(latency_factor=3.0))
    await sim.start()
    try:
        started = time.monotonic()
        async with _client(sim) as client:
            stream = await client.completions.create(model="chat", prompt="hello", max_tokens=6, stream=True)
            arrivals = [time.monotonic() - started async for _ in stream]
        step = sim.params.step_base_s + sim.params.step_per_seq_s
        assert arrivals[-1] >= 5 * step * 0.9
        gaps = [b - a for a, b in zip(arrivals[1:6], arrivals[2:7], strict=False)]
        assert all(g > step * 0.5 for g in gaps)
    finally:
        await sim.stop()


async def test_requests_above_capacity_wait_and_show_in_metrics() -> None:
    sim = SimServer(_config(max_num_seqs=2, gpu_type="nvidia-l4"), behavior=SimBehavior(latency_factor=2.0))
    await sim.start()
    stack = contextlib.AsyncExitStack()
    try:
        client = await stack.enter_async_context(_client(sim))
        calls = [asyncio.create_task(client.completions.create(model="chat", prompt="hi", max_tokens=8))
                 for _ in range(6)]

        async def queued() -> bool:
            families = await _metrics(sim)
            waiting = families["vllm:num_requests_waiting"].samples[0].value  # type: ignore[attr-defined]
            running = families["vllm:num_requests_running"].samples[0].value  # type: ignore[attr-defined]
            return bool(waiting >= 1 and running == 2)

        await wait_for(queued, timeout=10, what="two running and one waiting")
        await asyncio.gather(*calls)
        families = await _metrics(sim)
        queue = {s.name: s.value for s in families["vllm:request_queue_time_seconds"].samples  # type: ignore[attr-defined]
                 if s.name.endswith("_sum")}
        assert queue["vllm:request_queue_time_seconds_sum"] > 0.5
    finally:
        await stack.aclose()
        await sim.stop()


async def test_one_process_serves_many_replicas() -> None:
    sims = [SimServer(_config(served_model_name=f"m{i}")) for i in range(3)]
    for sim in sims:
        await sim.start()
    try:
        assert len({sim.port for sim in sims}) == 3
        for i, sim in enumerate(sims):
            async with _client(sim) as client:
                reply = await client.completions.create(model=f"m{i}", prompt="hi", max_tokens=2 + i)
            assert reply.usage is not None and reply.usage.completion_tokens == 2 + i
        for i, sim in enumerate(sims):
            families = await _metrics(sim)
            gen = families["vllm:generation_tokens"].samples[0]  # type: ignore[attr-defined]
            assert gen.labels["model_name"] == f"m{i}" and gen.value == 2 + i
    finally:
        for sim in sims:
            await sim.stop()


async def test_a_good_and_a_bad_revision_score_apart_over_http() -> None:
    behaviors = parse_behaviors("good: {accuracy: 0.95}\nbad: {accuracy: 0.5}\n")
    suite = generate_suite(48, seed=4, kinds=[TaskKind.ARITHMETIC, TaskKind.COMPARISON, TaskKind.CHOICE])
    scores = {}
    for revision in ("good", "bad"):
        sim = SimServer(_config(revision=revision), behaviors=behaviors)
        await sim.start()
        try:
            async with _client(sim) as client:
                replies = await asyncio.gather(*(
                    client.chat.completions.create(model="chat", max_tokens=16,
                                                   messages=[{"role": "user", "content": case["prompt"]}])
                    for case in suite))
        finally:
            await sim.stop()
        scores[revision] = sum(r.choices[0].message.content == c["expected"]
                               for r, c in zip(replies, suite, strict=True)) / len(suite)
    assert sim.behavior.accuracy == 0.5
    assert scores["good"] > 0.8 and scores["bad"] < 0.7 and scores["good"] - scores["bad"] > 0.25


# ---- http_requests_total, as vLLM's API server exports it (prometheus-fastapi-instrumentator) ------------

CHAT = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
Request = tuple[str, str, object]  # method, path, JSON body (None: no body; bytes: sent raw)
Series = tuple[str, str, str]  # method, status, handler


async def _send(sim: SimServer, requests: list[Request]) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as http:
        for method, path, body in requests:
            kwargs: dict[str, object] = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with http.request(method, f"{sim.url}{path}", **kwargs) as response:  # type: ignore[arg-type]
                await response.read()
                statuses.append(response.status)
    return statuses


async def _http_requests(sim: SimServer) -> dict[Series, float]:
    families = await _metrics(sim)
    family = families["http_requests"]
    assert family.type == "counter"  # type: ignore[attr-defined]
    out: dict[Series, float] = {}
    for sample in family.samples:  # type: ignore[attr-defined]
        if sample.name.endswith("_created"):
            continue
        assert sample.name == "http_requests_total"
        assert set(sample.labels) == {"method", "status", "handler"}, sample.labels
        out[(sample.labels["method"], sample.labels["status"], sample.labels["handler"])] = sample.value
    return out


@pytest.mark.parametrize(("behavior", "requests", "statuses", "expected"), [
    (SimBehavior(), [("POST", "/v1/chat/completions", CHAT), ("POST", "/v1/chat/completions", CHAT),
                     ("POST", "/v1/completions", {"model": "chat", "prompt": "hi", "max_tokens": 2}),
                     ("GET", "/v1/models", None)],
     [200, 200, 200, 200],
     {("POST", "2xx", "/v1/chat/completions"): 2, ("POST", "2xx", "/v1/completions"): 1,
      ("GET", "2xx", "/v1/models"): 1}),
    (SimBehavior(), [("POST", "/v1/chat/completions", {**CHAT, "stream": True})], [200],
     {("POST", "2xx", "/v1/chat/completions"): 1}),
    (SimBehavior(), [("POST", "/v1/chat/completions", {**CHAT, "model": "other"}),
                     ("POST", "/v1/chat/completions", b"not json"),
                     ("POST", "/v1/completions", {"model": "chat"})],
     [404, 400, 400],
     {("POST", "4xx", "/v1/chat/completions"): 2, ("POST", "4xx", "/v1/completions"): 1}),
    (SimBehavior(), [("GET", "/nope", None), ("GET", "/v1/chat/completions", None)], [404, 405],
     {("GET", "4xx", "none"): 1, ("GET", "4xx", "/v1/chat/completions"): 1}),
    (SimBehavior(error_rate=1.0), [("POST", "/v1/chat/completions", CHAT),
                                   ("POST", "/v1/completions", {"model": "chat", "prompt": "hi"})],
     [500, 500],
     {("POST", "5xx", "/v1/chat/completions"): 1, ("POST", "5xx", "/v1/completions"): 1}),
    # vLLM's Instrumentator excludes these handlers: the family is there, with no series.
    (SimBehavior(), [("GET", "/health", None), ("GET", "/version", None), ("GET", "/metrics", None)],
     [200, 200, 200], {}),
], ids=["successes-by-handler", "streamed", "client-errors", "unrouted-and-wrong-method",
        "engine-failures", "excluded-handlers"])
async def test_http_requests_total_counts_answers_like_vllm(
        behavior: SimBehavior, requests: list[Request], statuses: list[int],
        expected: dict[Series, float]) -> None:
    sim = SimServer(_config(), behavior=behavior)
    await sim.start()
    try:
        assert await _send(sim, requests) == statuses
        assert await _http_requests(sim) == expected
    finally:
        await sim.stop()


async def test_http_requests_total_counts_the_503s_before_the_model_is_loaded() -> None:
    # Long enough that the requests below are surely answered before the load ends.
    sim = SimServer(_config(), behavior=SimBehavior(load_seconds=1.5))
    await sim.start()
    try:
        statuses = await _send(sim, [("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None),
                                     ("GET", "/health", None)])
        assert not sim.loaded, "the requests must be answered during the load"
        assert statuses == [503, 503, 503]
        await sim.wait_loaded()
        assert await _http_requests(sim) == {("POST", "5xx", "/v1/chat/completions"): 1,
                                             ("GET", "5xx", "/v1/models"): 1}
    finally:
        await sim.stop()


async def test_http_5xx_follow_the_error_rate_and_the_successes_counter_the_rest() -> None:
    sim = SimServer(_config(), behavior=SimBehavior(error_rate=0.3))
    await sim.start()
    try:
        statuses = await _send(sim, [("POST", "/v1/chat/completions", CHAT)] * 200)
        failed = statuses.count(500)
        assert failed + statuses.count(200) == 200
        assert 40 <= failed <= 80  # 0.3 of 200, within a wide band (the draws are fixed by seed)
        counted = await _http_requests(sim)
        assert counted == {("POST", "5xx", "/v1/chat/completions"): failed,
                           ("POST", "2xx", "/v1/chat/completions"): 200 - failed}
        families = await _metrics(sim)
        successes = sum(s.value for s in families["vllm:request_success"].samples  # type: ignore[attr-defined]
                        if s.name == "vllm:request_success_total")
        assert successes == 200 - failed
    finally:
        await sim.stop()


async def test_the_operators_window_analysis_reads_the_failed_requests_from_the_page() -> None:
    """The live analysis's input path (``rollouts.analyse``) over the simulator's real /metrics pages."""
    from modelplane.metrics.promtext import parse_snapshot
    from modelplane.metrics.scrape import ScrapeResult
    from modelplane.rollout.analysis import AnalysisThresholds, Outcome
    from modelplane.rollout.driver import Window, analyse, server_errors

    canary = SimServer(_config(revision="bad"), behavior=SimBehavior(error_rate=0.3))
    stable = SimServer(_config(revision="good"), behavior=SimBehavior())
    pods = {"canary-0": canary, "stable-0": stable}
    for sim in pods.values():
        await sim.start()

    async def pages() -> list[ScrapeResult]:
        out = []
        for pod, sim in pods.items():
            async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/metrics") as response:
                out.append(ScrapeResult(pod, None, await response.text(), None))
        return out

    try:
        # Traffic before the window (e.g. the evaluation's) must not count.
        await _send(canary, [("POST", "/v1/chat/completions", CHAT)] * 30)
        window = Window(revision="bad", step=0,
                        started={r.pod: parse_snapshot(r.text or "") for r in await pages()})
        canary_statuses = await _send(canary, [("POST", "/v1/chat/completions", CHAT)] * 60)
        stable_statuses = await _send(stable, [("POST", "/v1/chat/completions", CHAT)] * 60)
        assert stable_statuses == [200] * 60
        end = await pages()
        assert server_errors(parse_snapshot(end[0].text or "")) >= canary_statuses.count(500)
        result = analyse(window, end, {"canary-0": "c", "stable-0": "s"}, canary_key="c", stable_key="s",
                         thresholds=AnalysisThresholds(max_error_rate=0.05))
    finally:
        for sim in pods.values():
            await sim.stop()
    assert result.canary.errors == canary_statuses.count(500) > 0
    assert result.canary.requests == 60
    assert result.stable.errors == 0 and result.stable.requests == 60
    assert result.outcome is Outcome.FAIL
    assert "error rate" in result.reason and "maxErrorRate" in result.reason


@pytest.mark.parametrize(("candidate", "verdict"), [
    ("391", True), ("The answer is 391.", True), ("392", False), ("", False),
], ids=["equal", "contains", "wrong", "empty"])
async def test_the_simulator_judges_with_the_gates_judge_prompt(server: SimServer, candidate: str,
                                                                verdict: bool) -> None:
    from modelplane.rollout.evaluate import Endpoint, OpenAIJudge
    from modelplane.rollout.suite import parse_suite

    line = json.dumps({"id": "j", "prompt": ARITH, "expected": "391", "grader": "judge"})
    case = parse_suite(line).cases[0]
    async with aiohttp.ClientSession() as http:
        judge = OpenAIJudge(Endpoint(server.url, "chat"), session=http)
        assert await judge(case, candidate) is verdict

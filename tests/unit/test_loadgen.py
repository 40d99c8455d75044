"""The load generator: schedules, Poisson arrivals, and a short real run against the simulator."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from aiohttp import web

from modelplane_dev.loadgen import (
    Lengths,
    LoadConfig,
    Progress,
    arrivals,
    parse_schedule,
    percentile,
    run_load,
)
from modelplane_dev.sim.config import SimConfig
from modelplane_dev.sim.server import SimServer


@pytest.mark.parametrize(
    ("text", "points"),
    [
        ("constant:5", {0: 5, 100: 5}),
        ("step:2@0,10@30,1@90", {0: 2, 29.9: 2, 30: 10, 89: 10, 90: 1, 500: 1}),
        ("diurnal:peak=10,trough=2,period=100", {0: 2, 50: 10, 100: 2, 25: 6}),
        ("bursty:base=2,spike=20,every=60,for=10", {0: 2, 49: 2, 50: 20, 59: 20, 61: 2, 115: 20}),
    ],
    ids=["constant", "step", "diurnal", "bursty"],
)
def test_schedules(text: str, points: dict[float, float]) -> None:
    schedule = parse_schedule(text)
    for t, rate in points.items():
        assert schedule(t) == pytest.approx(rate), t


@pytest.mark.parametrize(
    "text",
    ["constant:-1", "step:5@10", "diurnal:peak=1,trough=5", "bursty:base=1", "sine:3", "constant:x"],
    ids=["negative", "step-without-zero", "trough-above-peak", "bursty-missing", "unknown", "nan"],
)
def test_bad_schedules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="schedule"):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("text", "duration", "expected"),
    [("constant:20", 100, 2000), ("step:5@0,30@50", 100, 1750),
     ("diurnal:peak=10,trough=0,period=100", 200, 1000)],
    ids=["constant", "step", "diurnal"],
)
def test_arrival_counts_follow_the_integral_of_the_rate(text: str, duration: float,
                                                        expected: float) -> None:
    counts = [len(arrivals(parse_schedule(text), duration, random.Random(seed))) for seed in range(5)]
    mean = sum(counts) / len(counts)
    # Poisson: sd = sqrt(expected); the mean of 5 runs is within 4 of its standard errors.
    assert abs(mean - expected) < 4 * (expected**0.5) / (5**0.5)


def test_arrivals_are_deterministic_for_a_seed_and_ordered() -> None:
    a = arrivals(parse_schedule("constant:10"), 10, random.Random(3))
    assert a == arrivals(parse_schedule("constant:10"), 10, random.Random(3))
    assert a == sorted(a) and all(0 <= t < 10 for t in a)


def test_percentile_and_lengths() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    draws = [Lengths(100, minimum=10, maximum=150).draw(random.Random(i)) for i in range(500)]
    assert all(10 <= d <= 150 for d in draws)
    assert 80 < sum(draws) / len(draws) < 110


async def test_a_short_run_against_the_simulator_measures_every_request() -> None:
    server = SimServer(SimConfig(model="sim/llama-3.1-8b", served_model_name="chat",
                                 gpu_type="nvidia-l4", max_model_len=4096))
    port = await server.start("127.0.0.1", 0)
    try:
        config = LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", model="chat",
                            schedule=parse_schedule("constant:20"), duration=2.0,
                            prompt_tokens=Lengths(32), output_tokens=Lengths(8, maximum=16))
        report = await run_load(config)
    finally:
        await server.stop()
    assert report.sent > 10
    assert report.ok == report.sent and report.errors == 0
    assert len(report.ttft) == report.ok and all(0 < t <= lat for t, lat in
                                                 zip(report.ttft, report.latency, strict=True))
    assert report.generated_tokens >= report.ok
    summary = report.to_dict()
    assert summary["ttftSeconds"]["p50"] is not None and summary["achievedRPS"] > 5


async def test_stop_ends_the_arrivals_and_the_requests_in_flight_finish() -> None:
    server = SimServer(SimConfig(model="sim/llama-3.1-8b", served_model_name="chat",
                                 gpu_type="nvidia-l4", max_model_len=4096))
    port = await server.start("127.0.0.1", 0)
    stop = asyncio.Event()

    def enough(seen: Progress) -> None:
        if seen.sent >= 5:
            stop.set()

    try:
        config = LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", model="chat",
                            schedule=parse_schedule("constant:20"), duration=600.0,
                            prompt_tokens=Lengths(32), output_tokens=Lengths(8))
        report = await asyncio.wait_for(run_load(config, progress=enough, progress_every=0.1, stop=stop),
                                        timeout=120)
    finally:
        await server.stop()
    assert stop.is_set() and 5 <= report.sent < 20 * 600
    assert report.ok == report.sent and report.errors == 0  # none cut off by the stop
    assert report.window < 600 and report.achieved_rps > 0


async def test_errors_are_counted_by_kind() -> None:
    config = LoadConfig(base_url="http://127.0.0.1:9/v1", model="x",
                        schedule=parse_schedule("constant:5"), duration=1.0, timeout=2)
    report = await run_load(config)
    assert report.sent > 0 and report.errors == report.sent and report.ok == 0
    assert sum(report.error_kinds.values()) == report.errors


async def test_an_error_event_inside_a_200_stream_is_an_error() -> None:
    """vLLM (0.32: a request the engine fails) reports it in the stream once the 200 is sent."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "x",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                          "finish_reason": None}]}
    error = {"error": {"message": "Internal server error", "type": "InternalServerError", "param": None,
                       "code": 500}}

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in (chunk, error):
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", model="x",
                            schedule=parse_schedule("constant:5"), duration=1.0, timeout=5)
        report = await run_load(config)
    finally:
        await runner.cleanup()
    assert report.sent > 0 and report.ok == 0
    assert report.error_kinds == {"stream_error": report.sent}

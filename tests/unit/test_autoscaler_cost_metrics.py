"""Table tests of fleet cost, $ per million tokens from counters, and the vLLM metrics parser."""

from __future__ import annotations

import math

import pytest

from modelplane.autoscaler import cost
from modelplane.autoscaler.policy import PodMetrics
from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics


@pytest.mark.parametrize(("replicas", "gpu", "per_replica", "prices", "want"), [
    (3, "nvidia-h100-80gb", 1, None, 3 * 2.69),
    (2, "nvidia-h100-80gb", 4, {"nvidia-h100-80gb": 6.16}, 2 * 4 * 6.16),
    (0, "nvidia-l4", 1, None, 0.0),
], ids=["catalog", "override", "zero"])
def test_fleet_hourly_usd(replicas: int, gpu: str, per_replica: int, prices: dict[str, float] | None,
                          want: float) -> None:
    assert cost.fleet_hourly_usd(replicas, gpu, per_replica, prices=prices) == pytest.approx(want)


@pytest.mark.parametrize(("gpu", "prices"), [("nvidia-b300", None), ("nvidia-l4", {"tpu": 1.0})],
                         ids=["unknown type", "unknown override"])
def test_fleet_hourly_usd_refuses(gpu: str, prices: dict[str, float] | None) -> None:
    with pytest.raises(ValueError):
        cost.fleet_hourly_usd(1, gpu, 1, prices=prices)


@pytest.mark.parametrize(("hourly", "tokens", "seconds", "want"), [
    (2.69, 1e6, 3600, 2.69),
    (10.0, 500, 1, 10.0 / 1.8),
    (10.0, 0, 60, None),  # idle
    (10.0, 100, 0, None),
], ids=["one Mtok per hour", "busy", "idle", "no interval"])
def test_usd_per_million_tokens(hourly: float, tokens: float, seconds: float, want: float | None) -> None:
    got = cost.usd_per_million_tokens(hourly_usd=hourly, tokens=tokens, seconds=seconds)
    assert got == (None if want is None else pytest.approx(want))


Reading = tuple[float, dict[str, float]]  # (when, each ready pod's generation-token counter)


def _steady(rates: dict[str, float], until: float, *, every: float = 2.0, start: float = 0.0,
            base: dict[str, float] | None = None) -> list[Reading]:
    """Readings every ``every`` s of pods generating at constant ``rates`` (tokens/s)."""
    base = base or {}
    steps = round((until - start) / every)
    return [(start + i * every, {pod: base.get(pod, 0.0) + rate * i * every for pod, rate in rates.items()})
            for i in range(steps + 1)]


def _then(readings: list[Reading], rates: dict[str, float], until: float) -> list[Reading]:
    """``readings`` followed by the same pods at new ``rates``, continuing their counters."""
    at, last = readings[-1]
    return readings + _steady(rates, until, start=at, base=last)[1:]


# The window's rate after each run of readings: (readings, the rate at the last one).
TOKEN_WINDOW_CASES: dict[str, tuple[list[Reading], float | None]] = {
    "steady": (_steady({"a": 500, "b": 300}, 120), 800),
    "not yet a full window": (_steady({"a": 500}, 58), None),
    "a full window": (_steady({"a": 500}, 60), 500),
    # The rate changes at 130 s: a window later only the new rate is left in it.
    "rate doubles": (_then(_steady({"a": 500, "b": 500}, 130), {"a": 1000, "b": 1000}, 190), 2000),
    "rate halves": (_then(_steady({"a": 1000}, 130), {"a": 500}, 190), 500),
    "half a window after a change": (_then(_steady({"a": 1000}, 120), {"a": 400}, 150), 700),
    "idle": (_then(_steady({"a": 1000}, 130), {"a": 0}, 190), 0),
    # A pod that leaves stops counting at once; one that comes counts from its second reading.
    "a pod leaves": (_steady({"a": 400, "b": 400}, 100) + [(102, {"a": 40800})], 400),
    "a pod comes": (_steady({"a": 400}, 100) + [(102, {"a": 40800, "b": 50}), (104, {"a": 41600, "b": 850})],
                    800),
    # A counter that went down restarted from zero: its new value is the increase.
    "engine restart": (_steady({"a": 100}, 60) + [(62, {"a": 200}), (64, {"a": 400})], 100),
    # A reading less than a thirtieth of the window after the last one adds nothing.
    "readings too close": (_steady({"a": 100}, 60) + [(60.5, {"a": 10**6})], 100),
    "not finite": (_steady({"a": 100}, 60) + [(62, {"a": math.nan})], 100),
}


@pytest.mark.parametrize(("readings", "want"), list(TOKEN_WINDOW_CASES.values()),
                         ids=list(TOKEN_WINDOW_CASES))
def test_token_window_rate(readings: list[Reading], want: float | None) -> None:
    window = cost.TokenWindow(seconds=60)
    for at, counters in readings:
        window = window.observe(at, {pod: cost.CounterSample(at, value) for pod, value in counters.items()})
    got = window.tokens_per_second(readings[-1][0])
    assert got == (None if want is None else pytest.approx(want))


def test_token_window_readings_expire() -> None:
    window = cost.TokenWindow(seconds=60)
    for at, counters in _steady({"a": 100}, 60):
        window = window.observe(at, {pod: cost.CounterSample(at, value) for pod, value in counters.items()})
    # Readings leave the window as they age; once all are older than it, nothing is measured.
    assert window.expire(100).tokens_per_second(100) == pytest.approx(100)
    gone = window.expire(121)
    assert gone.pods == () and gone.since is None and gone.tokens_per_second(121) is None


def test_token_window_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError, match="token window"):
        cost.TokenWindow(seconds=0)


PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="chat"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="chat"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="chat"} 0.42
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="chat"} 12345.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="chat"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="chat"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="chat"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="chat"} 0.7
"""
WITH_PROMPT = PAGE + """# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="chat"} 9000.0
"""
TWO_ENGINES = WITH_PROMPT + WITH_PROMPT.replace('engine="0"', 'engine="1"').replace("0.42", "0.91").replace(
    "# HELP", "# X").replace("# TYPE", "# Y")


_TTFT = ((0.1, 4.0), (float("inf"), 5.0))


@pytest.mark.parametrize(("text", "model", "want"), [
    (PAGE, None, PodMetrics(3, 7, 0.42, 12345, 5.0, requests_started=5, ttft_buckets=_TTFT)),
    (PAGE, "chat", PodMetrics(3, 7, 0.42, 12345, 5.0, requests_started=5, ttft_buckets=_TTFT)),
    (WITH_PROMPT, None, PodMetrics(3, 7, 0.42, 12345, 5.0, prompt_tokens=9000, requests_started=5,
                                   ttft_buckets=_TTFT)),
    (PAGE.split("# TYPE vllm:time_to_first")[0], None, PodMetrics(3, 7, 0.42, 12345, 5.0)),
    (TWO_ENGINES, None, PodMetrics(6, 14, 0.91, 24690, 5.0, prompt_tokens=18000, requests_started=10,
                                   ttft_buckets=((0.1, 8.0), (float("inf"), 10.0)))),
    (PAGE.replace('le="+Inf"', 'le="1.0"'), None,
     PodMetrics(3, 7, 0.42, 12345, 5.0, requests_started=5)),
], ids=["one engine", "model filter", "prompt tokens", "no optional counters",
        "two engines: sum, KV of the fullest, buckets summed per le",
        "a histogram without its +Inf bucket is not read"])
def test_parse_vllm_metrics(text: str, model: str | None, want: PodMetrics) -> None:
    assert parse_vllm_metrics(text, scraped_at=5.0, model_name=model) == want


@pytest.mark.parametrize(("text", "model"), [
    ("<html>502 Bad Gateway</html>", None),
    (PAGE.replace("vllm:kv_cache_usage_perc{", "vllm:gpu_cache_usage_perc{"), None),
    (PAGE, "other-model"),
    (PAGE.replace("3.0\n", "-3.0\n", 1), None),
    (PAGE.replace("0.42", "NaN"), None),
    (PAGE.replace("0.42", "4.2"), None),
    (WITH_PROMPT.replace("9000.0", "-1.0"), None),
    ("", None),
], ids=["html", "old metric name", "other model", "negative", "nan", "kv over 1", "negative prompt tokens",
        "empty"])
def test_parse_vllm_metrics_refuses(text: str, model: str | None) -> None:
    with pytest.raises(MetricsError):
        parse_vllm_metrics(text, scraped_at=0.0, model_name=model)

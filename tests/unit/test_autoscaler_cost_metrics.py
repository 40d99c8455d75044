"""Table tests of fleet cost, $ per million tokens from counters, and the vLLM metrics parser."""

from __future__ import annotations

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


@pytest.mark.parametrize(("previous", "current", "want"), [
    ({"a": 100, "b": 50}, {"a": 160, "b": 80}, 90),
    ({"a": 100}, {"a": 30}, 30),  # a restarted engine counts from zero
    ({"a": 100}, {"a": 120, "new": 40}, 60),  # a new pod's counter is all new
    ({"a": 100, "gone": 500}, {"a": 110}, 10),  # a pod that left is not counted
    ({}, {}, 0),
], ids=["steady", "reset", "new pod", "pod left", "empty"])
def test_tokens_between(previous: dict[str, float], current: dict[str, float], want: float) -> None:
    assert cost.tokens_between(previous, current) == want


@pytest.mark.parametrize(("hourly", "tokens", "seconds", "want"), [
    (2.69, 1e6, 3600, 2.69),
    (10.0, 500, 1, 10.0 / 1.8),
    (10.0, 0, 60, None),  # idle
    (10.0, 100, 0, None),
], ids=["one Mtok per hour", "busy", "idle", "no interval"])
def test_usd_per_million_tokens(hourly: float, tokens: float, seconds: float, want: float | None) -> None:
    got = cost.usd_per_million_tokens(hourly_usd=hourly, tokens=tokens, seconds=seconds)
    assert got == (None if want is None else pytest.approx(want))


def test_usd_per_million_tokens_between_samples() -> None:
    before = cost.TokenSample.of(0, {"a": 0, "b": 1000})
    after = cost.TokenSample.of(60, {"a": 30000, "b": 31000})
    assert cost.tokens_per_second_between(before, after) == 1000
    assert cost.usd_per_million_tokens_between(before, after, hourly_usd=3.6) == pytest.approx(1.0)


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


@pytest.mark.parametrize(("text", "model", "want"), [
    (PAGE, None, PodMetrics(3, 7, 0.42, 12345, 5.0, requests_started=5)),
    (PAGE, "chat", PodMetrics(3, 7, 0.42, 12345, 5.0, requests_started=5)),
    (WITH_PROMPT, None, PodMetrics(3, 7, 0.42, 12345, 5.0, prompt_tokens=9000, requests_started=5)),
    (PAGE.split("# TYPE vllm:time_to_first")[0], None, PodMetrics(3, 7, 0.42, 12345, 5.0)),
    (TWO_ENGINES, None, PodMetrics(6, 14, 0.91, 24690, 5.0, prompt_tokens=18000, requests_started=10)),
], ids=["one engine", "model filter", "prompt tokens", "no optional counters",
        "two engines: sum, KV of the fullest"])
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

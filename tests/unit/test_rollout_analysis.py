"""Prometheus text snapshots, window deltas, histogram quantiles, and the live analysis verdicts."""

from __future__ import annotations

import math

import pytest

from modelplane.metrics.promtext import (
    MetricSnapshot,
    PromTextError,
    delta,
    histogram_quantile,
    merge,
    parse_snapshot,
)
from modelplane.rollout.analysis import (
    AnalysisThresholds,
    Outcome,
    WindowStats,
    analyse,
    analyse_window,
)

BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def vllm_page(*, success: dict[str, int], ttft: list[int], model: str = "m") -> str:
    """A vLLM-like /metrics page: success counter per finished_reason and TTFT bucket counts."""
    lines = [
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason, value in success.items():
        labels = f'engine="0",finished_reason="{reason}",model_name="{model}"'
        lines.append(f"vllm:request_success_total{{{labels}}} {value}")
    lines += [
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    cumulative = 0
    for le, count in zip((*BOUNDS, math.inf), ttft, strict=True):
        cumulative += count
        le_text = "+Inf" if math.isinf(le) else str(le)
        labels = f'engine="0",le="{le_text}",model_name="{model}"'
        lines.append(f"vllm:time_to_first_token_seconds_bucket{{{labels}}} {cumulative}")
    lines.append(f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="{model}"}} {cumulative}')
    lines.append(f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{model}"}} 1.0')
    lines += ["# TYPE vllm:num_requests_running gauge",
              f'vllm:num_requests_running{{model_name="{model}"}} 3']
    return "\n".join(lines) + "\n"


def test_parse_snapshot_keeps_counters_gauges_histograms() -> None:
    snap = parse_snapshot(vllm_page(success={"stop": 90, "length": 10}, ttft=[0, 50, 30, 10, 5, 5, 0, 0, 0]),
                          taken_at=12.0)
    assert snap.counter("vllm:request_success_total") == 100
    assert snap.counter("vllm:request_success_total", finished_reason="stop") == 90
    assert snap.counter("vllm:request_success_total", model_name="other") == 0
    assert snap.gauges[("vllm:num_requests_running", (("model_name", "m"),))] == 3
    buckets = snap.buckets("vllm:time_to_first_token_seconds")
    assert buckets[-1] == (math.inf, 100.0)
    assert buckets[0] == (0.01, 0.0)
    assert snap.taken_at == 12.0


def test_parse_snapshot_refuses_garbage() -> None:
    with pytest.raises(PromTextError):
        parse_snapshot("this is {not prometheus\n")


def test_delta_subtracts_and_handles_a_restart() -> None:
    start = parse_snapshot(vllm_page(success={"stop": 100}, ttft=[10, 10, 10, 10, 10, 10, 10, 10, 20]))
    end = parse_snapshot(vllm_page(success={"stop": 150}, ttft=[10, 20, 10, 10, 10, 10, 10, 10, 60]))
    window = delta(start, end)
    assert window.counter("vllm:request_success_total") == 50
    assert window.buckets("vllm:time_to_first_token_seconds")[-1] == (math.inf, 50)
    restarted = parse_snapshot(vllm_page(success={"stop": 7}, ttft=[7, 0, 0, 0, 0, 0, 0, 0, 0]))
    window = delta(start, restarted)
    assert window.counter("vllm:request_success_total") == 7  # counter went down: the pod restarted
    assert window.buckets("vllm:time_to_first_token_seconds")[-1] == (math.inf, 7)


def test_merge_adds_pods() -> None:
    a = parse_snapshot(vllm_page(success={"stop": 5}, ttft=[5, 0, 0, 0, 0, 0, 0, 0, 0]))
    b = parse_snapshot(vllm_page(success={"stop": 7}, ttft=[0, 7, 0, 0, 0, 0, 0, 0, 0]))
    both = merge([a, b])
    assert both.counter("vllm:request_success_total") == 12
    assert both.buckets("vllm:time_to_first_token_seconds")[:2] == ((0.01, 5), (0.05, 12))


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Values checked against Prometheus's histogram_quantile semantics.
        pytest.param(0.5, ((1.0, 0), (2.0, 10), (math.inf, 10)), 1.5, id="interpolate"),
        pytest.param(0.95, ((0.1, 50), (0.5, 90), (1.0, 100), (math.inf, 100)), 0.75, id="p95"),
        pytest.param(0.5, ((0.1, 10), (math.inf, 10)), 0.05, id="first-bucket-from-zero"),
        pytest.param(0.99, ((0.1, 10), (0.2, 10), (math.inf, 20)), 0.2, id="in-inf-bucket"),
        pytest.param(0.5, ((0.1, 0), (math.inf, 0)), math.nan, id="empty"),
        pytest.param(0.5, ((0.1, 10), (0.2, 20)), math.nan, id="no-inf-bucket"),
        pytest.param(0.5, ((1.0, 6), (2.0, 4), (math.inf, 10)), 5 / 6, id="non-monotone-fixed"),
    ],
)
def test_histogram_quantile(q: float, buckets: tuple[tuple[float, float], ...], expected: float) -> None:
    got = histogram_quantile(q, buckets)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def stats(requests: int, errors: int = 0, p95: float | None = 0.2) -> WindowStats:
    return WindowStats(requests=requests, errors=errors, error_rate=errors / requests if requests else 0.0,
                       ttft_p95=p95)


LIMITS = AnalysisThresholds(max_error_rate=0.01, max_ttft_p95=2.0, min_requests=20)


@pytest.mark.parametrize(
    ("canary", "stable", "outcome", "in_reason"),
    [
        pytest.param(stats(500, 1), stats(5000, 5), Outcome.PASS, "within limits", id="healthy"),
        pytest.param(stats(10), stats(5000), Outcome.INCONCLUSIVE, "fewer than 20", id="too-few-requests"),
        pytest.param(stats(500, 40), stats(5000, 5), Outcome.FAIL, "above maxErrorRate", id="error-rate"),
        pytest.param(stats(50, 1), stats(10), Outcome.INCONCLUSIVE, "not yet significantly",
                     id="one-error-in-fifty"),
        pytest.param(stats(500, 0, p95=3.0), stats(5000), Outcome.FAIL, "maxTTFTSecondsP95",
                     id="ttft-absolute"),
        pytest.param(stats(500, 0, p95=0.9), stats(5000, 0, p95=0.3), Outcome.FAIL, "1.5× stable",
                     id="ttft-vs-stable"),
        pytest.param(stats(500, 0, p95=0.9), stats(10, 0, p95=0.3), Outcome.PASS, "too few requests",
                     id="stable-too-quiet-to-compare"),
        pytest.param(stats(500, 0, p95=0.04), stats(5000, 0, p95=0.01), Outcome.PASS, "within",
                     id="ttft-slack-at-milliseconds"),
        pytest.param(stats(500, 0, p95=None), stats(5000), Outcome.INCONCLUSIVE, "no TTFT histogram",
                     id="no-histogram"),
    ],
)
def test_analyse(canary: WindowStats, stable: WindowStats, outcome: Outcome, in_reason: str) -> None:
    result = analyse(canary, stable, LIMITS)
    assert result.outcome is outcome
    assert in_reason in result.reason


def test_error_rate_against_stable_without_absolute_limit() -> None:
    limits = AnalysisThresholds(min_requests=20)
    assert analyse(stats(1000, 80), stats(1000, 5), limits).outcome is Outcome.FAIL
    assert analyse(stats(1000, 10), stats(1000, 5), limits).outcome is Outcome.PASS


def test_analyse_window_from_scrapes() -> None:
    canary_start = parse_snapshot(vllm_page(success={"stop": 0}, ttft=[0] * 9))
    canary_end = parse_snapshot(vllm_page(success={"stop": 200}, ttft=[0, 0, 0, 0, 0, 0, 0, 200, 0]))
    stable_start = parse_snapshot(vllm_page(success={"stop": 1000}, ttft=[0, 1000, 0, 0, 0, 0, 0, 0, 0]))
    stable_end = parse_snapshot(vllm_page(success={"stop": 3000}, ttft=[0, 3000, 0, 0, 0, 0, 0, 0, 0]))
    result = analyse_window(canary_window=delta(canary_start, canary_end), canary_errors=0,
                            stable_window=delta(stable_start, stable_end), stable_errors=0, thresholds=LIMITS)
    assert result.outcome is Outcome.FAIL  # canary p95 in (2.5, 5] s: above 2 s and far above stable
    assert result.canary.requests == 200 and result.stable.requests == 2000
    assert result.canary.ttft_p95 == pytest.approx(2.5 + 2.5 * 0.95)
    empty = WindowStats.from_window(MetricSnapshot(), errors=3)
    assert (empty.requests, empty.error_rate, empty.ttft_p95) == (3, 1.0, None)


@pytest.mark.parametrize(("success", "http_5xx", "requests", "errors"), [
    pytest.param({"stop": 90, "length": 10}, 0, 100, 0, id="vllm-0.11-no-errors"),
    pytest.param({"stop": 90, "length": 10, "abort": 2}, 3, 105, 3, id="aborts-finish-5xx-before-engine"),
    pytest.param({"stop": 90, "error": 0}, 0, 90, 0, id="vllm-0.32-error-series-at-zero"),
    # Not streamed: the engine's error is also the 500 the API server answered; counted once.
    pytest.param({"stop": 90, "error": 10}, 10, 100, 10, id="engine-errors-answered-500"),
    # Streamed: the answer was already 200, so only the engine's counter holds the failure.
    pytest.param({"stop": 90, "error": 10}, 0, 100, 10, id="engine-errors-in-streams"),
    pytest.param({"stop": 90, "error": 4}, 6, 96, 6, id="more-5xx-than-engine-errors"),
    pytest.param({"stop": 80, "length": 5, "repetition": 5}, 0, 90, 0, id="repetition-is-a-finish"),
])
def test_window_counts_engine_errors_as_failures_once(success: dict[str, int], http_5xx: int, requests: int,
                                                      errors: int) -> None:
    window = parse_snapshot(vllm_page(success=success, ttft=[0] * 9))
    stats = WindowStats.from_window(window, errors=http_5xx)
    assert (stats.requests, stats.errors) == (requests, errors)
    assert stats.error_rate == pytest.approx(errors / requests)

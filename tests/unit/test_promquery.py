"""Reading the pods' metrics from a Prometheus query API (``modelplane.metrics.promquery``).

The pure part (the query, and the answer turned into per-pod pages) in tables; the HTTP part
against ``tests.promfake.FakePrometheus`` on a socket, fed with a real simulator's page.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelplane.api.models import ScalingSpec
from modelplane.autoscaler.policy import Observation, PolicyState, ReadyPod, decide, policy_spec_from_scaling
from modelplane.metrics.promquery import (
    NAMES_REGEX,
    PrometheusError,
    PrometheusSource,
    build_query,
    query_pods,
    results_from_answer,
)
from modelplane.metrics.vllm import parse_vllm_metrics
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.server import SimServer
from tests.promfake import FakePrometheus

SOURCE = PrometheusSource(url="http://prometheus:9090")
PAGE = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="chat"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="chat"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="chat"} 0.25
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="chat"} 1200.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="chat"} 5000.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="chat"} 8.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="chat"} 10.0
vllm:time_to_first_token_seconds_count{model_name="chat"} 10.0
vllm:time_to_first_token_seconds_sum{model_name="chat"} 3.5
# TYPE http_requests_total counter
http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 10.0
"""


def _answer(prom: FakePrometheus, pods: list[str], *, now: float, lookback: float = 120) -> dict[str, Any]:
    """What ``prom`` would answer, without a socket (the same selection as its HTTP handler)."""
    result: dict[tuple[tuple[str, str], ...], list[list[object]]] = {}
    for at, labels, value in prom.samples:
        if now - lookback < at <= now and labels[prom.pod_label] in pods:
            result.setdefault(tuple(sorted(labels.items())), []).append(
                [at, "NaN" if math.isnan(value) else repr(value)])
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": dict(k), "values": v} for k, v in result.items()]}}


# --- the query -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "namespace", "pods", "expected"), [
    (SOURCE, "team-a", ["llama-7f9-abcde"],
     '{__name__=~"vllm:.+|http_requests_total", namespace="team-a", pod=~"llama\\\\-7f9\\\\-abcde"}[120s]'),
    (SOURCE, "ns", ["b", "a", "b"],
     '{__name__=~"vllm:.+|http_requests_total", namespace="ns", pod=~"a|b"}[120s]'),
    (replace(SOURCE, pod_label="kubernetes_pod_name", namespace_label="kubernetes_namespace",
             lookback_seconds=90.5), "ns", ["m.0"],
     '{__name__=~"vllm:.+|http_requests_total", kubernetes_namespace="ns", '
     'kubernetes_pod_name=~"m\\\\.0"}[91s]'),
], ids=["escapes-pod-names", "sorted-unique", "custom-labels-and-lookback"])
def test_query(source: PrometheusSource, namespace: str, pods: list[str], expected: str) -> None:
    assert build_query(source, namespace, pods) == expected


def test_query_of_no_pods_is_refused() -> None:
    with pytest.raises(ValueError, match="no pods"):
        build_query(SOURCE, "ns", [])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "prometheus:9090"}, "must be http"),
    ({"url": "http://p:9090", "pod_label": "pod-name"}, "not a Prometheus label name"),
    ({"url": "http://p:9090", "max_age_seconds": 0}, "must be > 0"),
], ids=["no-scheme", "bad-label", "zero-age"])
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusSource(**kwargs)


# --- the answer ------------------------------------------------------------------------------------


def test_the_newest_scrape_reads_like_the_page_itself() -> None:
    prom = FakePrometheus()
    prom.record("ns", "p0", PAGE.replace("} 3.0", "} 9.0"), at=1000.0)  # an older scrape
    prom.record("ns", "p0", PAGE, at=1010.0)
    [result] = results_from_answer(SOURCE, _answer(prom, ["p0"], now=1012.0), pods=["p0"],
                                   served_name="chat", wall_now=1012.0, monotonic_now=50.0)
    assert result.error is None
    direct = parse_vllm_metrics(PAGE, scraped_at=48.0, model_name="chat")
    assert result.metrics == direct  # scraped 2 s before now on the monotonic clock too
    assert result.text is not None and 'http_requests_total{handler="/v1/chat/completions"' in result.text
    assert "job=" not in result.text and "pod=" not in result.text and "instance=" not in result.text


def _results(prom: FakePrometheus, pods: list[str], *, now: float = 1012.0) -> dict[str, Any]:
    out = results_from_answer(SOURCE, _answer(prom, pods, now=now), pods=pods, served_name="chat",
                              wall_now=now, monotonic_now=100.0)
    return {r.pod: r for r in out}


def test_cases_of_pods() -> None:
    prom = FakePrometheus()
    prom.record("ns", "fresh", PAGE, at=1010.0)
    prom.record("ns", "old", PAGE, at=900.0)  # Prometheus stopped getting it 112 s ago
    prom.record("ns", "garbled", PAGE.replace("0.25", "NaN"), at=1010.0)
    prom.record("ns", "other-model", PAGE.replace('model_name="chat"', 'model_name="x"'), at=1010.0)
    got = _results(prom, ["fresh", "old", "missing", "garbled", "other-model"])
    assert got["fresh"].metrics is not None and got["fresh"].metrics.waiting == 3.0
    # Stale data is passed on with its age: the policy's max age decides (MetricsUnavailable).
    assert got["old"].metrics is not None and got["old"].metrics.scraped_at == pytest.approx(100.0 - 112.0)
    assert got["missing"].metrics is None and "no vLLM series for pod missing" in got["missing"].error
    assert got["garbled"].metrics is None and "non-finite" in got["garbled"].error
    assert got["other-model"].metrics is None
    assert "missing vllm:num_requests_waiting" in got["other-model"].error


def test_a_pod_scraped_by_two_jobs_counts_once_with_the_newer_sample() -> None:
    prom = FakePrometheus()
    prom.record("ns", "p0", PAGE, at=1005.0, job="vllm-old")
    prom.record("ns", "p0", PAGE.replace("} 3.0", "} 4.0"), at=1010.0, job="vllm")
    metrics = _results(prom, ["p0"])["p0"].metrics
    assert metrics is not None and metrics.waiting == 4.0 and metrics.running == 7.0


def test_a_native_histogram_series_is_skipped_not_an_error() -> None:
    prom = FakePrometheus()
    prom.record("ns", "p0", PAGE, at=1010.0)
    answer = _answer(prom, ["p0"], now=1012.0)
    answer["data"]["result"].append({
        "metric": {"__name__": "vllm:time_to_first_token_seconds", "pod": "p0", "namespace": "ns"},
        "histograms": [[1010.0, {"count": "10", "sum": "3.5", "buckets": []}]]})
    [result] = results_from_answer(SOURCE, answer, pods=["p0"], served_name="chat", wall_now=1012.0,
                                   monotonic_now=50.0)
    assert result.metrics is not None and result.metrics.requests_started == 10.0


def test_a_series_no_longer_exported_is_off_the_page() -> None:
    prom = FakePrometheus()
    prom.record("ns", "p0", PAGE + 'http_requests_total{handler="/v1/chat/completions",method="POST",'
                                   'status="5xx"} 2.0\n', at=1000.0)
    prom.record("ns", "p0", PAGE, at=1010.0)
    result = _results(prom, ["p0"])["p0"]
    assert result.text is not None and 'status="5xx"' not in result.text
    assert result.metrics is not None and result.metrics.scraped_at == pytest.approx(98.0)


@pytest.mark.parametrize(("answer", "message"), [
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, "parse error at char 5"),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, "expected a matrix"),
    ({"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}},
     "unreadable series"),
    ([1, 2], "not a Prometheus API answer"),
    ({"status": "success", "data": {"resultType": "matrix", "result": ["x"]}}, "unreadable series"),
], ids=["error-status", "vector", "series-without-labels", "not-an-object", "series-not-an-object"])
def test_unusable_answers_raise(answer: Any, message: str) -> None:
    with pytest.raises(PrometheusError, match=re.escape(message)):
        results_from_answer(SOURCE, answer, pods=["p0"], served_name=None, wall_now=0.0, monotonic_now=0.0)


# --- over HTTP -------------------------------------------------------------------------------------


async def test_query_pods_reads_a_simulators_page_through_the_query_api(tmp_path: Path) -> None:
    config = parse_vllm_args(["serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "chat",
                              "--max-model-len", "4096"])
    sim = SimServer(replace(config, host="127.0.0.1", port=0))
    await sim.start()
    prom = await FakePrometheus(token="s3cret").start()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim.url}/metrics") as resp:
                page = await resp.text()
            prom.record("team-a", "chat-0", page)
            source = PrometheusSource(url=prom.url, bearer_token_file=token)
            results = await query_pods(http, source, namespace="team-a", pods=["chat-0", "chat-1"],
                                       served_name="chat")
            by_pod = {r.pod: r for r in results}
            assert by_pod["chat-0"].error is None
            direct = parse_vllm_metrics(page, scraped_at=0.0, model_name="chat")
            assert by_pod["chat-0"].metrics is not None
            assert replace(by_pod["chat-0"].metrics, scraped_at=0.0) == direct
            assert by_pod["chat-1"].metrics is None and "no vLLM series" in (by_pod["chat-1"].error or "")
            assert prom.queries == [build_query(source, "team-a", ["chat-0", "chat-1"])]

            no_token = await query_pods(http, replace(source, bearer_token_file=None), namespace="team-a",
                                        pods=["chat-0"], served_name="chat")
            assert no_token[0].metrics is None and "bearer token required" in (no_token[0].error or "")

            prom.fail_with = (503, {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"})
            failed = await query_pods(http, source, namespace="team-a", pods=["chat-0"], served_name="chat")
            assert failed[0].metrics is None and "TSDB not ready" in (failed[0].error or "")

            down = PrometheusSource(url="http://127.0.0.1:1", timeout_seconds=1)
            unreachable = await query_pods(http, down, namespace="team-a", pods=["chat-0"],
                                           served_name="chat")
            assert unreachable[0].metrics is None and "127.0.0.1:1" in (unreachable[0].error or "")
    finally:
        await prom.stop()
        await sim.stop()


@pytest.mark.parametrize(("flags", "message"), [
    (["--prometheus-url", "prom:9090"], "must be http(s)://"),
    (["--prometheus-url", "http://p:9090", "--prometheus-max-age", "0"], "must be > 0"),
    (["--prometheus-url", "http://p:9090", "--prometheus-pod-label", "pod-name"], "not a Prometheus label"),
], ids=["no-scheme", "zero-age", "bad-label"])
def test_bad_prometheus_flags_stop_modelplane_run_with_the_reason(flags: list[str], message: str) -> None:
    from modelplane.cli import build_parser
    from modelplane.controller.run import StartupError, prometheus_source

    with pytest.raises(StartupError, match=re.escape(message)):
        prometheus_source(build_parser().parse_args(["run", *flags]))


def test_without_a_prometheus_url_the_pods_are_scraped() -> None:
    from modelplane.cli import build_parser
    from modelplane.controller.run import prometheus_source

    assert prometheus_source(build_parser().parse_args(["run"])) is None


# --- the latency objective's attainment through Prometheus ----------------------------------------

#: A simulator's page minus its TTFT histogram; ``_with_ttft`` adds one.
BASE = "\n".join(line for line in PAGE.splitlines() if "time_to_first_token" not in line) + "\n"


def _with_ttft(counts: dict[str, float], *, model: str = "chat") -> str:
    """``BASE`` with ``vllm:time_to_first_token_seconds`` buckets ``{le: cumulative count}``."""
    lines = [f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="{model}"}} {n}'
             for le, n in counts.items()]
    total = max(counts.values())
    return (BASE + "# TYPE vllm:time_to_first_token_seconds histogram\n" + "\n".join(lines) + "\n"
            + f'vllm:time_to_first_token_seconds_count{{model_name="{model}"}} {total}\n'
            + f'vllm:time_to_first_token_seconds_sum{{model_name="{model}"}} 1.0\n')


def _attainment(pages: dict[str, list[str]], ttft: str, *, through: FakePrometheus | None) -> tuple[
        float | None, str | None]:
    """Status attainment and source after each pod's pages were read in turn (two decisions 30 s
    apart), through ``through`` (a Prometheus scraping every 30 s) or scraped directly (None)."""
    spec = policy_spec_from_scaling(
        ScalingSpec.model_validate({"maxReplicas": 8, "objective": {"ttft": ttft, "percentile": 90}}),
        usd_per_replica_hour=1.0, replica_concurrency=4)
    state, decision = PolicyState(), None
    rounds = max(len(p) for p in pages.values())
    for i in range(rounds):
        wall = 1000.0 + 30 * i
        ready = []
        for pod, seq in pages.items():
            page = seq[min(i, len(seq) - 1)]
            if through is not None:
                through.record("ns", pod, page, at=wall)
        if through is not None:
            got = results_from_answer(SOURCE, _answer(through, list(pages), now=wall + 1), pods=list(pages),
                                      served_name="chat", wall_now=wall + 1, monotonic_now=wall + 1)
            ready = [ReadyPod(r.pod, r.metrics) for r in got]
        else:
            ready = [ReadyPod(pod, parse_vllm_metrics(seq[min(i, len(seq) - 1)], scraped_at=wall + 1,
                                                      model_name="chat")) for pod, seq in pages.items()]
        decision = decide(Observation(now=wall + 1, current_replicas=len(pages), ready=tuple(ready)),
                          spec, state)
        state = decision.state
    assert decision is not None and decision.objective is not None
    return decision.objective.attainment, decision.objective.source


#: vLLM's TTFT edges around the objectives below (1 s is an edge; 2 s is inside (1, 2.5]).
EARLY = {"0.5": 8.0, "1.0": 10.0, "2.5": 10.0, "+Inf": 10.0}
LATER = {"0.5": 18.0, "1.0": 22.0, "2.5": 28.0, "+Inf": 30.0}


@pytest.mark.parametrize(("pages", "ttft", "want"), [
    # 22 of 30 within 1 s: the first reading counts whole (a new pod), then the increase.
    ({"p0": [_with_ttft(EARLY), _with_ttft(LATER)]}, "1s", 22 / 30),
    # 2 s inside (1, 2.5]: 22 + 6 × (1 / 1.5) of 30, interpolated as histogram_quantile does.
    ({"p0": [_with_ttft(EARLY), _with_ttft(LATER)]}, "2s", (22 + 4) / 30),
    # Prometheus 3 writes le as a float ("1", not "1.0"): the same buckets.
    ({"p0": [_with_ttft({"0.5": 8, "1": 10, "2.5": 10, "+Inf": 10}),
             _with_ttft({"0.5": 18, "1": 22, "2.5": 28, "+Inf": 30})]}, "1s", 22 / 30),
    # Two pods add up.
    ({"p0": [_with_ttft(EARLY), _with_ttft(LATER)], "p1": [_with_ttft({"1.0": 0.0, "+Inf": 10.0})]},
     "1s", 22 / 40),
    # A pod whose histogram is another model's has none of ours: the other pod's alone.
    ({"p0": [_with_ttft(LATER)], "p1": [_with_ttft(LATER, model="other")]}, "1s", 22 / 30),
    # No TTFT histogram at all: no signal (no attainment, no source), not an error.
    ({"p0": [BASE]}, "1s", None),
], ids=["edge", "interpolated", "prometheus-3-le", "two-pods", "other-model", "no-histogram"])
def test_attainment_through_prometheus_is_the_direct_scrapes(pages: dict[str, list[str]], ttft: str,
                                                            want: float | None) -> None:
    through, source = _attainment(pages, ttft, through=FakePrometheus())
    direct, direct_source = _attainment(pages, ttft, through=None)
    assert through == direct and source == direct_source
    if want is None:
        assert through is None and source is None
    else:
        assert through == pytest.approx(want, abs=1e-4) and source == "pods"


@pytest.mark.parametrize("name", [
    "vllm:time_to_first_token_seconds_bucket", "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_count"])
def test_the_query_selects_the_latency_histograms(name: str) -> None:
    # PromQL anchors label regexes: the query's name matcher must match the whole series name.
    assert re.fullmatch(NAMES_REGEX, name)

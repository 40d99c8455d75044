"""What modelplane relies on from vLLM's server, checked against the server under test.

The operator probes ``/health``, scrapes ``/metrics`` (queue depth, running requests, KV cache use,
TTFT, token and success counters, with ``model_name`` and ``engine`` labels; failed requests from the
API server's ``http_requests_total{method,status,handler}``) and the evaluation gate
and the load generator call the OpenAI API, streamed and not. Each test states one such reliance;
the same suite passes against the simulator and against real vLLM (see ``conftest.py``).
The suite follows the operator's default image (vLLM 0.32, docs/vllm-versions.md): it also checks
that the names 0.32 removed are gone, so nothing may read them, and the finished reasons and gauges
0.32 added. Against vLLM 0.11 those checks fail and the rest pass.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conformance.conftest import Target, http_get
from tests.waiting import wait_until

GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds")
COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success",
            "vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
#: Deprecated in 0.9.2 / 0.11 (hidden behind --show-hidden-metrics-for-version) and gone in 0.32.
REMOVED = ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_queries", "vllm:gpu_prefix_cache_hits",
           "vllm:time_per_output_token_seconds")
#: ``vllm:request_success_total{finished_reason}`` in 0.32: "error" (the engine failed the request)
#: and "repetition" joined stop, length and abort. The live analysis counts "error" as a failure.
FINISHED_REASONS = {"stop", "length", "abort", "error", "repetition"}


@pytest.fixture
def client(target: Target) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{target.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def scrape(target: Target) -> dict[str, Any]:
    status, body = http_get(f"{target.url}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], family: str, name: str, target: Target, **labels: str) -> float:
    wanted = {"model_name": target.model, "engine": "0", **labels}
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{wanted}")


def post_sse(target: Target, path: str, body: dict[str, Any]) -> list[str]:
    request = urllib.request.Request(f"{target.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    return [event for event in text.split("\n\n") if event.strip()]


def test_health_answers_200_when_ready(target: Target) -> None:
    assert http_get(f"{target.url}/health")[0] == 200


def test_models_lists_the_served_name(client: openai.OpenAI, target: Target) -> None:
    models = list(client.models.list())
    assert target.model in [m.id for m in models]
    assert all(m.object == "model" for m in models)


def test_chat_completion_shape_and_usage(client: openai.OpenAI, target: Target) -> None:
    reply = client.chat.completions.create(
        model=target.model, max_tokens=8,
        messages=[{"role": "user", "content": "What is 17 * 23? Answer with a number only."}])
    assert reply.id and reply.object == "chat.completion" and reply.model == target.model
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_shape_and_max_tokens(client: openai.OpenAI, target: Target) -> None:
    reply = client.completions.create(model=target.model, prompt="Once upon a time", max_tokens=5)
    assert reply.object == "text_completion" and reply.model == target.model
    assert isinstance(reply.choices[0].text, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens <= 5


def test_streamed_chat_is_sse_with_one_finish_usage_and_done(target: Target) -> None:
    events = post_sse(target, "/v1/chat/completions", {
        "model": target.model, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello."}]})
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == target.model for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in with_choices if c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_chat_with_the_openai_client(client: openai.OpenAI, target: Target) -> None:
    stream = client.chat.completions.create(model=target.model, max_tokens=4, stream=True,
                                            messages=[{"role": "user", "content": "Count to three."}])
    chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_streamed_completion_ends_with_done(target: Target) -> None:
    events = post_sse(target, "/v1/completions", {"model": target.model, "prompt": "Hello", "max_tokens": 3,
                                                  "stream": True})
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000_000}, 400),
], ids=["unknown-model", "context-overflow"])
def test_errors_have_openai_status_codes(target: Target, body: dict[str, Any], status: int) -> None:
    request = urllib.request.Request(f"{target.url}/v1/chat/completions",
                                     data=json.dumps({"model": target.model, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == status
    assert "error" in json.loads(raised.value.read()) or raised.value.code == status


def test_metrics_have_the_names_types_and_labels_the_operator_reads(target: Target) -> None:
    families = scrape(target)
    for name in GAUGES:
        assert families[name].type == "gauge", name
    for name in HISTOGRAMS:
        assert families[name].type == "histogram", name
    for name in COUNTERS:
        assert families[name].type == "counter", name
    assert 0 <= sample(families, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc", target) <= 1
    assert sample(families, "vllm:num_requests_waiting", "vllm:num_requests_waiting", target) >= 0
    for name in HISTOGRAMS:
        buckets = [s for s in families[name].samples if s.name == f"{name}_bucket"
                   and s.labels.get("model_name") == target.model]
        assert buckets and buckets[-1].labels["le"] == "+Inf", name
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples
               if s.name == "vllm:request_success_total"}
    assert {"stop", "length"} <= reasons


def test_counters_and_histograms_count_a_request(client: openai.OpenAI, target: Target) -> None:
    before = scrape(target)
    reply = client.completions.create(model=target.model, prompt="The metrics count this request",
                                      max_tokens=4)
    assert reply.usage is not None

    def delta(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
        now = sample(families, family, name, target, **labels)
        return now - sample(before, family, name, target, **labels)

    # vLLM records metrics when the engine's output is processed: wait for them with a deadline.
    def finished_count(after: Any) -> float:
        return sum(delta(after, "vllm:request_success", "vllm:request_success_total", finished_reason=r)
                   for r in ("stop", "length"))

    def counted() -> Any:
        page = scrape(target)
        return page if finished_count(page) >= 1 else None

    after = wait_until(counted, timeout=10, what="vllm:request_success_total to count the request")
    finished = finished_count(after)
    assert finished == 1
    assert delta(after, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == reply.usage.prompt_tokens
    generated = delta(after, "vllm:generation_tokens", "vllm:generation_tokens_total")
    assert generated == reply.usage.completion_tokens
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds"):
        assert delta(after, name, f"{name}_count") == 1, name


def _http_requests(families: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    family = families["http_requests"]
    assert family.type == "counter"
    return {(s.labels["method"], s.labels["status"], s.labels["handler"]): float(s.value)
            for s in family.samples if s.name == "http_requests_total"}


def test_http_requests_total_counts_api_answers_by_grouped_status(target: Target) -> None:
    """The live analysis counts a revision's failed requests from ``status="5xx"`` of this counter.

    vLLM exports it through prometheus-fastapi-instrumentator (``mount_metrics``): status codes grouped
    as "2xx"/"4xx"/"5xx", the route's path as ``handler``, and /health and /metrics left out, so the
    operator's probes and scrapes are never counted.
    """
    chat = f"{target.url}/v1/chat/completions"
    before = _http_requests(scrape(target))
    ok = {"model": target.model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for body in (ok, {**ok, "model": "no-such-model"}):
        request = urllib.request.Request(chat, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=60).read()
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    assert http_get(f"{target.url}/health")[0] == 200

    def increase() -> dict[tuple[str, str, str], float]:
        after = _http_requests(scrape(target))
        return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}

    # The instrumentation counts once the response is sent: wait for it with a deadline.
    expected = {("POST", "2xx", "/v1/chat/completions"): 1.0, ("POST", "4xx", "/v1/chat/completions"): 1.0}
    wait_until(lambda: increase() == expected, timeout=10,
               what=f"http_requests_total to increase by {expected}")
    assert increase() == expected


def test_removed_metric_names_are_gone(target: Target) -> None:
    families = scrape(target)
    assert [name for name in REMOVED if name in families] == []


def test_request_success_has_a_series_for_every_finished_reason(target: Target) -> None:
    """Each reason's series exists from the start (at 0), "error" among them: a window's increase of
    ``finished_reason="error"`` is what the live analysis subtracts from the successes."""
    families = scrape(target)
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples
               if s.name == "vllm:request_success_total" and s.labels.get("model_name") == target.model}
    assert reasons == FINISHED_REASONS


def test_waiting_by_reason_adds_up_and_the_engine_is_awake(target: Target) -> None:
    families = scrape(target)
    assert families["vllm:num_requests_waiting_by_reason"].type == "gauge"
    by_reason = {s.labels["reason"]: s.value for s in families["vllm:num_requests_waiting_by_reason"].samples
                 if s.labels.get("model_name") == target.model}
    assert set(by_reason) == {"capacity", "deferred"}
    waiting = sample(families, "vllm:num_requests_waiting", "vllm:num_requests_waiting", target)
    assert sum(by_reason.values()) == waiting
    states = {s.labels["sleep_state"]: s.value for s in families["vllm:engine_sleep_state"].samples
              if s.labels.get("model_name") == target.model}
    assert states == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}

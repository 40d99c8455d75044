"""Parse one vLLM ``/metrics`` page (Prometheus text format) into the numbers the policy reads.

Pure: the handlers fetch the page (with a timeout) and pass its text here. The V1 engine's names
(shared/FACTS.md): gauges ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
``vllm:kv_cache_usage_perc`` and the counter ``vllm:generation_tokens_total``. A pod with several
engines (data parallel) reports one series per ``engine`` label: requests and tokens add up, KV
use is the fullest engine's, since that one saturates first. A page that cannot be parsed, or lacks
one of the four, raises ``MetricsError``; the policy then holds (``MetricsUnavailable``).

Two counters feed the throughput sizing when present (``None`` when absent, never an error, so a
page without them still scales on the four above): ``vllm:prompt_tokens_total`` and the count of
``vllm:time_to_first_token_seconds`` (requests that got their first token, i.e. started).
The buckets of ``vllm:time_to_first_token_seconds`` and ``vllm:request_time_per_output_token_seconds``
(summed over engines, per ``le``) feed the latency objective's attainment when present.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from modelplane.autoscaler.policy import PodMetrics

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
REQUESTS_STARTED = "vllm:time_to_first_token_seconds_count"
TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"
TPOT_BUCKET = "vllm:request_time_per_output_token_seconds_bucket"
_WANTED = (WAITING, RUNNING, KV_CACHE_USAGE, GENERATION_TOKENS)
_OPTIONAL = (PROMPT_TOKENS, REQUESTS_STARTED)


class MetricsError(ValueError):
    """The page is not usable: not Prometheus text, a metric missing, or a value out of range."""


def parse_vllm_metrics(text: str, *, scraped_at: float, model_name: str | None = None) -> PodMetrics:
    """The policy's view of one pod from its ``/metrics`` text; only ``model_name``'s series if given."""
    found: dict[str, list[float]] = {name: [] for name in _WANTED + _OPTIONAL}
    buckets: dict[str, dict[float, float]] = {TTFT_BUCKET: {}, TPOT_BUCKET: {}}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in found and sample.name not in buckets:
                    continue
                if model_name is not None and sample.labels.get("model_name") != model_name:
                    continue
                if sample.name in buckets:
                    le = float(sample.labels["le"])
                    by_le = buckets[sample.name]
                    by_le[le] = by_le.get(le, 0.0) + float(sample.value)
                    continue
                found[sample.name].append(float(sample.value))
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # what the parser raises on bad text
        raise MetricsError(f"not Prometheus text: {exc}") from exc
    missing = [name for name in _WANTED if not found[name]]
    if missing:
        raise MetricsError(f"missing {', '.join(missing)}")
    for name, values in found.items():
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise MetricsError(f"{name} has a negative or non-finite value: {values}")
    for name, by_le in buckets.items():
        if not all(math.isfinite(v) and v >= 0 for v in by_le.values()):
            raise MetricsError(f"{name} has a negative or non-finite value")
    kv = max(found[KV_CACHE_USAGE])
    if kv > 1.0 + 1e-6:
        raise MetricsError(f"{KV_CACHE_USAGE} is {kv}, outside 0..1")
    return PodMetrics(
        waiting=sum(found[WAITING]),
        running=sum(found[RUNNING]),
        kv_cache_usage=kv,
        generation_tokens=sum(found[GENERATION_TOKENS]),
        scraped_at=scraped_at,
        prompt_tokens=sum(found[PROMPT_TOKENS]) if found[PROMPT_TOKENS] else None,
        requests_started=sum(found[REQUESTS_STARTED]) if found[REQUESTS_STARTED] else None,
        ttft_buckets=_cumulative(buckets[TTFT_BUCKET]),
        tpot_buckets=_cumulative(buckets[TPOT_BUCKET]),
    )


def _cumulative(by_le: dict[float, float]) -> tuple[tuple[float, float], ...] | None:
    """(le, count) ascending, when the histogram has its +Inf bucket; else None (not usable)."""
    if math.inf not in by_le:
        return None
    return tuple(sorted(by_le.items()))

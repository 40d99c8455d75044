"""Read the pods' vLLM metrics from a Prometheus that already scrapes them, instead of from the pods.

For clusters that run Prometheus (or a compatible query API: Thanos, Mimir, VictoriaMetrics) and
would rather the operator did not open connections to every pod. ``modelplane run
--prometheus-url URL`` turns it on; the default stays the direct scrape (``modelplane.metrics.scrape``).

One query per ModelDeployment and reconcile, a range selector over the last ``lookback`` seconds,
so that every series comes back with the time Prometheus scraped it::

    {__name__=~"vllm:.+|http_requests_total", namespace="NS", pod=~"POD-A|POD-B"}[2m]

For each pod, the newest sample of each series is written back as a ``/metrics`` page (the
Prometheus labels ``job``, ``instance`` and the pod and namespace labels dropped), so the
autoscaler and the rollout analysis read it exactly as they read a scraped page. The pod's
``scraped_at`` is when Prometheus scraped it, converted to the operator's monotonic clock: data
Prometheus stopped collecting goes stale and the autoscaler holds (``MetricsUnavailable``), as it
does for a pod that does not answer. A pod without series, an error answer or a timeout are
reported per pod, like a failed scrape.

Prometheus scrapes every 15–60 s, so this source sees a queue later than the direct scrape (every
``--resync-seconds``); the staleness bound is ``--prometheus-max-age`` (default 120 s) instead of
the direct scrape's 30 s.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from modelplane.metrics.scrape import ScrapeResult
from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics

#: The series the operator reads: vLLM's own and the HTTP request counter the rollout analysis uses.
NAMES_REGEX = "vllm:.+|http_requests_total"
#: Labels Prometheus adds to every scraped series; not part of what the pod exported.
_TARGET_LABELS = frozenset({"__name__", "job", "instance"})
#: Samples this close to a pod's newest one come from the same scrape.
_SAME_SCRAPE_SECONDS = 1.0


class PrometheusError(RuntimeError):
    """The query could not be answered: unreachable, an error status, or an answer we cannot read."""


@dataclass(frozen=True)
class PrometheusSource:
    """Where and how to query: the ``modelplane run --prometheus-*`` flags."""

    url: str  #: base URL, e.g. ``http://prometheus-operated.monitoring:9090`` (``/api/v1/query`` is added)
    pod_label: str = "pod"
    namespace_label: str = "namespace"
    lookback_seconds: float = 120.0
    #: Samples older than this are stale (the policy then holds): a few of Prometheus' scrape intervals.
    max_age_seconds: float = 120.0
    timeout_seconds: float = 5.0
    #: A file holding a bearer token (re-read for every query, so a rotated token is picked up).
    bearer_token_file: Path | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"Prometheus URL must be http(s)://host[:port][/path], got {self.url!r}")
        for label in (self.pod_label, self.namespace_label):
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label):
                raise ValueError(f"not a Prometheus label name: {label!r}")
        if self.lookback_seconds <= 0 or self.max_age_seconds <= 0 or self.timeout_seconds <= 0:
            raise ValueError("Prometheus lookback, max age and timeout must be > 0")

    @property
    def query_url(self) -> str:
        return self.url.rstrip("/") + "/api/v1/query"


def _label_value(value: str) -> str:
    """``value`` escaped for a double-quoted string: the same rules in PromQL and the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _string_literal(value: str) -> str:
    """``value`` as a PromQL double-quoted string."""
    return f'"{_label_value(value)}"'


def build_query(source: PrometheusSource, namespace: str, pods: Sequence[str]) -> str:
    """The range selector for ``pods`` of ``namespace`` (label regexes are anchored by PromQL)."""
    if not pods:
        raise ValueError("no pods to query")
    pod_regex = "|".join(re.escape(p) for p in sorted(set(pods)))
    lookback = max(1, math.ceil(source.lookback_seconds))
    return (f'{{__name__=~{_string_literal(NAMES_REGEX)}, '
            f'{source.namespace_label}={_string_literal(namespace)}, '
            f'{source.pod_label}=~{_string_literal(pod_regex)}}}[{lookback}s]')


def _exposition(series: Mapping[tuple[str, tuple[tuple[str, str], ...]], str]) -> str:
    lines = []
    for (name, labels), value in sorted(series.items()):
        inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels)
        lines.append(f"{name}{{{inner}}} {value}" if inner else f"{name} {value}")
    return "\n".join(lines) + "\n"


def results_from_answer(source: PrometheusSource, answer: Any, *, pods: Sequence[str],
                        served_name: str | None, wall_now: float,
                        monotonic_now: float) -> list[ScrapeResult]:
    """One ``ScrapeResult`` per pod from the JSON answer of ``build_query`` (pure).

    Raises ``PrometheusError`` when the answer as a whole is unusable (not a success, not a matrix).
    """
    if not isinstance(answer, dict) or answer.get("status") != "success":
        detail = answer.get("error") if isinstance(answer, dict) else None
        raise PrometheusError(f"query failed: {detail or 'not a Prometheus API answer'}")
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(
            data.get("result"), list):
        raise PrometheusError("expected a matrix result from a range selector")
    wanted = set(pods)
    drop = _TARGET_LABELS | {source.pod_label, source.namespace_label}
    # pod → series → (timestamp, value) of its newest sample
    newest: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, str]]] = {}
    problems: dict[str, str] = {}
    for item in data["result"]:
        try:
            metric = item["metric"]
            name = str(metric["__name__"])
            pod = str(metric.get(source.pod_label, ""))
            # A native histogram comes as "histograms", not "values": the classic series we read
            # (``_bucket``, ``_count``) are separate series, so it is skipped.
            at, value = max(((float(t), str(v)) for t, v in item.get("values") or ()), default=(None, ""))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise PrometheusError(f"unreadable series in the answer: {exc!r}") from exc
        if pod not in wanted or at is None:
            continue
        try:
            float(value)
        except ValueError:
            problems[pod] = f"{name} has the value {value!r}"
            continue
        labels = tuple(sorted((str(k), str(v)) for k, v in metric.items() if k not in drop))
        key = (name, labels)
        seen = newest.setdefault(pod, {})
        # The same pod scraped by two jobs gives the same series twice: keep the newer sample.
        if key not in seen or seen[key][0] < at:
            seen[key] = (at, value)
    out = []
    for pod in pods:
        series = newest.get(pod)
        if pod in problems:
            out.append(ScrapeResult(pod, None, None, f"Prometheus: {problems[pod]}"))
            continue
        if not series:
            out.append(ScrapeResult(pod, None, None, f"Prometheus has no vLLM series for pod {pod} "
                                                     f"in the last {source.lookback_seconds:g}s"))
            continue
        # Every series of one scrape carries that scrape's time; a series whose newest sample is
        # older was no longer exported (a label value gone) and is left out, as it is off the page.
        scraped_wall = max(at for at, _ in series.values())
        scraped_at = monotonic_now - max(0.0, wall_now - scraped_wall)
        text = _exposition({key: value for key, (at, value) in series.items()
                            if at >= scraped_wall - _SAME_SCRAPE_SECONDS})
        try:
            metrics = parse_vllm_metrics(text, scraped_at=scraped_at, model_name=served_name)
        except MetricsError as exc:
            out.append(ScrapeResult(pod, None, text, f"Prometheus series of {pod}: {exc}"))
            continue
        out.append(ScrapeResult(pod, metrics, text, None))
    return out


async def query_pods(session: aiohttp.ClientSession, source: PrometheusSource, *, namespace: str,
                     pods: Sequence[str], served_name: str | None) -> list[ScrapeResult]:
    """Every pod's metrics from Prometheus; a failed query fails every pod (the policy holds)."""
    if not pods:
        return []
    headers = {}
    try:
        if source.bearer_token_file is not None:
            headers["Authorization"] = f"Bearer {source.bearer_token_file.read_text().strip()}"
        async with session.post(source.query_url, data={"query": build_query(source, namespace, pods)},
                                headers=headers,
                                timeout=aiohttp.ClientTimeout(total=source.timeout_seconds)) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError as exc:
                raise PrometheusError(f"{source.query_url} answered {resp.status} without JSON") from exc
        return results_from_answer(source, answer, pods=pods, served_name=served_name,
                                   wall_now=time.time(), monotonic_now=time.monotonic())
    except (aiohttp.ClientError, TimeoutError, OSError, PrometheusError) as exc:
        reason = f"{source.query_url}: {type(exc).__name__} {exc}"
        return [ScrapeResult(pod, None, None, reason) for pod in pods]

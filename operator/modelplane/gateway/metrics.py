"""The gateway's Prometheus metrics: what clients feel, per model and revision, and what is held.

Labels: ``namespace`` and ``model_deployment`` name the ModelDeployment (both empty for a request
that named no served model), ``revision`` the revision-hash label of the replica that answered
(empty when none did), so a canary's figures sit beside its stable's. With ``--workers`` the
processes write their samples to ``PROMETHEUS_MULTIPROC_DIR`` and any of them answers /metrics
with the sum (gauges: the sum over live workers). A single process also exports its own resident
memory, CPU and file descriptors (``process_*``); with ``--workers`` those are left out, as one
worker's figures would pass for the replica's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from modelplane.gateway.usage import Usage

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

_MODEL = ["namespace", "model_deployment"]
_REVISION = [*_MODEL, "revision"]

REQUESTS = Counter("modelplane_gateway_requests_total",
                   "Requests answered, by the HTTP status the client got.", [*_REVISION, "code"],
                   registry=REGISTRY)
ERRORS = Counter("modelplane_gateway_errors_total",
                 "Requests that failed, by reason: the gateway's error codes (docs/gateway.md), "
                 "upstream_status (a replica answered 5xx) or client_disconnected.",
                 [*_REVISION, "reason"], registry=REGISTRY)
RETRIES = Counter("modelplane_gateway_upstream_retries_total",
                  "Requests sent again to another replica after a failure before the first byte.",
                  _MODEL, registry=REGISTRY)
#: vLLM's TTFT buckets plus 1.5, 2 and 3 s, so that a latency objective at a common value
#: (``spec.scaling.objective.ttft``) is counted exactly, not interpolated inside (1, 2.5].
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
                3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
TTFT = Histogram("modelplane_gateway_time_to_first_token_seconds",
                 "From the request's arrival to its stream's first output event, as the client sees "
                 "it (streaming requests).", _REVISION, registry=REGISTRY,
                 buckets=TTFT_BUCKETS)
DURATION = Histogram("modelplane_gateway_request_duration_seconds",
                     "From the request's arrival to the last byte of its answer, holding included.",
                     _REVISION, registry=REGISTRY,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
                              10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0))
PROMPT_TOKENS = Counter("modelplane_gateway_prompt_tokens_total",
                        "Prompt tokens of the answered requests, from the answers' usage.",
                        _REVISION, registry=REGISTRY)
GENERATION_TOKENS = Counter("modelplane_gateway_generation_tokens_total",
                            "Generated tokens of the answered requests: from the answer's usage "
                            "(source=usage), or counted from a stream without usage (source=stream: "
                            "events with output, one per decoding step).",
                            [*_REVISION, "source"], registry=REGISTRY)
HELD = Gauge("modelplane_gateway_held_requests",
             "Requests waiting for a ready replica of their ModelDeployment (none is ready).",
             _MODEL, registry=REGISTRY, multiprocess_mode="livesum")
HOLD_SECONDS = Histogram("modelplane_gateway_hold_duration_seconds",
                         "How long requests were held before a replica got ready (or the deadline).",
                         _MODEL, registry=REGISTRY,
                         buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0))
IN_FLIGHT = Gauge("modelplane_gateway_in_flight_requests",
                  "Requests sent to a replica and not yet answered in full.", _REVISION,
                  registry=REGISTRY, multiprocess_mode="livesum")


@dataclass(frozen=True)
class Where:
    """The label values of one request: its ModelDeployment and the revision that answered."""

    namespace: str = ""
    model_deployment: str = ""
    revision: str = ""

    @property
    def model(self) -> tuple[str, str]:
        return (self.namespace, self.model_deployment)

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.namespace, self.model_deployment, self.revision)


def count_tokens(labels: tuple[str, str, str], usage: Usage) -> None:
    """Add one answer's tokens to the counters."""
    if usage.prompt_tokens:
        PROMPT_TOKENS.labels(*labels).inc(usage.prompt_tokens)
    if usage.completion_tokens:
        GENERATION_TOKENS.labels(*labels, usage.source).inc(usage.completion_tokens)


def exposition() -> bytes:
    """The text of /metrics: this process's registry, or every worker's when they share a directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def forget(namespace: str, model_deployment: str) -> None:
    """Drop the counters and histograms of a ModelDeployment that is gone.

    The gauges stay: requests still held or in flight for it will bring them back to zero.
    """
    for metric in (REQUESTS, ERRORS, RETRIES, TTFT, DURATION, HOLD_SECONDS, PROMPT_TOKENS, GENERATION_TOKENS):
        for labels in list(metric._metrics):  # noqa: SLF001 — prometheus-client has no prefix removal
            if labels[:2] == (namespace, model_deployment):
                metric.remove(*labels)

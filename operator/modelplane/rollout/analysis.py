"""Live analysis of one traffic step: does the canary serve as well as stable under real traffic?

Input: each revision's metric increase over the step's window (``promtext.delta`` of the snapshots
taken at the window's start and end, summed over the revision's pods with ``promtext.merge``) plus
the failed requests the proxy/pods counted in the window (a plain int the caller provides, because
vLLM's success counter does not see requests that never reached the engine).

Per revision: requests = successes + errors, error rate = errors / requests, TTFT p95 from the
``vllm:time_to_first_token_seconds`` buckets (Prometheus ``histogram_quantile``).

vLLM 0.32's engine also finishes a request with ``finished_reason="error"`` (an internal error
during generation, e.g. a failed KV load) and counts it in ``vllm:request_success_total`` too;
vLLM 0.11 had only stop, length and abort. Such a request is a failure, not a success: it is
answered 500 when not streamed (so the 5xx count already holds it), and 200 followed by an error
event when streamed (so only the engine's counter does). The failures are therefore the larger
of the two counts, which is exact for either kind alone and never counts one request twice.

Outcomes, checked in this order:

* INCONCLUSIVE — the canary served fewer than ``min_requests`` in the window (too little evidence
  either way; the state machine holds the weight and extends the window);
* FAIL — the canary's error rate is *significantly* above ``max_error_rate`` (its Wilson lower bound
  at ``confidence`` is above it, so one unlucky error among 20 requests does not roll back), or
  significantly above stable's rate plus ``error_rate_margin``; or its TTFT p95 is above
  ``max_ttft_p95`` or above ``ttft_ratio`` × stable's p95 + ``ttft_slack_seconds`` (the slack keeps
  histogram bucket granularity at millisecond latencies from deciding);
* INCONCLUSIVE — the canary's observed error rate is above a limit but not significantly (more
  requests will tell);
* PASS — otherwise. Comparisons against stable are made only when stable served ``min_requests``
  too; otherwise only the absolute thresholds apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from modelplane.api.models import AnalysisSpec
from modelplane.metrics.promtext import MetricSnapshot, histogram_quantile
from modelplane.rollout.stats import wilson_lower_bound

SUCCESS_COUNTER = "vllm:request_success_total"
#: The ``finished_reason`` of a request the engine failed (vLLM 0.32, not 0.11; docs/vllm-versions.md).
ENGINE_ERROR_REASON = "error"
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
#: The gateway's view of the same (``modelplane.gateway.metrics``): answers by HTTP status, and
#: time to first token as the client saw it.
GATEWAY_REQUESTS = "modelplane_gateway_requests_total"
GATEWAY_TTFT = "modelplane_gateway_time_to_first_token_seconds"
#: The status the gateway counts for a client that left before its answer: neither served nor failed.
CLIENT_GONE = "499"


class Outcome(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class AnalysisThresholds:
    """What the canary must meet; the first two come from ``spec.rollout.evaluation.analysis``."""

    max_error_rate: float | None = None
    max_ttft_p95: float | None = None
    min_requests: int = 20
    ttft_ratio: float = 1.5  #: canary p95 above this × stable p95 (+ slack) fails
    ttft_slack_seconds: float = 0.05
    error_rate_margin: float = 0.02  #: canary rate significantly above stable's + this fails
    confidence: float = 0.95

    @classmethod
    def from_api(cls, analysis: AnalysisSpec | None) -> AnalysisThresholds:
        """From the parsed ``spec.rollout.evaluation.analysis`` (None: no absolute thresholds); the
        rest are the operator's own settings, tuned with ``replace``."""
        if analysis is None:
            return cls()
        return cls(max_error_rate=analysis.max_error_rate, max_ttft_p95=analysis.max_ttft_seconds_p95)


@dataclass(frozen=True)
class WindowStats:
    """One revision's traffic in the window."""

    requests: int
    errors: int
    error_rate: float  #: 0 when there were no requests
    ttft_p95: float | None  #: None when the histogram is missing or empty

    @classmethod
    def from_window(cls, window: MetricSnapshot, *, errors: int) -> WindowStats:
        """From a window's metric increase (``promtext.delta``) and the 5xx answers counted.

        Requests the engine finished with ``finished_reason="error"`` are failures, not successes.
        """
        finished = int(round(window.counter(SUCCESS_COUNTER)))
        engine_errors = int(round(window.counter(SUCCESS_COUNTER, finished_reason=ENGINE_ERROR_REASON)))
        failed = max(0, errors, engine_errors)
        requests = finished - engine_errors + failed
        p95 = histogram_quantile(0.95, window.buckets(TTFT_HISTOGRAM))
        return cls(
            requests=requests,
            errors=failed,
            error_rate=failed / requests if requests else 0.0,
            ttft_p95=None if math.isnan(p95) else p95,
        )


def gateway_stats(window: MetricSnapshot, *, namespace: str, name: str, revision: str) -> WindowStats:
    """One revision's traffic in the window as the gateways saw it (their window increase, summed
    over the gateway replicas): every answer but a client's own departure is a request, every 5xx
    (a replica's, or the gateway's 502/503/504 when none could answer) a failure, and TTFT is
    the client's."""
    selector = {"namespace": namespace, "model_deployment": name, "revision": revision}
    requests = errors = 0.0
    for (metric, labels), value in window.counters.items():
        if metric != GATEWAY_REQUESTS or not all(dict(labels).get(k) == v for k, v in selector.items()):
            continue
        code = dict(labels).get("code", "")
        if code == CLIENT_GONE:
            continue
        requests += value
        if code.startswith("5"):
            errors += value
    p95 = histogram_quantile(0.95, window.buckets(GATEWAY_TTFT, **selector))
    n, failed = int(round(requests)), int(round(errors))
    return WindowStats(requests=n, errors=failed, error_rate=failed / n if n else 0.0,
                       ttft_p95=None if math.isnan(p95) else p95)


@dataclass(frozen=True)
class AnalysisResult:
    outcome: Outcome
    reason: str
    canary: WindowStats
    stable: WindowStats


def analyse(canary: WindowStats, stable: WindowStats, thresholds: AnalysisThresholds) -> AnalysisResult:
    """Decide one window; pure."""
    t = thresholds

    def result(outcome: Outcome, reason: str) -> AnalysisResult:
        return AnalysisResult(outcome=outcome, reason=reason, canary=canary, stable=stable)

    if canary.requests < t.min_requests:
        return result(Outcome.INCONCLUSIVE,
                      f"canary served {canary.requests} requests in the window, fewer than {t.min_requests}")
    compare = stable.requests >= t.min_requests
    error_low = wilson_lower_bound(canary.errors, canary.requests, confidence=t.confidence)
    rate = f"canary error rate {canary.error_rate:.2%} ({canary.errors}/{canary.requests})"

    failures: list[str] = []
    doubts: list[str] = []
    if t.max_error_rate is not None and canary.error_rate > t.max_error_rate:
        if error_low > t.max_error_rate:
            failures.append(f"{rate} is above maxErrorRate {t.max_error_rate:.2%}")
        else:
            doubts.append(f"{rate} is above maxErrorRate {t.max_error_rate:.2%}, not yet significantly")
    if compare and canary.error_rate > stable.error_rate + t.error_rate_margin:
        limit = stable.error_rate + t.error_rate_margin
        if error_low > limit:
            failures.append(f"{rate} is above stable's {stable.error_rate:.2%} + {t.error_rate_margin:.2%}")
        else:
            doubts.append(f"{rate} is above stable's {stable.error_rate:.2%}, not yet significantly")
    if canary.ttft_p95 is not None:
        p95 = f"canary TTFT p95 {canary.ttft_p95:.3f}s"
        if t.max_ttft_p95 is not None and canary.ttft_p95 > t.max_ttft_p95:
            failures.append(f"{p95} is above maxTTFTSecondsP95 {t.max_ttft_p95:.3f}s")
        if compare and stable.ttft_p95 is not None:
            limit = t.ttft_ratio * stable.ttft_p95 + t.ttft_slack_seconds
            if canary.ttft_p95 > limit:
                failures.append(f"{p95} is above {t.ttft_ratio:g}× stable's {stable.ttft_p95:.3f}s")
    elif t.max_ttft_p95 is not None:
        doubts.append("the canary exposes no TTFT histogram for the window")

    if failures:
        return result(Outcome.FAIL, "; ".join(failures))
    if doubts:
        return result(Outcome.INCONCLUSIVE, "; ".join(doubts))
    ttft = f", TTFT p95 {canary.ttft_p95:.3f}s" if canary.ttft_p95 is not None else ""
    versus = "" if compare else " (stable served too few requests to compare)"
    return result(Outcome.PASS, f"{rate}{ttft} within limits{versus}")


def analyse_window(
    *,
    canary_window: MetricSnapshot,
    canary_errors: int,
    stable_window: MetricSnapshot,
    stable_errors: int,
    thresholds: AnalysisThresholds,
) -> AnalysisResult:
    """Convenience: window increases (``promtext.delta``/``merge``) and error counts → decision."""
    return analyse(
        WindowStats.from_window(canary_window, errors=canary_errors),
        WindowStats.from_window(stable_window, errors=stable_errors),
        thresholds,
    )

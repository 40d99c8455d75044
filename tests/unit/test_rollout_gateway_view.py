"""Live analysis judges by what clients got where gateways run (their view of each revision)."""

from __future__ import annotations

import pytest

from modelplane.metrics.promtext import MetricSnapshot, parse_snapshot
from modelplane.metrics.scrape import ScrapeResult
from modelplane.rollout.analysis import AnalysisThresholds, Outcome, WindowStats, gateway_stats
from modelplane.rollout.driver import Window, analyse
from tests.unit.test_rollout_analysis import vllm_page

NS, MD, CANARY, STABLE = "ns", "chat", "bbbb", "aaaa"
BUCKETS = (0.1, 0.5, 1.0, 5.0)


def gateway_text(answers: dict[tuple[str, str, str], int], ttft: dict[tuple[str, str], list[float]]) -> str:
    """A gateway's /metrics: requests by (model_deployment, revision, code), TTFT observations."""
    lines = ["# TYPE modelplane_gateway_requests_total counter"]
    for (md, rev, code), n in answers.items():
        lines.append(f'modelplane_gateway_requests_total{{namespace="{NS}",model_deployment="{md}",'
                     f'revision="{rev}",code="{code}"}} {n}')
    lines.append("# TYPE modelplane_gateway_time_to_first_token_seconds histogram")
    for (md, rev), seen in ttft.items():
        labels = f'namespace="{NS}",model_deployment="{md}",revision="{rev}"'
        for le in (*BUCKETS, float("inf")):
            count = sum(1 for s in seen if s <= le)
            bound = "+Inf" if le == float("inf") else str(le)
            lines.append(f'modelplane_gateway_time_to_first_token_seconds_bucket{{{labels},le="{bound}"}} '
                         f'{count}')
        lines.append(f"modelplane_gateway_time_to_first_token_seconds_count{{{labels}}} {len(seen)}")
        lines.append(f"modelplane_gateway_time_to_first_token_seconds_sum{{{labels}}} {sum(seen)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("answers", "expected"), [
    # 5xx are failures (a replica's or the gateway's own 502/503); 4xx are answers, not failures.
    pytest.param({(MD, CANARY, "200"): 90, (MD, CANARY, "502"): 6, (MD, CANARY, "500"): 4,
                  (MD, CANARY, "400"): 3}, (103, 10), id="5xx-fail"),
    # A client that left (499) is neither served nor failed.
    pytest.param({(MD, CANARY, "200"): 10, (MD, CANARY, "499"): 5}, (10, 0), id="client-gone"),
    # Another revision's and another model's series are not this one's.
    pytest.param({(MD, STABLE, "200"): 50, ("other", CANARY, "200"): 7}, (0, 0), id="not-ours"),
])
def test_gateway_stats_counts(answers: dict[tuple[str, str, str], int], expected: tuple[int, int]) -> None:
    stats = gateway_stats(parse_snapshot(gateway_text(answers, {})), namespace=NS, name=MD, revision=CANARY)
    assert (stats.requests, stats.errors) == expected
    assert stats.ttft_p95 is None


def test_gateway_stats_ttft_is_the_clients() -> None:
    seen = [0.05] * 90 + [3.0] * 10  # a slow tail as the client saw it
    stats = gateway_stats(parse_snapshot(gateway_text({(MD, CANARY, "200"): 100}, {(MD, CANARY): seen})),
                          namespace=NS, name=MD, revision=CANARY)
    # Rank 95 of 100 lies in the (1, 5] bucket, 5 of its 10 in: 1 + 4 × 5/10, as histogram_quantile.
    assert stats == WindowStats(requests=100, errors=0, error_rate=0.0, ttft_p95=3.0)


def snapshots(per_gateway: dict[str, dict[tuple[str, str, str], int]]) -> dict[str, MetricSnapshot]:
    return {url: parse_snapshot(gateway_text(answers, {})) for url, answers in per_gateway.items()}


THRESHOLDS = AnalysisThresholds(max_error_rate=0.05)


def test_the_window_is_judged_by_the_gateways_increase_over_every_replica() -> None:
    # Before the window each gateway had already counted 1000 good canary answers: not this window's.
    start = snapshots({"g1": {(MD, CANARY, "200"): 1000, (MD, STABLE, "200"): 1000},
                       "g2": {(MD, CANARY, "200"): 1000}})
    # In the window: 40 + 40 canary answers, 16 of them 503 from the gateway (no replica could answer).
    now = snapshots({"g1": {(MD, CANARY, "200"): 1032, (MD, CANARY, "503"): 8, (MD, STABLE, "200"): 1400},
                     "g2": {(MD, CANARY, "200"): 1032, (MD, CANARY, "503"): 8}})
    window = Window(CANARY, 0, {}, start)
    verdict = analyse(window, [], {}, canary_key=CANARY, stable_key=STABLE, thresholds=THRESHOLDS,
                      gateways=now, md=(NS, MD))
    assert verdict.outcome is Outcome.FAIL
    assert (verdict.canary.requests, verdict.canary.errors, verdict.stable.requests) == (80, 16, 400)
    assert verdict.reason.endswith("(as the gateways saw it)")


@pytest.mark.parametrize("window_gateways", [None, {}])
def test_without_the_gateways_view_the_pods_decide(window_gateways: dict[str, MetricSnapshot] | None) -> None:
    # No gateway read when the window began (None), or the gateways saw no canary request ({} then
    # nothing): the pods' metrics decide; here there are none, so too few requests to judge.
    now = snapshots({"g1": {(MD, STABLE, "200"): 400}})
    window = Window(CANARY, 0, {}, window_gateways)
    verdict = analyse(window, [], {}, canary_key=CANARY, stable_key=STABLE, thresholds=THRESHOLDS,
                      gateways=now, md=(NS, MD))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "as the gateways saw it" not in verdict.reason


@pytest.mark.parametrize(("canary_ttft", "outcome"), [
    # Unstreamed requests only: the gateways counted answers but timed no first token. The pods'
    # own TTFT histograms decide the latency half: a canary far slower than stable fails on it ...
    pytest.param([0, 0, 0, 0, 0, 0, 50, 50, 0], Outcome.FAIL, id="pods-say-slow"),
    # ... and one as fast as stable passes (the gateways' counts still decide the error half).
    pytest.param([0, 100, 0, 0, 0, 0, 0, 0, 0], Outcome.PASS, id="pods-say-fast"),
])
def test_without_streamed_requests_ttft_comes_from_the_pods(canary_ttft: list[int], outcome: Outcome) -> None:
    start = snapshots({"g1": {}})
    now = snapshots({"g1": {(MD, CANARY, "200"): 100, (MD, STABLE, "200"): 100}})
    fast = [0, 100, 0, 0, 0, 0, 0, 0, 0]
    pods = [ScrapeResult("canary-0", None, vllm_page(success={"stop": 100}, ttft=canary_ttft), None),
            ScrapeResult("stable-0", None, vllm_page(success={"stop": 100}, ttft=fast), None)]
    window = Window(CANARY, 0, {}, start)
    verdict = analyse(window, pods, {"canary-0": CANARY, "stable-0": STABLE}, canary_key=CANARY,
                      stable_key=STABLE, thresholds=THRESHOLDS, gateways=now, md=(NS, MD))
    assert verdict.reason.endswith("(as the gateways saw it)"), verdict.reason
    assert verdict.canary.ttft_p95 is not None and verdict.stable.ttft_p95 is not None
    assert verdict.outcome is outcome, verdict.reason
    assert (verdict.canary.requests, verdict.stable.requests) == (100, 100)

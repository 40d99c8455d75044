"""bench/mesh (pure parts): the overflow rule, folding a run and its requests sent away, the verdict."""

from __future__ import annotations

import pytest
from bench.autoscale.harness import RunResult
from bench.autoscale.traces import Request, Trace
from bench.mesh.run import Outcome, crossover, external_ttft, outcome, saturated_over, verdict


@pytest.mark.parametrize(("waiting", "away"), [
    pytest.param([], True, id="no-ready-replica"),
    pytest.param([4, 4], False, id="at-threshold"),
    pytest.param([5, 4], True, id="above-threshold"),
    pytest.param([9, 0], True, id="per-replica-average"),
])
def test_saturated_over(waiting: list[int], away: bool) -> None:
    assert saturated_over(4)(waiting) is away


TRACE = Trace("t", "test", (Request(0.0, 1000, 10), Request(1.0, 30000, 10), Request(2.0, 500, 5)), 3.0)


def test_a_run_and_its_requests_sent_away_fold_into_one_outcome() -> None:
    result = RunResult("modelplane", "t", 3, 1, 0, 1, gpu_hours=0.5, cost_usd=2.69, direction_changes=0,
                       max_replicas=1, ttft_p50=0.1, ttft_p95=0.1, external=[0, 1])
    got = outcome("overflow", TRACE, result, slo=2.0)
    # request 1's 30000-token prompt takes 0.4 + 3 s at the API: a miss
    assert (got.within_slo, got.external_requests, got.external_prompt_tokens) == (2, 2, 31000)
    assert got.external_usd() == pytest.approx((31000 * 3 + 20 * 15) / 1e6)
    assert got.total_usd(0.5) == pytest.approx(2.69 + 0.5 * (31000 * 3 + 20 * 15) / 1e6)
    assert external_ttft(1000) == pytest.approx(0.5)


def test_external_only_sends_everything_away_and_uses_no_gpu() -> None:
    got = outcome("external", TRACE, None, slo=2.0)
    assert (got.external_requests, got.gpu_usd, got.within_slo) == (3, 0.0, 2)


def o(name: str, within: int, gpu_usd: float, prompt: int) -> Outcome:
    return Outcome(name, 100, within, 1.0, gpu_usd, 1, prompt, 0)


def test_verdict_and_crossover() -> None:
    met = [o("self-hosted", 97, 10.0, 0), o("external", 100, 0.0, 5_000_000),
           o("overflow (T=4)", 99, 8.0, 100_000)]
    assert verdict(met).startswith("- **met**")
    assert "0.667×" in crossover(met)  # $10 / $15 of API at list price
    missed = [o("self-hosted", 97, 10.0, 0), o("external", 100, 0.0, 1_000_000),
              o("overflow (T=4)", 99, 8.0, 0)]
    assert verdict(missed).startswith("- **not met**")  # the API alone ($3) is cheaper

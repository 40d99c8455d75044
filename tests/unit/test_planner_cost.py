"""Cost tables: fleet $/hour, token rates from counter samples, $ per million tokens, status.cost."""

from __future__ import annotations

import math

import pytest

from modelplane.planner import (
    CounterSample,
    cost_status,
    fleet_hourly_usd,
    token_rate,
    usd_per_million_tokens,
)


@pytest.mark.parametrize(("replicas", "gpus", "price", "want"), [
    (1, 1, 2.69, 2.69),
    (3, 2, 2.69, 16.14),
    (2, 8, 5.41, 86.56),
    (0, 8, 5.41, 0.0),
    (4, 1, 0.0, 0.0),
], ids=["one", "three-by-two", "h200-fleet", "scaled-to-zero", "free"])
def test_fleet_hourly_usd(replicas: int, gpus: int, price: float, want: float) -> None:
    got = fleet_hourly_usd(replicas=replicas, gpus_per_replica=gpus, usd_per_gpu_hour=price)
    assert got == pytest.approx(want)


def test_fleet_hourly_usd_refuses_negatives() -> None:
    with pytest.raises(ValueError):
        fleet_hourly_usd(replicas=-1, gpus_per_replica=1, usd_per_gpu_hour=1.0)


@pytest.mark.parametrize(("earlier", "later", "want"), [
    (CounterSample(0, 0), CounterSample(10, 1000), 100.0),
    (CounterSample(100, 5000), CounterSample(130, 5000), 0.0),
    (CounterSample(100, 5000), CounterSample(110, 300), 30.0),  # reset: the pod restarted
    (CounterSample(100, 5000), CounterSample(100, 6000), None),  # no time passed
    (CounterSample(100, 5000), CounterSample(90, 6000), None),  # clock went backwards
    (CounterSample(0, math.nan), CounterSample(10, 10), None),
], ids=["steady", "idle", "counter-reset", "same-instant", "clock-backwards", "nan"])
def test_token_rate(earlier: CounterSample, later: CounterSample, want: float | None) -> None:
    assert token_rate(earlier, later) == (pytest.approx(want) if want is not None else None)


@pytest.mark.parametrize(("hourly", "tps", "want"), [
    # FACTS.md: Llama 3.1 8B on 1xH100 at 8,088 tok/s -> $0.09 at $2.69/h, $0.21 at $6.16/h
    (2.69, 8088, 0.0924),
    (6.16, 8088, 0.2116),
    # FACTS.md: Llama 3.1 70B FP8 on 2xH100 at 864 tok/s per GPU -> $0.86 per GPU-hour at $2.69
    (2 * 2.69, 2 * 864, 0.8648),
    (2 * 6.16, 2 * 864, 1.9804),
    (10.0, 0.0, None),  # idle: undefined, not infinite
    (10.0, None, None),  # no rate measured yet
    (10.0, -5.0, None),
    (10.0, math.inf, None),
    (0.0, 100.0, 0.0),
], ids=["8b-runpod", "8b-coreweave", "70b-fp8-runpod", "70b-fp8-coreweave", "idle", "unmeasured",
        "negative-rate", "infinite-rate", "free-gpus"])
def test_usd_per_million_tokens(hourly: float, tps: float | None, want: float | None) -> None:
    got = usd_per_million_tokens(hourly, tps)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, abs=5e-4)


@pytest.mark.parametrize(("hourly", "tps", "want"), [
    (5.38, 1000.0, {"hourlyUSD": 5.38, "usdPerMillionTokens": 1.4944}),
    (5.38, 0.0, {"hourlyUSD": 5.38}),
    (0.0, None, {"hourlyUSD": 0.0}),
], ids=["serving", "idle", "scaled-to-zero"])
def test_cost_status(hourly: float, tps: float | None, want: dict[str, float]) -> None:
    assert cost_status(hourly_usd=hourly, tokens_per_second=tps) == want

"""``modelplane usage`` (pure parts): spend summed over gateways, a window's difference, Prometheus'
answers, the table; ``modelplane team-key``'s Secret holds only the key's hash."""

from __future__ import annotations

import base64

import pytest

from modelplane.gateway.teams import build_directory
from modelplane.metrics.spendtext import (
    Report,
    Spend,
    by_model,
    from_exposition,
    from_prometheus,
    prometheus_queries,
)
from modelplane.usagecli import render, team_secret

GATEWAY_A = """
modelplane_gateway_spend_tokens_total{team="alpha",model="assistant",backend="llama",kind="prompt"} 1000
modelplane_gateway_spend_tokens_total{team="alpha",model="assistant",backend="llama",kind="completion"} 2000
modelplane_gateway_spend_usd_total{team="alpha",model="assistant",backend="llama",kind="self_hosted"} 0.001
modelplane_gateway_spend_reference_usd_total{team="alpha",model="assistant",backend="llama"} 0.045
modelplane_gateway_requests_total{namespace="ns",model_deployment="llama",revision="r",code="200"} 3
"""
GATEWAY_B = """
modelplane_gateway_spend_tokens_total{team="alpha",model="assistant",backend="llama",kind="completion"} 1000
modelplane_gateway_spend_usd_total{team="beta",model="assistant",backend="external/api",kind="external"} 0.5
"""


def test_the_gateways_are_summed_by_team_model_and_backend() -> None:
    report = from_exposition([GATEWAY_A, GATEWAY_B])
    assert report.rows[("alpha", "assistant", "llama")] == Spend(1000, 3000, 0.001, 0, 0.045)
    assert report.rows[("beta", "assistant", "external/api")] == Spend(external_usd=0.5)
    assert len(report.rows) == 2


def test_by_model_sums_teams_and_backends() -> None:
    spent = by_model(from_exposition([GATEWAY_A, GATEWAY_B]))
    assert spent["assistant"] == Spend(1000, 3000, 0.001, 0.5, 0.045)


def test_a_window_is_the_difference_of_two_readings() -> None:
    later = from_exposition([GATEWAY_A, GATEWAY_B])
    earlier = from_exposition([GATEWAY_A])
    diff = later.minus(earlier)
    assert diff.rows[("alpha", "assistant", "llama")] == Spend(0, 1000, 0, 0, 0)


def test_prometheus_answers() -> None:
    queries = prometheus_queries("30d")
    assert queries["modelplane_gateway_spend_usd_total"] == (
        "sum by (team, model, backend, kind) (increase(modelplane_gateway_spend_usd_total[30d]))")
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"team": "beta", "model": "m", "backend": "external/api", "kind": "external"},
         "value": [1, "2.5"]}]}}
    report = from_prometheus({"modelplane_gateway_spend_usd_total": answer})
    assert report.rows[("beta", "m", "external/api")].external_usd == 2.5


def test_the_table_totals_and_compares_with_the_reference() -> None:
    text = render(Report({("alpha", "m", "llama"): Spend(1e6, 1e6, 1.0, 0, 30.0),
                          ("", "m", "external/api"): Spend(0, 0, 0, 2.0, 0)}))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["TEAM", "MODEL", "BACKEND"]
    assert lines[1].startswith("-  ")  # no team
    total = next(line for line in lines if line.startswith("TOTAL")).split()
    assert total[1:] == ["1000000", "1000000", "1.0000", "2.0000", "3.0000", "30.0000"]
    assert "10.0% of the $30.0000" in text


@pytest.mark.parametrize(("tpm", "budget", "annotations"), [
    pytest.param(None, None, None, id="no-limits"),
    pytest.param(500, 12.5, {"modelplane.dev/tokens-per-minute": "500",
                             "modelplane.dev/monthly-budget-usd": "12.5"}, id="limits"),
])
def test_the_team_secret_holds_the_hash_and_the_gateway_reads_it(tpm: int | None, budget: float | None,
                                                                 annotations: dict[str, str] | None) -> None:
    secret = team_secret("alpha", "mp-secret-key", namespace="ns", name="team-alpha", tokens_per_minute=tpm,
                         monthly_budget_usd=budget)
    stored = [base64.b64decode(v).decode() for v in secret["data"].values()]
    assert all("mp-secret-key" not in v for v in stored)
    assert secret["metadata"].get("annotations") == annotations
    (team,) = set(build_directory([secret]).values())
    assert (team.name, team.tokens_per_minute, team.monthly_budget_usd) == ("alpha", tpm, budget)

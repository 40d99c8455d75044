"""The usage ledger (pure): what a process counts, what it writes, and limits summed across processes."""

from __future__ import annotations

import pytest

from modelplane.gateway.errors import GatewayError
from modelplane.gateway.ledger import (
    DATA_KEY,
    SHARD_LABEL,
    Ledger,
    Usage,
    month_of,
    read_shard,
    route_key,
    shard_name,
    shard_object,
    team_key,
)
from modelplane.gateway.teams import Limiter, Team

NOV_30 = 1_796_040_000.0  # 2026-11-30T12:00:00Z
DEC_1 = 1_796_083_201.0  # 2026-12-01T00:00:01Z


def other(month: str = "2026-11", usd: dict[str, float] | None = None,
          tokens: dict[str, dict[int, int]] | None = None) -> Usage:
    return Usage(month, usd or {}, tokens or {})


@pytest.mark.parametrize(("others", "key", "expected"), [
    pytest.param({}, team_key("alpha"), 2.0, id="own-only"),
    pytest.param({"b": other(usd={team_key("alpha"): 3.0})}, team_key("alpha"), 5.0,
                 id="plus-another-process"),
    pytest.param({"b": other(usd={team_key("alpha"): 3.0}), "c": other(usd={team_key("alpha"): 0.5})},
                 team_key("alpha"), 5.5, id="plus-two"),
    pytest.param({"b": other("2026-10", usd={team_key("alpha"): 3.0})}, team_key("alpha"), 2.0,
                 id="an-earlier-month-counts-nothing"),
    pytest.param({"b": other(usd={team_key("beta"): 3.0})}, team_key("alpha"), 2.0, id="another-team"),
    pytest.param({"b": other(usd={route_key("ns", "r"): 1.5})}, route_key("ns", "r"), 1.5, id="a-route"),
])
def test_spend_is_the_sum_of_every_process_in_the_month(
        others: dict[str, Usage], key: str, expected: float) -> None:
    ledger = Ledger(others=others)
    ledger.add(team_key("alpha"), 2.0, now=NOV_30)
    assert ledger.spent(key, now=NOV_30 + 60) == pytest.approx(expected)


def test_tokens_are_summed_over_the_last_minute_across_processes() -> None:
    ledger = Ledger(others={"b": other(tokens={"alpha": {1000: 30, 1050: 20}}),
                            "c": other(tokens={"alpha": {900: 500}})})  # c's left the window
    ledger.add_tokens("alpha", 40, now=1030.7)
    assert ledger.tokens("alpha", now=1059.0) == 30 + 20 + 40
    assert ledger.tokens("alpha", now=1060.5) == 20 + 40  # second 1000 has left
    assert ledger.tokens("beta", now=1059.0) == 0


def test_a_limit_holds_across_processes() -> None:
    """Two gateway replicas each under the limit, together over it: the next request is refused."""
    ledger = Ledger(others={"replica-b": other(tokens={"alpha": {1000: 60}},
                                              usd={team_key("alpha"): 0.6})})
    limiter = Limiter(ledger)
    limiter.add("alpha", tokens=40, usd=0.4, now=1010.0)
    with pytest.raises(GatewayError, match="used 100 tokens in the last minute, its limit is 100"):
        limiter.check(Team("alpha", tokens_per_minute=100), now=1020.0)
    when = 1_796_040_000.0
    ledger.others["replica-b"] = other(month_of(when), usd={team_key("alpha"): 0.6})
    limiter.add("alpha", tokens=0, usd=0.4, now=when)
    with pytest.raises(GatewayError, match=r"has spent \$1.0000 of its monthly budget of \$1"):
        limiter.check(Team("alpha", monthly_budget_usd=1.0), now=when)


@pytest.mark.parametrize(("adds", "moved"), [
    pytest.param([("usd", 1.0)], True, id="spend"),
    pytest.param([("tokens", 5)], True, id="tokens"),
    pytest.param([("usd", 0.0), ("tokens", 0)], False, id="nothing"),
])
def test_the_version_moves_only_when_something_was_counted(adds: list[tuple[str, float]],
                                                           moved: bool) -> None:
    ledger = Ledger()
    for kind, amount in adds:
        if kind == "usd":
            ledger.add(team_key("a"), amount, now=NOV_30)
        else:
            ledger.add_tokens("a", int(amount), now=NOV_30)
    assert (ledger.version > 0) is moved


def test_the_snapshot_holds_this_month_and_the_window_only() -> None:
    ledger = Ledger()
    ledger.add(team_key("a"), 5.0, now=NOV_30)
    ledger.add_tokens("a", 10, now=NOV_30)
    ledger.add_tokens("b", 7, now=DEC_1 - 5)
    snap = ledger.snapshot(DEC_1)
    assert snap == Usage("2026-12", {}, {"b": {int(DEC_1 - 5): 7}})


def test_a_restarted_process_takes_its_counts_back() -> None:
    stored = Usage("2026-11", {team_key("a"): 3.0}, {"a": {int(NOV_30) - 10: 4}})
    ledger = Ledger()
    ledger.add(team_key("a"), 1.0, now=NOV_30)  # counted before the shard was read
    ledger.resume(stored, now=NOV_30)
    assert ledger.spent(team_key("a"), now=NOV_30) == pytest.approx(4.0)
    assert ledger.tokens("a", now=NOV_30) == 4
    ledger.resume(Usage("2026-10", {team_key("a"): 9.0}), now=NOV_30)  # last month's: nothing
    assert ledger.spent(team_key("a"), now=NOV_30) == pytest.approx(4.0)


def test_a_shard_round_trips_through_its_configmap() -> None:
    usage = Usage("2026-11", {team_key("a"): 1.25, route_key("ns", "r"): 0.5}, {"a": {1000: 3}})
    obj = shard_object("modelplane-usage-gw-8000-w0", "modelplane-system", usage, resource_version="7")
    assert obj["metadata"]["labels"][SHARD_LABEL] == "gateway"
    assert obj["metadata"]["resourceVersion"] == "7"
    assert read_shard(obj) == usage
    assert "resourceVersion" not in shard_object("n", "ns", usage, resource_version=None)["metadata"]


@pytest.mark.parametrize(("text", "words"), [
    pytest.param("not json", "not a usage shard", id="not-json"),
    pytest.param('{"month": 3}', "month is not a string", id="month-type"),
    pytest.param('{"usd": {"team/a": "lots"}}', "not a usage shard", id="amount"),
    pytest.param('{"usd": {"team/a": -1}}', "negative or non-finite", id="negative"),
    pytest.param('{"tokens": {"a": {"x": 1}}}', "not a usage shard", id="second"),
])
def test_a_bad_shard_is_refused_and_not_counted(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Usage.decode(text)
    assert read_shard({"metadata": {"name": "x"}, "data": {DATA_KEY: text}}) is None


@pytest.mark.parametrize(("pod", "port", "worker", "expected"), [
    pytest.param("gateway-7d9f-abcde", 8000, 0, "modelplane-usage-gateway-7d9f-abcde-8000-w0", id="pod"),
    pytest.param("My_Laptop.local", 41234, 2, "modelplane-usage-my-laptop-local-41234-w2", id="sanitized"),
    pytest.param("", 8000, 0, "modelplane-usage-gateway-8000-w0", id="empty"),
])
def test_shard_names(pod: str, port: int, worker: int, expected: str) -> None:
    assert shard_name(pod, port, worker) == expected


def test_a_long_host_name_is_cut_to_a_valid_name() -> None:
    name = shard_name("x" * 400, 8000, 11)
    assert len(name) <= 253 and name.endswith("-8000-w11") and name.startswith("modelplane-usage-x")

"""Teams (pure): keys stored hashed, the directory from labelled Secrets, rate limits and budgets."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from modelplane.gateway.errors import GatewayError
from modelplane.gateway.ledger import month_of
from modelplane.gateway.teams import (
    Limiter,
    Team,
    Teams,
    bearer,
    build_directory,
    hash_key,
    new_key,
    team_from_secret,
)

NOV_30 = 1_796_040_000.0  # 2026-11-30T12:00:00Z
DEC_1 = 1_796_083_201.0  # 2026-12-01T00:00:01Z


def secret(team: str, *keys: str, annotations: dict[str, str] | None = None,
           name: str = "s") -> dict[str, Any]:
    data = {f"k{i}": base64.b64encode(hash_key(k).encode()).decode() for i, k in enumerate(keys)}
    data["note"] = base64.b64encode(b"not a hash").decode()
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"modelplane.dev/team": team},
                         "annotations": annotations or {}}, "data": data}


def test_a_key_is_stored_as_its_sha256_and_never_itself() -> None:
    key = new_key()
    stored = hash_key(key)
    assert stored == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert key not in stored and key.startswith("mp-") and len(key) > 40


def test_the_directory_maps_each_hash_to_its_team_and_limits() -> None:
    directory = build_directory([
        secret("alpha", "a1", "a2", annotations={"modelplane.dev/tokens-per-minute": "1000",
                                                 "modelplane.dev/monthly-budget-usd": "25.5"}),
        secret("beta", "b1", name="t")])
    assert directory[hash_key("a1")] == directory[hash_key("a2")] == Team("alpha", 1000, 25.5)
    assert directory[hash_key("b1")] == Team("beta")
    assert len(directory) == 3  # the value that is not a hash is no key


@pytest.mark.parametrize(("annotations", "words"), [
    pytest.param({"modelplane.dev/tokens-per-minute": "lots"}, "tokens-per-minute: expected a number",
                 id="not-a-number"),
    pytest.param({"modelplane.dev/monthly-budget-usd": "-1"}, "monthly-budget-usd: must be >= 0",
                 id="negative"),
])
def test_a_bad_limit_names_the_annotation(annotations: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        team_from_secret(secret("alpha", "a", annotations=annotations))
    assert build_directory([secret("alpha", "a", annotations=annotations)]) == {}  # not served, logged


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param({"Authorization": "Bearer abc"}, "abc", id="bearer"),
    pytest.param({"authorization": "bearer  abc "}, "abc", id="case-and-spaces"),
    pytest.param({"Authorization": "Basic abc"}, None, id="not-bearer"),
    pytest.param({}, None, id="none"),
])
def test_bearer(headers: dict[str, str], expected: str | None) -> None:
    assert bearer(headers) == expected


def test_tokens_count_over_a_sliding_minute() -> None:
    limiter = Limiter()
    team = Team("alpha", tokens_per_minute=100)
    limiter.add("alpha", tokens=60, usd=0, now=1000.0)
    limiter.add("alpha", tokens=40, usd=0, now=1030.0)
    with pytest.raises(GatewayError, match="used 100 tokens in the last minute, its limit is 100"):
        limiter.check(team, now=1059.0)
    limiter.check(team, now=1060.5)  # the first 60 have left the window
    assert limiter.tokens_last_minute("alpha", 1060.5) == 40


def test_a_budget_is_per_calendar_month() -> None:
    limiter = Limiter()
    team = Team("alpha", monthly_budget_usd=1.0)
    limiter.add("alpha", tokens=0, usd=1.0, now=NOV_30)
    with pytest.raises(GatewayError) as caught:
        limiter.check(team, now=NOV_30 + 60)
    assert caught.value.status == 429 and "monthly budget of $1" in caught.value.message
    assert month_of(NOV_30) == "2026-11" and month_of(DEC_1) == "2026-12"
    limiter.check(team, now=DEC_1)  # a new month


def test_admit_refuses_unknown_keys_with_401() -> None:
    teams = Teams({hash_key("good"): Team("alpha")})
    assert teams.admit({"Authorization": "Bearer good"}).name == "alpha"
    for headers in ({"Authorization": "Bearer bad"}, {}):
        with pytest.raises(GatewayError) as caught:
            teams.admit(headers)
        assert caught.value.status == 401

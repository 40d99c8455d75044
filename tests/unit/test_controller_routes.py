"""ModelRoute status (pure): unknown backends, Secrets without their key, loops, transition times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane.api.route import ModelRoute
from modelplane.controller.routes import FORBIDDEN, _same, build_status, loop_through, problems

B0 = "spec.rules[0].backends[0]"
EXT = {"name": "api", "baseURL": "https://api.example.com/v1", "model": "gpt",
       "apiKeySecret": {"name": "api-key", "key": "token"}}
NOW = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)


def route(name: str, *backends: dict[str, Any], status: dict[str, Any] | None = None) -> ModelRoute:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns", "generation": 2},
                           "spec": {"rules": [{"backends": list(backends)}]}}
    if status is not None:
        obj["status"] = status
    return ModelRoute.parse(obj)


@pytest.mark.parametrize(("backends", "others", "secrets", "expected"), [
    pytest.param([{"modelDeployment": "llama"}], [], {}, [], id="all-there"),
    pytest.param([{"modelDeployment": "nope"}], [], {}, [("UnknownBackend", f"{B0}.modelDeployment")],
                 id="unknown-deployment"),
    pytest.param([{"modelRoute": "nope"}], [], {}, [("UnknownBackend", f"{B0}.modelRoute")],
                 id="unknown-route"),
    pytest.param([{"external": EXT}], [], {"api-key": None},
                 [("SecretKeyMissing", f"{B0}.external.apiKeySecret.name")], id="no-secret"),
    pytest.param([{"external": EXT}], [], {"api-key": {"other"}},
                 [("SecretKeyMissing", f"{B0}.external.apiKeySecret.key")], id="no-key"),
    pytest.param([{"external": EXT}], [], {"api-key": {"token"}}, [], id="key-there"),
    pytest.param([{"external": EXT}], [], {"api-key": FORBIDDEN}, [], id="secrets-unreadable-not-checked"),
    pytest.param([{"modelRoute": "r"}], [], {}, [("RouteLoop", "spec.rules")], id="points-at-itself"),
    pytest.param([{"modelRoute": "b"}], [("b", {"modelRoute": "r"})], {}, [("RouteLoop", "spec.rules")],
                 id="loop-through-another"),
    pytest.param([{"modelRoute": "b"}], [("b", {"modelDeployment": "llama"})], {}, [],
                 id="route-of-routes-ok"),
])
def test_problems(backends: list[dict[str, Any]], others: list[tuple[str, dict[str, Any]]],
                  secrets: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    r = route("r", *backends)
    routes = {"r": r, **{name: route(name, b) for name, b in others}}
    found = problems(r, models={"llama"}, routes=routes, secrets=secrets)
    assert [(p.reason, p.path) for p in found] == expected


def test_a_loop_names_its_routes() -> None:
    a, b = route("a", {"modelRoute": "b"}), route("b", {"modelRoute": "c"})
    c = route("c", {"modelRoute": "a"})
    assert loop_through(a, {"a": a, "b": b, "c": c}) == ["a", "b", "c", "a"]
    assert loop_through(b, {"b": b, "c": route("c", {"modelDeployment": "x"})}) is None


def test_status_says_the_first_problem_with_its_field_and_counts_the_rest() -> None:
    r = route("r", {"modelDeployment": "nope"}, {"modelRoute": "gone"})
    status = build_status(r, problems(r, models=set(), routes={"r": r}, secrets={}), now=NOW)
    condition = status["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("RoutesResolved", "False",
                                                                             "UnknownBackend")
    assert condition["message"].startswith(f"{B0}.modelDeployment: no ModelDeployment nope")
    assert "and 1 more" in condition["message"]
    assert status["observedGeneration"] == 2 and status["backends"] == 2


def test_the_transition_time_is_kept_while_the_status_holds() -> None:
    earlier = {"conditions": [{"type": "RoutesResolved", "status": "True", "reason": "Resolved",
                               "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
    r = route("r", {"modelDeployment": "llama"}, status=earlier)
    kept = build_status(r, [], now=NOW)
    assert kept["conditions"][0]["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    changed = build_status(r, problems(r, models=set(), routes={"r": r}, secrets={}), now=NOW)
    assert changed["conditions"][0]["lastTransitionTime"] == "2026-12-03T17:00:00Z"


def test_an_unchanged_status_is_not_written_again() -> None:
    r = route("r", {"modelDeployment": "llama"})
    a = build_status(r, [], now=NOW)
    b = build_status(r, [], now=datetime(2026, 12, 4, tzinfo=UTC))
    assert _same(a, b)
    assert not _same(a, build_status(r, problems(r, models=set(), routes={}, secrets={}), now=NOW))


def test_spend_goes_into_status_and_a_change_of_it_is_written() -> None:
    from modelplane.metrics.spendtext import Spend

    r = route("r", {"modelDeployment": "llama"})
    status = build_status(r, [], now=NOW, spend=Spend(100, 200, 0.0001, 0.0032, 0.0045))
    assert status["spend"] == {"promptTokens": 100, "completionTokens": 200, "selfHostedUSD": 0.0001,
                               "externalUSD": 0.0032, "referenceUSD": 0.0045}
    assert "spend" not in build_status(r, [], now=NOW)  # the operator reads no gateway
    assert not _same(status, build_status(r, [], now=NOW, spend=Spend(100, 201, 0.0001, 0.0032, 0.0045)))
    spec = {"rules": [{"backends": [{"modelDeployment": "a"}]}]}
    ModelRoute.parse({"metadata": {"name": "r"}, "spec": spec, "status": status})  # the schema takes it

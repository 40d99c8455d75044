"""Model mesh decisions (pure): rule matching, weights, candidates with fallbacks, plans, spend."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelplane.api.route import FallbackSpec, ModelRoute
from modelplane.gateway.mesh import (
    Features,
    Load,
    Target,
    candidates,
    falls_back,
    features,
    match_rule,
    plan,
    rewrite_model,
    weighted_first,
)
from modelplane.gateway.spend import Price, reference_usd
from modelplane.gateway.usage import Usage

EXT = {"name": "api", "baseURL": "https://api.example.com/v1", "model": "big",
       "inputUSDPerMillionTokens": 3, "outputUSDPerMillionTokens": 15}


def route(rules: list[dict[str, Any]], name: str = "assistant", **spec: Any) -> ModelRoute:
    return ModelRoute.parse({"metadata": {"name": name, "namespace": "ns"}, "spec": {"rules": rules, **spec}})


TASKS = route([
    {"name": "classify", "match": {"header": {"name": "x-modelplane-task", "value": "classification"}},
     "backends": [{"modelDeployment": "mistral"}]},
    {"name": "long", "match": {"minPromptTokens": 1000}, "backends": [{"external": EXT}]},
    {"name": "tools", "match": {"tools": True}, "backends": [{"external": EXT}]},
    {"name": "json", "match": {"responseFormat": "json_schema", "maxPromptTokens": 100},
     "backends": [{"modelDeployment": "llama"}]},
    {"name": "default", "backends": [{"modelDeployment": "llama"}, {"external": EXT}]},
])


@pytest.mark.parametrize(("feats", "rule"), [
    pytest.param(Features(headers={"x-modelplane-task": "classification"}), "classify", id="header"),
    pytest.param(Features(headers={"x-modelplane-task": "Classification"}), "default",
                 id="header-value-exact"),
    pytest.param(Features(headers={"x-modelplane-task": "classification"}, prompt_tokens=5000), "classify",
                 id="first-match-wins"),
    pytest.param(Features(prompt_tokens=1000), "long", id="min-prompt-tokens-inclusive"),
    pytest.param(Features(prompt_tokens=999), "default", id="below-min-prompt-tokens"),
    pytest.param(Features(tools=True), "tools", id="tools"),
    pytest.param(Features(response_format="json_schema", prompt_tokens=100), "json",
                 id="all-conditions-hold"),
    pytest.param(Features(response_format="json_schema", prompt_tokens=101), "default",
                 id="one-condition-fails"),
    pytest.param(Features(), "default", id="default"),
])
def test_match_rule(feats: Features, rule: str) -> None:
    found = match_rule(TASKS, feats)
    assert found is not None and found[0] == rule


def test_the_default_applies_wherever_it_is_listed_and_none_without_it() -> None:
    r = route([{"backends": [{"modelDeployment": "a"}]},
               {"match": {"tools": True}, "backends": [{"modelDeployment": "b"}]}])
    assert match_rule(r, Features(tools=True))[1].backends[0].model_deployment == "b"  # type: ignore[index]
    no_default = route([{"match": {"tools": True}, "backends": [{"modelDeployment": "b"}]}])
    assert match_rule(no_default, Features()) is None


@pytest.mark.parametrize(("doc", "headers", "expected"), [
    pytest.param({"messages": [{"role": "user", "content": "x" * 400}]}, {}, Features(prompt_tokens=100),
                 id="chat-chars-over-four"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": "abcde"}]}]}, {},
                 Features(prompt_tokens=2), id="content-parts-round-up"),
    pytest.param({"prompt": "abcd"}, {"X-Task": "t"}, Features(headers={"x-task": "t"}, prompt_tokens=1),
                 id="completion-and-headers-lower-cased"),
    pytest.param({"messages": [], "tools": [{"type": "function"}],
                  "response_format": {"type": "json_object"}},
                 {}, Features(tools=True, response_format="json_object"), id="tools-and-format"),
    pytest.param({"messages": [], "tools": []}, {}, Features(), id="empty-tools-is-no-tools"),
])
def test_features(doc: dict[str, Any], headers: dict[str, str], expected: Features) -> None:
    assert features(doc, headers) == expected


@pytest.mark.parametrize(("weights", "u", "index"), [
    pytest.param([None, None], 0.99, 0, id="no-weights-first"),
    pytest.param([80, 20], 0.0, 0, id="low-draw"),
    pytest.param([80, 20], 0.79, 0, id="just-below-boundary"),
    pytest.param([80, 20], 0.80, 1, id="at-boundary"),
    pytest.param([0, 100], 0.0, 1, id="zero-weight-never-first"),
    pytest.param([50, 0, 50], 0.5, 2, id="zero-in-the-middle-skipped"),
    pytest.param([100, 0], 0.999999, 0, id="top-of-range"),
])
def test_weighted_first(weights: list[int | None], u: float, index: int) -> None:
    assert weighted_first(weights, u) == index


def test_weights_split_the_traffic_in_proportion() -> None:
    r = route([{"backends": [{"modelDeployment": "a", "weight": 70},
                             {"modelDeployment": "b", "weight": 30}]}])
    firsts = [candidates(r, Features(), {}, u=i / 1000)[0].label for i in range(1000)]
    assert firsts.count("a") == 700 and firsts.count("b") == 300


def test_candidates_put_the_others_after_the_chosen_one_in_list_order() -> None:
    r = route([{"backends": [{"modelDeployment": "a", "weight": 0}, {"modelDeployment": "b", "weight": 100},
                             {"external": EXT, "weight": 0}]}])
    assert [t.label for t in candidates(r, Features(), {}, u=0.3)] == ["b", "a", "external/api"]


def test_a_route_of_routes_expands_and_a_loop_is_cut() -> None:
    outer = route([{"backends": [{"modelRoute": "inner"}, {"modelDeployment": "c"}]}], name="outer")
    inner = route([{"backends": [{"modelDeployment": "a"}, {"modelRoute": "outer"}]}], name="inner")
    routes = {("ns", "outer"): outer, ("ns", "inner"): inner}
    got = candidates(outer, Features(), routes, u=0.0)
    assert [(t.route, t.label) for t in got] == [("inner", "a"), ("outer", "c")]


def target(name: str, external: bool = False) -> Target:
    if external:
        return Target(route="r", rule="x", namespace="ns", external=route(
            [{"backends": [{"external": {**EXT, "name": name}}]}]).spec.rules[0].backends[0].external)
    return Target(route="r", rule="x", namespace="ns", model_deployment=name)


FB = FallbackSpec()
SAT = FallbackSpec(saturation_queue_per_replica=4)
HOT = Load(ready_replicas=2)


@pytest.mark.parametrize(("names", "loads", "fallback", "over_budget", "tries", "skipped"), [
    pytest.param(["a", "b"], {"a": HOT, "b": HOT}, FB, False, ["a", "b"], [], id="first-then-one-fallback"),
    pytest.param(["a", "b", "c"], {"a": HOT, "b": HOT, "c": HOT}, FB, False, ["a", "b"], [],
                 id="at-most-two-tries"),
    pytest.param(["a", "ext:api"], {"a": Load(0)}, FB, False, ["external/api", "a"], [("a", "cold")],
                 id="cold-goes-to-the-api-and-is-tried-after-it"),
    pytest.param(["a", "ext:api"], {"a": Load(0)}, FallbackSpec(when_cold=False), False,
                 ["a", "external/api"],
                 [], id="cold-not-skipped-when-asked"),
    pytest.param(["a", "ext:api"], {"a": Load(2, waiting=9)}, SAT, False, ["external/api", "a"],
                 [("a", "saturated")], id="saturated-above-threshold"),
    pytest.param(["a", "ext:api"], {"a": Load(2, waiting=8)}, SAT, False, ["a", "external/api"], [],
                 id="at-threshold-not-saturated"),
    pytest.param(["a", "ext:api"], {"a": Load(0)}, FB, True, ["a"], [("external/api", "budget")],
                 id="over-budget-drops-external-cold-waits"),
    pytest.param(["ext:api"], {}, FB, True, [], [("external/api", "budget")], id="over-budget-nothing-left"),
    pytest.param(["gone", "b"], {"b": HOT}, FB, False, ["b"], [("gone", "missing")], id="missing-deployment"),
    pytest.param(["a", "b"], {"a": Load(0), "b": Load(0)}, FB, False, ["a"], [("b", "cold")],
                 id="all-cold-the-first-waits"),
])
def test_plan(names: list[str], loads: dict[str, Load], fallback: FallbackSpec, over_budget: bool,
              tries: list[str], skipped: list[tuple[str, str]]) -> None:
    targets = [target(n.removeprefix("ext:"), n.startswith("ext:")) for n in names]
    got = plan(targets, {("ns", k): v for k, v in loads.items()}, fallback, over_budget=over_budget)
    assert [t.label for t in got.tries] == tries
    assert [(t.label, why) for t, why in got.skipped] == skipped


@pytest.mark.parametrize(("status", "sent", "expected"), [
    pytest.param(None, False, True, id="failure-or-timeout-before-the-answer"),
    pytest.param(429, False, True, id="throttled"),
    pytest.param(500, False, True, id="server-error"),
    pytest.param(503, False, True, id="unavailable"),
    pytest.param(400, False, False, id="client-error-is-relayed"),
    pytest.param(200, False, False, id="ok"),
    pytest.param(None, True, False, id="never-after-bytes-reached-the-client"),
])
def test_falls_back(status: int | None, sent: bool, expected: bool) -> None:
    assert falls_back(status=status, fallback=FB, sent_to_client=sent) is expected


def test_on_status_can_narrow_the_fallback_statuses() -> None:
    assert not falls_back(status=500, fallback=FallbackSpec(on_status=[429]), sent_to_client=False)


@pytest.mark.parametrize(("doc", "expected"), [
    pytest.param({"model": "r", "messages": []}, {"model": "m", "messages": []}, id="model-replaced"),
    pytest.param({"model": "r", "stream": True},
                 {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
                 id="stream-usage"),
    pytest.param({"model": "r", "stream": True, "stream_options": {"include_usage": False}},
                 {"model": "m", "stream": True, "stream_options": {"include_usage": False}},
                 id="client-choice-kept"),
])
def test_rewrite_model(doc: dict[str, Any], expected: dict[str, Any]) -> None:
    assert json.loads(rewrite_model(doc, "m", stream_usage=True)) == expected


@pytest.mark.parametrize(("price", "usage", "usd"), [
    pytest.param(Price(True, 3, 15), Usage(1_000_000, 1_000_000), 18.0, id="external-both-prices"),
    pytest.param(Price(True, 3, 15), Usage(None, 2000), 0.03, id="prompt-unknown"),
    pytest.param(Price(False, 0, 0.5), Usage(1000, 2_000_000), 1.0, id="self-hosted-generated-only"),
])
def test_price(price: Price, usage: Usage, usd: float) -> None:
    assert price.usd(usage) == pytest.approx(usd)


def test_reference_price_counts_every_token() -> None:
    assert reference_usd(Usage(400_000, 600_000), 15.0) == pytest.approx(15.0)

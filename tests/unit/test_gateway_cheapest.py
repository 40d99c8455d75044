"""``policy: cheapest`` (pure): estimated prices, the order by price and objective, the TTFT window."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane.api.route import ModelRoute, RouteBackend, RouteObjective
from modelplane.gateway.cheapest import (
    DEFAULT_COMPLETION_TOKENS,
    TtftWindow,
    completion_tokens,
    estimated_usd,
    order,
    rule_order,
    ttft_of,
)
from modelplane.gateway.mesh import Features, candidates


def ext(name: str, inp: float, out: float) -> dict[str, Any]:
    return {"external": {"name": name, "baseURL": "https://api.example.com/v1", "model": "m",
                         "inputUSDPerMillionTokens": inp, "outputUSDPerMillionTokens": out}}


@pytest.mark.parametrize(("prices", "ttfts", "objective", "expected"), [
    pytest.param([3.0, 1.0, 2.0], [None] * 3, None, [1, 2, 0], id="by-price"),
    pytest.param([1.0, 1.0, 0.5], [None] * 3, None, [2, 0, 1], id="ties-keep-list-order"),
    pytest.param([None, 2.0, None, 1.0], [None] * 4, None, [3, 1, 0, 2], id="unknown-price-after-priced"),
    pytest.param([1.0, 2.0, 3.0], [4.0, 1.0, 0.5], 2.0, [1, 2, 0], id="cheapest-misses-the-objective"),
    pytest.param([1.0, 2.0, 3.0], [4.0, 3.0, 5.0], 2.0, [1, 0, 2], id="all-miss-fastest-first"),
    pytest.param([1.0, 2.0, 3.0], [4.0, 4.0, 5.0], 2.0, [0, 1, 2], id="all-miss-tied-speed-cheaper-first"),
    pytest.param([1.0, 2.0], [None, 1.0], 2.0, [0, 1], id="unmeasured-counts-as-meeting"),
    pytest.param([1.0, 2.0], [2.0, 1.0], 2.0, [0, 1], id="at-the-objective-meets-it"),
    pytest.param([1.0, 2.0], [9.0, 1.0], None, [0, 1], id="no-objective-price-only"),
    pytest.param([None, 5.0], [1.0, 9.0], 2.0, [0, 1], id="unknown-price-that-meets-beats-a-slow-priced"),
])
def test_order(prices: list[float | None], ttfts: list[float | None], objective: float | None,
               expected: list[int]) -> None:
    assert order(prices, ttfts, objective) == expected


@pytest.mark.parametrize(("backend", "measured", "prompt", "completion", "usd"), [
    pytest.param(ext("a", 3, 15), None, 1000, 100, (3000 + 1500) / 1e6, id="external-blend"),
    pytest.param(ext("free", 0, 0), None, 1000, 100, 0.0, id="external-free"),
    pytest.param({"modelDeployment": "llama"}, 0.5, 1000, 100, 50 / 1e6, id="self-hosted-generated-only"),
    pytest.param({"modelDeployment": "llama"}, None, 1000, 100, None, id="self-hosted-unknown"),
])
def test_estimated_usd(backend: dict[str, Any], measured: float | None, prompt: int, completion: int,
                       usd: float | None) -> None:
    got = estimated_usd(RouteBackend.model_validate(backend), measured, prompt_tokens=prompt,
                        completion_tokens=completion)
    assert got == (pytest.approx(usd) if usd is not None else None)


@pytest.mark.parametrize(("doc", "tokens"), [
    pytest.param({"max_tokens": 50}, 50, id="max_tokens"),
    pytest.param({"max_completion_tokens": 70, "max_tokens": 50}, 70, id="max_completion_tokens-first"),
    pytest.param({}, DEFAULT_COMPLETION_TOKENS, id="default"),
    pytest.param({"max_tokens": 0}, DEFAULT_COMPLETION_TOKENS, id="zero-is-default"),
    pytest.param({"max_tokens": True}, DEFAULT_COMPLETION_TOKENS, id="bool-is-default"),
])
def test_completion_tokens(doc: dict[str, Any], tokens: int) -> None:
    assert completion_tokens(doc) == tokens


@pytest.mark.parametrize(("prompt", "expected"), [
    # llama at $2/Mtok generated: 100 tokens = $0.0002 whatever the prompt.
    # api (in $0.1, out $1): 100 prompt tokens → $0.00011; 10,000 → $0.0011.
    pytest.param(100, ["external/api", "llama"], id="short-prompt-external-cheaper"),
    pytest.param(10_000, ["llama", "external/api"], id="long-prompt-self-hosted-cheaper"),
])
def test_the_blend_follows_the_prompt(prompt: int, expected: list[str]) -> None:
    backends = [RouteBackend.model_validate(b) for b in ({"modelDeployment": "llama"}, ext("api", 0.1, 1))]
    got = rule_order("ns", backends, self_hosted_prices={("ns", "llama"): 2.0}, ttfts={}, objective=None,
                     prompt_tokens=prompt, completion_tokens=100)
    assert [backends[i].label for i in got] == expected


def test_window_percentile_needs_samples_and_forgets_old_ones() -> None:
    w = TtftWindow(samples=5, seconds=10)
    key = ("ns", "llama")
    w.observe(key, 1.0, now=0)
    w.observe(key, 3.0, now=1)
    assert w.percentile(key, 95, now=2) is None  # below MIN_SAMPLES
    w.observe(key, 2.0, now=2)
    assert w.percentile(key, 95, now=2) == 3.0
    assert w.percentile(key, 50, now=2) == 2.0
    assert w.percentile(key, 95, now=10.5) is None  # the first one left the window: 2 remain
    for i in range(6):
        w.observe(key, 0.1, now=11 + i)
    assert w.percentile(key, 95, now=17) == 0.1  # only the last 5 are kept
    assert w.percentile(("ns", "other"), 95, now=17) is None


def test_ttft_of_is_none_without_an_objective() -> None:
    w = TtftWindow()
    for t in range(3):
        w.observe(("ns", "a"), 5.0, now=t)
    assert ttft_of(w, ("ns", "a"), None, now=3) is None
    assert ttft_of(w, ("ns", "a"), RouteObjective(ttft="2s"), now=3) == 5.0


def test_candidates_of_a_cheapest_rule_follow_the_order_then_fall_back_in_it() -> None:
    r = ModelRoute.parse({"metadata": {"name": "r", "namespace": "ns"}, "spec": {
        "objective": {"ttft": "2s"},
        "rules": [{"policy": "cheapest", "backends": [
            ext("dear", 10, 30), {"modelDeployment": "llama"}, {"modelDeployment": "new"},
            ext("cheap", 0.1, 0.2)]}]}})
    window = TtftWindow()
    for t in range(3):
        window.observe(("ns", "external/cheap"), 4.0, now=t)  # the cheapest misses the objective

    def cheapest(route: ModelRoute, rule: Any) -> list[int]:
        ttfts = {k: ttft_of(window, k, route.spec.objective, now=3)
                 for k in (("ns", b.label) for b in rule.backends)}
        prices = {("ns", "llama"): 1.0, ("ns", "new"): None}
        return rule_order("ns", rule.backends, self_hosted_prices=prices, ttfts=ttfts,
                          objective=route.spec.objective, prompt_tokens=100, completion_tokens=100)

    got = candidates(r, Features(), {}, u=0.0, cheapest=cheapest)
    assert [t.label for t in got] == ["llama", "external/dear", "new", "external/cheap"]
    # Without the gateway's order (as a weighted rule would go): list order.
    assert [t.label for t in candidates(r, Features(), {}, u=0.0)] == \
        ["external/dear", "llama", "new", "external/cheap"]

"""What each answer cost, by team, model (route) and backend: Prometheus counters and their pricing.

Every answer whose tokens are known adds to:

- ``modelplane_gateway_spend_tokens_total{team, model, backend, kind}`` — ``kind`` is ``prompt`` or
  ``completion``;
- ``modelplane_gateway_spend_usd_total{team, model, backend, kind}`` — ``kind`` is ``self_hosted``
  (a ModelDeployment's generated tokens at the $/Mtok the operator measured, its
  ``status.cost.usdPerMillionTokens``; 0 while it has none) or ``external`` (prompt and generated
  tokens at the provider's configured prices);
- ``modelplane_gateway_spend_reference_usd_total{team, model, backend}`` — what the same tokens
  would have cost at the reference proprietary price (``--reference-usd-per-mtok``, default $15 per
  million tokens, prompt and generated alike).

``model`` is the name the client sent (a ModelRoute's, or a ModelDeployment's served name);
``backend`` the ModelDeployment or ``external/<provider>`` that answered; ``team`` the caller's
team ("" without teams). ``modelplane usage`` reads these counters from the gateways.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from modelplane.gateway.metrics import REGISTRY
from modelplane.gateway.usage import Usage

#: The price a million tokens would cost at a proprietary API (the issue's ~$15), USD.
DEFAULT_REFERENCE_USD_PER_MTOK = 15.0

_LABELS = ["team", "model", "backend"]

TOKENS = Counter("modelplane_gateway_spend_tokens_total", "Tokens of the answered requests, by team, model "
                 "and backend; kind is prompt or completion.", [*_LABELS, "kind"], registry=REGISTRY)
USD = Counter("modelplane_gateway_spend_usd_total", "US dollars the answered requests cost: kind self_hosted "
              "(generated tokens at the ModelDeployment's measured $/Mtok) or external (the provider's "
              "configured prices).", [*_LABELS, "kind"], registry=REGISTRY)
REFERENCE_USD = Counter("modelplane_gateway_spend_reference_usd_total", "What the same tokens would have "
                        "cost at the reference proprietary price.", _LABELS, registry=REGISTRY)
FALLBACKS = Counter("modelplane_gateway_route_fallbacks_total", "Backends of a ModelRoute passed over or "
                    "left for the next one, by reason: status_<code>, failure, timeout (after an attempt), "
                    "cold, saturated, budget, missing (by choice, before one).",
                    ["model", "backend", "reason"], registry=REGISTRY)
ROUTED = Counter("modelplane_gateway_route_requests_total", "Requests a ModelRoute sent, by rule and the "
                 "backend that answered.", ["model", "rule", "backend"], registry=REGISTRY)


@dataclass(frozen=True)
class Price:
    """How a backend's tokens are priced."""

    external: bool
    input_usd_per_mtok: float = 0.0  #: external: prompt tokens
    output_usd_per_mtok: float = 0.0  #: external: generated tokens; self-hosted: the measured $/Mtok

    def usd(self, usage: Usage) -> float:
        return ((usage.prompt_tokens or 0) * self.input_usd_per_mtok
                + (usage.completion_tokens or 0) * self.output_usd_per_mtok) / 1e6


def reference_usd(usage: Usage, reference_usd_per_mtok: float) -> float:
    return ((usage.prompt_tokens or 0) + (usage.completion_tokens or 0)) * reference_usd_per_mtok / 1e6


def record(*, team: str, model: str, backend: str, usage: Usage, price: Price,
           reference_usd_per_mtok: float) -> float:
    """Count one answer; returns its cost in USD."""
    labels = (team, model, backend)
    if usage.prompt_tokens:
        TOKENS.labels(*labels, "prompt").inc(usage.prompt_tokens)
    if usage.completion_tokens:
        TOKENS.labels(*labels, "completion").inc(usage.completion_tokens)
    cost = price.usd(usage)
    USD.labels(*labels, "external" if price.external else "self_hosted").inc(cost)
    REFERENCE_USD.labels(*labels).inc(reference_usd(usage, reference_usd_per_mtok))
    return cost

"""``policy: cheapest`` (pure, but for the in-memory TTFT window): a rule's backends in price order.

For one request, each backend of the rule gets an **estimated price**, in US dollars, of answering it:

- an external provider: ``input $/Mtok × P + output $/Mtok × M``;
- a ModelDeployment: its measured ``status.cost.usdPerMillionTokens`` (dollars per million *generated*
  tokens, as spend counts it) ``× M``; ``None`` while the operator has not measured it;

where ``P`` is the request's estimated prompt tokens (characters / 4) and ``M`` its ``max_tokens``
(``max_completion_tokens``), or ``DEFAULT_COMPLETION_TOKENS`` when it sets neither. Comparing these
prices, not the $/Mtok figures themselves, puts a self-hosted price per generated token beside an
external one per prompt and generated token on the same footing.

The **order** (``order``):

1. the backends that meet the route's objective (or all, without one), cheapest first;
   those with an unknown price after the priced ones, in list order;
2. then those that miss it, fastest first (their measured TTFT percentile; ties: cheaper first).
   So when every backend misses the objective the fastest goes first: the one nearest to it.

Ties keep the rule's list order. A backend **meets** the objective while the gateway has fewer than
``MIN_SAMPLES`` recent observations of it (it must be tried to be measured), or when the objective's
percentile of its last ``WINDOW_SAMPLES`` TTFTs within ``WINDOW_SECONDS`` is at most the objective's
ttft. Observations (``TtftWindow``) are the streamed answers' first-token times and, for an attempt
that failed or timed out before its answer, the time it took; each gateway replica keeps its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelplane.api.route import RouteBackend, RouteObjective

#: Generated tokens assumed for a request without max_tokens.
DEFAULT_COMPLETION_TOKENS = 256
#: The TTFT window: at most this many observations per backend, none older than this.
WINDOW_SAMPLES = 100
WINDOW_SECONDS = 300.0
#: Fewer recent observations than this: the backend is taken to meet the objective.
MIN_SAMPLES = 3

Key = tuple[str, str]  #: (namespace, backend label: the ModelDeployment's name or external/<name>)


def completion_tokens(doc: Mapping[str, Any]) -> int:
    """The request's ``max_completion_tokens`` / ``max_tokens``, else ``DEFAULT_COMPLETION_TOKENS``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_COMPLETION_TOKENS


def estimated_usd(backend: RouteBackend, self_hosted_usd_per_mtok: float | None, *, prompt_tokens: int,
                  completion_tokens: int) -> float | None:
    """The estimated price of the request at ``backend`` (see the module); None: not known."""
    ext = backend.external
    if ext is not None:
        return (prompt_tokens * ext.input_usd_per_million_tokens
                + completion_tokens * ext.output_usd_per_million_tokens) / 1e6
    if self_hosted_usd_per_mtok is None:
        return None
    return completion_tokens * self_hosted_usd_per_mtok / 1e6


def order(prices: Sequence[float | None], ttfts: Sequence[float | None], objective_seconds: float | None
          ) -> list[int]:
    """The backends' indexes in the order they are tried: ``prices[i]`` the estimated price (None: unknown),
    ``ttfts[i]`` the measured TTFT percentile (None: too few observations)."""
    def meets(i: int) -> bool:
        t = ttfts[i]
        return objective_seconds is None or t is None or t <= objective_seconds

    def by_price(i: int) -> tuple[bool, float, int]:
        p = prices[i]
        return (p is None, p if p is not None else 0.0, i)

    good = sorted((i for i in range(len(prices)) if meets(i)), key=by_price)
    slow = sorted((i for i in range(len(prices)) if not meets(i)),
                  key=lambda i: (ttfts[i] or 0.0, *by_price(i)))
    return good + slow


@dataclass
class TtftWindow:
    """Each backend's recent TTFTs (seconds), as this gateway observed them."""

    samples: int = WINDOW_SAMPLES
    seconds: float = WINDOW_SECONDS
    _seen: dict[Key, deque[tuple[float, float]]] = field(default_factory=dict)

    def observe(self, key: Key, ttft: float, *, now: float) -> None:
        self._seen.setdefault(key, deque(maxlen=self.samples)).append((now, ttft))

    def percentile(self, key: Key, percentile: float, *, now: float) -> float | None:
        """The nearest-rank ``percentile`` of ``key``'s observations in the window; None below MIN_SAMPLES."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        while seen and now - seen[0][0] > self.seconds:
            seen.popleft()
        if len(seen) < MIN_SAMPLES:
            return None
        values = sorted(v for _, v in seen)
        return values[max(0, math.ceil(percentile / 100 * len(values)) - 1)]


def ttft_of(window: TtftWindow, key: Key, objective: RouteObjective | None, *, now: float) -> float | None:
    """The TTFT ``order`` compares for ``key``: None without an objective or observations."""
    if objective is None:
        return None
    return window.percentile(key, objective.percentile, now=now)


def backend_key(namespace: str, backend: RouteBackend) -> Key:
    return (namespace, backend.label)


def rule_order(namespace: str, backends: Sequence[RouteBackend], *,
               self_hosted_prices: Mapping[Key, float | None], ttfts: Mapping[Key, float | None],
               objective: RouteObjective | None, prompt_tokens: int, completion_tokens: int) -> list[int]:
    """``order`` for a rule's backends: prices from ``self_hosted_prices`` (by (namespace,
    ModelDeployment)) and the configured ones, TTFTs from ``ttfts`` (by ``backend_key``)."""
    prices = [estimated_usd(b, self_hosted_prices.get((namespace, str(b.model_deployment))),
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
              for b in backends]
    seen = [ttfts.get(backend_key(namespace, b)) for b in backends]
    return order(prices, seen, objective.ttft_seconds if objective is not None else None)

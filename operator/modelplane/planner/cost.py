"""Cost arithmetic for status and the ``plan`` command: fleet $/hour and measured $/million tokens.

One implementation serves the planner and the autoscaler: it lives in ``modelplane.autoscaler.cost``
and this module re-exports the names the planner's callers use. The handler samples
``vllm:generation_tokens_total`` from each ready pod, keeps the previous sample, and calls
``token_rate`` and ``usd_per_million_tokens``; ``cost_status`` shapes the result for ``status.cost``.
"""

from __future__ import annotations

from modelplane.autoscaler.cost import (
    CounterSample,
    cost_status,
    counter_increase,
    fleet_hourly_usd,
    token_rate,
    usd_per_million_tokens,
)

__all__ = ["CounterSample", "cost_status", "counter_increase", "fleet_hourly_usd", "token_rate",
           "usd_per_million_tokens"]

"""The GPU and cost planner: which GPUs a model needs, what they cost, and why.

``arch`` (model facts), ``catalog`` (built-in open models), ``source`` (reading config.json, the only
I/O), ``memory`` (the GPU memory model), ``plan`` (choosing the shape), ``cost`` (fleet $/hour and
$/million tokens) and ``cli`` (``modelplane plan``). The names below are the public interface.
"""

from __future__ import annotations

from modelplane.planner.arch import ModelArch, ModelArchError, Precision, arch_from_config, arch_from_hints
from modelplane.planner.catalog import CATALOG, CatalogEntry, match_model
from modelplane.planner.cost import (
    CounterSample,
    cost_status,
    fleet_hourly_usd,
    token_rate,
    usd_per_million_tokens,
)
from modelplane.planner.memory import MemoryEstimate, estimate_memory, kv_tokens
from modelplane.planner.plan import (
    Plan,
    PlanReason,
    PlanRequest,
    ShapeOption,
    build_plan,
    plan_request_from_spec,
    startup_budget_seconds,
)
from modelplane.planner.source import (
    ConfigReadError,
    ConfigReadReason,
    read_model_arch,
    read_model_config,
)

__all__ = [
    "CATALOG", "CatalogEntry", "ConfigReadError", "ConfigReadReason", "CounterSample", "MemoryEstimate",
    "ModelArch", "ModelArchError", "Plan", "PlanReason", "PlanRequest", "Precision",
    "ShapeOption", "arch_from_config", "arch_from_hints", "build_plan", "cost_status",
    "estimate_memory", "fleet_hourly_usd", "kv_tokens", "match_model", "plan_request_from_spec",
    "read_model_arch", "read_model_config", "startup_budget_seconds", "token_rate", "usd_per_million_tokens",
]

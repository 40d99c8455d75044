"""``modelplane plan -f FILE``: the plan and cost of each ModelDeployment in a manifest, without a cluster.

For review of a pull request that adds or changes a deployment: which GPUs it will get, what a
replica and the fleet cost per hour, and whether it fits at all. Models are sized from spec hints and
the built-in catalog (no network). Exit codes: 0 every deployment fits, 1 one does not, 2 bad input
(the message names the file, the document and the field), which includes everything the API server
would refuse: the API models' validators are the Python twins of the CRD's rules.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from modelplane import gpus
from modelplane.api.models import InvalidSpecError, ModelDeployment
from modelplane.gpus import GPUType
from modelplane.planner.plan import Plan, SpecError, build_plan, plan_request_from_spec

API_GROUP = "modelplane.dev"
KIND = "ModelDeployment"
EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT = 0, 1, 2


class InputError(Exception):
    """Input the command cannot use; the message says where."""


@dataclass(frozen=True)
class FleetRange:
    min_replicas: int
    max_replicas: int
    max_hourly_usd: float | None  #: spec.scaling.cost.maxHourlyUSD


@dataclass(frozen=True)
class Result:
    name: str
    namespace: str
    source: str
    plan: Plan
    fleet: FleetRange

    def to_dict(self) -> dict[str, Any]:
        per_replica = self.plan.usd_per_hour_per_replica
        cost: dict[str, Any] = {
            "hourlyUSDPerReplica": round(per_replica, 4),
            "replicas": {"min": self.fleet.min_replicas, "max": self.fleet.max_replicas},
            "hourlyUSD": {"min": round(per_replica * self.fleet.min_replicas, 4),
                          "max": round(per_replica * self.fleet.max_replicas, 4)},
        }
        if self.fleet.max_hourly_usd is not None:
            cost["maxHourlyUSD"] = self.fleet.max_hourly_usd
            cost["replicasWithinBudget"] = _affordable(per_replica, self.fleet.max_hourly_usd)
        return {
            "name": self.name,
            "namespace": self.namespace,
            "source": self.source,
            "fits": self.plan.fits,
            "reasonCode": self.plan.reason_code.value,
            "sizedFrom": self.plan.arch_source,
            "plan": self.plan.to_status(),
            "smallestShape": self.plan.smallest_shape,
            "startupBudgetSeconds": self.plan.startup_budget_seconds,
            "cost": cost,
        }


def _affordable(per_replica: float, budget: float) -> int | None:
    """Replicas the budget pays for; None when a replica is free (no limit from the budget)."""
    return math.floor(budget / per_replica + 1e-9) if per_replica > 0 else None


def load_prices(text: str, where: str) -> dict[str, GPUType]:
    """The GPU catalog with prices from a YAML/JSON mapping ``{gpu-type: usd-per-gpu-hour}``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{where}: not YAML: {err}") from None
    if not isinstance(raw, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in raw.values()):
        raise InputError(f"{where}: must map GPU type names to prices in $/GPU-hour, "
                         f"e.g. {{nvidia-h100-80gb: 2.99}}")
    try:
        return gpus.with_prices({str(k): float(v) for k, v in raw.items()})
    except ValueError as err:
        raise InputError(f"{where}: {err}") from None


def _int_field(section: Mapping[str, Any], key: str, field: str, default: int, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(field, f"must be an integer >= {minimum}, got {value!r}")
    return value


def fleet_range(spec: Mapping[str, Any]) -> FleetRange:
    """Replica range from ``spec.scaling`` (Builtin: min..max) or ``spec.replicas`` (External)."""
    scaling = spec.get("scaling") or {}
    if not isinstance(scaling, Mapping):
        raise SpecError("spec.scaling", "must be a mapping")
    mode = scaling.get("mode", "Builtin")
    if mode not in ("Builtin", "External"):
        raise SpecError("spec.scaling.mode", f"must be Builtin or External, got {mode!r}")
    if mode == "External":
        replicas = _int_field(spec, "replicas", "spec.replicas", 1, 0)
        low = high = replicas
    else:
        low = _int_field(scaling, "minReplicas", "spec.scaling.minReplicas", 1, 0)
        high = _int_field(scaling, "maxReplicas", "spec.scaling.maxReplicas", 4, 1)
        if high < low:
            raise SpecError("spec.scaling.maxReplicas", f"must be >= minReplicas ({low}), got {high}")
    cost = scaling.get("cost") or {}
    if not isinstance(cost, Mapping):
        raise SpecError("spec.scaling.cost", "must be a mapping")
    budget = cost.get("maxHourlyUSD")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0):
        raise SpecError("spec.scaling.cost.maxHourlyUSD", f"must be a number >= 0, got {budget!r}")
    return FleetRange(low, high, float(budget) if budget is not None else None)


def plan_manifests(text: str, where: str, catalog: Mapping[str, GPUType]) -> tuple[list[Result], list[str]]:
    """(results, errors) for every ModelDeployment in a multi-document YAML text."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        return [], [f"{where}: not YAML: {err}"]
    results: list[Result] = []
    errors: list[str] = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            errors.append(f"{where}: document {index}: not a Kubernetes object")
            continue
        if doc.get("kind") != KIND or not str(doc.get("apiVersion", "")).startswith(API_GROUP + "/"):
            continue  # Secrets, ConfigMaps and the like travel in the same files
        metadata = doc.get("metadata") or {}
        name = str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""
        namespace = str(metadata.get("namespace", "default")) if isinstance(metadata, Mapping) else "default"
        label = f"{where}: document {index} ({KIND} {namespace}/{name or '?'})"
        spec = doc.get("spec")
        try:
            if not name:
                raise SpecError("metadata.name", "is required")
            if not isinstance(spec, Mapping):
                raise SpecError("spec", "is required and must be a mapping")
            request = plan_request_from_spec(spec)
            unknown = [t for t in request.gpu_types if t not in catalog]
            if unknown:
                raise SpecError("spec.resources.gpu.types",
                                f"unknown GPU types {', '.join(unknown)}; known: {', '.join(catalog)}")
            fleet = fleet_range(spec)
            # Everything else the API server would refuse (its CEL rules have Python twins in the models).
            ModelDeployment.parse(doc)
        except (SpecError, InvalidSpecError) as err:
            errors.append(f"{label}: {err}")
            continue
        plan = build_plan(request, catalog)
        results.append(Result(name, namespace, request.source, plan, fleet))
    if not results and not errors:
        errors.append(f"{where}: no {KIND} ({API_GROUP}) found")
    return results, errors


def render_text(results: Sequence[Result], out: TextIO) -> None:
    for r in results:
        plan = r.plan
        print(f"{r.namespace}/{r.name}  {r.source}  (sized from {plan.arch_source})", file=out)
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        if plan.gpu_type:
            print(f"  plan:    {verdict} ({plan.reason_code.value}): {plan.shape}, tensor parallel "
                  f"{plan.tensor_parallel_size}, ${plan.usd_per_hour_per_replica:.2f}/h per replica",
                  file=out)
        else:
            print(f"  plan:    {verdict} ({plan.reason_code.value})", file=out)
        if plan.memory is not None:
            m = plan.memory
            print(f"  memory:  weights {m.weights_gib:.1f} + KV cache {m.kv_cache_gib:.1f} + overhead "
                  f"{m.overhead_gib:.1f} = {m.required_gib:.1f} GiB of {m.available_gib:.1f} GiB", file=out)
        if plan.fits:
            per = plan.usd_per_hour_per_replica
            low, high = r.fleet.min_replicas, r.fleet.max_replicas
            replicas = f"{low} replica{'s' if low != 1 else ''}" if low == high else f"{low}-{high} replicas"
            fleet = (f"${per * low:.2f}/h" if low == high else f"${per * low:.2f}-${per * high:.2f}/h")
            line = f"  fleet:   {fleet} ({replicas})"
            if r.fleet.max_hourly_usd is not None:
                affordable = _affordable(per, r.fleet.max_hourly_usd)
                if affordable is not None:
                    line += f"; maxHourlyUSD ${r.fleet.max_hourly_usd:g} pays for {affordable} replicas"
                    if affordable < max(low, 1):
                        line += " (below minReplicas)"
            print(line, file=out)
            print(f"  startup: up to {plan.startup_budget_seconds} s (startupProbe budget)", file=out)
        print(f"  why:     {plan.reason}", file=out)


def run(args: argparse.Namespace) -> int:
    catalog: Mapping[str, GPUType] = gpus.GPU_TYPES
    try:
        if args.prices:
            with open(args.prices, encoding="utf-8") as handle:
                catalog = load_prices(handle.read(), args.prices)
        if args.file == "-":
            text, where = sys.stdin.read(), "<stdin>"
        else:
            with open(args.file, encoding="utf-8") as handle:
                text, where = handle.read(), args.file
    except OSError as err:
        print(f"modelplane plan: {err.filename}: {err.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InputError as err:
        print(f"modelplane plan: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    results, errors = plan_manifests(text, where, catalog)
    if args.output == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump([r.to_dict() for r in results], sort_keys=False), end="")
    else:
        render_text(results, sys.stdout)
    for error in errors:
        print(f"modelplane plan: {error}", file=sys.stderr)
    if errors:
        return EXIT_BAD_INPUT
    return EXIT_FITS if all(r.plan.fits for r in results) else EXIT_DOES_NOT_FIT


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="print the GPU plan and cost of each ModelDeployment in a manifest (no cluster needed)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("-f", "--file", required=True, help="manifest (multi-document YAML), or - for stdin")
    parser.add_argument("--prices",
                        help="YAML/JSON mapping of GPU type to $ per GPU-hour, overriding the defaults")
    parser.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    parser.set_defaults(func=run)

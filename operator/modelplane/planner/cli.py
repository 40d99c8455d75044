"""``modelplane plan -f FILE``: the plan and cost of each ModelDeployment in a manifest, without a cluster.

For review of a pull request that adds or changes a deployment: which GPUs it will get, what a
replica and the fleet cost per hour, and whether it fits at all. Models are sized from spec hints and
the built-in catalog (no network). Each ModelDeployment is validated as strictly as the API server
does, and more: unknown fields, an unknown kind or apiVersion of modelplane.dev, and vLLM flags in
extraArgs that a typed field sets (--max-model-len, --dtype, ...) are errors. Exit codes: 0 every
deployment fits, 1 one does not, 2 bad input (one line per problem, naming the file, the document
and the field). Output cut short by a closed pipe (plan -f x | head) keeps the exit code of the plan.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from modelplane import gpus
from modelplane.api.adapter import ADAPTER_KIND, ModelAdapter, with_effective_lora
from modelplane.api.models import (
    API_VERSION,
    GROUP,
    KIND,
    InvalidSpecError,
    ModelDeployment,
    ScalingMode,
)
from modelplane.api.models import ModelDeploymentSpec as Spec
from modelplane.api.route import ROUTE_KIND, ModelRoute
from modelplane.gpus import GPUType
from modelplane.planner.plan import Plan, build_plan, plan_request_from_spec

API_GROUP = GROUP
EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT = 0, 1, 2

#: The fields of a Kubernetes object, and of its metadata, that a manifest may carry; the API server
#: refuses (kubectl's strict field validation) or drops anything else.
OBJECT_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
METADATA_FIELDS = frozenset({
    "name", "namespace", "labels", "annotations", "generateName", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences",
    "finalizers", "managedFields", "selfLink",
})

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


def fleet_range(spec: Spec) -> FleetRange:
    """Replica range from ``spec.scaling`` (Builtin: min..max) or ``spec.replicas`` (External)."""
    scaling = spec.scaling
    if scaling.mode is ScalingMode.EXTERNAL:
        low = high = spec.replicas if spec.replicas is not None else 1
    else:
        low, high = scaling.min_replicas, scaling.max_replicas
    budget = scaling.cost.max_hourly_usd if scaling.cost is not None else None
    return FleetRange(low, high, budget)


def _is_ours(doc: Mapping[str, Any]) -> bool:
    """A modelplane object, or meant as one: its group, or a kind spelt close to ModelDeployment
    (0.85 keeps "Deployment", at 0.8, out)."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    return (api_version.split("/", 1)[0] == API_GROUP
            or difflib.SequenceMatcher(None, kind.lower(), KIND.lower()).ratio() >= 0.85)


def _is_adapter(doc: Any) -> bool:
    return (isinstance(doc, Mapping) and doc.get("kind") == ADAPTER_KIND
            and doc.get("apiVersion") == API_VERSION)


def _object_problems(doc: Mapping[str, Any]) -> list[str]:
    """What the API server would refuse about the object outside its spec."""
    problems = []
    if doc.get("kind") not in (KIND, ADAPTER_KIND):
        problems.append(f"kind: unknown kind {doc.get('kind')!r}; {API_GROUP} has the kinds {KIND} and "
                        f"{ADAPTER_KIND}")
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    problems += [f"{key}: unknown field" for key in doc if key not in OBJECT_FIELDS]
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        problems.append("metadata: is required and must be a mapping")
    else:
        problems += [f"metadata.{key}: unknown field" for key in metadata if key not in METADATA_FIELDS]
        if not metadata.get("name"):
            problems.append("metadata.name: is required")
    return problems


def _check_document(doc: Mapping[str, Any]) -> tuple[ModelDeployment | None, list[str]]:
    """The validated object, or every problem that stops it, each ``path: problem``."""
    problems = _object_problems(doc)
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        return None, problems  # the spec of an unknown kind or version means nothing
    md: ModelDeployment | None = None
    try:
        md = ModelDeployment.parse(doc)
    except InvalidSpecError as err:
        problems += [f"{path}: {message}" for path, message in err.problems]
    return (None, problems) if problems else (md, [])


def plan_manifests(text: str, where: str, catalog: Mapping[str, GPUType]) -> tuple[list[Result], list[str]]:
    """(results, errors) for every ModelDeployment in a multi-document YAML text.

    Each ModelDeployment is validated by the API's own models (``ModelDeployment.parse``, which
    refuses unknown fields) before it is planned; other kinds (Secrets, ConfigMaps, ...) are skipped.
    The ModelAdapters in the text are validated too, and those naming a ModelDeployment of the text
    turn its LoRA on as the operator would (their memory is planned).
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        return [], [f"{where}: not YAML: {' '.join(str(err).split())}"]
    results: list[Result] = []
    errors: list[str] = []
    adapters: list[ModelAdapter] = []
    for index, doc in enumerate(documents, start=1):
        if _is_adapter(doc):
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
            where_in = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            label = f"{where}: document {index} ({ADAPTER_KIND} {where_in})"
            problems = _object_problems(doc)
            try:
                adapters.append(ModelAdapter.parse({**doc, "metadata": {"namespace": "default", **meta}}))
            except InvalidSpecError as err:
                problems += [f"{path}: {message}" for path, message in err.problems]
            errors += [f"{label}: {problem}" for problem in problems]
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            errors.append(f"{where}: document {index}: not a Kubernetes object")
            continue
        if not _is_ours(doc) or _is_adapter(doc):
            continue  # Secrets, ConfigMaps and the like travel in the same files; adapters: above
        raw_metadata = doc.get("metadata")
        metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
        name = str(metadata.get("name") or "?")
        namespace = str(metadata.get("namespace") or "default")
        label = f"{where}: document {index} ({doc.get('kind') or KIND} {namespace}/{name})"
        if doc.get("kind") == ROUTE_KIND and doc.get("apiVersion") == API_VERSION:
            # A ModelRoute plans no GPUs; it is checked as the API server would, and passed over.
            try:
                ModelRoute.parse(doc)
            except InvalidSpecError as exc:
                errors += [f"{label}: {path}: {problem}" for path, problem in exc.problems]
            continue
        md, problems = _check_document(doc)
        if md is None:
            errors += [f"{label}: {problem}" for problem in problems]
            continue
        md = with_effective_lora(md, [a for a in adapters
                                      if (a.namespace, a.spec.base) == (namespace, md.name)])
        request = plan_request_from_spec(md.spec)
        plan = build_plan(request, catalog)
        results.append(Result(name, namespace, request.source, plan, fleet_range(md.spec)))
    if not results and not errors:
        errors.append(f"{where}: no {KIND} ({API_GROUP}) found")
    return results, errors


def render_text(results: Sequence[Result], out: TextIO) -> None:
    for r in results:
        plan = r.plan
        print(f"{r.namespace}/{r.name}  {r.source}  (sized from {plan.arch_source})", file=out)
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        if plan.gpu_type:
            unit = "per replica"
            parallel = f"tensor parallel {plan.tensor_parallel_size}"
            if plan.nodes > 1:
                parallel += f" x pipeline parallel {plan.pipeline_parallel_size} ({plan.nodes} nodes)"
                unit = f"per replica (a group of {plan.nodes} nodes)"
            print(f"  plan:    {verdict} ({plan.reason_code.value}): {plan.shape}, {parallel}, "
                  f"${plan.usd_per_hour_per_replica:.2f}/h {unit}", file=out)
        else:
            print(f"  plan:    {verdict} ({plan.reason_code.value})", file=out)
        if plan.memory is not None:
            m = plan.memory
            print(f"  memory:  weights {m.weights_gib:.1f} + KV cache {m.kv_cache_gib:.1f} + overhead "
                  f"{m.overhead_gib:.1f} = {m.required_gib:.1f} GiB of {m.available_gib:.1f} GiB; per GPU "
                  f"{m.per_gpu_required_gib:.1f} of {m.per_gpu_available_gib:.1f} GiB", file=out)
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
    try:
        if args.output == "json":
            print(json.dumps([r.to_dict() for r in results], indent=2))
        elif args.output == "yaml":
            print(yaml.safe_dump([r.to_dict() for r in results], sort_keys=False), end="")
        else:
            render_text(results, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``| head``). Point stdout at /dev/null so that the flush at exit does not
        # raise again, as the Python docs advise (signal.SIGPIPE), and keep the plan's exit code.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
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

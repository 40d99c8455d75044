"""The GPU planner: the cheapest GPU shape that holds a model, and why.

``plan_request_from_spec`` turns the parsed ModelDeployment spec (``api.models.ModelDeploymentSpec``,
validated and defaulted there) plus, when the handler could read it, the model's config.json into a
``PlanRequest``; ``build_plan`` turns that and the GPU catalog into a ``Plan``. Both are pure: the
handler reads the world (config.json, prices), calls them, and writes ``Plan.to_status()`` to
``status.plan``. The cluster's nodes are not an input: a GPU type with no
node right now may be a pool scaled to zero that a cluster autoscaler grows for the pending pod, so
whether a node exists is a scheduling fact (``modelplane.health`` reports it), not a planning one.

A shape is one GPU type times a number of GPUs on one node, used as vLLM's tensor-parallel size.
Among the allowed GPU types (for FP8 weights, only those with FP8 support) the planner takes, for
each type, the fewest GPUs (up to 8, one node) whose tensor-parallel split vLLM accepts and whose
per-GPU memory need fits, then the cheapest of those per hour.

When no single node of an allowed type can hold the model, a replica becomes a group of whole nodes
(docs/multi-node.md): tensor parallelism within a node (the largest split vLLM accepts, up to the
node's 8 GPUs) times pipeline parallelism across nodes, one stage per node. For each type the
planner takes the fewest nodes that fit, then the cheapest group per hour, up to
``spec.resources.gpu.maxNodes`` nodes (default 1: spanning nodes is opted into, since a group costs
several nodes). Beyond that it refuses, naming the smallest group that would fit, if any does within
``MAX_SUGGESTED_NODES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from modelplane.api.models import DType, EngineSpec, ModelDeploymentSpec, ModelHints, Quantization
from modelplane.gpus import GPUType
from modelplane.planner.arch import ModelArch, ModelArchError, Precision, arch_from_hints
from modelplane.planner.catalog import match_model, normalize_model_name, unmatched_note
from modelplane.planner.memory import (
    AVERAGE_SEQUENCE_TOKENS,
    DEFAULT_BATCHED_TOKENS,
    MemoryEstimate,
    estimate_memory,
    kv_tokens,
    lora_bytes_per_gpu,
)

#: GPUs of one node: the common 8-GPU server (DGX/HGX, p5, a3), and the most resources.gpu.count allows.
MAX_GPUS_PER_NODE = 8
#: How many nodes a group may span: the largest spec.resources.gpu.maxNodes, and how far the planner
#: looks for a suggestion when the allowed count is too small.
MAX_SUGGESTED_NODES = 16


class PlanReason(StrEnum):
    """Why a plan is what it is; becomes a condition reason."""

    FITS = "Fits"
    FIXED_COUNT_TOO_SMALL = "FixedCountTooSmall"  #: count: N given, the model does not fit on N GPUs
    FIXED_COUNT_INVALID = "FixedCountInvalid"  #: N is not a tensor-parallel size the model allows
    FIXED_COUNT_EXCEEDS_NODE = "FixedCountExceedsNode"  #: no allowed node has N GPUs
    NO_SINGLE_NODE_FITS = "NoSingleNodeFits"  #: maxNodes 1, and only a group of nodes would hold it
    NO_GROUP_FITS = "NoGroupFits"  #: not even a group of maxNodes nodes of an allowed type holds it
    UNKNOWN_MODEL_SIZE = "UnknownModelSize"  #: no config.json, catalog entry or sufficient hints
    UNKNOWN_CONTEXT_LENGTH = "UnknownContextLength"  #: no maxModelLen and no model max to default to
    CONTEXT_EXCEEDS_MODEL = "ContextExceedsModel"  #: vLLM refuses maxModelLen > the model's max
    NO_ALLOWED_GPU_TYPE = "NoAllowedGPUType"  #: unknown type names, or none can hold the weights' precision


#: ``spec.engine`` with nothing set: its defaults are the API's (``api.models.EngineSpec``), the one
#: place that knows them; a ``PlanRequest`` built directly (tests, the benchmark) gets them too.
_API_ENGINE = EngineSpec()


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner needs, taken from the parsed spec by ``plan_request_from_spec``."""

    source: str
    model_name: str  #: display name
    arch: ModelArch | None
    arch_source: str  #: "config.json", "hints", "catalog (NAME)", "catalog (NAME) + hints" or "none"
    arch_note: str = ""  #: why the preferred source was not used, for the reason text
    precision: Precision | None = None  #: None: the checkpoint's own precision
    #: Where the precision the plan uses comes from, for the reason text (e.g. "spec.engine.quantization").
    precision_from: str = "the default"
    max_model_len: int | None = None  #: None: the model's max_position_embeddings, as vLLM does
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = _API_ENGINE.gpu_memory_utilization
    gpu_count: int | None = None  #: None: "auto"
    max_nodes: int = 1  #: nodes one replica (a group) may span; 1: single-node only
    gpu_types: tuple[str, ...] = ()  #: empty: every type in the catalog
    kv_cache_bytes: float = 2.0  #: 1 with --kv-cache-dtype fp8
    batched_tokens: int = DEFAULT_BATCHED_TOKENS
    allow_long_context: bool = False  #: VLLM_ALLOW_LONG_MAX_MODEL_LEN or rope overrides set
    #: LoRA slots and their rank (spec.engine.lora, effective): their GPU memory is reserved.
    max_loras: int = 0
    max_lora_rank: int = 0


@dataclass(frozen=True)
class ShapeOption:
    """One candidate shape and its memory estimate."""

    gpu_type: str
    gpus: int
    usd_per_hour: float  #: per replica
    memory: MemoryEstimate
    nodes: int = 1

    @property
    def gpus_per_node(self) -> int:
        """The tensor-parallel size: GPUs of one node (one pipeline stage)."""
        return self.gpus // self.nodes

    @property
    def label(self) -> str:
        across = f" across {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.gpus}x {self.gpu_type}{across}"


@dataclass(frozen=True)
class Plan:
    """The planner's answer. When ``fits`` is False, ``gpu_type``/``gpus_per_replica`` describe the
    shape the message talks about (the requested count, or the largest one-node shape), not a
    recommendation; ``smallest_shape`` is the shape that would fit, if any."""

    fits: bool
    reason_code: PlanReason
    reason: str
    model: str
    arch_source: str
    precision: Precision | None
    max_model_len: int | None
    kv_tokens: int
    gpu_type: str | None
    gpus_per_replica: int
    tensor_parallel_size: int
    usd_per_hour_per_replica: float
    memory: MemoryEstimate | None
    smallest_shape: str | None = None
    startup_budget_seconds: int = 0
    #: The cheapest fitting shape of each other allowed GPU type, cheapest first.
    alternatives: tuple[ShapeOption, ...] = ()
    #: Nodes of one replica (a LeaderWorkerSet group when > 1: one pipeline stage per node, each of
    #: ``tensor_parallel_size`` GPUs); ``gpus_per_replica`` counts the GPUs of the whole group.
    nodes: int = 1

    @property
    def pipeline_parallel_size(self) -> int:
        return self.nodes

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_replica // self.nodes

    @property
    def shape(self) -> str:
        if not (self.gpu_type and self.gpus_per_replica):
            return ""
        across = f" across {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.gpus_per_replica}x {self.gpu_type}{across}"

    def to_status(self) -> dict[str, Any]:
        """``status.plan`` as the API defines it (camelCase keys; absent values left out)."""
        status: dict[str, Any] = {"reason": self.reason}
        if self.gpu_type is not None and self.gpus_per_replica > 0:
            status.update(
                gpuType=self.gpu_type,
                gpusPerReplica=self.gpus_per_replica,
                tensorParallelSize=self.tensor_parallel_size,
                hourlyUSDPerReplica=round(self.usd_per_hour_per_replica, 4),
                shape=self.shape,
            )
            if self.nodes > 1:
                status.update(nodes=self.nodes, gpusPerNode=self.gpus_per_node,
                              pipelineParallelSize=self.pipeline_parallel_size)
        if self.memory is not None:
            m = self.memory
            status["memory"] = {
                "weightsGiB": round(m.weights_gib, 1),
                "kvCacheGiB": round(m.kv_cache_gib, 1),
                "overheadGiB": round(m.overhead_gib, 1),
                "requiredGiB": round(m.required_gib, 1),
                "availableGiB": round(m.available_gib, 1),
                "perGPURequiredGiB": round(m.per_gpu_required_gib, 1),
                "perGPUAvailableGiB": round(m.per_gpu_available_gib, 1),
            }
        return status


# --- startup budget --------------------------------------------------------------------------------

#: From shared/FACTS.md (cold starts): Llama-3.1-8B (16 GB) downloads in 61 s, loads in 33 s, and
#: spends 10 + 42 + 54 s in dynamo, compilation and CUDA graph capture; tensor parallelism adds a
#: ~60 s peer-to-peer check (vLLM issue 19824); 72B on TP4 took ~17 min end to end (vLLM PR 45551).
DOWNLOAD_BYTES_PER_SECOND = 250e6
LOAD_BYTES_PER_SECOND = 0.5e9
ENGINE_INIT_SECONDS = 150
MULTI_GPU_SECONDS = 60
#: A group of nodes: the workers start, join the leader and set up NCCL across the nodes' network
#: before the engine loads (an estimate: no published figure).
MULTI_NODE_SECONDS = 120
STARTUP_SAFETY_FACTOR = 1.5
#: Never less than the 10 minutes the Gateway API inference extension's vLLM manifest allows.
MIN_STARTUP_SECONDS = 600


def startup_budget_seconds(*, checkpoint_bytes: float, gpu_bytes_per_rank: float, gpus: int,
                           nodes: int = 1) -> int:
    """Seconds a new replica may take from container start to serving (for the startupProbe).

    An uncached start: download the checkpoint, load each rank's shard (in parallel), compile and
    capture CUDA graphs, plus the multi-GPU check and, for a group of nodes, the workers joining the
    leader (every node downloads the whole checkpoint in parallel, so the download is counted once);
    times 1.5, at least 600 s, rounded up to 30 s. For a group this is the leader's budget: it serves
    only once every worker has loaded its stage.
    """
    seconds = (checkpoint_bytes / DOWNLOAD_BYTES_PER_SECOND + gpu_bytes_per_rank / LOAD_BYTES_PER_SECOND
               + ENGINE_INIT_SECONDS + (MULTI_GPU_SECONDS if gpus > 1 else 0)
               + (MULTI_NODE_SECONDS if nodes > 1 else 0))
    budget = max(MIN_STARTUP_SECONDS, seconds * STARTUP_SAFETY_FACTOR)
    return int(math.ceil(budget / 30) * 30)


# --- formatting ------------------------------------------------------------------------------------


def format_tokens(tokens: int) -> str:
    """131072 -> "128k", 1048576 -> "1M", 430000 -> "430000"."""
    if tokens >= 1 << 20 and tokens % (1 << 20) == 0:
        return f"{tokens >> 20}M"
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens >> 10}k"
    return str(tokens)


def _usd(value: float) -> str:
    return f"${value:.2f}/h"


# --- the planner -----------------------------------------------------------------------------------


def _option(request: PlanRequest, arch: ModelArch, precision: Precision, gpu: GPUType, *, tp: int,
            tokens: int, pp: int = 1) -> ShapeOption:
    memory = estimate_memory(arch, precision=precision, gpu_memory_gib=gpu.usable_memory_gib,
                             gpu_memory_utilization=request.gpu_memory_utilization, tp=tp, pp=pp,
                             kv_tokens=tokens, kv_bytes=request.kv_cache_bytes,
                             max_num_seqs=request.max_num_seqs, batched_tokens=request.batched_tokens,
                             lora_bytes=lora_bytes_per_gpu(arch, max_loras=request.max_loras,
                                                           max_lora_rank=request.max_lora_rank, tp=tp * pp))
    return ShapeOption(gpu_type=gpu.name, gpus=tp * pp, usd_per_hour=tp * pp * gpu.usd_per_hour,
                       memory=memory, nodes=pp)


def _cost_key(option: ShapeOption) -> tuple[float, int, float, str]:
    # Cheapest first; then fewer GPUs; then more headroom; then by name, so ties are stable.
    headroom = option.memory.per_gpu_available_gib - option.memory.per_gpu_required_gib
    return (round(option.usd_per_hour, 6), option.gpus, -headroom, option.gpu_type)


def _valid_sizes(arch: ModelArch, limit: int) -> list[int]:
    return [n for n in range(1, limit + 1) if arch.valid_tensor_parallel(n)]


def _multi_node_options(request: PlanRequest, arch: ModelArch, precision: Precision,
                        gpus: Mapping[str, GPUType], per_node: Mapping[str, int], tokens: int,
                        max_nodes: int) -> list[ShapeOption]:
    """For each type, the fewest whole nodes (2 to ``max_nodes``; TP within a node, one pipeline
    stage per node) that fit; cheapest first. vLLM needs a layer or more per stage."""
    found: list[ShapeOption] = []
    for name, limit in per_node.items():
        sizes = _valid_sizes(arch, limit)
        if not sizes:
            continue
        tp = sizes[-1]
        for nodes in range(2, min(max_nodes, arch.num_layers) + 1):
            option = _option(request, arch, precision, gpus[name], tp=tp, tokens=tokens, pp=nodes)
            if option.memory.fits:
                found.append(option)
                break
    return sorted(found, key=_cost_key)


def _describe_need(model: str, precision: Precision, memory: MemoryEstimate, context: int,
                   max_num_seqs: int | None) -> str:
    seqs = f" and {max_num_seqs} sequences" if max_num_seqs else ""
    return (f"{model} {precision.label} needs {memory.required_gib:.1f} GiB with "
            f"{format_tokens(context)} context{seqs}")


def _not_fitting(request: PlanRequest, code: PlanReason, reason: str, *, precision: Precision | None = None,
                 tokens: int = 0, gpu_type: str | None = None, gpus: int = 0, usd: float = 0.0,
                 memory: MemoryEstimate | None = None, smallest: str | None = None) -> Plan:
    return Plan(fits=False, reason_code=code, reason=reason, model=request.model_name,
                arch_source=request.arch_source, precision=precision, max_model_len=request.max_model_len,
                kv_tokens=tokens, gpu_type=gpu_type, gpus_per_replica=gpus,
                tensor_parallel_size=gpus, usd_per_hour_per_replica=usd, memory=memory,
                smallest_shape=smallest)


def build_plan(request: PlanRequest, catalog: Mapping[str, GPUType]) -> Plan:
    """The cheapest one-node GPU shape for ``request`` among ``catalog``'s allowed types.

    Every allowed type is considered with up to ``MAX_GPUS_PER_NODE`` GPUs, whether or not the
    cluster has a node of it now; FP8 weights only on types with FP8 support.
    """
    names = list(request.gpu_types) or list(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        return _not_fitting(request, PlanReason.NO_ALLOWED_GPU_TYPE,
                            f"unknown GPU types {', '.join(unknown)}; known: {', '.join(catalog)}")
    if not names:
        return _not_fitting(request, PlanReason.NO_ALLOWED_GPU_TYPE, "the GPU catalog is empty")
    fixed = request.gpu_count
    cheapest_type = min(names, key=lambda n: (catalog[n].usd_per_hour, n))

    arch = request.arch
    if arch is None:
        note = f": {request.arch_note}" if request.arch_note else ""
        return _not_fitting(
            request, PlanReason.UNKNOWN_MODEL_SIZE,
            f"cannot size {request.source}{note}; make its config.json readable (credentialsSecret), or "
            f"set spec.model.hints (parametersBillions, numLayers, hiddenSize, numAttentionHeads)",
            gpu_type=cheapest_type if fixed else None, gpus=fixed or 0,
            usd=(fixed or 0) * catalog[cheapest_type].usd_per_hour)
    precision = request.precision or arch.native_precision
    skipped: list[str] = []
    if precision is Precision.FP8:
        skipped = [n for n in names if not catalog[n].fp8]
        names = [n for n in names if catalog[n].fp8]
        if not names:
            able = ", ".join(n for n, g in catalog.items() if g.fp8)
            return _not_fitting(
                request, PlanReason.NO_ALLOWED_GPU_TYPE,
                f"{request.model_name} has FP8 weights (from {request.precision_from}), which need a GPU "
                f"with FP8 support (Ada Lovelace, Hopper or newer); none of the allowed types has it "
                f"({', '.join(skipped)}): allow one of {able}, or serve BF16 weights", precision=precision)
    per_node = {n: MAX_GPUS_PER_NODE for n in names}
    model_max = arch.max_position_embeddings
    context = request.max_model_len or model_max
    if context is None:
        return _not_fitting(request, PlanReason.UNKNOWN_CONTEXT_LENGTH,
                            f"{request.model_name}: the model's context length is unknown; "
                            f"set spec.engine.maxModelLen", precision=precision)
    if model_max is not None and context > model_max and not request.allow_long_context:
        return _not_fitting(request, PlanReason.CONTEXT_EXCEEDS_MODEL,
                            f"spec.engine.maxModelLen {context} exceeds {request.model_name}'s "
                            f"{model_max} positions; vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 "
                            f"is set (with rope scaling)", precision=precision)
    tokens = kv_tokens(max_model_len=context, max_num_seqs=request.max_num_seqs)

    if fixed is not None:
        plan = _plan_fixed(request, arch, precision, catalog, per_node, context, tokens, fixed)
    else:
        plan = _plan_auto(request, arch, precision, catalog, per_node, context, tokens)
    if skipped and request.gpu_types:
        plan = replace(plan, reason=f"{plan.reason}; not on {', '.join(skipped)}: no FP8 support")
    return plan


def _finish(request: PlanRequest, arch: ModelArch, precision: Precision, context: int, tokens: int,
            chosen: ShapeOption, others: Sequence[ShapeOption], reason: str) -> Plan:
    per_rank = arch.weight_bytes(precision) / chosen.gpus
    return Plan(fits=True, reason_code=PlanReason.FITS, reason=reason, model=request.model_name,
                arch_source=request.arch_source, precision=precision, max_model_len=context,
                kv_tokens=tokens, gpu_type=chosen.gpu_type, gpus_per_replica=chosen.gpus,
                tensor_parallel_size=chosen.gpus_per_node, usd_per_hour_per_replica=chosen.usd_per_hour,
                memory=chosen.memory,
                startup_budget_seconds=startup_budget_seconds(
                    checkpoint_bytes=arch.weight_bytes(arch.native_precision),
                    gpu_bytes_per_rank=per_rank, gpus=chosen.gpus, nodes=chosen.nodes),
                alternatives=tuple(others), nodes=chosen.nodes)


def _capacity_note(option: ShapeOption) -> str:
    capacity = option.memory.kv_capacity_tokens
    return (f"; its KV cache holds ~{capacity >> 10}k tokens "
            f"(~{capacity // AVERAGE_SEQUENCE_TOKENS} sequences of {AVERAGE_SEQUENCE_TOKENS} tokens)")


def _plan_auto(request: PlanRequest, arch: ModelArch, precision: Precision, catalog: Mapping[str, GPUType],
               per_node: Mapping[str, int], context: int, tokens: int) -> Plan:
    fitting: list[ShapeOption] = []
    largest: list[ShapeOption] = []  # the biggest one-node shape of each type, for the message
    for name, limit in per_node.items():
        sizes = _valid_sizes(arch, limit)
        for tp in sizes:
            option = _option(request, arch, precision, catalog[name], tp=tp, tokens=tokens)
            if option.memory.fits:
                fitting.append(option)
                break
        else:
            if sizes:
                largest.append(_option(request, arch, precision, catalog[name], tp=sizes[-1], tokens=tokens))
    if fitting:
        fitting.sort(key=_cost_key)
        chosen, others = fitting[0], fitting[1:]
        need = _describe_need(request.model_name, precision, chosen.memory, context, request.max_num_seqs)
        reason = f"{need}: {chosen.label} at {_usd(chosen.usd_per_hour)} is the cheapest shape that fits"
        if others:
            reason += f"; next {others[0].label} {_usd(others[0].usd_per_hour)}"
        return _finish(request, arch, precision, context, tokens, chosen, others,
                       reason + _capacity_note(chosen))

    closest = max(largest, key=lambda o: (o.memory.available_gib, -o.usd_per_hour)) if largest else None
    if closest is None:
        return _not_fitting(request, PlanReason.NO_SINGLE_NODE_FITS,
                            f"{request.model_name}: no tensor-parallel size up to the node size divides its "
                            f"{arch.num_attention_heads} attention heads", precision=precision, tokens=tokens)
    groups = _multi_node_options(request, arch, precision, catalog, per_node, tokens, request.max_nodes)
    if groups:
        chosen, others = groups[0], groups[1:]
        need = _describe_need(request.model_name, precision, chosen.memory, context, request.max_num_seqs)
        reason = (f"{need}: no allowed GPU type holds it on one node, so a replica is a group of "
                  f"{chosen.nodes} nodes: {chosen.label} (tensor parallel {chosen.gpus_per_node} within "
                  f"a node, pipeline parallel {chosen.nodes} across) at {_usd(chosen.usd_per_hour)}, "
                  f"{chosen.memory.per_gpu_required_gib:.1f} of {chosen.memory.per_gpu_available_gib:.1f} "
                  f"GiB per GPU, is the cheapest group that fits")
        if others:
            reason += f"; next {others[0].label} {_usd(others[0].usd_per_hour)}"
        return _finish(request, arch, precision, context, tokens, chosen, others,
                       reason + _capacity_note(chosen))

    suggestion = _multi_node_options(request, arch, precision, catalog, per_node, tokens, MAX_SUGGESTED_NODES)
    multi = suggestion[0] if suggestion else None
    need = _describe_need(request.model_name, precision, closest.memory, context, request.max_num_seqs)
    reason = (f"{need}: no allowed GPU type holds it on one node (the largest, {closest.label}, offers "
              f"{closest.memory.available_gib:.1f} GiB)")
    code = PlanReason.NO_SINGLE_NODE_FITS if request.max_nodes <= 1 else PlanReason.NO_GROUP_FITS
    if code is PlanReason.NO_GROUP_FITS:
        reason += f", nor does a group of up to {request.max_nodes} nodes (spec.resources.gpu.maxNodes)"
    if multi is not None:
        reason += (f"; the smallest group that would is {multi.label} ({_usd(multi.usd_per_hour)}): "
                   f"set spec.resources.gpu.maxNodes to {multi.nodes} to serve it across nodes")
    elif request.max_nodes < MAX_SUGGESTED_NODES:
        reason += f"; not even a group of {MAX_SUGGESTED_NODES} nodes of an allowed type would"
    if closest.memory.kv_capacity_tokens > 0 and request.max_num_seqs is None:
        longest = closest.memory.kv_capacity_tokens // 1024 * 1024  # a round figure, rounded down
        if longest > 0:
            reason += f"; {closest.label} would fit with spec.engine.maxModelLen up to {longest}"
    return _not_fitting(request, code, reason, precision=precision, tokens=tokens,
                        gpu_type=closest.gpu_type, gpus=closest.gpus, usd=closest.usd_per_hour,
                        memory=closest.memory, smallest=multi.label if multi else None)


def _plan_fixed(request: PlanRequest, arch: ModelArch, precision: Precision, catalog: Mapping[str, GPUType],
                per_node: Mapping[str, int], context: int, tokens: int, count: int) -> Plan:
    if not arch.valid_tensor_parallel(count):
        sizes = ", ".join(str(n) for n in _valid_sizes(arch, max(per_node.values())))
        kv = "" if arch.is_mla else f" and {arch.num_kv_heads} KV heads"
        return _not_fitting(request, PlanReason.FIXED_COUNT_INVALID,
                            f"resources.gpu.count {count} is not a tensor-parallel size vLLM accepts for "
                            f"{request.model_name} ({arch.num_attention_heads} attention heads{kv}); "
                            f"use one of {sizes}", precision=precision, tokens=tokens)
    candidates = [name for name, limit in per_node.items() if count <= limit]
    if not candidates:
        most = max(per_node.values())
        return _not_fitting(request, PlanReason.FIXED_COUNT_EXCEEDS_NODE,
                            f"resources.gpu.count {count} exceeds the {most} GPUs of the largest allowed "
                            f"node; leave count auto and set spec.resources.gpu.maxNodes to serve a model "
                            f"across nodes", precision=precision, tokens=tokens)
    options = sorted((_option(request, arch, precision, catalog[n], tp=count, tokens=tokens)
                      for n in candidates), key=_cost_key)
    fitting = [o for o in options if o.memory.fits]
    if fitting:
        chosen = fitting[0]
        need = _describe_need(request.model_name, precision, chosen.memory, context, request.max_num_seqs)
        reason = f"{need}: the requested {chosen.label} fits at {_usd(chosen.usd_per_hour)}"
        return _finish(request, arch, precision, context, tokens, chosen, fitting[1:],
                       reason + _capacity_note(chosen))
    closest = max(options, key=lambda o: (o.memory.available_gib, -o.usd_per_hour))
    need = _describe_need(request.model_name, precision, closest.memory, context, request.max_num_seqs)
    reason = (f"{need} but resources.gpu.count {count} offers at most {closest.memory.available_gib:.1f} GiB "
              f"({closest.label})")
    auto = build_plan(replace(request, gpu_count=None), catalog)
    suggestion: str | None = None
    if auto.fits:
        suggestion = auto.shape
        reason += f"; {auto.shape} would fit ({_usd(auto.usd_per_hour_per_replica)})"
        if auto.nodes > 1:
            reason += " with resources.gpu.count auto"
    elif auto.smallest_shape:
        suggestion = auto.smallest_shape
        reason += (f"; it needs {auto.smallest_shape}: leave resources.gpu.count auto and set "
                   f"spec.resources.gpu.maxNodes")
    return _not_fitting(request, PlanReason.FIXED_COUNT_TOO_SMALL, reason, precision=precision, tokens=tokens,
                        gpu_type=closest.gpu_type, gpus=count, usd=closest.usd_per_hour,
                        memory=closest.memory, smallest=suggestion)


# --- from the spec ---------------------------------------------------------------------------------


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in vLLM arguments (the last one wins)."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _hinted(hints: ModelHints | None) -> bool:
    """Whether ``spec.model.hints`` sets anything (``hints: {}`` says nothing)."""
    return hints is not None and any(getattr(hints, f) is not None for f in ModelHints.model_fields)


def plan_request_from_spec(spec: ModelDeploymentSpec, *, config_arch: ModelArch | None = None,
                           config_note: str = "") -> PlanRequest:
    """A ``PlanRequest`` from the parsed ModelDeployment ``spec``.

    The API model has validated the spec and applied its defaults, so nothing here can be malformed.
    The model's facts come, in order of preference, from ``config_arch`` (the config.json the handler
    read, see ``planner.source``), from ``spec.model.hints`` (laid over the catalog entry when the
    source matches one), or from the built-in catalog. ``config_note`` says why config.json was not
    read, for the reason text.
    """
    source = spec.model.source
    hints = spec.model.hints if _hinted(spec.model.hints) else None
    engine = spec.engine
    gpu = spec.resources.gpu

    # The model's facts, in order of preference.
    match = match_model(source)
    normalized, named_precision = normalize_model_name(source)
    display = match.entry.name if match else (normalized or source)
    arch: ModelArch | None = None
    arch_source = "none"
    note = config_note
    if config_arch is not None:
        arch, arch_source, display = config_arch, "config.json", config_arch.name or display
    elif hints is not None:
        try:
            arch = arch_from_hints(hints, name=display, base=match.arch if match else None,
                                   named_precision=named_precision)
            arch_source = f"catalog ({match.entry.name}) + hints" if match else "hints"
        except ModelArchError as err:
            note = "; ".join(n for n in (config_note, unmatched_note(source), str(err)) if n)
    elif match is not None:
        arch, arch_source = match.arch, f"catalog ({match.entry.name})"
    else:
        missing = unmatched_note(source) or "not in the built-in catalog"
        note = "; ".join(n for n in (config_note, missing, "no spec.model.hints") if n)

    precision: Precision | None = None
    precision_from = "spec.engine.quantization"
    if engine.quantization is Quantization.FP8:
        precision = Precision.FP8
    elif engine.quantization in (Quantization.AWQ, Quantization.GPTQ):
        precision = Precision.INT4
    elif arch is not None and arch.native_precision in (Precision.BF16, Precision.FP16) and engine.dtype in (
            DType.FLOAT16, DType.BFLOAT16):
        precision = Precision.FP16 if engine.dtype is DType.FLOAT16 else Precision.BF16
        precision_from = "spec.engine.dtype"
    elif arch_source == "config.json":
        precision_from = "the checkpoint's config.json"
    elif hints is not None and hints.precision is not None:
        precision_from = "spec.model.hints.precision"
    elif named_precision is not None:
        precision_from = f"{named_precision.label} in the model's name"
    elif match is not None:
        precision_from = f"the catalog's {match.entry.name} entry"
    else:
        precision_from = "the default"

    extra_args = engine.extra_args
    kv_dtype = (_flag_value(extra_args, "--kv-cache-dtype") or "auto").lower()
    batched = _flag_value(extra_args, "--max-num-batched-tokens")
    env_long = any(e.name == "VLLM_ALLOW_LONG_MAX_MODEL_LEN" and e.value.lower() in ("1", "true")
                   for e in engine.env)
    rope_override = any(a.startswith(("--hf-overrides", "--rope-scaling")) for a in extra_args)
    return PlanRequest(
        source=source,
        model_name=display,
        arch=arch,
        arch_source=arch_source,
        arch_note=note,
        precision=precision,
        precision_from=precision_from,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        gpu_count=None if gpu.count == "auto" else gpu.count,
        max_nodes=gpu.max_nodes,
        gpu_types=tuple(gpu.types or ()),  # unset: every type in the catalog
        kv_cache_bytes=1.0 if kv_dtype.startswith("fp8") else 2.0,
        batched_tokens=int(batched) if batched and batched.isdigit() else DEFAULT_BATCHED_TOKENS,
        allow_long_context=env_long or rope_override,
        max_loras=engine.lora.max_loras or 0 if engine.lora is not None else 0,
        max_lora_rank=engine.lora.max_lora_rank or 0 if engine.lora is not None else 0,
    )

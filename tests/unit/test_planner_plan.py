"""The planner's decisions and messages: reason codes, fixed counts, FP8 GPUs, distills, the spec adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from modelplane import gpus
from modelplane.api.models import EngineSpec, ModelDeploymentSpec
from modelplane.planner import (
    PlanReason,
    PlanRequest,
    Precision,
    build_plan,
    estimate_memory,
    kv_tokens,
    match_model,
    plan_request_from_spec,
    startup_budget_seconds,
)
from modelplane.planner.plan import format_tokens

H100, H200, A100, L40S, L4, A10G = ("nvidia-h100-80gb", "nvidia-h200-141gb", "nvidia-a100-80gb",
                                    "nvidia-l40s", "nvidia-l4", "nvidia-a10g")
LLAMA_8B = "hf://meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "hf://meta-llama/Llama-3.1-70B-Instruct"


def md(source: str = LLAMA_8B, *, hints: dict[str, Any] | None = None, count: Any = None,
       types: list[str] | None = None, **engine: Any) -> ModelDeploymentSpec:
    """The spec as the operator plans it: parsed by the API model, its defaults applied."""
    model: dict[str, Any] = {"source": source}
    if hints is not None:
        model["hints"] = hints
    gpu: dict[str, Any] = {}
    if count is not None:
        gpu["count"] = count
    if types is not None:
        gpu["types"] = types
    return ModelDeploymentSpec.model_validate(
        {"model": model, "engine": engine, "resources": {"gpu": gpu}})


def request_for(spec: ModelDeploymentSpec) -> PlanRequest:
    return plan_request_from_spec(spec)


def plan_for(spec: ModelDeploymentSpec) -> Any:
    return build_plan(plan_request_from_spec(spec), gpus.GPU_TYPES)


@pytest.mark.parametrize(("request_", "code", "in_reason"), [
    (request_for(md(maxModelLen=8192)), PlanReason.FITS, "cheapest shape that fits"),
    (request_for(md(LLAMA_70B, quantization="fp8", maxModelLen=131072, count=1, types=[H100])),
     PlanReason.FIXED_COUNT_TOO_SMALL, "2x nvidia-h100-80gb would fit ($5.38/h)"),
    (request_for(md(LLAMA_70B, count=3)), PlanReason.FIXED_COUNT_INVALID, "use one of 1, 2, 4, 8"),
    # The API refuses count > 8 (a node's GPUs) and unknown GPU types; the planner still answers a
    # request built without it (the catalog it is given may lack a type the API knows).
    (replace(request_for(md()), gpu_count=16), PlanReason.FIXED_COUNT_EXCEEDS_NODE, "exceeds the 8 GPUs"),
    (request_for(md("hf://deepseek-ai/DeepSeek-R1", types=[H100])), PlanReason.NO_SINGLE_NODE_FITS,
     "16x nvidia-h100-80gb across 2 nodes"),
    (request_for(md("hf://acme/secret")), PlanReason.UNKNOWN_MODEL_SIZE, "set spec.model.hints"),
    (request_for(md("hf://acme/secret", hints={"parametersBillions": 7})), PlanReason.UNKNOWN_MODEL_SIZE,
     "missing spec.model.hints: numLayers, hiddenSize, numAttentionHeads"),
    (request_for(md("hf://acme/secret", hints={"parametersBillions": 7, "numLayers": 32, "hiddenSize": 4096,
                                               "numAttentionHeads": 32})),
     PlanReason.UNKNOWN_CONTEXT_LENGTH, "set spec.engine.maxModelLen"),
    (request_for(md(maxModelLen=262144)), PlanReason.CONTEXT_EXCEEDS_MODEL, "VLLM_ALLOW_LONG_MAX_MODEL_LEN"),
    (replace(request_for(md()), gpu_types=("nvidia-b200",)), PlanReason.NO_ALLOWED_GPU_TYPE,
     "unknown GPU types nvidia-b200"),
    (request_for(md("hf://meta-llama/Llama-4-Scout-17B-16E-Instruct")), PlanReason.NO_SINGLE_NODE_FITS,
     "would fit with spec.engine.maxModelLen up to"),
], ids=["fits", "fixed-too-small", "fixed-invalid-tp", "fixed-exceeds-node", "no-single-node",
        "unknown-model", "incomplete-hints", "unknown-context", "context-too-long", "unknown-gpu-type",
        "default-10m-context"])
def test_reason_codes(request_: PlanRequest, code: PlanReason, in_reason: str) -> None:
    plan = build_plan(request_, gpus.GPU_TYPES)
    assert plan.reason_code is code
    assert plan.fits is (code is PlanReason.FITS)
    assert in_reason in plan.reason


def test_fixed_count_that_fits_is_kept() -> None:
    plan = plan_for(md(LLAMA_70B, quantization="fp8", maxModelLen=131072, count=4, types=[H100]))
    assert plan.fits and plan.gpus_per_replica == 4 and plan.tensor_parallel_size == 4
    assert "the requested 4x nvidia-h100-80gb fits" in plan.reason


def test_fixed_count_picks_the_cheapest_type_it_fits_on() -> None:
    plan = plan_for(md(count=1, maxModelLen=8192))
    assert (plan.gpu_type, plan.gpus_per_replica) == (L4, 1)


def test_unknown_model_with_fixed_count_still_names_a_shape() -> None:
    """The handler may render a user's explicit count even when the model cannot be sized."""
    plan = plan_for(md("hf://acme/secret", count=2, types=[L40S, H100]))
    assert plan.reason_code is PlanReason.UNKNOWN_MODEL_SIZE and not plan.fits
    assert (plan.gpu_type, plan.gpus_per_replica) == (L40S, 2)


def test_long_context_allowed_with_the_env_override() -> None:
    spec = md(maxModelLen=262144, env=[{"name": "VLLM_ALLOW_LONG_MAX_MODEL_LEN", "value": "1"}])
    assert plan_for(spec).fits


def test_status_has_exactly_the_api_fields() -> None:
    status = plan_for(md(maxModelLen=8192)).to_status()
    assert set(status) == {"gpuType", "gpusPerReplica", "tensorParallelSize", "hourlyUSDPerReplica", "shape",
                           "memory", "reason"}
    assert set(status["memory"]) == {"weightsGiB", "kvCacheGiB", "overheadGiB", "requiredGiB", "availableGiB",
                                     "perGPURequiredGiB", "perGPUAvailableGiB"}
    assert status["shape"] == "1x nvidia-l4" and status["hourlyUSDPerReplica"] == 0.8
    assert status["memory"]["requiredGiB"] <= status["memory"]["availableGiB"]
    assert set(plan_for(md("hf://acme/secret")).to_status()) == {"reason"}


@pytest.mark.parametrize(("max_model_len", "max_num_seqs", "want"), [
    (8192, None, 8192),  # one full-length sequence
    (131072, None, 131072),
    (8192, 1, 8192),
    (8192, 64, 64 * 1024),  # 64 sequences at 1024 tokens each
    (512, 64, 64 * 512),  # an average sequence cannot exceed the context
    (131072, 16, 131072),  # never less than one full-length sequence
], ids=["default", "default-long", "one-seq", "concurrency", "short-context", "at-least-one-full"])
def test_kv_tokens(max_model_len: int, max_num_seqs: int | None, want: int) -> None:
    assert kv_tokens(max_model_len=max_model_len, max_num_seqs=max_num_seqs) == want


def test_more_concurrency_needs_a_bigger_shape() -> None:
    small = plan_for(md(maxModelLen=8192))
    busy = plan_for(md(maxModelLen=8192, maxNumSeqs=256))
    assert small.fits and busy.fits
    assert busy.memory is not None and small.memory is not None
    assert busy.memory.kv_cache_gib == pytest.approx(32.0)  # 256 x 1024 tokens x 128 KiB
    assert busy.usd_per_hour_per_replica > small.usd_per_hour_per_replica


def test_fp8_kv_cache_halves_the_kv_memory() -> None:
    base = plan_for(md(maxModelLen=131072, types=[H100]))
    fp8 = plan_for(md(maxModelLen=131072, types=[H100], extraArgs=["--kv-cache-dtype", "fp8"]))
    assert base.memory is not None and fp8.memory is not None
    assert fp8.memory.kv_cache_gib == pytest.approx(base.memory.kv_cache_gib / 2)


@pytest.mark.parametrize(("quantization", "dtype", "want"), [
    (None, "auto", None), (None, "float16", Precision.FP16), ("fp8", "auto", Precision.FP8),
    ("awq", "auto", Precision.INT4), ("gptq", "bfloat16", Precision.INT4),
], ids=["native", "fp16", "fp8", "awq", "gptq"])
def test_precision_from_spec(quantization: str | None, dtype: str, want: Precision | None) -> None:
    assert plan_request_from_spec(md(quantization=quantization, dtype=dtype)).precision is want


def test_config_json_arch_wins_over_hints_and_catalog() -> None:
    match = match_model("hf://Qwen/Qwen3-8B")
    assert match is not None
    request = plan_request_from_spec(md(hints={"parametersBillions": 100}), config_arch=match.arch)
    assert request.arch_source == "config.json" and request.arch is match.arch
    hinted = plan_request_from_spec(md(hints={"parametersBillions": 9}))
    assert hinted.arch_source == "catalog (Llama-3.1-8B) + hints"
    assert hinted.arch is not None and hinted.arch.total_params == 9e9


def test_config_note_reaches_the_reason() -> None:
    request = plan_request_from_spec(md("hf://acme/secret"), config_note="Unauthorized: gated")
    plan = build_plan(request, gpus.GPU_TYPES)
    assert "Unauthorized: gated" in plan.reason


@pytest.mark.parametrize(("checkpoint_gb", "gpus_", "want_min", "want_max"), [
    (16, 1, 600, 600),  # 8B: ~250 s uncached x 1.5 stays under the 600 s floor
    (145, 4, 1020, 1500),  # 72B BF16 TP4: ~17 min observed (vLLM PR 45551)
    (73, 8, 600, 900),  # 70B FP8 TP8: ~3.5 min with cached weights (vLLM issue 19824)
    (690, 8, 3600, 6000),  # DeepSeek-R1: a 690 GB download dominates
], ids=["8b", "72b-tp4", "70b-fp8-tp8", "deepseek-r1"])
def test_startup_budget(checkpoint_gb: float, gpus_: int, want_min: int, want_max: int) -> None:
    budget = startup_budget_seconds(checkpoint_bytes=checkpoint_gb * 1e9,
                                    gpu_bytes_per_rank=checkpoint_gb * 1e9 / gpus_, gpus=gpus_)
    assert want_min <= budget <= want_max and budget % 30 == 0


def test_startup_budget_grows_with_the_model() -> None:
    small = plan_for(md(maxModelLen=8192))
    large = plan_for(md("hf://deepseek-ai/DeepSeek-R1", types=[H200]))
    assert small.startup_budget_seconds == 600
    assert large.startup_budget_seconds > small.startup_budget_seconds


@pytest.mark.parametrize(("tokens", "text"), [
    (4096, "4k"), (131072, "128k"), (1048576, "1M"), (430000, "430000"), (163840, "160k"), (100, "100"),
], ids=lambda v: str(v))
def test_format_tokens(tokens: int, text: str) -> None:
    assert format_tokens(tokens) == text


def test_memory_estimate_splits_across_ranks() -> None:
    match = match_model(LLAMA_70B)
    assert match is not None
    one = estimate_memory(match.arch, precision=Precision.FP8, gpu_memory_gib=80, gpu_memory_utilization=0.9,
                          tp=1, kv_tokens=131072)
    two = estimate_memory(match.arch, precision=Precision.FP8, gpu_memory_gib=80, gpu_memory_utilization=0.9,
                          tp=2, kv_tokens=131072)
    assert two.weights_gib == pytest.approx(one.weights_gib)
    assert two.kv_cache_gib == pytest.approx(one.kv_cache_gib)
    assert two.per_gpu_required_gib < one.per_gpu_required_gib
    assert two.available_gib == pytest.approx(2 * one.available_gib)
    assert not one.fits and two.fits


# --- issue 14: distills, precision from the name and hints, FP8 GPUs --------------------------------

R1_DISTILL = "hf://deepseek-ai/DeepSeek-R1-Distill-"
LLAMA_8B_HINTS = {"parametersBillions": 8.03, "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32,
                  "numKeyValueHeads": 8}
LLAMA_405B_HINTS = {"parametersBillions": 405.9, "numLayers": 126, "hiddenSize": 16384,
                    "numAttentionHeads": 128, "numKeyValueHeads": 8}


@pytest.mark.parametrize(("source", "sized_from", "params_b", "kv_gib_at_128k", "shape"), [
    # Each distill is its student: Llama 3.1 8B / 3.3 70B, Qwen 2.5 1.5B / 14B (GQA, dense, BF16).
    (R1_DISTILL + "Llama-8B", "catalog (DeepSeek-R1-Distill-Llama-8B)", 8.03, 16.0, "2x nvidia-l4"),
    (R1_DISTILL + "Qwen-1.5B", "catalog (DeepSeek-R1-Distill-Qwen-1.5B)", 1.78, 3.5, "1x nvidia-l4"),
    (R1_DISTILL + "Qwen-14B", "catalog (DeepSeek-R1-Distill-Qwen-14B)", 14.8, 24.0, "1x nvidia-a100-80gb"),
    (R1_DISTILL + "Llama-70B", "catalog (DeepSeek-R1-Distill-Llama-70B)", 70.6, 40.0, "4x nvidia-a100-80gb"),
    ("hf://unsloth/DeepSeek-R1-Distill-Llama-8B", "catalog (DeepSeek-R1-Distill-Llama-8B)", 8.03, 16.0,
     "2x nvidia-l4"),
], ids=["llama-8b", "qwen-1.5b", "qwen-14b", "llama-70b", "mirror"])
def test_r1_distills_are_sized_as_their_student(source: str, sized_from: str, params_b: float,
                                                kv_gib_at_128k: float, shape: str) -> None:
    """Issue 14: they matched the catalog's "deepseek-r1" prefix and were planned as the 671B model."""
    request = plan_request_from_spec(md(source))
    assert request.arch is not None and request.arch_source == sized_from
    assert not request.arch.is_mla and not request.arch.is_moe
    assert request.arch.total_params == pytest.approx(params_b * 1e9)
    plan = build_plan(request, gpus.GPU_TYPES)
    assert plan.fits and plan.shape == shape, plan.reason
    assert plan.memory is not None and plan.memory.kv_cache_gib == pytest.approx(kv_gib_at_128k, abs=0.05)


@pytest.mark.parametrize(("source", "in_reason"), [
    (R1_DISTILL + "Qwen-3B", "DeepSeek-R1-Distill-Qwen-3B is DeepSeek-R1 distilled into qwen-3b"),
    ("hf://deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "names another size (8b) than DeepSeek-R1"),
    ("hf://acme/Llama-3.1-8B-Instruct-distill-tiny", "Llama-3.1-8B distilled into tiny"),
], ids=["unknown-distill", "student-named-by-size", "distill-of-another-model"])
def test_models_built_from_a_catalog_model_are_not_sized_as_it(source: str, in_reason: str) -> None:
    plan = plan_for(md(source))
    assert plan.reason_code is PlanReason.UNKNOWN_MODEL_SIZE
    assert in_reason in plan.reason and "set spec.model.hints" in plan.reason


def test_hints_for_a_distill_replace_the_attention_of_r1() -> None:
    """The user's case: hints for an R1 distill gave a 4.5 GiB MLA cache where GQA needs 16 GiB."""
    for source in (R1_DISTILL + "Llama-8B-custom", "hf://deepseek-ai/DeepSeek-R1-finetune"):
        plan = plan_for(md(source, hints=LLAMA_8B_HINTS, maxModelLen=131072))
        assert plan.fits, plan.reason
        assert plan.memory is not None and plan.memory.kv_cache_gib == pytest.approx(16.0)


@pytest.mark.parametrize(("source", "hints", "engine", "precision", "from_", "shape"), [
    ("hf://meta-llama/Llama-3.1-405B-Instruct-FP8", LLAMA_405B_HINTS, {}, Precision.FP8,
     "FP8 in the model's name", "8x nvidia-h100-80gb"),
    ("hf://acme/llama-405b", {**LLAMA_405B_HINTS, "precision": "fp8"}, {}, Precision.FP8,
     "spec.model.hints.precision", "8x nvidia-h100-80gb"),
    ("hf://acme/llama-405b-AWQ", LLAMA_405B_HINTS, {}, Precision.INT4, "INT4 in the model's name",
     "4x nvidia-h100-80gb"),
    ("hf://acme/llama-405b-FP8", {**LLAMA_405B_HINTS, "precision": "int4"}, {}, Precision.INT4,
     "spec.model.hints.precision", "4x nvidia-h100-80gb"),
    ("hf://acme/llama-405b-FP8", LLAMA_405B_HINTS, {"quantization": "awq"}, Precision.INT4,
     "spec.engine.quantization", "4x nvidia-h100-80gb"),
], ids=["fp8-in-name", "hint", "awq-in-name", "hint-beats-name", "quantization-beats-both"])
def test_precision_outside_the_catalog(source: str, hints: dict[str, Any], engine: dict[str, Any],
                                       precision: Precision, from_: str, shape: str) -> None:
    """Issue 14: Llama-3.1-405B-Instruct-FP8 was sized as BF16 and refused on H100 nodes."""
    request = plan_request_from_spec(md(source, hints=hints, types=[H100], maxModelLen=8192, **engine))
    plan = build_plan(request, gpus.GPU_TYPES)
    assert (plan.precision, request.precision_from) == (precision, from_)
    assert plan.fits and plan.shape == shape, plan.reason


@pytest.mark.parametrize(("spec", "code", "shape", "in_reason"), [
    (md(LLAMA_70B, quantization="fp8", maxModelLen=8192, types=[A100, H100]), PlanReason.FITS,
     "2x nvidia-h100-80gb", "not on nvidia-a100-80gb: no FP8 support"),
    (md(LLAMA_70B, quantization="fp8", maxModelLen=8192, types=[A100, A10G]), PlanReason.NO_ALLOWED_GPU_TYPE,
     "", "FP8 weights (from spec.engine.quantization), which need a GPU with FP8 support"),
    (md(quantization="fp8", maxModelLen=8192, count=1, types=[A10G]), PlanReason.NO_ALLOWED_GPU_TYPE,
     "", "none of the allowed types has it (nvidia-a10g)"),
    (md("hf://RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", maxModelLen=8192, types=[A100]),
     PlanReason.NO_ALLOWED_GPU_TYPE, "", "FP8 weights (from FP8 in the model's name)"),
    (md("hf://acme/private", hints={**LLAMA_8B_HINTS, "precision": "fp8"}, maxModelLen=8192, types=[A10G]),
     PlanReason.NO_ALLOWED_GPU_TYPE, "", "from spec.model.hints.precision"),
    (md("hf://deepseek-ai/DeepSeek-R1", types=[A100]), PlanReason.NO_ALLOWED_GPU_TYPE, "",
     "from the catalog's DeepSeek-R1 entry"),
    (md(LLAMA_70B, quantization="fp8", maxModelLen=8192), PlanReason.FITS, "4x nvidia-l4", "cheapest"),
    (md(LLAMA_70B, maxModelLen=8192, types=[A100, A10G]), PlanReason.FITS, "2x nvidia-a100-80gb",
     "cheapest"),
], ids=["a100-skipped", "no-fp8-type", "fixed-count-no-fp8-type", "fp8-checkpoint-by-name", "fp8-hint",
        "fp8-native-catalog", "all-types", "bf16-on-ampere"])
def test_fp8_weights_only_on_gpus_with_fp8(spec: ModelDeploymentSpec, code: PlanReason, shape: str,
                                           in_reason: str) -> None:
    """Issue 14: quantization fp8 was planned onto A100 and A10G, which have no FP8 tensor cores."""
    plan = plan_for(spec)
    assert plan.reason_code is code and plan.shape == shape, plan.reason
    assert in_reason in plan.reason
    if plan.fits and plan.precision is Precision.FP8:
        assert gpus.GPU_TYPES[plan.gpu_type].fp8


@pytest.mark.parametrize(("name", "fp8"), [
    (H100, True), (H200, True), (L40S, True), (L4, True), (A100, False), (A10G, False),
], ids=lambda v: str(v))
def test_gpu_catalog_knows_fp8_support(name: str, fp8: bool) -> None:
    """FP8 tensor cores: Ada Lovelace (L4, L40S) and Hopper (H100, H200) have them, Ampere does not."""
    assert gpus.GPU_TYPES[name].fp8 is fp8


# --- one typed spec path: the planner reads the parsed spec, the API model owns its defaults -------

#: The API's default, read from the API model: the planner has none of its own.
API_UTILIZATION = EngineSpec.model_fields["gpu_memory_utilization"].default


@pytest.mark.parametrize(("engine", "want"), [
    ({}, API_UTILIZATION),
    ({"gpuMemoryUtilization": 0.5}, 0.5),
    ({"gpuMemoryUtilization": 1}, 1.0),
], ids=["unset-is-the-apis-default", "half", "all"])
def test_gpu_memory_utilization_default_lives_in_the_api(engine: dict[str, Any], want: float) -> None:
    """A spec without engine.gpuMemoryUtilization plans with the API's default; the plan's usable
    memory is the GPU's times that fraction."""
    request = plan_request_from_spec(md(maxModelLen=8192, types=[H100], **engine))
    assert request.gpu_memory_utilization == want
    plan = build_plan(request, gpus.GPU_TYPES)
    assert plan.fits and plan.memory is not None
    assert plan.memory.available_gib == pytest.approx(
        gpus.GPU_TYPES[H100].usable_memory_gib * want * plan.gpus_per_replica, abs=0.05)


def test_a_request_built_directly_gets_the_apis_defaults() -> None:
    """Tests and benchmarks build a ``PlanRequest`` without a spec; its defaults are still the API's."""
    request = PlanRequest(source=LLAMA_8B, model_name="x", arch=None, arch_source="none")
    assert request.gpu_memory_utilization == API_UTILIZATION


@pytest.mark.parametrize(("hints", "arch_source"), [
    ({}, "catalog (Llama-3.1-8B)"),
    ({"numLayers": None}, "catalog (Llama-3.1-8B)"),
    ({"parametersBillions": 9}, "catalog (Llama-3.1-8B) + hints"),
], ids=["empty", "only-nulls", "one-hint"])
def test_hints_that_set_nothing_are_no_hints(hints: dict[str, Any], arch_source: str) -> None:
    """``hints: {}`` plans from the catalog, as it did when the planner read the dumped dict."""
    assert plan_request_from_spec(md(hints=hints)).arch_source == arch_source

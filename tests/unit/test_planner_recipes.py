"""The planner against published deployment recipes, and its one promise: never a shape that does not fit.

Each case cites its source (shared/FACTS.md lists them). "Published GB" figures are decimal
gigabytes as model cards and download sizes state them; the estimate must be within 10%.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from modelplane import gpus
from modelplane.api.models import ModelDeploymentSpec
from modelplane.gpus import GPUType
from modelplane.planner import (
    ModelArch,
    PlanReason,
    PlanRequest,
    Precision,
    build_plan,
    estimate_memory,
    kv_tokens,
    match_model,
    plan_request_from_spec,
)

H100, H200, A100, L40S, L4, A10G = ("nvidia-h100-80gb", "nvidia-h200-141gb", "nvidia-a100-80gb",
                                    "nvidia-l40s", "nvidia-l4", "nvidia-a10g")
GB = 1e9
LLAMA_70B = "hf://meta-llama/Llama-3.1-70B-Instruct"


def spec(source: str, *, types: list[str] | None = None, count: int | None = None,
         **engine: Any) -> ModelDeploymentSpec:
    """The spec as the operator plans it: parsed by the API model, its defaults applied."""
    gpu: dict[str, Any] = {}
    if types:
        gpu["types"] = types
    if count is not None:
        gpu["count"] = count
    return ModelDeploymentSpec.model_validate({"model": {"source": source}, "engine": engine,
                                               "resources": {"gpu": gpu}})


# --- published memory figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    source: str
    quantization: str | None
    what: str  # "weights" or "total" (weights + KV cache + overhead at max_model_len)
    gigabytes: float
    max_model_len: int | None
    citation: str


PUBLISHED = [
    Published("hf://meta-llama/Llama-3.1-8B-Instruct", None, "weights", 16, None,
              "FACTS.md: Llama 3.1 8B 16 GB BF16 (LambdaLabsML/vllm-benchmark)"),
    Published("hf://meta-llama/Llama-3.1-70B-Instruct", None, "weights", 141, None,
              "FACTS.md: Llama 3.1/3.3 70B ~141 GB BF16 (Lambda)"),
    Published("hf://meta-llama/Llama-3.3-70B-Instruct", "fp8", "weights", 71, None,
              "FACTS.md: Llama 3.1/3.3 70B ~71 GB FP8 (Lambda)"),
    Published("hf://meta-llama/Llama-4-Scout-17B-16E-Instruct", None, "weights", 218, None,
              "FACTS.md: Llama 4 Scout ~218 GB BF16 (vLLM blog 2025-04-05)"),
    Published("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", None, "weights", 400, None,
              "FACTS.md: Llama 4 Maverick ~400 GB FP8 (vLLM blog 2025-04-05)"),
    Published("hf://mistralai/Mistral-7B-Instruct-v0.3", None, "weights", 14.5, None,
              "FACTS.md: Mistral 7B Instruct v0.3 ~14.5 GB"),
    Published("hf://mistralai/Mistral-Small-24B-Instruct-2501", None, "total", 55, 32768,
              "Mistral-Small-24B-Instruct-2501 model card: ~55 GB of GPU RAM in bf16 (32k context)"),
    Published("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", None, "weights", 93, None,
              "FACTS.md: Mixtral 8x7B ~93 GB BF16 (Lambda)"),
    Published("hf://deepseek-ai/DeepSeek-R1", None, "weights", 690, None,
              "FACTS.md: DeepSeek-R1 671B FP8 ~690 GB (deepseek-ai/DeepSeek-R1)"),
    Published("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None, "weights", 15, None,
              "FACTS.md: R1-Distill-Qwen-7B ~15 GB"),
    Published("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", None, "weights", 65.5, None,
              "FACTS.md: R1-Distill-Qwen-32B 65.5 GB (deepseek-ai/DeepSeek-R1 README)"),
    Published("hf://Qwen/Qwen3-8B", None, "weights", 16, None, "FACTS.md: Qwen3-8B ~16 GB"),
    Published("hf://Qwen/Qwen3-32B", None, "weights", 66, None, "FACTS.md: Qwen3-32B ~66 GB"),
]


@pytest.mark.parametrize("case", PUBLISHED, ids=[f"{p.source.split('/')[-1]}-{p.quantization or 'native'}-"
                                                 f"{p.what}" for p in PUBLISHED])
def test_memory_estimate_within_10_percent_of_published(case: Published) -> None:
    request = plan_request_from_spec(spec(case.source, quantization=case.quantization,
                                          maxModelLen=case.max_model_len))
    arch = request.arch
    assert arch is not None
    precision = request.precision or arch.native_precision
    if case.what == "weights":
        estimate = arch.weight_bytes(precision)
    else:
        assert case.max_model_len is not None
        memory = estimate_memory(arch, precision=precision, gpu_memory_gib=80, gpu_memory_utilization=0.9,
                                 tp=1,
                                 kv_tokens=kv_tokens(max_model_len=case.max_model_len, max_num_seqs=None))
        estimate = memory.required_gib * (1 << 30)
    assert estimate / GB == pytest.approx(case.gigabytes, rel=0.10), case.citation


def test_fp8_keeps_embeddings_in_16_bit() -> None:
    """FACTS.md's "8 GB FP8" for Llama 3.1 8B is 8B x 1 byte; FP8 checkpoints and vLLM's FP8 keep the
    128k-vocabulary embeddings and LM head (2 x 0.53B parameters) in BF16, which adds ~1 GB."""
    arch = match_model("hf://meta-llama/Llama-3.1-8B-Instruct-FP8")
    assert arch is not None and arch.arch.native_precision is Precision.FP8
    embeddings = arch.arch.embedding_params
    assert embeddings == 2 * 128256 * 4096
    expected = (arch.arch.total_params - embeddings) * 1 + embeddings * 2
    assert arch.arch.weight_bytes(Precision.FP8) == pytest.approx(expected)
    assert arch.arch.weight_bytes(Precision.FP8) / GB == pytest.approx(9.1, abs=0.1)


# --- published shapes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    id: str
    spec: ModelDeploymentSpec
    fits: bool
    gpu_type: str | None
    gpus: int | None
    citation: str


RECIPES = [
    Recipe("llama-3.1-8b-bf16-one-24gb-gpu",
           spec("hf://meta-llama/Llama-3.1-8B-Instruct", types=[L4, A10G], maxModelLen=8192),
           True, L4, 1, "FACTS.md: Llama 3.1 8B, 16 GB BF16, one GPU; a 24 GB GPU at a modest context"),
    Recipe("llama-3.1-8b-bf16-128k-one-80gb",
           spec("hf://meta-llama/Llama-3.1-8B-Instruct", types=[H100], maxModelLen=131072),
           True, H100, 1, "FACTS.md: Llama 3.1 8B, 1 GPU, 128k context (LambdaLabsML/vllm-benchmark)"),
    Recipe("llama-3.1-70b-fp8-4k-one-80gb",
           spec("hf://meta-llama/Llama-3.1-70B-Instruct", types=[H100], quantization="fp8", maxModelLen=4096),
           True, H100, 1, "FACTS.md: 70B FP8 on 1x80 GB only ~4k context (Lambda)"),
    Recipe("llama-3.1-70b-fp8-128k-two-80gb",
           spec(LLAMA_70B, types=[H100], quantization="fp8", maxModelLen=131072),
           True, H100, 2, "FACTS.md: 70B FP8, 2x80 GB for 128k (Lambda)"),
    Recipe("llama-3.1-70b-fp8-128k-not-one-80gb",
           spec(LLAMA_70B, types=[H100], quantization="fp8", maxModelLen=131072,
                count=1),
           False, H100, 1, "FACTS.md: 70B FP8 on 1x80 GB only ~4k context (Lambda)"),
    Recipe("llama-3.1-70b-bf16-four-h100",
           spec("hf://meta-llama/Llama-3.1-70B-Instruct", types=[H100], maxModelLen=32768),
           True, H100, 4, "FACTS.md: Llama 3.1 70B BF16 on 4xH100 (Lambda)"),
    Recipe("llama-4-maverick-fp8-8xh100-430k",
           spec("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", types=[H100], maxModelLen=430000),
           True, H100, 8, "vLLM blog 2025-04-05 (Llama 4): Maverick FP8 on 8xH100, 430k context"),
    Recipe("llama-4-maverick-fp8-8xh200-1m",
           spec("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", types=[H200], maxModelLen=1048576),
           True, H200, 8, "vLLM blog 2025-04-05 (Llama 4): Maverick FP8 on 8xH200, 1M context"),
    Recipe("llama-4-scout-bf16-8xh100-1m",
           spec("hf://meta-llama/Llama-4-Scout-17B-16E-Instruct", types=[H100], maxModelLen=1000000),
           True, H100, 8, "vLLM blog 2025-04-05 (Llama 4): Scout on 8xH100 up to 1M context"),
    Recipe("deepseek-r1-8xh200",
           spec("hf://deepseek-ai/DeepSeek-R1", types=[H200]),
           True, H200, 8, "FACTS.md: DeepSeek-R1 671B FP8 on 8xH200 TP8 (vLLM recipes)"),
    Recipe("deepseek-r1-not-8xh100",
           spec("hf://deepseek-ai/DeepSeek-R1", types=[H100]),
           False, H100, 8, "FACTS.md: 8xH100 too small for DeepSeek-R1 (~690 GB of weights > 640 GB)"),
    Recipe("mistral-small-24b-bf16-one-80gb",
           spec("hf://mistralai/Mistral-Small-24B-Instruct-2501", types=[H100, A100]),
           True, A100, 1, "Mistral-Small-24B-Instruct-2501 model card: ~55 GB of GPU RAM in bf16"),
    Recipe("mistral-small-24b-bf16-not-one-48gb",
           spec("hf://mistralai/Mistral-Small-24B-Instruct-2501", types=[L40S]),
           True, L40S, 2, "Mistral-Small-24B model card: ~55 GB, more than one 48 GB GPU; TP2"),
    Recipe("mixtral-8x7b-bf16-two-80gb-32k",
           spec("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", types=[H100], maxModelLen=32768),
           True, H100, 2, "FACTS.md: Mixtral 8x7B BF16 on 2x80 GB at 32k (Lambda)"),
    Recipe("r1-distill-qwen-32b-tp2-32k",
           spec("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", types=[L40S], maxModelLen=32768),
           True, L40S, 2, "deepseek-ai/DeepSeek-R1 README: Distill-Qwen-32B with TP2, max-model-len 32768"),
    Recipe("r1-distill-qwen-32b-tp2-32k-fixed",
           spec("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", types=[H100], maxModelLen=32768, count=2),
           True, H100, 2, "deepseek-ai/DeepSeek-R1 README: Distill-Qwen-32B with TP2, max-model-len 32768"),
    Recipe("qwen3-32b-tp1-80gb",
           spec("hf://Qwen/Qwen3-32B", types=[H100], maxModelLen=32768),
           True, H100, 1, "gateway-api-inference-extension config/manifests/vllm/gpu-deployment.yaml: "
                          "Qwen3-32B TP1 on one GPU; Qwen3 model card: 32k native context"),
    Recipe("qwen3-8b-one-gpu",
           spec("hf://Qwen/Qwen3-8B", types=[L40S]),
           True, L40S, 1, "FACTS.md: Qwen3-8B ~16 GB, 1 GPU"),
    Recipe("r1-distill-qwen-7b-one-gpu",
           spec("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", types=[L40S], maxModelLen=32768),
           True, L40S, 1, "FACTS.md: R1-Distill-Qwen-7B ~15 GB, 1 GPU"),
    Recipe("mistral-7b-one-gpu",
           spec("hf://mistralai/Mistral-7B-Instruct-v0.3", types=[L4]),
           True, L4, 1, "FACTS.md: Mistral 7B Instruct v0.3 ~14.5 GB, 1 GPU"),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.id for r in RECIPES])
def test_published_shapes(recipe: Recipe) -> None:
    plan = build_plan(plan_request_from_spec(recipe.spec), gpus.GPU_TYPES)
    assert plan.fits is recipe.fits, f"{recipe.citation}: {plan.reason}"
    assert (plan.gpu_type, plan.gpus_per_replica) == (recipe.gpu_type, recipe.gpus), recipe.citation
    assert plan.memory is not None
    if recipe.fits:
        assert plan.memory.required_gib <= plan.memory.available_gib
    else:
        assert plan.memory.required_gib > plan.memory.available_gib


def test_llama_70b_fp8_on_one_80gb_holds_about_4k_context() -> None:
    """Lambda: 70B FP8 on one 80 GB GPU "only ~4k context"; our estimate of what fits is 2k-8k."""
    request = plan_request_from_spec(spec("hf://meta-llama/Llama-3.1-70B-Instruct", types=[H100],
                                          quantization="fp8", maxModelLen=2048))
    plan = build_plan(request, gpus.GPU_TYPES)
    assert plan.fits and plan.gpus_per_replica == 1 and plan.memory is not None
    assert 2048 <= plan.memory.kv_capacity_tokens <= 8192


def test_maverick_fp8_1m_context_does_not_fit_8xh100() -> None:
    """vLLM blog: 8xH100 serves Maverick FP8 to 430k; 1M needs 8xH200."""
    plan = build_plan(plan_request_from_spec(spec("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
                                                  types=[H100], maxModelLen=1048576)), gpus.GPU_TYPES)
    assert not plan.fits and plan.reason_code is PlanReason.NO_SINGLE_NODE_FITS


def test_deepseek_r1_on_h100_suggests_two_nodes() -> None:
    plan = build_plan(plan_request_from_spec(spec("hf://deepseek-ai/DeepSeek-R1", types=[H100])),
                      gpus.GPU_TYPES)
    assert plan.reason_code is PlanReason.NO_SINGLE_NODE_FITS
    assert plan.smallest_shape == "16x nvidia-h100-80gb across 2 nodes"
    assert "16x nvidia-h100-80gb across 2 nodes" in plan.reason


def test_reason_names_the_cheapest_and_the_runner_up() -> None:
    """The example from issue 5's brief: 70B FP8 at 128k on H100 or H200."""
    plan = build_plan(plan_request_from_spec(spec(LLAMA_70B, types=[H100, H200],
                                                  quantization="fp8", maxModelLen=131072)), gpus.GPU_TYPES)
    assert plan.shape == "2x nvidia-h100-80gb"
    assert plan.usd_per_hour_per_replica == pytest.approx(5.38)
    assert plan.reason.startswith("Llama-3.1-70B FP8 needs ")
    assert "with 128k context: 2x nvidia-h100-80gb at $5.38/h is the cheapest shape that fits" in plan.reason
    assert "next 1x nvidia-h200-141gb $5.41/h" in plan.reason


# --- property: the chosen shape always fits, and nothing cheaper does --------------------------------


def _random_arch(rng: random.Random) -> ModelArch:
    heads = rng.choice([8, 12, 16, 24, 28, 32, 40, 48, 64, 96, 128])
    kv = rng.choice([h for h in (1, 2, 4, 8, heads) if heads % h == 0])
    mla = rng.random() < 0.1
    hidden = heads * rng.choice([64, 128])
    experts = rng.choice([0, 0, 0, 8, 16, 64, 128])
    return ModelArch(
        name="random",
        total_params=rng.uniform(0.5, 800) * 1e9,
        active_params=1e9,
        num_layers=rng.randint(8, 128),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=heads if mla else kv,
        head_dim=hidden // heads,
        num_experts=experts,
        experts_per_token=2 if experts else 0,
        native_precision=rng.choice(list(Precision)),
        max_position_embeddings=rng.choice([None, 4096, 32768, 131072, 1048576]),
        vocab_size=rng.choice([0, 32000, 128256, 152064]),
        mlp_width=rng.choice([0, hidden * 4]),
        kv_lora_rank=512 if mla else 0,
        qk_rope_head_dim=64 if mla else 0,
    )


def _random_catalog(rng: random.Random) -> dict[str, GPUType]:
    base = dict(gpus.GPU_TYPES)
    # Shuffle prices so the cheapest type changes from case to case.
    return {name: GPUType(g.name, g.product, g.memory_gib, round(rng.uniform(0.3, 8), 2), "test",
                          g.bf16_tflops, g.bandwidth_gbps, g.fp8, g.memory_mib) for name, g in base.items()}


def test_planner_never_picks_a_shape_that_does_not_fit() -> None:
    rng = random.Random(20261126)
    checked = fitted = 0
    for _ in range(600):
        arch = _random_arch(rng)
        catalog = _random_catalog(rng)
        names = list(catalog)
        types = tuple(rng.sample(names, rng.randint(1, len(names)))) if rng.random() < 0.6 else ()
        request = PlanRequest(
            source="hf://test/random", model_name="random", arch=arch, arch_source="test",
            precision=rng.choice([None, *Precision]),
            max_model_len=rng.choice([None, 2048, 8192, 32768, 131072]),
            max_num_seqs=rng.choice([None, 1, 16, 256]),
            gpu_memory_utilization=rng.choice([0.8, 0.9, 0.95]),
            gpu_count=rng.choice([None, None, 1, 2, 3, 4, 8]),
            gpu_types=types,
            kv_cache_bytes=rng.choice([1.0, 2.0]),
            allow_long_context=True,
        )
        plan = build_plan(request, catalog)
        checked += 1
        if not plan.fits:
            continue
        fitted += 1
        memory = plan.memory
        assert memory is not None and plan.gpu_type is not None
        assert memory.per_gpu_required_gib <= memory.per_gpu_available_gib
        assert memory.required_gib <= memory.available_gib + 1e-6
        assert arch.valid_tensor_parallel(plan.tensor_parallel_size)
        assert plan.gpus_per_replica == plan.tensor_parallel_size
        assert plan.gpu_type in (types or names)
        assert plan.gpus_per_replica <= 8
        precision = request.precision or arch.native_precision
        allowed = [n for n in types or names if precision is not Precision.FP8 or catalog[n].fp8]
        assert plan.gpu_type in allowed, "FP8 weights on a GPU without FP8 support"
        if request.gpu_count is not None:
            assert plan.gpus_per_replica == request.gpu_count
        else:
            # Brute force: no valid one-node shape among the allowed types is cheaper and fits.
            context = request.max_model_len or arch.max_position_embeddings
            assert context is not None
            tokens = kv_tokens(max_model_len=context, max_num_seqs=request.max_num_seqs)
            for name in allowed:
                for n in range(1, 9):
                    if not arch.valid_tensor_parallel(n):
                        continue
                    m = estimate_memory(arch, precision=precision,
                                        gpu_memory_gib=catalog[name].usable_memory_gib,
                                        gpu_memory_utilization=request.gpu_memory_utilization, tp=n,
                                        kv_tokens=tokens, kv_bytes=request.kv_cache_bytes,
                                        max_num_seqs=request.max_num_seqs)
                    if m.fits:
                        assert n * catalog[name].usd_per_hour >= plan.usd_per_hour_per_replica - 1e-9
    assert checked == 600 and fitted > 100  # the sample exercises both outcomes


def test_catalog_matches_recipe_sources() -> None:
    # Guard for the tables above: each recipe names a catalog model (else it would test nothing).
    for recipe in RECIPES:
        assert match_model(recipe.spec.model.source) is not None, recipe.id

"""Model facts: parameter counts from config.json, precisions, KV cache geometry, hints, catalog matching."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane.api.models import ModelHints
from modelplane.planner import (
    CATALOG,
    ModelArchError,
    Precision,
    arch_from_config,
    arch_from_hints,
    match_model,
)
from modelplane.planner.arch import count_parameters, native_precision_from_config
from modelplane.planner.catalog import normalize_model_name


def hints_(**fields: Any) -> ModelHints:
    """``spec.model.hints`` as the planner gets it: parsed by the API model."""
    return ModelHints.model_validate(fields)


@pytest.mark.parametrize("entry", CATALOG, ids=[e.name for e in CATALOG])
def test_parameters_computed_from_config_match_the_model_card(entry: Any) -> None:
    """The architecture arithmetic reproduces each model card's total (and active) parameter count.

    Vision towers are not counted, so multimodal checkpoints (Llama 4, Mistral 3.1) come out up to
    ~2% low; everything else within 1%.
    """
    counted = count_parameters(entry.config)
    assert counted.total == pytest.approx(entry.total_params, rel=0.02), entry.source
    assert counted.active == pytest.approx(entry.active_params, rel=0.03), entry.source


@pytest.mark.parametrize(("config", "want"), [
    ({"torch_dtype": "bfloat16"}, Precision.BF16),
    ({"torch_dtype": "float16"}, Precision.FP16),
    ({"torch_dtype": "float32"}, Precision.BF16),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}, Precision.FP8),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, Precision.INT4),
    ({"quantization_config": {"quant_method": "gptq", "bits": 8}}, Precision.INT8),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8, "type": "float"}}}}}, Precision.FP8),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "type": "int"}}}}}, Precision.INT4),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, Precision.INT4),
    ({"text_config": {"num_hidden_layers": 2, "torch_dtype": "float16"}}, Precision.FP16),
], ids=["bf16", "fp16", "fp32-served-as-bf16", "fp8-block", "awq", "gptq-8bit", "compressed-fp8",
        "compressed-w4a16", "bnb-4bit", "nested-text-config"])
def test_native_precision(config: dict[str, Any], want: Precision) -> None:
    assert native_precision_from_config(config) is want


@pytest.mark.parametrize(("precision", "bytes_per_param"), [
    (Precision.BF16, 2.0), (Precision.FP16, 2.0), (Precision.FP8, 1.0),
    (Precision.INT8, 1.0 + 2.5 / 128), (Precision.INT4, 0.5 + 2.5 / 128),
], ids=lambda v: str(v))
def test_linear_bytes(precision: Precision, bytes_per_param: float) -> None:
    assert precision.linear_bytes == pytest.approx(bytes_per_param)


def _arch(source: str) -> Any:
    match = match_model(source)
    assert match is not None
    return match.arch


@pytest.mark.parametrize(("source", "tp", "kv_bytes", "want"), [
    # 2 (K,V) x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token
    ("hf://meta-llama/Llama-3.1-8B-Instruct", 1, 2, 131072),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", 2, 2, 65536),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", 8, 2, 16384),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", 8, 1, 8192),
    # 4 KV heads on 8 ranks: replicated, one head per rank
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 4, 2, 2 * 28 * 1 * 128 * 2),
    # MLA: (512 + 64) x 61 layers x 2 bytes, the same on every rank
    ("hf://deepseek-ai/DeepSeek-R1", 1, 2, 576 * 61 * 2),
    ("hf://deepseek-ai/DeepSeek-R1", 8, 2, 576 * 61 * 2),
], ids=["llama8b-tp1", "llama8b-tp2", "llama8b-tp8", "llama8b-fp8-kv", "qwen7b-replicated-kv",
        "mla-tp1", "mla-tp8-replicated"])
def test_kv_bytes_per_token_per_rank(source: str, tp: int, kv_bytes: float, want: int) -> None:
    assert _arch(source).kv_bytes_per_token_per_rank(tp=tp, kv_bytes=kv_bytes) == want


@pytest.mark.parametrize(("source", "valid"), [
    ("hf://meta-llama/Llama-3.1-70B-Instruct", [1, 2, 4, 8]),  # 64 heads, 8 KV heads
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", [1, 2, 4]),  # 28 heads, 4 KV: 7 and 14 fail on KV
    ("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct", [1, 2, 4, 8]),  # 40 heads: 5 fails on 8 KV
    ("hf://deepseek-ai/DeepSeek-R1", [1, 2, 4, 8]),  # MLA, 128 heads
    ("hf://mistralai/Mistral-Small-24B-Instruct-2501", [1, 2, 4, 8]),
], ids=["llama70b", "qwen7b", "maverick", "deepseek-mla", "mistral-small"])
def test_valid_tensor_parallel_sizes(source: str, valid: list[int]) -> None:
    arch = _arch(source)
    assert [n for n in range(1, 9) if arch.valid_tensor_parallel(n)] == valid


def test_config_num_parameters_wins_over_computation() -> None:
    config = {"hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_parameters": 123456789}
    assert arch_from_config(config, name="x").total_params == 123456789


@pytest.mark.parametrize("config", [
    {"num_hidden_layers": 4, "num_attention_heads": 8},
    {"hidden_size": 1024, "num_hidden_layers": "four", "num_attention_heads": 8},
    {"hidden_size": 1024, "num_hidden_layers": 0, "num_attention_heads": 8},
], ids=["no-hidden-size", "not-a-number", "zero-layers"])
def test_config_that_cannot_be_sized(config: dict[str, Any]) -> None:
    with pytest.raises(ModelArchError):
        arch_from_config(config, name="x")


def test_moe_layer_layouts() -> None:
    """Maverick: every other layer is MoE (24 of 48); DeepSeek: all but the first three."""
    maverick = count_parameters(next(e for e in CATALOG if e.name.startswith("Llama-4-Maverick")).config)
    scout = count_parameters(next(e for e in CATALOG if e.name.startswith("Llama-4-Scout")).config)
    assert maverick.total > 3.5 * scout.total  # 128 experts on half the layers vs 16 on all
    assert maverick.active == pytest.approx(scout.active, rel=0.01)  # both 17B active


def test_hints_alone_need_the_required_fields() -> None:
    with pytest.raises(ModelArchError, match="numLayers, hiddenSize"):
        arch_from_hints(hints_(parametersBillions=7), name="x")


def test_hints_alone_default_to_multi_head_attention() -> None:
    arch = arch_from_hints(hints_(parametersBillions=7, numLayers=32, hiddenSize=4096, numAttentionHeads=32),
                           name="x")
    assert (arch.num_kv_heads, arch.head_dim, arch.total_params) == (32, 128, 7e9)


def test_hints_override_a_catalog_entry() -> None:
    base = _arch("hf://meta-llama/Llama-3.1-8B-Instruct")
    arch = arch_from_hints(hints_(parametersBillions=9.5), name="ft", base=base)
    assert arch.total_params == 9.5e9
    assert (arch.num_layers, arch.num_kv_heads, arch.head_dim) == (32, 8, 128)
    assert arch.max_position_embeddings == 131072


@pytest.mark.parametrize(("source", "name", "precision"), [
    ("hf://meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B", None),
    ("hf://meta-llama/Meta-Llama-3.1-8B-Instruct", "Llama-3.1-8B", None),
    ("HF://META-LLAMA/LLAMA-3.1-70B-INSTRUCT", "Llama-3.1-70B", None),
    ("hf://RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", "Llama-3.3-70B", Precision.FP8),
    ("hf://neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "Llama-3.1-70B", Precision.FP8),
    ("hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "Llama-3.1-70B", Precision.INT4),
    ("hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", "Llama-4-Maverick-17B-128E", Precision.FP8),
    ("hf://meta-llama/Llama-4-Scout-17B-16E-Instruct", "Llama-4-Scout-17B-16E", None),
    ("hf://mistralai/Mistral-7B-Instruct-v0.3", "Mistral-7B-v0.3", None),
    ("hf://mistralai/Mistral-Small-24B-Instruct-2501", "Mistral-Small-24B", None),
    ("hf://mistralai/Mistral-Small-3.1-24B-Instruct-2503", "Mistral-Small-3.1-24B", None),
    ("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral-8x7B", None),
    ("hf://deepseek-ai/DeepSeek-R1", "DeepSeek-R1", None),
    ("hf://deepseek-ai/DeepSeek-V3-0324", "DeepSeek-V3", None),
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "DeepSeek-R1-Distill-Qwen-32B", None),
    ("hf://Qwen/Qwen3-8B", "Qwen3-8B", None),
    ("hf://Qwen/Qwen3-32B-AWQ", "Qwen3-32B", Precision.INT4),
    ("hf://Qwen/Qwen3-30B-A3B", "Qwen3-30B-A3B", None),
    ("pvc://models/llama-3.1-8b-instruct/", "Llama-3.1-8B", None),
    ("s3://bucket/checkpoints/Qwen3-8B", "Qwen3-8B", None),
    ("oci://ghcr.io/acme/llama-3.1-8b-instruct:v3", "Llama-3.1-8B", None),
    ("hf://acme/Llama-3.1-8B-Instruct-support-v2", "Llama-3.1-8B", None),
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "DeepSeek-R1-Distill-Llama-8B", None),
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "DeepSeek-R1-Distill-Llama-70B", None),
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "DeepSeek-R1-Distill-Qwen-1.5B", None),
    ("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "DeepSeek-R1-Distill-Qwen-14B", None),
    ("hf://RedHatAI/DeepSeek-R1-Distill-Llama-70B-FP8-dynamic", "DeepSeek-R1-Distill-Llama-70B",
     Precision.FP8),
    ("hf://acme/DeepSeek-R1-Distill-Qwen-14B-support-v2", "DeepSeek-R1-Distill-Qwen-14B", None),
    ("hf://acme/DeepSeek-R1-0528-support", "DeepSeek-R1", None),
    ("hf://meta-llama/Llama-3.1-405B-Instruct", "Llama-3.1-405B", None),
    ("hf://meta-llama/Llama-3.1-405B-Instruct-FP8", "Llama-3.1-405B", Precision.FP8),
], ids=lambda v: str(v))
def test_catalog_matching(source: str, name: str, precision: Precision | None) -> None:
    match = match_model(source)
    assert match is not None and match.entry.name == name
    if precision is not None:
        assert match.arch.native_precision is precision


@pytest.mark.parametrize("source", [
    "hf://acme/secret-model", "hf://meta-llama/Llama-2-13b-chat-hf", "hf://Qwen/Qwen3-4B",
    "hf://acme/llama-3.1", "s3://bucket/",
    # Built from a catalog model, another architecture: not sized as the model they name first.
    "hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-3B", "hf://deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "hf://acme/DeepSeek-R1-distill-mistral-7b", "hf://acme/Qwen3-32B-distill", "hf://acme/Llama-3.1-70B-to-8B",
], ids=lambda v: str(v))
def test_catalog_does_not_guess(source: str) -> None:
    assert match_model(source) is None


@pytest.mark.parametrize(("source", "precision"), [
    ("hf://meta-llama/Llama-3.1-405B-Instruct-FP8", Precision.FP8),
    ("hf://RedHatAI/Meta-Llama-3.1-405B-Instruct-FP8-dynamic", Precision.FP8),
    ("hf://Qwen/Qwen2.5-72B-Instruct-AWQ", Precision.INT4),
    ("hf://Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", Precision.INT4),
    ("hf://Qwen/Qwen2.5-72B-Instruct-GPTQ-Int8", Precision.INT8),
    ("hf://RedHatAI/Meta-Llama-3.1-405B-Instruct-quantized.w4a16", Precision.INT4),
    ("hf://RedHatAI/Meta-Llama-3.1-405B-Instruct-quantized.w8a8", Precision.INT8),
    ("hf://openai/gpt-oss-120b-MXFP4", Precision.INT4),
    ("hf://acme/model-8bit", Precision.INT8),
    ("hf://acme/model-BF16", Precision.BF16),
    ("hf://acme/model-v2.5", None),
    ("hf://acme/fp8lover-7b", None),
], ids=lambda v: str(v))
def test_precision_named_in_the_source(source: str, precision: Precision | None) -> None:
    """The planner reads the precision from the name of a model outside the catalog too."""
    assert normalize_model_name(source)[1] is precision


def test_hints_replace_the_attention_of_an_mla_base() -> None:
    """A hinted attention is grouped-query attention from the hints: no MLA latent is kept from R1."""
    r1 = _arch("hf://deepseek-ai/DeepSeek-R1")
    gqa = arch_from_hints(hints_(numLayers=32, numAttentionHeads=32, numKeyValueHeads=8, headDim=128),
                          name="x", base=r1)
    assert not gqa.is_mla
    assert gqa.kv_bytes_per_token_per_rank(tp=1, kv_bytes=2) == 2 * 32 * 8 * 128 * 2
    mha = arch_from_hints(hints_(numAttentionHeads=32), name="x", base=r1)
    assert not mha.is_mla and mha.num_kv_heads == 32  # not R1's 128 "KV heads"
    finetune = arch_from_hints(hints_(parametersBillions=680), name="x", base=r1)  # an R1 fine-tune
    assert finetune.is_mla and finetune.kv_lora_rank == 512


# KV heads above hinted attention heads, and an unknown precision, are the API model's to refuse
# (test_api_models.PLANNER_REFUSALS); what is left here needs the catalog entry to judge.
@pytest.mark.parametrize(("hints", "message"), [
    ({"numKeyValueHeads": 64},
     r"numKeyValueHeads \(64\) must be <= numAttentionHeads \(32 of Llama-3.1-8B\)"),
], ids=["kv-above-base-heads"])
def test_inconsistent_hints_are_refused(hints: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelArchError, match=message):
        arch_from_hints(hints_(**hints), name="x", base=_arch("hf://meta-llama/Llama-3.1-8B-Instruct"))


@pytest.mark.parametrize(("hints", "named", "base_source", "want"), [
    ({}, Precision.FP8, None, Precision.FP8),
    ({"precision": "int4"}, Precision.FP8, None, Precision.INT4),
    ({}, None, "hf://deepseek-ai/DeepSeek-R1", Precision.FP8),
    ({"precision": "bf16"}, None, "hf://deepseek-ai/DeepSeek-R1", Precision.BF16),
    ({}, None, None, Precision.BF16),
], ids=["from-name", "hint-wins", "from-base", "hint-over-base", "default"])
def test_hinted_precision(hints: dict[str, Any], named: Precision | None, base_source: str | None,
                          want: Precision) -> None:
    full = {"parametersBillions": 8, "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32, **hints}
    base = _arch(base_source) if base_source else None
    arch = arch_from_hints(hints_(**full), name="x", base=base, named_precision=named)
    assert arch.native_precision is want


def test_prefix_match_is_marked_inexact() -> None:
    match = match_model("hf://acme/Llama-3.1-8B-Instruct-support-v2")
    assert match is not None and not match.exact
    assert normalize_model_name("hf://a/Llama-3.1-8B-Instruct-FP8") == ("llama-3.1-8b", Precision.FP8)


def test_deepseek_is_native_fp8_with_mla() -> None:
    arch = _arch("hf://deepseek-ai/DeepSeek-R1")
    assert arch.native_precision is Precision.FP8
    assert arch.is_mla and arch.is_moe and arch.num_experts == 256 and arch.experts_per_token == 8
    assert arch.max_position_embeddings == 163840

"""Performance profiles: the published figures they cite, scaling across GPUs, and refusals."""

from __future__ import annotations

import pytest

from modelplane.gpus import GPU_TYPE_NAMES, GPU_TYPES
from modelplane.planner.performance import (
    THROUGHPUT_TABLE,
    SizeClass,
    guess_parameters_billions,
    params_for,
    saturated_tokens_per_s,
    size_class,
)
from modelplane_dev.sim.config import SimConfig, parse_vllm_args


def test_the_table_covers_every_gpu_and_size_class_with_a_source() -> None:
    assert set(THROUGHPUT_TABLE) == {(g, c) for g in GPU_TYPE_NAMES for c in SizeClass}
    assert all(f.source and f.output_tokens_per_s_per_gpu > 0 for f in THROUGHPUT_TABLE.values())


@pytest.mark.parametrize(("gpu", "billions", "tp", "low", "high"), [
    # Llama 3.1 8B on one H100: MLPerf v5.1 server 5,103 (Red Hat) .. Lambda offline 8,088.
    ("nvidia-h100-80gb", 8, 1, 5103, 8088),
    # Llama 3.1 70B: Lambda 886/GPU at TP4, 864/GPU at TP2 (FP8): ~3,450-3,550 for a TP4 replica.
    ("nvidia-h100-80gb", 70, 4, 4 * 864 * 0.98, 4 * 886 * 1.02),
    # L40S, same MLPerf benchmark ratio as H100 (1,207 vs 5,103) applied to the H100 figure.
    ("nvidia-l40s", 8, 1, 1207, 8088 * 1207 / 5103),
], ids=["h100-8b", "h100-70b-tp4", "l40s-8b"])
def test_saturated_throughput_matches_published_benchmarks(gpu: str, billions: float, tp: int, low: float,
                                                           high: float) -> None:
    params = params_for(gpu, billions, tp, 8192, 256)
    assert low <= saturated_tokens_per_s(params) <= high


def test_throughput_follows_memory_bandwidth_across_gpus() -> None:
    by_bandwidth = sorted(GPU_TYPE_NAMES, key=lambda g: GPU_TYPES[g].bandwidth_gbps)
    rates = [saturated_tokens_per_s(params_for(g, 8, 1, 4096, 256)) for g in by_bandwidth]
    # L40S is the published exception (its own MLPerf figure); every other pair follows bandwidth.
    ordered = [r for g, r in zip(by_bandwidth, rates, strict=True) if g != "nvidia-l40s"]
    assert ordered == sorted(ordered)


@pytest.mark.parametrize(("gpu", "billions", "tp", "max_len", "quant", "message"), [
    ("nvidia-l4", 70, 1, 4096, None, "do not fit"),
    ("nvidia-h100-80gb", 70, 1, 4096, None, "do not fit"),
    ("nvidia-h100-80gb", 70, 1, 200_000, "fp8", "larger than the maximum number of tokens"),
    ("nvidia-b200", 8, 1, 4096, None, "unknown GPU type"),
    ("nvidia-h100-80gb", 8, 1, 4096, "int3", "unsupported quantization"),
], ids=["70b-on-l4", "70b-bf16-on-one-h100", "70b-fp8-context-too-long", "unknown-gpu", "bad-quant"])
def test_refuses_what_vllm_would_refuse(gpu: str, billions: float, tp: int, max_len: int, quant: str | None,
                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params_for(gpu, billions, tp, max_len, 256, quantization=quant)


def test_fp8_weights_leave_more_kv_cache_and_decode_faster() -> None:
    bf16 = params_for("nvidia-h100-80gb", 70, 2, 8192, 256)
    fp8 = params_for("nvidia-h100-80gb", 70, 2, 8192, 256, quantization="fp8")
    assert fp8.kv_cache_tokens > 2 * bf16.kv_cache_tokens
    assert fp8.step_base_s < bf16.step_base_s


def test_tensor_parallelism_adds_kv_cache_and_throughput() -> None:
    tp2 = params_for("nvidia-h100-80gb", 70, 2, 8192, 256)
    tp4 = params_for("nvidia-h100-80gb", 70, 4, 8192, 256)
    assert tp4.kv_cache_tokens > 2 * tp2.kv_cache_tokens
    assert saturated_tokens_per_s(tp4) > 1.8 * saturated_tokens_per_s(tp2)


@pytest.mark.parametrize(("name", "billions"), [
    ("meta-llama/Llama-3.1-8B-Instruct", 8),
    ("meta-llama/Llama-3.3-70B-Instruct", 70),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 47),
    ("Qwen/Qwen3-32B", 32),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7),
    ("mistralai/Mistral-7B-Instruct-v0.3", 7),
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.5),
    ("my-org/support-bot", 8),
], ids=["llama8b", "llama70b", "mixtral", "qwen32b", "r1-distill", "mistral7b", "qwen-0.5b", "no-size"])
def test_guess_parameters_from_the_model_name(name: str, billions: float) -> None:
    assert guess_parameters_billions(name) == pytest.approx(billions, rel=0.02)


@pytest.mark.parametrize(("billions", "cls"), [
    (0.5, SizeClass.SMALL), (8, SizeClass.SMALL), (24, SizeClass.MEDIUM), (70, SizeClass.LARGE),
    (405, SizeClass.XLARGE),
], ids=["0.5b", "8b", "24b", "70b", "405b"])
def test_size_classes(billions: float, cls: SizeClass) -> None:
    assert size_class(billions) is cls


@pytest.mark.parametrize(("argv", "expected"), [
    (["vllm", "serve", "meta-llama/Llama-3.1-8B", "--served-model-name", "chat", "--max-model-len", "16384",
      "--tensor-parallel-size", "2", "--max-num-seqs", "64", "--quantization", "fp8", "--revision", "abc"],
     {"model": "meta-llama/Llama-3.1-8B", "served_name": "chat", "max_model_len": 16384,
      "tensor_parallel_size": 2, "max_num_seqs": 64, "quantization": "fp8", "revision": "abc"}),
    (["--model=org/m", "--port=9000", "--enable-prefix-caching", "--gpu-memory-utilization", "0.85",
      "--download-dir", "/models", "--served-model-name", "a", "b", "--seed", "3"],
     {"model": "org/m", "port": 9000, "gpu_memory_utilization": 0.85, "served_name": "a", "seed": 3}),
    (["serve", "org/m", "--lora-modules", "x=/a", "--enforce-eager", "--max-model-len", "4096"],
     {"model": "org/m", "served_name": "org/m", "max_model_len": 4096, "port": 8000}),
    (["/usr/bin/vllm", "serve", "org/m", "-tp", "4", "--unknown-bool", "--max-num-seqs", "8"],
     {"model": "org/m", "tensor_parallel_size": 4, "max_num_seqs": 8}),
], ids=["vllm-serve", "api-server-style", "unknown-flags-with-values", "short-flags"])
def test_parse_vllm_args(argv: list[str], expected: dict[str, object]) -> None:
    config = parse_vllm_args(argv)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("argv", [["--port", "eighty"], ["--max-model-len"], ["--max-num-seqs", "0"]],
                         ids=["bad-int", "missing-value", "zero-seqs"])
def test_parse_vllm_args_refuses_bad_values(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_vllm_args(argv)


def test_config_without_max_model_len_uses_what_fits() -> None:
    small = SimConfig(model="org/Llama-70B", gpu_type="nvidia-h100-80gb", tensor_parallel_size=1,
                      quantization="fp8")
    params = small.engine_params()
    assert params.max_model_len <= params.kv_cache_tokens
    assert SimConfig(model="org/Llama-8B").engine_params().max_model_len == 8192

"""Performance profiles: published vLLM throughput turned into the engine model's parameters.

The simulator must queue where real vLLM would, so its figures come from public benchmarks
(shared/FACTS.md), not from taste. The table is keyed by GPU type (``modelplane.gpus`` names) and
model size class, and holds the saturated output tokens/s per GPU of a vLLM replica:

- H100, small (Llama 3.1 8B): 6,500 tok/s, between the MLPerf v5.1 server figure (5,103, FP8,
  latency-bounded; Red Hat) and Lambda's offline figure (8,088, BF16, vLLM 0.6).
- L40S, small: 1,540 tok/s, the H100 figure times the L40S/H100 ratio measured on the same MLPerf
  v5.1 benchmark (1,207 / 5,103).
- H100, large (Llama 3.1 70B): 875 tok/s per GPU (Lambda: 886 at TP4 BF16, 864 at TP2 FP8).
- H100, medium and xlarge: estimates (interpolated by parameter count; no published vLLM figure in
  FACTS.md), marked as such.
- Every other cell: the H100 figure of its size class scaled by memory bandwidth, since decode is
  memory-bound (``gpus.GPUType.bandwidth_gbps``).

``params_for`` then derives the memory-bound step model from those figures: the step time with an
empty batch is reading the weights once (weights / bandwidth, at 75% efficiency), and the per-sequence
cost is what makes the replica reach the table's throughput at a batch of 256 (vLLM's default
``max_num_seqs`` and the concurrency the benchmarks ran at). The KV cache is what is left of GPU
memory after weights and a fixed activation reserve, at the KV bytes per token of Llama-shaped
models of that size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from modelplane.api.models import EngineSpec
from modelplane.gpus import GPU_TYPE_NAMES, GPU_TYPES


@dataclass(frozen=True)
class EngineParams:
    """The figures of one replica; ``params_for`` derives them per GPU/model."""

    max_num_seqs: int
    max_model_len: int
    kv_cache_tokens: int
    step_base_s: float  #: decode step time with one sequence's worth of batch overhead removed
    step_per_seq_s: float  #: added to a step per running sequence
    prefill_tokens_per_s: float
    max_num_batched_tokens: int = 8192  #: prefill budget of one step (at least one request always fits)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.kv_cache_tokens < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs, kv_cache_tokens and max_model_len must be >= 1")
        if self.step_base_s < 0 or self.step_per_seq_s < 0 or self.prefill_tokens_per_s <= 0:
            raise ValueError("step times must be >= 0 and the prefill rate > 0")
        if self.step_base_s + self.step_per_seq_s <= 0:
            raise ValueError("a step must take some time")
        if self.max_model_len > self.kv_cache_tokens:
            # vLLM refuses to start in this case; the engine would wedge on a request it can never place.
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the KV cache ({self.kv_cache_tokens})")

    def slowed(self, latency_factor: float) -> EngineParams:
        """The same replica, every step ``latency_factor`` times slower (a degraded checkpoint or node)."""
        if latency_factor <= 0:
            raise ValueError(f"latency_factor must be > 0, got {latency_factor}")
        return replace(self, step_base_s=self.step_base_s * latency_factor,
                       step_per_seq_s=self.step_per_seq_s * latency_factor,
                       prefill_tokens_per_s=self.prefill_tokens_per_s / latency_factor)


class SizeClass(StrEnum):
    """Model size classes of the throughput table, by total parameter count."""

    SMALL = "small"  #: up to 15B (Llama 3.1 8B, Mistral 7B, Qwen3 8B)
    MEDIUM = "medium"  #: 15B-45B (Mistral Small 24B, Qwen3 32B)
    LARGE = "large"  #: 45B-150B (Llama 3.1 70B, Mixtral 8x7B)
    XLARGE = "xlarge"  #: above 150B (Llama 3.1 405B, DeepSeek V3)


#: The parameter count (billions) each class's throughput figure was measured (or estimated) at.
REFERENCE_PARAMETERS_B: dict[SizeClass, float] = {
    SizeClass.SMALL: 8.0,
    SizeClass.MEDIUM: 32.0,
    SizeClass.LARGE: 70.0,
    SizeClass.XLARGE: 405.0,
}

#: The batch the published saturated figures correspond to.
REFERENCE_BATCH = 256
#: Share of peak memory bandwidth a decode step reaches when it reads the weights.
BANDWIDTH_EFFICIENCY = 0.75
#: Share of peak BF16 FLOPS a prefill reaches (compute-bound).
PREFILL_MFU = 0.4
#: GiB per GPU that vLLM's memory profiling keeps for activations and CUDA graphs (estimate).
ACTIVATION_RESERVE_GB = 2.0
#: Extra per-step time for the all-reduce of tensor parallelism, per step (estimate).
TP_STEP_OVERHEAD_S = 0.0005
#: KV cache bytes per token of Llama 3.1 8B in BF16: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 B.
KV_BYTES_PER_TOKEN_8B = 32 * 8 * 128 * 2 * 2

#: Bytes per weight by ``--quantization`` (None = BF16/FP16; awq/gptq = 4-bit).
BYTES_PER_PARAMETER: dict[str | None, float] = {None: 2.0, "fp8": 1.0, "awq": 0.5, "gptq": 0.5}

_REFERENCE_GPU = "nvidia-h100-80gb"


@dataclass(frozen=True)
class ThroughputFigure:
    """Saturated output tokens/s per GPU of one vLLM replica, and where the figure comes from."""

    output_tokens_per_s_per_gpu: float
    source: str


_ANCHORS: dict[tuple[str, SizeClass], ThroughputFigure] = {
    (_REFERENCE_GPU, SizeClass.SMALL): ThroughputFigure(
        6500.0, "Llama 3.1 8B 1xH100: MLPerf v5.1 server 5,103 (Red Hat), Lambda vLLM 0.6 8,088"),
    ("nvidia-l40s", SizeClass.SMALL): ThroughputFigure(
        6500.0 * 1207.0 / 5103.0, "H100 figure x MLPerf v5.1 L40S/H100 ratio (1,207 / 5,103, Red Hat)"),
    (_REFERENCE_GPU, SizeClass.MEDIUM): ThroughputFigure(
        1700.0, "estimate: interpolated between the 8B and 70B H100 figures by parameter count"),
    (_REFERENCE_GPU, SizeClass.LARGE): ThroughputFigure(
        875.0, "Llama 3.1 70B: Lambda vLLM 0.6 4xH100 886/GPU; vLLM 0.5.4 FP8 2xH100 864/GPU"),
    (_REFERENCE_GPU, SizeClass.XLARGE): ThroughputFigure(
        180.0, "estimate: the 70B H100 figure scaled by parameter count (70/405), rounded up"),
}


def size_class(parameters_billions: float) -> SizeClass:
    """The table row a model of this many parameters falls in."""
    if parameters_billions <= 15:
        return SizeClass.SMALL
    if parameters_billions <= 45:
        return SizeClass.MEDIUM
    if parameters_billions <= 150:
        return SizeClass.LARGE
    return SizeClass.XLARGE


def _build_table() -> dict[tuple[str, SizeClass], ThroughputFigure]:
    reference_bw = GPU_TYPES[_REFERENCE_GPU].bandwidth_gbps
    table: dict[tuple[str, SizeClass], ThroughputFigure] = {}
    for gpu_name, gpu in GPU_TYPES.items():
        for cls in SizeClass:
            anchor = _ANCHORS.get((gpu_name, cls))
            if anchor is not None:
                table[(gpu_name, cls)] = anchor
                continue
            ref = _ANCHORS[(_REFERENCE_GPU, cls)]
            ratio = gpu.bandwidth_gbps / reference_bw
            table[(gpu_name, cls)] = ThroughputFigure(
                ref.output_tokens_per_s_per_gpu * ratio,
                f"H100 {cls.value} figure x memory bandwidth ratio {ratio:.2f} ({ref.source})")
    return table


#: Saturated output tokens/s per GPU for every (GPU type, size class).
THROUGHPUT_TABLE: dict[tuple[str, SizeClass], ThroughputFigure] = _build_table()


def kv_bytes_per_token(parameters_billions: float) -> float:
    """KV cache bytes per token (BF16) of a Llama-shaped model of this size.

    Fitted to Llama 3.1 8B (128 KiB), 70B (320 KiB) and 405B (504 KiB): KV grows with depth and
    width but far slower than the parameter count, because of grouped-query attention.
    """
    return float(KV_BYTES_PER_TOKEN_8B * (max(parameters_billions, 0.1) / 8.0) ** 0.4)


#: ``spec.engine.gpuMemoryUtilization`` unset: the API's default (``api.models.EngineSpec``), its one home.
_API_GPU_MEMORY_UTILIZATION = EngineSpec().gpu_memory_utilization


def params_for(gpu_type: str, parameters_billions: float, tensor_parallel_size: int, max_model_len: int,
               max_num_seqs: int, *, quantization: str | None = None,
               gpu_memory_utilization: float = _API_GPU_MEMORY_UTILIZATION,
               max_num_batched_tokens: int = 8192) -> EngineParams:
    """Engine parameters for one vLLM replica of a model on ``tensor_parallel_size`` GPUs.

    Raises ``ValueError`` where vLLM itself would refuse to start: unknown GPU type, weights that do
    not fit, or a ``max_model_len`` larger than the KV cache.
    """
    gpu = GPU_TYPES.get(gpu_type)
    if gpu is None:
        raise ValueError(f"unknown GPU type {gpu_type!r}; known: {', '.join(GPU_TYPE_NAMES)}")
    if parameters_billions <= 0:
        raise ValueError(f"parameters_billions must be > 0, got {parameters_billions}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if quantization not in BYTES_PER_PARAMETER:
        raise ValueError(f"unsupported quantization {quantization!r}; known: fp8, awq, gptq")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")

    weights_gb_per_gpu = parameters_billions * BYTES_PER_PARAMETER[quantization] / tensor_parallel_size
    memory_gb = gpu.memory_gib * (2**30 / 1e9)
    free_gb_per_gpu = memory_gb * gpu_memory_utilization - weights_gb_per_gpu - ACTIVATION_RESERVE_GB
    if free_gb_per_gpu <= 0:
        raise ValueError(
            f"{parameters_billions:g}B parameters ({weights_gb_per_gpu:.1f} GB of weights per GPU) do not "
            f"fit on {tensor_parallel_size}x {gpu_type} at gpu_memory_utilization {gpu_memory_utilization}")
    kv_tokens = int(free_gb_per_gpu * 1e9 * tensor_parallel_size / kv_bytes_per_token(parameters_billions))
    if max_model_len > kv_tokens:
        raise ValueError(
            f"The model's max seq len ({max_model_len}) is larger than the maximum number of tokens that "
            f"can be stored in KV cache ({kv_tokens}) on {tensor_parallel_size}x {gpu_type}")

    cls = size_class(parameters_billions)
    figure = THROUGHPUT_TABLE[(gpu_type, cls)]
    # Within a class, throughput scales inversely with size (bounded, so a 1B model is not 8x an 8B).
    size_ratio = min(2.0, max(0.5, REFERENCE_PARAMETERS_B[cls] / parameters_billions))
    saturated = figure.output_tokens_per_s_per_gpu * size_ratio * tensor_parallel_size
    step_base = weights_gb_per_gpu * 1e9 / (gpu.bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY)
    if tensor_parallel_size > 1:
        step_base += TP_STEP_OVERHEAD_S
    # Reach `saturated` tokens/s at the reference batch: batch / (base + batch * per_seq) = saturated.
    per_seq = max(1.0 / saturated - step_base / REFERENCE_BATCH, 0.1 * step_base / REFERENCE_BATCH)
    prefill_rate = (gpu.bf16_tflops * 1e12 * PREFILL_MFU * tensor_parallel_size
                    / (2.0 * parameters_billions * 1e9))
    return EngineParams(
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        kv_cache_tokens=kv_tokens,
        step_base_s=step_base,
        step_per_seq_s=per_seq,
        prefill_tokens_per_s=prefill_rate,
        max_num_batched_tokens=max(max_num_batched_tokens, 1),
    )


def saturated_tokens_per_s(params: EngineParams, batch: int | None = None) -> float:
    """Output tokens/s of a replica decoding ``batch`` sequences (default ``max_num_seqs``)."""
    n = params.max_num_seqs if batch is None else batch
    return n / (params.step_base_s + params.step_per_seq_s * n)


def guess_parameters_billions(model: str, default: float = 8.0) -> float:
    """Parameters (billions) read from a model name such as ``Llama-3.1-70B`` or ``Mixtral-8x7B``.

    Used when the pod's args name the model but nothing else says its size; ``default`` otherwise.
    """
    name = model.rsplit("/", 1)[-1]
    moe = re.search(r"(\d+)x(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    if moe:
        # Mixtral 8x7B shares attention across experts: ~47B total, not 56B.
        return round(float(moe.group(1)) * float(moe.group(2)) * 0.84, 1)
    sizes = [float(m) for m in re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)]
    if sizes:
        return max(sizes)
    return default


__all__ = [
    "BYTES_PER_PARAMETER", "REFERENCE_BATCH", "REFERENCE_PARAMETERS_B", "SizeClass", "THROUGHPUT_TABLE",
    "ThroughputFigure", "guess_parameters_billions", "kv_bytes_per_token", "params_for",
    "saturated_tokens_per_s", "size_class",
]

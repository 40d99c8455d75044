"""The GPU memory model: what one vLLM replica needs per GPU, against what the GPU offers.

vLLM budgets ``gpu_memory_utilization x total GPU memory`` per GPU and fills it with, in order: the
model weights (its shard of them), the peak activation memory of a profiling forward pass, the
memory non-torch code allocates during that pass (NCCL, cuBLAS workspaces), and then the KV cache,
which gets all that is left. It refuses to start when the KV cache cannot hold one sequence of
``max_model_len`` tokens. The planner mirrors that budget:

    required per GPU = weights / (tp x pp) + KV cache per rank + overhead per GPU
    available per GPU = GPU memory (as CUDA reports it) x gpuMemoryUtilization

How many tokens of KV cache to plan for (``kv_tokens``) is a choice; it is documented, with the
constants below, in docs/cost.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelplane.planner.arch import ModelArch, Precision

GIB = float(1 << 30)

#: Per GPU, whatever the model: what non-torch code allocates during vLLM's profiling pass
#: (cuBLAS/cuDNN workspaces, allocator fragmentation). The CUDA context itself is outside vLLM's
#: budget. An estimate, calibrated on two published points (docs/cost.md).
FIXED_OVERHEAD_GIB = 1.0
#: Per GPU when a replica spans several GPUs: NCCL and vLLM's custom all-reduce buffers (estimate).
PARALLEL_OVERHEAD_GIB = 0.5
#: vLLM V1's chunked-prefill token budget per step for the OpenAI server (max_num_batched_tokens);
#: the profiling pass runs a batch this large, so it sets the activation peak.
DEFAULT_BATCHED_TOKENS = 8192
#: vLLM's default --max-num-seqs: the sampler's profiling pass holds FP32 logits for this many rows.
DEFAULT_MAX_NUM_SEQS = 256
#: Tokens an average sequence holds in the KV cache (prompt plus output) when sizing for
#: concurrency: chat requests are mostly well under 1k tokens; 1024 is a round, generous figure.
AVERAGE_SEQUENCE_TOKENS = 1024
_ACTIVATION_BYTES = 2  # BF16/FP16 activations
_LOGIT_BYTES = 4  # the sampler upcasts logits to FP32


def kv_tokens(*, max_model_len: int, max_num_seqs: int | None) -> int:
    """Tokens of KV cache the plan reserves.

    Without ``maxNumSeqs``: one full-length sequence, the least vLLM starts with; vLLM then gives
    every spare byte to the KV cache, so the real concurrency is what fits (the plan reports it).
    With ``maxNumSeqs``: that many sequences at an average fill of ``AVERAGE_SEQUENCE_TOKENS``
    (capped at the context length), and never less than one full-length sequence.
    """
    if max_num_seqs is None:
        return max_model_len
    return max(max_model_len, max_num_seqs * min(max_model_len, AVERAGE_SEQUENCE_TOKENS))


def lora_bytes_per_gpu(arch: ModelArch, *, max_loras: int, max_lora_rank: int, tp: int) -> float:
    """GPU memory vLLM preallocates for LoRA (``--enable-lora``): ``max_loras`` slots at ``max_lora_rank``.

    Each slot holds, for every layer and every linear module LoRA can target (q, k, v, o, gate, up,
    down), the A (in x r) and B (r x out) matrices in 16-bit, split across tensor-parallel ranks;
    so per slot and rank ``layers x sum(in + out)`` values. For Llama 3.1 8B that is 2.6 M values
    (5.2 MB) per rank, 336 MB for 4 slots at rank 16.
    """
    if max_loras <= 0 or max_lora_rank <= 0:
        return 0.0
    h, heads, kv_heads, hd = arch.hidden_size, arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    mlp = arch.activation_width
    per_layer = ((h + heads * hd) + 2 * (h + kv_heads * hd) + (heads * hd + h) + 2 * (h + mlp) + (mlp + h))
    return max_loras * max_lora_rank * arch.num_layers * per_layer * _ACTIVATION_BYTES / tp


def overhead_bytes_per_gpu(arch: ModelArch, *, gpus: int, tp: int, max_num_seqs: int | None,
                           batched_tokens: int) -> float:
    """Non-weight, non-KV memory on one GPU: fixed workspaces plus the profiling activation peak.

    The activation peak of a forward pass over ``batched_tokens`` tokens is dominated by a few
    hidden-size tensors (residual, norm output, attention output: ~4 x hidden) and the MLP's gate
    and up projections (2 x MLP width, split across tensor-parallel ranks); the sampler adds FP32
    logits over the full vocabulary for ``max_num_seqs`` rows.
    """
    activations = batched_tokens * (4 * arch.hidden_size + 2 * arch.activation_width / tp) * _ACTIVATION_BYTES
    logits = (max_num_seqs or DEFAULT_MAX_NUM_SEQS) * arch.vocab_size * _LOGIT_BYTES
    fixed = FIXED_OVERHEAD_GIB + (PARALLEL_OVERHEAD_GIB if gpus > 1 else 0.0)
    return fixed * GIB + activations + logits


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one replica on one shape. Totals are summed over the replica's GPUs, in GiB."""

    gpus: int
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    available_gib: float
    #: The largest per-GPU share: every GPU of a replica carries the same share in this model.
    per_gpu_required_gib: float
    per_gpu_available_gib: float
    #: Tokens of KV cache the shape holds once weights and overhead are in (0 when they do not fit).
    kv_capacity_tokens: int

    @property
    def required_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.per_gpu_required_gib <= self.per_gpu_available_gib


def estimate_memory(arch: ModelArch, *, precision: Precision, gpu_memory_gib: float,
                    gpu_memory_utilization: float, tp: int, pp: int = 1, kv_tokens: int,
                    kv_bytes: float = 2.0, max_num_seqs: int | None = None,
                    batched_tokens: int = DEFAULT_BATCHED_TOKENS, lora_bytes: float = 0.0) -> MemoryEstimate:
    """The memory a replica of ``tp x pp`` GPUs needs for ``kv_tokens`` tokens of KV cache.

    Pipeline stages (``pp`` > 1, only for the multi-node shape the planner suggests) split the
    layers, hence both the weights and the KV cache, across nodes.
    """
    gpus = tp * pp
    weights = arch.weight_bytes(precision) / gpus
    kv_per_token = arch.kv_bytes_per_token_per_rank(tp=tp, kv_bytes=kv_bytes) / pp
    kv = kv_per_token * kv_tokens
    overhead = overhead_bytes_per_gpu(arch, gpus=gpus, tp=tp, max_num_seqs=max_num_seqs,
                                      batched_tokens=batched_tokens) + lora_bytes
    available = gpu_memory_gib * gpu_memory_utilization * GIB
    spare = available - weights - overhead
    capacity = math.floor(spare / kv_per_token) if spare > 0 and kv_per_token > 0 else 0
    return MemoryEstimate(
        gpus=gpus,
        weights_gib=weights * gpus / GIB,
        kv_cache_gib=kv * gpus / GIB,
        overhead_gib=overhead * gpus / GIB,
        available_gib=available * gpus / GIB,
        per_gpu_required_gib=(weights + kv + overhead) / GIB,
        per_gpu_available_gib=available / GIB,
        kv_capacity_tokens=capacity,
    )

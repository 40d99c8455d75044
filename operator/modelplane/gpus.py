"""The GPU catalog: the GPU types modelplane knows, their memory, node label and default price.

One table serves the renderer (node affinity on the product label that NVIDIA GPU feature discovery
sets), the planner (memory), the autoscaler (cost) and the dev cluster (the labels its fake nodes
carry). Prices differ by provider, so they are defaults that operator configuration overrides
(``load_prices``); the figures are on-demand $/GPU-hour from the sources in shared/FACTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

#: The node label NVIDIA GPU feature discovery sets to the GPU's product name.
PRODUCT_LABEL = "nvidia.com/gpu.product"
#: The label with the memory of one GPU, in MiB.
MEMORY_LABEL = "nvidia.com/gpu.memory"
#: The label with the number of GPUs on the node.
COUNT_LABEL = "nvidia.com/gpu.count"
#: The extended resource name and the taint key the NVIDIA device plugin / GPU operator use.
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class GPUType:
    """One GPU model as the scheduler and the planner see it."""

    name: str  #: modelplane's id, used in ``spec.resources.gpu.types``
    product: str  #: the value of ``nvidia.com/gpu.product`` on nodes that carry it
    memory_gib: float  #: memory of one GPU
    usd_per_hour: float  #: default on-demand price of one GPU-hour
    price_source: str
    #: Peak dense BF16 TFLOPS and memory bandwidth (GB/s), for the simulator's performance model.
    bf16_tflops: float
    bandwidth_gbps: float
    #: FP8 tensor cores: Ada Lovelace and Hopper or newer (L4, L40S, H100, H200, B200), not Ampere
    #: (A100, A10G), Turing (T4) or Volta (V100). The planner puts FP8 weights only on these: elsewhere
    #: vLLM runs FP8 checkpoints at best as weight-only FP8 (Marlin kernels), without FP8 compute.
    fp8: bool
    #: Memory as CUDA reports it (``nvidia-smi``, and the ``nvidia.com/gpu.memory`` label), in MiB.
    #: The planner sizes against this, not the marketing figure in ``memory_gib`` (an "80GB" H100
    #: has 79.6 GiB, a "24GB" L4 22.5 GiB). 0 = unknown: the planner falls back to ``memory_gib``.
    memory_mib: int = 0

    @property
    def usable_memory_gib(self) -> float:
        """Memory of one GPU in GiB as vLLM sees it (``torch.cuda.mem_get_info`` total)."""
        return self.memory_mib / 1024 if self.memory_mib > 0 else self.memory_gib


GPU_TYPES: Mapping[str, GPUType] = {
    g.name: g
    for g in (
        GPUType("nvidia-h100-80gb", "NVIDIA-H100-80GB-HBM3", 80, 2.69,
                "RunPod on-demand H100 SXM (FACTS.md; CoreWeave $6.16)", 989, 3350, True,
                memory_mib=81559),
        GPUType("nvidia-h200-141gb", "NVIDIA-H200", 141, 5.41,
                "AWS capacity block H200 (FACTS.md; CoreWeave $6.31)", 989, 4800, True,
                memory_mib=143771),
        GPUType("nvidia-a100-80gb", "NVIDIA-A100-SXM4-80GB", 80, 1.84,
                "AWS capacity block A100 80GB (FACTS.md; CoreWeave $2.70)", 312, 2039, False,
                memory_mib=81920),
        GPUType("nvidia-l40s", "NVIDIA-L40S", 48, 1.91,
                "RunPod L40S (FACTS.md; CoreWeave $2.25)", 362, 864, True,
                memory_mib=46068),
        GPUType("nvidia-l4", "NVIDIA-L4", 24, 0.80,
                "AWS/GCP L4 low end (FACTS.md: $0.70-1.10)", 121, 300, True,
                memory_mib=23034),
        GPUType("nvidia-a10g", "NVIDIA-A10G", 24, 1.006,
                "AWS g5.xlarge (FACTS.md)", 125, 600, False,
                memory_mib=23028),
    )
}

GPU_TYPE_NAMES: tuple[str, ...] = tuple(GPU_TYPES)


def by_product(product: str) -> GPUType | None:
    """The GPU type whose node label value is ``product``, if modelplane knows it."""
    for gpu in GPU_TYPES.values():
        if gpu.product == product:
            return gpu
    return None


def with_prices(overrides: Mapping[str, float]) -> dict[str, GPUType]:
    """The catalog with per-provider prices; unknown names are an error, not silently ignored."""
    unknown = sorted(set(overrides) - set(GPU_TYPES))
    if unknown:
        raise ValueError(f"unknown GPU types in price overrides: {', '.join(unknown)}; "
                         f"known: {', '.join(GPU_TYPE_NAMES)}")
    for name, price in overrides.items():
        if price < 0:
            raise ValueError(f"price of {name} must be >= 0, got {price}")
    return {name: replace(g, usd_per_hour=overrides.get(name, g.usd_per_hour))
            for name, g in GPU_TYPES.items()}

"""The simulator's configuration, read from the same arguments a vLLM container gets.

The dev cluster's pod agent starts one simulated replica per pod and knows only the pod: its
container args (``vllm serve MODEL --served-model-name ... --max-model-len ...``, or the
``vllm/vllm-openai`` image's ``--model MODEL ...``) and its node's GPU type. ``parse_vllm_args``
turns those args into a ``SimConfig``; flags the simulator has no use for are ignored, as the real
server would accept them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from modelplane.planner.performance import EngineParams, guess_parameters_billions, params_for
from modelplane_dev.sim.lora import DEFAULT_MAX_LORA_RANK, DEFAULT_MAX_LORAS

#: vLLM's defaults for the flags the simulator reads.
DEFAULT_PORT = 8000
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_MODEL_LEN = 8192  # the real value comes from the model's config.json, which we have not got
DEFAULT_GPU_TYPE = "nvidia-h100-80gb"


@dataclass(frozen=True)
class SimConfig:
    """One simulated vLLM replica."""

    model: str = "sim/llama-3.1-8b"
    served_model_name: str = ""  #: defaults to ``model``, as in vLLM
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    #: Pipeline stages (one per node of a multi-node group; the simulator answers on the leader for
    #: the whole group): the replica's GPUs are tensor_parallel_size x pipeline_parallel_size.
    pipeline_parallel_size: int = 1
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    quantization: str | None = None
    revision: str | None = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    gpu_type: str = DEFAULT_GPU_TYPE  #: not a vLLM flag: the node's GPU, set by whoever starts the sim
    parameters_billions: float | None = None  #: None: guessed from the model name (8B when it says nothing)
    seed: int = 0  #: the quality model's seed (vLLM's ``--seed`` too)
    #: Prefix caching, on by default as in vLLM V1 (``--no-enable-prefix-caching`` turns it off).
    enable_prefix_caching: bool = True
    #: vLLM's ``--kv-offloading-size``: GiB of host memory for offloaded KV blocks (None: no offloading).
    kv_offloading_size: float | None = None
    #: LoRA (``sim/lora.py``): ``--enable-lora``, ``--max-loras``, ``--max-lora-rank``, ``--max-cpu-loras``.
    enable_lora: bool = False
    max_loras: int = DEFAULT_MAX_LORAS
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_cpu_loras: int | None = None  #: None: ``max_loras``, as in vLLM
    #: Not a flag: the container's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (the load/unload endpoints).
    allow_runtime_lora_updating: bool = False

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def checkpoint(self) -> str:
        """The identity the quality model draws answers for: model and revision."""
        return f"{self.model}@{self.revision or 'main'}"

    @property
    def gpus(self) -> int:
        """GPUs of the replica: every tensor-parallel rank of every pipeline stage (the engine model
        treats the stages' memory and compute as more ranks, an approximation)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def size_billions(self) -> float:
        if self.parameters_billions is not None:
            return self.parameters_billions
        return guess_parameters_billions(self.model)

    def engine_params(self) -> EngineParams:
        """The engine figures for this replica on its GPU type (``ValueError`` where vLLM would not start).

        Without ``--max-model-len`` the context is what fits: the smaller of 8192 and the KV cache.
        """
        size = self.size_billions()
        if self.max_model_len is not None:
            max_len = self.max_model_len
        else:
            probe = params_for(self.gpu_type, size, self.gpus, 1, self.max_num_seqs,
                               quantization=self.quantization,
                               gpu_memory_utilization=self.gpu_memory_utilization)
            max_len = min(DEFAULT_MAX_MODEL_LEN, probe.kv_cache_tokens)
        return params_for(self.gpu_type, size, self.gpus, max_len, self.max_num_seqs,
                          quantization=self.quantization, gpu_memory_utilization=self.gpu_memory_utilization,
                          max_num_batched_tokens=self.max_num_batched_tokens)


# Flags whose value the simulator reads, and the SimConfig field and type each fills.
_VALUE_FLAGS: dict[str, tuple[str, type]] = {
    "--model": ("model", str),
    "--port": ("port", int),
    "--host": ("host", str),
    "--served-model-name": ("served_model_name", str),
    "--max-model-len": ("max_model_len", int),
    "--tensor-parallel-size": ("tensor_parallel_size", int),
    "-tp": ("tensor_parallel_size", int),
    "--pipeline-parallel-size": ("pipeline_parallel_size", int),
    "-pp": ("pipeline_parallel_size", int),
    "--max-num-seqs": ("max_num_seqs", int),
    "--quantization": ("quantization", str),
    "-q": ("quantization", str),
    "--revision": ("revision", str),
    "--gpu-memory-utilization": ("gpu_memory_utilization", float),
    "--max-num-batched-tokens": ("max_num_batched_tokens", int),
    "--seed": ("seed", int),
    "--kv-offloading-size": ("kv_offloading_size", float),
    "--max-loras": ("max_loras", int),
    "--max-lora-rank": ("max_lora_rank", int),
    "--max-cpu-loras": ("max_cpu_loras", int),
}
# Flags that never take a value: they must not swallow the next argument.
_BOOL_FLAGS = frozenset({
    "--enable-prefix-caching", "--no-enable-prefix-caching", "--enable-lora", "--enable-sleep-mode",
    "--enforce-eager", "--trust-remote-code", "--disable-log-requests", "--disable-log-stats",
    "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--enable-auto-tool-choice",
    "--disable-custom-all-reduce", "--disable-frontend-multiprocessing", "--enable-log-requests",
    "--enable-expert-parallel", "--async-scheduling", "--skip-tokenizer-init", "--headless",
})


def parse_vllm_args(argv: Sequence[str], *, base: SimConfig | None = None) -> SimConfig:
    """A ``SimConfig`` from the args of ``vllm serve MODEL ...`` or ``api_server --model MODEL ...``.

    Leading ``vllm``/``serve`` words are skipped; ``--flag value`` and ``--flag=value`` are both read;
    unknown flags are ignored (an unknown flag followed by a non-flag word takes it as its value).
    ``--served-model-name`` with several names keeps the first, which is what vLLM labels metrics with.
    Malformed values of the flags it reads raise ``ValueError``.
    """
    args = list(argv)
    while args and (args[0] in ("vllm", "serve") or args[0].endswith("/vllm")):
        args.pop(0)
    values: dict[str, object] = {}
    i = 0
    positional_model: str | None = None
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            if positional_model is None:
                positional_model = arg
            i += 1
            continue
        flag, eq, inline = arg.partition("=")
        if flag in _VALUE_FLAGS:
            name, kind = _VALUE_FLAGS[flag]
            if eq:
                raw = inline
                i += 1
            elif i + 1 < len(args):
                raw = args[i + 1]
                i += 2
            else:
                raise ValueError(f"{flag} needs a value")
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                raise ValueError(f"bad value for {flag}: {raw!r}") from exc
            if flag == "--served-model-name":
                # nargs="+": further names follow until the next flag; only the first matters to us.
                while i < len(args) and not args[i].startswith("-"):
                    i += 1
            continue
        if flag in ("--enable-prefix-caching", "--no-enable-prefix-caching") and not eq:
            values["enable_prefix_caching"] = flag == "--enable-prefix-caching"
            i += 1
            continue
        if flag == "--enable-lora" and not eq:
            values["enable_lora"] = True
            i += 1
            continue
        if eq or flag in _BOOL_FLAGS:
            i += 1
            continue
        # An unknown flag: take the next word as its value unless it looks like a flag.
        i += 2 if i + 1 < len(args) and not args[i + 1].startswith("-") else 1
    if positional_model is not None and "model" not in values:
        values["model"] = positional_model
    config = replace(base or SimConfig(), **values)  # type: ignore[arg-type]
    if config.tensor_parallel_size < 1 or config.max_num_seqs < 1 or config.pipeline_parallel_size < 1:
        raise ValueError("--tensor-parallel-size, --pipeline-parallel-size and --max-num-seqs must be >= 1")
    if config.kv_offloading_size is not None and config.kv_offloading_size < 0:
        raise ValueError(f"--kv-offloading-size must be >= 0 GiB, got {config.kv_offloading_size}")
    if config.max_loras < 1 or config.max_lora_rank < 1:
        raise ValueError("--max-loras and --max-lora-rank must be >= 1")
    if config.max_cpu_loras is not None and config.max_cpu_loras < config.max_loras:
        # vLLM's LoRAConfig check, with its wording.
        raise ValueError(f"max_cpu_loras ({config.max_cpu_loras}) must be >= max_loras ({config.max_loras})")
    if config.quantization in ("", "none", "None"):
        config = replace(config, quantization=None)
    return config

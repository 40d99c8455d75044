"""Model facts for the planner: what a model is made of, derived from its config.json or spec hints.

``ModelArch`` holds the few numbers that decide GPU memory: parameter counts (total, and active for
mixtures of experts), the attention geometry that sizes the KV cache (layers, KV heads, head dim, or
the compressed latent of multi-head latent attention), the widths that size activations, and the
precision the checkpoint ships in. Everything here is pure arithmetic over a config.json mapping or
the parsed ``spec.model.hints``; reading a config.json over the network or from a volume lives in
``planner.source``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelplane.api.models import ModelHints, to_camel


class Precision(StrEnum):
    """How the weights are stored on the GPU."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"  #: AWQ / GPTQ / other 4-bit weight-only schemes

    @property
    def linear_bytes(self) -> float:
        """Bytes per parameter of a quantized linear layer, scales and zero points included.

        FP8 scales are per tensor, channel or 128x128 block: negligible. 4- and 8-bit integer
        schemes (AWQ, GPTQ) carry an FP16 scale and a packed zero point per group of 128 weights,
        which adds (2 + 0.5) / 128 bytes per weight.
        """
        return _LINEAR_BYTES[self]

    @property
    def label(self) -> str:
        return self.value.upper()


_LINEAR_BYTES: Mapping[Precision, float] = {
    Precision.BF16: 2.0,
    Precision.FP16: 2.0,
    Precision.FP8: 1.0,
    Precision.INT8: 1.0 + 2.5 / 128,
    Precision.INT4: 0.5 + 2.5 / 128,
}

#: Embeddings and the LM head stay in 16-bit in every quantization scheme vLLM loads (FP8, AWQ,
#: GPTQ and compressed-tensors all skip them), so they are counted at 2 bytes whatever the precision.
EMBEDDING_BYTES = 2.0


class ModelArchError(ValueError):
    """A config.json or a set of hints that does not describe a model the planner can size."""


@dataclass(frozen=True)
class ModelArch:
    """The facts about a decoder-only transformer that decide how much GPU memory it needs."""

    name: str  #: display name, e.g. "Llama-3.1-70B"
    total_params: float  #: every weight, experts included
    active_params: float  #: weights used per token (= total for dense models)
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int  #: GQA key/value heads (= attention heads for MHA and for MLA)
    head_dim: int
    num_experts: int = 0  #: routed experts per MoE layer; 0 for a dense model
    experts_per_token: int = 0
    native_precision: Precision = Precision.BF16  #: what the checkpoint ships in
    max_position_embeddings: int | None = None  #: the context vLLM uses when maxModelLen is unset
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    #: Widest per-token MLP activation (dense width, or top-k experts plus shared ones), for the
    #: activation peak; 0 = unknown (estimated as 3.5x hidden, the Llama ratio).
    mlp_width: int = 0
    #: Multi-head latent attention (DeepSeek V2/V3/R1): the KV cache holds one compressed latent of
    #: kv_lora_rank + qk_rope_head_dim values per token and layer instead of K and V per head.
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def embedding_params(self) -> float:
        """Input embedding plus LM head (one matrix when tied)."""
        return float(self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2))

    @property
    def activation_width(self) -> int:
        return self.mlp_width if self.mlp_width > 0 else int(self.hidden_size * 3.5)

    def weight_bytes(self, precision: Precision) -> float:
        """Bytes of all weights at ``precision`` (embeddings and LM head kept in 16-bit)."""
        embeddings = min(self.embedding_params, self.total_params)
        return embeddings * EMBEDDING_BYTES + (self.total_params - embeddings) * precision.linear_bytes

    def valid_tensor_parallel(self, tp: int) -> bool:
        """Whether vLLM can shard the attention ``tp`` ways.

        vLLM needs the query heads divisible by tp, and the KV heads either divisible by tp or (when
        tp exceeds them) replicated evenly: tp divisible by the KV heads. MLA shards the query heads
        only; its latent is replicated on every rank.
        """
        if tp < 1 or self.num_attention_heads % tp != 0:
            return False
        if self.is_mla:
            return True
        kv = self.num_kv_heads
        return kv % tp == 0 if tp <= kv else tp % kv == 0

    def kv_bytes_per_token_per_rank(self, *, tp: int, kv_bytes: float) -> float:
        """KV cache bytes one token costs on one GPU of a ``tp``-way tensor-parallel replica.

        GQA: K and V for each layer and each KV head the rank holds (heads are split across ranks
        and replicated when tp exceeds them). MLA: the latent plus the rope key, replicated on every
        rank, so tensor parallelism does not shrink it.
        """
        if self.is_mla:
            return float(self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * kv_bytes)
        heads_per_rank = max(1, self.num_kv_heads // tp)
        return float(2 * self.num_layers * heads_per_rank * self.head_dim * kv_bytes)


# --- config.json -----------------------------------------------------------------------------------


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs (Llama 4, Mistral 3.1, Qwen-VL) nest the language model's fields."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text:
        return text
    return config


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ModelArchError(f"config.json has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ModelArchError(f"config.json {key!r} must be a non-negative integer, got {value!r}")
    return int(value)


def _moe_layer_flags(cfg: Mapping[str, Any], layers: int) -> list[bool]:
    """Which decoder layers hold experts, following each family's config convention."""
    explicit = cfg.get("moe_layers")
    if isinstance(explicit, list) and explicit:
        chosen = {int(i) for i in explicit}
        return [i in chosen for i in range(layers)]
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:  # DeepSeek V2/V3
        first_dense = _int(cfg, "first_k_dense_replace", 0)
        freq = max(1, _int(cfg, "moe_layer_freq", 1))
        return [i >= first_dense and i % freq == 0 for i in range(layers)]
    if "interleave_moe_layer_step" in cfg:  # Llama 4: every step-th layer
        step = max(1, _int(cfg, "interleave_moe_layer_step", 1))
        return [(i + 1) % step == 0 for i in range(layers)]
    if "decoder_sparse_step" in cfg or "mlp_only_layers" in cfg:  # Qwen MoE
        step = max(1, _int(cfg, "decoder_sparse_step", 1))
        dense_only = {int(i) for i in cfg.get("mlp_only_layers") or []}
        return [i not in dense_only and (i + 1) % step == 0 for i in range(layers)]
    return [True] * layers  # Mixtral and most others: every layer


def native_precision_from_config(config: Mapping[str, Any]) -> Precision:
    """The precision the checkpoint's weights ship in, from ``quantization_config`` and the dtype."""
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "")).lower()
        bits = quant.get("bits") or quant.get("w_bit")
        if method in ("fp8", "fbgemm_fp8"):
            return Precision.FP8
        if method in ("awq", "gptq", "awq_marlin", "gptq_marlin", "mxfp4"):
            return Precision.INT8 if bits == 8 else Precision.INT4
        if method == "bitsandbytes":
            return Precision.INT4 if quant.get("load_in_4bit") else Precision.INT8
        if method == "modelopt":
            algo = str(quant.get("quant_algo", "")).upper()
            return Precision.FP8 if "FP8" in algo else Precision.INT4
        if method == "compressed-tensors":
            for group in (quant.get("config_groups") or {}).values():
                weights = group.get("weights") if isinstance(group, Mapping) else None
                if isinstance(weights, Mapping):
                    num_bits = weights.get("num_bits")
                    if weights.get("type") == "float" and num_bits == 8:
                        return Precision.FP8
                    if num_bits == 8:
                        return Precision.INT8
                    if num_bits == 4:
                        return Precision.INT4
    text = _text_config(config)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or "")
    return Precision.FP16 if dtype == "float16" else Precision.BF16


@dataclass(frozen=True)
class ParameterCount:
    total: float
    active: float
    mlp_width: int  #: widest per-token MLP activation


def count_parameters(config: Mapping[str, Any]) -> ParameterCount:
    """Parameters of a decoder-only transformer computed from its config.json.

    Counts embeddings (and an untied LM head), attention (GQA projections, or MLA's low-rank
    query/latent projections), gated MLPs (three matrices: gate, up, down), MoE layers (routed
    experts, shared experts, router) and norms. Biases are left out (Qwen2's QKV bias is < 0.1%),
    as are vision towers of multimodal checkpoints (they are small next to the language model).
    """
    cfg = _text_config(config)
    hidden = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers")
    heads = _int(cfg, "num_attention_heads")
    if heads == 0 or layers == 0 or hidden == 0:
        raise ModelArchError("config.json has zero layers, heads or hidden size")
    kv_heads = _int(cfg, "num_key_value_heads", heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = _int(cfg, "vocab_size", 0)
    tied = bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))

    embeddings = vocab * hidden * (1 if tied else 2)
    kv_lora_rank = int(cfg.get("kv_lora_rank") or 0)
    if kv_lora_rank:  # MLA
        nope = _int(cfg, "qk_nope_head_dim")
        rope = _int(cfg, "qk_rope_head_dim")
        v_dim = _int(cfg, "v_head_dim")
        q_lora = int(cfg.get("q_lora_rank") or 0)
        if q_lora:  # low-rank query: down-projection, then up to every head
            q_proj = hidden * q_lora + q_lora * heads * (nope + rope)
        else:
            q_proj = hidden * heads * (nope + rope)
        kv_proj = hidden * (kv_lora_rank + rope) + kv_lora_rank * heads * (nope + v_dim)
        attention = q_proj + kv_proj + heads * v_dim * hidden
    else:
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim

    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    intermediate = int(cfg.get("intermediate_size") or 0)
    # Llama 4 names its dense-layer width intermediate_size_mlp and its expert width intermediate_size.
    dense_width = int(cfg.get("intermediate_size_mlp") or intermediate)
    expert_width = int(cfg.get("moe_intermediate_size") or intermediate)
    shared_width = int(cfg.get("shared_expert_intermediate_size") or 0)
    if not shared_width and cfg.get("n_shared_experts"):
        shared_width = int(cfg["n_shared_experts"]) * expert_width
    if not shared_width and str(cfg.get("model_type", "")).startswith("llama4"):
        shared_width = expert_width  # every Llama 4 MoE layer has one shared expert

    moe_flags = _moe_layer_flags(cfg, layers) if experts else [False] * layers
    moe_layers = sum(moe_flags)
    dense_layers = layers - moe_layers
    dense_mlp = 3 * hidden * dense_width
    routed = experts * 3 * hidden * expert_width
    shared = 3 * hidden * shared_width
    router = hidden * experts
    norms = layers * 2 * hidden + hidden

    total = embeddings + layers * attention + dense_layers * dense_mlp + norms
    total += moe_layers * (routed + shared + router)
    active = embeddings + layers * attention + dense_layers * dense_mlp + norms
    active += moe_layers * (top_k * 3 * hidden * expert_width + shared + router)
    width = dense_width if dense_layers else 0
    if moe_layers:
        width = max(width, top_k * expert_width + shared_width)
    return ParameterCount(total=float(total), active=float(active), mlp_width=width)


def arch_from_config(config: Mapping[str, Any], *, name: str, total_params: float | None = None,
                     active_params: float | None = None) -> ModelArch:
    """A ``ModelArch`` from a Hugging Face config.json.

    Parameter counts come from ``num_parameters`` when the config states it, else from
    ``total_params``/``active_params`` (a model card's figures), else computed from the architecture.
    """
    cfg = _text_config(config)
    counted = count_parameters(config)
    stated = config.get("num_parameters")
    if not total_params and isinstance(stated, int | float) and stated > 0:
        total_params = float(stated)
    total = float(total_params or counted.total)
    active = float(active_params or (counted.active if counted.active < counted.total else total))
    heads = _int(cfg, "num_attention_heads")
    hidden = _int(cfg, "hidden_size")
    kv_lora_rank = int(cfg.get("kv_lora_rank") or 0)
    max_pos = cfg.get("max_position_embeddings")
    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    return ModelArch(
        name=name,
        total_params=total,
        active_params=min(active, total),
        num_layers=_int(cfg, "num_hidden_layers"),
        hidden_size=hidden,
        num_attention_heads=heads,
        # MLA's "KV heads" in config equal the attention heads; the planner treats them alike.
        num_kv_heads=heads if kv_lora_rank else _int(cfg, "num_key_value_heads", heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        num_experts=experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
        native_precision=native_precision_from_config(config),
        max_position_embeddings=int(max_pos) if isinstance(max_pos, int | float) and max_pos > 0 else None,
        vocab_size=_int(cfg, "vocab_size", 0),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        mlp_width=counted.mlp_width,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0) if kv_lora_rank else 0,
    )


# --- spec.model.hints ------------------------------------------------------------------------------

#: Hints without which a model that is neither in config.json nor in the catalog cannot be sized.
REQUIRED_HINTS: tuple[str, ...] = ("parameters_billions", "num_layers", "hidden_size", "num_attention_heads")
#: Hints that describe the attention: any of them replaces the base model's attention layout whole.
ATTENTION_HINTS: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads", "head_dim")


def arch_from_hints(hints: ModelHints, *, name: str, base: ModelArch | None = None,
                    named_precision: Precision | None = None) -> ModelArch:
    """A ``ModelArch`` from the parsed ``spec.model.hints``, laid over a catalog entry when one matched.

    The API model has checked each hint (ranges, types, activeParametersBillions <= parametersBillions,
    numKeyValueHeads <= numAttentionHeads when both are hinted); what it cannot judge is left here.
    Without a base, ``REQUIRED_HINTS`` must all be present; KV heads default to the attention heads
    (plain multi-head attention, the largest KV cache, so the estimate errs on the safe side) and the
    head dim to hidden size / heads. Raises ``ModelArchError`` naming the missing hints, or the KV
    heads hinted above the base's attention heads.

    Any of ``ATTENTION_HINTS`` describes the attention completely: grouped-query attention with the
    hinted heads, KV heads (default: the attention heads, unless only they are left from a GQA base)
    and head dim; nothing of a base's multi-head latent attention is kept. The precision is the
    ``precision`` hint, else ``named_precision`` (read from the model's name), else the base's, else BF16.
    """
    if base is None:
        missing = [h for h in REQUIRED_HINTS if getattr(hints, h) is None]
        if missing:
            raise ModelArchError("missing spec.model.hints: " + ", ".join(to_camel(h) for h in missing))

    def pick(value: float | None, fallback: float | None) -> float | None:
        return float(value) if value is not None else fallback

    total_b = pick(hints.parameters_billions, base.total_params / 1e9 if base else None)
    active_b = pick(hints.active_parameters_billions,
                    base.active_params / 1e9 if base and base.is_moe else total_b)
    layers = pick(hints.num_layers, base.num_layers if base else None)
    hidden = pick(hints.hidden_size, base.hidden_size if base else None)
    heads = pick(hints.num_attention_heads, base.num_attention_heads if base else None)
    assert total_b is not None and layers is not None and hidden is not None and heads is not None
    attention_hinted = any(getattr(hints, h) is not None for h in ATTENTION_HINTS)
    # The base's attention holds only while no hint changes it (MLA's "KV heads" are no GQA figure).
    keep_base_kv = base is not None and not base.is_mla and hints.num_attention_heads is None
    keep_base_head_dim = keep_base_kv and hints.hidden_size is None
    kv_heads = pick(hints.num_key_value_heads, base.num_kv_heads if base and keep_base_kv else heads)
    head_dim = pick(hints.head_dim,
                    base.head_dim if base and keep_base_head_dim else math.floor(hidden / heads))
    experts = pick(hints.num_experts, base.num_experts if base else 0)
    assert kv_heads is not None and head_dim is not None and experts is not None and active_b is not None
    if kv_heads > heads:  # hinted KV heads over the base's heads (the API refuses it when both are hinted)
        raise ModelArchError(f"spec.model.hints.numKeyValueHeads ({int(kv_heads)}) must be <= "
                             f"numAttentionHeads ({int(heads)} of {base.name if base else name})")
    keep_mla = base is not None and base.is_mla and not attention_hinted
    hinted = Precision(hints.precision.value) if hints.precision is not None else None
    precision = hinted or named_precision or (base.native_precision if base else None)
    return ModelArch(
        name=name,
        total_params=total_b * 1e9,
        active_params=min(active_b, total_b) * 1e9,
        num_layers=int(layers),
        hidden_size=int(hidden),
        num_attention_heads=int(heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        num_experts=int(experts),
        experts_per_token=base.experts_per_token if base else 0,
        native_precision=precision or Precision.BF16,
        max_position_embeddings=base.max_position_embeddings if base else None,
        # Embedding size is unknown without a base: all weights are then counted as linear layers.
        vocab_size=base.vocab_size if base else 0,
        tie_word_embeddings=base.tie_word_embeddings if base else False,
        # The base's MLP width is stale once the hidden size changes; 0 estimates it from the hints.
        mlp_width=base.mlp_width if base and hints.hidden_size is None else 0,
        kv_lora_rank=base.kv_lora_rank if base and keep_mla else 0,
        qk_rope_head_dim=base.qk_rope_head_dim if base and keep_mla else 0,
    )

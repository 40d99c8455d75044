"""The built-in catalog of common open models, matched from a model source URI.

When a model's config.json cannot be read (a gated repository without a token, a bucket the operator
cannot reach, no network in a `modelplane plan` run in CI), the planner still knows the models most
teams deploy. Each entry keeps the config.json fields the planner reads, copied from the model's
Hugging Face repository, and the parameter counts its model card publishes; ``source`` says where.
The architecture is derived from those fields by the same code that reads a live config.json
(``arch_from_config``), so the catalog cannot drift from the reader.

Matching is by name, not by organisation, so mirrors and quantized re-uploads
(``RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic``, ``unsloth/...``) find their base model: the last
path segment of the URI is lower-cased, split on ``-``, and stripped of packaging words (Instruct,
FP8, AWQ, ...); the quantization words also tell the planner the checkpoint's precision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from modelplane.planner.arch import ModelArch, Precision, arch_from_config


@dataclass(frozen=True)
class CatalogEntry:
    name: str  #: display name
    aliases: tuple[str, ...]  #: normalized names (see ``normalize_model_name``)
    config: Mapping[str, Any]  #: the config.json fields the planner reads
    total_params: float
    active_params: float
    source: str  #: where the figures come from

    @property
    def arch(self) -> ModelArch:
        return arch_from_config(self.config, name=self.name, total_params=self.total_params,
                                active_params=self.active_params)


@dataclass(frozen=True)
class CatalogMatch:
    entry: CatalogEntry
    arch: ModelArch  #: the entry's architecture, with the precision the URI names
    exact: bool  #: False when matched as a prefix (a fine-tune named after its base model)


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, *, vocab: int = 128256,
           max_pos: int = 131072, tied: bool = False, head_dim: int | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": vocab, "max_position_embeddings": max_pos, "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    }
    if head_dim:
        cfg["head_dim"] = head_dim
    return cfg


def _llama4(experts: int, step: int, max_pos: int) -> dict[str, Any]:
    return {
        "model_type": "llama4",
        "text_config": {
            "model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
            "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
            "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": experts,
            "num_experts_per_tok": 1, "interleave_moe_layer_step": step, "vocab_size": 202048,
            "max_position_embeddings": max_pos, "torch_dtype": "bfloat16",
        },
        "torch_dtype": "bfloat16",
    }


_DEEPSEEK_V3: dict[str, Any] = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
}


def _qwen2(hidden: int, inter: int, layers: int, heads: int, kv: int, *,
           vocab: int = 152064) -> dict[str, Any]:
    return {
        "model_type": "qwen2", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": vocab, "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def _qwen3(hidden: int, inter: int, layers: int, heads: int, kv: int, **moe: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": "qwen3_moe" if moe else "qwen3", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    cfg.update(moe)
    return cfg


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json and model card"


_B = 1e9

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("Llama-3.2-1B", ("llama-3.2-1b",),
                 _llama(2048, 8192, 16, 32, 8, tied=True, head_dim=64), 1.24 * _B, 1.24 * _B,
                 _hf("meta-llama/Llama-3.2-1B-Instruct")),
    CatalogEntry("Llama-3.2-3B", ("llama-3.2-3b",),
                 _llama(3072, 8192, 28, 24, 8, tied=True, head_dim=128), 3.21 * _B, 3.21 * _B,
                 _hf("meta-llama/Llama-3.2-3B-Instruct")),
    CatalogEntry("Llama-3.1-8B", ("llama-3.1-8b", "meta-llama-3.1-8b"),
                 _llama(4096, 14336, 32, 32, 8), 8.03 * _B, 8.03 * _B,
                 _hf("meta-llama/Llama-3.1-8B-Instruct") + " (8.03B)"),
    CatalogEntry("Llama-3.1-70B", ("llama-3.1-70b", "meta-llama-3.1-70b"),
                 _llama(8192, 28672, 80, 64, 8), 70.6 * _B, 70.6 * _B,
                 _hf("meta-llama/Llama-3.1-70B-Instruct") + " (70.6B)"),
    CatalogEntry("Llama-3.1-405B", ("llama-3.1-405b", "meta-llama-3.1-405b"),
                 _llama(16384, 53248, 126, 128, 8), 405.9 * _B, 405.9 * _B,
                 _hf("meta-llama/Llama-3.1-405B-Instruct") + " (405.9B)"),
    CatalogEntry("Llama-3.3-70B", ("llama-3.3-70b",),
                 _llama(8192, 28672, 80, 64, 8), 70.6 * _B, 70.6 * _B,
                 _hf("meta-llama/Llama-3.3-70B-Instruct") + " (70.6B)"),
    CatalogEntry("Llama-4-Scout-17B-16E", ("llama-4-scout-17b-16e", "llama-4-scout"),
                 _llama4(16, 1, 10485760), 109 * _B, 17 * _B,
                 _hf("meta-llama/Llama-4-Scout-17B-16E-Instruct") + " (109B total, 17B active)"),
    CatalogEntry("Llama-4-Maverick-17B-128E", ("llama-4-maverick-17b-128e", "llama-4-maverick"),
                 _llama4(128, 2, 1048576), 400 * _B, 17 * _B,
                 _hf("meta-llama/Llama-4-Maverick-17B-128E-Instruct") + " (400B total, 17B active)"),
    CatalogEntry("Mistral-7B-v0.3", ("mistral-7b-v0.3",),
                 _llama(4096, 14336, 32, 32, 8, vocab=32768, max_pos=32768), 7.25 * _B, 7.25 * _B,
                 _hf("mistralai/Mistral-7B-Instruct-v0.3") + " (7.25B)"),
    CatalogEntry("Mistral-Small-24B", ("mistral-small-24b-2501", "mistral-small-24b", "mistral-small-3-24b"),
                 _llama(5120, 32768, 40, 32, 8, vocab=131072, max_pos=32768, head_dim=128),
                 23.6 * _B, 23.6 * _B,
                 _hf("mistralai/Mistral-Small-24B-Instruct-2501") + " (24B; ~55 GB GPU RAM in bf16)"),
    CatalogEntry("Mistral-Small-3.1-24B", ("mistral-small-3.1-24b-2503", "mistral-small-3.1-24b",
                                           "mistral-small-3.2-24b-2506", "mistral-small-3.2-24b"),
                 _llama(5120, 32768, 40, 32, 8, vocab=131072, max_pos=131072, head_dim=128),
                 24.0 * _B, 24.0 * _B,
                 _hf("mistralai/Mistral-Small-3.1-24B-Instruct-2503") + " (24B with vision encoder)"),
    CatalogEntry("Mixtral-8x7B", ("mixtral-8x7b-v0.1", "mixtral-8x7b"),
                 {**_llama(4096, 14336, 32, 32, 8, vocab=32000, max_pos=32768),
                  "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
                 46.7 * _B, 12.9 * _B,
                 _hf("mistralai/Mixtral-8x7B-Instruct-v0.1") + " (46.7B total, 12.9B active)"),
    CatalogEntry("DeepSeek-V3", ("deepseek-v3", "deepseek-v3-0324", "deepseek-v3.1"),
                 _DEEPSEEK_V3, 671 * _B, 37 * _B,
                 _hf("deepseek-ai/DeepSeek-V3") + " (671B main model + 14B MTP module, 37B active)"),
    CatalogEntry("DeepSeek-R1", ("deepseek-r1", "deepseek-r1-0528"),
                 _DEEPSEEK_V3, 671 * _B, 37 * _B,
                 _hf("deepseek-ai/DeepSeek-R1") + " (671B, 37B active; same architecture as V3)"),
    # The R1 distills are Qwen 2.5 and Llama 3 models fine-tuned on R1's outputs: each has its
    # student's architecture, nothing of R1's (no MLA, no experts).
    CatalogEntry("DeepSeek-R1-Distill-Qwen-1.5B", ("deepseek-r1-distill-qwen-1.5b",),
                 _qwen2(1536, 8960, 28, 12, 2, vocab=151936), 1.78 * _B, 1.78 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") + " (Qwen2.5-Math-1.5B base, 1.78B)"),
    CatalogEntry("DeepSeek-R1-Distill-Qwen-7B", ("deepseek-r1-distill-qwen-7b",),
                 _qwen2(3584, 18944, 28, 28, 4), 7.62 * _B, 7.62 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") + " (Qwen2.5-Math-7B base, 7.62B)"),
    CatalogEntry("DeepSeek-R1-Distill-Qwen-14B", ("deepseek-r1-distill-qwen-14b",),
                 _qwen2(5120, 13824, 48, 40, 8), 14.8 * _B, 14.8 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B") + " (Qwen2.5-14B base, 14.8B)"),
    CatalogEntry("DeepSeek-R1-Distill-Qwen-32B", ("deepseek-r1-distill-qwen-32b",),
                 _qwen2(5120, 27648, 64, 40, 8), 32.8 * _B, 32.8 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B") + " (Qwen2.5-32B base, 32.8B)"),
    CatalogEntry("DeepSeek-R1-Distill-Llama-8B", ("deepseek-r1-distill-llama-8b",),
                 _llama(4096, 14336, 32, 32, 8), 8.03 * _B, 8.03 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Llama-8B") + " (Llama-3.1-8B base, 8.03B)"),
    CatalogEntry("DeepSeek-R1-Distill-Llama-70B", ("deepseek-r1-distill-llama-70b",),
                 _llama(8192, 28672, 80, 64, 8), 70.6 * _B, 70.6 * _B,
                 _hf("deepseek-ai/DeepSeek-R1-Distill-Llama-70B") + " (Llama-3.3-70B-Instruct base, 70.6B)"),
    CatalogEntry("Qwen3-8B", ("qwen3-8b",), _qwen3(4096, 12288, 36, 32, 8), 8.2 * _B, 8.2 * _B,
                 _hf("Qwen/Qwen3-8B") + " (8.2B; 32k native context, 128k with YaRN)"),
    CatalogEntry("Qwen3-32B", ("qwen3-32b",), _qwen3(5120, 25600, 64, 64, 8), 32.8 * _B, 32.8 * _B,
                 _hf("Qwen/Qwen3-32B") + " (32.8B; 32k native context, 128k with YaRN)"),
    CatalogEntry("Qwen3-30B-A3B", ("qwen3-30b-a3b",),
                 _qwen3(2048, 6144, 48, 32, 4, num_experts=128, num_experts_per_tok=8,
                        moe_intermediate_size=768, decoder_sparse_step=1),
                 30.5 * _B, 3.3 * _B, _hf("Qwen/Qwen3-30B-A3B") + " (30.5B total, 3.3B active)"),
    CatalogEntry("Qwen3-235B-A22B", ("qwen3-235b-a22b",),
                 _qwen3(4096, 12288, 94, 64, 4, num_experts=128, num_experts_per_tok=8,
                        moe_intermediate_size=1536, decoder_sparse_step=1),
                 235 * _B, 22 * _B, _hf("Qwen/Qwen3-235B-A22B") + " (235B total, 22B active)"),
)

#: Packaging words dropped from a name before matching, and the precision each one implies. They
#: also set the precision of a model outside the catalog (sized from hints): ``...-405B-Instruct-FP8``.
_PRECISION_WORDS: Mapping[str, Precision] = {
    "bf16": Precision.BF16, "fp16": Precision.FP16,
    "fp8": Precision.FP8, "w8a8": Precision.INT8, "int8": Precision.INT8, "w8a16": Precision.INT8,
    "8bit": Precision.INT8,
    "awq": Precision.INT4, "gptq": Precision.INT4, "int4": Precision.INT4, "w4a16": Precision.INT4,
    "4bit": Precision.INT4, "bnb": Precision.INT4, "nvfp4": Precision.INT4, "mxfp4": Precision.INT4,
}
_NOISE_WORDS = frozenset({"instruct", "chat", "it", "hf", "base", "dynamic", "static", "block",
                          "quantized", "marlin", "latest"})
_TRAILING_REVISION = re.compile(r"[:@].*$")
#: A parameter count ("8b", "1.5b", "8x7b", "a3b"). After a catalog name it means a model of another
#: size built from that one, not a fine-tune of it: ``DeepSeek-R1-0528-Qwen3-8B`` is Qwen3 8B.
_SIZE_WORD = re.compile(r"^(a|\d+x)?\d+(\.\d+)?[bm]$")
#: ``<teacher>-Distill-<student>``: the name before "distill" is the model it learnt from, the
#: architecture is the student's (``DeepSeek-R1-Distill-Llama-8B`` is a Llama 3.1 8B).
_DISTILL_WORD = "distill"


def _last_segment(source: str) -> str:
    """The model's name in a source URI: the last non-empty path segment, without tag or digest."""
    path = source.split("://", 1)[-1].rstrip("/")
    segment = path.rsplit("/", 1)[-1]
    return _TRAILING_REVISION.sub("", segment)


def _is_packaging(word: str) -> bool:
    return word in _PRECISION_WORDS or word in _NOISE_WORDS


def normalize_model_name(source: str) -> tuple[str, Precision | None]:
    """(normalized name, precision named by it) for a source URI or a bare model name.

    Packaging words joined by dots count too (``...-quantized.w4a16``); the last precision word wins
    (``GPTQ-Int8`` is 8-bit).
    """
    words = _last_segment(source).lower().replace("_", "-").split("-")
    precision: Precision | None = None
    kept: list[str] = []
    for word in words:
        parts = word.split(".") if "." in word and all(_is_packaging(p) for p in word.split(".")) else [word]
        for part in parts:
            if part in _PRECISION_WORDS:
                precision = _PRECISION_WORDS[part]
            elif part and part not in _NOISE_WORDS:
                kept.append(part)
    return "-".join(kept), precision


_BY_ALIAS: Mapping[str, CatalogEntry] = {alias: e for e in CATALOG for alias in e.aliases}


def _longest_prefix(name: str) -> tuple[str, list[str]] | None:
    """(alias, the words after it) of the longest alias ``name`` starts with on a ``-`` boundary."""
    prefixes = [a for a in _BY_ALIAS if name.startswith(a + "-")]
    if not prefixes:
        return None
    alias = max(prefixes, key=len)
    return alias, name[len(alias) + 1:].split("-")


def _derived_words(rest: list[str]) -> list[str]:
    """The words after a catalog name that say the model is another architecture built from it."""
    return [w for w in rest if w == _DISTILL_WORD or _SIZE_WORD.match(w)]


def match_model(source: str) -> CatalogMatch | None:
    """The catalog entry for a source URI, case-insensitive and tolerant of packaging suffixes.

    An exact normalized name wins; otherwise the longest alias the name starts with (on a ``-``
    boundary), so ``my-org/Llama-3.1-8B-Instruct-support-v2`` sizes as Llama 3.1 8B. A prefix is not
    a match when the rest of the name says "distill" or gives another parameter count: that model
    was built from the catalog one (a distill, or a student trained on its outputs) but has another
    architecture, so sizing it as the catalog model would be wrong (``unmatched_note`` says why).
    """
    name, precision = normalize_model_name(source)
    entry = _BY_ALIAS.get(name)
    exact = entry is not None
    if entry is None:
        found = _longest_prefix(name)
        if found is None or _derived_words(found[1]):
            return None
        entry = _BY_ALIAS[found[0]]
    arch = entry.arch
    if precision is not None and precision != arch.native_precision:
        arch = replace(arch, native_precision=precision)
    return CatalogMatch(entry=entry, arch=arch, exact=exact)


def unmatched_note(source: str) -> str:
    """Why a source that starts with a catalog name is not sized as that model ("" when it is not so)."""
    name, _ = normalize_model_name(source)
    found = None if name in _BY_ALIAS else _longest_prefix(name)
    if found is None or not _derived_words(found[1]):
        return ""
    teacher, rest, model = _BY_ALIAS[found[0]].name, found[1], _last_segment(source)
    if _DISTILL_WORD in rest:
        student = "-".join(rest[rest.index(_DISTILL_WORD) + 1:]) or "another model"
        return (f"{model} is {teacher} distilled into {student}: it has {student}'s architecture, not "
                f"{teacher}'s, and is not in the built-in catalog")
    return (f"{model} names another size ({', '.join(_derived_words(rest))}) than {teacher}: it is a "
            f"model built from {teacher}, not {teacher} itself, and is not in the built-in catalog")

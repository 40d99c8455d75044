"""Build a tiny randomly initialised Llama for real vLLM: a config and a locally trained tokenizer.

Beside it (``OUT_DIR-lora/good`` and ``OUT_DIR-lora/wide``) two PEFT LoRA adapters with random weights
for the LoRA conformance tests: rank 8 and rank 16 (above the suite's ``--max-lora-rank 8``).

Nothing is downloaded: vLLM runs it with ``--load-format dummy`` (random weights), and the tokenizer is
a byte-level BPE trained here on a few sentences. Run with the throwaway vLLM venv's Python, which
has ``tokenizers``: ``python tiny_model.py OUT_DIR``.
"""

import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

#: The smallest head size vLLM 0.32's CPU attention supports (cpu_attn.py: 32, 64, 80, ...); 0.11 also ran 16.
HEAD_DIM = 32
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}<|assistant|>\n"


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["What is 17 * 23? Answer with a number only.",
              "the quick brown fox jumps over the lazy dog"] * 50
    tok.train_from_iterator(corpus, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "model_max_length": 512, "chat_template": CHAT_TEMPLATE}, f)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
                   "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": HEAD_DIM, "vocab_size": tok.get_vocab_size(),
                   "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
                   "tie_word_embeddings": False, "hidden_act": "silu"}, f)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)


def write_adapter(out: str, *, base: str, rank: int, hidden: int = 128, kv: int = 64) -> None:
    """A PEFT adapter on q_proj and v_proj of the tiny model's two layers (torch and safetensors are
    vLLM's own dependencies)."""
    import torch  # type: ignore[import-not-found]
    from safetensors.torch import save_file  # type: ignore[import-not-found]

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": rank,
                   "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                   "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": False}, f)
    tensors = {}
    for layer in range(2):
        for module, width in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, dtype=torch.bfloat16) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(width, rank, dtype=torch.bfloat16)
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
    write_adapter(sys.argv[1] + "-lora/good", base=sys.argv[1], rank=8)
    write_adapter(sys.argv[1] + "-lora/wide", base=sys.argv[1], rank=16)

"""Tiny random-weight checkpoints of every decoder family nimbuild.export.families proves, written by
transformers itself with the tiny-llama example's tokenizer: what the family tests (and GPU-marked
engine builds) start from."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.paths import REPO

TOKENIZER = REPO / "examples" / "tiny-llama" / "model"
WINDOW = 16  # every windowed family's sliding window
SWITCH = 64  # Phi-3's original_max_position_embeddings: where longrope switches to its long factors

# initializer_range 0.25: weights large enough that attention is peaked. At transformers' default
# (0.02) attention is nearly uniform, and a wrong window or rope barely moves greedy tokens (a served
# Phi-3 that skipped the re-encode at the longrope switch still passed)
SHAPES = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=3,
              pad_token_id=3, initializer_range=0.25)
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
            "long_factor": [2.0 + 0.5 * i for i in range(8)]}
# model type -> (config class, model class, what differs from SHAPES)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 32}}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"sliding_window": WINDOW, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"sliding_window": WINDOW, "num_hidden_layers": 4, "attn_logit_softcapping": 5.0,
                "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 24}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"sliding_window": WINDOW, "num_hidden_layers": 6}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": SWITCH, "rope_scaling": LONGROPE}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 512,
              "bos_token_id": 1, "eos_token_id": 3, "initializer_range": 0.25}),
}


def write_checkpoint(model_type: str, path: Path, **changes) -> Path:
    """A tiny random-weight checkpoint of the family (its config changed by `changes`), saved by
    transformers, with tiny-llama's tokenizer."""
    import torch
    import transformers

    config_class, model_class, extra = FAMILIES[model_type]
    shapes = {} if model_type == "gpt2" else SHAPES  # GPT-2 names its shapes its own way
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**shapes, **extra, **changes})
    getattr(transformers, model_class)(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(TOKENIZER / name, path / name)
    return path

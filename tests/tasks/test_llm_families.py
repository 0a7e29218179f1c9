"""Every decoder family of nimbuild.export.families, as a new user brings it: a fresh random-weight
checkpoint written by transformers (tiny shapes, the tiny-llama example's tokenizer), `nimbuild recipe
init` with no edits, `nimbuild compile`, `python -m runtime_min serve`, and the official openai SDK.
The served greedy text equals transformers' own greedy generation of the same token ids, one prompt
at a time and batched (rows of different lengths, left-padded), on prompts that cross the family's
sliding window and Phi-3's longrope switch. A family row without a test here fails the suite."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from helpers.paths import REPO
from nimbuild.cli import main
from nimbuild.export.families import BY_MODEL_TYPE

TOKENIZER = REPO / "examples" / "tiny-llama" / "model"
WINDOW = 16  # every windowed family's sliding window: prompts below cross it
SWITCH = 64  # Phi-3's original_max_position_embeddings: where longrope switches to its long factors
NEW_TOKENS = 24
# the recipe init context is the model's 128 positions; the prompts are 2, 10, 34, 51 and 76 tokens
# (tiny-llama's tokenizer, BOS included): 10 + 24 crosses the window while generating, 51 + 24 the
# longrope switch (64), and 34 and 76 start past the window and the switch
PROMPTS = [
    "Rain",
    "The quick brown fox",
    "Once upon a time there was a little village by the sea where people",
    "Once upon a time there was a little village by the sea where people lived quietly, fishing in the morning",
    "Once upon a time there was a little village by the sea where people lived quietly, fishing in the morning "
    "and telling long stories by the fire every night of the year",
]
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


def test_every_family_row_has_a_test_here():
    assert set(FAMILIES) == set(BY_MODEL_TYPE)


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


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


class Reference:
    """transformers' greedy generation from the token ids the runtime feeds (its tokenizer is
    tokenizers' own: transformers 5 may pick a family's tokenizer class for the borrowed files)."""

    def __init__(self, checkpoint: Path):
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        self.template = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()

    def ids(self, prompt: str, special: bool = True) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=special).ids

    def greedy(self, ids: list[int], new: int = NEW_TOKENS) -> str:
        import torch

        tensor = torch.tensor([ids])
        with torch.inference_mode():
            out = self.model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new,
                                      do_sample=False)
        return self.tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)

    def chat(self, messages: list[dict], new: int) -> str:
        text = self.template.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.greedy(self.ids(text, special=False), new)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_from_recipe_init_to_served_greedy_tokens(model_type, tmp_path):
    import openai

    from helpers.runtime import Runtime
    from nimbuild.compile import plan_variants
    from nimbuild.recipe import load_recipe

    checkpoint = write_checkpoint(model_type, tmp_path / model_type)
    recipe = tmp_path / "recipe.yaml"
    _cli("recipe", "init", str(checkpoint), "--out", str(recipe))
    planned = {v.description: dict(v.tags) for v in plan_variants(load_recipe(recipe))}
    engines = [tags for tags in planned.values() if tags.get("llm_engine") == "tensorrt_llm"]
    if BY_MODEL_TYPE[model_type].trtllm:
        assert [t["model_type"] for t in engines] == [model_type], planned
    else:  # written commented out, with the reason
        assert not engines and "# no TensorRT-LLM engine: TensorRT-LLM converts" in recipe.read_text()
    output = _cli("compile", str(recipe), "--out", str(tmp_path / "out"))
    assert "onnxruntime-fp32-throughput" in output

    reference = Reference(checkpoint)
    lengths = [len(reference.ids(p)) for p in PROMPTS]
    assert lengths == [2, 10, 34, 51, 76], "the prompts no longer cross what they were chosen to cross"
    expected = [reference.greedy(reference.ids(p)) for p in PROMPTS]
    runtime = Runtime(tmp_path / "out" / "profiles.yaml", tmp_path / "cache")
    try:
        runtime.wait_ready()
        client = openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="not-needed", max_retries=0)
        alone = [client.completions.create(model=model_type, prompt=p, max_tokens=NEW_TOKENS, temperature=0)
                 for p in PROMPTS]
        assert [a.choices[0].text for a in alone] == expected
        batched = client.completions.create(model=model_type, prompt=PROMPTS, max_tokens=NEW_TOKENS, temperature=0)
        assert [c.text for c in sorted(batched.choices, key=lambda c: c.index)] == expected
        metrics = httpx.get(f"{runtime.url}/v1/metrics").text
        rows = float(re.search(rf'nimbuild_llm_step_rows_max\{{model="{model_type}"\}} (\S+)', metrics).group(1))
        assert rows == len(PROMPTS), "the five prompts were not generated as one batch"
        messages = [{"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": "What is the weather like by the sea?"}]
        chat = client.chat.completions.create(model=model_type, messages=messages, max_tokens=12, temperature=0)
        assert chat.choices[0].message.content == reference.chat(messages, 12)
    finally:
        assert runtime.stop() == 0


def test_a_decoder_of_no_proved_family_is_refused_by_recipe_init_unless_the_task_is_forced(tmp_path):
    import torch
    from transformers import OlmoConfig, OlmoForCausalLM

    torch.manual_seed(0)
    checkpoint = tmp_path / "olmo"
    OlmoForCausalLM(OlmoConfig(**SHAPES)).save_pretrained(checkpoint)
    result = CliRunner().invoke(main, ["recipe", "init", str(checkpoint), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "model type 'olmo' is no decoder family nimbuild has proved" in result.output
    assert "Mixtral (mixtral)" in result.output and "`--task text-generation` builds it anyway" in result.output
    assert not (tmp_path / "r.yaml").exists()
    # forced: written, with TensorRT-LLM left out and why (no converter is mapped for it)
    _cli("recipe", "init", str(checkpoint), "--out", str(tmp_path / "r.yaml"), "--task", "text-generation")
    assert "# no TensorRT-LLM engine: model type 'olmo' is mapped to no TensorRT-LLM converter" in (tmp_path / "r.yaml").read_text()


def test_what_the_graph_cannot_follow_is_refused_naming_the_family_and_the_field(tmp_path):
    checkpoint = write_checkpoint("llama", tmp_path / "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    recipe = tmp_path / "recipe.yaml"
    _cli("recipe", "init", str(checkpoint), "--out", str(recipe))
    result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Llama (2, 3.x): rope_parameters.rope_type 'dynamic' cannot be exported" in result.output


def test_tensorrt_llm_targets_of_a_family_it_cannot_convert_are_refused_when_planning(tmp_path):
    from nimbuild.compile import plan_variants
    from nimbuild.errors import NimbuildError
    from nimbuild.recipe import load_recipe

    checkpoint = write_checkpoint("qwen3_moe", tmp_path / "moe")
    recipe = tmp_path / "recipe.yaml"
    _cli("recipe", "init", str(checkpoint), "--out", str(recipe))
    text = recipe.read_text().replace("  # - {type: prebuilt, backend: tensorrt_llm", "  - {type: prebuilt, backend: tensorrt_llm")
    recipe.write_text(text)
    with pytest.raises(NimbuildError, match=r"targets\[1\]: TensorRT-LLM cannot build this checkpoint: TensorRT-LLM "
                                            r"converts Qwen3MoeForCausalLM only for its PyTorch backend"):
        plan_variants(load_recipe(recipe))

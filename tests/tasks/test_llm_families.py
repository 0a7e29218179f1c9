"""Every decoder family of nimbuild.export.families, as a new user brings it: a fresh random-weight
checkpoint written by transformers (tiny shapes, the tiny-llama example's tokenizer), `nimbuild recipe
init` with no edits, `nimbuild compile`, `python -m runtime_min serve`, and the official openai SDK.
The served greedy text equals transformers' own greedy generation of the same token ids, one prompt
at a time and batched (rows of different lengths, left-padded), on prompts that cross the family's
sliding window and Phi-3's longrope switch. A family row without a test here fails the suite."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from helpers.decoders import FAMILIES, SHAPES, SWITCH, WINDOW, write_checkpoint
from nimbuild.cli import main
from nimbuild.export.families import BY_MODEL_TYPE

NEW_TOKENS = 24
SMALL_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
                "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
# the recipe init context is the model's 128 positions; the prompts are 2, 10, 35, 53 and 79 tokens
# (tiny-llama's tokenizer, BOS included): 10 + 24 crosses the window (16) while generating, 53 + 24 the
# longrope switch (64), and 35 and 79 start past the window and the switch
PROMPTS = [
    "Rain",
    "The quick brown fox",
    "Once upon a time there was a little village by the sea where people",
    "Once upon a time there was a little village by the sea where people lived quietly, fishing in the morning",
    "Once upon a time there was a little village by the sea where people lived quietly, fishing in the morning "
    "and telling long stories by the fire every night of the year",
]


def test_every_family_row_has_a_test_here_and_a_row_in_the_docs_table():
    from helpers.paths import REPO

    assert set(FAMILIES) == set(BY_MODEL_TYPE)
    page = (REPO / "docs" / "tasks" / "text-generation.md").read_text()
    documented = re.findall(r"^\| ([^|]+) \| `(\w+)` \| `(\w+)` \| [^|]+ \| ([^|]+) \|$", page, re.M)
    assert [(name, model_type, architecture, trt.strip("`").split(":")[0]) for name, model_type, architecture, trt in documented] \
        == [(f.name, f.model_type, f.architecture, f.trtllm or "refused") for f in BY_MODEL_TYPE.values()]


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


# transformers stacks these families' per-expert tensors while loading: their weights are not the
# checkpoint's tensors by name, so they are exported from the loaded model, not streamed
CONVERTED_WHEN_LOADED = {"mixtral", "qwen3_moe"}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_from_recipe_init_to_served_greedy_tokens(model_type, tmp_path, monkeypatch):
    """Compiled as a real-size checkpoint is (the weights streamed from the checkpoint into the
    graph, nimbuild.export.streamed: the tiny checkpoints are under the size it starts at, so the
    test lowers it; the in-memory export is what the other decoder tests and the examples use)."""
    import openai

    from helpers.runtime import Runtime
    from nimbuild.compile import plan_variants
    from nimbuild.export import reference as reference_export
    from nimbuild.recipe import load_recipe

    monkeypatch.setattr(reference_export, "EXTERNAL_WEIGHTS_FROM", 0)

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
    steps = [s["step"] for s in json.loads((tmp_path / "out" / "compile-record.json").read_text())["stages"]]
    streamed = any("weights streamed from the checkpoint" in step for step in steps)
    assert streamed == (model_type not in CONVERTED_WHEN_LOADED), steps

    reference = Reference(checkpoint)
    lengths = [len(reference.ids(p)) for p in PROMPTS]
    window, switch = WINDOW, SWITCH
    crossings = [lengths[1] <= window < lengths[1] + NEW_TOKENS, lengths[2] > window,
                 lengths[3] <= switch < lengths[3] + NEW_TOKENS, lengths[4] > switch]
    assert all(crossings), f"the prompts ({lengths} tokens) no longer cross what they were chosen to cross"
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
        # structured output is the family's logits under llguidance's mask: it fits whatever the weights
        for seed in range(3):
            fitted = client.completions.create(model=model_type, prompt="Rain", max_tokens=40, temperature=1.0, seed=seed,
                                               extra_body={"nvext": {"guided_json": SMALL_SCHEMA}})
            assert fitted.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(fitted.choices[0].text), SMALL_SCHEMA)
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


@pytest.mark.gpu
@pytest.mark.parametrize("model_type", [t for t, row in BY_MODEL_TYPE.items() if row.trtllm])
def test_tensorrt_llm_builds_an_engine_of_each_family_it_converts(model_type, tmp_path):
    """Real where a GPU and tensorrt_llm exist (an NGC TensorRT-LLM container); skipped elsewhere."""
    from helpers.gpu import needs
    from nimbuild.profiles.manifest import load_manifest

    gpu = needs("tensorrt_llm")
    checkpoint = write_checkpoint(model_type, tmp_path / model_type)
    recipe = tmp_path / "recipe.yaml"
    _cli("recipe", "init", str(checkpoint), "--out", str(recipe))
    recipe.write_text(recipe.read_text().replace("compute_capabilities: ['9.0']",
                                                 f"compute_capabilities: ['{gpu.compute_capability}']"))
    _cli("-q", "compile", str(recipe), "--out", str(tmp_path / "out"), "--target", "1")
    profile = load_manifest(tmp_path / "out" / "profiles.yaml").profiles[0]
    assert profile.tags["llm_engine"] == "tensorrt_llm" and profile.tags["model_type"] == model_type
    assert any(f.endswith(".engine") for f in profile.files)

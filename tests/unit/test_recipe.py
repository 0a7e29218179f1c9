"""Recipe validation: good recipes load; each kind of mistake names file, line and field."""

from __future__ import annotations

import pytest

from helpers.paths import REPO
from nimbuild.errors import RecipeError
from nimbuild.recipe import load_recipe, parse_recipe

FULL = """\
name: minilm-embed
release: 0.1.0
source:
  hf: ./models/all-MiniLM-L6-v2
task: embedding
export:
  opset: 17
  inputs:
    input_ids: {batch: [1, 8, 64], sequence: [1, 128, 512]}
  parity: {atol: 1.0e-4}
precisions:
  fp32: {}
  fp16: {gate: {cosine_min: 0.999}}
  int8: {gate: {cosine_min: 0.99}, calibration: {samples: 64}}
targets:
  - {type: generic, backend: onnxruntime, precisions: [fp32, fp16]}
  - {type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.0", "8.6", "8.9", "12.0"], precisions: [fp16]}
  - {type: prebuilt, backend: tensorrt, compute_capabilities: ["9.0", "10.0"], precisions: [fp16, int8]}
  - {type: rmir, min_compute_capability: "7.5", precisions: [fp16]}
serving: {max_batch_size: 32, dynamic_batching: {max_queue_delay_us: 2000}, profile: throughput}
"""


def test_design_example_loads_with_every_field(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(FULL)
    recipe = load_recipe(path)
    assert recipe.name == "minilm-embed" and recipe.release == "0.1.0"
    assert recipe.export.opset == 17
    dims = recipe.export.inputs["input_ids"]
    assert (dims["batch"].min, dims["batch"].opt, dims["batch"].max) == (1, 8, 64)
    assert recipe.targets[1].compute_capabilities == ["8.0", "8.6", "8.9", "12.0"]
    assert recipe.targets[3].min_compute_capability == "7.5"
    assert recipe.precision_spec("int8").calibration.samples == 64
    assert recipe.precision_spec("fp32").gate is None
    assert recipe.serving.dynamic_batching.max_queue_delay_us == 2000
    # relative paths resolve against the recipe's own directory, not the working directory
    assert recipe.resolve_path(recipe.source.hf) == (tmp_path / "models/all-MiniLM-L6-v2").resolve()


def test_shipped_example_recipes_are_valid():
    recipes = sorted((REPO / "examples").glob("*/recipe.yaml"))
    assert recipes, "the project ships example recipes"
    for path in recipes:
        assert load_recipe(path).name


def test_defaults_for_optional_sections():
    recipe = parse_recipe(FULL.replace("  opset: 17\n", "").replace("  parity: {atol: 1.0e-4}\n", "")
                          .split("serving:")[0])
    assert recipe.export.opset == 18
    assert recipe.export.parity.atol == 1e-4 and recipe.export.parity.cosine_min == 0.9999
    assert recipe.serving.profile == "throughput"


def test_unquoted_compute_capability_is_read_as_text():
    recipe = parse_recipe(FULL.replace('["9.0", "10.0"]', "[9.0, 10.0]"))
    assert recipe.targets[2].compute_capabilities == ["9.0", "10.0"]


MISTAKES = [
    # (what to replace, replacement, expected line, expected fragments)
    ("  parity: {atol: 1.0e-4}", "  parity: {atol: 1.0e-4, atoll: 3}", 10,
     ["export.parity.atoll", "unknown key 'atoll'", "did you mean 'atol'"]),
    ("serving: {max_batch_size: 32,", "serving: {max_batch: 32,", 20, ["serving.max_batch", "unknown key"]),
    ("task: embedding\n", "task: embedding\ncolour: blue\n", 6, ["colour", "unknown key"]),
    ("  opset: 17", "  opset: seventeen", 7, ["export.opset", "integer", "'seventeen'"]),
    ("release: 0.1.0", "release: 0.1", 2, ["release", "quote it"]),
    ("task: embedding", "task: embeding", 5,
     ["task", "'embedding', 'ranking', 'text-generation', 'asr-ctc', 'asr-rnnt', 'asr-whisper', 'asr-canary', "
              "'tts' or 'translation'", "'embeding'"]),
    ("[1, 8, 64]", "[64, 8, 1]", 9, ["export.inputs.input_ids.batch", "min <= opt <= max"]),
    ("[1, 8, 64]", "[1, 8]", 9, ["export.inputs.input_ids.batch", "[min, opt, max]"]),
    ('["8.0", "8.6", "8.9", "12.0"]', '["8.0", "9.0"]', 17, ["targets[1]", "TensorRT-RTX cannot build", "9.0"]),
    ("precisions: [fp16, int8]}", "precisions: [fp16, fp8]}", 15, ["targets", "fp8", "not declared"]),
    ("  fp32: {}\n", "", 11, ["precisions", "must include fp32"]),
    ("type: rmir,", "type: rmirr,", 19, ["targets[3]", "unknown type 'rmirr'"]),
    ("  hf: ./models/all-MiniLM-L6-v2", "  hf: ./m\n  nemo: ./x.nemo", 3, ["source", "exactly one"]),
    ("name: minilm-embed\n", "", 1, ["name", "required field is missing"]),
    ("name: minilm-embed", "name: MiniLM Embed", 1, ["name", "pattern"]),
    ("export:\n", "export:\n  opset: 18\nexport:\n", 8, ["duplicate key 'export'"]),
    ("  inputs:\n", "  inputs: [oops\n", 9, ["not valid YAML"]),
    ("{max_batch_size: 32,", "{max_batch_size: -1,", 20, ["serving.max_batch_size", "greater than or equal to 0"]),
    ("fp16: {gate: {cosine_min: 0.999}}", "fp16: {gate: {cosine_min: 2}}", 13,
     ["precisions.fp16.gate.cosine_min", "less than or equal to 1"]),
]


@pytest.mark.parametrize("old,new,line,fragments", MISTAKES, ids=[m[1][:30] for m in MISTAKES])
def test_each_mistake_names_file_line_and_field(old, new, line, fragments):
    assert old in FULL, f"test setup: {old!r} not in the recipe"
    with pytest.raises(RecipeError) as info:
        parse_recipe(FULL.replace(old, new, 1), filename="bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml:{line}:"), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match=r"bad.yaml:1: expected a mapping"):
        parse_recipe("- just\n- a list\n", filename="bad.yaml")
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_several_problems_are_all_reported():
    text = FULL.replace("  opset: 17", "  opset: x").replace("task: embedding", "task: y")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, filename="bad.yaml")
    lines = str(info.value).splitlines()
    assert any(":5: task" in ln for ln in lines) and any(":7: export.opset" in ln for ln in lines)

"""Weight-only int4 and int8 text-generation profiles (nimbuild.precision.weight_only, docs/design.md
§17): built from the reference graph by onnxruntime's MatMulNBits quantizer, gated on served greedy
tokens and held-text perplexity against what the source recorded before it was freed, sized for
selection, and served through runtime_min with the openai SDK."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.decoders import write_checkpoint
from helpers.recipes import compiled, recipe_text
from helpers.runtime import Runtime
from nimbuild.profiles.manifest import load_manifest

# random weights put many near-ties under the argmax: int4's rounding flips some early, so its
# token agreement is low here (a trained model's is not); the thresholds are this checkpoint's
GATES = {"fp32": "{}", "int8": "{gate: {tokens_min: 0.5, perplexity_delta_max: 0.02}}",
         "int4": "{gate: {tokens_min: 0.05, perplexity_delta_max: 0.1}, weight_only: {block_size: 32}}"}
TARGET = "{type: generic, backend: onnxruntime, precisions: [fp32, int8, int4]}"
TEXTS = "  texts:\n    - The rain falls softly on the leaves while a man plays the guitar in the park.\n"


def run_cli(*args: str) -> tuple[int, str]:
    """`nimbuild ARGS` in process, as the CLI answers a user: (exit code, what it printed)."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    result = CliRunner().invoke(main, ["-q", *args])
    return result.exit_code, result.output


def _recipe(source, precisions=GATES, targets=(TARGET,), texts: bool = True) -> str:
    text = recipe_text(str(source), "text-generation", batch=(1, 2, 4), sequence=(1, 32, 96), name="tiny-wo",
                       profile="throughput", precisions=precisions, targets=targets)
    return text.replace("  parity: {}\n", "  parity: {}\n" + TEXTS) if texts else text


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return write_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2-wo"))


@pytest.fixture(scope="module")
def weight_only_out(tmp_path_factory, qwen2_dir):
    recipe = tmp_path_factory.mktemp("wo-recipe") / "recipe.yaml"
    recipe.write_text(_recipe(qwen2_dir))
    return compiled(tmp_path_factory, recipe)


def _profiles(out):
    return {p.tags["precision"]: p for p in load_manifest(out / "profiles.yaml").profiles}


def test_int4_and_int8_graphs_are_matmulnbits_gated_on_tokens_and_perplexity_and_sized(weight_only_out, qwen2_dir):
    import onnx

    profiles = _profiles(weight_only_out)
    assert set(profiles) == {"fp32", "int8", "int4"}
    sizes = {}
    for precision, profile in profiles.items():
        graph = onnx.load(str(weight_only_out / profile.files["model.onnx"].uri), load_external_data=False)
        ops = [n.op_type for n in graph.graph.node]
        nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
        if precision == "fp32":
            assert not nbits
        else:  # every projection (2 layers x 7) and the LM head, at the precision's bits
            assert len(nbits) == 15, ops
            assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {int(precision[-1])}
            assert {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {32}
            gate = profile.build["gate"]
            assert gate["run"] and float(gate["token_agreement"]) >= float(gate["tokens_min"])
            assert float(gate["perplexity_source"]) > 1 and abs(float(gate["perplexity_delta"])) <= float(gate["perplexity_delta_max"])
            assert gate["tokens_compared"] >= 30
            assert profile.build["quantization"]["operator"] == "com.microsoft::MatMulNBits"
        sizes[precision] = profile.files["model.onnx"].size
        # host memory a served profile holds: weights plus a full fp32 KV cache (2 layers, 2 heads x 16,
        # 96 positions, 4 rows)
        cache = 2 * 2 * 2 * 16 * 4 * 96 * 4
        assert profile.requires["memory_mib"] == -(-(profile.files["model.onnx"].size + cache) // 2**20)
        assert "gpu_memory_mib" not in profile.requires  # an onnxruntime profile runs on the CPU
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]
    # each step's time and peak memory beside the manifest (not in it: manifests are reproducible)
    record = json.loads((weight_only_out / "compile-record.json").read_text())
    peaks = {s["step"]: s["peak_rss_mib"] for s in record["stages"]}
    assert peaks["check greedy generation against transformers"] > 100 and all(v > 0 for v in peaks.values())
    assert {"make and gate the int4-wo variant", "make and gate the int8-wo variant"} <= set(peaks)
    assert record["source_bytes"] == (qwen2_dir / "model.safetensors").stat().st_size
    assert sorted(record["built"]) == sorted(p.id for p in _profiles(weight_only_out).values())


def test_the_served_int4_profile_answers_with_the_int4_graphs_own_greedy_tokens(weight_only_out, qwen2_dir, tmp_path):
    """The runtime serves the gated graph: its greedy tokens over the openai SDK equal the int4
    graph's greedy tokens computed here, and differ from fp32's where the gate recorded a difference."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    from nimbuild.export.reference import open_session
    from nimbuild.serving.generation import DecoderGraph, greedy

    int4 = _profiles(weight_only_out)["int4"]
    tokenizer = AutoTokenizer.from_pretrained(qwen2_dir)
    prompt = "The rain falls softly"
    ids = tokenizer(prompt)["input_ids"]
    graph = DecoderGraph(open_session(weight_only_out / int4.files["model.onnx"].uri))
    expected = greedy(graph, ids, 12, [3])
    runtime = Runtime(weight_only_out / "profiles.yaml", tmp_path / "cache", env={"NIM_MODEL_PROFILE": int4.id})
    try:
        runtime.wait_ready()
        client = OpenAI(base_url=f"{runtime.url}/v1", api_key="none")
        reply = client.completions.create(model="tiny-wo", prompt=prompt, max_tokens=12, temperature=0)
    finally:
        runtime.stop()
    assert "onnxruntime-int4-throughput" in runtime.log.read_text()
    assert reply.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.usage.completion_tokens == len(expected)


def test_default_int4_gates_refuse_a_random_checkpoints_variant_with_the_figures(write_recipe, tmp_path, qwen2_dir):
    precisions = {"fp32": "{}", "int4": "{}"}
    targets = ("{type: generic, backend: onnxruntime, precisions: [fp32, int4]}",)
    code, output = run_cli("compile", str(write_recipe(_recipe(qwen2_dir, precisions, targets))), "--out",
                           str(tmp_path / "out"))
    assert code != 0 and "the int4 variant misses its gate on what it serves" in output, output
    assert "limit 0.8: FAILED" in output and "perplexity on held text" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()  # nothing half-made left behind


@pytest.mark.parametrize("change, fragment", [
    # weight-only is text generation's int4/int8
    (lambda t: t.replace("task: text-generation", "task: embedding").replace(TEXTS, ""), "weight-only quantisation is text generation's"),
    (lambda t: t.replace("  int8: {gate:", "  int8: {weight_only: {block_size: 64, algorithm: rtn}, gate:"), None),
    (lambda t: t.replace("weight_only: {block_size: 32}", "weight_only: {block_size: 48}"), "block_size"),
    (lambda t: t.replace("weight_only: {block_size: 32}", "weight_only: {algorithm: gptq}"), "algorithm"),
    (lambda t: t.replace("  int8: {gate:", "  int8: {weight_only: {algorithm: hqq}, gate:"), "hqq quantises to 4 bits"),
    (lambda t: t.replace("  int4: {gate:", "  fp16: {weight_only: {}}\n  int4: {gate:"), "precisions.fp16.weight_only"),
])
def test_weight_only_settings_are_checked_where_they_are_read(write_recipe, change, fragment, qwen2_dir):
    from nimbuild.errors import RecipeError
    from nimbuild.recipe import load_recipe

    text = change(_recipe(qwen2_dir))
    if fragment is None:  # a well-formed variation loads
        load_recipe(write_recipe(text))
        return
    with pytest.raises(RecipeError, match=fragment.replace(".", r"\.")):
        load_recipe(write_recipe(text))


@pytest.mark.parametrize("targets, precisions, fragment", [
    # the LoRA graph is fp32: a LoRA target asking for int4 would serve fp32 under an int4 tag
    (("{type: generic, backend: onnxruntime, precisions: [fp32, int4], lora: {max_rank: 4, targets: [q_proj]}}",),
     {"fp32": "{}", "int4": "{}"}, "precision int4 is not supported"),
    # int4 is text generation's alone
    (None, None, None),
])
def test_int4_is_refused_where_it_is_not_built(write_recipe, tmp_path, qwen2_dir, tiny_bert_dir, targets, precisions,
                                               fragment):
    if targets is None:  # an embedding recipe asking for int4
        text = recipe_text(str(tiny_bert_dir), "embedding", precisions={"fp32": "{}", "int4": "{}"},
                           targets=("{type: generic, backend: onnxruntime, precisions: [fp32, int4]}",))
        fragment = "precision int4 is not supported for onnxruntime"
    else:
        text = _recipe(qwen2_dir, precisions, targets)
    code, output = run_cli("compile", str(write_recipe(text)), "--out", str(tmp_path / "out"))
    assert code != 0 and fragment in output and "Traceback" not in output, output


def test_held_texts_without_a_weight_only_variant_are_refused_not_ignored(write_recipe, tmp_path, qwen2_dir):
    text = _recipe(qwen2_dir, {"fp32": "{}"}, ("{type: generic, backend: onnxruntime, precisions: [fp32]}",))
    code, output = run_cli("compile", str(write_recipe(text)), "--out", str(tmp_path / "out"))
    assert code != 0 and "export.texts" in output and "builds neither" in output, output


def test_the_memory_a_text_generation_profile_needs_counts_weights_and_a_full_cache(tmp_path):
    from nimbuild.export.llm import serving_memory_mib

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_bytes(b"x" * 2**20)  # not weights
    (tmp_path / "rank0.engine").write_bytes(b"\0" * (3 * 2**20))
    info = {"kv_cache": {"layers": 32, "heads": 8, "head_dim": 128}, "max_sequence_length": 4096, "max_batch": 8}
    # Mistral-7B's cache at 4,096 tokens x 8 rows in fp16: 2 x 32 x 8 x 128 x 2 bytes x 32,768 = 4 GiB
    assert serving_memory_mib(tmp_path, info, 2) == 3 + 4096


def test_each_progress_step_records_its_own_peak_and_an_enclosing_step_the_largest():
    from nimbuild.util.progress import Reporter

    reporter = Reporter(quiet=True)
    with reporter.step("outer"):
        with reporter.step("large"):
            block = np.ones(96 * 2**20 // 8)
            block[::512] = 2  # touched: resident
        del block
        with reporter.step("small"):
            small = np.ones(8 * 2**20 // 8)
            small[::512] = 2
    peaks = {message: peak for message, _, peak in reporter.stages}
    assert peaks["large"] - peaks["small"] > 60, peaks  # the small step's peak is its own, not the process's
    assert peaks["outer"] >= peaks["large"]
    assert json.dumps(peaks)


@pytest.mark.parametrize("bits, block_size", [(4, 32), (8, 128)])
def test_rtn_one_weight_at_a_time_writes_what_onnxruntimes_quantizer_writes(weight_only_out, tmp_path, bits, block_size):
    """The streamed RTN quantizer (a 7B's fp32 graph does not fit in memory) calls onnxruntime's own
    kernel: every MatMulNBits node, its attributes and its blocks and scales equal what
    MatMulNBitsQuantizer makes of the whole graph."""
    import onnx
    from onnx import numpy_helper

    from nimbuild.precision.weight_only import _rtn_streamed, _whole_graph
    from nimbuild.recipe import WeightOnly

    reference = weight_only_out / _profiles(weight_only_out)["fp32"].files["model.onnx"].uri
    spec = WeightOnly(block_size=block_size)
    assert _rtn_streamed(reference, tmp_path / "streamed.onnx", bits, spec) == 15
    assert _whole_graph(reference, tmp_path / "whole.onnx", bits, spec) == 15
    graphs = [onnx.load(str(tmp_path / name)) for name in ("streamed.onnx", "whole.onnx")]
    nodes = [[n for n in g.graph.node if n.op_type == "MatMulNBits"] for g in graphs]
    weights = [{t.name: numpy_helper.to_array(t) for t in g.graph.initializer} for g in graphs]
    for streamed, whole in zip(*nodes):
        assert (streamed.input, streamed.output) == (whole.input, whole.output)
        assert ({a.name: onnx.helper.get_attribute_value(a) for a in streamed.attribute}
                == {a.name: onnx.helper.get_attribute_value(a) for a in whole.attribute})
        for name in streamed.input[1:]:
            np.testing.assert_array_equal(weights[0][name], weights[1][name])
    assert len(nodes[0]) == 15

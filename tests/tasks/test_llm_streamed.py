"""Weights streamed from the checkpoint into the graph (nimbuild.export.streamed, docs/design.md
§17): the structure exported from a model with placeholder parameters, each weight read from the
safetensors as the graph is written. Proved per family like the in-memory export: the streamed
graph passes the same parity against transformers' greedy generation, and computes what the
in-memory export's graph computes. The examples' checkpoints are under the size streaming starts
at (their graphs, and profile ids, do not change), so the tests lower it."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.decoders import write_checkpoint
from helpers.recipes import recipe_text


def _export(checkpoint, dest, write_recipe, streamed_from: int | None, monkeypatch):
    from nimbuild.export import llm, reference
    from nimbuild.recipe import load_recipe
    from nimbuild.sources.hf import resolve_hf
    from nimbuild.util.progress import Reporter

    if streamed_from is not None:
        monkeypatch.setattr(reference, "EXTERNAL_WEIGHTS_FROM", streamed_from)
    recipe = load_recipe(write_recipe(recipe_text(str(checkpoint), "text-generation", sequence=(1, 32, 96))))
    reporter = Reporter(quiet=True)
    result = llm.export(resolve_hf(str(checkpoint), checkpoint.parent), recipe, dest, reporter)
    monkeypatch.undo()
    return result, [message for message, _, _ in reporter.stages]


# random weights: near-tie logits (test_llm_weight_only says why the floor is this checkpoint's)
INT4_GATE = "{gate: {tokens_min: 0.05, perplexity_delta_max: 0.1}, weight_only: {block_size: 32}}"


def _logits(graph_path, ids: list[int]) -> np.ndarray:
    from nimbuild.export.reference import open_session
    from nimbuild.serving.generation import DecoderGraph, greedy

    steps: list[np.ndarray] = []
    greedy(DecoderGraph(open_session(graph_path)), ids[:1], len(ids) - 1, on_logits=steps.append, forced=ids[1:])
    return np.stack(steps)


def test_a_streamed_graph_computes_what_the_in_memory_export_computes(tmp_path, write_recipe, monkeypatch):
    """Gemma (tied embeddings, a scaled embedding): both pass parity against transformers (every
    family's streamed graph is served in test_llm_families); here the two graphs also agree with each
    other on a forced sequence, and the streamed one keeps every weight beside it, each linear weight
    stored transposed once, as the exporter's own optimiser folds it."""
    import onnx

    checkpoint = write_checkpoint("gemma", tmp_path / "gemma")
    streamed, steps = _export(checkpoint, tmp_path / "streamed", write_recipe, 0, monkeypatch)
    assert any("weights streamed from the checkpoint" in s for s in steps), steps
    assert streamed.parity.passed and streamed.files[1].name == "model.onnx.data"
    graph = onnx.load(str(streamed.files[0]), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer if len(t.dims) == 2)
    initializers = {t.name for t in graph.graph.initializer}
    assert not [n for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in initializers]
    in_memory, steps = _export(checkpoint, tmp_path / "in-memory", write_recipe, None, monkeypatch)
    assert len(in_memory.files) == 1 and not any("streamed" in s for s in steps)  # under the size: as the examples
    ids = np.random.default_rng(0).integers(4, 500, size=40).tolist()
    np.testing.assert_allclose(_logits(streamed.files[0], ids), _logits(in_memory.files[0], ids), atol=2e-4, rtol=0)


def test_a_checkpoint_whose_tensors_the_model_does_not_name_is_exported_from_the_loaded_model(tmp_path):
    """A tensor renamed in the checkpoint (transformers would fail or convert it) is not streamed."""
    from safetensors.torch import load_file, save_file

    from nimbuild.export.llm import weight_stream
    from nimbuild.sources.hf import resolve_hf
    from nimbuild.util.progress import Reporter

    checkpoint = write_checkpoint("llama", tmp_path / "llama")
    weights = load_file(checkpoint / "model.safetensors")
    weights["model.norm.scale"] = weights.pop("model.norm.weight")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    lines: list[str] = []
    reporter = Reporter(verbose=True)
    reporter.debug = lines.append
    from nimbuild.export import reference

    before, reference.EXTERNAL_WEIGHTS_FROM = reference.EXTERNAL_WEIGHTS_FROM, 0
    try:
        assert weight_stream(resolve_hf(str(checkpoint), tmp_path), reporter) is None
    finally:
        reference.EXTERNAL_WEIGHTS_FROM = before
    assert lines and "model.norm.weight" in lines[0], lines


@pytest.mark.parametrize("streamed", [True, False])
def test_an_int4_only_recipe_on_a_bf16_checkpoint_never_opens_the_fp32_graph(tmp_path, write_recipe, monkeypatch,
                                                                             streamed):
    """The 7B path (docs/design.md §17): no fp32 profile, so the source is loaded in its own dtype,
    recorded and freed, the weights streamed, the fp32 graph written but not opened, and the int4
    variant built one weight at a time and gated on what it serves against the bf16 record. A
    checkpoint under the streaming size is loaded in fp32 (what is loaded is also what is exported)."""
    import json

    import torch
    import transformers
    from click.testing import CliRunner

    from nimbuild.cli import main
    from nimbuild.export import reference
    from nimbuild.profiles.manifest import load_manifest

    checkpoint = write_checkpoint("mistral", tmp_path / "fp32")
    bf16 = tmp_path / "bf16"
    transformers.MistralForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).save_pretrained(bf16)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bf16 / name).write_bytes((checkpoint / name).read_bytes())
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    text = recipe_text(str(bf16), "text-generation", sequence=(1, 32, 96), name="tiny-bf16",
                       precisions={"fp32": "{}", "int4": INT4_GATE},
                       targets=("{type: generic, backend: onnxruntime, precisions: [int4]}",))
    if streamed:
        monkeypatch.setattr(reference, "EXTERNAL_WEIGHTS_FROM", 0)
    result = CliRunner().invoke(main, ["-q", "compile", str(write_recipe(text)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (profile,) = load_manifest(tmp_path / "out" / "profiles.yaml").profiles
    assert profile.tags["precision"] == "int4"
    gate = profile.build["gate"]
    assert gate["run"] and gate["tokens_compared"] >= 30 and float(gate["perplexity_source"]) > 1
    assert "not checked: no fp32 profile" in profile.build["parity"]["fp32_graph"]
    dtype = "bfloat16" if streamed else "float32"
    assert dtype in profile.build["parity"]["fp32_graph"] and profile.build["compared_with"] == f"the source in {dtype}"
    steps = [s["step"] for s in json.loads((tmp_path / "out" / "compile-record.json").read_text())["stages"]]
    assert any("in its own dtype" in s for s in steps) == streamed, steps
    assert any("weights streamed" in s for s in steps) == streamed, steps
    assert not any("check greedy generation" in s for s in steps), steps


def test_no_fp32_target_and_an_ungated_variant_is_refused_before_anything_is_built(tmp_path, write_recipe):
    """Without an fp32 target the fp32 graph is not checked; a variant whose gate is off would then be
    served checked by nothing."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    checkpoint = write_checkpoint("mistral", tmp_path / "mistral")
    text = recipe_text(str(checkpoint), "text-generation", sequence=(1, 32, 96),
                       precisions={"fp32": "{}", "int4": "{gate: {evaluate: false}}"},
                       targets=("{type: generic, backend: onnxruntime, precisions: [int4]}",))
    result = CliRunner().invoke(main, ["-q", "compile", str(write_recipe(text)), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "nothing would check what it serves" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_parameter_left_unmatched_is_refused_not_served_as_zeros(tmp_path, write_recipe, monkeypatch):
    """Should the exporter name a parameter so that it is not matched to a checkpoint tensor, its
    placeholder (zeros) would be written as the weight: the export refuses instead."""
    from nimbuild.errors import ExportError
    from nimbuild.export import streamed

    real = streamed.parameter_sources

    def losing_one(*args, **kwargs):
        sources = real(*args, **kwargs)
        sources.pop(next(name for name in sources if name.endswith("o_proj.weight")))
        return sources

    monkeypatch.setattr(streamed, "parameter_sources", losing_one)
    checkpoint = write_checkpoint("llama", tmp_path / "llama")
    with pytest.raises(ExportError, match="placeholder weights for lm.model.layers.0.self_attn.o_proj.weight"):
        _export(checkpoint, tmp_path / "out", write_recipe, 0, monkeypatch)

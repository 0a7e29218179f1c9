"""Export to a reference ONNX and its parity check against the source framework."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.recipes import recipe_text
from nimbuild.errors import ExportError, ParityError
from nimbuild.export import export_reference
from nimbuild.export.embedding import check_parity
from nimbuild.export.reference import input_specs, parity_shapes
from nimbuild.recipe import load_recipe
from nimbuild.sources import resolve_source
from nimbuild.util.progress import Reporter

QUIET = Reporter(quiet=True)


def _export(write_recipe, tmp_path, source, task="embedding", **kw):
    recipe = load_recipe(write_recipe(recipe_text(str(source), task, **kw)))
    return recipe, export_reference(resolve_source(recipe), recipe, tmp_path / "ref", QUIET)


def test_tiny_bert_exports_with_dynamic_axes_and_passes_parity(write_recipe, tmp_path, tiny_bert_dir):
    import onnx

    _, ref = _export(write_recipe, tmp_path, tiny_bert_dir)
    model = onnx.load(str(ref.files[0]), load_external_data=False)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                      "token_type_ids": ["batch", "sequence"]}
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nimbuild.task"] == "embedding" and "pooling" in meta["nimbuild.runtime_info"]
    assert ref.parity.passed and ref.parity.shapes == ["1x1", "2x16", "1x64", "4x1"]
    figures = ref.parity.outputs["last_hidden_state"]
    assert figures.max_abs < 1e-4 and figures.cosine_min > 0.9999 and figures.elements > 0


def test_large_weights_are_written_beside_the_graph_and_still_pass_parity(write_recipe, tmp_path, tiny_bert_dir,
                                                                         monkeypatch):
    """Past EXTERNAL_WEIGHTS_FROM the weights go to model.onnx.data (BERT-large's compile peaked at
    8.2 GB with them inside the graph, 3.2 GB beside it); the threshold is lowered to the tiny BERT."""
    import onnx

    import nimbuild.export.reference

    monkeypatch.setattr(nimbuild.export.reference, "EXTERNAL_WEIGHTS_FROM", 1024)
    _, ref = _export(write_recipe, tmp_path, tiny_bert_dir)
    graph, data = ref.files[0], ref.files[0].with_name("model.onnx.data")
    assert data in ref.files and data.stat().st_size > 10 * graph.stat().st_size
    weights = onnx.load(str(graph), load_external_data=False).graph.initializer
    matrices = [t for t in weights if len(t.dims) == 2 and np.prod(t.dims) * 4 >= 64 * 1024]
    assert matrices and all(t.data_location == onnx.TensorProto.EXTERNAL for t in matrices)
    assert ref.parity.passed and ref.parity.outputs["last_hidden_state"].max_abs < 1e-4


def test_zero_tolerance_is_refused_with_figures(write_recipe, tmp_path, tiny_bert_dir):
    with pytest.raises(ParityError) as info:
        _export(write_recipe, tmp_path, tiny_bert_dir, parity="{atol: 0, rtol: 0, cosine_min: 1.0}")
    message = str(info.value)
    assert "does not match the source model" in message
    assert "last_hidden_state: max abs err" in message and "FAILED" in message
    assert "elements outside atol=0 + rtol=0" in message


def test_a_perturbed_graph_is_refused(write_recipe, tmp_path, tiny_bert_dir):
    """Change one weight in the exported graph: the parity check must catch it."""
    import onnx
    from onnx import numpy_helper

    from nimbuild.export.adapters import load_task

    recipe, ref = _export(write_recipe, tmp_path, tiny_bert_dir)
    model = onnx.load(str(ref.files[0]))
    target = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 2 else 0)
    weights = numpy_helper.to_array(target).copy()
    weights[:, 0] += 0.05
    target.CopyFrom(numpy_helper.from_array(weights, target.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    adapter = load_task("embedding", resolve_source(recipe))
    with pytest.raises(ParityError, match="FAILED"):
        check_parity(adapter, perturbed, ref.inputs, recipe.export.parity)


def test_sequence_longer_than_the_model_allows_is_refused(write_recipe, tmp_path, tiny_bert_dir):
    with pytest.raises(ExportError, match=r"sequence: max 512 exceeds the model's 128 positions"):
        _export(write_recipe, tmp_path, tiny_bert_dir, sequence=(1, 16, 512))


def test_inputs_the_model_does_not_take_are_refused():
    from nimbuild.shapes import DimRange

    dims = {"batch": DimRange(min=1, opt=2, max=4), "sequence": DimRange(min=1, opt=8, max=16)}
    with pytest.raises(ExportError, match="names pixel_values, but the model takes input_ids, attention_mask"):
        input_specs({"pixel_values": dims}, ["input_ids", "attention_mask"])
    specs = input_specs({"input_ids": dims}, ["input_ids", "attention_mask"])
    assert specs[1].dims == dims, "an unlisted input takes the dims of the input it accompanies"
    assert parity_shapes(specs[0]) == [(1, 1), (2, 8), (1, 16), (4, 1)]


@pytest.mark.slow
def test_real_minilm_graph_with_recorded_pooling_matches_sentence_transformers(minilm_compiled, minilm_dir):
    """The served embedding = graph + recorded pooling; check it against sentence-transformers itself."""
    import json

    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    out, _ = minilm_compiled
    workspace = out / "profiles" / "onnxruntime-fp32-throughput"
    info = json.loads((workspace / "model_info.json").read_text())
    assert info["runtime"] == {"pooling": "mean", "normalize": True, "max_sequence_length": 256}
    sentences = ["The cat sits on the mat.", "A feline rests on a rug, quietly, in the afternoon sun."]
    tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(sentences)
    feeds = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
    }
    hidden = ort.InferenceSession(str(workspace / "model.onnx")).run(None, feeds)[0]
    mask = feeds["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences)
    cosine = (pooled * expected).sum(1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine

"""Embeddings as NIM serves them, on checkpoints the minilm example does not cover: decoder embedding
models (a fresh random-weight Qwen3Model or MistralModel with sentence-transformers' last-token pooling,
as Qwen3-Embedding and e5-mistral are made) from `recipe init` to served vectors equal to
transformers', `input_type` applying the checkpoint's prompts, `dimensions` on a Matryoshka-declared
recipe, base64; and the fp16 variant of every encoder the embedding row takes loading and passing
its gate. The minilm example's own API is tests/system/test_runtime.py."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from helpers.paths import REPO
from nimbuild.cli import main

TOKENIZER = REPO / "examples" / "tiny-llama" / "model"
PROMPTS = {"query": "Instruct: find the passage that answers it\nQuery: ", "document": ""}
TEXTS = ["How do I reset my password?", "Open Settings, then Security, then Reset.", "Rain"]
FP32 = {"NIM_MODEL_PROFILE": "onnxruntime-fp32-throughput"}
DECODERS = {
    "qwen3": ("Qwen3Config", "Qwen3Model", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralModel", {}),
}


def _sentence_transformers_files(checkpoint, width: int) -> None:
    """What sentence-transformers writes beside a last-token, normalised embedding model."""
    (checkpoint / "1_Pooling").mkdir()
    modes = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
             "pooling_mode_lasttoken": True}
    (checkpoint / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": width, **modes}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    (checkpoint / "config_sentence_transformers.json").write_text(json.dumps({"prompts": PROMPTS,
                                                                               "default_prompt_name": None}))


def _reference(checkpoint, texts: list[str], prompt: str) -> np.ndarray:
    """sentence-transformers' last-token pooling in transformers, each text alone (no padding)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint).eval()
    vectors = []
    for text in texts:
        ids = tokenizer(prompt + text, return_tensors="pt")
        with torch.inference_mode():
            vectors.append(model(**ids).last_hidden_state[0, -1].numpy())
    matrix = np.array(vectors)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _embed(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)


def _vectors(reply: httpx.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    data = sorted(reply.json()["data"], key=lambda d: d["index"])
    if isinstance(data[0]["embedding"], str):
        return np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    return np.array([d["embedding"] for d in data])


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_a_decoder_embedding_model_from_recipe_init_to_served_vectors(tmp_path, family):
    import torch
    import transformers

    config_class, model_class, extra = DECODERS[family]
    checkpoint = tmp_path / family
    config = getattr(transformers, config_class)(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, checkpoint / name)
    _sentence_transformers_files(checkpoint, 64)
    runner = CliRunner()
    recipe = tmp_path / "recipe.yaml"
    result = runner.invoke(main, ["recipe", "init", str(checkpoint), "--out", str(recipe), "--name", family])
    assert result.exit_code == 0 and "(task embedding)" in result.output, result.output
    # serving is the recipe's last section; mistral's recipe overrides the checkpoint's prompts
    prompts = {"query": "q: ", "passage": "p: "} if family == "mistral" else {"query": PROMPTS["query"], "passage": ""}
    override = f", prompts: {json.dumps(prompts)}" if family == "mistral" else ""
    recipe.write_text(recipe.read_text() + f"  embeddings: {{dimensions: true{override}}}\n")
    result = runner.invoke(main, ["-q", "compile", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    from helpers.runtime import Runtime

    runtime = Runtime(tmp_path / "out" / "profiles.yaml", tmp_path / "cache", env=FP32)
    try:
        runtime.wait_ready()
        queries = _vectors(_embed(runtime.url, model=family, input=TEXTS, input_type="query"))
        np.testing.assert_allclose(queries, _reference(checkpoint, TEXTS, prompts["query"]), atol=1e-5)
        passages = _vectors(_embed(runtime.url, model=family, input=TEXTS, input_type="passage"))
        np.testing.assert_allclose(passages, _reference(checkpoint, TEXTS, prompts["passage"]), atol=1e-5)
        assert not np.allclose(queries, passages, atol=1e-3), "the query prompt changed nothing: this could not fail"
        # NIM's model-name suffix is the same input_type
        np.testing.assert_array_equal(_vectors(_embed(runtime.url, model=f"{family}-query", input=TEXTS)), queries)
        missing = _embed(runtime.url, model=family, input=TEXTS)
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "input_type", missing.text
        # Matryoshka: the first 16 dimensions, renormalised; base64 carries the same float32 values
        cut = _vectors(_embed(runtime.url, model=family, input=TEXTS, input_type="query", dimensions=16,
                              encoding_format="base64"))
        expected = queries[:, :16] / np.linalg.norm(queries[:, :16], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, expected, atol=1e-6)
        for bad in (0, 65):
            reply = _embed(runtime.url, model=family, input=TEXTS, input_type="query", dimensions=bad)
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "dimensions", reply.text
        conflict = _embed(runtime.url, model=f"{family}-query", input=TEXTS, input_type="passage")
        assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "input_type"
        if family == "qwen3":  # the document of a model that needs input_type and takes dimensions
            from helpers.servers import assert_api_as_documented

            assert_api_as_documented(runtime.url, {"/v1/embeddings"})
    finally:
        assert runtime.stop() == 0


ENCODERS = {
    "bert": ("BertConfig", "BertModel", {}),
    "roberta": ("RobertaConfig", "RobertaModel", {}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", {}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {}),
    "mpnet": ("MPNetConfig", "MPNetModel", {}),
    "electra": ("ElectraConfig", "ElectraModel", {"embedding_size": 64}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", {}),
    "modernbert": ("ModernBertConfig", "ModernBertModel",
                   {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3}),
}


@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_the_fp16_variant_of_every_encoder_the_row_takes_loads_and_passes_its_gate(tmp_path, family):
    """Issue 46: ModernBERT's (and DeBERTa-v2's) fp16 graph was invalid (a Cast the converter left at
    float32 where it declared float16), so onnxruntime refused to load it and the compile stopped."""
    import torch
    import transformers

    config_class, model_class, extra = ENCODERS[family]
    checkpoint = tmp_path / family
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=130, **extra)
    getattr(transformers, model_class)(config).save_pretrained(checkpoint)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: {family}\nrelease: 0.1.0\nsource: {{hf: {checkpoint}}}\ntask: embedding\n"
                      "export:\n  inputs:\n    input_ids: {batch: [1, 4, 8], sequence: [1, 32, 64]}\n"
                      "precisions:\n  fp32: {}\n  fp16: {}\n"
                      "targets:\n  - {type: generic, backend: onnxruntime, precisions: [fp16]}\n")
    result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "out" / "profiles.yaml").read_text()
    assert "onnxruntime-fp16-throughput" in manifest

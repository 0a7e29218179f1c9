"""Ranking (cross-encoder rerankers): fresh random-weight checkpoints written by transformers, through
`nimbuild recipe init`, compile and `runtime_min serve`, answering NIM's `POST /v1/ranking` with the
order and logits transformers gives the same pairs; the tiny-rerank example compiled and served once
for the API's checks."""

from __future__ import annotations

import json
import shutil

import httpx
import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from helpers.paths import REPO
from nimbuild.cli import main

EXAMPLE = REPO / "examples" / "tiny-rerank"
RESPONSE_SCHEMA = json.loads((REPO / "tests" / "schemas" / "nim" / "ranking-response.json").read_text())
FP32 = {"NIM_MODEL_PROFILE": "onnxruntime-fp32-throughput"}
QUERY = "How do I reset my password?"
PASSAGES = ["My order arrived damaged; can I get a refund?", "The cat sat on the mat next to the fireplace.",
            "How do I reset my password?", "Quantum computers use qubits instead of bits.",
            "It is raining heavily in the mountains this afternoon. " * 3, "Rain"]


def _transformers_logits(checkpoint, query: str, passages: list[str], max_length: int | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # every checkpoint here carries the example's tokenizer files; read from the example's folder,
    # transformers loads them as the BERT tokenizer they are (a decoder's folder would have it
    # guess another class from the model type)
    tokenizer = AutoTokenizer.from_pretrained(EXAMPLE / "model")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    batch = tokenizer([query] * len(passages), passages, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    if getattr(model.config, "type_vocab_size", 1) < 2:  # XLM-R, DistilBERT: no second segment type
        batch.pop("token_type_ids", None)
    with torch.inference_mode():
        return model(**batch).logits[:, 0].numpy()


def _rank(url: str, model: str, query: str, passages: list[str], **extra) -> httpx.Response:
    body = {"model": model, "query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}
    return httpx.post(f"{url}/v1/ranking", json=body, timeout=60)


def _assert_ranks_as_transformers(reply: dict, expected: np.ndarray) -> None:
    jsonschema.validate(reply, RESPONSE_SCHEMA)
    order = [r["index"] for r in reply["rankings"]]
    assert sorted(order) == list(range(len(expected)))
    np.testing.assert_allclose([r["logit"] for r in reply["rankings"]], expected[order], atol=1e-4, rtol=1e-4)
    assert order == list(np.argsort(-expected, kind="stable")), "served order differs from transformers' logits"
    assert np.ptp(expected) > 1e-3, "the logits are a near tie: the order would prove nothing"


# --- the example, served once ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def rerank_runtime(tmp_path_factory):
    from helpers.recipes import compiled
    from helpers.runtime import Runtime

    out = compiled(tmp_path_factory, EXAMPLE / "recipe.yaml")
    # fp32: compared with transformers at its tolerance (on a CPU the runtime would pick int8, which
    # its gate judged on the logits' correlation instead)
    served = Runtime(out / "profiles.yaml", tmp_path_factory.mktemp("rerank-cache"), env=FP32)
    served.wait_ready()
    yield served
    assert served.stop() == 0


def test_the_example_ranks_as_transformers_and_answers_in_nims_shape(rerank_runtime):
    reply = _rank(rerank_runtime.url, "tiny-rerank", QUERY, PASSAGES)
    assert reply.status_code == 200, reply.text
    _assert_ranks_as_transformers(reply.json(), _transformers_logits(EXAMPLE / "model", QUERY, PASSAGES))
    assert reply.json()["usage"]["prompt_tokens"] > len(PASSAGES) * 3


def test_a_pair_over_the_context_is_cut_at_the_end_as_transformers_cuts_it_or_refused_with_none(rerank_runtime):
    long = " ".join(PASSAGES * 20)  # far past 256 tokens
    cut = _rank(rerank_runtime.url, "tiny-rerank", QUERY, [long, PASSAGES[0]])
    assert cut.status_code == 200, cut.text
    _assert_ranks_as_transformers(cut.json(), _transformers_logits(EXAMPLE / "model", QUERY, [long, PASSAGES[0]], 256))
    refused = _rank(rerank_runtime.url, "tiny-rerank", QUERY, [PASSAGES[0], long], truncate="NONE")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "passages"
    assert "passages[1]" in refused.json()["error"]["message"]


def test_concurrent_requests_each_get_their_own_ranking(rerank_runtime):
    import concurrent.futures

    sets = [PASSAGES[i:] + PASSAGES[:i] for i in range(len(PASSAGES))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda ps: _rank(rerank_runtime.url, "tiny-rerank", QUERY, ps), sets * 2))
    for passages, reply in zip(sets * 2, replies):
        assert reply.status_code == 200, reply.text
        _assert_ranks_as_transformers(reply.json(), _transformers_logits(EXAMPLE / "model", QUERY, passages))


@pytest.mark.parametrize("body, status, param", [
    ({"passages": []}, 400, "passages"),
    ({"passages": [{"text": "x"}] * 513}, 400, "passages"),
    ({"passages": [{"text": "   "}]}, 400, "passages.0.text"),
    ({"query": {"text": ""}}, 400, "query.text"),
    ({"top_n": 2}, 400, "top_n"),
    ({"truncate": "START"}, 400, "truncate"),
    ({"model": "nope"}, 404, "model"),
    ({"passages": [{"text": "x", "title": "y"}]}, 400, "passages.0.title"),
])
def test_bad_ranking_requests_are_4xx_naming_the_field(rerank_runtime, body, status, param):
    payload = {"model": "tiny-rerank", "query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES], **body}
    reply = httpx.post(f"{rerank_runtime.url}/v1/ranking", json=payload, timeout=30)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param, reply.text


def test_triton_clients_get_the_logits_directly(rerank_runtime):
    """The Triton model is the API for clients that call Triton: pairs' ids in, [pairs, 1] logits out."""
    import tritonclient.http as triton_http
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EXAMPLE / "model")
    batch = tokenizer([QUERY] * 3, PASSAGES[:3], padding=True, return_tensors="np")
    client = triton_http.InferenceServerClient(rerank_runtime.triton_url)
    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        tensor = triton_http.InferInput(name, list(batch[name].shape), "INT64")
        tensor.set_data_from_numpy(batch[name].astype(np.int64))
        inputs.append(tensor)
    logits = client.infer("tiny-rerank", inputs).as_numpy("logits")
    np.testing.assert_allclose(logits[:, 0], _transformers_logits(EXAMPLE / "model", QUERY, PASSAGES[:3]), atol=1e-4)


def test_schemathesis_finds_the_ranking_api_as_its_openapi_document_says(rerank_runtime):
    from helpers.servers import assert_api_as_documented

    assert_api_as_documented(rerank_runtime.url, {"/v1/ranking"})


# --- families: a fresh checkpoint each, from recipe init to served rankings -------------------------

CROSS_ENCODERS = {
    "bert": ("BertConfig", "BertForSequenceClassification", {}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", {"type_vocab_size": 1}),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", {"type_vocab_size": 1}),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", {}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {"embedding_size": 64}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", {"type_vocab_size": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", {"num_key_value_heads": 2, "pad_token_id": 0}),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", {"num_key_value_heads": 2, "pad_token_id": 0}),
    "modernbert": ("ModernBertConfig", "ModernBertForSequenceClassification",
                   {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3}),
}


@pytest.mark.parametrize("family", sorted(CROSS_ENCODERS))
def test_cross_encoder_from_recipe_init_to_served_ranking(tmp_path, family):
    import torch
    import transformers

    config_class, model_class, extra = CROSS_ENCODERS[family]
    checkpoint = tmp_path / family
    tokenizer = EXAMPLE / "model"
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    config = getattr(transformers, config_class)(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=258, num_labels=1,
                                                 initializer_range=0.2, **extra)
    torch.manual_seed(1)
    getattr(transformers, model_class)(config).save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, checkpoint / name)
    runner = CliRunner()
    result = runner.invoke(main, ["recipe", "init", str(checkpoint), "--out", str(tmp_path / "recipe.yaml"), "--name", family])
    assert result.exit_code == 0 and "(task ranking)" in result.output, result.output
    result = runner.invoke(main, ["-q", "compile", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    from helpers.runtime import Runtime

    runtime = Runtime(tmp_path / "out" / "profiles.yaml", tmp_path / "cache", env=FP32)
    try:
        runtime.wait_ready()
        reply = _rank(runtime.url, family, QUERY, PASSAGES)
        assert reply.status_code == 200, reply.text
        _assert_ranks_as_transformers(reply.json(), _transformers_logits(checkpoint, QUERY, PASSAGES))
    finally:
        assert runtime.stop() == 0


def test_a_classifier_with_several_labels_is_not_taken_as_a_reranker(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_labels=3)).save_pretrained(tmp_path / "clf")
    result = CliRunner().invoke(main, ["recipe", "init", str(tmp_path / "clf"), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code != 0 and "3 labels" in result.output and "Traceback" not in result.output

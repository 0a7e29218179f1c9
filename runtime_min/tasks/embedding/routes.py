"""OpenAI-shaped `POST /v1/embeddings`, with NIM's `input_type` and `truncate`.

`input_type` (`query` or `passage`, or a `-query` / `-passage` suffix on the model name, as NIM
takes it) puts the prefix the checkpoint's sentence-transformers config defines for it before each
text (recorded in the profile at compile time; the recipe's `serving.embeddings.prompts` overrides
it): an asymmetric model (one with a prompt per type) refuses a request without one, as NIM does,
since its vectors would be wrong. `dimensions` (Matryoshka models, declared by the recipe's
`serving.embeddings.dimensions`) cuts each vector and renormalises it.

Text is tokenised here with the checkpoint's own tokenizer (`tokenizers`, from the profile's
tokenizer.json) and sent to Triton as token ids through tritonclient's asyncio gRPC client (texts of
requests that arrive while Triton is busy share one call: coalesce.py); the pooled, normalised
embeddings come back.
"""

from __future__ import annotations

import base64
from typing import Literal, Union

import numpy as np
import orjson
from fastapi import FastAPI, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict

from runtime_min.coalesce import Coalescer
from runtime_min.http import (
    NOT_BLANK,
    ApiError,
    Metrics,
    ServedModel,
    Text,
    blank,
    off_the_loop_if_long,
    require_ready,
    token_inputs,
    triton_infer,
)

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_CHARS_PER_INPUT = 1 << 20


def _documented(schema: dict, matryoshka: bool = False, width: int | None = None, asymmetric: bool = False) -> None:
    """The request's OpenAPI schema says what the route accepts for the model served (checked by
    schemathesis): texts with a non-space character, up to MAX_CHARS_PER_INPUT of them, 1 to
    MAX_INPUTS in a list; `dimensions` only for a Matryoshka model, up to its width; `input_type`
    required by an asymmetric model."""
    text = {"type": "string", "pattern": NOT_BLANK, "maxLength": MAX_CHARS_PER_INPUT}
    schema["properties"]["input"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1,
                                                      "maxItems": MAX_INPUTS}]}
    if not matryoshka:
        schema["properties"]["dimensions"] = {"type": "null", "description": "not supported: the model has one size"}
    else:
        schema["properties"]["dimensions"] = {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1,
                                                                            **({"maximum": width} if width else {})}]}
    if asymmetric:
        schema["properties"]["input_type"] = {"type": "string", "enum": ["query", "passage"]}
        schema.setdefault("required", []).append("input_type")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_documented)

    input: Union[Text, list[Text]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # NIM's extensions: what to do with inputs longer than the model's maximum sequence length, and
    # what the texts are to an asymmetric retrieval model
    truncate: Literal["NONE", "START", "END"] = "END"
    input_type: Literal["query", "passage"] | None = None


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, metrics: Metrics) -> None:
    tokenizer = _tokenizers(model)
    inputs_total = Counter("nimbuild_embedding_inputs_total", "Texts embedded", registry=metrics.registry)
    tokens_total = Counter("nimbuild_embedding_tokens_total", "Tokens embedded", registry=metrics.registry)
    input_names = [i["name"] for i in model.info["inputs"]]
    calls = Coalescer(lambda encodings: _infer(state["grpc"], model.name, input_names, encodings), model.max_batch)
    served = (model.info.get("serving") or {}).get("embeddings") or {}
    prompts = served.get("prompts") or (model.info.get("runtime") or {}).get("prompts") or {}
    matryoshka = bool(served.get("dimensions"))
    normalize = bool((model.info.get("runtime") or {}).get("normalize"))
    width = _width(model.info)

    class Request(EmbeddingRequest):  # this model's document: what it takes of dimensions and input_type
        model_config = ConfigDict(extra="forbid", title="EmbeddingRequest", json_schema_extra=lambda schema: _documented(
            schema, matryoshka, width, {"query", "passage"} <= set(prompts)))

    async def embeddings(body):
        input_type = _input_type(body, model.name)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        _check_texts(texts)
        prefix = _prefix(prompts, input_type)
        require_ready(triton)
        encodings = await off_the_loop_if_long(sum(map(len, texts)), lambda: [
            _encode(tokenizer, prefix + t, model.max_tokens, body.truncate, i) for i, t in enumerate(texts)])
        vectors = []
        for start in range(0, len(encodings), model.max_batch):
            vectors.append(await calls.embed(encodings[start:start + model.max_batch]))
        matrix = _cut(np.concatenate(vectors), body.dimensions, matryoshka, normalize)
        tokens = sum(len(e.ids) for e in encodings)
        inputs_total.inc(len(texts))
        tokens_total.inc(tokens)
        # float64 holds each float32 exactly and prints as float(v) did; orjson writes it straight
        # from the array (FastAPI's encoder would visit every number as a Python object first)
        values = matrix.astype(np.float64)
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                               else values[i])}
                for i, v in enumerate(matrix)]
        payload = {"object": "list", "data": data, "model": model.name,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    # the class is this model's, so the annotation is set here (a string one would name nothing FastAPI can find)
    embeddings.__annotations__["body"] = Request
    app.post("/v1/embeddings")(embeddings)


def _width(info: dict) -> int | None:
    """The vectors' width where the profile states it (the hidden state's last dimension)."""
    shape = (info.get("outputs") or [{}])[0].get("shape") or []
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def _input_type(body: EmbeddingRequest, served: str) -> str | None:
    """The request's input_type: the field, or NIM's `-query` / `-passage` model-name suffix."""
    if body.model == served:
        return body.input_type
    for kind in ("query", "passage"):
        if body.model == f"{served}-{kind}":
            if body.input_type not in (None, kind):
                raise ApiError(400, f"the model name says input_type {kind} and the request says {body.input_type}",
                               param="input_type")
            return kind
    raise ApiError(404, f"The model '{body.model}' does not exist; this service serves '{served}'",
                   param="model", code="model_not_found")


def _prefix(prompts: dict, input_type: str | None) -> str:
    """What goes before each text: the checkpoint's prompt for its input_type. A model with a prompt
    for each type answers nothing without one (its query and passage vectors are not comparable
    otherwise); one with none takes input_type and embeds the text as it is."""
    if input_type is None:
        if {"query", "passage"} <= set(prompts):
            raise ApiError(400, "input_type is required for this model: query or passage (its queries and passages "
                                "are embedded with different prompts)", param="input_type")
        return ""
    return prompts.get(input_type, "")


def _cut(matrix: np.ndarray, dimensions: int | None, matryoshka: bool, normalize: bool) -> np.ndarray:
    """The first `dimensions` of each vector, renormalised where the model normalises."""
    if dimensions is None:
        return matrix
    width = matrix.shape[1]
    if not matryoshka:
        raise ApiError(400, "dimensions is not supported by this model (its recipe does not declare it "
                            "Matryoshka-trained: serving.embeddings.dimensions)", param="dimensions")
    if not 1 <= dimensions <= width:
        raise ApiError(400, f"dimensions must be 1 to {width} for this model, got {dimensions}", param="dimensions")
    cut = matrix[:, :dimensions]
    if normalize:
        cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return cut


def _check_texts(texts: list[str]) -> None:
    if not texts:
        raise ApiError(400, "input must not be empty", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input")
    for i, text in enumerate(texts):
        if blank(text):
            raise ApiError(400, f"input[{i}] is empty", param="input")
        if len(text) > MAX_CHARS_PER_INPUT:
            raise ApiError(413, f"input[{i}] is over {MAX_CHARS_PER_INPUT} characters", param="input")


def _tokenizers(model: ServedModel) -> dict:
    """One tokenizer per truncation mode. Truncating inside the tokenizer keeps the special tokens
    ([CLS] ... [SEP]) as sentence-transformers does; cutting an encoding afterwards would drop [SEP]."""
    from tokenizers import Tokenizer

    path = str(model.workspace / "tokenizer" / "tokenizer.json")
    modes = {}
    for mode, direction in (("NONE", None), ("END", "right"), ("START", "left")):
        tokenizer = Tokenizer.from_file(path)
        tokenizer.no_padding()
        if direction:
            tokenizer.enable_truncation(model.max_tokens, direction=direction)
        else:
            tokenizer.no_truncation()
        modes[mode] = tokenizer
    return modes


def _encode(tokenizers: dict, text: str, max_tokens: int, truncate: str, index: int):
    encoding = tokenizers[truncate].encode(text)
    if len(encoding.ids) > max_tokens:  # only possible with NONE
        raise ApiError(400, f"input[{index}] has {len(encoding.ids)} tokens; the model takes at most {max_tokens} "
                            "(set truncate to END or START)", param="input")
    return encoding


async def _infer(client, model_name: str, input_names: list[str], encodings) -> np.ndarray:
    """One batch through Triton's gRPC API (one HTTP/2 connection for every request: under load
    it costs the API process about half the CPU that Triton's HTTP API did, profiled)."""
    import tritonclient.grpc.aio as triton_grpc

    inputs = token_inputs(encodings, input_names)
    result = await triton_infer(client, model_name, inputs, [triton_grpc.InferRequestedOutput("embeddings")])
    return result.as_numpy("embeddings")

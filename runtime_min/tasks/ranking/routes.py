"""NIM's `POST /v1/ranking`: a query and passages in, the passages' relevance logits out, highest
first.

Each (query, passage) pair is tokenised here as a cross-encoder reads it (the checkpoint's own
tokenizer, the pair as two segments, as sentence-transformers' CrossEncoder and transformers
tokenise it), and one request's pairs go to Triton together (up to the model's batch size a call;
pairs of requests that arrive while Triton is busy share calls: runtime_min.coalesce).
`truncate: END` (the default) shortens an over-long pair as transformers' `truncation=True` does
(the longer segment first); `NONE` refuses it with a 400.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from fastapi import FastAPI
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from runtime_min.coalesce import Coalescer
from runtime_min.http import (
    NOT_BLANK,
    ApiError,
    Metrics,
    ServedModel,
    Text,
    off_the_loop_if_long,
    require_ready,
    token_inputs,
    triton_infer,
)

MAX_PASSAGES = 512  # per request, as NIM's rerankers take
MAX_CHARS = 1 << 16  # per query or passage: far past any reranker's context, bounding the tokeniser's work


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text = Field(max_length=MAX_CHARS, pattern=NOT_BLANK)


class RankingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    query: TextItem
    passages: list[TextItem] = Field(min_length=1, max_length=MAX_PASSAGES)
    truncate: Literal["NONE", "END"] = "END"


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, metrics: Metrics) -> None:
    limit = context(model)
    tokenizers = _tokenizers(model, limit)
    pairs_total = Counter("nimbuild_ranking_pairs_total", "Query-passage pairs scored", registry=metrics.registry)
    input_names = [i["name"] for i in model.info["inputs"]]
    calls = Coalescer(lambda encodings: _infer(state["grpc"], model.name, input_names, encodings), model.max_batch)

    @app.post("/v1/ranking")
    async def ranking(body: RankingRequest):
        if body.model != model.name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        texts = [body.query.text] + [p.text for p in body.passages]  # none blank: TextItem's pattern
        require_ready(triton)
        encodings = await off_the_loop_if_long(sum(map(len, texts)), lambda: [
            _encode(tokenizers, body.query.text, p.text, limit, body.truncate, i)
            for i, p in enumerate(body.passages)])
        logits = np.concatenate([await calls.embed(encodings[start:start + model.max_batch])
                                 for start in range(0, len(encodings), model.max_batch)]).reshape(-1)
        tokens = sum(len(e.ids) for e in encodings)
        pairs_total.inc(len(encodings))
        order = np.argsort(-logits, kind="stable")  # highest first; ties keep the passages' order
        return {"rankings": [{"index": int(i), "logit": float(logits[i])} for i in order],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def context(model: ServedModel) -> int:
    """The most tokens a pair may have: the model's own limit, or the profile's input range if less."""
    built = [i["shapes"]["sequence"][2] for i in model.info["inputs"] if "sequence" in (i.get("shapes") or {})]
    return min([model.max_tokens, *built])


def _tokenizers(model: ServedModel, limit: int) -> dict:
    """One tokenizer per truncate mode: END cuts as transformers' `truncation=True` (longest first,
    special tokens kept); NONE cuts nothing (a pair over the context is refused)."""
    from tokenizers import Tokenizer

    path = str(model.workspace / "tokenizer" / "tokenizer.json")
    modes = {}
    for mode in ("NONE", "END"):
        tokenizer = Tokenizer.from_file(path)
        tokenizer.no_padding()
        if mode == "END":
            tokenizer.enable_truncation(limit, strategy="longest_first", direction="right")
        else:
            tokenizer.no_truncation()
        modes[mode] = tokenizer
    return modes


def _encode(tokenizers: dict, query: str, passage: str, max_tokens: int, truncate: str, index: int):
    encoding = tokenizers[truncate].encode(query, passage)
    if len(encoding.ids) > max_tokens:  # only possible with NONE
        raise ApiError(400, f"passages[{index}] with the query is {len(encoding.ids)} tokens; the model takes at most "
                            f"{max_tokens} (set truncate to END)", param="passages")
    return encoding


async def _infer(client, model_name: str, input_names: list[str], encodings) -> np.ndarray:
    """One batch of pairs through Triton's gRPC API: [pairs, 1] logits."""
    import tritonclient.grpc.aio as triton_grpc

    inputs = token_inputs(encodings, input_names)
    result = await triton_infer(client, model_name, inputs, [triton_grpc.InferRequestedOutput("logits")])
    return result.as_numpy("logits")

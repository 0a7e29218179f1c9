"""The HTTP API in front of Triton: health, models, metrics, and OpenAI-shaped `/v1/embeddings`.

Text is tokenised here with the checkpoint's own tokenizer (`tokenizers`, from the profile's
tokenizer.json), sent to Triton as token ids through tritonclient's asyncio client, and the
pooled, normalised embeddings come back. Every bad request gets a 4xx with an OpenAI-style error
body; Triton being down is a 503, never a 500.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_BODY_BYTES = 16 << 20
MAX_CHARS_PER_INPUT = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: Union[str, list[str]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # NIM's extension: what to do with inputs longer than the model's maximum sequence length
    truncate: Literal["NONE", "START", "END"] = "END"


@dataclass
class ServedModel:
    name: str
    profile_id: str
    workspace: Path
    info: dict

    @property
    def max_batch(self) -> int:
        return max(1, int((self.info.get("serving") or {}).get("max_batch_size") or 1))

    @property
    def max_tokens(self) -> int:
        return int((self.info.get("runtime") or {}).get("max_sequence_length") or 512)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("nimbuild_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("nimbuild_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry)
        self.inputs = Counter("nimbuild_embedding_inputs_total", "Texts embedded", registry=self.registry)
        self.tokens = Counter("nimbuild_embedding_tokens_total", "Tokens embedded", registry=self.registry)
        self.ready = Gauge("nimbuild_triton_ready", "1 when Triton reports the model ready", registry=self.registry)
        self.restarts = Gauge("nimbuild_triton_restarts", "Times Triton was restarted", registry=self.registry)
        self.prompt_tokens = Counter("nimbuild_prompt_tokens_total", "Prompt tokens of completions", registry=self.registry)
        self.completion_tokens = Counter("nimbuild_completion_tokens_total", "Tokens generated", registry=self.registry)
        self.first_token = Histogram("nimbuild_time_to_first_token_seconds", "Time from request to first token",
                                     buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry)
        self.audio_seconds = Counter("nimbuild_audio_seconds_total", "Seconds of audio transcribed", registry=self.registry)
        self.transcription = Histogram("nimbuild_transcription_seconds", "Time to transcribe one file",
                                       buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry)


def create_app(model: ServedModel, triton) -> FastAPI:
    """`triton` is a runtime_min.triton.TritonServer (or anything with .url, .grpc_port, .ready,
    .metrics_port, .restarts). Embedding profiles get /v1/embeddings; text-generation profiles
    get /v1/completions and /v1/chat/completions (runtime_min.completions)."""
    metrics = Metrics()
    state: dict[str, Any] = {}
    generating = model.info.get("task") == "text-generation"

    async def lifespan(app):
        import tritonclient.http.aio as triton_http

        state["client"] = triton_http.InferenceServerClient(triton.url, conn_limit=256)
        state["http"] = httpx.AsyncClient(timeout=5.0)
        if generating:  # a decoupled model streams its responses, which only Triton's gRPC API carries
            import tritonclient.grpc.aio as triton_grpc

            state["grpc"] = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
        yield
        await state["client"].close()
        await state["http"].aclose()
        if generating:
            await state["grpc"].close()

    app = FastAPI(title="runtime_min", lifespan=lifespan, docs_url=None, redoc_url=None)

    app.add_middleware(_Observe, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None))

    @app.exception_handler(404)
    async def not_found(request: Request, error):
        return _error(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, error):
        return _error(ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"))

    @app.get("/v1/health/live")
    async def live():
        return {"object": "health.response", "message": "Service is live."}

    @app.get("/v1/health/ready")
    async def ready():
        if await _triton_ready(state, triton, model.name):
            metrics.ready.set(1)
            return {"object": "health.response", "message": "Service is ready."}
        metrics.ready.set(0)
        return _error(ApiError(503, "Triton is not ready", kind="service_unavailable", code="not_ready"))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "nimbuild",
                                            "root": model.name, "profile_id": model.profile_id}]}

    @app.get("/v1/metrics")
    async def prometheus():
        metrics.restarts.set(triton.restarts)
        metrics.ready.set(1 if triton.ready.is_set() else 0)
        text = generate_latest(metrics.registry).decode()
        try:
            r = await state["http"].get(f"http://127.0.0.1:{triton.metrics_port}/metrics")
            text += r.text
        except httpx.HTTPError:
            text += "# Triton metrics unavailable: Triton is not running\n"
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    if generating:
        from runtime_min.completions import add_completion_routes

        add_completion_routes(app, model, triton, state, metrics)
    elif model.info.get("task") == "asr-ctc":
        from runtime_min.transcriptions import add_transcription_routes

        add_transcription_routes(app, model, triton, state, metrics)
    else:
        _add_embedding_routes(app, model, triton, state, metrics)
    return app


class _Observe:
    """Request counts and latency (to the response's start) per endpoint, and the body-size limit.
    Plain ASGI rather than Starlette's BaseHTTPMiddleware: that one cuts a streamed request body
    off once the response has started, which a streaming transcription needs to keep reading."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"]
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self.metrics.requests.labels(endpoint, "413").inc()
            return await _error(ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large"))(
                scope, receive, send)
        start = time.perf_counter()

        async def observed(message):
            if message["type"] == "http.response.start":
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, observed)


def _add_embedding_routes(app: FastAPI, model: ServedModel, triton, state: dict, metrics: Metrics) -> None:
    tokenizer = _tokenizers(model)
    input_names = [i["name"] for i in model.info["inputs"]]

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        if body.model != model.name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        _check_texts(texts)
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported by this model", param="dimensions")
        require_ready(triton)
        encodings = [_encode(tokenizer, t, model.max_tokens, body.truncate, i) for i, t in enumerate(texts)]
        vectors = []
        for start in range(0, len(encodings), model.max_batch):
            vectors.append(await _infer(state["client"], model.name, input_names, encodings[start:start + model.max_batch]))
        matrix = np.concatenate(vectors)
        tokens = sum(len(e.ids) for e in encodings)
        metrics.inputs.inc(len(texts))
        metrics.tokens.inc(tokens)
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                               else v.tolist())}
                for i, v in enumerate(matrix)]
        return {"object": "list", "data": data, "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content={"error": {
        "message": error.message, "type": error.kind, "param": error.param, "code": error.code}})


def _check_texts(texts: list[str]) -> None:
    if not texts:
        raise ApiError(400, "input must not be empty", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input")
    for i, text in enumerate(texts):
        if not text.strip():
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


def require_ready(triton) -> None:
    if not triton.ready.is_set():
        raise ApiError(503, "the model is not ready (Triton is restarting)", kind="service_unavailable", code="not_ready")


async def triton_infer(client, model_name: str, inputs: list, outputs: list, **options):
    """One inference over Triton's HTTP client; any failure is a 503 with the reason, never a 500."""
    from tritonclient.utils import InferenceServerException

    try:
        return await client.infer(model_name, inputs, outputs=outputs, **options)
    except (InferenceServerException, OSError) as e:
        raise ApiError(503, f"inference failed: {e}", kind="service_unavailable", code="inference_failed") from None
    except Exception as e:  # aiohttp's connection errors while Triton restarts
        raise ApiError(503, f"inference failed: {type(e).__name__}", kind="service_unavailable", code="inference_failed") from None


async def _infer(client, model_name: str, input_names: list[str], encodings) -> np.ndarray:
    import tritonclient.http.aio as triton_http

    longest = max(len(e.ids) for e in encodings)
    arrays = {
        "input_ids": np.array([e.ids + [0] * (longest - len(e.ids)) for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask + [0] * (longest - len(e.ids)) for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids + [0] * (longest - len(e.ids)) for e in encodings], dtype=np.int64),
    }
    inputs = []
    for name in input_names:
        tensor = triton_http.InferInput(name, arrays[name].shape, "INT64")
        tensor.set_data_from_numpy(arrays[name], binary_data=True)
        inputs.append(tensor)
    result = await triton_infer(client, model_name, inputs, [triton_http.InferRequestedOutput("embeddings", binary_data=True)])
    return result.as_numpy("embeddings")


async def _triton_ready(state, triton, model_name: str) -> bool:
    if not triton.ready.is_set():
        return False
    try:
        r = await state["http"].get(f"http://{triton.url}/v2/models/{model_name}/ready")
        return r.status_code == 200
    except httpx.HTTPError:
        return False

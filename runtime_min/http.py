"""The HTTP API in front of Triton that every task shares: health, models, metrics, and the
error shape. It knows no task: the service hands it the task's routes (runtime_min/tasks/<task>/),
which add their endpoints, their metrics and any Triton clients they need.

Every bad request gets a 4xx with an OpenAI-style error body; Triton being down is a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator
from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 16 << 20
log = logging.getLogger("runtime_min")


class BodyTooLarge(HTTPException):
    """Raised while the body is read, however it is sent (Content-Length or chunked). An
    HTTPException, so that FastAPI's body parsing passes it on instead of calling it a parse error."""

    def __init__(self):
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes")


def _unicode(text: str) -> str:
    # JSON may spell a lone surrogate ("\ud800"); no tokenizer or encoder can take one
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not Unicode text: a lone surrogate at character {e.start}") from None
    return text


# every text a request carries to a tokenizer, a template or Triton is this type
Text = Annotated[str, AfterValidator(_unicode)]

# A character that is not blank, as the OpenAPI document's patterns say it and the routes check it:
# JSON Schema reads a pattern as ECMA-262, whose \s lacks some of Python's (the separators
# \x1c-\x1f, NEL) and has one Python's lacks (BOM); the union is blank in both (schemathesis found
# "\x85" allowed by the document and refused by str.strip)
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
_NOT_BLANK = re.compile(NOT_BLANK)


def blank(text: str) -> bool:
    return _NOT_BLANK.search(text) is None

INLINE_CHARS = 1 << 14  # texts up to this are tokenised on the event loop: a thread hop costs more


async def off_the_loop_if_long(chars: int, work: Callable[[], Any]) -> Any:
    """`work()` (tokenising) inline for short texts; in a worker thread for long ones, so that a
    megabyte prompt does not stop the server answering everyone else, health included."""
    if chars <= INLINE_CHARS:
        return work()
    return await asyncio.to_thread(work)


def unsupported_field(name: str) -> str:
    """The one message for a request field this runtime does not implement (JSON or form): a 400
    naming it, as OpenAI's API answers an unknown parameter, rather than an answer that ignored it."""
    return f"Unrecognized request argument supplied: {name} (this runtime does not implement it)"


def refuse_unknown_fields(form, known: tuple[str, ...]) -> None:
    """A form whose fields are not all in `known` is refused naming the first other one."""
    unknown = [name for name in form.keys() if name not in known]
    if unknown:
        raise ApiError(400, unsupported_field(unknown[0]), param=unknown[0])


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


@dataclass
class ServedModel:
    name: str
    profile_id: str
    workspace: Path  # the profile's files (tokenizer, vocabulary) the routes read
    info: dict  # its model_info.json

    @property
    def max_batch(self) -> int:
        return max(1, int((self.info.get("serving") or {}).get("max_batch_size") or 1))

    @property
    def max_tokens(self) -> int:
        return int((self.info.get("runtime") or {}).get("max_sequence_length") or 512)


class Metrics:
    """The runtime's own metrics; tasks add theirs to `registry`."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("nimbuild_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("nimbuild_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry)
        self.ready = Gauge("nimbuild_triton_ready", "1 when Triton reports the model ready", registry=self.registry)
        self.restarts = Gauge("nimbuild_triton_restarts", "Times Triton was restarted", registry=self.registry)
        # What a HorizontalPodAutoscaler scales on (nimbuild k8s renders one): NIM for LLMs' name for
        # it, so a Prometheus Adapter rule written for NIMs reads it unchanged
        self.in_flight = Gauge("num_requests_running", "Task requests being served now (HTTP and gRPC; "
                               "health, models and metrics not counted)", registry=self.registry)


# paths that are not the task's work: probes and scrapes must not look like load
UNCOUNTED = ("/v1/health/", "/v1/metrics", "/v1/models")


# Triton's gRPC channel: messages of any size (tritonclient's default), and reconnection within a
# second once a restarted Triton listens again (gRPC's default backoff grows to two minutes, and
# every inference would fail meanwhile).
GRPC_CHANNEL = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]

# A task's routes: (app, served model, triton, state, metrics) -> None. `state` holds the shared
# clients: "grpc" (Triton's asyncio gRPC client, which every task's inference goes through: the only
# one that carries decoupled streams, and cheaper per call than its HTTP one) and "http" (httpx, for
# Triton's metrics); and "on_stop", where a task adds what ends its open-ended work (live token
# streams) once the runtime is told to stop, before in-flight requests are waited for.
STOP_HOOK_SECONDS = 5.0
AddRoutes = Callable[[FastAPI, ServedModel, Any, dict, Metrics], None]


def create_app(model: ServedModel, triton, add_routes: AddRoutes, front_ends: list | None = None) -> FastAPI:
    """`triton` is a runtime_min.triton.TritonServer (or anything with .url, .grpc_port, .ready,
    .metrics_port, .restarts).
    `front_ends`: others served from this event loop (the gRPC one), started with the shared
    clients once they exist and stopped before them."""
    metrics = Metrics()
    state: dict[str, Any] = {"on_stop": []}

    async def lifespan(app):
        import tritonclient.grpc.aio as triton_grpc

        state["in_flight"] = metrics.in_flight  # the gRPC front end counts its calls in it too
        state["http"] = httpx.AsyncClient(timeout=5.0)
        state["grpc"] = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}", channel_args=GRPC_CHANNEL)
        for front_end in front_ends or []:
            await front_end.start(state)
        # what tasks keep doing while the API runs (an LLM's look at NIM_PEFT_SOURCE for adapters)
        background = [asyncio.ensure_future(start()) for start in state.get("background", [])]
        yield
        for task in background:
            task.cancel()
        for front_end in front_ends or []:
            await front_end.stop()
        await state["http"].aclose()
        await state["grpc"].close()

    app = FastAPI(title="runtime_min", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.openapi = lambda: openapi_document(app, model.name)

    app.add_middleware(_Observe, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        errors = error.errors()
        # our own checks (a lone surrogate) say more than the union branch that failed first
        first = next((e for e in errors if e.get("type") == "value_error"), errors[0] if errors else {})
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            return _error(ApiError(400, f"the body is not valid JSON: {reason}".rstrip(": ")))
        # the location without pydantic's names for union branches ("function-after[...]")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p))
        if first.get("type") == "extra_forbidden":  # a field this runtime does not implement: never ignored
            return _error(ApiError(400, unsupported_field(where), param=where))
        return _error(ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        # FastAPI's and Starlette's own (routing, a body that cannot be parsed) in the same shape as ours
        if error.status_code == 404:
            return _error(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))
        if error.status_code == 405:
            # with Starlette's Allow header: RFC 9110 requires a 405 to list the methods (schemathesis found it)
            return _error(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                   code="method_not_allowed"), headers=error.headers)
        if error.status_code == 413:
            return _error(ApiError(413, str(error.detail), code="request_too_large"))
        detail = error.detail if isinstance(error.detail, str) else "invalid request"
        return _error(ApiError(error.status_code, f"{detail} (is it valid JSON in UTF-8?)" if error.status_code == 400
                               else detail))

    @app.get("/v1/health/live")
    async def live():
        return {"object": "health.response", "message": "Service is live."}

    @app.get("/v1/health/ready", responses={503: {"description": "Triton is not ready"}})
    async def ready():
        if await _triton_ready(state, triton, model.name):
            metrics.ready.set(1)
            return {"object": "health.response", "status": "ready", "message": "Service is ready."}
        metrics.ready.set(0)
        return _error(ApiError(503, "Triton is not ready", kind="service_unavailable", code="not_ready"))

    @app.get("/v1/models")
    async def models():
        base = {"id": model.name, "object": "model", "created": 0, "owned_by": "nimbuild", "root": model.name,
                "profile_id": model.profile_id}
        # what a task serves beside the base (an LLM's LoRA adapters: vLLM's entries, parent = the base)
        more = [entry for listed in state.get("more_models", []) for entry in listed()]
        return {"object": "list", "data": [base, *more]}

    @app.get("/v1/metrics", response_class=PlainTextResponse)
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

    async def begin_stop() -> None:
        """The tasks' stop hooks, each bounded: a stop must be prompt whatever state Triton is in.
        From here on a request that fails was ended by the stop, whatever error its channel gave."""
        state["stopping"] = True
        for hook in state["on_stop"]:
            try:
                await asyncio.wait_for(hook(), STOP_HOOK_SECONDS)
            except Exception as e:  # Triton gone, or slow: the stop goes on
                log.warning("stopping %s: %s", getattr(hook, "__name__", hook), str(e) or type(e).__name__)

    app.state.begin_stop = begin_stop
    add_routes(app, model, triton, state, metrics)
    return app


# OpenAI's error body, which every error of every task has (`_error`)
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
# what any task's POST may answer besides its success
POST_ERRORS = {"400": "The request is malformed, or asks what this model cannot do",
               "404": "The model named is not the one served, or the route needs another profile",
               "413": f"The body is over {MAX_BODY_BYTES} bytes", "503": "Triton is not ready, or failed the request"}


def openapi_document(app: FastAPI, served: str) -> dict:
    """FastAPI's OpenAPI document, made true of what the runtime answers: every error in OpenAI's
    shape under the status it is sent with (a body that does not validate is a 400 here, not
    FastAPI's 422). Routes that read their body themselves (forms, raw audio) describe it in their
    own `openapi_extra`. A request's `model` can only be the one served (any other is a 404): the
    document says so, which lets a generated request reach past that check."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    for schema in schemas.values():
        named = (schema.get("properties") or {}).get("model")
        if isinstance(named, dict) and named.get("type") == "string":
            named["enum"] = [served]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in (POST_ERRORS.items() if method == "post" else ()):
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = error
    app.openapi_schema = document
    return document


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
        if length.isdigit() and int(length) > MAX_BODY_BYTES:  # refused before a byte of it is read
            self.metrics.requests.labels(endpoint, "413").inc()
            return await _error(ApiError(413, str(BodyTooLarge().detail), code="request_too_large"))(
                scope, receive, send)
        start = time.perf_counter()
        received = 0
        counted = not endpoint.startswith(UNCOUNTED)

        async def limited():
            # the one limit for every body: counted as it arrives, so a chunked one is held to it too
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise BodyTooLarge()
            return message

        async def observed(message):
            if message["type"] == "http.response.start":
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        if not counted:
            return await self.app(scope, limited, observed)
        self.metrics.in_flight.inc()
        try:  # until the whole response is sent: a streamed completion is in flight while it streams
            await self.app(scope, limited, observed)
        finally:
            self.metrics.in_flight.dec()


def _error(error: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=error.status, headers=headers, content={"error": {
        "message": error.message, "type": error.kind, "param": error.param, "code": error.code}})


def require_ready(triton) -> None:
    if not triton.ready.is_set():
        raise ApiError(503, "the model is not ready (Triton is restarting)", kind="service_unavailable", code="not_ready")


def token_inputs(encodings, input_names: list[str]) -> list:
    """Tokenised texts (or pairs) as a Triton model's token inputs over gRPC: ids, attention mask
    and token types, right-padded with zeros to the longest, those of `input_names` the model takes."""
    import numpy as np
    import tritonclient.grpc.aio as triton_grpc

    longest = max(len(e.ids) for e in encodings)
    rows = {"input_ids": lambda e: e.ids, "attention_mask": lambda e: e.attention_mask, "token_type_ids": lambda e: e.type_ids}
    inputs = []
    for name in input_names:
        array = np.array([list(rows[name](e)) + [0] * (longest - len(e.ids)) for e in encodings], dtype=np.int64)
        tensor = triton_grpc.InferInput(name, array.shape, "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def triton_infer(client, model_name: str, inputs: list, outputs: list, **options):
    """One inference over a Triton client (HTTP or gRPC, asyncio); any failure is a 503 with the
    reason, never a 500."""
    from tritonclient.utils import InferenceServerException

    try:
        return await client.infer(model_name, inputs, outputs=outputs, **options)
    except (InferenceServerException, OSError) as e:
        raise ApiError(503, f"inference failed: {e}", kind="service_unavailable", code="inference_failed") from None
    except Exception as e:  # aiohttp's connection errors while Triton restarts
        raise ApiError(503, f"inference failed: {type(e).__name__}", kind="service_unavailable", code="inference_failed") from None


async def _triton_ready(state, triton, model_name: str) -> bool:
    """Ready over the gRPC channel inference uses: after a Triton restart, HTTP answers before the
    channel has reconnected, and readiness must not say ready before requests work."""
    if not triton.ready.is_set():
        return False
    try:
        return bool(await state["grpc"].is_model_ready(model_name, client_timeout=2))
    except Exception:  # InferenceServerException or grpc's own while the channel reconnects
        return False

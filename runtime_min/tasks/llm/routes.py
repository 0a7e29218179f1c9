"""OpenAI-shaped `/v1/completions` and `/v1/chat/completions` over the decoupled Triton LLM model.

The prompt is rendered (chat template, as transformers renders it: Jinja in a sandbox) and
tokenised here, so a prompt over the profile's context is refused with a 400 before any work is
queued. Token ids go to Triton over a gRPC stream; each response is one token with its text
delta (detokenisation and stop sequences happen next to the generator, in the model). With
`stream: true` the deltas are forwarded as server-sent events as they arrive; a client that goes
away cancels its stream, and Triton drops the sequence from the batch.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal, Union

import numpy as np
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from runtime_min.http import ApiError, Metrics, ServedModel, Text, off_the_loop_if_long, require_ready

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_PROMPTS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def _documented(schema: dict) -> None:
    """What the OpenAPI document says of a request (tests/helpers/servers.py: schemathesis): the OpenAI
    fields this runtime takes only at their defaults say so, and the counts it holds prompts and
    stop sequences to. The limits that hang on the tokens (a prompt that fills the context,
    max_tokens beyond the room left) no schema can say; they are 400s with the reason."""
    fields = schema.get("properties", {})
    only = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "echo": False}
    for name, value in only.items():
        if name in fields:
            fields[name] = {"enum": [value], "default": value, "description": "supported at its default only"}
    if "logprobs" in fields:
        fields["logprobs"] = {"enum": [None, False], "default": None, "description": "not supported"}
    if "suffix" in fields:
        fields["suffix"] = {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}], "default": None}
    text = {"type": "string"}
    fields["stop"] = {"anyOf": [{"type": "null"}, text, {"type": "array", "items": text, "maxItems": MAX_STOP_SEQUENCES}]}
    if "prompt" in fields:
        fields["prompt"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_PROMPTS}]}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_documented)

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[Text, list[Text], None] = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 63)  # Triton's INT64; beyond it was a 500
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    user: str | None = None
    # vLLM's and NIM's extension: generate through end-of-sequence tokens (benchmarks use it to get
    # exactly max_tokens)
    ignore_eos: bool = False


class CompletionRequest(_Sampling):
    prompt: Union[Text, list[Text]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Text = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[ContentPart], None] = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class LlmMetrics:
    def __init__(self, registry):
        self.prompt_tokens = Counter("nimbuild_prompt_tokens_total", "Prompt tokens of completions", registry=registry)
        self.completion_tokens = Counter("nimbuild_completion_tokens_total", "Tokens generated", registry=registry)
        self.first_token = Histogram("nimbuild_time_to_first_token_seconds", "Time from request to first token",
                                     buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)


# a whole answer, or server-sent events when the request says stream
ANSWERS = {200: {"description": "The completion (JSON), or its chunks as server-sent events when stream is true",
                 "content": {"application/json": {}, "text/event-stream": {}}}}


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, runtime_metrics: Metrics) -> None:
    from tokenizers import Tokenizer

    metrics = LlmMetrics(runtime_metrics.registry)

    tokenizer = Tokenizer.from_file(str(model.workspace / "tokenizer" / "tokenizer.json"))
    config = _tokenizer_config(model)  # read once: the template and its special tokens serve every request
    template = _chat_template(model, config)
    special = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token")}
    context = model.max_tokens

    async def stop_generations() -> None:
        await _stop_all(state, model)

    state["on_stop"].append(stop_generations)

    # no text longer than this many characters fits the context: no token covers more characters
    # than the vocabulary's longest entry (x2: a normaliser may fold characters), so a longer prompt
    # is refused before the tokenizer spends seconds on it
    most_chars = 2 * context * max(map(len, tokenizer.get_vocab()))

    async def tokens(text: str, index: int = 0, **options) -> list[int]:
        if len(text) > most_chars:
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} has {len(text)} characters, more than "
                                f"this model's {context}-token context can hold", param="prompt",
                           code="context_length_exceeded")
        return await off_the_loop_if_long(len(text), lambda: tokenizer.encode(text, **options).ids)

    def prepare(body: _Sampling, ids: list[int], max_tokens: int | None, index: int = 0) -> tuple[list[int], int]:
        if not ids:  # the generator needs a token to start from; an empty prompt is the caller's mistake
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} is empty (no tokens); give at least one token",
                           param="prompt")
        if len(ids) >= context:
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} has {len(ids)} tokens; this model's context is "
                                f"{context} tokens, and at least one must be left to generate",
                           param="prompt", code="context_length_exceeded")
        room = context - len(ids)
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens is {max_tokens}, but the prompt leaves room for {room} of this model's "
                                f"{context}-token context", param="max_tokens", code="context_length_exceeded")
        return ids, max_tokens or room

    def check(body: _Sampling) -> None:
        if body.model != model.name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        unsupported = [name for name, bad in (("n", body.n != 1), ("logprobs", body.logprobs not in (None, False)),
                                              ("presence_penalty", body.presence_penalty != 0),
                                              ("frequency_penalty", body.frequency_penalty != 0)) if bad]
        if unsupported:
            raise ApiError(400, f"{unsupported[0]} is not supported by this runtime", param=unsupported[0])
        if len(_stops(body)) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
        require_ready(triton)

    @app.post("/v1/completions", responses=ANSWERS)
    async def completions(body: CompletionRequest):
        check(body)
        if body.echo or body.suffix:
            raise ApiError(400, f"{'echo' if body.echo else 'suffix'} is not supported by this runtime",
                           param="echo" if body.echo else "suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"give 1 to {MAX_PROMPTS} prompts", param="prompt")
        jobs = [prepare(body, await tokens(p, i), body.max_tokens, i) for i, p in enumerate(prompts)]
        reply = Reply("cmpl", "text_completion", model.name, chat=False)
        if body.stream:
            return _sse(reply.stream(_merged(state, model, jobs, body, metrics), len(jobs), _usage_wanted(body),
                                     sum(len(ids) for ids, _ in jobs)))
        return await reply.whole(_merged(state, model, jobs, body, metrics), [len(ids) for ids, _ in jobs])

    @app.post("/v1/chat/completions", responses=ANSWERS)
    async def chat_completions(body: ChatRequest):
        check(body)
        if template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
        text = _render(template, body.messages, special)
        ids = await tokens(text, add_special_tokens=False)
        jobs = [prepare(body, ids, body.max_completion_tokens or body.max_tokens)]
        reply = Reply("chatcmpl", "chat.completion", model.name, chat=True)
        if body.stream:
            return _sse(reply.stream(_merged(state, model, jobs, body, metrics), 1, _usage_wanted(body), len(ids)))
        return await reply.whole(_merged(state, model, jobs, body, metrics), [len(ids)])


class Reply:
    """Builds OpenAI's response objects, whole or as stream chunks, from (index, text, finish) events."""

    def __init__(self, prefix: str, kind: str, model: str, chat: bool):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind, self.model, self.chat = kind, model, chat
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = self.kind + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, index: int, text: str | None, finish: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}

    async def whole(self, events: AsyncIterator, prompt_tokens: list[int]) -> dict:
        texts = [""] * len(prompt_tokens)
        finishes: list[str | None] = [None] * len(prompt_tokens)
        generated = 0
        async for index, text, finish in events:
            texts[index] += text
            generated += 1
            finishes[index] = finish or finishes[index]
        choices = [self._choice(i, t, f, chunk=False) for i, (t, f) in enumerate(zip(texts, finishes))]
        return {**self._envelope(choices, chunk=False), "usage": _usage(sum(prompt_tokens), generated)}

    async def stream(self, events: AsyncIterator, count: int, want_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:
        if self.chat:
            yield _event(self._envelope([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                          "finish_reason": None} for i in range(count)], chunk=True))
        generated = 0
        async for index, text, finish in events:
            generated += 1
            if text or finish:
                yield _event(self._envelope([self._choice(index, text, finish, chunk=True)], chunk=True))
        if want_usage:
            yield _event({**self._envelope([], chunk=True), "usage": _usage(prompt_tokens, generated)})
        yield "data: [DONE]\n\n"


async def _merged(state: dict, model: ServedModel, jobs: list[tuple[list[int], int]], body: _Sampling,
                  metrics: LlmMetrics) -> AsyncIterator[tuple[int, str, str | None]]:
    """Events of every prompt's generation, interleaved as they arrive: (prompt index, text, finish)."""
    if len(jobs) == 1:
        async for text, finish in _generate(state, model, *jobs[0], body, metrics):
            yield 0, text, finish
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def run(index, ids, max_tokens):
        try:
            async for text, finish in _generate(state, model, ids, max_tokens, body, metrics):
                await queue.put((index, text, finish))
        except BaseException as e:
            await queue.put(e)
            raise
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(run(i, ids, n)) for i, (ids, n) in enumerate(jobs)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


async def _generate(state: dict, model: ServedModel, ids: list[int], max_tokens: int, body: _Sampling,
                    metrics: LlmMetrics) -> AsyncIterator[tuple[str, str | None]]:
    """One prompt through the Triton model: (text delta, finish reason or None) per token."""
    import tritonclient.grpc.aio as triton_grpc

    inputs = [_tensor(triton_grpc, "input_ids", np.array([ids], np.int64), "INT64"),
              _tensor(triton_grpc, "max_tokens", np.array([[max_tokens]], np.int32), "INT32"),
              _tensor(triton_grpc, "temperature", np.array([[body.temperature]], np.float32), "FP32"),
              _tensor(triton_grpc, "top_p", np.array([[body.top_p]], np.float32), "FP32")]
    if body.seed is not None:
        inputs.append(_tensor(triton_grpc, "seed", np.array([[body.seed]], np.int64), "INT64"))
    if body.ignore_eos:
        inputs.append(_tensor(triton_grpc, "ignore_eos", np.array([[True]], np.bool_), "BOOL"))
    stops = _stops(body)
    if stops:
        inputs.append(_tensor(triton_grpc, "stop", np.array([[s.encode() for s in stops]], np.object_), "BYTES"))

    async def request():
        yield {"model_name": model.name, "inputs": inputs, "request_id": uuid.uuid4().hex}

    start = time.perf_counter()
    metrics.prompt_tokens.inc(len(ids))
    responses = state["grpc"].stream_infer(request())
    first, finished = True, False
    try:
        async for result, error in responses:
            if error is not None:
                finished = True  # an error is the request's final response (the model's, or "stopping")
                raise ApiError(503, error.message(), kind="service_unavailable",
                               code="inference_failed")
            if first:
                metrics.first_token.observe(time.perf_counter() - start)
                first = False
            metrics.completion_tokens.inc()
            finish = result.as_numpy("finish_reason").reshape(-1)[0].decode() or None
            finished = bool(finish)
            yield result.as_numpy("text").reshape(-1)[0].decode("utf-8"), finish
            if finish:
                return
        raise _failed(state, "generation ended without a finish reason (Triton stopped)")
    except ApiError:
        raise
    except Exception as e:  # gRPC errors while Triton restarts, or while the runtime stops
        raise _failed(state, f"generation failed: {type(e).__name__}") from None
    finally:
        await _close(responses, finished)


# model.py's words for a sequence the stop ended (it runs inside Triton and imports nothing from here)
STOPPING = "the server is stopping"


def _failed(state: dict, message: str) -> ApiError:
    """A stream that broke: once the runtime is stopping, that is why (its stop_all answers every
    live sequence, but a stream Triton's shutdown cut first fails on the channel instead, and the
    client is owed the same reason either way)."""
    if state.get("stopping"):
        message = STOPPING
    return ApiError(503, message, kind="service_unavailable", code="inference_failed")


async def _close(responses, finished: bool) -> None:
    """End a Triton stream. One whose final response came (a finish reason, or an error) is read to
    its end, which Triton closes it at: cancelling it then raced Triton's stream handler
    (CANCELLATION_ISSUED waiting for a callback that had already come), which kept the model
    referenced so that it never unloaded, and a stop waited 15 s for it (the stop test found it,
    one round in twelve). One still generating (its client hung up) is cancelled, which drops its
    sequence from the batch."""
    async def exhausted():
        async for _ in responses:
            pass

    if finished:
        try:
            await asyncio.wait_for(exhausted(), 2.0)
            return
        except Exception:  # not closed in time, or the channel failed: cancel it after all
            pass
    responses.cancel()


async def _stop_all(state: dict, model: ServedModel) -> None:
    """Tell the model to end every sequence (model.py's stop_all): each live stream gets an error
    event at once, and Triton is left nothing in flight to wait for when it is stopped. Without this
    a sequence whose client hung up just before the stop, before Triton saw the cancellation, kept
    Triton waiting for it (15 s in one run)."""
    import tritonclient.grpc.aio as triton_grpc

    if "grpc" not in state:  # stopped before the API started
        return
    inputs = [_tensor(triton_grpc, "input_ids", np.array([[0]], np.int64), "INT64"),
              _tensor(triton_grpc, "max_tokens", np.array([[1]], np.int32), "INT32"),
              _tensor(triton_grpc, "stop_all", np.array([[True]], np.bool_), "BOOL")]

    async def request():
        yield {"model_name": model.name, "inputs": inputs, "request_id": "stop-all"}

    responses = state["grpc"].stream_infer(request())
    answered = False
    try:
        async for _, error in responses:  # the model answers once every sequence has ended
            if error is not None:
                raise RuntimeError(error.message())
            answered = True
            return
    finally:
        await _close(responses, answered)


def _tensor(module, name: str, array: np.ndarray, dtype: str):
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _stops(body: _Sampling) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return [s for s in stops if s]


def _usage_wanted(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _sse(chunks: AsyncIterator[str]) -> StreamingResponse:
    """Server-sent events; an error after the stream has begun is sent as an error event (the
    status line has gone out already)."""
    async def guarded():
        try:
            async for chunk in chunks:
                yield chunk
        except ApiError as e:
            yield _event({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
            yield "data: [DONE]\n\n"

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chat_template(model: ServedModel, config: dict):
    """The checkpoint's chat template (chat_template.jinja, or tokenizer_config.json's), compiled in
    Jinja's sandbox as transformers does; None when the model has none."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folder = model.workspace / "tokenizer"
    source = None
    if (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    if not source:
        return None
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(source)


def _render(template, messages: list[Message], special: dict) -> str:
    plain = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # content parts: only text is meaningful to a text model
            if any(part.type != "text" for part in content):
                raise ApiError(400, "only text content parts are supported by this model", param="messages")
            content = "".join(part.text for part in content)
        plain.append({"role": m.role, "content": content or ""})
    try:
        return template.render(messages=plain, add_generation_prompt=True, bos_token=special.get("bos_token") or "",
                               eos_token=special.get("eos_token") or "")
    except Exception as e:  # a template that raises on these messages (e.g. roles it does not allow)
        raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None


def _tokenizer_config(model: ServedModel) -> dict:
    path = model.workspace / "tokenizer" / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}

"""One prompt's generation through the decoupled Triton model, over a gRPC stream: token ids and
sampling settings in, one response per token out; a client that goes away cancels its stream, and
Triton drops the sequence from the batch."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np
from prometheus_client import Counter, Histogram

from runtime_min.http import ApiError, ServedModel
from runtime_min.tasks.llm.schemas import SamplingFields, stops


class LlmMetrics:
    def __init__(self, registry):
        self.prompt_tokens = Counter("nimbuild_prompt_tokens_total", "Prompt tokens of completions", registry=registry)
        self.completion_tokens = Counter("nimbuild_completion_tokens_total", "Tokens generated", registry=registry)
        self.first_token = Histogram("nimbuild_time_to_first_token_seconds", "Time from request to first token",
                                     buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)


@dataclass
class Job:
    """One choice to generate: its prompt's ids, its token budget, and its seed (n choices of one
    seeded request take seed, seed + 1, ...)."""

    ids: list[int]
    max_tokens: int
    seed: int | None = None


@dataclass
class Piece:
    """One generated token of a choice: its text delta, the finish reason on the last, and with
    logprobs its log-probability and the likeliest alternatives as (token id, log-probability)."""

    text: str
    finish: str | None
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


async def merged(state: dict, model: ServedModel, jobs: list[Job], body: SamplingFields,
                 metrics: LlmMetrics, extra: dict | None = None) -> AsyncIterator[tuple[int, Piece]]:
    """Every choice's pieces, interleaved as they arrive: (choice index, piece). `extra` are
    controls beyond the body's own, checked by the routes already: the llguidance grammar every
    choice's output must match, the LoRA adapter."""
    if len(jobs) == 1:
        async for piece in _generate(state, model, jobs[0], body, metrics, extra):
            yield 0, piece
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def run(index, job):
        try:
            async for piece in _generate(state, model, job, body, metrics, extra):
                await queue.put((index, piece))
        except BaseException as e:
            await queue.put(e)
            raise
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(run(i, job)) for i, job in enumerate(jobs)]
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


async def _generate(state: dict, model: ServedModel, job: Job, body: SamplingFields,
                    metrics: LlmMetrics, extra: dict | None) -> AsyncIterator[Piece]:
    """One choice through the Triton model, a piece per token."""
    import tritonclient.grpc.aio as triton_grpc

    ids = job.ids
    controls = json.dumps({**body.controls(), **(extra or {})}).encode()
    inputs = [_tensor(triton_grpc, "input_ids", np.array([ids], np.int64), "INT64"),
              _tensor(triton_grpc, "max_tokens", np.array([[job.max_tokens]], np.int32), "INT32"),
              _tensor(triton_grpc, "temperature", np.array([[body.temperature]], np.float32), "FP32"),
              _tensor(triton_grpc, "top_p", np.array([[body.top_p]], np.float32), "FP32"),
              _tensor(triton_grpc, "sampling", np.array([[controls]], np.object_), "BYTES")]
    if job.seed is not None:
        inputs.append(_tensor(triton_grpc, "seed", np.array([[job.seed]], np.int64), "INT64"))
    if body.ignoring_eos():
        inputs.append(_tensor(triton_grpc, "ignore_eos", np.array([[True]], np.bool_), "BOOL"))
    sequences = stops(body)
    if sequences:
        inputs.append(_tensor(triton_grpc, "stop", np.array([[s.encode() for s in sequences]], np.object_), "BYTES"))

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
                message = error.message()
                if INVALID in message:  # the request's fault, found where the model reads it
                    raise ApiError(400, message.split(INVALID, 1)[1])
                raise ApiError(503, message, kind="service_unavailable", code="inference_failed")
            if first:
                metrics.first_token.observe(time.perf_counter() - start)
                first = False
            metrics.completion_tokens.inc()
            finish = result.as_numpy("finish_reason").reshape(-1)[0].decode() or None
            finished = bool(finish)
            yield _piece(result, finish)
            if finish:
                return
        raise _failed(state, "generation ended without a finish reason (Triton stopped)")
    except ApiError:
        raise
    except Exception as e:  # gRPC errors while Triton restarts, or while the runtime stops
        raise _failed(state, f"generation failed: {type(e).__name__}") from None
    finally:
        await _close(responses, finished)


# model.py's words for a sequence the stop ended, and the start of an error that is the request's
# fault (it runs inside Triton and imports nothing from here)
STOPPING = "the server is stopping"
INVALID = "invalid request: "


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


async def stop_all(state: dict, model: ServedModel) -> None:
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


def _piece(result, finish: str | None) -> Piece:
    piece = Piece(result.as_numpy("text").reshape(-1)[0].decode("utf-8"), finish,
                  int(result.as_numpy("token_id").reshape(-1)[0]))
    logprob = result.as_numpy("logprob")
    if logprob is not None:  # sent only where the request asked for logprobs
        piece.logprob = float(logprob.reshape(-1)[0])
        piece.top = list(zip(result.as_numpy("top_ids").reshape(-1).tolist(),
                             result.as_numpy("top_logprobs").reshape(-1).tolist()))
    return piece


def _tensor(module, name: str, array: np.ndarray, dtype: str):
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor

"""One prompt's generation through the decoupled Triton model, over a gRPC stream: token ids and
sampling settings in, one response per token out; a client that goes away cancels its stream, and
Triton drops the sequence from the batch."""

from __future__ import annotations

import asyncio
import time
import uuid
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


async def merged(state: dict, model: ServedModel, jobs: list[tuple[list[int], int]], body: SamplingFields,
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


async def _generate(state: dict, model: ServedModel, ids: list[int], max_tokens: int, body: SamplingFields,
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


def _tensor(module, name: str, array: np.ndarray, dtype: str):
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor

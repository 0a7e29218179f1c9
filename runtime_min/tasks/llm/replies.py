"""OpenAI's response objects for completions and chat completions: whole, or as server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from fastapi.responses import StreamingResponse

from runtime_min.http import ApiError


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


def usage_wanted(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def sse(chunks: AsyncIterator[str]) -> StreamingResponse:
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

"""OpenAI's response objects for completions and chat completions: whole, or as server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from runtime_min.http import ApiError
from runtime_min.tasks.llm.stream import Piece
from runtime_min.tasks.llm.tools import ToolFormat, ToolStream


class Reply:
    """Builds OpenAI's response objects, whole or as stream chunks, from (choice index, Piece) events.

    `token_text` turns a token id into the text OpenAI's logprobs name it by; `echoes` are the texts
    each choice starts with (completions' echo: its prompt); `tools`, the format a chat's tool calls
    come in, where the request offered tools (its calls are then read out of the text)."""

    def __init__(self, prefix: str, kind: str, model: str, chat: bool, token_text: Callable[[int], str],
                 echoes: list[str] | None = None, tools: ToolFormat | None = None):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind, self.model, self.chat = kind, model, chat
        self.created = int(time.time())
        self.token_text, self.echoes, self.tools = token_text, echoes, tools

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = self.kind + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, index: int, text: str | None, finish: str | None, chunk: bool, logprobs: dict | None) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        if chunk:
            return {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}

    def _logprobs(self, pieces: list[Piece], offset: int) -> dict | None:
        """OpenAI's logprobs object for these pieces (None where none were asked for): chat's
        `content` list, or completions' parallel lists with each token's character offset."""
        pieces = [p for p in pieces if p.logprob is not None]
        if not pieces:
            return None
        if self.chat:
            def entry(token: int, logprob: float) -> dict:
                text = self.token_text(token)
                return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

            return {"content": [{**entry(p.token, p.logprob), "top_logprobs": [entry(t, v) for t, v in p.top]}
                                for p in pieces], "refusal": None}
        tokens = [self.token_text(p.token) for p in pieces]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [p.logprob for p in pieces], "text_offset": offsets,
                "top_logprobs": [{self.token_text(t): v for t, v in p.top} for p in pieces]}

    async def whole(self, events: AsyncIterator, prompt_tokens: int, count: int) -> dict:
        texts = list(self.echoes or [""] * count)
        pieces: list[list[Piece]] = [[] for _ in range(count)]
        finishes: list[str | None] = [None] * count
        async for index, piece in events:
            texts[index] += piece.text
            pieces[index].append(piece)
            finishes[index] = piece.finish or finishes[index]
        start = [len(e) for e in self.echoes or [""] * count]
        choices = [self._choice(i, t, f, False, self._logprobs(pieces[i], start[i]))
                   for i, (t, f) in enumerate(zip(texts, finishes))]
        if self.tools:
            for choice, choice_pieces in zip(choices, pieces):
                self._read_calls(choice, choice_pieces)
        generated = sum(map(len, pieces))
        return {**self._envelope(choices, chunk=False), "usage": _usage(prompt_tokens, generated)}

    def _read_calls(self, choice: dict, pieces: list[Piece]) -> None:
        """A whole chat choice's tool calls, read out of its text into `tool_calls`."""
        reader = ToolStream(self.tools)
        content = "".join(reader.push(p.text, p.token) for p in pieces)
        rest, calls = reader.finish()
        if calls:
            choice["message"] = {"role": "assistant", "content": (content + rest) or None, "tool_calls": calls}
            choice["finish_reason"] = _finish_with_calls(choice["finish_reason"])

    async def stream(self, events: AsyncIterator, count: int, want_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:
        if self.chat:
            yield _event(self._envelope([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                          "finish_reason": None} for i in range(count)], chunk=True))
        offsets = [0] * count
        for i, echo in enumerate(self.echoes or []):
            yield _event(self._envelope([self._choice(i, echo, None, True, None)], chunk=True))
            offsets[i] = len(echo)
        generated = 0
        readers = [ToolStream(self.tools) for _ in range(count)] if self.tools else None
        async for index, piece in events:
            generated += 1
            if readers:
                for chunk in self._tool_chunks(readers[index], index, piece, offsets):
                    yield chunk
            elif piece.text or piece.finish or piece.logprob is not None:
                logprobs = self._logprobs([piece], offsets[index])
                offsets[index] += len(self.token_text(piece.token)) if logprobs else 0
                yield _event(self._envelope([self._choice(index, piece.text, piece.finish, True, logprobs)], chunk=True))
        if want_usage:
            yield _event({**self._envelope([], chunk=True), "usage": _usage(prompt_tokens, generated)})
        yield "data: [DONE]\n\n"

    def _tool_chunks(self, reader: ToolStream, index: int, piece: Piece, offsets: list[int]):
        """A piece of a chat that offered tools: content up to where a call may begin, then at the
        end each call whole (name and arguments in one delta, as OpenAI's stream allows), then the
        finish reason."""
        text = reader.push(piece.text, piece.token)
        calls = []
        if piece.finish:
            rest, calls = reader.finish()
            text += rest
        logprobs = self._logprobs([piece], offsets[index])
        offsets[index] += len(self.token_text(piece.token)) if logprobs else 0
        if text or logprobs:
            yield _event(self._envelope([self._choice(index, text, None, True, logprobs)], chunk=True))
        if calls:
            deltas = [{"index": k, **call} for k, call in enumerate(calls)]
            yield _event(self._envelope([{"index": index, "delta": {"tool_calls": deltas}, "logprobs": None,
                                          "finish_reason": None}], chunk=True))
        if piece.finish:
            finish = _finish_with_calls(piece.finish) if calls else piece.finish
            yield _event(self._envelope([self._choice(index, None, finish, True, None)], chunk=True))


def _finish_with_calls(finish: str | None) -> str | None:
    """OpenAI's finish reason for an answer that called tools (one cut short stays "length")."""
    return "tool_calls" if finish == "stop" else finish


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

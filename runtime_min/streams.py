"""Client streams (audio into ASR, text into TTS) read ahead of the work they feed, so that a stream's
bound is judged on what the client has sent, not on what has been processed so far.

Read in step with the work, a stream sent faster than it can be processed reached its bound only at
the processing rate: 16 MiB of audio pushed at once was refused after half a minute of decoding. Read
ahead, passing the bound ends the stream at the consumer's next step (one chunk or one sentence),
however far behind the work is. What is read ahead is held in memory, so that is bounded too
(`backlog_bytes`): beyond it reading waits for the work, as TCP would make the client wait.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, TypeVar

T = TypeVar("T")
BACKLOG_BYTES = 32 << 20  # per stream: what the client may be ahead of the work


class BoundPassed(Exception):
    """A stream went past a documented bound (audio seconds, characters): gRPC OUT_OF_RANGE, as
    Google's speech API answers a stream over its duration limit; HTTP a 400 or an error event.
    Each task's bound subclasses it and the task's own error class."""


async def read_ahead(source: AsyncIterator[T], size: Callable[[T], int], check: Callable[[T], None],
                     backlog_bytes: int = BACKLOG_BYTES) -> AsyncIterator[T]:
    """The items of `source`, in order. `check(item)` sees each one as it arrives and raises to end
    the stream (a bound passed): that error is raised at the consumer's next item, ahead of the
    items still waiting. Errors of `source` itself (a client's malformed message, a body over its
    limit) come the same way."""
    waiting: asyncio.Queue = asyncio.Queue()
    room = asyncio.Condition()
    state = {"held": 0, "failed": None}

    async def read() -> None:
        try:
            async for item in source:
                check(item)
                async with room:
                    await room.wait_for(lambda: state["held"] < backlog_bytes)
                    state["held"] += size(item)
                waiting.put_nowait(item)
        except Exception as e:  # ends the stream at the consumer's next item
            state["failed"] = e
        finally:  # however reading ended (a cancelled call included), the consumer is not left waiting
            waiting.put_nowait(_END)

    reader = asyncio.ensure_future(read())
    try:
        while state["failed"] is None:
            item = await waiting.get()
            if item is _END or state["failed"] is not None:  # a failure comes ahead of what still waits
                break
            async with room:
                state["held"] -= size(item)
                room.notify_all()
            yield item
        if state["failed"] is not None:
            raise state["failed"]
    finally:
        reader.cancel()
        try:
            await reader
        except (asyncio.CancelledError, Exception):
            pass


_END = object()

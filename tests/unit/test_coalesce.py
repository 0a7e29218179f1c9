"""The embeddings API's coalescing of concurrent requests into shared Triton calls (no server:
the call is a coroutine that records what it was given)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime_min.coalesce import Coalescer


class Calls:
    """Returns row i = [text id] for each encoding (ints); `gate` holds calls until released."""

    def __init__(self, fail: Exception | None = None):
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail = fail

    async def __call__(self, encodings: list[int]) -> np.ndarray:
        self.batches.append(list(encodings))
        await self.gate.wait()
        if self.fail:
            raise self.fail
        return np.array(encodings, dtype=np.float32)[:, None]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_lone_request_is_sent_at_once():
    async def main():
        calls = Calls()
        calls.gate.set()
        coalescer = Coalescer(calls, max_rows=8)
        rows = await coalescer.embed([1, 2])
        assert rows[:, 0].tolist() == [1, 2] and calls.batches == [[1, 2]]

    run(main())


def test_requests_arriving_during_a_call_share_the_next_one_and_get_their_own_rows():
    async def main():
        calls = Calls()
        coalescer = Coalescer(calls, max_rows=4)
        first = asyncio.create_task(coalescer.embed([0]))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(coalescer.embed(list(range(10 * k, 10 * k + size))))
                   for k, size in ((1, 2), (2, 1), (3, 2), (4, 1))]
        await asyncio.sleep(0)
        assert calls.batches == [[0]], "one call in flight; the others wait"
        calls.gate.set()
        results = await asyncio.gather(first, *waiting)
        # the waiting texts left in order, in as few calls as the row limit (4) allows
        assert calls.batches == [[0], [10, 11, 20], [30, 31, 40]]
        assert [r[:, 0].tolist() for r in results] == [[0], [10, 11], [20], [30, 31], [40]]

    run(main())


def test_a_failed_call_fails_every_request_it_carried_and_the_next_ones_still_go():
    async def main():
        calls = Calls(fail=OSError("Triton is down"))
        coalescer = Coalescer(calls, max_rows=8)
        first = asyncio.create_task(coalescer.embed([1]))
        await asyncio.sleep(0)
        second, third = asyncio.create_task(coalescer.embed([2])), asyncio.create_task(coalescer.embed([3]))
        await asyncio.sleep(0)
        calls.gate.set()
        for task in (first, second, third):
            with pytest.raises(OSError, match="Triton is down"):
                await task
        assert calls.batches == [[1], [2, 3]] and coalescer.busy == 0
        calls.fail = None
        assert (await coalescer.embed([4]))[:, 0].tolist() == [4]

    run(main())


def test_a_request_cancelled_while_waiting_is_not_sent():
    async def main():
        calls = Calls()
        coalescer = Coalescer(calls, max_rows=8)
        first = asyncio.create_task(coalescer.embed([1]))
        await asyncio.sleep(0)
        gone = asyncio.create_task(coalescer.embed([2]))
        kept = asyncio.create_task(coalescer.embed([3]))
        await asyncio.sleep(0)
        gone.cancel()  # its client disconnected
        calls.gate.set()
        assert (await first)[:, 0].tolist() == [1] and (await kept)[:, 0].tolist() == [3]
        assert calls.batches == [[1], [3]]

    run(main())

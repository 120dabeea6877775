"""``until_set``: the output side of an attach or streamed exec ends at a detach, even mid-wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from capsa.api.streams import until_set


async def _slow(closed: list[str], first: int = 2) -> AsyncIterator[int]:
    try:
        for i in range(first):
            yield i
        await asyncio.sleep(3600)     # a follower with nothing new, an exec that prints nothing
        yield 99
    finally:
        closed.append("closed")


def test_items_pass_through_until_they_end() -> None:
    async def main() -> list[int]:
        async def three() -> AsyncIterator[int]:
            for i in range(3):
                yield i
        return [i async for i in until_set(three(), asyncio.Event())]

    assert asyncio.run(main()) == [0, 1, 2]


def test_setting_the_event_ends_it_while_the_items_wait() -> None:
    async def main() -> tuple[list[int], list[str]]:
        stop, closed, got = asyncio.Event(), [], []
        items = _slow(closed)
        asyncio.get_running_loop().call_later(0.05, stop.set)
        async with asyncio.timeout(5):
            async for i in until_set(items, stop):
                got.append(i)
        await items.aclose()          # what the handler's finally does: the items are free to close
        return got, closed

    assert asyncio.run(main()) == ([0, 1], ["closed"])


def test_a_cancelled_call_leaves_the_items_free_to_close() -> None:
    async def main() -> list[str]:
        closed: list[str] = []
        items = _slow(closed)

        async def handler() -> None:
            try:
                async for _ in until_set(items, asyncio.Event()):
                    pass
            finally:
                await items.aclose()  # fails with "already running" if a step were left behind

        task = asyncio.create_task(handler())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return closed

    assert asyncio.run(main()) == ["closed"]

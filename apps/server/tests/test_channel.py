"""The worker-to-request channel: items in order, batches, errors, interruption."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mlx_harmony.server.channel import EventChannel


def test_items_from_another_thread_arrive_in_order_and_in_batches() -> None:
    async def main() -> tuple[list[int], int]:
        channel = EventChannel(asyncio.get_running_loop())

        def produce() -> None:
            for i in range(2000):
                channel.put(i)
                if i % 500 == 0:
                    time.sleep(0.01)
            channel.close()

        thread = threading.Thread(target=produce)
        thread.start()
        got: list[int] = []
        batches = 0
        while not channel.closed:
            batch = await channel.get_batch()
            batches += bool(batch)
            got.extend(batch)
        thread.join()
        return got, batches

    got, batches = asyncio.run(main())
    assert got == list(range(2000))
    assert 1 < batches < 2000  # several wake-ups, far fewer than items


def test_an_error_comes_after_the_items_sent_before_it() -> None:
    async def main() -> None:
        channel = EventChannel(asyncio.get_running_loop())
        channel.put("a")
        channel.close(ValueError("boom"))
        assert await channel.get_batch() == ["a"]
        with pytest.raises(ValueError, match="boom"):
            await channel.get_batch()
        assert channel.closed
        assert await channel.get_batch() == []

    asyncio.run(main())


def test_interrupt_wakes_a_waiting_reader_with_nothing() -> None:
    async def main() -> list[object]:
        channel = EventChannel(asyncio.get_running_loop())
        asyncio.get_running_loop().call_later(0.05, channel.interrupt)
        return await asyncio.wait_for(channel.get_batch(), 5)

    assert asyncio.run(main()) == []

"""The trio <-> asyncio bridge with plain asyncio coroutines (the gRPC side is covered by the integration tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import trio

from spegel.store.containerd.bridge import AsyncioThread, BridgeClosed


@pytest.fixture
def bridge() -> Iterator[AsyncioThread]:
    thread = AsyncioThread()
    yield thread
    thread.close()


async def test_run_returns_results_from_the_loop_thread(bridge: AsyncioThread) -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert await bridge.run(where) == "asyncio-bridge"
    assert bridge.call(lambda: 41 + 1) == 42


async def test_run_raises_the_coroutines_exception(bridge: AsyncioThread) -> None:
    async def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await bridge.run(fail)


async def test_many_concurrent_calls(bridge: AsyncioThread) -> None:
    results = []

    async def one(i: int) -> None:
        async def work() -> int:
            await asyncio.sleep(0.001 * (i % 7))
            return i

        results.append(await bridge.run(work))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
    assert sorted(results) == list(range(1000))


async def test_cancelling_trio_cancels_the_asyncio_task(bridge: AsyncioThread) -> None:
    outcome: list[str] = []
    finished = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            finished.set()

    with trio.move_on_after(0.05) as scope:
        await bridge.run(forever)
    assert scope.cancelled_caught
    assert await trio.to_thread.run_sync(finished.wait, 5)
    assert outcome == ["cancelled"]

    async def ok() -> str:
        return "still works"

    assert await bridge.run(ok) == "still works"


async def test_stream_delivers_in_order_with_a_bounded_window(bridge: AsyncioThread) -> None:
    emitted: list[int] = []

    async def produce(emit) -> None:
        for i in range(200):
            await emit(i)
            emitted.append(i)

    received = []
    with trio.fail_after(10):
        async with bridge.stream(produce, window=8) as items:
            first = await items.__anext__()
            await trio.sleep(0.1)  # the producer runs ahead only as far as the window allows
            assert len(emitted) <= 9
            received = [first] + [item async for item in items]
    assert received == list(range(200))


async def test_stream_raises_the_producers_error_after_its_items(bridge: AsyncioThread) -> None:
    async def produce(emit) -> None:
        await emit("a")
        raise ConnectionResetError("gone")

    got = []
    with pytest.raises(RuntimeError, match="mapped: gone"):
        async with bridge.stream(produce, map_error=lambda exc: RuntimeError(f"mapped: {exc}")) as items:
            async for item in items:
                got.append(item)
    assert got == ["a"]


async def test_leaving_a_stream_cancels_its_producer(bridge: AsyncioThread) -> None:
    finished = threading.Event()

    async def produce(emit) -> None:
        try:
            i = 0
            while True:
                await emit(i)
                i += 1
        finally:
            finished.set()

    for _ in range(20):
        async with bridge.stream(produce, window=4) as items:
            async for item in items:
                if item == 10:
                    break
        assert await trio.to_thread.run_sync(finished.wait, 5)
        finished.clear()


async def test_closed_bridge_refuses_calls() -> None:
    thread = AsyncioThread()
    thread.close()
    thread.close()

    async def nothing() -> None:
        pass

    with pytest.raises(BridgeClosed):
        await thread.run(nothing)

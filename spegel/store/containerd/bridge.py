"""Running asyncio coroutines (grpclib) from trio: one asyncio event loop in a dedicated thread.

Why this bridge. grpclib only runs on asyncio and the mirror runs on trio. Measured on this project:
trio-asyncio + grpclib costs about +150 us a call, and when trio cancels a stream that is driven message by
message (each `recv_message` a separate trio-asyncio hop) the HTTP/2 connection hangs for good; it works when
every call runs as ONE asyncio coroutine from start to end. grpcio's sync stubs in worker threads are robust,
but cancelling them needs an explicit `call.cancel()` and every stream pins a thread. So here every gRPC call
(unary or streaming) is one asyncio coroutine running to completion on a private asyncio loop in a daemon
thread; trio only waits for its result (or its messages) and never touches asyncio objects:

- `AsyncioThread.run(factory)`: submits `factory()` with `asyncio.run_coroutine_threadsafe`; the done
  callback wakes the waiting trio task through its `TrioToken`. If the trio task is cancelled, the asyncio
  task is cancelled (the concurrent future's `cancel()` is chained to `Task.cancel()` on the loop), so
  grpclib's own cancellation path resets that one HTTP/2 stream and the channel stays usable.
- `AsyncioThread.stream(factory)`: the coroutine gets an `emit(item)` callback; items cross to trio through a
  bounded trio memory channel, with an asyncio semaphore as the flow-control window (the asyncio side
  waits when trio has `window` unconsumed items). Leaving the `async with` (normally, by an error or by
  cancellation) cancels the asyncio coroutine the same way.

Callbacks that arrive after the trio run that made the call has finished are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")
Emit = Callable[[T], Awaitable[None]]

DEFAULT_WINDOW = 64


class BridgeClosed(RuntimeError):
    """The asyncio thread has been stopped: no more calls can run."""


def _wake(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object) -> None:
    """Run `fn(*args)` in the trio run of `token`, if that run still exists."""
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(fn, *args)


class AsyncioThread:
    """An asyncio event loop running in its own daemon thread, for coroutines submitted from trio.

    Create it from anywhere; `close()` stops the loop (cancelling what still runs) and joins the thread.
    It can serve several trio runs one after another (each call captures the current trio token).
    """

    def __init__(self, name: str = "asyncio-bridge") -> None:
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        if self._closed:
            coroutine.close()
            raise BridgeClosed("the asyncio bridge is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run the plain function `fn()` in the loop's thread and return its result; blocks the caller.

        For setup and teardown from synchronous code (objects such as grpclib channels must be made there).
        """
        if self._closed:
            raise BridgeClosed("the asyncio bridge is closed")

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    async def run(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `factory()` as one asyncio task and return its result (or raise its exception).

        Cancellation: cancelling the calling trio task cancels the asyncio task and returns at once; the
        asyncio side unwinds on its own (grpclib resets the call's stream).
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._submit(factory())
        future.add_done_callback(lambda _: _wake(token, done.set))
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        factory: Callable[[Emit[T]], Coroutine[Any, Any, None]],
        window: int = DEFAULT_WINDOW,
        map_error: Callable[[BaseException], BaseException] = lambda exc: exc,
    ) -> AsyncIterator[StreamReceiver[T]]:
        """Run `factory(emit)` as one asyncio task; what it `emit`s is received in order in trio.

        Yields a `StreamReceiver`: iterate it to get the items; iteration ends when the coroutine returns and
        raises its exception (passed through `map_error`) if it failed. At most `window` items wait in trio
        at any time. Leaving the block cancels the coroutine if it still runs.
        """
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[T](window)
        receiver: StreamReceiver[T] = StreamReceiver(receive, self._loop, asyncio.Semaphore(window))

        def deliver(item: T) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(item)  # never blocks: the window bounds what is in flight

        async def emit(item: T) -> None:
            await receiver.window.acquire()
            _wake(token, deliver, item)

        def finished(future: Future[None]) -> None:
            def close() -> None:
                if not future.cancelled():
                    error = future.exception()
                    receiver.error = None if error is None else map_error(error)
                send.close()

            _wake(token, close)

        future = self._submit(factory(emit))
        future.add_done_callback(finished)
        try:
            yield receiver
        finally:
            future.cancel()
            receive.close()

    def close(self) -> None:
        """Stop the loop (cancelling any running coroutine) and wait for the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


class StreamReceiver(Generic[T]):
    """The trio end of `AsyncioThread.stream`: an async iterator of the emitted items."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[T], loop: asyncio.AbstractEventLoop, window: asyncio.Semaphore
    ) -> None:
        self._receive = receive
        self._loop = loop
        self.window = window  # acquired on the asyncio side per item, released here when trio takes it
        self.error: BaseException | None = None

    def __aiter__(self) -> StreamReceiver[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from self.error.__cause__
            raise StopAsyncIteration from None
        self._loop.call_soon_threadsafe(self.window.release)
        return item

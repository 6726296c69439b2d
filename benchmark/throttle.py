"""A loopback TCP proxy that slows a server's answers down to a fixed rate: a slow upstream (watcher_bench, tests).

`ThrottledProxy(target, rate)` listens on a free 127.0.0.1 port and forwards every connection to `target`
(`host:port`). Requests go through at full speed; answers share one token bucket of `rate` bytes a second
across all connections (like one upstream link). Run `serve` in a nursery (`await nursery.start(proxy.serve)`);
cancelling it closes every connection.
"""

from __future__ import annotations

import trio

PIECE = 16 * 1024  # bytes forwarded per step: small enough for a smooth rate at a few MB/s


class ThrottledProxy:
    def __init__(self, target: str, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host.strip("[]"), int(port)
        self.rate = rate
        self.address = ""  # 127.0.0.1:PORT once serving
        self.bytes_sent = 0
        self._next_send = 0.0

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled; `started` with the proxy's `host:port`."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        task_status.started(self.address)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, False, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, True, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, throttled: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(PIECE):
                if throttled:
                    await self._wait_for_tokens(len(data))
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side closed: close both

    async def _wait_for_tokens(self, size: int) -> None:
        start = max(self._next_send, trio.current_time())  # this piece's slot on the shared link
        self._next_send = start + size / self.rate
        self.bytes_sent += size
        await trio.sleep_until(start)

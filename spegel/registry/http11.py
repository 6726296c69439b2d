"""A small HTTP/1.1 server for ASGI apps, on trio and h11, with the ASGI zero-copy send extension.

Why our own and not hypercorn: see README "Decisions" (hypercorn cannot send a file with `sendfile`, and under
quart-trio it never closes a connection after its first request). The app (quart-trio) still does routing,
headers and every body that is not a file.

Contract, per connection (one trio task each; requests on a connection are answered one after the other):
- The connection is closed when the client asks (`Connection: close`, or HTTP/1.0 without keep-alive), when
  the response says `Connection: close`, when no complete request head arrives within `keep_alive_timeout`
  (idle or slow clients), when a send makes no progress within `send_timeout` (a client that stops reading),
  when the client closes its side (the app is told `http.disconnect` and cancelled by it), when the request
  is malformed (answered 400/431 with an OCI error body first), and when the app fails or ends early.
- At most `max_connections` connections are open per server; more clients wait in the listen backlog. When
  `accept` fails for lack of file descriptors or memory, accepting pauses for 100 ms instead of failing.
- A connection dropped in the middle of a response is reset (SO_LINGER 0), not closed gracefully: the kernel
  does not keep sending its queued bytes to a client that may never read them.
- Cancelling `serve` closes every connection at once, whatever its client does: responses in flight are cut
  (clients resume with a Range request).
- `http.response.zerocopysend` (`file`: a file descriptor or an object with `fileno()`, `offset`, `count`):
  those bytes go from the file to the socket with `os.sendfile`, never through Python. A file that ends
  before `count` raises OSError (the connection is dropped: a short body is never padded).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote

import h11
import trio

from spegel.oci.errors import ErrorCode, error_body
from spegel.store.files import FileRegion

log = logging.getLogger("spegel.http")

ZERO_COPY = "http.response.zerocopysend"
Message = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send)

_READ_SIZE = 64 << 10
_SENDFILE_PIECE = 8 << 20  # most bytes one sendfile call may move before other tasks get a turn
_PIPELINED_LIMIT = 64 << 10  # bytes of a next request read ahead while a response is being sent
_LINGER = 1.0  # seconds a refused client's further bytes are read and dropped before the close
_ACCEPT_PAUSE = 0.1
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_LOG_INTERVAL = 10.0

# File descriptors a connection may hold: its socket and the blob file (or the peer connection) it sends.
FDS_PER_CONNECTION = 2
FDS_RESERVED = 64  # for the rest of the process: stores, router, metrics port, logs


def connection_bound(cap: int = 1024) -> int:
    """The most connections the registry port may hold within this process's file-descriptor limit
    (RLIMIT_NOFILE), so that the metrics port, the stores and the router keep descriptors of their own."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return cap
    return max(4, min(cap, (soft - FDS_RESERVED) // FDS_PER_CONNECTION))


@dataclass(frozen=True)
class Limits:
    keep_alive_timeout: float = 30.0  # time a connection may take to deliver a complete request head
    send_timeout: float = 30.0  # time a send may wait for the client to read
    max_connections: int = field(default_factory=connection_bound)
    max_request_head: int = 16 << 10  # bytes; a larger head is answered 431


class ClientGone(OSError):
    """Raised by `send` when the client closed the connection or read nothing for `send_timeout`."""


async def serve(
    app: ASGIApp,
    listeners: list[trio.SocketListener],
    limits: Limits,
) -> None:
    """Accept and serve connections on `listeners` until cancelled (see the module's contract)."""
    slots = trio.Semaphore(limits.max_connections)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, app, limits, slots, nursery)


async def _accept_loop(
    listener: trio.SocketListener, app: ASGIApp, limits: Limits, slots: trio.Semaphore, nursery: trio.Nursery
) -> None:
    logged_at = -_ACCEPT_LOG_INTERVAL
    while True:
        await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release()
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            if time.monotonic() - logged_at >= _ACCEPT_LOG_INTERVAL:
                logged_at = time.monotonic()
                log.warning("cannot accept connections", extra={"error": os.strerror(exc.errno or 0)})
            await trio.sleep(_ACCEPT_PAUSE)
            continue
        nursery.start_soon(_serve_connection, stream, app, limits, slots)


async def _serve_connection(stream: trio.SocketStream, app: ASGIApp, limits: Limits, slots: trio.Semaphore) -> None:
    connection = _Connection(stream, app, limits)
    try:
        await connection.run()
    finally:
        if connection.h11.our_state is h11.SEND_BODY:
            # a response cut short (client not reading, app failure, shutdown): reset the connection rather
            # than leave the kernel sending what is queued to a client that may never read it
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
        slots.release()


class _Connection:
    def __init__(self, stream: trio.SocketStream, app: ASGIApp, limits: Limits) -> None:
        self.stream, self.app, self.limits = stream, app, limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_head)
        self.client = _address(stream.socket.getpeername())
        self.server = _address(stream.socket.getsockname())
        self.head = False  # the current request is HEAD: its answer carries no body
        self.response_started = False
        self.response_done = False
        self.request_done = False
        self.pending = b""  # the response head, held back to go out with the first body bytes

    async def run(self) -> None:
        """Answer requests until the connection is to be closed (see the module's contract)."""
        try:
            while (request := await self._next_request()) is not None:
                await self._answer(request)
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _next_request(self) -> h11.Request | None:
        with trio.move_on_after(self.limits.keep_alive_timeout):
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, str(exc))
                return None
            return event if isinstance(event, h11.Request) else None
        return None

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            self.h11.receive_data(await self.stream.receive_some(_READ_SIZE))
        return cast(h11.Event | type[h11.PAUSED], event)

    async def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with an OCI error body and close, if a response can still be sent: for a request h11
        could not parse (400, 431), or one the app failed to answer (500)."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = error_body(ErrorCode.UNKNOWN if status >= 500 else ErrorCode.UNSUPPORTED, detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers += [(b"connection", b"close"), (b"date", _http_date())]
        response = h11.Response(status_code=status, headers=headers)
        parts = (self.h11.send(response), self.h11.send(h11.Data(data=body)), self.h11.send(h11.EndOfMessage()))
        await self._write(b"".join(part or b"" for part in parts))
        # lingering close: drop what the client still sends for a moment, as closing with unread bytes would
        # reset the connection, and the client could lose the answer
        with trio.move_on_after(_LINGER):
            await self.stream.send_eof()
            while await self.stream.receive_some(_READ_SIZE):
                pass

    async def _answer(self, request: h11.Request) -> None:
        self.head = request.method == b"HEAD"
        self.response_started = self.response_done = self.request_done = False
        try:
            await self.app(self._scope(request), self._receive, self._send)
        except Exception as exc:  # an app's failure costs its connection, never the server
            if not _client_gone(exc):
                log.warning("response failed", extra={"error": _describe(exc), "started": self.response_started})
        if not self.response_started:
            await self._refuse(500, "the server failed to answer")

    def _scope(self, request: h11.Request) -> Message:
        raw_path, _, query = request.target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": self.server,
            "extensions": {ZERO_COPY: {}},
        }

    async def _receive(self) -> Message:
        """The request body, then (once the body is complete) `http.disconnect` when the client closes its
        side; bytes of a pipelined next request read meanwhile are kept for the next cycle."""
        if not self.request_done:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError:
                return {"type": "http.disconnect"}
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.request_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}
        while not self.response_done and len(self.h11.trailing_data[0]) < _PIPELINED_LIMIT:
            try:
                data = await self.stream.receive_some(_READ_SIZE)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            self.h11.receive_data(data)
        else:
            await trio.sleep_forever()  # until the response ends and the app stops listening
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [*message.get("headers", ()), (b"date", _http_date())]
            self.response_started = True
            self.pending = self.h11.send(h11.Response(status_code=message["status"], headers=headers)) or b""
        elif kind == "http.response.body":
            body = message.get("body", b"")
            await self._write(self.h11.send(h11.Data(data=body)) if body and not self.head else None)
        elif kind == ZERO_COPY:
            if not self.head:
                await self._send_file(message)
        else:
            raise ValueError(f"unexpected ASGI message {kind!r}")
        if kind != "http.response.start" and not message.get("more_body", False):
            self.response_done = True
            await self._write(self.h11.send(h11.EndOfMessage()))

    async def _send_file(self, message: Message) -> None:
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        offset = os.lseek(fd, 0, os.SEEK_CUR) if offset is None else offset
        count = message.get("count")
        count = os.fstat(fd).st_size - offset if count is None else count
        # h11 frames the region by its len() and hands it back unchanged, for us to send (h11 docs, "sendfile")
        region = cast(bytes, FileRegion(fd, offset, count))
        for part in self.h11.send_with_data_passthrough(h11.Data(data=region)) or ():
            if isinstance(part, FileRegion):
                await self._sendfile(part)
            else:
                await self._write(part)

    async def _write(self, data: bytes | None) -> None:
        """Send `data` after the response head still held back (a head goes out with the first body bytes)."""
        if self.pending:
            data, self.pending = self.pending + (data or b""), b""
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout):
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:
                raise ClientGone("the client closed the connection") from None
            return
        raise ClientGone(f"the client read nothing for {self.limits.send_timeout} s")

    async def _sendfile(self, region: FileRegion) -> None:
        await self._write(None)  # the response head first
        sock = self.stream.socket
        offset, left = region.offset, region.count
        while left:
            try:
                sent = os.sendfile(sock.fileno(), region.fd, offset, min(left, _SENDFILE_PIECE))
            except BlockingIOError:
                with trio.move_on_after(self.limits.send_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise ClientGone(f"the client read nothing for {self.limits.send_timeout} s") from None
            except (BrokenPipeError, ConnectionResetError):
                raise ClientGone("the client closed the connection") from None
            if sent == 0:
                raise OSError(f"file ended at byte {offset}, {left} bytes short")
            offset += sent
            left -= sent
            await trio.lowlevel.checkpoint()


def _client_gone(exc: BaseException) -> bool:
    """Whether `exc` (or every exception in its group) only says the client went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions if not _client_gone(inner))
    return f"{type(exc).__name__}: {exc}"


def _address(sockaddr: Any) -> tuple[str, int] | None:
    return (sockaddr[0], sockaddr[1]) if isinstance(sockaddr, tuple) else None


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The `Date` header value (RFC 9110 §6.6.1), formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]

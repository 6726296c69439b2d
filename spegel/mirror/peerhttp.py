"""One HTTP/1.1 request to a peer mirror whose body is received into the caller's buffers.

Blob bodies from peers are the mirror's bulk traffic: a copy receives every byte straight into the buffer it
hashes and writes (`Copy.filling`), with `recv_into`, so no piece of the body becomes a Python object of its
own. httpx allocates a `bytes` per 64 KiB piece and parses each through three layers (README, "Decisions":
the proxy path cost ~6 CPU s per GB on httpx); manifests and everything small stay on httpx (`peers.py`).

Contract:
- `open_response` connects (within `connect_timeout`), sends the request with `Connection: close` and reads
  the response head (within `first_byte_timeout`); the head is parsed by h11 and bounded (`MAX_HEAD`). Every
  failure (refused, reset, timed out, malformed) raises `PeerError`; the socket is closed on every path,
  cancellation too.
- A body is framed by `Content-Length` only (a peer mirror never sends another framing: one that does is
  refused). A Content-Length that is not a number of bytes is refused in any answer, a HEAD's too.
- `wait_readable` waits (at most `read_timeout`) for body bytes, which `receive_available` then receives
  without waiting into the caller's buffer; it never reads past the body and raises `PeerError` when the
  peer closes early.
- One connection per request: blob transfers are long, and a connection that is never reused cannot carry
  a half-read body into the next request.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

import h11
import trio

MAX_HEAD = 16 << 10  # bytes of a response head
_READ_SIZE = 64 << 10


class PeerError(Exception):
    """A peer could not deliver what was asked: refused, timed out, answered an error or broke off."""


@dataclass(frozen=True)
class RequestTimeouts:
    connect: float
    first_byte: float  # from the request sent to the response head received
    read: float  # between pieces of the body


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as (host, port); ValueError when it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Response:
    """An open response: `status`, `headers` (names lower-case), `content_length` as declared (None when
    absent; of a HEAD answer too), and for a body, `length` bytes to receive."""

    def __init__(
        self,
        address: str,
        stream: trio.SocketStream,
        raw: socket.socket,
        response: h11.Response,
        early: bytes,
        head: bool,
        read: float,
    ) -> None:
        self.address = address
        self.status = response.status_code
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers}
        self.content_length = _content_length(address, self.headers)  # as declared (of a HEAD too)
        self.length = 0  # the body's bytes to receive
        if not head and self.status not in (204, 304):
            if "transfer-encoding" in self.headers:
                raise PeerError(f"{address}: body framed by Transfer-Encoding, not Content-Length")
            if self.content_length is None:
                raise PeerError(f"{address}: answer without a Content-Length")
            self.length = self.content_length
        if len(early) > self.length:
            _close(stream)
            raise PeerError(f"{address}: sent more than its Content-Length")
        self._stream, self._raw = stream, raw  # `raw`: the socket under `stream`, for recv_into
        self._early, self._read_timeout = memoryview(early), read
        self.received = 0

    @property
    def complete(self) -> bool:
        return self.received >= self.length

    async def wait_readable(self) -> None:
        """Return once body bytes (or the peer's close) can be received without waiting, or the body is complete.
        Raises PeerError when nothing comes for the read timeout."""
        if self._early or self.complete:
            return
        try:
            with trio.fail_after(self._read_timeout):
                await trio.lowlevel.wait_readable(self._stream.socket)
        except trio.TooSlowError:
            raise PeerError(f"{self.address}: sent nothing for {self._read_timeout} s") from None

    def receive_available(self, view: memoryview) -> int:
        """Receive into `view` the body bytes that arrived, without waiting: at most `len(view)` and never past the
        body's end; 0 when none arrived yet (or the body is complete). Raises PeerError when the peer closed
        the connection before the body's end or reset it."""
        want = min(len(view), self.length - self.received)
        if want <= 0:
            return 0
        if self._early:
            count = min(want, len(self._early))
            view[:count] = self._early[:count]
            self._early = self._early[count:]
        else:
            try:
                count = self._raw.recv_into(view, want, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return 0
            except OSError as exc:
                raise PeerError(f"{self.address}: {_describe(exc)}") from None
            if count == 0:
                raise PeerError(f"{self.address}: body ended at {self.received} of {self.length} bytes")
        self.received += count
        return count

    def close(self) -> None:
        """Close the connection (at once: a body not read to its end is dropped)."""
        _close(self._stream)


async def open_response(
    address: str, method: str, target: str, headers: dict[str, str], timeouts: RequestTimeouts
) -> Response:
    """Send `method target` to the peer at `address` and return its response, head read (see the contract)."""
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise PeerError(str(exc)) from None
    try:
        with trio.fail_after(timeouts.connect):
            stream, raw = await _connect(host, port)
    except trio.TooSlowError:
        raise PeerError(f"{address}: no connection within {timeouts.connect} s") from None
    except OSError as exc:
        raise PeerError(f"{address}: {_describe(exc)}") from None
    try:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        fields = [("Host", address), ("Connection", "close"), *headers.items()]
        request = connection.send(h11.Request(method=method, target=target, headers=fields)) or b""
        with trio.fail_after(timeouts.first_byte):
            await stream.send_all(request + (connection.send(h11.EndOfMessage()) or b""))
            response = await _read_head(address, connection, stream)
        early = _early_body(connection)
        return Response(address, stream, raw, response, early, method == "HEAD", timeouts.read)
    except trio.TooSlowError:
        _close(stream)
        raise PeerError(f"{address}: no answer within {timeouts.first_byte} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        _close(stream)
        raise PeerError(f"{address}: {_describe(exc)}") from None
    except BaseException:
        _close(stream)
        raise


async def _connect(host: str, port: int) -> tuple[trio.SocketStream, socket.socket]:
    """A TCP connection to `host:port` (its first address), as a trio stream and the socket beneath it."""
    family, kind, proto, _, sockaddr = (await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    raw = socket.socket(family, kind, proto)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock), raw


async def _read_head(address: str, connection: h11.Connection, stream: trio.SocketStream) -> h11.Response:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                raise PeerError(f"{address}: closed the connection before answering")
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            return event
        elif not isinstance(event, h11.InformationalResponse):
            raise PeerError(f"{address}: answered with {type(event).__name__}")


def _early_body(connection: h11.Connection) -> bytes:
    """The body bytes read along with the head: h11 holds them until asked."""
    data, _ = connection.trailing_data
    return bytes(data)


def _content_length(address: str, headers: dict[str, str]) -> int | None:
    """The declared Content-Length; None when there is none. PeerError when it is not a number of bytes."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise PeerError(f"{address}: answer without a valid Content-Length")
    return int(value)


def _close(stream: trio.SocketStream) -> None:
    stream.socket.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

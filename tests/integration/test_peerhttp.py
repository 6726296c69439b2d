"""`spegel.mirror.peerhttp` against scripted peers on real loopback sockets: a body received into the caller's
buffer exactly (bytes read with the head included, never past Content-Length), and every misbehaviour (early
close, stall, no answer, bad framing, refused connection) one `PeerError` with the socket closed."""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from spegel.mirror.peerhttp import MAX_HEAD, PeerError, RequestTimeouts, Response, open_response, split_address

FAST = RequestTimeouts(connect=1.0, first_byte=1.0, read=0.3)
Script = Callable[[trio.SocketStream], Awaitable[None]]


@contextlib.asynccontextmanager
async def _serve(script: Script) -> AsyncIterator[str]:
    """Yield the address of a peer that reads a request head and then runs `script` on the connection."""

    async def handle(stream: trio.SocketStream) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            data = await stream.receive_some(4096)
            if not data:
                return
            received += data
        with trio.move_on_after(5):
            await script(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        yield f"{host}:{port}"
        nursery.cancel_scope.cancel()


async def _refusal(script: Script, method: str = "GET") -> PeerError:
    """The error `open_response` raises for a peer that runs `script`."""
    async with _serve(script) as address:
        try:
            response = await open_response(address, method, "/v2/x/blobs/sha256:00", {}, FAST)
        except PeerError as exc:
            return exc  # returned, not raised through the server's nursery (which would wrap it in a group)
        response.close()
    raise AssertionError("the answer was accepted")


async def _receive_all(response: Response, piece: int = 7) -> bytes:
    buffer = memoryview(bytearray(piece))
    body = bytearray()
    while not response.complete:
        await response.wait_readable()
        count = response.receive_available(buffer)
        body += buffer[:count]
    return bytes(body)


def _head(length: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


async def test_body_arrives_whole_including_bytes_sent_with_the_head() -> None:
    body = bytes(range(256)) * 40

    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(_head(len(body)) + body[:100])  # part of the body in the head's packet
        await trio.sleep(0.05)
        await stream.send_all(body[100:])
        await trio.sleep(1)

    async with _serve(script) as address:
        response = await open_response(address, "GET", "/v2/x/blobs/sha256:00", {"Range": "bytes=0-"}, FAST)
        assert response.status == 200 and response.length == len(body)
        assert await _receive_all(response) == body
        assert response.receive_available(memoryview(bytearray(16))) == 0  # nothing read past the body
        response.close()


async def test_a_head_answer_has_no_body_to_receive() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(_head(1 << 30, b"Docker-Content-Digest: sha256:00\r\n"))

    async with _serve(script) as address:
        response = await open_response(address, "HEAD", "/v2/x/blobs/sha256:00", {}, FAST)
        assert response.complete and response.headers["docker-content-digest"] == "sha256:00"
        assert response.content_length == 1 << 30  # the blob's size, though no body follows
        response.close()


async def test_a_peer_that_closes_mid_body_raises_peer_error() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(_head(1000) + b"x" * 10)

    async with _serve(script) as address:
        response = await open_response(address, "GET", "/v2/x/blobs/sha256:00", {}, FAST)
        with pytest.raises(PeerError, match="body ended at 10 of 1000"):
            await _receive_all(response)
        response.close()


async def test_a_peer_that_stalls_mid_body_costs_the_read_timeout() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(_head(1000) + b"x" * 10)
        await trio.sleep_forever()

    async with _serve(script) as address:
        response = await open_response(address, "GET", "/v2/x/blobs/sha256:00", {}, FAST)
        started = trio.current_time()
        with pytest.raises(PeerError, match="sent nothing"):
            await _receive_all(response, piece=1000)
        assert trio.current_time() - started < FAST.read + 1
        response.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "Content-Length"),
        (b"NOT HTTP AT ALL\r\n\r\n", "RemoteProtocolError"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 8 * MAX_HEAD + b"\r\n\r\n", "RemoteProtocolError"),  # unbounded head
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "more than its Content-Length"),
        (b"", "closed the connection before answering"),
    ],
)
async def test_a_malformed_answer_is_one_peer_error(reply: bytes, error: str) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(reply)
        await trio.sleep(0.2)  # the whole reply arrives before the close

    assert error in str(await _refusal(script))


@pytest.mark.parametrize("length", [b"-5", b"1e3", b"0x10", b""])
async def test_a_head_answer_with_a_bad_length_is_a_peer_error(length: bytes) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\n")
        await trio.sleep(0.2)

    assert "Content-Length" in str(await _refusal(script, "HEAD"))


async def test_a_peer_that_never_answers_costs_the_first_byte_timeout() -> None:
    started = trio.current_time()
    assert "no answer within" in str(await _refusal(lambda stream: trio.sleep_forever()))
    assert trio.current_time() - started < FAST.first_byte + 1


async def test_a_refused_connection_and_a_bad_address_are_peer_errors() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(PeerError, match="ECONNREFUSED"):
            await open_response(f"127.0.0.1:{port}", "GET", "/", {}, FAST)
    with pytest.raises(PeerError, match="not a host:port"):
        await open_response("no-port", "GET", "/", {}, FAST)


def test_addresses_split_into_host_and_port() -> None:
    assert split_address("198.18.0.2:5000") == ("198.18.0.2", 5000)
    assert split_address("[::1]:30020") == ("::1", 30020)
    for bad in ("host", ":80", "host:", "host:0", "host:70000", "host:8x"):
        with pytest.raises(ValueError):
            split_address(bad)

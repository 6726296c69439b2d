"""A store that fails: every error is an OCI JSON answer with the right status (never HTML), a body that fails
after its head is cut (never padded), and the server keeps serving. Real HTTP server and sockets in this
process; the failures are injected into a real OCI layout store (a disk that is full or returns EIO cannot be
made on demand here), plus the zero-copy path checked at the ASGI level."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from spegel.oci.digest import Digest
from spegel.registry.app import create_app
from spegel.registry.backend import LocalBackend
from spegel.registry.http11 import ZERO_COPY
from spegel.registry.server import serve_app
from spegel.store.files import FileBlobReader
from spegel.store.layout import OCILayoutStore, write_layout

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = Digest.of(DATA)
MANIFEST_PATH = f"/v2/library/app/manifests/{Digest.of(b'{}')}"
BLOB_PATH = f"/v2/library/app/blobs/{DIGEST}"


class FailingStore(OCILayoutStore):
    """A layout store whose `open` fails with `errno_on_open`, or whose blobs fail with `errno_on_read` after
    their first `good_bytes`, read through the byte path (as content still arriving is)."""

    errno_on_open: int | None = None
    errno_on_read: int | None = None
    good_bytes = 0

    async def open(self, digest: Digest) -> FileBlobReader:
        if self.errno_on_open is not None:
            raise OSError(self.errno_on_open, os.strerror(self.errno_on_open))
        reader = await super().open(digest)
        if self.errno_on_read is None:
            return reader
        return FailingReader(reader.fileno(), reader.size, self.errno_on_read, self.good_bytes)


class FailingReader(FileBlobReader):
    ranged = False  # read through `chunks`, as content still arriving is

    def __init__(self, fd: int, size: int, error: int, good_bytes: int) -> None:
        super().__init__(fd, size)
        self.error, self.good_bytes = error, good_bytes

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        yield DATA[start : start + self.good_bytes]
        raise OSError(self.error, os.strerror(self.error))


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    write_layout(tmp_path, {DIGEST: DATA, Digest.of(b"{}"): b"{}"}, [])
    return tmp_path


async def serve(nursery: trio.Nursery, store: OCILayoutStore) -> str:
    urls: list[str] = await nursery.start(serve_app, create_app(LocalBackend(store), "docker.io"), "127.0.0.1:0")
    return urls[0]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errno.EIO, 500, "UNKNOWN"),
        (errno.ENOSPC, 507, "UNKNOWN"),
        (errno.EMFILE, 503, "UNAVAILABLE"),
        (errno.EACCES, 500, "UNKNOWN"),
    ],
)
async def test_store_errors_are_oci_json_and_the_server_survives(
    layout: Path, error: int, status: int, code: str
) -> None:
    store = FailingStore(layout)
    store.errno_on_open = error
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, store)
        async with httpx.AsyncClient(base_url=url) as client:
            for method in ("GET", "HEAD"):
                for path in (BLOB_PATH, MANIFEST_PATH):
                    response = await client.request(method, path)
                    assert response.status_code == status
                    assert response.headers["content-type"] == "application/json"
                    if method == "GET":
                        assert response.json()["errors"][0]["code"] == code
                        assert os.strerror(error) in response.json()["errors"][0]["detail"]
            store.errno_on_open = None  # the disk recovers: the same server answers
            assert (await client.get(BLOB_PATH)).content == DATA
        nursery.cancel_scope.cancel()


async def test_a_body_that_fails_after_its_head_is_cut_not_padded(layout: Path) -> None:
    store = FailingStore(layout)
    store.errno_on_read, store.good_bytes = errno.EIO, 1000
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, store)
        async with httpx.AsyncClient(base_url=url) as client:
            received = bytearray()
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):  # reset or short: never padded
                async with client.stream("GET", BLOB_PATH) as response:
                    assert response.status_code == 200
                    async for piece in response.aiter_raw():
                        received += piece
            assert bytes(received) == DATA[: len(received)] and len(received) < len(DATA)
            store.errno_on_read = None
            assert (await client.get(BLOB_PATH)).content == DATA
        nursery.cancel_scope.cancel()


async def test_complete_blobs_go_out_as_zero_copy_messages(layout: Path) -> None:
    """The app hands the server file regions (fd, offset, count) for a complete blob when the server offers
    the extension, and bytes when it does not; both cover exactly the range asked for."""
    app = create_app(LocalBackend(OCILayoutStore(layout)), "docker.io")

    async def answer(extensions: dict[str, Any]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": BLOB_PATH,
            "raw_path": BLOB_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"x"), (b"range", b"bytes=100-")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "extensions": extensions,
        }
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await trio.sleep_forever()
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == ZERO_COPY:
                os.fstat(message["file"])  # open while it is being sent
                message = {**message, "data": os.pread(message["file"], message["count"], message["offset"])}
            sent.append(message)

        await app(scope, receive, send)
        return sent

    zero_copy = await answer({ZERO_COPY: {}})
    assert zero_copy[0]["status"] == 206
    regions = [m for m in zero_copy if m["type"] == ZERO_COPY]
    assert regions and b"".join(m["data"] for m in regions) == DATA[100:]
    assert all(m["type"] != "http.response.body" or not m.get("body") for m in zero_copy)
    plain = await answer({})
    assert not any(m["type"] == ZERO_COPY for m in plain)
    assert b"".join(m.get("body", b"") for m in plain if m["type"] == "http.response.body") == DATA[100:]

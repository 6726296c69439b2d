"""`Copy.filling`: one pass over the bytes into the copy's file and its hasher, and how soon readers see them."""

from __future__ import annotations

import hashlib
import os

import trio

from spegel.mirror.copies import BATCH, Copy, CopyReader, Filler


async def _write(filler: Filler, piece: bytes) -> None:
    """Append `piece` the way a receiver does: into `space()`, then `commit`."""
    view = memoryview(piece)
    while view:
        space = await filler.space()
        count = min(len(space), len(view))
        space[:count] = view[:count]
        await filler.commit(count)
        view = view[count:]


def _file_bytes(copy: Copy) -> bytes:
    return os.pread(copy.fd, copy.size, 0)


async def test_a_piece_of_a_slow_stream_is_readable_before_more_arrive() -> None:
    """A follower of a download still in progress gets each piece as it lands: a reader of the copy must see
    the first piece while the writer waits for the next (a chain of mirrors would otherwise lag a batch per
    hop)."""
    copy = Copy(3 * BATCH, None)
    try:
        reader = CopyReader(copy)
        async with copy.filling(hashlib.sha256()) as filler:
            await _write(filler, b"first piece")
            with trio.fail_after(5):
                pieces = reader.chunks(0, copy.size - 1)
                assert await pieces.__anext__() == b"first piece"
                await pieces.aclose()
        await reader.aclose()
    finally:
        os.close(copy.fd)


async def test_bytes_land_in_order_and_hash_once_whatever_the_piece_sizes() -> None:
    data = bytes(range(256)) * ((2 * BATCH + 12345) // 256 + 1)
    sizes = [1, 7, BATCH - 8, BATCH, 3, 65536, BATCH + 1]
    copy = Copy(len(data), None)
    hasher = hashlib.sha256()
    try:
        async with copy.filling(hasher) as filler:
            offset = 0
            for i in range(10_000):
                if offset >= len(data):
                    break
                size = sizes[i % len(sizes)]
                await _write(filler, data[offset : offset + size])
                offset += size
                if i % 3 == 0:
                    await trio.sleep(0)  # let the worker go idle now and then: partial batches
        assert copy.written == len(data)
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert _file_bytes(copy) == data
    finally:
        os.close(copy.fd)

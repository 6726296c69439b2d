"""Peer blobs this mirror is copying now, readable by other mirrors while they grow.

A mirror copies a peer blob whole into an unlinked file before its containerd gets a byte (`PeerBlob.verified`).
While it does, that copy is the most advanced source of the blob on this node: other mirrors that follow this
node (download claims form chains) read it as it grows, instead of waiting for the copy to be verified and
sent on to containerd. They get unverified bytes, which is safe: each mirror verifies its own copy before its
containerd sees any of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Protocol

import trio

from spegel.oci.digest import Digest
from spegel.store.files import READ_SIZE, REGION_SIZE, FileRegion, read_at

BATCH = 1 << 20  # bytes hashed and written per worker-thread call, at most
EAGER_BATCH = 256 << 10  # bytes gathered that go to an idle worker at once (fewer wait up to EAGER_DELAY)
EAGER_DELAY = 0.02  # seconds


class Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    """`pwrite` all of `data` at `offset` (a short write is continued; a failed one raises OSError)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class Filler:
    """The caller's side of `Copy.filling`: `space()`, the free part of the batch being gathered, to receive
    into; then `commit(count)`, the first `count` bytes of that space are the copy's next bytes."""

    def __init__(
        self,
        full: trio.MemorySendChannel[tuple[bytearray, int, int]],
        free: trio.MemoryReceiveChannel[bytearray],
    ) -> None:
        self._full, self._free = full, free
        self._buffer: bytearray | None = None  # the batch being gathered
        self.count = 0  # its bytes
        self._offset = 0  # where they go in the copy
        self._since = 0.0  # when its first byte came
        self.idle = True  # the worker waits for a batch (set by the worker)
        self.busy = False  # the caller holds `space()` uncommitted, or is handing a batch over

    async def space(self) -> memoryview:
        """The free part of the batch being gathered (waiting for a free batch when there is none). Nothing may
        wait between this and the `commit` of what was received into it."""
        if self._buffer is None:
            self._buffer = await self._free.receive()
        self.busy = True
        return memoryview(self._buffer)[self.count :]

    async def commit(self, count: int) -> None:
        """The first `count` bytes of the last `space()` are the copy's next bytes."""
        if count and not self.count:
            self._since = trio.current_time()
        self.count += count
        due = self.count >= EAGER_BATCH or trio.current_time() - self._since >= EAGER_DELAY
        if self.count == BATCH or (self.idle and self.count and due):
            self.idle = False  # until the worker has it: the next bytes are gathered apart
            await self._full.send(self.take())
        self.busy = False

    def take(self) -> tuple[bytearray, int, int]:
        """The batch gathered so far, handed over: the next byte starts a new one."""
        assert self._buffer is not None
        batch = (self._buffer, self.count, self._offset)
        self._buffer, self._offset, self.count = None, self._offset + self.count, 0
        return batch


class Copy:
    """One copy in progress: an unlinked file of `size` bytes whose first `written` are filled in. `done` once
    it is verified or abandoned (`abandoned`), after which `written` no longer grows."""

    def __init__(self, size: int, directory: str | None) -> None:
        fd, path = tempfile.mkstemp(prefix="spegel-peer-", dir=directory)
        os.unlink(path)
        self.fd, self.size, self.written = fd, size, 0
        self.done, self.abandoned = False, False
        self.sources: set[str] = set()  # the addresses of the holders whose bytes it holds
        self._grown = trio.Event()

    @contextlib.asynccontextmanager
    async def filling(self, hasher: Hasher) -> AsyncIterator[Filler]:
        """Yield a `Filler`, through which the caller appends to the copy and to `hasher`, in order, in one pass
        over the bytes: it receives them straight into `space()` and says how many came with `commit(count)`.

        The bytes gather in two reused `BATCH` buffers. The worker hashes and writes one, in two threads at the
        same time (hashlib and `pwrite` release the GIL), while the caller receives into the other: hashing,
        writing and network I/O run side by side. A batch goes to the worker when it is full; a partial one when
        the worker is idle and the batch holds `EAGER_BATCH` bytes, or once its first byte is `EAGER_DELAY` old
        (the worker takes it then, unless the caller holds `space()` uncommitted). So a slow stream (a download
        still in progress upstream) lands within 20 ms and mirrors reading this copy as it grows lag by that,
        not by up to `BATCH` bytes per hop of a chain, while a fast one lands in batches of 256 KiB to 1 MiB (a
        worker call per 64 KiB piece cost 0.9 CPU s per GB more, mirror_bench). `written` grows as batches
        land. Leaving the block flushes the last batch and waits for it; cancellation waits for the batch in
        flight (at most one `BATCH`)."""
        full_send, full_receive = trio.open_memory_channel[tuple[bytearray, int, int]](1)
        free_send, free_receive = trio.open_memory_channel[bytearray](2)
        for _ in range(2):
            free_send.send_nowait(bytearray(BATCH))
        filler = Filler(full_send, free_receive)

        async def absorb() -> None:
            while True:
                with trio.move_on_after(EAGER_DELAY) as waited:
                    try:
                        batch, size, at = await full_receive.receive()
                    except trio.EndOfChannel:
                        return
                if waited.cancelled_caught:
                    if not filler.count or filler.busy:
                        continue
                    batch, size, at = filler.take()  # a slow stream's bytes, not left waiting for the next piece
                filler.idle = False
                view = memoryview(batch)[:size]
                async with trio.open_nursery() as both:  # two threads: the slower of the two sets the pace
                    both.start_soon(trio.to_thread.run_sync, hasher.update, view)
                    await trio.to_thread.run_sync(_write_all, self.fd, view, at)
                self.written = at + size
                self._signal()
                free_send.send_nowait(batch)
                filler.idle = True

        error: Exception | None = None  # raised by the block: re-raised as itself, not in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            nursery.start_soon(absorb)
            try:
                yield filler
                if filler.count:
                    await full_send.send(filler.take())
            except Exception as exc:
                error = exc
            finally:
                full_send.close()
        if error is not None:
            raise error

    def finish(self, abandoned: bool) -> None:
        self.done, self.abandoned = True, abandoned
        self._signal()

    async def wait_beyond(self, offset: int) -> None:
        """Return once more than `offset` bytes are written or the copy is done."""
        while self.written <= offset and not self.done:
            await self._grown.wait()

    def _signal(self) -> None:
        self._grown.set()
        self._grown = trio.Event()


class CopyReader:
    """A `BlobReader` of a `Copy`, on its own duplicate of the copy's file. Of a verified copy it is `ranged`
    and gives `regions` (sent with `sendfile`); of a copy in progress it is not, and follows the copy as it
    grows, raising OSError when the copy is abandoned before the bytes asked for were written."""

    def __init__(self, copy: Copy) -> None:
        self._copy, self._fd, self.size = copy, os.dup(copy.fd), copy.size
        self.ranged = copy.done and not copy.abandoned

    @property
    def peer(self) -> str | None:
        """The holders the copy's bytes came from (comma-separated addresses), None before the first piece."""
        return ",".join(sorted(self._copy.sources)) or None

    async def regions(self, start: int, end: int) -> AsyncIterator[FileRegion]:
        """Bytes `start..end` of a verified copy as `FileRegion`s, valid until `aclose()`."""
        for offset in range(start, end + 1, REGION_SIZE):
            yield FileRegion(self._fd, offset, min(REGION_SIZE, end + 1 - offset))

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        while offset <= end:
            await self._copy.wait_beyond(offset)
            if self._copy.written <= offset:
                raise OSError(f"the copy was abandoned at {self._copy.written} of {self.size} bytes")
            data = await read_at(self._fd, min(READ_SIZE, self._copy.written - offset, end - offset + 1), offset)
            offset += len(data)
            yield data

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Copies:
    """The copies of this mirror, by digest: the one in progress, or a verified one kept for requests that come
    soon after (a resume, another client), up to `keep` verified copies, the oldest dropped first. Readers
    hold their own file descriptor: dropping a copy never cuts a reader short."""

    def __init__(self, directory: str | None = None, keep: int = 4) -> None:
        self.directory, self.keep = directory, keep
        self._copies: dict[Digest, Copy] = {}
        self._started = trio.Event()

    def start(self, digest: Digest, size: int) -> Copy:
        self._drop(digest)
        copy = self._copies[digest] = Copy(size, self.directory)
        self._started.set()
        self._started = trio.Event()
        return copy

    def end(self, digest: Digest, copy: Copy, verified: bool) -> None:
        """`copy` is verified, or abandoned (then dropped: its readers get OSError past what it holds). Its
        copier calls this on every path, after it opened its own reader of a verified copy."""
        copy.finish(abandoned=not verified)
        if not verified or self._copies.get(digest) is not copy:  # abandoned, or replaced by a newer copy
            if self._copies.get(digest) is copy:
                del self._copies[digest]
            os.close(copy.fd)
            return
        kept = [d for d, c in self._copies.items() if c.done]
        for old in kept[: max(0, len(kept) - self.keep)]:
            self._drop(old)

    def open(self, digest: Digest) -> CopyReader | None:
        """A reader of the copy of `digest` in progress or verified, None when there is none."""
        copy = self._copies.get(digest)
        return CopyReader(copy) if copy is not None else None

    async def wait_open(self, digest: Digest) -> CopyReader:
        """A reader of the copy of `digest`, waiting (without bound: the caller bounds it) for one to start."""
        while (copy := self._copies.get(digest)) is None:
            await self._started.wait()
        return CopyReader(copy)

    async def open_verified(self, digest: Digest) -> CopyReader | None:
        """A reader of a verified copy of `digest`, waiting for the one in progress to end; None when there is
        none or it was abandoned."""
        copy = self._copies.get(digest)
        if copy is None:
            return None
        await copy.wait_beyond(copy.size)
        return self.open_done(digest) if self._copies.get(digest) is copy else None

    def open_done(self, digest: Digest) -> CopyReader | None:
        """A reader of the verified copy of `digest`, None when there is none (yet)."""
        copy = self._copies.get(digest)
        return CopyReader(copy) if copy is not None and copy.done and not copy.abandoned else None

    def _drop(self, digest: Digest) -> None:
        copy = self._copies.pop(digest, None)
        if copy is not None and copy.done:  # one in progress is closed by its copier (`end`)
            os.close(copy.fd)

"""Reading blobs from files: the `BlobReader` for content that lies complete on disk."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

# 1 MiB: with reads bounded by `read_at`, 1 MiB pieces served nearly as fast as 2 MiB ones (full GET 0.94-1.03x
# nginx vs 1.00-1.14x in benchmark/server_bench.py) and kept peak RSS ~12 MiB lower under 8 parallel streams;
# a cancelled stream stops within one piece.
READ_SIZE = 1 << 20
MAX_CONCURRENT_READS = 2
# 4 MiB: a server that sends regions with sendfile counts (and is cancelled) region by region.
REGION_SIZE = 4 << 20
_read_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("spegel_blob_reads")


async def read_at(fd: int, size: int, offset: int) -> bytes:
    """`os.pread(fd, size, offset)` in a worker thread; at most `MAX_CONCURRENT_READS` run at once (per trio run).

    Why bound them: each worker thread allocates what it reads from its own glibc malloc arena, which keeps the
    freed memory, so reads spread over many threads grow RSS by about a piece per thread. Measured with the
    registry alone and 8 parallel 200 MiB streams: peak RSS 118 MiB unbounded, 74 MiB with 2 reads at once.
    Two reads at once still outpace the network for content in the page cache (a 1 MiB read took ~0.2 ms).
    Cancellation waits for the read in flight (at most one piece).
    """
    try:
        limiter = _read_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_READS)
        _read_limiter.set(limiter)
    return await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=limiter)


@dataclass(frozen=True)
class FileRegion:
    """`count` bytes of the open file `fd` from `offset`: a piece of a blob that a server can send with
    `os.sendfile` without reading it. `len()` is the byte count."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


@runtime_checkable
class FileRegions(Protocol):
    """A `BlobReader` whose bytes lie in one file: `regions(start, end)` gives bytes `start..end` (inclusive)
    as `FileRegion`s, in order. Only a complete blob (`ranged`) may be sent that way: the file of content
    still arriving does not hold all its bytes yet."""

    def regions(self, start: int, end: int) -> AsyncIterator[FileRegion]: ...


class _Regions:
    """The regions of `FileBlobReader.regions`: an iterator object, not a generator, so a consumer that stops
    early leaves nothing to close."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd, self._offset, self._end = fd, start, end

    def __aiter__(self) -> _Regions:
        return self

    async def __anext__(self) -> FileRegion:
        if self._offset > self._end:
            raise StopAsyncIteration
        region = FileRegion(self._fd, self._offset, min(REGION_SIZE, self._end + 1 - self._offset))
        self._offset += region.count
        return region


class FileBlobReader:
    """A `BlobReader` over an open file descriptor of a complete blob of known size.

    The file is opened once; reads use `read_at` (`os.pread` in a worker thread), one `READ_SIZE` piece at a time, so
    cancelling the consumer stops reading within one piece. A file that is shorter than `size` (truncated
    underneath us) raises `OSError` rather than yielding short data.
    """

    ranged = True

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    @classmethod
    async def open(cls, path: str | os.PathLike[str], size: int | None = None) -> FileBlobReader:
        """Open `path` read-only; `size` defaults to the file's size. Raises OSError when it cannot."""
        fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        if size is None:
            size = os.fstat(fd).st_size
        return cls(fd, size)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        while offset <= end:
            want = min(READ_SIZE, end - offset + 1)
            data = await read_at(self._fd, want, offset)
            if not data:
                raise OSError(f"blob file ended at {offset} of {self.size} bytes")
            offset += len(data)
            yield data

    def regions(self, start: int, end: int) -> AsyncIterator[FileRegion]:
        """Bytes `start..end` (inclusive) as `FileRegion`s of at most `REGION_SIZE`, valid until `aclose()`; a
        sender must still check that the file holds them (it may have been truncated underneath us)."""
        return _Regions(self._fd, start, end)

    def fileno(self) -> int:
        return self._fd

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

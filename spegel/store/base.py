"""The content-store interface every store implements (OCI layout directory, containerd)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from spegel.oci.digest import Digest
from spegel.oci.manifest import Descriptor
from spegel.oci.reference import Reference

T = TypeVar("T")


class NotFound(LookupError):
    """The store does not hold the content or tag asked for."""


@dataclass(frozen=True)
class ContentInfo:
    """What a store knows of a blob without reading it."""

    digest: Digest
    size: int


@dataclass(frozen=True)
class StoredImage:
    """A tagged image a store holds: its reference (with tag) and the descriptor the tag points at."""

    reference: Reference
    target: Descriptor


class BlobReader(Protocol):
    """Read access to one blob. `size` is the blob's full size.

    `ranged` tells whether a request for the start of the blob may be answered 206 (which makes containerd
    open parallel chunk requests). It is False for content still arriving, answered 200 in one stream:
    containerd fails a whole pull when a later chunk fails after a 206, while a broken stream is resumed.

    `chunks(start, end)` yields the bytes `start..end` (inclusive) in order, in pieces of any size. It never
    yields bytes that are not the blob's: if the content is gone or short it raises `NotFound` (or OSError)
    instead. Cancelling the iteration, or closing it early, stops all reading at once.
    """

    size: int
    ranged: bool

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@contextlib.asynccontextmanager
async def closing(pieces: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """`pieces` (a `BlobReader.chunks` or `regions` iterator), closed on leaving the block however it is left
    (exhausted, broken off, an error, cancelled) when it is an async generator: its `finally` runs then, not
    when the garbage collector finds it unexhausted (trio warns of each such generator). Like
    `contextlib.aclosing`, for iterators that may not be generators."""
    try:
        yield pieces
    finally:
        if isinstance(pieces, AsyncGenerator):
            await pieces.aclose()


class ContentStore(Protocol):
    """The node's content, as a pull-only registry needs it. All calls raise `NotFound` for unknown content."""

    async def resolve(self, reference: Reference) -> Descriptor:
        """The descriptor a tagged reference `registry/repository:tag` points at."""
        ...

    async def describe(self, digest: Digest) -> ContentInfo:
        """Size of the blob with this digest."""
        ...

    async def open(self, digest: Digest) -> BlobReader:
        """Open a blob for ranged reads; the caller must `aclose()` it."""
        ...

    async def images(self) -> list[StoredImage]:
        """Every tagged image the store holds."""
        ...

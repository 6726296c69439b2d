"""Serving blobs this node is still downloading to peers that ask for them."""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

import trio

from spegel.oci.digest import Digest
from spegel.store.base import BlobReader, NotFound

POLL_INTERVAL = 0.01


class IngestStore(Protocol):
    async def open(self, digest: Digest) -> BlobReader: ...

    async def open_ingest(self, digest: Digest) -> BlobReader: ...


class IngestSource:
    """The mirror's `InProgressSource` over a store that exposes its downloads (containerd ingests).

    `open_in_progress(digest, wait)` returns the complete blob when it is committed, else a reader that follows
    the download once its first bytes are on disk. A download this node announced on a miss may not have
    started yet when a peer asks: the call then polls for up to `wait` seconds before answering NotFound.
    """

    def __init__(self, store: IngestStore, poll_interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.poll_interval = poll_interval

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        with trio.move_on_after(wait):
            while True:
                try:
                    return await self.store.open(digest)
                except NotFound:
                    pass
                with contextlib.suppress(NotFound):
                    reader = await self.store.open_ingest(digest)
                    if reader.ranged or await _has_bytes(reader):
                        return reader
                    await reader.aclose()
                await trio.sleep(self.poll_interval)
        raise NotFound(f"no bytes of {digest} arrived within {wait} s")


async def _has_bytes(reader: BlobReader) -> bool:
    """Whether a download has written its first bytes: only then is it answered (with headers that commit to
    a body), so that a peer never waits on a download that has not begun."""
    fileno = getattr(reader, "fileno", None)
    return fileno is not None and os.fstat(fileno()).st_size > 0

"""Serving blobs this node is still downloading to peers that ask for them."""

from __future__ import annotations

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

    `open_in_progress(digest, wait)` returns a reader that follows the download, or the complete blob when it
    was committed meanwhile. A download this node announced on a miss may not have started yet when a peer
    asks: the call then polls for up to `wait` seconds before answering NotFound.
    """

    def __init__(self, store: IngestStore, poll_interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.poll_interval = poll_interval

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        with trio.move_on_after(wait):
            while True:
                try:
                    return await self.store.open_ingest(digest)
                except NotFound:
                    pass
                try:
                    return await self.store.open(digest)
                except NotFound:
                    pass
                await trio.sleep(self.poll_interval)
        return await self.store.open_ingest(digest)

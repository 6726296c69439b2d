"""Serving blobs this node is still downloading to peers that ask for them."""

from __future__ import annotations

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
    the download once its first bytes are on disk. Two waits bound it: a download this node announced on a
    miss must appear (as an ingest) within `appear_wait` seconds; a download that has appeared must write its
    first bytes within `wait` seconds (containerd's parallel chunk fetch from a slow upstream writes nothing
    until the first chunk is complete, which can take seconds: waiting for it is still faster for the peer
    than fetching the blob upstream itself). NotFound when either runs out.
    """

    def __init__(self, store: IngestStore, appear_wait: float = 1.0, poll_interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.appear_wait = appear_wait
        self.poll_interval = poll_interval

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        started = trio.current_time()
        with trio.move_on_after(max(wait, self.appear_wait)):
            while True:
                try:
                    return await self.store.open(digest)
                except NotFound:
                    pass
                try:
                    reader = await self.store.open_ingest(digest)
                except NotFound:
                    if trio.current_time() - started > self.appear_wait:
                        break  # no download of it here: do not keep the peer waiting
                else:
                    if reader.ranged or await _has_bytes(reader):
                        return reader
                    await reader.aclose()
                    if trio.current_time() - started > wait:
                        break
                await trio.sleep(self.poll_interval)
        raise NotFound(f"no bytes of {digest} here within {wait} s")


async def _has_bytes(reader: BlobReader) -> bool:
    """Whether a download has written its first bytes: only then is it answered (with headers that commit to
    a body), so that a peer never waits on a download that has not begun."""
    fileno = getattr(reader, "fileno", None)
    return fileno is not None and os.fstat(fileno()).st_size > 0

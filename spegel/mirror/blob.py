"""A blob served from peers: the first response streamed, on a break resumed from another holder, and for
containerd copied whole and verified against its digest before a byte is released (`PeerBlob.verified`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from spegel.metrics import Metrics
from spegel.mirror.copies import Copies, CopyReader
from spegel.mirror.decide import resume_candidates
from spegel.mirror.peers import PeerClient, PeerError, PeerResponse
from spegel.oci.digest import Digest
from spegel.routing.base import Holder
from spegel.store.files import READ_SIZE

log = logging.getLogger("spegel.mirror")


class PeerBlob:
    """A `BlobReader` over peers holding a blob.

    `chunks(start, end)` streams from the response opened first when it covers the range, else opens a
    request for exactly `bytes=start-end`. When a transfer breaks (error, stall past the read timeout, body
    ending early), it resumes with `Range: bytes=<offset>-<end>` from the next holder not yet failed, so the
    reader's consumer never sees the break. Only when every holder failed does it raise OSError.
    """

    def __init__(
        self,
        peers: PeerClient,
        holders: list[Holder],
        registry: str,
        repository: str,
        digest: Digest,
        first: PeerResponse,
        metrics: Metrics,
    ) -> None:
        self._peers, self._holders = peers, holders
        self._registry, self._repository, self._digest = registry, repository, digest
        self._current: PeerResponse | None = first
        self._metrics = metrics
        self.size = first.size
        self.ranged = first.ranged
        self.holder = first.holder

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        buffer = memoryview(bytearray(READ_SIZE))

        async def space() -> memoryview:
            return buffer

        failed: set[str] = set()
        offset = start
        try:
            while offset <= end:
                count, _ = await self._receive(offset, start, end, failed, space)
                offset += count
                yield bytes(buffer[:count])
        finally:
            await self._close_current()

    async def verified(self, copies: Copies) -> CopyReader:
        """The whole blob, copied from the holders into an unlinked file (offered to other mirrors in `copies`
        while it grows) and hashed in order, returned once it hashes to the digest. Each byte is received
        straight into the buffer that is hashed and written (`Copy.filling`).

        Nothing is released before the whole blob verifies because containerd keeps every byte it is sent in
        its ingest and checks the digest only at commit: one wrong byte fails the pull (README, "Decisions").
        When the copy does not match, every holder whose bytes it holds is counted
        (`peer_errors{reason="digest"}`), logged once and penalized (`PeerClient.bad_bytes_penalty`), and the
        copy starts again from the next holder. Raises OSError when no holder is left. Cancellation abandons
        the copy and closes the open peer response."""
        failed: set[str] = set()
        end = self.size - 1
        while True:
            copy = copies.start(self._digest, self.size)
            reader: CopyReader | None = None
            try:
                hasher, served_by = hashlib.new(self._digest.algorithm), copy.sources
                try:
                    async with copy.filling(hasher) as filler:
                        offset = 0
                        while offset <= end:
                            count, holder = await self._receive(offset, 0, end, failed, filler.space)
                            served_by.add(holder)
                            await filler.commit(count)
                            offset += count
                finally:
                    await self._close_current()
                if hasher.hexdigest() == self._digest.hex:
                    copy.finish(abandoned=False)  # done: its reader is `ranged`
                    reader = CopyReader(copy)
            finally:
                copies.end(self._digest, copy, verified=reader is not None)
            if reader is not None:
                return reader
            failed |= served_by
            for address in served_by:
                self._peers.penalize(address, self._peers.bad_bytes_penalty)
            self._metrics.peer_errors.labels("digest").inc()
            log.warning(
                "peer bytes do not match their digest: peer penalized",
                extra={"peer": ",".join(sorted(served_by)), "digest": str(self._digest)},
            )

    async def _receive(
        self, offset: int, first: int, end: int, failed: set[str], space: Callable[[], Awaitable[memoryview]]
    ) -> tuple[int, str]:
        """Receive blob bytes from `offset` (at most to `end`) into `space()`: their count (> 0) and the address of
        the holder that sent them. `space` is called only once bytes are there to receive, and nothing waits
        between it and the receive. A transfer that breaks resumes from the next holder not in `failed` (to
        which the broken one is added; `first` is where this transfer began, for the resume count); raises
        OSError when none is left."""
        while True:
            current = self._current
            if current is None or current.closed or current.position > offset or current.end < end:
                current = await self._reopen(offset, end, failed)
            try:
                await current.skip_to(offset)
                await current.wait_readable()
                view = (await space())[: end - offset + 1]
                count = current.receive_available(view)
            except PeerError as exc:
                await self._broke(current, exc, offset, first, failed)
                continue
            if count:
                return count, current.holder.address

    async def _broke(self, current: PeerResponse, error: PeerError, offset: int, first: int, failed: set[str]) -> None:
        failed.add(current.holder.address)
        self._peers.penalize(current.holder.address)  # a peer that stalls is not asked on every request
        self._metrics.peer_errors.labels("broken").inc()
        log.warning(
            "peer transfer broke",
            extra={"peer": current.holder.address, "digest": str(self._digest), "offset": offset, "error": str(error)},
        )
        await self._close_current()
        if offset > first:
            self._metrics.peer_resumes.inc()

    async def _reopen(self, offset: int, end: int, failed: set[str]) -> PeerResponse:
        await self._close_current()
        for holder in self._peers.order(resume_candidates(self._holders, failed)):
            try:
                response = await self._peers.open_blob_range(
                    holder, self._registry, self._repository, self._digest, offset, end
                )
            except PeerError as exc:
                failed.add(holder.address)
                self._metrics.peer_errors.labels("open").inc()
                log.warning("peer refused a resume", extra={"peer": holder.address, "error": str(exc)})
                continue
            if response.start > offset or response.size != self.size:
                failed.add(holder.address)
                await response.aclose()
                continue
            self._current = response
            return response
        raise OSError(f"every holder of {self._digest} failed at byte {offset}")

    async def _close_current(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            await current.aclose()

    async def aclose(self) -> None:
        await self._close_current()

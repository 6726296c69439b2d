"""A blob served from peers: the first response streamed, on a break resumed from another holder, and for
containerd copied whole and verified against its digest before a byte is released (`PeerBlob.verified`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

from spegel.metrics import Metrics
from spegel.mirror.copies import Copies, CopyReader
from spegel.mirror.decide import resume_candidates
from spegel.mirror.peers import PeerClient, PeerError, PeerResponse
from spegel.oci.digest import Digest
from spegel.routing.base import Holder
from spegel.store.base import closing

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
        async with contextlib.aclosing(self._pieces(start, end, set())) as pieces:
            async for piece, _ in pieces:
                yield piece

    async def verified(self, copies: Copies) -> CopyReader:
        """The whole blob, copied from the holders into an unlinked file (offered to other mirrors in `copies`
        while it grows) and hashed in order, returned once it hashes to the digest.

        Nothing is released before the whole blob verifies because containerd keeps every byte it is sent in
        its ingest and checks the digest only at commit: one wrong byte fails the pull (README, "Decisions").
        When the copy does not match, every holder whose bytes it holds is counted
        (`peer_errors{reason="digest"}`), logged once and penalized (`PeerClient.bad_bytes_penalty`), and the
        copy starts again from the next holder. Raises OSError when no holder is left. Cancellation abandons
        the copy and closes the open peer response."""
        failed: set[str] = set()
        while True:
            copy = copies.start(self._digest, self.size)
            reader: CopyReader | None = None
            try:
                hasher, served_by = hashlib.new(self._digest.algorithm), copy.sources
                async with (
                    contextlib.aclosing(self._pieces(0, self.size - 1, failed)) as pieces,
                    copy.filling(hasher) as write,
                ):
                    async for piece, holder in pieces:
                        await write(piece)
                        served_by.add(holder)
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

    async def _pieces(self, start: int, end: int, failed: set[str]) -> AsyncGenerator[tuple[bytes, str]]:
        """Bytes `start..end` with the address of the holder that sent each piece; holders in `failed` (to
        which those that break are added) are not asked."""
        offset = start
        try:
            while offset <= end:
                current = self._current
                if current is None or current.closed or not current.start <= offset or current.end < end:
                    current = await self._reopen(offset, end, failed)
                try:
                    async with closing(_body_from(current, offset)) as body:
                        async for piece in body:
                            piece = piece[: end - offset + 1]
                            offset += len(piece)
                            yield piece, current.holder.address
                            if offset > end:
                                break
                    if offset <= end:
                        raise PeerError(f"{current.holder.address}: body ended at {offset}")
                except (PeerError, httpx.HTTPError) as exc:
                    failed.add(current.holder.address)
                    self._peers.penalize(current.holder.address)  # a peer that stalls is not asked on every request
                    self._metrics.peer_errors.labels("broken").inc()
                    log.warning(
                        "peer transfer broke",
                        extra={
                            "peer": current.holder.address,
                            "digest": str(self._digest),
                            "offset": offset,
                            "error": str(exc) or type(exc).__name__,
                        },
                    )
                    await self._close_current()
                    if offset > start:
                        self._metrics.peer_resumes.inc()
        finally:
            await self._close_current()

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


async def _body_from(response: PeerResponse, offset: int) -> AsyncIterator[bytes]:
    """The response body from `offset` on, skipping what lies before it."""
    position = response.start
    async with closing(response.pieces()) as pieces:
        async for piece in pieces:
            if position + len(piece) <= offset:
                position += len(piece)
                continue
            if position < offset:
                piece = piece[offset - position :]
                position = offset
            position += len(piece)
            yield piece

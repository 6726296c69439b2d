"""The mirror's `Backend`: local content first, then peers; misses answered 404 within the resolve budget.

Classification (as in Spegel): a request marked `X-Spegel-Mirrored: true` comes from a peer and is served
from this node only (complete content, or a blob still downloading when an in-progress source is
configured), never forwarded. Any other request comes from this node's containerd: served locally when
present, else from the holders the router finds within `resolve_timeout`, else 404 at once so containerd
falls back to the upstream registry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import trio

from spegel.metrics import Metrics
from spegel.mirror.blob import PeerBlob
from spegel.mirror.peers import PeerClient, PeerError, PeerResponse, first_success
from spegel.mirror.policy import RegistryFilters
from spegel.oci.digest import Digest
from spegel.registry.backend import BlobRequest, ManifestContent, ManifestRequest, read_manifest
from spegel.routing.base import Holder, Router
from spegel.store.base import BlobReader, ContentStore, NotFound

log = logging.getLogger("spegel.mirror")


class InProgressSource(Protocol):
    """Blobs this node is still downloading (containerd ingests)."""

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        """A reader (not `ranged`) following the download of `digest`; waits up to `wait` seconds for the
        download to appear. Raises NotFound when none does."""
        ...


class MissListener(Protocol):
    async def blob_missed(self, digest: Digest) -> None:
        """Called when a blob request from containerd is answered 404: containerd now fetches it upstream."""
        ...


@dataclass(frozen=True)
class MirrorOptions:
    resolve_timeout: float = 0.02
    resolve_retries: int = 3
    resolve_tags: bool = True
    filters: RegistryFilters = field(default_factory=RegistryFilters)
    miss_settle: float = 0.02  # upper bound of the random wait before a blob miss is final (see _settle_miss)
    inflight_wait: float = 10.0  # longest wait for the first bytes of a download in progress (see IngestSource)


class MirrorBackend:
    def __init__(
        self,
        store: ContentStore,
        router: Router,
        peers: PeerClient,
        metrics: Metrics,
        options: MirrorOptions = MirrorOptions(),
        in_progress: InProgressSource | None = None,
        miss_listener: MissListener | None = None,
    ) -> None:
        self.store, self.router, self.peers, self.metrics = store, router, peers, metrics
        self.options = options
        self.in_progress = in_progress
        self.miss_listener = miss_listener

    def ready(self) -> bool:
        return self.router.ready()

    async def manifest(self, request: ManifestRequest) -> ManifestContent:
        reference = request.reference
        try:
            content = await read_manifest(self.store, reference)
            self._count(reference.registry, "local")
            return content
        except NotFound:
            if request.mirrored:
                raise
        if reference.digest is not None:
            key = str(reference.digest)
        elif self.options.resolve_tags and not self.options.filters.excludes(reference.tag_key()):
            key = reference.tag_key()
        else:
            self._count(reference.registry, "miss")
            raise NotFound(f"{reference}: tags are not resolved through peers")
        holders = await self._lookup(key)
        attempts = [lambda h=h: self.peers.fetch_manifest(h, reference) for h in holders]
        try:
            content = await first_success(attempts, self.peers.latency.hedge_delay(), _discard_nothing)
        except PeerError as exc:
            self._count(reference.registry, "miss")
            raise NotFound(f"{reference}: {exc}") from None
        self._count(reference.registry, "peer")
        return content

    async def blob(self, request: BlobRequest) -> BlobReader:
        registry, digest = request.registry, request.digest
        try:
            reader = await self.store.open(digest)
            self._count(registry, "local")
            return _Counted(reader, self.metrics, "local")
        except NotFound:
            pass
        if request.mirrored:
            if self.in_progress is None:
                raise NotFound(str(digest))
            reader = await self.in_progress.open_in_progress(digest, self.options.inflight_wait)
            self._count(registry, "inflight")
            return _Counted(reader, self.metrics, "inflight")
        holders = await self._lookup(str(digest))
        if not holders and self.miss_listener is not None and not request.head:
            holders = await self._settle_miss(str(digest))
        attempts = [
            lambda h=h: self.peers.open_blob(h, registry, request.repository, digest, request.range, request.head)
            for h in holders
        ]
        try:
            first = await first_success(attempts, self.peers.latency.hedge_delay(), _close_response)
        except PeerError as exc:
            self._count(registry, "miss")
            if self.miss_listener is not None and not request.head:
                await self.miss_listener.blob_missed(digest)
            raise NotFound(f"{digest}: {exc}") from None
        self._count(registry, "peer")
        blob = PeerBlob(self.peers, holders, registry, request.repository, digest, first, self.metrics)
        return _Counted(blob, self.metrics, "peer")

    async def _settle_miss(self, key: str) -> list[Holder]:
        """Before a miss sends containerd upstream (and this node announces the download), wait a random part
        of `miss_settle` and look again: of several nodes that miss the same blob at once, the first to
        announce is found by the later ones, which then follow its download instead of fetching it again."""
        await trio.sleep(random.uniform(0, self.options.miss_settle))
        return await self._lookup(key, timeout=0)

    async def _lookup(self, key: str, timeout: float | None = None) -> list[Holder]:
        started = time.perf_counter()
        timeout = self.options.resolve_timeout if timeout is None else timeout
        found = await self.router.lookup(key, self.options.resolve_retries, timeout)
        holders = [h for h in found if self.peers.usable(h)]
        outcome = "found" if holders else "not_found"
        self.metrics.resolve_duration.labels(outcome).observe(time.perf_counter() - started)
        return self.peers.order(holders)

    def _count(self, registry: str, source: str) -> None:
        self.metrics.mirror_requests.labels(registry, source).inc()


async def _discard_nothing(_: ManifestContent) -> None:
    return None


async def _close_response(response: PeerResponse) -> None:
    await response.aclose()


class _Counted:
    """A BlobReader that counts the bytes it yields per source."""

    def __init__(self, reader: BlobReader, metrics: Metrics, source: str) -> None:
        self._reader = reader
        self._bytes = metrics.mirror_bytes.labels(source)
        self.size = reader.size
        self.ranged = reader.ranged

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        async for chunk in self._reader.chunks(start, end):
            self._bytes.inc(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._reader.aclose()

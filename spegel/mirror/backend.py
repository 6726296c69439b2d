"""The mirror's `Backend`: local content first, then peers; misses answered 404 within the resolve budget.

Classification (as in Spegel): a request marked `X-Spegel-Mirrored: true` comes from a peer and is served
from this node only (complete content, or a blob still downloading when an in-progress source is
configured), never forwarded. Any other request comes from this node's containerd: served locally when
present, else from the holders the router finds within `resolve_timeout`, else 404 at once so containerd
falls back to the upstream registry.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sized
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from spegel.metrics import Metrics
from spegel.mirror import decide
from spegel.mirror.blob import PeerBlob
from spegel.mirror.copies import Copies
from spegel.mirror.peers import PeerClient, PeerError, PeerResponse, first_success
from spegel.mirror.policy import RegistryFilters
from spegel.oci.digest import Digest
from spegel.registry.backend import BlobRequest, ManifestContent, ManifestRequest, read_manifest
from spegel.routing.base import Holder, KeyState, Router
from spegel.store.base import BlobReader, ContentStore, NotFound, closing
from spegel.store.files import FileRegions

log = logging.getLogger("spegel.mirror")

P = TypeVar("P", bound=Sized)
# Holders a claimant looks at to find whom to follow (see _claim): all of them. The router ranks claimants by
# name, so a cap would hide earlier claims at random, and a node that sees none ahead goes upstream (simulated,
# 1,000 nodes with a cap of 256: 3.75 x S upstream).
CLAIMANTS_SEEN = 1 << 16


class InProgressSource(Protocol):
    """Blobs this node is still downloading (containerd ingests)."""

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        """A reader (not `ranged`) following the download of `digest`; waits up to `wait` seconds for the
        download to appear. Raises NotFound when none does."""
        ...


class DownloadClaims(Protocol):
    @property
    def claims_accepted(self) -> bool:
        """Whether this node claims its downloads (only a store that shows them can keep a claim's promise:
        containerd in inflight mode). While not, the mirror decides as without claims."""
        ...

    async def claim(self, digest: Digest, since: float) -> float | None:
        """This node's containerd is about to download `digest`, which no peer holds complete: announce the
        download in progress, ranked at `since` (wall-clock seconds; see `decide.PullStarts`). Returns the rank
        of the claim (an open claim keeps its first), or None when no claim is made."""
        ...


@dataclass(frozen=True)
class MirrorOptions:
    resolve_timeout: float = 0.02
    resolve_retries: int = 3
    resolve_tags: bool = True
    filters: RegistryFilters = field(default_factory=RegistryFilters)
    # Longest wait for the claim's owner to answer (_claim). In the first second of a 12-node storm on 2 cores,
    # opening a stream to the owner and its answer took over 1 s for 22 of 53 claims (scale-12, rep 0), and a
    # claimant that falls back to the announced claims can go upstream beside the owner's first claimant.
    claim_timeout: float = 3.0
    miss_settle: float = 0.1  # when the owner did not answer: how long a claim waits for other claims (_claim)
    inflight_wait: float = 30.0  # longest wait for the first bytes of a download in progress (see IngestSource)
    spool_dir: str | None = None  # where copies of peer blobs are held while verified (None: the system's temp dir)
    follow_fanout: int = 2  # followers per claimant when more than `follow_chain` claim at once (decide.after_claim)
    follow_chain: int = 16  # up to this many claimants form a chain


class MirrorBackend:
    def __init__(
        self,
        store: ContentStore,
        router: Router,
        peers: PeerClient,
        metrics: Metrics,
        options: MirrorOptions = MirrorOptions(),
        in_progress: InProgressSource | None = None,
        claims: DownloadClaims | None = None,
    ) -> None:
        self.store, self.router, self.peers, self.metrics = store, router, peers, metrics
        self.options = options
        self.in_progress = in_progress
        self.claims = claims
        self.copies = Copies(options.spool_dir)
        self._peer_gets: dict[Digest, trio.Lock] = {}  # by digest, while GETs of it go to peers
        self.pulls = decide.PullStarts()  # when this node's containerd began pulling each repository
        self.misses = decide.MissOrder()  # 404s of a pull answered in the order its requests came
        self._turns: dict[int, trio.Event] = {}  # by ticket: a 404 held until the earlier requests are decided

    def ready(self) -> bool:
        return self.router.ready()

    async def manifest(self, request: ManifestRequest) -> ManifestContent:
        reference = request.reference
        if not request.mirrored:
            self.pulls.started(reference.repository, time.time(), manifest=True)
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
        if not request.mirrored:
            self.pulls.started(request.repository, time.time())
        if not request.mirrored and not request.head:
            # containerd fetches a blob this mirror just copied and verified in chunks: each chunk from the copy,
            # without asking containerd's content store (a gRPC call per chunk) for what it cannot have yet
            copied = self.copies.open_done(digest)
            if copied is not None:
                self._count(registry, "peer")
                return _Counted(copied, self.metrics, "peer", digest)
        try:
            reader = await self.store.open(digest)
            self._count(registry, "local")
            return _Counted(reader, self.metrics, "local", digest)
        except NotFound:
            pass
        if request.mirrored:
            reader = await self._arriving(digest)
            self._count(registry, "inflight")
            return _Counted(reader, self.metrics, "inflight", digest)
        if request.head:
            return await self._from_peers(request)
        # one GET of a blob at a time goes to peers: the others wait for its copy instead of making their own
        lock = self._peer_gets.setdefault(digest, trio.Lock())
        try:
            async with lock:
                shared = await self.copies.open_verified(digest)  # a copy this mirror made (or is making)
                if shared is not None:
                    self._count(registry, "peer")
                    return _Counted(shared, self.metrics, "peer", digest)
                return await self._from_peers(request)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._peer_gets.pop(digest, None)

    async def _from_peers(self, request: BlobRequest) -> BlobReader:
        """The blob from the peers that hold it (see `_open`), or NotFound when none can send it. With claims, a
        GET's 404 waits until the pull's earlier GETs are decided (`decide.MissOrder`)."""
        pull, claims = request.repository, self._claims()
        ticket = self.misses.ask(pull) if claims is not None and not request.head else None
        try:
            return await self._decide_and_open(request, ticket)
        finally:
            if ticket is not None:
                self._wake(self.misses.forget(pull, ticket))
                self._turns.pop(ticket, None)

    async def _decide_and_open(self, request: BlobRequest, ticket: int | None) -> BlobReader:
        registry, digest, pull = request.registry, request.digest, request.repository
        holders = await self._lookup(str(digest))
        claims = self._claims()
        hedge = self.peers.latency.hedge_delay()
        decision = decide.after_lookup(holders, head=request.head, claims=claims is not None, hedge_delay=hedge)
        if isinstance(decision, decide.Claim):
            holders = await self._deferred(str(digest), pull, holders)
            decision = await self._claim(digest, self.pulls.rank(pull, time.time()), holders, hedge)
        if not request.head:
            self.pulls.decided(pull, first=isinstance(decision, decide.Miss))
        reason = "no holder"
        if isinstance(decision, decide.Follow):
            if ticket is not None:  # decided: a 404 after every holder failed is not held back
                self._wake(self.misses.decided(pull, ticket, miss=False))
                ticket = None
            try:
                blob = await self._open(request, decision)
            except (PeerError, OSError) as exc:  # OSError: no holder sent bytes that match the digest
                reason, decision = str(exc), decide.Miss(claim=decision.claim_on_failure)
            else:
                self._count(registry, "peer")
                return _Counted(blob, self.metrics, "peer", digest)
        self._count(registry, "miss")
        if decision.claim and claims is not None:  # containerd fetches it upstream now: peers may follow
            await claims.claim(digest, self.pulls.rank(pull, time.time()))
        if ticket is not None:
            await self._in_turn(pull, ticket)
        raise NotFound(f"{digest}: {reason}")

    async def _in_turn(self, pull: str, ticket: int) -> None:
        """Wait until the 404 of `ticket` may be sent: every earlier request of `pull` is decided (or
        `claim_timeout` passed: each of them is decided within its claim's wait)."""
        released = self.misses.decided(pull, ticket, miss=True)
        if ticket in released:
            self._wake(released)
            return
        turn = self._turns[ticket] = trio.Event()
        self._wake(released)
        with trio.move_on_after(self.options.claim_timeout):
            await turn.wait()

    def _wake(self, tickets: list[int]) -> None:
        for ticket in tickets:
            turn = self._turns.pop(ticket, None)
            if turn is not None:
                turn.set()

    async def _open(self, request: BlobRequest, follow: decide.Follow) -> BlobReader:
        """For a GET, the blob copied whole from `follow.holders` and verified (`PeerBlob.verified`); for a HEAD,
        a reader over them. The first holder is the first to answer (staggered by the hedge delay). Raises
        PeerError when every one fails to answer, OSError when none sends bytes that match the digest."""
        registry, digest, holders = request.registry, request.digest, list(follow.holders)
        # the whole blob: it is verified whole before containerd gets a byte of it
        attempts = [
            lambda h=h: self.peers.open_blob(h, registry, request.repository, digest, None, request.head)
            for h in holders
        ]
        first = await first_success(attempts, follow.hedge_delay, _close_response)
        blob = PeerBlob(self.peers, holders, registry, request.repository, digest, first, self.metrics)
        if request.head:
            return blob
        try:
            return await blob.verified(self.copies)
        finally:
            await blob.aclose()

    async def _arriving(self, digest: Digest) -> BlobReader:
        """What this node holds of `digest` while it arrives, for a peer: the copy its mirror is making from a
        peer, or its containerd's download, whichever shows first (the download within the in-progress
        source's waits). Raises NotFound when neither does."""
        copy = self.copies.open(digest)
        if copy is not None or self.in_progress is None:
            if copy is None:
                raise NotFound(str(digest))
            return copy
        in_progress = self.in_progress
        found: list[BlobReader] = []
        async with trio.open_nursery() as nursery:

            async def first(opening: Awaitable[BlobReader]) -> None:
                with contextlib.suppress(NotFound):  # no download: then there is nothing to wait for
                    found.append(await opening)
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, self.copies.wait_open(digest))
            nursery.start_soon(first, in_progress.open_in_progress(digest, self.options.inflight_wait))
        for extra in found[1:]:
            await extra.aclose()
        if not found:
            raise NotFound(f"no bytes of {digest} here")
        return found[0]

    def _claims(self) -> DownloadClaims | None:
        """The claims, when this node makes them now."""
        return self.claims if self.claims is not None and self.claims.claims_accepted else None

    async def _deferred(self, key: str, pull: str, holders: list[Holder]) -> list[Holder]:
        """`holders`, looked up again every `decide.DEFER_POLL` while `decide.defer_claim` says this node's claim
        waits (at most `claim_timeout`)."""
        started = trio.current_time()
        deadline, deferred = started + self.options.claim_timeout, False
        while decide.defer_claim(holders, self.pulls.led(pull)) and trio.current_time() < deadline:
            deferred = True
            await trio.sleep(decide.DEFER_POLL)
            holders = await self._lookup(key, timeout=0)
        if deferred:  # for benchmark.claims
            waited = round(trio.current_time() - started, 3)
            log.info("claim deferred", extra={"key": key, "waited": waited, "found": len(holders)})
        return holders

    async def _claim(
        self, digest: Digest, rank: float, holders: list[Holder], hedge: float
    ) -> decide.Follow | decide.Miss:
        """Claim the download of `digest`, ranked at `rank` (`decide.PullStarts.rank`), and let
        `decide.after_claim` say whom to follow (or 404: this node is the first claimant). The claim is placed in
        order by the key's owner (`Router.order_claim`), whose answer is final, and then announced (peers find this
        node's download as it goes): a node that sees the claim knows it is placed, so a led node that waited for
        it (`decide.defer_claim`) is placed behind it. When the owner cannot be asked, this node announces the
        claim, waits `miss_settle` for the claims of nodes that asked at the same moment and orders the claims it
        sees by their rank. When no claim is made (the download is already advertised), follow `holders` as
        found."""
        key = str(digest)
        order = await self.router.order_claim(key, self.options.claim_timeout, rank)
        since = await self.claims.claim(digest, rank) if self.claims is not None else None
        if since is None:
            return decide.unclaimed(holders, hedge)
        if order is None:
            await trio.sleep(self.options.miss_settle)
            found = await self._lookup(key, timeout=0, count=CLAIMANTS_SEEN)
            mine = (since, self.router.name)
        else:  # holders that need no order (complete, or downloading without a claim), then the owner's order
            listed = await self._lookup(key, timeout=0, count=CLAIMANTS_SEEN)
            unordered = [h for h in listed if h.state is KeyState.COMPLETE or h.since is None]
            found = unordered + [h for h in order.ahead if self.peers.usable(h)]
            mine = (float(order.position), self.router.name)
        seen = [(h.address, h.since, h.state.value) for h in found]
        ordered_by = "announcements" if order is None else "owner"
        # whom it saw, for benchmark.claims
        log.info("claim", extra={"key": key, "since": since, "seen": seen, "ordered_by": ordered_by, "mine": mine[0]})
        options = self.options
        return decide.after_claim(
            found, mine, retries=options.resolve_retries, fanout=options.follow_fanout, chain=options.follow_chain
        )

    async def _lookup(self, key: str, timeout: float | None = None, count: int | None = None) -> list[Holder]:
        started = time.perf_counter()
        timeout = self.options.resolve_timeout if timeout is None else timeout
        found = await self.router.lookup(key, count or self.options.resolve_retries, timeout)
        holders = [h for h in found if self.peers.usable(h)]
        self.metrics.resolved(time.perf_counter() - started, found=bool(holders))
        return self.peers.order(holders)

    def _count(self, registry: str, source: str) -> None:
        self.metrics.request_served(registry, source)


async def _discard_nothing(_: ManifestContent) -> None:
    return None


async def _close_response(response: PeerResponse) -> None:
    await response.aclose()


class _Counted:
    """A BlobReader that counts the bytes it yields per source (also as file regions, when its reader has them),
    and shows its transfer, with the holder it streams from, in `metrics.activity` while it runs."""

    def __init__(self, reader: BlobReader, metrics: Metrics, source: str, digest: Digest) -> None:
        self._reader = reader
        self._bytes = metrics.mirror_bytes.labels(source)
        self._activity, self._source, self._digest = metrics.activity, source, str(digest)
        self.size = reader.size
        self.ranged = reader.ranged
        if isinstance(reader, FileRegions):
            self.regions = lambda start, end: self._count(reader.regions(start, end))

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self._count(self._reader.chunks(start, end))

    def _holder(self) -> str | None:
        holder = getattr(self._reader, "holder", None)  # a PeerBlob's current holder
        if holder is not None:
            return str(holder.address)
        peer = getattr(self._reader, "peer", None)  # a copy made from peers: the holders it came from
        return peer if isinstance(peer, str) else None

    async def _count(self, pieces: AsyncIterator[P]) -> AsyncIterator[P]:
        transfer = self._activity.start(self._digest, self._source, self._holder)
        try:
            async with closing(pieces):
                async for piece in pieces:
                    self._bytes.inc(len(piece))
                    self._activity.sent(transfer, len(piece))
                    yield piece
        finally:
            self._activity.end(transfer)

    async def aclose(self) -> None:
        await self._reader.aclose()

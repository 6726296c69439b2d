"""The one owner of what this node advertises and claims: `Advertisements` (pure) applied to a `Router`.

A store's feed (`spegel.store.containerd.watcher.Watcher` for containerd, `spegel.store.layout.LayoutFeed`
for an OCI layout) tells the tracker what it learns, and the tracker asks it, through the small
`ContentSource` interface, for a full listing when it re-lists. Every change runs under one lock, so a
re-list and an event never interleave; the resulting actions reach the router in order. The mirror claims
downloads through `claim` (the `DownloadClaims` of `spegel.mirror.backend`) while a feed enables claims.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from spegel.advertise import Action, Advertise, Advertisements
from spegel.oci.digest import Digest
from spegel.routing.base import Router

DEFAULT_CLAIM_GRACE = 5.0  # seconds a claimed blob stays in progress without a download appearing


@dataclass(frozen=True)
class Listing:
    """Everything a store holds at one moment: keys held complete, and its downloads (digest keys) — those with
    bytes on disk (`in_progress`) and all of them (`downloading`, which includes `in_progress`)."""

    complete: list[str]
    in_progress: list[str] = field(default_factory=list)
    downloading: list[str] = field(default_factory=list)


class ContentSource(Protocol):
    """What the tracker asks a store for."""

    async def listing(self) -> Listing:
        """A full listing of the store's content now."""
        ...

    async def downloads(self) -> set[str]:
        """The digest keys the store is downloading now (with bytes on disk or not)."""
        ...


class Tracker:
    """Keeps a `Router`'s view of this node in line with what the node's store reports.

    Claims are refused (`claim` returns None) until a feed enables them with `accept_claims` (containerd in
    inflight mode: only a store that shows its downloads can keep a claim's promise).
    """

    def __init__(self, router: Router, claim_grace: float = DEFAULT_CLAIM_GRACE) -> None:
        self.router = router
        self.claim_grace = claim_grace
        self.advertisements = Advertisements()
        self.claims_accepted = False
        self._lock = trio.Lock()

    async def relist(self, source: ContentSource) -> None:
        """Replace the advertisements by a full listing of `source`."""
        async with self._lock:
            listing = await source.listing()
            now = trio.current_time()
            await self._apply(
                self.advertisements.relist(listing.complete, listing.in_progress, now, listing.downloading)
            )

    async def complete(self, keys: Iterable[str]) -> None:
        async with self._lock:
            await self._apply(self.advertisements.complete(keys))

    async def withdraw(self, keys: Iterable[str]) -> None:
        async with self._lock:
            await self._apply(self.advertisements.withdraw(keys))

    async def download_started(self, key: str) -> None:
        """A download of `key` has its first bytes on disk."""
        async with self._lock:
            await self._apply(self.advertisements.in_progress([key]))

    async def download_ended(self, key: str, committed: bool) -> None:
        async with self._lock:
            await self._apply(self.advertisements.ingest_gone([key], [key] if committed else []))

    def accept_claims(self, accepted: bool) -> None:
        self.claims_accepted = accepted

    async def claim(self, digest: Digest, since: float) -> float | None:
        """The node is about to download `digest`, which no peer holds complete: advertise it in progress at once,
        claimed at `since` (wall-clock seconds, its rank among claimants), so that peers asking in the
        next moments follow this node's download instead of all going upstream, and return the claim's `since`
        (an open claim keeps its own). None when claims are not accepted, or
        when the blob is already advertised unclaimed (its download is under way). A claim is withdrawn
        `claim_grace` seconds later unless a download or the content has appeared (see `expire_claims`)."""
        if not self.claims_accepted:
            return None
        key = str(digest)
        async with self._lock:
            await self._apply(self.advertisements.claim(key, since, trio.current_time() + self.claim_grace))
            return self.advertisements.claim_since(key)

    async def expire_claims(self, source: ContentSource) -> None:
        """Every quarter of the claim grace, withdraw the claims whose grace ended without a download. Runs until
        cancelled."""
        while True:
            await trio.sleep(self.claim_grace / 4)
            now = trio.current_time()
            if not self.advertisements.due_claims(now):
                continue
            downloading = await source.downloads()
            async with self._lock:
                await self._apply(self.advertisements.expire_claims(now, downloading))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Advertise):
                await self.router.advertise(action.keys, action.state, since=action.since)
            else:
                await self.router.withdraw(action.keys)

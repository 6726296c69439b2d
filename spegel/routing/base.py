"""The router interface the mirror and the advertiser use.

Keys are Spegel's: digest strings (`sha256:...`) and tags as `registry/repository:tag`. A node advertises the
keys it holds, either complete or in progress (a blob still downloading), and withdraws them when gone. A tag is
advertised with the digest of its manifest appended (`registry/repository:tag@sha256:...`, see
`spegel.routing.keys.split_tag_digest`) and looked up without it; each holder found carries the digest it announced.
Lookups answer with holders as registry addresses (`host:port` of the peer's mirror), best first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class RouterConfigError(Exception):
    """An unusable identity file, key file or address (reported in one line)."""


class KeyState(Enum):
    COMPLETE = "complete"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class Holder:
    """A peer that holds a key. `available` is the number of bytes it has so far when in progress and known;
        `since` is when it claimed the download of an in-progress key (wall-clock seconds), when it did; `peer` is
        its name in the router (as `Router.name`), "" when not known; `digest` is, for a tag, the digest of the manifest
    the holder announced for it (None when it announced none). `since` and `peer` are not compared."""

    address: str  # the peer mirror's registry address, "host:port"
    state: KeyState = KeyState.COMPLETE
    available: int | None = None
    since: float | None = field(default=None, compare=False)
    peer: str = field(default="", compare=False)
    digest: str | None = None


@dataclass(frozen=True)
class ClaimOrder:
    """A claim as the key's owner placed it (`spegel.routing.claims`): `position` claimants came before this node;
    `ahead` are those of them this node can reach, as in-progress holders whose `since` is their position (the
    first claimant's is 0)."""

    position: int
    ahead: tuple[Holder, ...] = ()


class Router(Protocol):
    name: str  # this node's name among its peers: unique, the same for every peer (a holder's `peer`)

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        """Announce that this node holds `keys` (complete or in progress). Re-advertising changes the state.

        `available` is the number of bytes held so far of in-progress keys, when known; `since` is when this
        node claimed their download (wall-clock seconds), when it did. Both are ignored for complete keys.
        """
        ...

    async def withdraw(self, keys: Iterable[str]) -> None:
        """Announce that this node no longer holds `keys`. A tag with a digest appended is withdrawn only while
        it is still advertised with that digest (a tag moved to a new manifest stays)."""
        ...

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        """Up to `count` holders of `key` other than this node, complete ones first, within `timeout` seconds.

        Returns an empty list when none is found in time; never raises for a miss, never waits past `timeout`.
        """
        ...

    async def order_claim(self, key: str, timeout: float, since: float) -> ClaimOrder | None:
        """Claim the download of `key` (claimed at wall-clock time `since`) with its owner and learn who claimed it
        before this node. Returns None when the owner cannot be asked within `timeout` seconds (the caller falls
        back to the claims announced)."""
        ...

    def ready(self) -> bool:
        """Whether the router is connected to at least one peer (or has no peers to wait for)."""
        ...

"""The holder index (pure): which peer holds which key, as last announced, with expiry.

A peer's announcements count while the peer is heard from: each update from it (or `touch`) restarts its clock,
and `ttl` after the last one all its entries stop counting (a peer announces over one ordered stream, so as long
as it is heard, everything it announced and did not withdraw is current). A full snapshot replaces everything the
peer announced before. Time is passed in by the caller, never read here.
Each peer holds at most `max_keys` keys: announcements of further keys are refused (and counted in `refused`),
so one peer cannot grow the index without bound.
Lookups order holders: complete before in progress, in-progress ones with more bytes first, then peers the caller
prefers (e.g. currently connected), then by peer name so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from spegel.routing.base import Holder, KeyState
from spegel.routing.keys import split_tag_digest


@dataclass(frozen=True)
class Announcement:
    """One key as a peer announces it."""

    key: str
    state: KeyState = KeyState.COMPLETE
    available: int | None = None
    since: float | None = None  # when the peer claimed the download of an in-progress key
    digest: str | None = None  # for a tag: the digest of the manifest the peer holds for it


def announcements(
    keys: Iterable[str], state: KeyState, available: int | None = None, since: float | None = None
) -> list[Announcement]:
    """The announcements of `keys` as a node advertises them (tags with their digest appended, see
    `spegel.routing.keys`). Raises InvalidKey for a tag with a malformed digest."""
    if state is KeyState.COMPLETE:
        available = since = None
    return [Announcement(key, state, available, since, digest) for key, digest in map(split_tag_digest, keys)]


def withdrawals(keys: Iterable[str], held: Mapping[str, Announcement]) -> list[str]:
    """The keys of `held` that withdrawing `keys` (as advertised) ends: a tag named with a digest only while it is
    held with that digest (a tag since moved to another manifest stays)."""
    gone: dict[str, None] = {}
    for key, digest in map(split_tag_digest, keys):
        item = held.get(key)
        if item is not None and digest in (None, item.digest):
            gone[key] = None
    return list(gone)


@dataclass(frozen=True)
class _Entry:
    state: KeyState
    available: int | None
    since: float | None
    digest: str | None


class HolderIndex:
    """Who holds which key. `ttl` is how long an announcement counts unless refreshed; `max_keys` is how many keys
    one peer may hold in the index."""

    def __init__(self, ttl: float, max_keys: int = 1 << 62) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        if max_keys <= 0:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        self.ttl = ttl
        self.max_keys = max_keys
        self.refused = 0  # announced keys refused because their peer held `max_keys` already
        self._by_key: dict[str, dict[str, _Entry]] = {}
        self._by_peer: dict[str, set[str]] = {}
        self._heard: dict[str, float] = {}
        self._addresses: dict[str, str] = {}

    def set_address(self, peer: str, address: str) -> None:
        """Record the registry address (`host:port`) lookups return for `peer`."""
        self._addresses[peer] = address

    def address(self, peer: str) -> str | None:
        return self._addresses.get(peer)

    def touch(self, peer: str, now: float) -> None:
        """`peer` was heard from at `now`: its entries count until `now + ttl`."""
        self._heard[peer] = now

    def update(self, peer: str, announcements: Iterable[Announcement], now: float) -> int:
        """Add `peer`'s announcements (or change their state); other keys of `peer` stay. Touches `peer`.

        Returns how many new keys were refused because `peer` holds `max_keys` already (also added to `refused`).
        """
        self.touch(peer, now)
        keys = self._by_peer.setdefault(peer, set())
        refused = 0
        for item in announcements:
            if item.key not in keys and len(keys) >= self.max_keys:
                refused += 1
                continue
            if item.state is KeyState.COMPLETE:
                entry = _Entry(item.state, None, None, item.digest)
            else:
                entry = _Entry(item.state, item.available, item.since, item.digest)
            self._by_key.setdefault(item.key, {})[peer] = entry
            keys.add(item.key)
        self.refused += refused
        return refused

    def replace(self, peer: str, announcements: Iterable[Announcement], now: float) -> int:
        """Make `announcements` the whole of what `peer` holds (a full-state snapshot); returns as `update`."""
        self.forget(peer)
        return self.update(peer, announcements, now)

    def remove(self, peer: str, keys: Iterable[str]) -> None:
        """`peer` no longer holds `keys`."""
        held = self._by_peer.get(peer)
        if held is None:
            return
        for key in keys:
            if key in held:
                held.discard(key)
                self._drop(key, peer)

    def forget(self, peer: str) -> None:
        """Drop every key of `peer` (its address stays known)."""
        self._heard.pop(peer, None)
        for key in self._by_peer.pop(peer, ()):
            self._drop(key, peer)

    def remove_peer(self, peer: str) -> None:
        """Drop everything known of `peer`, its address included (it is gone)."""
        self.forget(peer)
        self._addresses.pop(peer, None)

    def known_peers(self) -> set[str]:
        """The peers the index knows anything of (keys, or an address)."""
        return self._addresses.keys() | self._by_peer.keys()

    def expire(self, now: float) -> int:
        """Drop the entries of peers not heard from within `ttl`; returns how many entries were dropped."""
        silent = [peer for peer, heard in self._heard.items() if not self.heard(peer, now)]
        dropped = sum(self.holds(peer) for peer in silent)
        for peer in silent:
            self.forget(peer)
        return dropped

    def lookup(
        self, key: str, count: int, now: float, exclude: str | None = None, preferred: Collection[str] = ()
    ) -> list[Holder]:
        """Up to `count` live holders of `key` with a known address, best first, leaving out `exclude`."""
        holders = self._by_key.get(key)
        if not holders or count <= 0:
            return []
        ranked = []
        for peer, entry in holders.items():
            address = self._addresses.get(peer)
            if peer == exclude or address is None or not self.heard(peer, now):
                continue
            rank = (
                entry.state is not KeyState.COMPLETE,
                -(entry.available or 0),
                peer not in preferred,
                peer,
            )
            ranked.append((rank, Holder(address, entry.state, entry.available, entry.since, peer, entry.digest)))
        ranked.sort(key=lambda pair: pair[0])
        return [holder for _, holder in ranked[:count]]

    def announced(self, peer: str) -> list[Announcement]:
        """Everything `peer` announced and did not withdraw, as announcements (to pass its state on)."""
        items = []
        for key in self._by_peer.get(peer, ()):
            entry = self._by_key[key][peer]
            items.append(Announcement(key, entry.state, entry.available, entry.since, entry.digest))
        return items

    def holds(self, peer: str) -> int:
        """How many keys `peer` has announced (live or not yet swept)."""
        return len(self._by_peer.get(peer, ()))

    def heard_since(self, peer: str, when: float) -> bool:
        """Whether `peer` was heard from after `when`."""
        heard = self._heard.get(peer)
        return heard is not None and heard > when

    def heard(self, peer: str, now: float) -> bool:
        """Whether `peer` was heard from within `ttl` before `now` (its entries count)."""
        heard = self._heard.get(peer)
        return heard is not None and now < heard + self.ttl

    def _drop(self, key: str, peer: str) -> None:
        holders = self._by_key.get(key)
        if holders is not None:
            holders.pop(peer, None)
            if not holders:
                del self._by_key[key]

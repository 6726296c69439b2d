"""Download claims put in one order by one owner per key (pure, but for `take_place`, which waits on trio's clock).

When no peer holds a blob complete, every node that wants it claims it; the first claimant downloads it upstream
and every later one follows a claimant ahead of it (`spegel.mirror.decide.after_claim`). Announced to every peer,
a claim becomes visible to all of them only after 0.2-1.1 s in a pull storm on a busy machine
(reports/scale/README.md), longer than any settle a miss can afford, so nodes missed each other's claims and several
went upstream at once. Here the order is decided in one place: the key's owner, the member with the highest
rendezvous score for the key (`owner`; every member whose membership view agrees picks the same one), records
claimants in the order their claims reach it (`ClaimBook`) and answers each one, at once and for good, with the
claimants ahead of it. One request to one node replaces waiting for N - 1 announcements.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from spegel.routing.base import ClaimOrder, Holder, KeyState


def rendezvous_score(key: str, member: str) -> bytes:
    """`member`'s score for `key` (highest random weight hashing): uniform, and independent of the other members."""
    return hashlib.sha256(f"{key}\0{member}".encode()).digest()


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that orders the claims of `key`: the highest `rendezvous_score`; None when there are no members.
    Adding or removing a member moves only the keys that member owns (1/N of them)."""
    return max(members, key=lambda member: rendezvous_score(key, member), default=None)


def placed(ahead: Sequence[str], address: Callable[[str], str | None]) -> ClaimOrder:
    """The `ClaimOrder` of a claim with the claimants `ahead` (first first), each a holder at its registry
    `address` (claimants without a known address are left out; the others keep their place)."""
    holders = []
    for place, name in enumerate(ahead):
        registry = address(name)
        if registry is not None:
            holders.append(Holder(registry, KeyState.IN_PROGRESS, since=float(place), peer=name))
    return ClaimOrder(len(ahead), tuple(holders))


@dataclass
class _Claims:
    order: list[str] = field(default_factory=list)  # claimants placed, first first
    position: dict[str, int] = field(default_factory=dict)
    first_window_end: float = -math.inf  # claims before it are placed together when it passes
    pending: dict[str, float] = field(default_factory=dict)  # claimant -> claim time, in the first window
    last: float = 0.0  # when the latest claim arrived


class ClaimBook:
    """The claim order of the keys this node owns.

    `claim(key, claimant, now, since)` records a claim and returns when its place is final; `ahead(key, claimant,
    now)` then gives the claimants before it, first first. The claims that reach the owner within `window` seconds
    of a key's first claim are placed together, by their claim time `since` (then claimant name): nodes that ask
    at the same moment are ordered as they claimed, not as their requests happened to arrive, so the node whose
    containerd asked first is first for every layer of the image (one upstream download per image, its layers in
    order, instead of one per layer at once). Later claims are placed as they arrive, at once. A claimant that
    claims again keeps its place. A key's record is dropped `hold` seconds after its latest claim (by then its
    first claimants are done or failed: later nodes find complete holders and do not claim). At most
    `max_entries` claimants are recorded over all keys (the least recently claimed keys are dropped first) and
    `max_claimants` per key (a claimant beyond them is told all of them and not recorded: it follows, and no one
    follows it)."""

    def __init__(
        self, hold: float = 120.0, window: float = 0.1, max_entries: int = 1 << 18, max_claimants: int = 1 << 16
    ) -> None:
        if hold <= 0 or window < 0 or max_entries < 1 or max_claimants < 1:
            raise ValueError("hold, max_entries and max_claimants must be positive, window not negative")
        self.hold, self.window, self.max_entries, self.max_claimants = hold, window, max_entries, max_claimants
        self._keys: OrderedDict[str, _Claims] = OrderedDict()  # least recently claimed first
        self._entries = 0  # claimants recorded over all keys

    def __len__(self) -> int:
        return len(self._keys)

    def claim(self, key: str, claimant: str, now: float, since: float = math.inf) -> float:
        """Record `claimant`'s claim of `key`, made at its time `since`; returns when `ahead` may be asked."""
        self._expire(now)
        claims = self._keys.get(key)
        if claims is None:
            claims = self._keys[key] = _Claims(first_window_end=now + self.window)
        self._keys.move_to_end(key)
        claims.last = now
        self._place_window(claims, now)
        if claimant in claims.position or claimant in claims.pending:
            return max(now, claims.first_window_end) if claimant in claims.pending else now
        if len(claims.order) + len(claims.pending) >= self.max_claimants:
            return now
        if now < claims.first_window_end:
            claims.pending[claimant] = since
        else:
            claims.position[claimant] = len(claims.order)
            claims.order.append(claimant)
        self._entries += 1
        while self._entries > self.max_entries and len(self._keys) > 1:
            self._drop(next(iter(self._keys)))
        return max(now, claims.first_window_end) if claimant in claims.pending else now

    def ahead(self, key: str, claimant: str, now: float) -> list[str]:
        """The claimants placed before `claimant`, first first (all of them when it is not recorded). Raises
        ValueError before the time `claim` returned."""
        claims = self._keys.get(key)
        if claims is None:
            return []
        self._place_window(claims, now)
        if claimant in claims.pending:
            raise ValueError(f"the place of {claimant} is final only at {claims.first_window_end}")
        place = claims.position.get(claimant)
        return claims.order[:place] if place is not None else list(claims.order)

    def _place_window(self, claims: _Claims, now: float) -> None:
        if claims.pending and now >= claims.first_window_end:
            for claimant in sorted(claims.pending, key=lambda name: (claims.pending[name], name)):
                claims.position[claimant] = len(claims.order)
                claims.order.append(claimant)
            claims.pending.clear()

    def _expire(self, now: float) -> None:
        while self._keys:
            key, claims = next(iter(self._keys.items()))
            if now - claims.last < self.hold:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        claims = self._keys.pop(key)
        self._entries -= len(claims.order) + len(claims.pending)


async def take_place(book: ClaimBook, key: str, claimant: str, since: float) -> list[str]:
    """Record `claimant`'s claim in `book` now (trio's clock) and return the claimants ahead of it once its place
    is final (at most the book's `window` later)."""
    final = book.claim(key, claimant, trio.current_time(), since)
    await trio.sleep_until(final)
    return book.ahead(key, claimant, max(final, trio.current_time()))

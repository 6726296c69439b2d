"""An in-memory Router (tests, benchmark.cancel_bench): routers on one `MemoryNetwork` see each other's keys at once.

There is no I/O and no expiry; a router that `leave()`s takes its keys with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio

from spegel.routing.base import ClaimOrder, Holder, KeyState
from spegel.routing.claims import ClaimBook, placed, take_place
from spegel.routing.index import Announcement, HolderIndex, announcements, withdrawals


class MemoryNetwork:
    """The shared state of a group of in-process routers."""

    def __init__(self) -> None:
        self.index = HolderIndex(ttl=math.inf)
        self.members: set[str] = set()
        self.claims = ClaimBook()  # one owner for every key: the network

    def join(self, address: str) -> MemoryRouter:
        """A router for the node whose registry is at `address` (`host:port`); each address joins once."""
        if address in self.members:
            raise ValueError(f"{address} already joined")
        self.members.add(address)
        self.index.set_address(address, address)
        return MemoryRouter(self, address)


class MemoryRouter:
    """A `Router` backed by a `MemoryNetwork`; see `spegel.routing.base.Router` for the contract."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self.address = address
        self.name = address
        self._held: dict[str, Announcement] = {}

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        items = announcements(keys, state, available, since)
        self._held.update((item.key, item) for item in items)
        self._network.index.update(self.address, items, 0.0)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await trio.lowlevel.checkpoint()
        gone = withdrawals(keys, self._held)
        for key in gone:
            del self._held[key]
        self._network.index.remove(self.address, gone)

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        await trio.lowlevel.checkpoint()
        return self._network.index.lookup(key, count, 0.0, exclude=self.address)

    async def order_claim(self, key: str, timeout: float, since: float) -> ClaimOrder | None:
        ahead = await take_place(self._network.claims, key, self.address, since)
        return placed(ahead, self._network.index.address)

    def ready(self) -> bool:
        return len(self._network.members) > 1

    def leave(self) -> None:
        """Leave the network: this node's keys are gone for everyone."""
        self._network.index.forget(self.address)
        self._network.members.discard(self.address)

"""Links and transfers as fluids, event-driven: a transfer's bytes grow linearly between events, and an event
happens only when a transfer starts, ends, catches up with its source, or when its share changes.

The model (stated, not hidden):
- The upstream registry's link (`SharedLink`, capacity U) is weighted processor sharing: connection i gets
  U * w_i / (sum of the open connections' w). TCP connections through one bottleneck do not get equal shares
  over seconds; the weights (drawn per connection, uniform in [1 - spread, 1 + spread]) stand for that.
  With equal shares the parallel chunks of a download finish in lockstep, and a follower waits for
  `max_concurrent_downloads` chunks at once instead of one. The upstream link is the bottleneck of every
  upstream connection (B >= U in every scenario here: a node's own link never slows one). Kept as a virtual
  clock (the bytes a connection of weight 1 has received so far), so a start or an end costs O(log n)
  however many connections share it.
- The same class is the host's CPU when the nodes share one machine (capacity: its cores; a connection is a
  job of CPU seconds, at most one core each).
- Each node has an uplink and a downlink of capacity B (`NodeLink`). A transfer between peers gets
  min(B / (flows on the sender's uplink), B / (flows and upstream connections on the receiver's downlink)):
  an equal split per link without handing unused share on (max-min fairness would; the difference is
  small while nodes' links are not the bottleneck, and it errs on the slow side).
- A transfer that follows a download in progress cannot pass what its source has on disk (see
  `PeerTransfer`): caught up, it goes at the source's rate, or waits for the source to grow and notices
  `poll` seconds later (the holder's mirror polls the growing ingest file every 10 ms).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from typing import Protocol

from benchmark.sim.events import Event, Simulation

EPSILON = 1e-6  # bytes: a transfer within this of its target has reached it


class NodeLink:
    """One direction of a node's link: the flows (peer transfers) on it, and (downlinks) the upstream
    connections into the node, which count in the split."""

    __slots__ = ("active", "capacity", "upstream")

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.active: dict[PeerTransfer, None] = {}  # in the order they joined (a set's would vary run to run)
        self.upstream = 0

    def share(self) -> float:
        users = len(self.active) + self.upstream
        return self.capacity / users if users else self.capacity

    def changed(self) -> None:
        for transfer in list(self.active):
            transfer.reshare()


class UpstreamTransfer:
    """`size` bytes from the upstream registry to one node (or `size` CPU-seconds of one job on the host's
    CPU: `into` is None); `on_done()` when all have arrived."""

    __slots__ = ("active", "finish", "into", "link", "on_done", "size", "started", "weight")

    def __init__(
        self,
        link: SharedLink,
        size: float,
        finish: float,
        weight: float,
        into: NodeLink | None,
        on_done: Callable[[], None],
    ) -> None:
        self.link, self.size, self.finish, self.weight = link, size, finish, weight
        self.into, self.on_done = into, on_done
        self.active = True
        self.started = link.sim.now

    def delivered(self) -> float:
        return self.size if not self.active else self.size - (self.finish - self.link.virtual_now()) * self.weight


class SharedLink:
    """The upstream registry's link, or the host's CPU: processor sharing over its connections (see the module
    docstring), none of which gets more than `cap` per unit of weight (the CPU: one core per job). With more
    connections than `capacity`, each also loses a share `overhead` per connection beyond it: processes that
    outnumber the cores spend CPU on one another (switching, caches), measured by `benchmark.unpack_bench`."""

    def __init__(
        self,
        sim: Simulation,
        capacity: float,
        spread: float = 0.0,
        seed: int = 0,
        cap: float = math.inf,
        overhead: float = 0.0,
    ) -> None:
        self.sim, self.capacity, self.cap, self.overhead = sim, capacity, cap, overhead
        self.sent = 0.0  # bytes delivered by transfers that have ended
        self.connections = 0
        self.weights = 0.0  # of the open connections
        self._spread, self._rng = spread, random.Random(seed)
        self._virtual, self._since = 0.0, 0.0  # bytes each connection received since the start
        self._heap: list[tuple[float, int, UpstreamTransfer]] = []
        self._order = itertools.count()
        self._next: Event | None = None

    def virtual_now(self) -> float:
        """Bytes a connection of weight 1 has received since the start."""
        if not self.connections:
            return self._virtual
        return self._virtual + (self.sim.now - self._since) * self._rate()

    def _rate(self) -> float:
        """What a connection of weight 1 gets now."""
        crowding = 1.0 + self.overhead * max(0.0, self.connections - self.capacity)
        return min(self.cap, self.capacity / self.weights) / crowding

    def start(self, size: float, into: NodeLink | None, on_done: Callable[[], None]) -> UpstreamTransfer:
        self._advance()
        weight = 1.0 + self._rng.uniform(-self._spread, self._spread)
        transfer = UpstreamTransfer(self, size, self._virtual + size / weight, weight, into, on_done)
        heapq.heappush(self._heap, (transfer.finish, next(self._order), transfer))
        self.connections += 1
        self.weights += weight
        if into is not None:
            into.upstream += 1
            into.changed()
        self._schedule()
        return transfer

    def stop(self, transfer: UpstreamTransfer) -> float:
        """End `transfer` before its last byte (the client closed it); returns the bytes it delivered."""
        if not transfer.active:
            return transfer.size
        self._advance()
        delivered = transfer.delivered()
        self._end(transfer, delivered)
        self._schedule()
        return delivered

    def _advance(self) -> None:
        self._virtual = self.virtual_now()
        self._since = self.sim.now

    def _end(self, transfer: UpstreamTransfer, delivered: float) -> None:
        transfer.active = False
        self.connections -= 1
        self.weights = self.weights - transfer.weight if self.connections else 0.0
        self.sent += delivered
        if transfer.into is not None:
            transfer.into.upstream -= 1
            transfer.into.changed()

    def _schedule(self) -> None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if heap:
            left = max(0.0, heap[0][0] - self._virtual)
            self._next = self.sim.at(self.sim.now + left / self._rate(), self._complete)

    def _complete(self) -> None:
        self._next = None
        self._advance()
        _, _, transfer = heapq.heappop(self._heap)
        self._end(transfer, transfer.size)
        self._schedule()
        transfer.on_done()


class Source(Protocol):
    """What a transfer reads from: the sender's copy of the blob, complete or still downloading."""

    def prefix(self) -> float:
        """Bytes of the blob the sender has, from its start."""
        ...

    def rate(self) -> float:
        """How fast `prefix()` grows now (0 when it grows in steps or not at all)."""
        ...

    def watch(self, transfer: PeerTransfer) -> None:
        """Call `transfer.source_changed()` whenever the prefix grows in a step or `rate()` changes."""
        ...

    def unwatch(self, transfer: PeerTransfer) -> None: ...


ACTIVE, PINNED, PARKED = "active", "pinned", "parked"


class PeerTransfer:
    """Bytes `start..start+size-1` of the blob in `source` from one node to another; `on_done()` when all
    have arrived. It never passes what the source has:
    - ACTIVE: it runs at its share of the links toward what the source had when it last looked;
    - PINNED: it has caught up with a source that grows smoothly (a download fed by one stream) and goes
      at the source's rate (or its share, if less), following each change of that rate at once;
    - PARKED: it has caught up with a source that is not growing; it looks again `poll` seconds after the
      source grows (the holder's mirror polls the growing file).
    `on_change()` is called whenever its rate changes (a download fed by it passes that on to its readers).
    """

    __slots__ = (
        "_event",
        "_limit",
        "_looking",
        "_pinned",
        "_since",
        "delivered_before",
        "done",
        "on_change",
        "on_done",
        "poll",
        "rate",
        "receiver",
        "sender",
        "sim",
        "size",
        "source",
        "start",
        "state",
    )

    def __init__(
        self,
        sim: Simulation,
        sender: NodeLink,
        receiver: NodeLink,
        source: Source,
        start: int,
        size: float,
        on_done: Callable[[], None],
        poll: float,
    ) -> None:
        self.sim, self.sender, self.receiver, self.size = sim, sender, receiver, size
        self.source, self.start, self.on_done, self.poll = source, start, on_done, poll
        self.delivered_before, self.rate, self._since = 0.0, 0.0, sim.now
        self._limit, self._pinned = 0.0, 0.0
        self._event: Event | None = None
        self._looking = False
        self.on_change: Callable[[], None] | None = None
        self.done = False
        self.state = PARKED
        source.watch(self)
        self._look()

    def delivered(self) -> float:
        return self.delivered_before + self.rate * (self.sim.now - self._since)

    def stop(self) -> float:
        """End the transfer now (the receiver closed it); returns the bytes delivered."""
        if not self.done:
            self._settle()
            self._park()
            self._finish()
        return self.delivered_before

    def reshare(self) -> None:
        """The split on one of its links (or the source's rate) changed: settle, take the new rate."""
        self._settle()
        rate = min(self.sender.share(), self.receiver.share())
        if self.state == PINNED:
            rate = min(rate, self._pinned)
        self._set_rate(rate)
        if self._event is not None:
            self._event.cancel()
            self._event = None
        if self.state == ACTIVE:
            left = max(0.0, min(self._limit, self.size) - self.delivered_before)
            self._event = self.sim.after(left / rate, self._reached)

    def source_changed(self) -> None:
        """The source grew in a step or changed its rate (see the class docstring)."""
        if self.done or self.state == ACTIVE:
            return
        rate = self.source.rate()
        if self.state == PINNED and rate > 0:
            self._pinned = rate
            self.reshare()
            return
        if self.state == PINNED:
            self._settle()
            self._park()
        if not self._looking:
            self._looking = True
            self.sim.after(self.poll, self._look)

    def _settle(self) -> None:
        self.delivered_before, self._since = self.delivered(), self.sim.now

    def _set_rate(self, rate: float) -> None:
        if rate != self.rate:
            self.rate = rate
            if self.on_change is not None:
                self.sim.after(0.0, self.on_change)

    def _reached(self) -> None:
        self._event = None
        self.delivered_before, self._since = min(self._limit, self.size), self.sim.now
        if self.delivered_before >= self.size - EPSILON:
            self.delivered_before = self.size
            self._park()
            self._finish()
            self.on_done()
            return
        rate = self.source.rate()
        if rate > 0:
            self.state, self._pinned = PINNED, rate
            self.reshare()
        else:
            self._look()

    def _look(self) -> None:
        """Read how much the source has: run toward it, follow its rate, or park until it grows."""
        self._looking = False
        if self.done:
            return
        self._settle()
        self._limit = min(self.size, self.source.prefix() - self.start)
        if self.delivered_before >= self.size - EPSILON:
            self._reached()
            return
        rate = self.source.rate()
        if self._limit > self.delivered_before + EPSILON:
            self.state = ACTIVE
        elif rate > 0 and self._limit >= self.delivered_before - EPSILON:
            self.state, self._pinned = PINNED, rate
        else:
            self._park()
            if rate > 0:  # moving, but not yet up to where this transfer starts
                self._looking = True
                self.sim.after(self.poll, self._look)
            return
        if self in self.sender.active:
            self.reshare()
        else:
            self._links(join=True)

    def _park(self) -> None:
        self.state = PARKED
        if self._event is not None:
            self._event.cancel()
            self._event = None
        if self in self.sender.active:
            self._set_rate(0.0)
            self._links(join=False)

    def _links(self, join: bool) -> None:
        """Join or leave both links' active flows; everyone on them reshares."""
        for link in (self.sender, self.receiver):
            if join:
                link.active[self] = None
            else:
                link.active.pop(self, None)
        self.sender.changed()
        self.receiver.changed()

    def _finish(self) -> None:
        self.done = True
        self.source.unwatch(self)

"""What the simulated nodes share: the clock, the links, the router and the claims' owners, every node's downloads,
the counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmark.sim.events import Simulation
from benchmark.sim.network import NodeLink, PeerTransfer, SharedLink
from benchmark.sim.routing import ClaimOwners, Router


@dataclass(frozen=True)
class Timing:
    """Fixed costs (seconds) and rates the links do not set. Defaults: this machine's netns benchmark."""

    rtt: float = 0.001  # one HTTP request's round trip through a veth pair
    lookup: float = 0.0005  # the mirror's router lookup, answered from its index
    poll: float = 0.01  # a mirror following a growing download looks for new bytes this often
    metadata: float = 0.03  # resolving the tag and fetching the manifest, before the first blob request
    unpack_rate: float = 150e6  # bytes/s containerd unpacks (gunzip + write) a layer, one layer at a time
    start_spread: float = 0.015  # pulls asked "at once" start within this (the harness starts them in turn)


class Download:
    """A blob a node's containerd is fetching (its ingest): the bytes on disk are always a prefix of the blob.

    Fed either by chunks (parallel ranged fetch: the prefix grows a step when the next chunk in order is
    complete) or by one stream (`follow`: the prefix grows as the stream delivers). A `network.Source` for
    the transfers that read it: they are told of every step and every change of the stream's rate."""

    def __init__(self, world: World, node: int, digest: str, size: int, started: float) -> None:
        self.world, self.node, self.digest, self.size = world, node, digest, size
        self.started = started
        self.written = 0  # bytes on disk before the current stream
        self.stream: PeerTransfer | None = None
        self.stream_offset = 0
        self.complete = False
        self._waiters: list[Callable[[], None]] = []
        self._readers: dict[PeerTransfer, None] = {}  # in the order they came (a set's order is by address)

    def prefix(self) -> float:
        if self.complete:
            return self.size
        if self.stream is not None:
            return self.stream_offset + self.stream.delivered()
        return self.written

    def rate(self) -> float:
        return self.stream.rate if self.stream is not None and not self.complete else 0.0

    def watch(self, transfer: PeerTransfer) -> None:
        self._readers[transfer] = None

    def unwatch(self, transfer: PeerTransfer) -> None:
        self._readers.pop(transfer, None)

    def when_bytes(self, action: Callable[[], None]) -> None:
        """Run `action` once the first bytes are on disk (now, if they are)."""
        if self.prefix() > 0:
            action()
        else:
            self._waiters.append(action)

    def wrote(self, prefix: int) -> None:
        """The prefix on disk is now `prefix` bytes (a chunk in order is complete, or the blob)."""
        self.written = prefix
        self._changed()

    def follow(self, stream: PeerTransfer, offset: int) -> None:
        """The bytes from `offset` on now come from `stream`."""
        self.stream, self.stream_offset, self.written = stream, offset, offset
        stream.on_change = self._changed
        self._changed()

    def unfollow(self) -> None:
        if self.stream is not None:
            self.written = int(self.stream_offset + self.stream.delivered())
            self.stream.on_change = None
            self.stream = None

    def _changed(self) -> None:
        for reader in list(self._readers):
            reader.source_changed()
        if self._waiters and self.prefix() > 0:
            waiters, self._waiters = self._waiters, []
            for action in waiters:
                action()
        elif self._waiters and self.rate() > 0:
            self.world.sim.after(self.world.timing.poll, self._changed)  # bytes are coming: look again


@dataclass
class Counters:
    """Bytes per source, summed over nodes, as the mirrors' metrics count them (`bytes_<source>`)."""

    bytes_peer: float = 0.0  # what containerd got through its mirror from peers
    bytes_inflight: float = 0.0  # of which served from downloads still in progress
    requests_peer: int = 0
    requests_miss: int = 0

    def as_record(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass
class World:
    sim: Simulation
    upstream: SharedLink
    uplinks: list[NodeLink]
    downlinks: list[NodeLink]
    router: Router
    owners: ClaimOwners
    timing: Timing
    downloads: dict[tuple[int, str], Download] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)

    def has_complete(self, node: int, digest: str) -> bool:
        download = self.downloads.get((node, digest))
        return download is not None and download.complete

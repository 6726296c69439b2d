"""What the simulated nodes share: the clock, the links, the router and the claims' owners, every node's downloads,
the counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from benchmark.sim.events import Simulation
from benchmark.sim.network import NodeLink, PeerTransfer, SharedLink
from benchmark.sim.routing import ClaimOwners, Router

# containerd 2.1.9's CPU seconds per byte on this machine, and how much more each process needs per process
# beyond the cores when they outnumber them: `python -m benchmark.unpack_bench` (see its docstring)
FETCH_COST = 3.3e-9
UNPACK_COST = 0.6e-9
SNAPSHOT_COPY_COST = 0.5e-9
CROWDING = 0.2


@dataclass(frozen=True)
class Timing:
    """Fixed costs (seconds), and the CPU work of containerd that the links do not set (CPU seconds per byte,
    `benchmark.unpack_bench` measures them on this machine). Defaults: the nodes of a cluster, each with its
    own cores and the overlayfs snapshotter; `netns_timing` gives this machine's netns benchmark."""

    rtt: float = 0.001  # one HTTP request's round trip through a veth pair
    lookup: float = 0.0005  # the mirror's router lookup, answered from its index
    poll: float = 0.01  # a mirror following a growing download looks for new bytes this often
    metadata: float = 0.03  # resolving the tag and fetching the manifest, before the first blob request
    start_spread: float = 0.015  # pulls asked "at once" start within this (the harness starts them in turn)
    # containerd taking a blob from its mirror once the mirror's copy of it is whole and verified (the mirror
    # gives containerd no byte before, `PeerBlob.verified`): receive, hash, write, commit
    fetch_cost: float = FETCH_COST
    unpack_cost: float = UNPACK_COST  # a layer's unpack (decompress, write its files), one layer at a time
    snapshot_copy_cost: float = 0.0  # per byte of the layers below, copied into each new snapshot (`native`)
    host_cores: float | None = None  # None: every node has its own CPU; else all nodes share this many cores
    crowding: float = CROWDING  # on shared cores, the CPU lost per job beyond the cores (`network.SharedLink`)


def netns_timing(cores: float) -> Timing:
    """The netns benchmark on one machine of `cores` cores: every node's containerd runs there, with the
    `native` snapshotter (each layer's snapshot starts as a copy of the layers below)."""
    return Timing(snapshot_copy_cost=SNAPSHOT_COPY_COST, host_cores=cores)


WRITE = 1 << 20  # containerd writes a download's data in order, 1 MiB at a time


class Arriving(Protocol):
    """A transfer in progress (`network.UpstreamTransfer`, `network.PeerTransfer`)."""

    def delivered(self) -> float: ...


class Download:
    """A blob a node is fetching: containerd's ingest (from upstream) or its mirror's copy (from a peer). The
    bytes on disk are always a prefix of the blob.

    Fed either by chunks (containerd's ranged fetch: the chunks before the first incomplete one are on disk,
    and of that one, `front`, what has arrived, in 1 MiB writes; containerd keeps the later chunks in memory
    until their turn) or by one stream (`follow`: the mirror's copy, the prefix grows as the stream delivers).
    A `network.Source` for the transfers that read it: they are told of every step and every change of the
    stream's rate, and while a front chunk arrives, every `poll` seconds in which it wrote."""

    def __init__(self, world: World, node: int, digest: str, size: int, started: float) -> None:
        self.world, self.node, self.digest, self.size = world, node, digest, size
        self.started = started
        self.written = 0  # bytes on disk before the current stream or front chunk
        self.stream: PeerTransfer | None = None
        self.stream_offset = 0
        self.front: Arriving | None = None
        self.complete = False
        self._waiters: list[Callable[[], None]] = []
        self._readers: dict[PeerTransfer, None] = {}  # in the order they came (a set's order is by address)
        self._ticking = False
        self._told = 0.0  # the prefix the readers were last told of

    def prefix(self) -> float:
        if self.complete:
            return self.size
        if self.stream is not None:
            return self.stream_offset + self.stream.delivered()
        if self.front is not None:
            return self.written + self.front.delivered() // WRITE * WRITE
        return self.written

    def feed(self, front: Arriving | None) -> None:
        """The next chunk in order arrives on `front` (None: it has not started)."""
        self.front = front
        self._tick()

    def _tick(self) -> None:
        """While a front chunk arrives and someone waits on this download, look every `poll` seconds."""
        if not self._ticking and self.front is not None and (self._readers or self._waiters):
            self._ticking = True
            self.world.sim.after(self.world.timing.poll, self._ticked)

    def _ticked(self) -> None:
        self._ticking = False
        if self.front is not None and self.prefix() != self._told:
            self._changed()
        self._tick()

    def rate(self) -> float:
        return self.stream.rate if self.stream is not None and not self.complete else 0.0

    def watch(self, transfer: PeerTransfer) -> None:
        self._readers[transfer] = None
        self._tick()

    def unwatch(self, transfer: PeerTransfer) -> None:
        self._readers.pop(transfer, None)

    def when_bytes(self, action: Callable[[], None]) -> None:
        """Run `action` once the first bytes are on disk (now, if they are)."""
        if self.prefix() > 0:
            action()
        else:
            self._waiters.append(action)
            self._tick()

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
        self._told = self.prefix()
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
    cpu: SharedLink | None = None  # the host's cores, when the nodes share them (`Timing.host_cores`)
    downloads: dict[tuple[int, str], Download] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)

    def compute(self, work: float, on_done: Callable[[], None]) -> None:
        """`work` CPU seconds of one thread, then `on_done()`: on the host's shared cores (`cpu`), or on the
        node's own (one core, at once)."""
        if self.cpu is None or work <= 0:
            self.sim.after(max(0.0, work), on_done)
        else:
            self.cpu.start(work, None, on_done)

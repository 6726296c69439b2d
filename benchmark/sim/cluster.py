"""A simulated cluster for one run (one mode): fresh nodes, then a phase at a time, each giving the same
records as the netns backend (`pulls`, `events`, a `traffic` row)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

from benchmark.bound import GOODPUT, payload_rate
from benchmark.sim.containerd import Blob, Containerd
from benchmark.sim.events import Simulation
from benchmark.sim.mirror import MirrorConfig, MirrorNode
from benchmark.sim.network import NodeLink, SharedLink
from benchmark.sim.routing import ClaimOwners, DelayModel, Router
from benchmark.sim.world import Timing, World

MIRROR_MODES = ("image", "layer", "inflight")
SIMULATED_MODES = ("upstream", *MIRROR_MODES)
# Image mode: a pulled image is advertised this long after the pull ends (containerd's image event comes after
# the unpack; the watcher then reads the image and announces its keys). Assumed, not measured apart.
IMAGE_EVENT_DELAY = 0.05


@dataclass(frozen=True)
class ClusterModel:
    nodes: int
    upstream_bandwidth: float  # bit/s, as in the scenario
    node_bandwidth: float  # bit/s
    chunk_size: int
    max_concurrent_downloads: int
    timing: Timing = field(default_factory=Timing)
    share_spread: float = 0.5  # upstream connections' shares spread +-50 % (see network.SharedLink)
    delays: DelayModel | None = None  # None: measured router delays for this many nodes
    mirror: MirrorConfig | None = None  # None: the mirror's defaults (`claims` is set by the mode)


@dataclass
class PhaseResult:
    pulls: list[dict[str, Any]]
    events: list[dict[str, Any]]
    traffic: dict[str, Any]


class SimCluster:
    def __init__(self, model: ClusterModel, mode: str, seed: int) -> None:
        if mode not in SIMULATED_MODES:
            raise ValueError(f"mode {mode!r} is not simulated (only {', '.join(SIMULATED_MODES)})")
        self.model, self.mode = model, mode
        self.rng = random.Random(seed)
        self.sim = Simulation()
        n = model.nodes
        node_rate = payload_rate(model.node_bandwidth)
        names = [f"{self.rng.getrandbits(64):016x}" for _ in range(n)]  # router names sort in no node order
        addresses = [f"n{i}:5000" for i in range(n)]
        delays = model.delays or DelayModel.for_nodes(n)
        router = Router(names, addresses, delays, seed)
        self.world = World(
            self.sim,
            SharedLink(self.sim, payload_rate(model.upstream_bandwidth), model.share_spread, seed),
            [NodeLink(node_rate) for _ in range(n)],
            [NodeLink(node_rate) for _ in range(n)],
            router,
            ClaimOwners(self.sim, names, delays, seed),
            model.timing,
            self._host_cpu(model.timing),
        )
        claims = mode == "inflight"
        config = dataclasses.replace(model.mirror, claims=claims) if model.mirror else MirrorConfig(claims=claims)
        address_of = {a: i for i, a in enumerate(addresses)}
        self.mirrors = (
            [MirrorNode(self.world, i, names[i], config, address_of) for i in range(n)]
            if mode in MIRROR_MODES
            else [None] * n
        )
        self._events: list[dict[str, Any]] = []
        self._pending = 0
        self.containerds = [
            Containerd(
                self.world,
                i,
                self.mirrors[i],
                model.chunk_size,
                model.max_concurrent_downloads,
                self._record,
                lambda digest, i=i: self._committed(i, digest),
            )
            for i in range(n)
        ]

    def _host_cpu(self, timing: Timing) -> SharedLink | None:
        if timing.host_cores is None:
            return None
        return SharedLink(self.sim, timing.host_cores, cap=1.0, overhead=timing.crowding)

    def _record(self, event: str, node: int, digest: str, time: float) -> None:
        self._events.append({"node": f"n{node}", "event": event, "digest": digest, "time": time})

    def _committed(self, node: int, digest: str) -> None:
        if self.mode in ("layer", "inflight"):
            self.world.router.announce(self.sim.now, node, digest, complete=True)

    def run_phase(self, blobs: list[Blob], batches: list[list[int]], delays: dict[int, float]) -> PhaseResult:
        """Pull `blobs` on every node of each batch (a batch starts when the previous one has finished), each
        node `delays[node]` seconds after its batch starts (plus the harness's start spread)."""
        phase_start = self.sim.now
        sent_before, counters_before = self.world.upstream.sent, self.world.counters.as_record()
        self._events = []
        pulls: list[dict[str, Any]] = []
        for batch, members in enumerate(batches):
            begin = self.sim.now
            self._pending = len(members)
            for node in members:
                start = begin + delays.get(node, 0.0) + self.rng.uniform(0, self.model.timing.start_spread)
                self.sim.at(
                    start, lambda node=node, start=start, batch=batch: self._pull(node, blobs, start, batch, pulls)
                )
            self.sim.run()
        counters_after = self.world.counters.as_record()
        payload = self.world.upstream.sent - sent_before
        traffic = {
            "phase_start": phase_start,
            "phase_end": self.sim.now,
            "upstream_bytes": payload / GOODPUT,  # on the wire, framing included, as tc counts
            "upstream_log_bytes": payload,
            **{name: counters_after[name] - counters_before[name] for name in counters_after},
        }
        for row in pulls:
            row["phase_start"] = phase_start
        return PhaseResult(pulls, self._events, traffic)

    def _pull(self, node: int, blobs: list[Blob], start: float, batch: int, pulls: list[dict[str, Any]]) -> None:
        def done() -> None:
            end = self.sim.now
            pulls.append(
                {"node": f"n{node}", "batch": batch, "start": start, "end": end, "duration": end - start, "ok": True}
            )
            self._pending -= 1
            if self._pending == 0:
                self.sim.stop()
            if self.mode == "image":
                for blob in blobs:
                    self.sim.after(
                        IMAGE_EVENT_DELAY,
                        lambda b=blob: self.world.router.announce(self.sim.now, node, b.digest, complete=True),
                    )

        self.containerds[node].pull(blobs, done)

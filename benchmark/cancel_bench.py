"""Cancellation: requests closed at random points leave nothing open behind them in the mirror.

Run: `.venv/bin/python -m benchmark.cancel_bench` (options: `--help`). Two mirrors run on loopback in this
process, each a real `MirrorBackend` behind the real HTTP server (spegel.registry.server), joined by an
in-memory router: A holds one blob in its OCI layout, B holds nothing and fetches it from A (`PeerClient`).
Clients (raw sockets, `--parallel` at once) send `--requests` GETs, a random mix of: to A (local, sendfile)
or to B (through the peer); the whole blob or a random range (up to a quarter of it); closed right after
sending (after a random wait of up to 5 ms), after the response head, after a random part of the body, or
after all of it (then the bytes are checked; a 404 from B, when A did not answer it in time, counts as a
miss). Bounded: at most `--requests` requests and `--deadline` seconds.

At the end it waits (up to 10 s) for the mirrors to settle and prints, against their values before the run:
this process's open file descriptors (with B's idle keep-alive connections to A closed first), the blob
files open, B's peer connections (TCP connections established to A) and B's per-peer load counters
(`PeerClient.load`). Nothing leaked when each is back where it started (the load counters at 0, no active
peer connection). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from benchmark.daemons import free_address
from spegel.metrics import Metrics, RegistryLabels
from spegel.mirror.backend import MirrorBackend, MirrorOptions
from spegel.mirror.peers import PeerClient, Timeouts
from spegel.oci.digest import Digest
from spegel.registry.app import create_app
from spegel.registry.server import serve_app
from spegel.routing.base import KeyState
from spegel.routing.memory import MemoryNetwork
from spegel.store.layout import OCILayoutStore, write_layout

MiB = 1 << 20
REGISTRY = "example.com"
CLOSE_POINTS = ("after_send", "after_head", "mid_body", "complete")


@dataclass(frozen=True)
class Snapshot:
    fds: int
    blob_fds: int
    peer_connections: int
    load: dict[str, int]

    def line(self, name: str) -> str:
        return (
            f"{name:<6} open fds {self.fds:>4}  blob files open {self.blob_fds}  peer connections"
            f" {self.peer_connections}  load {self.load}"
        )


def snapshot(peers: PeerClient, blob_path: Path, peer_port: int) -> Snapshot:
    fds = os.listdir("/proc/self/fd")
    blob_fds = 0
    for fd in fds:
        try:
            blob_fds += os.readlink(f"/proc/self/fd/{fd}") == str(blob_path)
        except OSError:
            continue
    return Snapshot(len(fds), blob_fds, _established_to(peer_port), dict(peers.load))


def _established_to(port: int) -> int:
    """TCP connections in this network namespace that are established to `port` on loopback (B's blob requests to
    A, and clients' requests to A while they run), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        count += state == "01" and int(remote.rsplit(":", 1)[1], 16) == port
    return count


async def client(
    address: str, digest: Digest, data: bytes, rng: random.Random, counts: collections.Counter[str]
) -> None:
    """One request closed at a random point (see the module's docstring)."""
    host, _, port = address.rpartition(":")
    size = len(data)
    if rng.random() < 0.5:
        start, end, range_header = 0, size - 1, ""
    else:
        start = rng.randrange(size)
        end = min(size - 1, start + rng.randrange(size // 4))
        range_header = f"Range: bytes={start}-{end}\r\n"
    point = rng.choice(CLOSE_POINTS)
    request = f"GET /v2/team/app/blobs/{digest}?ns={REGISTRY} HTTP/1.1\r\nHost: x\r\n{range_header}\r\n".encode()
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        await stream.send_all(request)
        if point == "after_send":
            await trio.sleep(rng.uniform(0, 0.005))
            counts[point] += 1
            return
        received = bytearray()
        while b"\r\n\r\n" not in received:
            piece = await stream.receive_some(1 << 16)
            if not piece:
                raise RuntimeError(f"{address}: closed before the response head")
            received += piece
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 404"):  # B found no answer from A in time (a loaded machine): a miss
            counts["miss"] += 1
            return
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 206")):
            raise RuntimeError(f"{address}: {head.splitlines()[0]!r}")
        want = end - start + 1
        stop = {"after_head": 0, "mid_body": rng.randrange(want), "complete": want}[point]
        got = bytearray(body)
        while len(got) < stop:
            piece = await stream.receive_some(1 << 20)
            if not piece:
                raise RuntimeError(f"{address}: body ended at {len(got)} of {want}")
            got += piece
        if point == "complete" and bytes(got[:want]) != data[start : end + 1]:
            raise RuntimeError(f"{address}: wrong bytes for {start}-{end}")
        counts[point] += 1
    finally:
        await stream.aclose()


async def run(requests: int, parallel: int, deadline: float, size: int, seed: int) -> int:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    digest = Digest.of(data)
    with tempfile.TemporaryDirectory(prefix="spegel-cancel-bench-") as tmp:
        write_layout(Path(tmp) / "a", {digest: data}, [])
        write_layout(Path(tmp) / "b", {}, [])
        blob_path = Path(tmp) / "a" / "blobs" / digest.algorithm / digest.hex
        network = MemoryNetwork()
        a_addr, b_addr = free_address(), free_address()
        peers = PeerClient(Timeouts(connect=0.5, first_byte=2.0, read=5.0, inflight_wait=0.0))
        async with trio.open_nursery() as nursery:
            for address, layout, client_of_peers in ((a_addr, "a", PeerClient()), (b_addr, "b", peers)):
                router = network.join(address)
                store = OCILayoutStore(Path(tmp) / layout)
                metrics = Metrics(RegistryLabels([REGISTRY]))
                backend = MirrorBackend(store, router, client_of_peers, metrics, MirrorOptions())
                backend.copies.keep = 0  # no verified copy kept: every request to B that A answers is a peer transfer
                await nursery.start(serve_app, create_app(backend, REGISTRY), address)
                if layout == "a":
                    await router.advertise([str(digest)], KeyState.COMPLETE)
            a_port = int(a_addr.rpartition(":")[2])
            before = snapshot(peers, blob_path, a_port)
            counts: collections.Counter[str] = collections.Counter()
            errors: list[str] = []
            started = time.monotonic()
            todo = iter(range(requests))
            with trio.move_on_after(deadline) as scope:
                async with trio.open_nursery() as clients:
                    for worker in range(parallel):
                        clients.start_soon(_worker, todo, (a_addr, b_addr), digest, data, seed + worker, counts, errors)
            took = time.monotonic() - started
            settled = await _settle(peers, blob_path, a_port, before)
            after = snapshot(peers, blob_path, a_port)
            await peers.aclose()  # B's idle keep-alive connections (manifests): closed, so that the fd count compares
            await trio.sleep(0.2)
            closed = snapshot(peers, blob_path, a_port)
            nursery.cancel_scope.cancel()
    done = sum(counts.values())
    print(f"{done} requests in {took:.1f} s ({'cut by the deadline' if scope.cancelled_caught else 'all done'}),")
    print(f"  {parallel} at once, {size // MiB} MiB blob, closed: {dict(counts)}; client errors: {len(errors)}")
    for error in errors[:5]:
        print(f"  error: {error}")
    print(before.line("before"))
    print(after.line("after") + f"  (settled: {settled})")
    print(closed.line("closed") + "  (after B's idle keep-alive connections were closed)")
    leaked = closed.fds > before.fds or after.blob_fds or after.peer_connections or any(after.load.values()) or errors
    print("nothing leaked" if not leaked else "LEAKED or failed: see above")
    return 1 if leaked else 0


async def _worker(
    todo: Any,
    addresses: tuple[str, str],
    digest: Digest,
    data: bytes,
    seed: int,
    counts: collections.Counter[str],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    for _ in todo:
        try:
            await client(rng.choice(addresses), digest, data, rng, counts)
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))


async def _settle(peers: PeerClient, blob_path: Path, a_port: int, before: Snapshot) -> bool:
    """Wait up to 10 s for the load counters, active peer connections and open blob files to drop back."""
    with trio.move_on_after(10):
        while True:
            now = snapshot(peers, blob_path, a_port)
            if not any(now.load.values()) and not now.peer_connections and now.blob_fds <= before.blob_fds:
                return True
            await trio.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cancel_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests in all (default: 10000)")
    parser.add_argument("--parallel", type=int, default=16, help="requests at once (default: 16)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds at most (default: 600)")
    parser.add_argument("--size", type=int, default=4 * MiB, help="blob size in bytes (default: 4 MiB)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.parallel < 1 or args.size < MiB:
        parser.error("--requests and --parallel must be >= 1, --size >= 1 MiB")
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return trio.run(run, args.requests, args.parallel, args.deadline, args.size, args.seed)


if __name__ == "__main__":
    sys.exit(main())

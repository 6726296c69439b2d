"""How fast the containerd watcher advertises, per mode, and what watching costs.

Run: `.venv/bin/python -m benchmark.watcher_bench` (options: `--help`). For each watcher (`image`, `layer`,
`inflight`, and for comparison a bare Content.ListStatuses poller at 50 and 200 ms) it starts a fresh containerd
2.1.9 (8 concurrent downloads) and the watcher in its own process (the exact `Watcher` the mirror runs, with a
router that prints each call), then pulls (CRI PullImage) `--repeats` images of 8 layers from a CNCF
distribution registry behind a loopback proxy throttled to `--rate` bytes/s, so that 8 layers download at once.
It prints, per watcher, p50/p95 over every layer of:

- commit -> complete: from containerd's commit of the layer (the blob's mtime, which containerd sets to its
  commit time just after the rename) to the watcher's complete advertisement of it;
- ingest -> in progress: from the ingest's start (containerd's own `startedat`, captured while it exists) to
  the in-progress advertisement (inflight) or the first poll that sees the ingest with data (pollers); an
  ingest counts only once its first bytes are on disk, so this includes the wait for the first 1 MiB;
- data -> in progress: from the first bytes on disk (this process polls every 2 ms) to the same moment;

and the CPU time (user + system, /proc) of the watcher's process during the pulls. Nothing is asserted.

`python -m benchmark.watcher_bench bridge` prints the cost of one gRPC call (containerd's Version) made from
trio through the asyncio-thread bridge, beside the same grpclib call on a plain asyncio loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpclib.client
import httpx
import trio
from google.protobuf import empty_pb2

from benchmark.daemons import Containerd, Registry
from benchmark.images import ImageSpec, SyntheticImage, build, push
from benchmark.server_bench import process_usage
from benchmark.throttle import ThrottledProxy
from spegel.routing.base import Holder, KeyState
from spegel.store.containerd.client import ContainerdClient
from spegel.store.containerd.ingest import list_ingests, ref_digest
from spegel.store.containerd.proto import version_grpc
from spegel.store.containerd.store import ContainerdStore
from spegel.store.containerd.watcher import Mode, Watcher
from spegel.tracker import Tracker

LAYERS = 8
WATCHERS = ["image", "layer", "inflight", "poll-50ms", "poll-200ms"]


class EchoRouter:
    """A `Router` that prints each call as a JSON line on stdout (`at` wall-clock time, `kind` advertise or
    withdraw, `keys`, `state`: what the driver reads) and keeps the key states advertised (`state`)."""

    def __init__(self) -> None:
        self.name = "echo"
        self.state: dict[str, KeyState] = {}

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        keys = tuple(keys)
        self.state.update(dict.fromkeys(keys, state))
        self._echo("advertise", keys, state.value)

    async def withdraw(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        for key in keys:
            self.state.pop(key, None)
        self._echo("withdraw", keys, None)

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        return []

    def ready(self) -> bool:
        return True

    def _echo(self, kind: str, keys: tuple[str, ...], state: str | None) -> None:
        print(json.dumps({"at": time.time(), "kind": kind, "keys": keys, "state": state}), flush=True)


# --- the watcher process ---


async def watch(kind: str, socket: str, content_root: str) -> None:
    """Run one watcher until killed, printing `ready` once it is, then its router calls as JSON lines."""
    router = EchoRouter()
    store = ContainerdStore(ContainerdClient(socket), content_root)
    if kind.startswith("poll-"):
        interval = float(kind.removeprefix("poll-").removesuffix("ms")) / 1000
        print("ready", flush=True)
        await poll_statuses(store.client, router, interval)
    else:
        async with trio.open_nursery() as nursery:
            await nursery.start(Watcher(store, Tracker(router), Mode(kind)).run)
            print("ready", flush=True)


async def poll_statuses(client: ContainerdClient, router: EchoRouter, interval: float) -> None:
    """The alternative to inotify: list the namespace's ingests every `interval` s, report new ones."""
    while True:
        for status in await client.list_statuses():
            digest = ref_digest(status.ref)  # ListStatuses reports refs without the namespace prefix
            if digest is not None and status.offset > 0 and str(digest) not in router.state:
                await router.advertise([str(digest)], KeyState.IN_PROGRESS)
        await trio.sleep(interval)


# --- the driver ---


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95 (nearest rank) in ms, NaN when empty."""
    if not values:
        return math.nan, math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(0.95 * len(ordered)) - 1)
    return statistics.median(ordered) * 1000, ordered[rank] * 1000


async def capture_ingest_starts(content_root: Path, starts: dict[str, float], first_bytes: dict[str, float]) -> None:
    """Record containerd's `startedat` of every ingest while it exists, and when its data first has bytes."""
    while True:
        for ingest in await trio.to_thread.run_sync(list_ingests, content_root, "k8s.io"):
            key = str(ingest.digest)
            if key not in starts:
                with contextlib.suppress(FileNotFoundError, ValueError):  # not written yet, or gone: next round
                    starts[key] = datetime.fromisoformat((ingest.path / "startedat").read_text()).timestamp()
            if key not in first_bytes and ingest.size() > 0:
                first_bytes[key] = time.time()
        await trio.sleep(0.002)


@dataclass
class Result:
    watcher: str
    commit_to_complete: list[float]
    ingest_to_in_progress: list[float]
    data_to_in_progress: list[float]
    cpu_seconds: float
    pull_seconds: float


async def run_watcher(kind: str, images: list[SyntheticImage], upstream: Registry, rate: float, base: Path) -> Result:
    commit_delays: list[float] = []
    ingest_delays: list[float] = []
    data_delays: list[float] = []
    cpu = pulling = 0.0
    with Containerd(base / kind, max_concurrent_downloads=LAYERS) as containerd:
        argv = [sys.executable, "-m", "benchmark.watcher_bench", "watch", kind]
        argv += ["--socket", str(containerd.socket), "--content", str(containerd.content_root)]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {kind} watcher did not start")
            proxy = ThrottledProxy(upstream.address, rate)
            async with ContainerdClient(str(containerd.socket)) as client, trio.open_nursery() as nursery:
                await nursery.start(proxy.serve)
                (containerd.hosts_dir / proxy.address).mkdir()
                (containerd.hosts_dir / proxy.address / "hosts.toml").write_text(f'server = "http://{proxy.address}"\n')
                starts: dict[str, float] = {}
                first_bytes: dict[str, float] = {}
                nursery.start_soon(capture_ingest_starts, containerd.content_root, starts, first_bytes)
                for number in range(len(images)):
                    before = process_usage([child.pid]).cpu_seconds
                    began = time.monotonic()
                    await client.pull_image(f"{proxy.address}/bench/watch:{number}")
                    pulling += time.monotonic() - began
                    await trio.sleep(0.5)  # the last events
                    cpu += process_usage([child.pid]).cpu_seconds - before
                nursery.cancel_scope.cancel()
        finally:
            child.terminate()
            out, _ = child.communicate(timeout=10)
    calls = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for image in images:
        for layer in image.platforms[0].layers:
            key = str(layer.digest)
            complete = next((c["at"] for c in calls if key in c["keys"] and c["state"] == "complete"), None)
            progress = next((c["at"] for c in calls if key in c["keys"] and c["state"] == "in_progress"), None)
            blob = containerd.content_root / "blobs" / "sha256" / layer.digest.hex
            if complete is not None:
                commit_delays.append(complete - blob.stat().st_mtime)
            if progress is not None and key in starts:
                ingest_delays.append(progress - starts[key])
            if progress is not None and key in first_bytes:
                data_delays.append(progress - first_bytes[key])
    return Result(kind, commit_delays, ingest_delays, data_delays, cpu, pulling)


async def bench(args: argparse.Namespace) -> None:
    layer_size = int(args.layer_mib * (1 << 20))
    images = [
        build(ImageSpec((layer_size,) * LAYERS, compression="none", seed=9000 + number))
        for number in range(args.repeats)
    ]
    with tempfile.TemporaryDirectory(prefix="watcher-bench-") as tmp, Registry(Path(tmp) / "upstream") as upstream:
        async with httpx.AsyncClient() as http:
            for number, image in enumerate(images):
                await push(image, http, upstream.url, "bench/watch", str(number))
        results = [await run_watcher(kind, images, upstream, args.rate, Path(tmp)) for kind in args.watchers]
    print(
        f"\n{args.repeats} pulls of {LAYERS} x {args.layer_mib:g} MiB layers, upstream throttled to "
        f"{args.rate / 1e6:g} MB/s; delays in ms (p50 / p95 over {args.repeats * LAYERS} layers)"
    )
    header = ["commit->complete", "ingest->in progress", "data->in progress"]
    print(f"{'watcher':<11}" + "".join(f"{h:>21}" for h in header) + f"{'CPU during pulls':>24}")
    for r in results:
        cells = [quantiles(v) for v in (r.commit_to_complete, r.ingest_to_in_progress, r.data_to_in_progress)]
        share = 100 * r.cpu_seconds / r.pull_seconds if r.pull_seconds else math.nan
        print(
            f"{r.watcher:<11}"
            + "".join(f"{p50:>11.1f} / {p95:>7.1f}" for p50, p95 in cells)
            + f"{r.cpu_seconds * 1000:>14.0f} ms ({share:4.1f} %)"
        )


# --- the bridge's cost ---


def bridge_cost(calls: int, concurrency: int) -> None:
    """Version calls to a fresh containerd: grpclib on a plain asyncio loop vs through the trio bridge."""

    async def direct() -> tuple[float, float]:
        channel = grpclib.client.Channel(path=str(containerd.socket))
        stub = version_grpc.VersionStub(channel)
        try:
            await stub.Version(empty_pb2.Empty())  # connect
            began = time.perf_counter()
            for _ in range(calls):
                await stub.Version(empty_pb2.Empty())
            sequential = (time.perf_counter() - began) / calls
            began = time.perf_counter()
            for _ in range(calls // concurrency):
                await asyncio.gather(*(stub.Version(empty_pb2.Empty()) for _ in range(concurrency)))
            return sequential, (time.perf_counter() - began) / calls
        finally:
            channel.close()

    async def bridged() -> tuple[float, float]:
        async with ContainerdClient(str(containerd.socket)) as client:
            await client.version()
            began = time.perf_counter()
            for _ in range(calls):
                await client.version()
            sequential = (time.perf_counter() - began) / calls
            began = time.perf_counter()
            for _ in range(calls // concurrency):
                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(client.version)
            return sequential, (time.perf_counter() - began) / calls

    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp, Containerd(Path(tmp)) as containerd:
        results = {"asyncio (direct)": asyncio.run(direct()), "trio via bridge": trio.run(bridged)}
    print(f"\n{calls} Version calls to containerd; us per call")
    print(f"{'client':<18} {'sequential':>11} {f'{concurrency} at once':>12}")
    for name, (sequential, concurrent) in results.items():
        print(f"{name:<18} {sequential * 1e6:>11.0f} {concurrent * 1e6:>12.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.watcher_bench", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the benchmark (the default)")
    run.add_argument("--repeats", type=int, default=3, help="pulls per watcher (default 3)")
    run.add_argument("--layer-mib", type=float, default=4, help="size of each of the 8 layers (default 4)")
    run.add_argument("--rate", type=float, default=16e6, help="upstream bytes/s (default 16e6)")
    run.add_argument("--watchers", nargs="+", choices=WATCHERS, default=WATCHERS)
    bridge = commands.add_parser("bridge", help="cost of a gRPC call through the trio <-> asyncio bridge")
    bridge.add_argument("--calls", type=int, default=2000)
    bridge.add_argument("--concurrency", type=int, default=50)
    child = commands.add_parser("watch", help="(internal) run one watcher, printing its router calls")
    child.add_argument("kind", choices=WATCHERS)
    child.add_argument("--socket", required=True)
    child.add_argument("--content", required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "watch", "bridge", "-h", "--help"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command == "watch":
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(watch, args.kind, args.socket, args.content)
        return 0
    if args.command == "bridge":
        bridge_cost(args.calls, args.concurrency)
        return 0
    trio.run(bench, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

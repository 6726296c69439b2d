"""The libp2p router on loopback: N real nodes, each its own process (`spegel.routing.libp2p.node`), full mesh.

Prints, for each cluster size:
- idle CPU (% of one core) and RSS per node, after meshing;
- advertise -> visible elsewhere: one node advertises a fresh key, every other node reports the wall-clock time
  it first saw it (p50/p95 over all receivers and rounds);
- hot-path lookup latency (p50/p99), measured inside each node, for keys the index holds, and for misses;
- keys per second advertised: one node advertises `--keys` keys in batches, time until every other node sees all;
- CPU and RSS per node after the workload.

Run: `.venv/bin/python -m benchmark.router_bench [--nodes 10 30] [--rounds 30] [--keys 5000] [--no-dht]`
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import trio

from spegel.routing.libp2p.cluster import NodeProcess, running_cluster

MIB = 1024 * 1024


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`, inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


async def usage(nodes: list[NodeProcess]) -> list[dict[str, float]]:
    return [await node.request("usage") for node in nodes]


async def visibility(nodes: list[NodeProcess], rounds: int, rng: random.Random) -> list[float]:
    """Seconds from advertise (returned at the source) to first seen at each other node."""
    delays: list[float] = []
    for round_ in range(rounds):
        source = rng.choice(nodes)
        key = f"sha256:{rng.getrandbits(256):064x}"
        receivers = [node for node in nodes if node is not source]
        seen: dict[str, float] = {}

        async def watch(node: NodeProcess, key: str = key, seen: dict[str, float] = seen) -> None:
            answer = await node.request("watch", keys=[key], timeout=10.0)
            if key in answer["seen"]:
                seen[node.name] = answer["seen"][key]

        async with trio.open_nursery() as nursery:
            for node in receivers:
                nursery.start_soon(watch, node)
            await trio.sleep(0.3)  # let every watch register before the advertisement
            advertised = (await source.request("advertise", keys=[key]))["at"]
        missing = len(receivers) - len(seen)
        if missing:
            print(f"  round {round_}: {missing} receivers did not see the key within 10 s")
        delays.extend(max(0.0, at - advertised) for at in seen.values())
    return delays


async def hot_lookups(nodes: list[NodeProcess], keys: list[str], misses: int) -> tuple[list[float], list[float]]:
    hits: list[float] = []
    missed: list[float] = []
    for node in nodes:
        answer = await node.request("lookups", keys=keys, timeout=0.02)
        hits.extend(answer["latencies"])
        answer = await node.request("lookups", keys=[f"sha256:absent-{node.name}-{i}" for i in range(misses)])
        missed.extend(answer["latencies"])
    return hits, missed


async def bulk(nodes: list[NodeProcess], count: int, batch: int) -> float:
    """Keys per second: `count` keys advertised by node0 in batches of `batch`, until all seen everywhere."""
    keys = [f"sha256:bulk{i:060d}" for i in range(count)]
    last_seen: list[float] = []

    async def watch(node: NodeProcess) -> None:
        answer = await node.request("watch", keys=keys, timeout=120.0, answer_within=150.0)
        if len(answer["seen"]) < count:
            print(f"  {node.name} saw {len(answer['seen'])}/{count} keys within 120 s")
        last_seen.append(max(answer["seen"].values(), default=float("nan")))

    async with trio.open_nursery() as nursery:
        for node in nodes[1:]:
            nursery.start_soon(watch, node)
        await trio.sleep(0.5)
        start = time.time()
        for offset in range(0, count, batch):
            await nodes[0].request("advertise", keys=keys[offset : offset + batch])
    return count / (max(last_seen) - start)


async def measure(size: int, rounds: int, keys: int, root: Path, router_args: list[str]) -> None:
    rng = random.Random(size)
    started = time.monotonic()
    async with running_cluster(root / f"n{size}", size, router_args, mesh_timeout=180.0) as nodes:
        print(f"\n== {size} nodes {' '.join(router_args)} (meshed in {time.monotonic() - started:.1f} s)")
        await trio.sleep(5)
        before = await usage(nodes)
        await trio.sleep(10)
        after = await usage(nodes)
        idle_cpu = [100 * (b["cpu"] - a["cpu"]) / 10 for a, b in zip(before, after, strict=True)]
        print(
            f"idle: CPU per node median {statistics.median(idle_cpu):.1f}% max {max(idle_cpu):.1f}% of a core; "
            f"RSS per node median {statistics.median(u['rss'] for u in after) / MIB:.0f} MiB "
            f"max {max(u['rss'] for u in after) / MIB:.0f} MiB"
        )

        delays = await visibility(nodes, rounds, rng)
        spent = [b["cpu"] - a["cpu"] for a, b in zip(after, await usage(nodes), strict=True)]
        print(
            f"advertise -> visible elsewhere ({len(delays)} samples): p50 {ms(statistics.median(delays))}, "
            f"p95 {ms(percentile(delays, 95))}, max {ms(max(delays))}; CPU per advertisement per node "
            f"(announce + DHT provide + the driver's watch) median {ms(statistics.median(spent) / rounds)}"
        )

        hot_keys = [f"sha256:hot{i:061d}" for i in range(200)]
        for i, node in enumerate(nodes):
            await node.request("advertise", keys=hot_keys[i::size])
        others = [key for key in hot_keys if key not in hot_keys[size - 1 :: size]]
        await nodes[-1].request("watch", keys=others, timeout=30.0, answer_within=40.0)
        await trio.sleep(1)
        hits, missed = await hot_lookups(nodes, hot_keys, misses=200)
        print(
            f"hot-path lookup, hits ({len(hits)}): p50 {ms(statistics.median(hits))}, p99 {ms(percentile(hits, 99))}; "
            f"misses ({len(missed)}): p50 {ms(statistics.median(missed))}, p99 {ms(percentile(missed, 99))}, "
            f"max {ms(max(missed))} (budget 20 ms)"
        )

        rate = await bulk(nodes, keys, batch=100)
        print(f"keys advertised: {keys} keys from one node in batches of 100, visible everywhere at {rate:.0f} keys/s")
        loaded = await usage(nodes)
        cpu = [u["cpu"] for u in loaded]
        print(
            f"after the workload: CPU seconds per node median {statistics.median(cpu):.1f} max {max(cpu):.1f}; "
            f"RSS per node median {statistics.median(u['rss'] for u in loaded) / MIB:.0f} MiB "
            f"max {max(u['rss'] for u in loaded) / MIB:.0f} MiB"
        )


async def main(sizes: list[int], rounds: int, keys: int, router_args: list[str]) -> None:
    print(f"{os.cpu_count()} CPUs shared by all nodes; load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="router-bench-") as root:
        for size in sizes:
            await measure(size, rounds, keys, Path(root), router_args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30], help="cluster sizes (default: 10 30)")
    parser.add_argument("--rounds", type=int, default=30, help="advertise->visible rounds (default: 30)")
    parser.add_argument("--keys", type=int, default=5000, help="keys for the keys/s measure (default: 5000)")
    parser.add_argument("--no-dht", action="store_true", help="run the nodes with --no-router-dht (fast path only)")
    options = parser.parse_args()
    trio.run(main, options.nodes, options.rounds, options.keys, ["--no-router-dht"] if options.no_dht else [])

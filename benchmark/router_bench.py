"""The libp2p router on loopback: N real nodes, each its own process (`benchmark.router_node`), in the overlay.

Prints, for each cluster size:
- idle CPU (% of one core) and RSS per node, after meshing;
- messages each node received and passed on per advertisement (1 and about 1 when every message takes one tree);
- advertise -> visible elsewhere: one node advertises a fresh key, every other node reports the wall-clock time
  it first saw it (p50/p95 over all receivers and rounds);
- hot-path lookup latency (p50/p99), measured inside each node, for keys the index holds, and for misses;
- keys per second advertised: one node advertises `--keys` keys in batches, time until every other node sees all;
- CPU and RSS per node after the workload.

Ends with one table over all sizes (the issue's goals beside it). CPU per announcement per node is the CPU each node
spent handling the announcements (deltas) it received during the advertise rounds (decoding, applying, passing on:
the router's `handling_seconds`, process CPU time), per round. Not in it: the transport below (noise, yamux), which
costs about the same per frame at every size, and the full states every node refreshes every ttl / 3, which reach
every node (printed beside it, per second). Process CPU less idle CPU, the earlier measure, was lost in the idle
CPU's drift at 100 nodes (and the DHT provides of the keys advertised, 30 s later, fall into any idle window).
`--csv FILE` writes every advertise -> visible sample (nodes, seconds), e.g. for a simulator to draw routing delays
from.

Run: `.venv/bin/python -m benchmark.router_bench [--nodes 10 30 100] [--rounds 30] [--keys 5000] [--no-dht]
[--csv FILE]`
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from benchmark.router_cluster import NodeProcess, running_cluster

MIB = 1024 * 1024
SETTLE = 10.0  # seconds after meshing before anything is measured (links the bootstrap made are closed by then)
IDLE_WINDOW = 15.0  # seconds of idle CPU measured before the advertise rounds
START_TIMEOUT = 300.0  # seconds one node process may take to start while the ones before it mesh (2 busy cores)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`, inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


@dataclass
class Result:
    """What one cluster size measured (seconds, bytes)."""

    size: int
    delays: list[float] = field(default_factory=list)
    hits: list[float] = field(default_factory=list)
    cpu_per_announcement: float = math.nan  # median over nodes, idle CPU taken out
    rss_idle: float = math.nan  # median over nodes
    rss_after: float = math.nan
    rss_max: float = math.nan
    keys_per_second: float = math.nan
    copies: float = math.nan  # announcement messages each node received per advertisement (mean)


def mesh_timeout(size: int) -> float:
    """Seconds a cluster of `size` processes may take to mesh on a machine of two cores (every pair connects)."""
    return 60.0 + 6.0 * size


async def usage(nodes: list[NodeProcess]) -> list[dict[str, float]]:
    """Each node's CPU seconds and RSS so far, and when the driver got them (`at`, monotonic seconds)."""
    return [{**await node.request("usage"), "at": time.monotonic()} for node in nodes]


async def idle_cpu(nodes: list[NodeProcess]) -> tuple[list[float], list[float]]:
    """Each node's CPU (fraction of a core) over `IDLE_WINDOW` s of no work, and its RSS at the end."""
    before = await usage(nodes)
    await trio.sleep(IDLE_WINDOW)
    after = await usage(nodes)
    rates = [(b["cpu"] - a["cpu"]) / (b["at"] - a["at"]) for a, b in zip(before, after, strict=True)]
    return rates, [u["rss"] for u in after]


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


async def measure(size: int, rounds: int, keys: int, root: Path, router_args: list[str]) -> Result:
    rng = random.Random(size)
    result = Result(size)
    started = time.monotonic()
    cluster = running_cluster(root / f"n{size}", size, router_args, mesh_timeout(size), start_timeout=START_TIMEOUT)
    async with cluster as nodes:
        print(f"\n== {size} nodes {' '.join(router_args)} (meshed in {time.monotonic() - started:.1f} s)")
        await trio.sleep(SETTLE)
        idle_rate, rss = await idle_cpu(nodes)
        result.rss_idle = statistics.median(rss)
        print(
            f"idle: CPU per node median {100 * statistics.median(idle_rate):.1f}% max {100 * max(idle_rate):.1f}% of "
            f"a core; RSS per node median {result.rss_idle / MIB:.0f} MiB max {max(rss) / MIB:.0f} MiB"
        )

        status_before = [await node.request("status") for node in nodes]
        rounds_started = time.monotonic()
        result.delays = await visibility(nodes, rounds, rng)
        rounds_took = time.monotonic() - rounds_started
        status_after = [await node.request("status") for node in nodes]
        pairs = list(zip(status_before, status_after, strict=True))
        deltas = [(b["handled"]["delta"] - a["handled"]["delta"]) / rounds for a, b in pairs]
        frames = [sum(b["handled"].values()) - sum(a["handled"].values()) for a, b in pairs]
        states = [(b["handled"]["state"] - a["handled"]["state"]) / rounds_took for a, b in pairs]
        passed = [(b["frames"]["passed_on"] - a["frames"]["passed_on"]) / rounds for a, b in pairs]
        handling = [(b["handling_seconds"]["delta"] - a["handling_seconds"]["delta"]) / rounds for a, b in pairs]
        result.copies = statistics.mean(deltas)
        result.cpu_per_announcement = statistics.median(handling)
        delays = result.delays
        print(
            f"advertise -> visible elsewhere ({len(delays)} samples): p50 {ms(statistics.median(delays))}, "
            f"p95 {ms(percentile(delays, 95))}, max {ms(max(delays))}; per advertisement per node: deltas received "
            f"{result.copies:.2f} (max {max(deltas):.2f}), passed on {statistics.mean(passed):.2f} (max "
            f"{max(passed):.2f}), CPU handling them median {ms(result.cpu_per_announcement)} "
            f"(max {ms(max(handling))}); "
            f"beside them each node received {statistics.mean(frames) / rounds:.2f} frames of all kinds per round, "
            f"{statistics.mean(states):.2f} full states a second (every node's refresh, every ttl / 3)"
        )

        hot_keys = [f"sha256:hot{i:061d}" for i in range(200)]
        for i, node in enumerate(nodes):
            await node.request("advertise", keys=hot_keys[i::size])
        others = [key for key in hot_keys if key not in hot_keys[size - 1 :: size]]
        await nodes[-1].request("watch", keys=others, timeout=30.0, answer_within=40.0)
        await trio.sleep(1)
        hits, missed = await hot_lookups(nodes, hot_keys, misses=200)
        result.hits = hits
        print(
            f"hot-path lookup, hits ({len(hits)}): p50 {ms(statistics.median(hits))}, p99 {ms(percentile(hits, 99))}; "
            f"misses ({len(missed)}): p50 {ms(statistics.median(missed))}, p99 {ms(percentile(missed, 99))}, "
            f"max {ms(max(missed))} (budget 20 ms)"
        )

        result.keys_per_second = await bulk(nodes, keys, batch=100)
        print(
            f"keys advertised: {keys} keys from one node in batches of 100, visible everywhere at "
            f"{result.keys_per_second:.0f} keys/s"
        )
        loaded = await usage(nodes)
        cpu = [u["cpu"] for u in loaded]
        result.rss_after = statistics.median(u["rss"] for u in loaded)
        result.rss_max = max(u["rss"] for u in loaded)
        print(
            f"after the workload: CPU seconds per node median {statistics.median(cpu):.1f} max {max(cpu):.1f}; "
            f"RSS per node median {result.rss_after / MIB:.0f} MiB max {result.rss_max / MIB:.0f} MiB; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    return result


def table(results: list[Result]) -> str:
    """The summary over all sizes, with the issue's goals (at the largest size, against the smallest)."""
    first = results[0]
    rows = [
        (
            "announce -> visible p50 / p95 (ms)",
            lambda r: f"{1000 * statistics.median(r.delays):.1f} / {1000 * percentile(r.delays, 95):.1f}",
            "p95 <= 100",
        ),
        (
            "hot lookup p50 / p99 (ms)",
            lambda r: f"{1000 * statistics.median(r.hits):.3f} / {1000 * percentile(r.hits, 99):.3f}",
            "p99 <= 5",
        ),
        (
            "CPU handling one announcement, per node (ms)",
            lambda r: (
                f"{1000 * r.cpu_per_announcement:.2f} ({r.cpu_per_announcement / first.cpu_per_announcement:.2f} x)"
            ),
            f"<= 1.5 x the {first.size}-node value",
        ),
        (
            "RSS per node idle / after / max (MiB)",
            lambda r: f"{r.rss_idle / MIB:.0f} / {r.rss_after / MIB:.0f} / {r.rss_max / MIB:.0f}",
            "<= 128",
        ),
        ("deltas received per announcement per node", lambda r: f"{r.copies:.2f}", ""),
        ("keys/s visible everywhere", lambda r: f"{r.keys_per_second:.0f}", ""),
    ]
    header = "| | " + " | ".join(f"{r.size} nodes" for r in results) + " | goal |"
    lines = [header, "|" + "---|" * (len(results) + 2)]
    for name, cell, goal in rows:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in results) + f" | {goal} |")
    return "\n".join(lines)


def write_csv(path: Path, results: list[Result]) -> None:
    """Every advertise -> visible sample: `nodes,seconds`."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["nodes", "seconds"])
        for result in results:
            writer.writerows([result.size, f"{delay:.6f}"] for delay in result.delays)


async def main(sizes: list[int], rounds: int, keys: int, router_args: list[str], csv_path: Path | None) -> None:
    print(f"{os.cpu_count()} CPUs shared by all nodes; load average before: {os.getloadavg()[0]:.1f}")
    results = []
    with tempfile.TemporaryDirectory(prefix="router-bench-") as root:
        for size in sizes:
            results.append(await measure(size, rounds, keys, Path(root), router_args))
            if csv_path is not None:
                write_csv(csv_path, results)
    print("\n" + table(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30], help="cluster sizes (default: 10 30)")
    parser.add_argument("--rounds", type=int, default=30, help="advertise->visible rounds (default: 30)")
    parser.add_argument("--keys", type=int, default=5000, help="keys for the keys/s measure (default: 5000)")
    parser.add_argument("--no-dht", action="store_true", help="run the nodes with --no-router-dht (fast path only)")
    parser.add_argument("--csv", type=Path, help="write every advertise -> visible sample here (nodes,seconds)")
    options = parser.parse_args()
    router_args = ["--no-router-dht"] if options.no_dht else []
    trio.run(main, options.nodes, options.rounds, options.keys, router_args, options.csv)

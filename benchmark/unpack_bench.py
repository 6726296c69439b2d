"""containerd's CPU work per byte on this machine: the constants of the cluster simulator's `Timing`
(`benchmark/sim/world.py`: `FETCH_COST`, `UNPACK_COST`, `SNAPSHOT_COPY_COST`, `CROWDING`).

    .venv/bin/python -m benchmark.unpack_bench [--mib 64] [--layers 4] [--repeat 3] [--crowds 4 8 12]

containerd 2.1.9 configured as the netns benchmark's nodes are (`native` snapshotter, 2 MiB chunks) and a CNCF
distribution registry on loopback, unshaped, so that every step is CPU-bound. The images are the benchmark's
(gzip, level 1, of random bytes), each pulled once (fresh seeds). From the containerd processes' /proc CPU time:
- fetch: `ctr content fetch` of an image of one layer of M MiB. containerd takes the bytes over its content API,
  hashes, writes and commits them (ctr does the HTTP): CPU / bytes is `fetch_cost`;
- unpack: a CRI pull (as the kubelet's) of another such image, fetch and unpack: (CPU - fetch's) / bytes is
  `unpack_cost`;
- snapshots: a CRI pull of an image of `--layers` layers of M / layers MiB. With `native`, each layer's snapshot
  starts as a copy of the layers below it, M / layers x (0 + 1 + ... + layers - 1) bytes in all: the CPU above
  the one-layer pull's, over those bytes, is `snapshot_copy_cost`;
- crowds: K containerds (K in `--crowds`) each pull an image of `--layers` layers at the same moment. Their CPU
  per byte over one alone's (the snapshots' pull) is 1 + crowding x (K - cores) once K outnumbers the cores:
  `crowding`, fitted by least squares, is what each process beyond the cores costs every other one.
Each fetch/pull round runs on a fresh containerd. Prints each round and the medians. Not a timed test: the
figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from benchmark.daemons import Containerd, Registry, cpu_seconds
from benchmark.images import ImageSpec, SyntheticImage, build, push

CHUNK = 2 << 20  # as scenarios/scale-12.toml
SETTLE = 0.5  # seconds of a containerd's work counted after its last answer (the unpack's and GC's last steps)


async def cpu_of(containerds: list[Containerd], step: Callable[[], Awaitable[object]]) -> float:
    """The containerds' CPU seconds over `step()`, with the `SETTLE` after it."""
    before = sum(cpu_seconds(c.pid) for c in containerds)
    await step()
    await trio.sleep(SETTLE)
    return sum(cpu_seconds(c.pid) for c in containerds) - before


def serve_from(containerd: Containerd, registry: Registry) -> None:
    hosts = containerd.hosts_dir / registry.address
    hosts.mkdir(parents=True, exist_ok=True)
    hosts.joinpath("hosts.toml").write_text(f'server = "{registry.url}"\n')


async def pushed(registry: Registry, images: dict[str, SyntheticImage]) -> dict[str, str]:
    """Push `images` (by repository) to `registry`; their references."""
    async with httpx.AsyncClient(timeout=60) as client:
        for repository, image in images.items():
            await push(image, client, registry.url, repository, "v1")
    return {repository: f"{registry.address}/{repository}:v1" for repository in images}


async def costs(base: Path, registry: Registry, mib: int, layers: int, seed: int) -> dict[str, float]:
    """One round of fetch, one-layer pull and `layers`-layer pull, of fresh images, on a fresh containerd."""
    size = mib << 20
    images = {
        "bench/fetched": build(ImageSpec((size,), seed=seed)),
        "bench/single": build(ImageSpec((size,), seed=seed + 1)),
        "bench/split": build(ImageSpec(tuple([size // layers] * layers), seed=seed + 2)),
    }
    refs = await pushed(registry, images)
    with Containerd(base / f"ctrd-{seed}", chunk_size=CHUNK) as containerd:
        serve_from(containerd, registry)
        argv = ("content", "fetch", "--plain-http", "--hosts-dir", str(containerd.hosts_dir), refs["bench/fetched"])
        fetch = await cpu_of([containerd], lambda: trio.to_thread.run_sync(lambda: containerd.ctr(*argv)))
        one = await cpu_of([containerd], lambda: containerd.pull(refs["bench/single"]))
        many = await cpu_of([containerd], lambda: containerd.pull(refs["bench/split"]))
    copied = size // layers * sum(range(layers))
    return {
        "fetch_cost": fetch / images["bench/fetched"].layer_bytes,
        "unpack_cost": (one - fetch) / images["bench/single"].layer_bytes,
        "snapshot_copy_cost": (many - one) / copied,
        "alone_cost": many / images["bench/split"].layer_bytes,
    }


async def crowd(base: Path, registry: Registry, count: int, mib: int, layers: int, seed: int) -> dict[str, float]:
    """`count` fresh containerds pull fresh images of `layers` layers at the same moment: CPU per byte, wall."""
    images = {
        f"bench/crowd{i}": build(ImageSpec(tuple([(mib << 20) // layers] * layers), seed=seed + i))
        for i in range(count)
    }
    refs = list((await pushed(registry, images)).values())
    with contextlib.ExitStack() as stack:
        containerds = [
            stack.enter_context(Containerd(base / f"crowd-{seed}-{i}", chunk_size=CHUNK)) for i in range(count)
        ]
        for containerd in containerds:
            serve_from(containerd, registry)
        started = time.monotonic()

        async def all_pull() -> None:
            async with trio.open_nursery() as nursery:
                for containerd, reference in zip(containerds, refs, strict=True):
                    nursery.start_soon(containerd.pull, reference)

        cpu = await cpu_of(containerds, all_pull)
        wall = time.monotonic() - started - SETTLE
    return {"cost": cpu / sum(i.layer_bytes for i in images.values()), "wall_s": wall}


def fit_crowding(ratios: dict[int, float], cores: int) -> float:
    """`crowding` of ratio(K) = 1 + crowding x (K - cores), least squares over the K beyond the cores."""
    beyond = {k: r for k, r in ratios.items() if k > cores}
    if not beyond:
        return 0.0
    return sum((r - 1) * (k - cores) for k, r in beyond.items()) / sum((k - cores) ** 2 for k in beyond)


async def main_async(mib: int, layers: int, repeat: int, crowds: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="spegel-unpack-", dir="/var/tmp") as tmp, Registry(Path(tmp) / "up") as up:
        rounds = []
        for r in range(repeat):
            row = await costs(Path(tmp), up, mib, layers, seed=9_000 + 10 * r)
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v * 1e9:.2f} s/GB" for k, v in row.items()), flush=True)
        medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(f"medians over {repeat} rounds ({mib} MiB; {layers} layers for the copies and alone):")
        for key, value in medians.items():
            print(f"  {key} = {value:.3g} CPU s/byte ({value * 1e9:.2f} s/GB)")
        cores = os.cpu_count() or 1
        ratios = {}
        for count in crowds:
            result = await crowd(Path(tmp), up, count, mib, layers, seed=20_000 + 100 * count)
            ratios[count] = result["cost"] / medians["alone_cost"]
            print(
                f"crowd of {count}: {result['cost'] * 1e9:.2f} s/GB ({ratios[count]:.2f} x alone), "
                f"all pulled in {result['wall_s']:.2f} s",
                flush=True,
            )
        if crowds:
            print(f"crowding = {fit_crowding(ratios, cores):.3g} per process beyond the {cores} cores")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.unpack_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="image size in MiB (1-4096)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the split image (2-64)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (1-20)")
    parser.add_argument("--crowds", type=int, nargs="*", default=[4, 8, 12], help="containerds at once (1-32)")
    args = parser.parse_args()
    if not (1 <= args.mib <= 4096 and 2 <= args.layers <= 64 and 1 <= args.repeat <= 20):
        parser.error("--mib 1-4096, --layers 2-64, --repeat 1-20")
    if any(not 1 <= k <= 32 for k in args.crowds):
        parser.error("--crowds: each 1-32")
    trio.run(main_async, args.mib, args.layers, args.repeat, args.crowds)


if __name__ == "__main__":
    main()

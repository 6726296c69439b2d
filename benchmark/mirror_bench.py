"""The mirror's data path, measured on loopback with real parts: two nodes (containerd 2.1.9 +
`spegel registry --store containerd` with the libp2p router) and a CNCF distribution upstream.

Prints, in one run: MB/s of a full GET of a large layer served by node A from its own containerd content
(the direct local serve) and served by node B through A (the proxy path: B's mirror copies the layer from
A's mirror, verifies its digest and serves it), both with one stream and with 8 parallel 8 MiB ranges; the
SHA-256 rate of one core measured in the same run; the CPU seconds per GB of B's mirror on the proxy path
against issue 16's goals (via peer >= 0.8 x min(direct, SHA-256); CPU <= SHA-256 s/GB + 0.3); and the time
node B takes to answer a miss (p50/p99 over bounded requests for digests nobody has, in a pull of their own:
a manifest request first, as containerd asks). Every proxied round
uses a layer B has not copied before (B keeps its last verified copies and would serve them locally).

Run: `.venv/bin/python -m benchmark.mirror_bench [--layer-mib 256] [--repeat 3] [--misses 200]`
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from benchmark.daemons import Registry, cpu_seconds, start_loopback_node
from benchmark.images import ImageSpec, build, push


def fetch(
    url: str, params: dict[str, str], headers: dict[str, str] | None = None, on_head: Callable[[], None] | None = None
) -> int:
    received = 0
    with httpx.stream("GET", url, params=params, headers=headers or {}, timeout=120) as response:
        response.raise_for_status()
        if on_head is not None:
            on_head()
        for piece in response.iter_raw(1 << 20):
            received += len(piece)
    return received


def throughput(
    url: str, params: dict[str, str], size: int, parallel: bool, on_head: Callable[[], None] | None = None
) -> float:
    started = time.perf_counter()
    if not parallel:
        assert fetch(url, params, on_head=on_head) == size
    else:
        piece = 8 << 20
        ranges = [(start, min(start + piece, size) - 1) for start in range(0, size, piece)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = pool.map(lambda r: fetch(url, params, {"Range": f"bytes={r[0]}-{r[1]}"}), ranges)
            assert sum(got) == size
    return size / (time.perf_counter() - started) / 1e6


def sha256_rate(size: int = 256 << 20) -> float:
    """MB/s of SHA-256 on one core, 1 MiB pieces."""
    data, piece = memoryview(bytes(size)), 1 << 20
    hasher, started = hashlib.sha256(), time.perf_counter()
    for offset in range(0, size, piece):
        hasher.update(data[offset : offset + piece])
    return size / (time.perf_counter() - started) / 1e6


def fresh_write_cost(directory: str, size: int = 256 << 20) -> float:
    """CPU seconds per GB of writing `size` bytes in 1 MiB pieces into a new unlinked file in `directory`: what
    a mirror's copy costs beyond the hash for filling page-cache pages it has not used before."""
    piece = memoryview(bytes(1 << 20))
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    try:
        started = resource.getrusage(resource.RUSAGE_SELF)
        for offset in range(0, size, len(piece)):
            os.pwrite(fd, piece, offset)
        ended = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
    spent = ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime
    return spent / (size / 1e9)


def _copy_cpu(copying: list[float], pid: int, before: float) -> None:
    copying.append(cpu_seconds(pid) - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mib", type=int, default=256)
    parser.add_argument("--misses", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--miss-settle", default="20ms", help="the mirrors' --mirror-miss-settle (default: 20ms)")
    args = parser.parse_args()
    # one layer per proxied round (B serves a layer it copied once from its own verified copy)
    image = build(ImageSpec(layers=(args.layer_mib << 20,) * (2 * args.repeat), compression="none", seed=99))
    layers = image.platforms[0].layers
    with tempfile.TemporaryDirectory(prefix="spegel-mirror-bench-") as tmp, Registry(Path(tmp) / "up") as up:
        trio.run(_push, image, up.url)
        with contextlib.ExitStack() as stack:
            flags = ["--log-level", "warning", "--mirror-miss-settle", args.miss_settle]
            a = start_loopback_node(stack, Path(tmp) / "a", up.url, None, chunk_size=8 << 20, mirror_flags=flags)
            b = start_loopback_node(stack, Path(tmp) / "b", up.url, a, chunk_size=8 << 20, mirror_flags=flags)
            reference = f"{up.address}/bench/mirror:v1"
            trio.run(a.pull, reference)
            params = {"ns": up.address}
            paths = [f"/v2/bench/mirror/blobs/{layer.digest}" for layer in layers]
            deadline = time.monotonic() + 30
            while httpx.head(b.mirror.url + paths[-1], params=params).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("node B never found the layers on node A")
                time.sleep(0.1)
            size = layers[0].size
            sha = sha256_rate()
            print(f"layer: {size / 2**20:.0f} MiB; best of {args.repeat}; load {os.getloadavg()[0]:.1f}")
            print(f"SHA-256, one core: {sha:.0f} MB/s ({1e3 / sha:.2f} s/GB)")
            write = fresh_write_cost(tmp)
            print(f"writing a new file (fresh page-cache pages), one core: {write:.2f} CPU s/GB")
            unused = iter(paths)
            for parallel in (False, True):
                label = "8 x 8 MiB ranges" if parallel else "one full GET    "
                local = max(throughput(a.mirror.url + paths[0], params, size, parallel) for _ in range(args.repeat))
                rates, cpu, copying = [], 0.0, []
                for _ in range(args.repeat):
                    before = cpu_seconds(b.mirror.pid)
                    # B answers once its copy is verified: its CPU until the response head is the copy's
                    on_head = None if parallel else functools.partial(_copy_cpu, copying, b.mirror.pid, before)
                    rates.append(throughput(b.mirror.url + next(unused), params, size, parallel, on_head))
                    cpu += cpu_seconds(b.mirror.pid) - before
                proxied, per_gb = max(rates), cpu / (args.repeat * size / 1e9)
                goal = 0.8 * min(local, sha)
                print(
                    f"{label}: local serve {local:7.0f} MB/s | via peer {proxied:7.0f} MB/s "
                    f"| ratio {proxied / local:.2f} | goal {goal:.0f} MB/s {'met' if proxied >= goal else 'NOT met'} "
                    f"| B's CPU {per_gb:.2f} s/GB (goal <= {1e3 / sha + 0.3:.2f})"
                )
                if copying:
                    copy_gb = sum(copying) / (args.repeat * size / 1e9)
                    sending = per_gb - copy_gb
                    print(f"  B's CPU per GB: copying from A and verifying {copy_gb:.2f} s, sending {sending:.2f} s")
                    # verified before sent: the copy (at best at the SHA-256 rate), then the send (at the local rate)
                    serial = 1 / (1 / sha + 1 / local)
                    print(f"  copy then send, at best: {serial:.0f} MB/s; via peer is {proxied / serial:.2f} x that")
            misses = []
            with httpx.Client(base_url=b.mirror.url, params=params) as client:
                # B followed A in the pull above; the misses are the next image's pull, which begins at a manifest
                client.head("/v2/bench/mirror/manifests/v2")
                for i in range(args.misses):
                    digest = "sha256:" + hashlib.sha256(f"nobody-{i}".encode()).hexdigest()
                    started = time.perf_counter()
                    status = client.get(f"/v2/bench/mirror/blobs/{digest}", headers={"Range": "bytes=0-"}).status_code
                    misses.append(time.perf_counter() - started)
                    assert status == 404, status
            misses.sort()
            p99 = misses[min(len(misses) - 1, int(0.99 * len(misses)))]
            print(
                f"miss answered (404), {len(misses)} requests: p50 {statistics.median(misses) * 1e3:.1f} ms, "
                f"p99 {p99 * 1e3:.1f} ms, max {misses[-1] * 1e3:.1f} ms"
            )


async def _push(image, url: str) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        await push(image, client, url, "bench/mirror", "v1")


if __name__ == "__main__":
    main()

"""The mirror's data path, measured on loopback with real parts: two nodes (containerd 2.1.9 +
`spegel registry --store containerd` with the libp2p router) and a CNCF distribution upstream.

Prints, in one run: MB/s of a full GET of a large layer served by node A from its own containerd content
(the direct local serve) and served by node B through A (the proxy path: B's mirror -> A's mirror -> A's
containerd content), both with one stream and with 8 parallel 8 MiB ranges; and the time node B takes to
answer a miss (p50/p99 over bounded requests for digests nobody has).

Run: `.venv/bin/python -m benchmark.mirror_bench [--layer-mib 256] [--misses 200]`
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio

from benchmark.daemons import Registry, start_loopback_node
from benchmark.images import ImageSpec, build, push


def fetch(url: str, params: dict[str, str], headers: dict[str, str] | None = None) -> int:
    received = 0
    with httpx.stream("GET", url, params=params, headers=headers or {}, timeout=120) as response:
        response.raise_for_status()
        for piece in response.iter_raw(1 << 20):
            received += len(piece)
    return received


def throughput(url: str, params: dict[str, str], size: int, parallel: bool) -> float:
    started = time.perf_counter()
    if not parallel:
        assert fetch(url, params) == size
    else:
        piece = 8 << 20
        ranges = [(start, min(start + piece, size) - 1) for start in range(0, size, piece)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = pool.map(lambda r: fetch(url, params, {"Range": f"bytes={r[0]}-{r[1]}"}), ranges)
            assert sum(got) == size
    return size / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mib", type=int, default=256)
    parser.add_argument("--misses", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--miss-settle", default="20ms", help="the mirrors' --mirror-miss-settle (default: 20ms)")
    args = parser.parse_args()
    image = build(ImageSpec(layers=(args.layer_mib << 20,), compression="none", seed=99))
    layer = image.platforms[0].layers[0]
    with tempfile.TemporaryDirectory(prefix="spegel-mirror-bench-") as tmp, Registry(Path(tmp) / "up") as up:
        trio.run(_push, image, up.url)
        with contextlib.ExitStack() as stack:
            flags = ["--log-level", "warning", "--mirror-miss-settle", args.miss_settle]
            a = start_loopback_node(stack, Path(tmp) / "a", up.url, None, chunk_size=8 << 20, mirror_flags=flags)
            b = start_loopback_node(stack, Path(tmp) / "b", up.url, a, chunk_size=8 << 20, mirror_flags=flags)
            reference = f"{up.address}/bench/mirror:v1"
            trio.run(a.pull, reference)
            params = {"ns": up.address}
            path = f"/v2/bench/mirror/blobs/{layer.digest}"
            deadline = time.monotonic() + 30
            while httpx.head(b.mirror.url + path, params=params).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("node B never found the layer on node A")
                time.sleep(0.1)
            print(f"layer: {layer.size / 2**20:.0f} MiB; best of {args.repeat}")
            for parallel in (False, True):
                label = "8 x 8 MiB ranges" if parallel else "one full GET    "
                local = max(throughput(a.mirror.url + path, params, layer.size, parallel) for _ in range(args.repeat))
                proxied = max(throughput(b.mirror.url + path, params, layer.size, parallel) for _ in range(args.repeat))
                print(
                    f"{label}: local serve {local:7.0f} MB/s | via peer {proxied:7.0f} MB/s "
                    f"| ratio {proxied / local:.2f}"
                )
            misses = []
            with httpx.Client(base_url=b.mirror.url, params=params) as client:
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

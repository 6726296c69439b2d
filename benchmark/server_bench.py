"""Registry server throughput beside nginx: one 1 GiB blob, one full GET and 8 parallel 8 MiB ranges.

Run: `.venv/bin/python -m benchmark.server_bench` (options: `--help`). It serves one pseudo-random 1 GiB blob
(written once into an OCI layout under the cache directory and reused) with our server (the real `spegel
registry` CLI) and with nginx (Debian nginx-light, own prefix and config in a temp dir, on a loopback port),
in the same run, and measures both with the same client, curl, so the client costs the same on both sides:

- full GET: one `curl` download of the whole blob, repeated, median MB/s (MB = 10^6 bytes);
- ranges: 8 `curl` processes at once, each fetching one 8 MiB range at a random offset, repeated, median
  MB/s of the 64 MiB over the wall time of the round.

Measurements alternate between the two servers round by round, so load from elsewhere falls on both alike;
the ratios are medians of per-round ratios. It prints one table with, per server, the CPU seconds spent
serving (user + system from /proc/PID/stat, start-up excluded; nginx: master + workers), CPU seconds per GB
served, RSS when ready and peak RSS (VmHWM from /proc/PID/status), and the load average before and after.
Our server runs as `spegel registry --store oci-layout:DIR --router none` (the registry alone, no libp2p host
beside it); it sends the blob with sendfile (spegel.registry.http11). Not a test: nothing is asserted; the
targets (full GET >= 1.0x nginx, ranges >= 0.9x, CPU <= 0.3 s/GB, peak RSS <= 128 MiB) are printed beside
the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.daemons import Daemon, Spegel, cpu_seconds, free_address, http_answers, peak_rss
from spegel.store import files
from spegel.store.layout import write_layout

GiB = 1 << 30
MiB = 1 << 20
CACHE_DIR = Path(os.environ.get("SPEGEL_CACHE", "/var/cache/spegel-py")) / "server-bench"
NGINX_BIN = "/usr/sbin/nginx"
CURL_TIMEOUT = 120  # seconds for any one curl
RSS_TARGET = 128 * MiB
FULL_GET_TARGET = 1.0  # of nginx's MB/s, median of per-round ratios
RANGES_TARGET = 0.9
CPU_TARGET = 0.3  # CPU seconds per GB served
RANGES, RANGE_LENGTH = 8, 8 * MiB  # parallel range requests per round, bytes each


@dataclass(frozen=True)
class BlobLayout:
    """An OCI layout holding one blob; `path` is the blob's file, `url_path` where both servers serve it."""

    root: Path
    digest: str
    size: int

    @property
    def path(self) -> Path:
        algorithm, hex_digest = self.digest.split(":")
        return self.root / "blobs" / algorithm / hex_digest


def cached_blob_layout(cache_dir: Path, size: int, seed: int = 1) -> BlobLayout:
    """An OCI layout with one pseudo-random blob of `size` bytes, made once and reused from `cache_dir`.

    The data comes from a seeded PRNG (not sparse, not compressible). `DONE` is written last, so an
    interrupted generation is redone, not reused.
    """
    root = cache_dir / f"layout-{size}-{seed}"
    done = root / "DONE"
    if done.is_file():
        digest = done.read_text().strip()
        layout = BlobLayout(root, digest, size)
        if layout.path.is_file() and layout.path.stat().st_size == size:
            return layout
    shutil.rmtree(root, ignore_errors=True)
    write_layout(root, {}, [])
    rng = random.Random(seed)
    hasher = hashlib.sha256()
    partial = root / "blob.partial"
    with open(partial, "wb") as out:
        left = size
        while left:
            piece = rng.randbytes(min(8 * MiB, left))
            hasher.update(piece)
            out.write(piece)
            left -= len(piece)
    layout = BlobLayout(root, f"sha256:{hasher.hexdigest()}", size)
    layout.path.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(layout.path)
    done.write_text(layout.digest)
    return layout


class Nginx(Daemon):
    """nginx serving `root` on `address` (loopback), with its own prefix, config, logs and temp paths."""

    name = "nginx"

    def __init__(self, prefix: Path, root: Path, address: str) -> None:
        super().__init__(prefix / "nginx.log")
        self.prefix, self.root, self.address = prefix, root, address

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def prepare(self) -> None:
        if not os.access(NGINX_BIN, os.X_OK):
            raise SystemExit(f"server_bench: no nginx at {NGINX_BIN} (Debian package nginx-light)")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        # `user root` only matters when started as root: workers must read the cache directory.
        user = "user root;" if os.geteuid() == 0 else ""
        (self.prefix / "nginx.conf").write_text(
            f"""{user}
worker_processes 2;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {self.prefix}/tmp;
    proxy_temp_path {self.prefix}/tmp;
    fastcgi_temp_path {self.prefix}/tmp;
    uwsgi_temp_path {self.prefix}/tmp;
    scgi_temp_path {self.prefix}/tmp;
    default_type application/octet-stream;
    server {{
        listen {self.address};
        root {self.root};
        location /livez {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )

    def command(self) -> list[str]:
        return [NGINX_BIN, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-g", "daemon off;"]

    def ready(self) -> bool:
        return http_answers(f"{self.url}/livez")


def curl(url: str, byte_range: str | None = None) -> subprocess.Popen[str]:
    """Start one curl download to /dev/null; its stdout will be `<bytes> <seconds> <status>`."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(CURL_TIMEOUT)]
    argv += ["-w", "%{size_download} %{time_total} %{http_code}"]
    if byte_range is not None:
        argv += ["-r", byte_range]
    return subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], want_bytes: int, want_status: int) -> float:
    """Wait for a curl started by `curl()`; check what it got; return curl's own transfer time."""
    out, _ = process.communicate(timeout=CURL_TIMEOUT + 10)
    size, seconds, status = out.split()
    if process.returncode != 0 or int(status) != want_status or int(size) != want_bytes:
        raise RuntimeError(f"curl failed: exit {process.returncode}, status {status}, {size} of {want_bytes} bytes")
    return float(seconds)


def full_get_mbps(url: str, size: int) -> float:
    """MB/s of one whole-blob download (curl's transfer time)."""
    return size / finish(curl(url), size, 200) / 1e6


def parallel_ranges_mbps(
    url: str, size: int, rng: random.Random, count: int = RANGES, length: int = RANGE_LENGTH
) -> float:
    """MB/s of `count` concurrent range downloads of `length` bytes (wall time of the whole round)."""
    starts = [rng.randrange(0, size - length) for _ in range(count)]
    began = time.perf_counter()
    processes = [curl(url, f"{start}-{start + length - 1}") for start in starts]
    for process in processes:
        finish(process, length, 206)
    return count * length / (time.perf_counter() - began) / 1e6


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss: int


def process_usage(pids: list[int]) -> Usage:
    """CPU seconds (user + system) and the sum of peak RSS of live processes, from /proc."""
    return Usage(sum(cpu_seconds(pid) for pid in pids), sum(peak_rss(pid) for pid in pids))


def nginx_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


@dataclass
class Server:
    """One server under test: its name, the blob's URL on it, and its processes (for /proc usage)."""

    name: str
    url: str
    pids: Callable[[], list[int]]
    full_get: list[float] = field(default_factory=list)
    ranges: list[float] = field(default_factory=list)
    served: int = 0  # body bytes, all requests
    start: Usage = Usage(0.0, 0)  # when ready, before the first request
    end: Usage = Usage(0.0, 0)

    @property
    def cpu_seconds(self) -> float:
        """CPU time spent serving (start-up excluded)."""
        return self.end.cpu_seconds - self.start.cpu_seconds


def measure(servers: list[Server], size: int, repeats: int, seed: int = 7) -> None:
    """Warm each server up with one full GET, then run the measurements in interleaved rounds.

    Every round measures each server once, in turn, so load from elsewhere on the machine falls on both
    alike; the ranges of a round are the same random offsets for every server.
    """
    for server in servers:
        server.start = process_usage(server.pids())
        full_get_mbps(server.url, size)
    rng = random.Random(seed)
    for _ in range(repeats):
        for server in servers:
            server.full_get.append(full_get_mbps(server.url, size))
        round_seed = rng.random()
        for server in servers:
            server.ranges.append(parallel_ranges_mbps(server.url, size, random.Random(round_seed)))
    for server in servers:
        server.end = process_usage(server.pids())
        server.served = (repeats + 1) * size + repeats * RANGES * RANGE_LENGTH


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of ours/theirs (rounds are interleaved, so each pair saw the same load)."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(ours: Server, nginx: Server, size: int, region_size: int, loads: tuple[str, str]) -> dict[str, object]:
    """Print the figures; return them as a JSON-able dict."""
    full_ratio = paired_ratio(ours.full_get, nginx.full_get)
    range_ratio = paired_ratio(ours.ranges, nginx.ranges)
    lines = [
        f"blob {size / GiB:.2f} GiB, {len(ours.full_get)} interleaved rounds, client curl, MB = 10^6 bytes,"
        f" median (min-max); spegel sendfile region {region_size // MiB} MiB; load average {loads[0]} -> {loads[1]}",
        f"{'server':<8} {'full GET MB/s':>17} {'8x8MiB ranges MB/s':>19} {'CPU s':>6} {'CPU s/GB':>8}"
        f" {'RSS start MiB':>13} {'peak RSS MiB':>12}",
    ]
    for server in (ours, nginx):
        lines.append(
            f"{server.name:<8} {_spread(server.full_get):>17} {_spread(server.ranges):>19}"
            f" {server.cpu_seconds:>6.1f} {server.cpu_seconds / (server.served / 1e9):>8.2f}"
            f" {server.start.peak_rss / MiB:>13.1f} {server.end.peak_rss / MiB:>12.1f}"
        )
    cpu_per_gb = ours.cpu_seconds / (ours.served / 1e9)
    lines.append(
        f"spegel/nginx full GET: {full_ratio:.2f} (target >= {FULL_GET_TARGET}); "
        f"ranges: {range_ratio:.2f} (target >= {RANGES_TARGET})"
    )
    lines.append(f"spegel CPU: {cpu_per_gb:.2f} s/GB (target <= {CPU_TARGET})")
    lines.append(f"spegel peak RSS: {ours.end.peak_rss / MiB:.1f} MiB (target <= {RSS_TARGET // MiB} MiB)")
    print("\n".join(lines))
    return {
        "size": size,
        "region_size": region_size,
        "load_average": loads,
        "servers": [
            {
                "name": s.name,
                "full_get_mbps": s.full_get,
                "ranges_mbps": s.ranges,
                "served_bytes": s.served,
                "cpu_seconds": s.cpu_seconds,
                "rss_start": s.start.peak_rss,
                "peak_rss": s.end.peak_rss,
            }
            for s in (ours, nginx)
        ],
        "full_get_ratio": full_ratio,
        "ranges_ratio": range_ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=GiB, help="blob size in bytes (default: 1 GiB)")
    parser.add_argument("--repeats", type=int, default=9, help="runs of each measurement (default: 9)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help=f"where the blob is kept ({CACHE_DIR})")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.size < 16 * MiB or args.repeats < 1:
        parser.error("--size must be >= 16 MiB and --repeats >= 1")
    if shutil.which("curl") is None:
        parser.error("needs curl")

    layout = cached_blob_layout(args.cache_dir, args.size)
    with tempfile.TemporaryDirectory(prefix="spegel-server-bench-") as tmp:
        work = Path(tmp)
        # the registry alone: no router, so no libp2p host runs beside it (it serves local content only)
        spegel = Spegel.registry(f"oci-layout:{layout.root}", work / "spegel.log", extra=["--router", "none"])
        nginx = Nginx(work / "nginx", layout.root, free_address())
        with spegel, nginx:
            ours = Server("spegel", f"{spegel.url}/v2/bench/blob/blobs/{layout.digest}", lambda: [spegel.pid])
            theirs = Server(
                "nginx", f"{nginx.url}/blobs/{layout.digest.replace(':', '/')}", lambda: nginx_pids(nginx.pid)
            )
            load_before = load_average()
            measure([ours, theirs], args.size, args.repeats)
            loads = (load_before, load_average())
    figures = report(ours, theirs, args.size, files.REGION_SIZE, loads)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark observes on running nodes: pulls, blob commits, ingest starts, mirror metrics, visibility.

Every observation is a flat record (a dict) with absolute wall-clock times (`time.time()`, seconds), so that
records from different sources line up; the runner adds the run's labels and turns them into DataFrames.

- `pull(node, reference)`: one CRI `PullImage`, as the kubelet does: start, end, outcome.
- `watch_commits(node, sink)`: containerd's `/content/create` events (blob committed) with containerd's time.
- `watch_ingests(node, sink, interval)`: when each blob's download starts: a new ingest directory under the
  content root (containerd publishes no event for it), found by listing every `interval` seconds; and when
  its first bytes are on disk (`data`: the first chunk arrived, from upstream or a peer).
- `sample_cpu(nodes, sink, interval)`: CPU seconds of every mirror, containerd and the whole machine, sampled.
- `scrape_mirror(node)`: the mirror's byte and request counters by source, from its `/metrics`.
- `watch_visibility(...)`: an observer node asks its own mirror (as its containerd would: HEAD, no
  `X-Spegel-Mirrored`) for a blob every `interval` seconds until it answers 200: when the blob became
  available to that node through the router (the send time of the first probe answered 200). HEAD never
  counts as a miss, so probing announces nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from benchmark.cluster.base import Node, process_usage
from spegel.store.base import NotFound
from spegel.store.containerd.client import ContainerdClient, ContainerdError
from spegel.store.containerd.ingest import ref_digest
from spegel.store.containerd.proto import content_events_pb2

Record = dict[str, Any]
Sink = Callable[[Record], None]


async def pull(node: Node, reference: str, timeout: float) -> Record:
    """Pull `reference` on `node` through CRI; never raises for a failed pull (the record says `ok=False`)."""
    start = time.time()
    error = ""
    try:
        async with ContainerdClient(str(node.containerd.socket)) as client:
            with trio.fail_after(timeout):
                await client.pull_image(reference, timeout=timeout)
    except trio.TooSlowError:
        error = f"no result within {timeout:.0f} s"
    except (ContainerdError, NotFound) as exc:  # NotFound: containerd got a 404 it could not fall back from
        error = str(exc)[:500]
    end = time.time()
    return {"node": node.name, "start": start, "end": end, "duration": end - start, "ok": not error, "error": error}


async def watch_commits(node: Node, sink: Sink, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Record every blob committed on `node` (`/content/create`) until cancelled. Signals `started` once
    subscribed, so that no commit after that point is missed."""
    async with (
        ContainerdClient(str(node.containerd.socket)) as client,
        client.subscribe(['topic=="/content/create"']) as envelopes,
    ):
        task_status.started()
        async for envelope in envelopes:
            # containerd's type URL is not Any's `type.googleapis.com/...` form: decode the value directly
            event = content_events_pb2.ContentCreate.FromString(envelope.event.value)
            stamp = envelope.timestamp.seconds + envelope.timestamp.nanos / 1e9
            sink({"node": node.name, "event": "commit", "digest": event.digest, "time": stamp})


def scan_ingests(content_root: Path, seen: set[str], with_bytes: bool = False) -> list[str]:
    """Digests of ingests under `content_root/ingest` whose directory is not in `seen` (which is updated);
    with `with_bytes`, only those whose `data` file has bytes (the others are looked at again next time)."""
    found = []
    try:
        entries = os.listdir(content_root / "ingest")
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry in seen:
            continue
        try:
            if with_bytes and os.stat(content_root / "ingest" / entry / "data").st_size == 0:
                continue
            digest = ref_digest((content_root / "ingest" / entry / "ref").read_text().strip())
        except OSError:
            continue  # not written yet, or already committed: look again next time
        seen.add(entry)
        if digest is not None:
            found.append(str(digest))
    return found


async def watch_ingests(node: Node, sink: Sink, interval: float) -> None:
    """Record when each download starts on `node` (`ingest`: first sight of its ingest) and when its first
    bytes are on disk (`data`), until cancelled. A blob committed within one interval has no `data` event."""
    started: set[str] = set()
    writing: set[str] = set()
    root = node.containerd.content_root
    while True:
        for event, seen, with_bytes in (("ingest", started, False), ("data", writing, True)):
            for digest in await trio.to_thread.run_sync(scan_ingests, root, seen, with_bytes):
                sink({"node": node.name, "event": event, "digest": digest, "time": time.time()})
        await trio.sleep(interval)


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; not idle, not waiting for I/O) since boot."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def sample_cpu(nodes: list[Node], sink: Sink, interval: float) -> None:
    """Every `interval` seconds until cancelled: the CPU seconds so far of each node's mirror and containerd
    (`node`, `process`), and of the whole machine (`process` = "machine"): differences give who was busy when."""
    while True:
        now = time.time()
        sink({"node": "", "process": "machine", "time": now, "cpu_seconds": machine_busy()})
        for node in nodes:
            for process, daemon in (("containerd", node.containerd), ("spegel", node.mirror)):
                if daemon is not None and daemon.process is not None:
                    used = process_usage(daemon.pid, node.name, process)
                    if used is not None:
                        sink({"node": node.name, "process": process, "time": now, "cpu_seconds": used.cpu_seconds})
        await trio.sleep(interval)


def parse_mirror_metrics(text: str) -> Record:
    """`bytes_<source>` and `requests_<source>` totals from a mirror's Prometheus exposition."""
    totals: Record = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("spegel_mirror_bytes", "spegel_mirror_requests_by_source"):
            continue
        kind = "bytes" if family.name == "spegel_mirror_bytes" else "requests"
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{kind}_{sample.labels.get('source', 'unknown')}"
                totals[key] = totals.get(key, 0) + sample.value
    return totals


async def scrape_mirror(client: httpx.AsyncClient, node: Node) -> Record:
    """The mirror's counters on `node` now (empty when the node runs no mirror)."""
    if node.mirror is None:
        return {}
    response = await client.get(f"http://{node.mirror.metrics_addr}/metrics", timeout=5)
    response.raise_for_status()
    return parse_mirror_metrics(response.text)


def counter_delta(before: Record, after: Record) -> Record:
    """after - before for every counter in either (missing counts as 0)."""
    return {key: after.get(key, 0) - before.get(key, 0) for key in sorted(set(before) | set(after))}


async def watch_visibility(
    client: httpx.AsyncClient,
    observer: Node,
    url_path: str,
    digests: Iterable[str],
    sink: Sink,
    interval: float,
    deadline: Callable[[], float],
) -> None:
    """Probe `observer`'s mirror for each digest until it answers 200 or `time.time()` passes `deadline()`
    (asked before every probe, so the caller can move it).

    Records `visible`, the send time of the first probe answered 200: the observer's router looks the digest
    up as the probe arrives (waiting at most its resolve timeout), before the mirror asks the holder, so the
    rest of the round trip (`answered - visible`, `rtt`: the holder's HEAD path, slow on a busy node) is not
    advertisement latency. Resolution: one probe period (the interval plus a miss). Digests never seen get NaN.
    """
    async with trio.open_nursery() as nursery:
        for digest in digests:
            nursery.start_soon(
                _probe, client, observer, url_path.format(digest=digest), digest, sink, interval, deadline
            )


async def _probe(
    client: httpx.AsyncClient,
    observer: Node,
    path: str,
    digest: str,
    sink: Sink,
    interval: float,
    deadline: Callable[[], float],
) -> None:
    assert observer.mirror is not None
    url = f"{observer.mirror.url}{path}"
    probes = 0
    while time.time() < deadline():
        sent = time.time()
        probes += 1
        try:
            response = await client.head(url, timeout=5)
            if response.status_code == 200:
                answered = time.time()
                sink(
                    {
                        "observer": observer.name,
                        "digest": digest,
                        "visible": sent,
                        "answered": answered,
                        "rtt": answered - sent,
                        "probes": probes,
                    }
                )
                return
        except httpx.HTTPError:
            pass
        await trio.sleep(interval)
    nan = float("nan")
    sink({"observer": observer.name, "digest": digest, "visible": nan, "answered": nan, "rtt": nan, "probes": probes})

"""Running a scenario: build and push the images, then for every run start fresh nodes and run each phase.

Phases (each pulls its own image version, tagged with the phase's name, so their order does not matter):
- `create`: every node pulls at once, each after a random delay in [0, jitter] (seeded: reproducible);
- `update`: the nodes pull in batches (rolling update), each batch after the previous one has finished;
- `advertise` (mirror modes only): node 0 pulls; every other node probes its own mirror for each layer until
  it is visible.

What is kept, as DataFrames written to `OUT/data/*.csv` after every run (so an interrupted run keeps what
it measured), with the labels `run, image, mode, repetition`:
- `pulls`: phase, node, batch, phase_start, start, end, duration, ok, error;
- `events`: phase, node, event (`ingest`: download started; `data`: its first bytes on disk; `commit`: blob
  committed), digest, layer, time;
- `visibility`: phase, observer, digest, layer, visible (first answered probe's send time), answered, rtt,
  probes;
- `traffic`: phase, phase_start, phase_end, upstream_bytes (tc counter of the upstream's link, framing
  included), upstream_log_bytes (body bytes in the registry's access log), the mirrors' counters summed
  over nodes (`bytes_<source>`, `requests_<source>`), and the machine's 1-minute load average at the phase's
  start and end (`load_start`, `load_end`);
- `usage`: node, process, cpu_seconds, peak_rss_bytes;
- `cpu`: node, process (`spegel`, `containerd`, or `machine` for the whole machine), time, cpu_seconds so far,
  sampled every `CPU_SAMPLE_INTERVAL` s;
- `failures`: runs that could not run (their nodes did not start), with the error.
`OUT/meta.json` holds the scenario, the images' digests and sizes, the machine and the git commit.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import trio

from benchmark import images, measure
from benchmark.cluster.base import Cluster, ClusterError, Node
from benchmark.daemons import DaemonError, containerd_version
from benchmark.progress import Progress
from benchmark.scenario import PEER_MODES, PHASES, RunKey, Scenario, plan, repository_name

TABLES = ("pulls", "events", "visibility", "traffic", "usage", "cpu", "failures")
SETTLE_AFTER_PULL = 10.0  # seconds observers keep probing after the pull ended (image events come late)
INGEST_POLL = 0.02
CPU_SAMPLE_INTERVAL = 0.5


@dataclass(frozen=True)
class PhaseImage:
    """The image one phase pulls: where it is in the upstream, and its layers in order."""

    repository: str
    tag: str
    image: images.SyntheticImage

    def reference(self, registry_host: str) -> str:
        return f"{registry_host}/{self.repository}:{self.tag}"

    def layer_digests(self) -> list[str]:
        return [str(d.digest) for d in self.image.platforms[0].layers]

    def describe(self) -> dict[str, Any]:
        host = self.image.platforms[0]
        return {
            "repository": self.repository,
            "tag": self.tag,
            "top": str(self.image.top.digest),
            "size": self.image.size,
            "layer_bytes": self.image.layer_bytes,
            "layers": [{"digest": str(d.digest), "size": d.size} for d in host.layers],
            "config": str(host.config.digest),
            "manifest": str(host.manifest.digest),
        }


def build_images(scenario: Scenario, cache_dir: Path | None = None) -> dict[tuple[str, str], PhaseImage]:
    """(shape name, phase) -> the image that phase pulls, generated (or taken from the cache)."""
    built = {}
    for s, shape in enumerate(scenario.images):
        for phase in scenario.phases:
            seed = scenario.seed * 1000 + s * 10 + PHASES.index(phase)
            spec = images.ImageSpec(shape.layers, shape.compression, seed, shape.platforms)
            built[shape.name, phase] = PhaseImage(repository_name(shape), phase, images.build(spec, cache_dir))
    return built


class Recorder:
    """Collects the records of a scenario and writes them as CSV tables under `out/data/`."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}

    def add(self, table: str, labels: dict[str, Any], record: dict[str, Any]) -> None:
        self.rows[table].append({**labels, **record})

    def flush(self) -> None:
        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        for name, rows in self.rows.items():
            pd.DataFrame(rows).to_csv(data / f"{name}.csv", index=False)


def traffic_record(
    phase_start: float, phase_end: float, upstream_bytes: int, upstream_log_bytes: int, mirrors: dict[str, float]
) -> dict[str, Any]:
    """A `traffic` row: the phase's span, what the upstream sent during it (wire and access log), and the
    mirrors' counter deltas summed over nodes."""
    return {
        "phase_start": phase_start,
        "phase_end": phase_end,
        "upstream_bytes": upstream_bytes,
        "upstream_log_bytes": upstream_log_bytes,
        **mirrors,
    }


def run_labels(key: RunKey) -> dict[str, Any]:
    """The columns that tie a record to its run, in every table."""
    return {"run": key.label, "image": key.image, "mode": key.mode, "repetition": key.repetition}


def _git_commit() -> str:
    """The commit measured: `$SPEGEL_BENCH_COMMIT` (for runs from an exported tree), else this checkout's HEAD,
    marked `+dirty` when it has uncommitted changes."""
    if os.environ.get("SPEGEL_BENCH_COMMIT"):
        return os.environ["SPEGEL_BENCH_COMMIT"]
    here = str(Path(__file__).parent)
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{head}+dirty" if head and dirty else head


def write_meta(out: Path, scenario: Scenario, phase_images: dict[tuple[str, str], PhaseImage], **extra: Any) -> None:
    meta = {
        "scenario": asdict(scenario),
        "images": {f"{shape}/{phase}": image.describe() for (shape, phase), image in phase_images.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "containerd": containerd_version(),
        },
        "commit": _git_commit(),
        **extra,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


class ScenarioRunner:
    """Runs every run of `plan(scenario)` on `cluster`, recording into `recorder`."""

    def __init__(
        self,
        scenario: Scenario,
        cluster: Cluster,
        phase_images: dict[tuple[str, str], PhaseImage],
        recorder: Recorder,
        workdir: Path,
        progress: Progress,
    ) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.images = phase_images
        self.recorder = recorder
        self.workdir = Path(workdir)
        self.progress = progress
        self.layer_index = {
            digest: i for image in phase_images.values() for i, digest in enumerate(image.layer_digests())
        }

    async def push_images(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            for image in self.images.values():
                await images.push(image.image, client, self.cluster.upstream_url, image.repository, image.tag)

    async def run_all(self) -> None:
        for key in plan(self.scenario):
            self.progress.run_starting()
            try:
                await self.run_one(key)
            except (ClusterError, DaemonError) as exc:  # one broken run must not lose the others
                self.recorder.add("failures", run_labels(key), {"error": str(exc)[:2000]})
                self.progress.note(f"{key.label} failed: {str(exc).splitlines()[0]}")
            self.recorder.flush()
            self.progress.run_finished(f"{key.label} done")

    async def run_one(self, key: RunKey) -> None:
        labels = run_labels(key)
        run_dir = self.workdir / "runs" / key.label.replace("/", "-")
        self.progress.step(f"{key.label}: starting nodes")
        nodes = await trio.to_thread.run_sync(self.cluster.start_nodes, key.mode, run_dir)
        try:
            async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as watchers:
                phase_of: dict[str, str] = {}

                def on_event(record: dict[str, Any]) -> None:
                    digest = record["digest"]
                    extra = {"phase": phase_of.get(digest, ""), "layer": self.layer_index.get(digest, -1)}
                    self.recorder.add("events", labels, {**record, **extra})

                def on_cpu(record: dict[str, Any]) -> None:
                    self.recorder.add("cpu", labels, record)

                watchers.start_soon(measure.sample_cpu, nodes, on_cpu, CPU_SAMPLE_INTERVAL)
                for node in nodes:
                    await watchers.start(measure.watch_commits, node, on_event)
                    watchers.start_soon(measure.watch_ingests, node, on_event, INGEST_POLL)
                for phase in self.scenario.phases:
                    if phase == "advertise" and key.mode not in PEER_MODES:
                        continue  # nothing is advertised without a mirror
                    image = self.images[key.image, phase]
                    for digest in [str(d.digest) for d in image.image.blobs()]:
                        phase_of.setdefault(digest, phase)
                    self.progress.step(f"{key.label}: {phase}")
                    await self.run_phase(key, labels, phase, image, nodes, client)
                await trio.sleep(0.2)  # let the last commit events arrive
                watchers.cancel_scope.cancel()
        finally:
            usage = await trio.to_thread.run_sync(self.cluster.stop_nodes)
            for item in usage:
                self.recorder.add("usage", labels, asdict(item))

    async def run_phase(
        self,
        key: RunKey,
        labels: dict[str, Any],
        phase: str,
        image: PhaseImage,
        nodes: list[Node],
        client: httpx.AsyncClient,
    ) -> None:
        reference = image.reference(self.cluster.registry_host)
        phase_labels = {**labels, "phase": phase}
        upstream_before = await trio.to_thread.run_sync(self.cluster.upstream_bytes)
        logged_before = await trio.to_thread.run_sync(self.cluster.upstream_log_bytes)
        mirrors_before = [await measure.scrape_mirror(client, node) for node in nodes]
        load_start = os.getloadavg()[0]
        phase_start = time.time()

        def record_pull(batch: int) -> Callable[[dict[str, Any]], None]:
            return lambda r: self.recorder.add("pulls", phase_labels, {**r, "batch": batch, "phase_start": phase_start})

        if phase == "create":
            rng = random.Random(f"{self.scenario.seed}/{key.label}")
            delays = [rng.uniform(0, self.scenario.jitter) for _ in nodes]
            await self._pull_together(nodes, reference, delays, record_pull(0))
        elif phase == "update":
            for batch, members in enumerate(self.scenario.update_batches()):
                self.progress.step(f"{key.label}: update batch {batch + 1}/{len(self.scenario.update_batches())}")
                await self._pull_together([nodes[i] for i in members], reference, None, record_pull(batch))
        else:
            await self._advertise(phase_labels, image, nodes, client, reference, record_pull(0))
        phase_end = time.time()
        upstream_after = await trio.to_thread.run_sync(self.cluster.upstream_bytes)
        logged_after = await trio.to_thread.run_sync(self.cluster.upstream_log_bytes)
        mirrors_after = [await measure.scrape_mirror(client, node) for node in nodes]
        counters: dict[str, float] = {}
        for before, after in zip(mirrors_before, mirrors_after, strict=True):
            for name, value in measure.counter_delta(before, after).items():
                counters[name] = counters.get(name, 0) + value
        upstream, logged = upstream_after - upstream_before, logged_after - logged_before
        load = {"load_start": load_start, "load_end": os.getloadavg()[0]}  # the machine's 1-min load average
        self.recorder.add(
            "traffic", phase_labels, {**traffic_record(phase_start, phase_end, upstream, logged, counters), **load}
        )

    async def _pull_together(
        self,
        nodes: list[Node],
        reference: str,
        delays: list[float] | None,
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        async def one(node: Node, delay: float) -> None:
            await trio.sleep(delay)
            record(await measure.pull(node, reference, self.scenario.pull_timeout))

        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                nursery.start_soon(one, node, delays[i] if delays else 0.0)

    async def _advertise(
        self,
        labels: dict[str, Any],
        image: PhaseImage,
        nodes: list[Node],
        client: httpx.AsyncClient,
        reference: str,
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        puller, observers = nodes[0], nodes[1:]
        path = f"/v2/{image.repository}/blobs/{{digest}}?ns={self.cluster.registry_host}"

        def on_visible(r: dict[str, Any]) -> None:
            self.recorder.add("visibility", labels, {**r, "layer": self.layer_index.get(r["digest"], -1)})

        until = [time.time() + self.scenario.pull_timeout + SETTLE_AFTER_PULL]
        async with trio.open_nursery() as nursery:
            for observer in observers:
                nursery.start_soon(
                    measure.watch_visibility,
                    client,
                    observer,
                    path,
                    image.layer_digests(),
                    on_visible,
                    self.scenario.observe_interval,
                    lambda: until[0],
                )
            await trio.sleep(0.1)  # observers are probing before the pull starts
            record(await measure.pull(puller, reference, self.scenario.pull_timeout))
            until[0] = time.time() + SETTLE_AFTER_PULL

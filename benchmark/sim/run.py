"""A scenario on the simulator (`backend = "sim"`): every run of `plan(scenario)` on a fresh simulated
cluster, recorded in the netns backend's tables (`OUT/data/*.csv`, `OUT/meta.json`) and report.

Not simulated: the `proxy` mode (recorded as a failed run) and the `advertise` phase (skipped). The `usage`
table holds the simulator's own CPU time and peak RSS per run (process `simulator`).
"""

from __future__ import annotations

import hashlib
import random
import resource
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmark.progress import Progress
from benchmark.runner import Recorder, run_labels, write_meta
from benchmark.scenario import ImageShape, Scenario, plan
from benchmark.sim.cluster import SIMULATED_MODES, ClusterModel, SimCluster
from benchmark.sim.containerd import Blob

CONFIG_SIZE = 600  # bytes of an image config, about what benchmark.images writes


@dataclass(frozen=True)
class SimImage:
    """The image one phase pulls, as the simulator needs it: blob digests and sizes (no bytes)."""

    shape: ImageShape
    phase: str
    blobs: tuple[Blob, ...]

    @classmethod
    def of(cls, shape: ImageShape, phase: str, seed: int) -> SimImage:
        def digest(part: str) -> str:
            return "sha256:" + hashlib.sha256(f"{seed}/{shape.name}/{phase}/{part}".encode()).hexdigest()

        config = Blob(digest("config"), CONFIG_SIZE, layer=False)
        layers = [Blob(digest(f"layer{i}"), size, layer=True) for i, size in enumerate(shape.layers)]
        return cls(shape, phase, (config, *layers))

    def describe(self) -> dict[str, Any]:
        layers = [b for b in self.blobs if b.layer]
        return {
            "repository": f"sim/{self.shape.name}",
            "tag": self.phase,
            "size": sum(b.size for b in self.blobs),
            "layer_bytes": sum(b.size for b in layers),
            "layers": [{"digest": b.digest, "size": b.size} for b in layers],
            "config": self.blobs[0].digest,
        }


def model_of(scenario: Scenario) -> ClusterModel:
    c = scenario.cluster
    return ClusterModel(c.nodes, c.upstream_bandwidth, c.node_bandwidth, c.chunk_size, c.max_concurrent_downloads)


def run(scenario: Scenario, out: Path, progress: Progress, model: ClusterModel | None = None) -> None:
    """Simulate every run of `scenario` into `out` (data and meta.json; the caller builds the report)."""
    model = model or model_of(scenario)
    images = {
        (shape.name, phase): SimImage.of(shape, phase, scenario.seed * 1000 + s)
        for s, shape in enumerate(scenario.images)
        for phase in scenario.phases
    }
    started = time.time()
    simulator = {"timing": asdict(model.timing), "delays": asdict(model.delays) if model.delays else "measured"}
    write_meta(out, scenario, images, started=started, simulator=simulator)  # type: ignore[arg-type]
    recorder = Recorder(out)
    for key in plan(scenario):
        progress.run_starting()
        labels = run_labels(key)
        if key.mode not in SIMULATED_MODES:
            recorder.add("failures", labels, {"error": f"mode {key.mode} is not simulated"})
            progress.run_finished(f"{key.label} skipped (not simulated)")
            continue
        cpu = time.process_time()
        cluster = SimCluster(model, key.mode, zlib.crc32(f"{scenario.seed}/{key.label}".encode()))
        for phase in scenario.phases:
            if phase == "advertise":
                continue
            image = images[key.image, phase]
            layer_index = {b.digest: i for i, b in enumerate(b for b in image.blobs if b.layer)}
            nodes = list(range(model.nodes))
            if phase == "create":
                rng = random.Random(f"{scenario.seed}/{key.label}")
                delays = {n: rng.uniform(0, scenario.jitter) for n in nodes}
                result = cluster.run_phase(list(image.blobs), [nodes], delays)
            else:
                result = cluster.run_phase(list(image.blobs), scenario.update_batches(), {})
            phase_labels = {**labels, "phase": phase}
            for row in result.pulls:
                recorder.add("pulls", phase_labels, {**row, "error": ""})
            for row in result.events:
                recorder.add("events", labels, {**row, "phase": phase, "layer": layer_index.get(row["digest"], -1)})
            recorder.add("traffic", phase_labels, result.traffic)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        usage = {
            "node": "sim",
            "process": "simulator",
            "cpu_seconds": time.process_time() - cpu,
            "peak_rss_bytes": peak,
        }
        recorder.add("usage", labels, usage)
        recorder.flush()
        progress.run_finished(f"{key.label} simulated ({cluster.sim.events_run} events)")
    recorder.flush()
    write_meta(out, scenario, images, started=started, finished=time.time(), simulator=simulator)  # type: ignore[arg-type]

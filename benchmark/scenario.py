"""Scenarios: what a benchmark run measures, read from a TOML file (pure: parsing and planning only).

A scenario names the cluster (backend, node count, upstream bandwidth U, node bandwidth B, latency,
containerd's chunk size), one or more image shapes, the modes to compare, the phases to run and the number
of repetitions. Example (every key but `name`, `cluster.nodes` and `images` has a default):

    name = "default"
    repetitions = 2
    modes = ["upstream", "proxy", "image", "layer", "inflight"]
    phases = ["create", "update"]
    [cluster]
    nodes = 4
    upstream_bandwidth = "50Mbit"
    node_bandwidth = "200Mbit"
    [[images]]
    name = "32MiB-4"
    size = "32MiB"      # split evenly over `layers` layers; or `layers = ["8MiB", "24MiB"]`
    layers = 4
    [create]
    jitter = "500ms"    # each node starts its pull at a uniform random offset in [0, jitter]
    [update]
    batch = 0.2         # rolling update: this fraction of the nodes pulls at a time

Backends: `netns` (real nodes in network namespaces on this machine, up to 64), `kind`, `sim` (the cluster
simulator, `benchmark/sim/`, up to 100,000 nodes). Modes: `upstream` (nodes pull from the upstream
registry), `proxy` (a central distribution pull-through cache), `spegel-go` (the real Spegel, Go, on every
node: `benchmark/spegelgo.py`), `image` / `layer` / `inflight` (our mirror with `--advertise` set to that).
Phases: `create` (all nodes pull image v1 at once), `update` (nodes pull image v2, a batch at a time),
`advertise` (one node pulls, the others watch when each layer becomes visible to them). Any error names the
key: `ScenarioError`.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.images import COMPRESSIONS
from benchmark.units import parse_duration, parse_rate, parse_size

MODES = ("upstream", "proxy", "spegel-go", "image", "layer", "inflight")
MIRROR_MODES = ("image", "layer", "inflight")  # our `spegel registry --advertise MODE` on every node
PEER_MODES = ("spegel-go", *MIRROR_MODES)  # every node runs a mirror of its peers (ours or Spegel's)
PHASES = ("create", "update", "advertise")
BACKENDS = ("netns", "kind", "sim")
MAX_NODES = {"netns": 64, "kind": 64, "sim": 100_000}


class ScenarioError(ValueError):
    """The scenario file is unreadable or a key has a bad value; the message names the key."""


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    upstream_bandwidth: float  # bit/s
    node_bandwidth: float  # bit/s
    backend: str = "netns"
    latency: float = 0.0  # seconds, one way, per node link
    chunk_size: int = 4 << 20  # containerd concurrent_layer_fetch_buffer; 0 turns multipart fetch off
    max_concurrent_downloads: int = 3


@dataclass(frozen=True)
class ImageShape:
    name: str
    layers: tuple[int, ...]
    compression: str = "gzip"
    platforms: int = 1

    @property
    def payload(self) -> int:
        return sum(self.layers)


@dataclass(frozen=True)
class Scenario:
    name: str
    cluster: ClusterSpec
    images: tuple[ImageShape, ...]
    modes: tuple[str, ...] = MODES
    phases: tuple[str, ...] = ("create", "update")
    repetitions: int = 1
    description: str = ""
    seed: int = 0
    jitter: float = 0.5
    update_batch: float = 0.2
    pull_timeout: float = 600.0
    observe_interval: float = 0.01

    def update_batches(self) -> list[list[int]]:
        """Node indexes of each rolling-update batch: ceil(batch * N) nodes at a time, in node order."""
        step = max(1, math.ceil(self.update_batch * self.cluster.nodes))
        nodes = list(range(self.cluster.nodes))
        return [nodes[i : i + step] for i in range(0, len(nodes), step)]


@dataclass(frozen=True)
class RunKey:
    """One run: an image shape, a mode and a repetition number (a fresh set of nodes runs every phase)."""

    image: str
    mode: str
    repetition: int

    @property
    def label(self) -> str:
        return f"{self.image}/{self.mode}/rep{self.repetition}"


def repository_name(shape: ImageShape) -> str:
    """`bench/<shape name>` in the characters a repository name allows."""
    return "bench/" + (re.sub(r"[^a-z0-9]+", "-", shape.name.lower()).strip("-") or "image")


def plan(scenario: Scenario) -> list[RunKey]:
    """The runs in execution order: modes interleaved within each repetition, so drift hits all modes alike."""
    return [
        RunKey(image.name, mode, repetition)
        for repetition in range(scenario.repetitions)
        for image in scenario.images
        for mode in scenario.modes
    ]


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Scenario:
    """Validate a parsed scenario document (see the module docstring for the keys)."""
    top = _Table(data, "")
    cluster_table = top.table("cluster")
    backend = cluster_table.choice("backend", BACKENDS, "netns")
    cluster = ClusterSpec(
        nodes=cluster_table.integer("nodes", minimum=1, maximum=MAX_NODES[backend]),
        upstream_bandwidth=cluster_table.quantity("upstream_bandwidth", parse_rate, "50Mbit"),
        node_bandwidth=cluster_table.quantity("node_bandwidth", parse_rate, "400Mbit"),
        backend=backend,
        latency=cluster_table.quantity("latency", parse_duration, 0),
        chunk_size=cluster_table.quantity("chunk_size", parse_size, "4MiB"),
        max_concurrent_downloads=cluster_table.integer("max_concurrent_downloads", 3, minimum=1, maximum=64),
    )
    cluster_table.done()
    images = tuple(_image(table) for table in top.tables("images"))
    if len({image.name for image in images}) != len(images):
        raise ScenarioError("images: names must be unique")
    create, update = top.table("create", optional=True), top.table("update", optional=True)
    scenario = Scenario(
        name=top.string("name"),
        description=top.string("description", ""),
        cluster=cluster,
        images=images,
        modes=top.choices("modes", MODES, MODES),
        phases=top.choices("phases", PHASES, ("create", "update")),
        repetitions=top.integer("repetitions", 1, minimum=1, maximum=100),
        seed=top.integer("seed", 0, minimum=0, maximum=2**31),
        pull_timeout=top.quantity("pull_timeout", parse_duration, "10min"),
        observe_interval=top.quantity("observe_interval", parse_duration, "10ms"),
        jitter=create.quantity("jitter", parse_duration, "500ms"),
        update_batch=update.number("batch", 0.2, minimum=0.01, maximum=1.0),
    )
    create.done()
    update.done()
    top.done()
    if "advertise" in scenario.phases and cluster.nodes < 2:
        raise ScenarioError("phases: 'advertise' needs at least 2 nodes (one pulls, the others watch)")
    if scenario.pull_timeout <= 0 or scenario.observe_interval <= 0:
        raise ScenarioError("pull_timeout and observe_interval must be positive")
    return scenario


def _image(table: _Table) -> ImageShape:
    name = table.string("name")
    raw = table.raw("layers", 1)
    if isinstance(raw, list):
        if not raw:
            raise ScenarioError(f"{table.where('layers')}: needs at least one layer size")
        layers = tuple(table.parse_value(f"layers[{i}]", v, parse_size) for i, v in enumerate(raw))
        if "size" in table.data:
            raise ScenarioError(f"{table.where('size')}: give either `size` with a layer count or a list of sizes")
    else:
        count = table.integer("layers", 1, minimum=1, maximum=128)
        total = table.quantity("size", parse_size)
        layers = tuple(total // count + (1 if i < total % count else 0) for i in range(count))
    shape = ImageShape(
        name=name,
        layers=layers,
        compression=table.choice("compression", tuple(COMPRESSIONS), "gzip"),
        platforms=table.integer("platforms", 1, minimum=1, maximum=2),
    )
    table.done()
    return shape


_MISSING = object()


class _Table:
    """A TOML table being read: typed getters that name the key in errors, and a check for unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{path or 'scenario'}: must be a table")
        self.data, self.path, self.seen = data, path, set[str]()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ScenarioError(f"{self.where(key)}: missing")
        return default

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or (default is _MISSING and not value):
            raise ScenarioError(f"{self.where(key)}: must be a non-empty string")
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int, maximum: int) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ScenarioError(f"{self.where(key)}: must be an integer in [{minimum}, {maximum}], got {value!r}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float, maximum: float) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
            raise ScenarioError(f"{self.where(key)}: must be a number in [{minimum}, {maximum}], got {value!r}")
        return float(value)

    def quantity(self, key: str, parser: Any, default: Any = _MISSING) -> Any:
        return self.parse_value(key, self.raw(key, default), parser)

    def parse_value(self, key: str, value: Any, parser: Any) -> Any:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: must be a string or number, got {value!r}")
        try:
            return parser(value)
        except ValueError as exc:
            raise ScenarioError(f"{self.where(key)}: {exc}") from None

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if value not in allowed:
            raise ScenarioError(f"{self.where(key)}: must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def choices(self, key: str, allowed: tuple[str, ...], default: Any = _MISSING) -> tuple[str, ...]:
        value = self.raw(key, default)
        if not isinstance(value, list | tuple) or not value or len(set(value)) != len(value):
            raise ScenarioError(f"{self.where(key)}: must be a non-empty list without repeats")
        for item in value:
            if item not in allowed:
                raise ScenarioError(f"{self.where(key)}: {item!r} is not one of {', '.join(allowed)}")
        return tuple(value)

    def table(self, key: str, optional: bool = False) -> _Table:
        return _Table(self.raw(key, {} if optional else _MISSING), self.where(key))

    def tables(self, key: str) -> list[_Table]:
        value = self.raw(key)
        if not isinstance(value, list) or not value:
            raise ScenarioError(f"{self.where(key)}: must be a non-empty array of tables ([[{key}]])")
        return [_Table(item, f"{self.where(key)}[{i}]") for i, item in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ScenarioError(f"{self.path or 'scenario'}: unknown key(s) {', '.join(unknown)}")

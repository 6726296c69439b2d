"""A small cluster on loopback: nodes of containerd 2.1.9 + `spegel registry --store containerd` with a libp2p
router (static bootstrap to the first node), each node's containerd pointed at its own mirror by
`spegel configuration`, and a CNCF distribution registry upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmark.daemons import Containerd, Registry, Spegel, configure_mirror, free_address
from spegel.store.containerd.client import ContainerdClient

CHUNK = 1 << 20


@dataclass
class MirrorNode:
    name: str
    containerd: Containerd
    mirror: Spegel
    router_addr: str

    async def pull(self, reference: str, timeout: float = 120) -> str:
        async with ContainerdClient(str(self.containerd.socket)) as client:
            return await client.pull_image(reference, timeout=timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the mirror's /metrics (0 when absent)."""
        text = httpx.get(f"http://{self.mirror.metrics_addr}/metrics", timeout=5).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if _same_sample(key, want):
                total += float(value)
        return total


def _same_sample(key: str, want: str) -> bool:
    if "{" not in want:
        return key == want
    name, _, labels = key.partition("{")
    want_name, _, want_labels = want.partition("{")
    return name == want_name and set(labels.rstrip("}").split(",")) == set(want_labels.rstrip("}").split(","))


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def cluster(tmp_path: Path, upstream: Registry) -> Iterator[Callable[..., list[MirrorNode]]]:
    """`cluster(n, *mirror_flags, upstream_address=None)` starts n nodes, their containerd mirroring the upstream
    registry (or whatever stands at `upstream_address`); the first node is every other's bootstrap peer."""
    with contextlib.ExitStack() as stack:

        def start(n: int, *mirror_flags: str, upstream_address: str | None = None) -> list[MirrorNode]:
            nodes: list[MirrorNode] = []
            for i in range(n):
                name = f"node{i}"
                base = tmp_path / name
                containerd = stack.enter_context(Containerd(base / "containerd", chunk_size=CHUNK))
                registry_addr, router_addr = free_address(), free_address()
                configure_mirror(
                    containerd.hosts_dir, f"http://{upstream_address or upstream.address}", f"http://{registry_addr}"
                )
                bootstrap = nodes[0].router_addr if nodes else router_addr
                host, port = bootstrap.split(":")
                router = [
                    "--router",
                    "libp2p",
                    "--router-addr",
                    router_addr,
                    "--data-dir",
                    str(base / "data"),
                    "--static-bootstrap-peers",
                    f"/ip4/{host}/tcp/{port}",
                    "--router-dht",
                ]
                preflight = [
                    "--containerd-config-path",
                    str(containerd.config_path),
                    "--containerd-registry-config-path",
                    str(containerd.hosts_dir),
                ]
                store = [
                    *preflight,
                    "--containerd-sock",
                    str(containerd.socket),
                    "--containerd-content-path",
                    str(containerd.content_root),
                    *mirror_flags,
                ]
                mirror = Spegel.registry(
                    "containerd", base / "spegel.log", registry_addr=registry_addr, router=router, extra=store
                )
                nodes.append(MirrorNode(name, containerd, stack.enter_context(mirror), router_addr))
            return nodes

        yield start

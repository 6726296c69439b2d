"""A small cluster on loopback: nodes of containerd 2.1.9 + `spegel registry --store containerd` with a libp2p
router (static bootstrap to the first node), each node's containerd pointed at its own mirror by
`spegel configuration`, and a CNCF distribution registry upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmark.daemons import LoopbackNode, Registry, start_loopback_node

CHUNK = 1 << 20


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def cluster(tmp_path: Path, upstream: Registry) -> Iterator[Callable[..., list[LoopbackNode]]]:
    """`cluster(n, *mirror_flags, upstream_address=None)` starts n nodes, their containerd mirroring the upstream
    registry (or whatever stands at `upstream_address`); the first node is every other's bootstrap peer."""
    with contextlib.ExitStack() as stack:

        def start(n: int, *mirror_flags: str, upstream_address: str | None = None) -> list[LoopbackNode]:
            registry_url = f"http://{upstream_address or upstream.address}"
            nodes: list[LoopbackNode] = []
            for i in range(n):
                bootstrap = nodes[0] if nodes else None
                node = start_loopback_node(
                    stack, tmp_path / f"node{i}", registry_url, bootstrap, chunk_size=CHUNK, mirror_flags=mirror_flags
                )
                nodes.append(node)
            return nodes

        yield start

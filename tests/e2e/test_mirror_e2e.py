"""The product end to end on loopback: real containerd 2.1.9 nodes pulling through CRI, each through its own
`spegel registry` (containerd store, libp2p router), with a CNCF distribution registry upstream."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from benchmark.daemons import Registry
from benchmark.images import ImageSpec, build, push
from spegel.oci.digest import Digest

pytestmark = pytest.mark.slow


def peer_has(node, registry: str, digest: Digest) -> bool:
    url = f"{node.mirror.url}/v2/e2e/app/blobs/{digest}"
    return httpx.head(url, params={"ns": registry}, timeout=5).status_code == 200


def held_blob(node, digest: Digest) -> bytes:
    return (node.containerd.content_root / "blobs" / digest.algorithm / digest.hex).read_bytes()


async def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


async def test_peers_serve_an_image_when_upstream_is_gone(cluster, upstream: Registry, tmp_path: Path) -> None:
    """A pulls from upstream; upstream stops; B pulls by tag and C by digest, every blob from peers."""
    image = build(ImageSpec(layers=(3 << 20, 2 << 20), compression="gzip", seed=11, platforms=2))
    reference = f"{upstream.address}/e2e/app:v1"
    async with httpx.AsyncClient() as client:
        await push(image, client, upstream.url, "e2e/app", "v1")
    a, b, c = cluster(3)
    await a.pull(reference)
    upstream.stop()
    host = image.platforms[0]
    digests = [host.manifest.digest, host.config.digest, *(layer.digest for layer in host.layers)]
    # A's advertisements reach B and C through the router: each mirror then finds the blobs on a peer
    for node in (b, c):
        await wait_until(lambda node=node: peer_has(node, upstream.address, host.layers[-1].digest))
    await b.pull(reference)
    await c.pull(f"{upstream.address}/e2e/app@{image.top.digest}")
    for node in (b, c):
        for digest in digests:
            assert Digest.of(held_blob(node, digest)) == digest
        assert node.metric("spegel_mirror_requests_total", {"registry": upstream.address, "source": "peer"}) >= len(
            digests
        )
    layer_bytes = sum(layer.size for layer in host.layers)
    assert a.metric("spegel_mirror_bytes_total", {"source": "local"}) >= 2 * layer_bytes

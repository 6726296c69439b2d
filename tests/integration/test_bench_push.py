"""Pushing a synthetic image to a real CNCF distribution registry on loopback, and reading it back."""

from __future__ import annotations

from pathlib import Path

import httpx

from benchmark.daemons import Registry
from benchmark.images import ImageSpec, build, push
from spegel.oci import mediatypes


async def test_push_then_pull_back_byte_exact(tmp_path: Path, upstream_registry: Registry) -> None:
    image = build(ImageSpec((300_000, 5000), "gzip", seed=11, platforms=2), tmp_path / "cache")
    async with httpx.AsyncClient(timeout=30) as client:
        top = await push(image, client, upstream_registry.url, "bench/img", "v1")
        assert top == image.index
        accept = {"Accept": ", ".join(sorted(mediatypes.MANIFEST_OR_INDEX_TYPES))}
        tagged = await client.get(f"{upstream_registry.url}/v2/bench/img/manifests/v1", headers=accept)
        assert tagged.status_code == 200
        assert tagged.headers["docker-content-digest"] == str(image.top.digest)
        assert tagged.content == image.read_blob(image.top.digest)
        for descriptor in image.blobs():
            kind = "manifests" if descriptor.media_type in mediatypes.MANIFEST_OR_INDEX_TYPES else "blobs"
            got = await client.get(f"{upstream_registry.url}/v2/bench/img/{kind}/{descriptor.digest}", headers=accept)
            assert got.status_code == 200 and got.content == image.read_blob(descriptor.digest), descriptor

        # A second push finds every blob there already and uploads nothing.
        before = len([e for e in upstream_registry.access_log() if e.method == "POST"])
        await push(image, client, upstream_registry.url, "bench/img", "v2")
        after = len([e for e in upstream_registry.access_log() if e.method == "POST"])
        assert after == before


async def test_push_single_manifest_by_tag(tmp_path: Path, upstream_registry: Registry) -> None:
    image = build(ImageSpec((1000,), "zstd", seed=12), tmp_path / "cache")
    async with httpx.AsyncClient(timeout=30) as client:
        await push(image, client, upstream_registry.url, "bench/one", "latest")
        got = await client.head(
            f"{upstream_registry.url}/v2/bench/one/manifests/latest", headers={"Accept": mediatypes.OCI_MANIFEST}
        )
    assert got.status_code == 200 and got.headers["docker-content-digest"] == str(image.top.digest)

"""Synthetic images: deterministic, valid tar layers, digests that match the bytes, a well-formed index."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from benchmark.images import COMPRESSIONS, ImageSpec, InvalidImageSpec, build, host_platform
from spegel.oci import mediatypes
from spegel.oci.digest import Digest
from spegel.oci.manifest import Index, Manifest, parse
from spegel.oci.reference import Reference
from spegel.store.layout import OCILayoutStore


def _members(blob: bytes, compression: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    if compression == "gzip":
        blob = gzip.decompress(blob)
    elif compression == "zstd":
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr, misc]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layers_are_valid_tars_with_the_requested_payload(tmp_path: Path, compression: str) -> None:
    image = build(ImageSpec((1000, 70_000), compression, seed=3), tmp_path)
    (plat,) = image.platforms
    assert [d.media_type for d in plat.layers] == [COMPRESSIONS[compression]] * 2
    for descriptor, size in zip(plat.layers, (1000, 70_000), strict=True):
        blob = image.read_blob(descriptor.digest)
        assert Digest.of(blob) == descriptor.digest and len(blob) == descriptor.size
        ((member, payload),) = _members(blob, compression)
        assert member.isfile() and member.size == size == len(payload)


def test_media_types_and_config_diff_ids(tmp_path: Path) -> None:
    image = build(ImageSpec((5000, 6000), "zstd", seed=1), tmp_path)
    (plat,) = image.platforms
    assert {d.media_type for d in plat.layers} == {mediatypes.OCI_LAYER_ZSTD}
    manifest = parse(image.read_blob(plat.manifest.digest))
    assert isinstance(manifest, Manifest)
    assert manifest.layers == plat.layers and manifest.config == plat.config
    config = json.loads(image.read_blob(plat.config.digest))
    uncompressed = [
        zstandard.ZstdDecompressor().decompressobj().decompress(image.read_blob(d.digest)) for d in plat.layers
    ]
    assert config["rootfs"]["diff_ids"] == [str(Digest.of(u)) for u in uncompressed]
    assert config["architecture"] == host_platform().architecture
    assert image.top == plat.manifest and image.index is None


def test_same_spec_same_digests_other_seed_other_digests(tmp_path: Path) -> None:
    a = build(ImageSpec((20_000,), "gzip", seed=7), tmp_path / "a")
    b = build(ImageSpec((20_000,), "gzip", seed=7), tmp_path / "b")
    c = build(ImageSpec((20_000,), "gzip", seed=8), tmp_path / "a")
    assert a.top.digest == b.top.digest
    assert a.platforms[0].layers == b.platforms[0].layers
    assert c.platforms[0].layers[0].digest != a.platforms[0].layers[0].digest


def test_cache_is_reused(tmp_path: Path) -> None:
    spec = ImageSpec((10_000,), "none", seed=2)
    first = build(spec, tmp_path)
    layer = first.blob_path(first.platforms[0].layers[0].digest)
    stamp = layer.stat().st_mtime_ns
    second = build(spec, tmp_path)
    assert second.root == first.root and layer.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [spec.cache_key()]


def test_index_with_two_platforms(tmp_path: Path) -> None:
    image = build(ImageSpec((3000,), "gzip", seed=5, platforms=2), tmp_path)
    assert image.index is not None and image.top == image.index
    index = parse(image.read_blob(image.index.digest))
    assert isinstance(index, Index)
    platforms = [d.platform for d in index.manifests]
    assert platforms[0] == host_platform() and platforms[1] != host_platform()
    assert image.platforms[0].layers[0].digest != image.platforms[1].layers[0].digest
    host = image.platforms[0]
    assert image.size == image.index.size + host.manifest.size + host.config.size + host.layers[0].size


async def test_layout_export_is_served_by_the_layout_store(tmp_path: Path) -> None:
    image = build(ImageSpec((4000,), "gzip", seed=9, platforms=2), tmp_path / "cache")
    image.to_layout(tmp_path / "layout", "example.com/bench/img:v1")
    store = OCILayoutStore(tmp_path / "layout")
    (stored,) = await store.images()
    assert stored.reference == Reference.parse("example.com/bench/img:v1") and stored.target == image.top
    for descriptor in image.blobs():
        assert (tmp_path / "layout" / "blobs" / "sha256" / descriptor.digest.hex).read_bytes() == image.read_blob(
            descriptor.digest
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"layers": ()}, {"layers": (-1,)}, {"layers": (10,), "compression": "lz4"}, {"layers": (10,), "platforms": 3}],
)
def test_bad_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidImageSpec):
        ImageSpec(**kwargs)

"""Real clients pull from `spegel registry` (a CLI process serving an OCI layout).

- containerd 2.1.9 with multipart layer fetch on (chunks smaller than the layer) pulls an image through the
  transfer service (`ctr images pull --hosts-dir`, not `--local`, which never fetches in parallel): the layer
  lands digest-correct in its content store after many parallel open-ended range requests.
- skopeo copies a two-platform image out of the server into an OCI layout, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from benchmark.daemons import Containerd, Spegel
from benchmark.images import ImageSpec, build
from spegel.hostsconfig import MirroredRegistry, apply

CHUNK = 1 << 20
REGISTRY = "registry.test"


def _max_concurrency(records: list[dict]) -> int:
    """Most requests in progress at once, from each record's end time and duration."""
    edges = []
    for record in records:
        end = datetime.fromisoformat(record["time"]).timestamp()
        edges += [(end - record["seconds"], 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_containerd_multipart_pull(
    tmp_path: Path, spegel_registry_factory: Callable[..., Spegel], containerd_factory: Callable[..., Containerd]
) -> None:
    image = build(ImageSpec((8 * CHUNK,), compression="none", seed=401))
    layer = image.platforms[0].layers[0]
    image.to_layout(tmp_path / "layout", f"{REGISTRY}/multi/part:v1")
    server = spegel_registry_factory(f"oci-layout:{tmp_path / 'layout'}")
    containerd = containerd_factory(chunk_size=CHUNK, max_concurrent_downloads=4)
    apply(containerd.hosts_dir, [MirroredRegistry.parse(REGISTRY)], [server.url])

    containerd.ctr("images", "pull", "--hosts-dir", str(containerd.hosts_dir), f"{REGISTRY}/multi/part:v1")

    stored = (containerd.content_root / "blobs" / "sha256" / layer.digest.hex).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == layer.digest.hex
    assert stored == image.read_blob(layer.digest)
    layer_gets = [r for r in server.access_log() if r["path"].endswith(str(layer.digest)) and r["method"] == "GET"]
    assert all(r["status"] == 206 for r in layer_gets)
    starts = {int(r["range"].removeprefix("bytes=").removesuffix("-")) for r in layer_gets}
    assert starts >= set(range(0, layer.size, CHUNK))  # one open-ended range per chunk
    assert _max_concurrency(layer_gets) >= 2


@pytest.mark.slow
def test_skopeo_copies_an_image_byte_identical(tmp_path: Path, spegel_registry_factory: Callable[..., Spegel]) -> None:
    image = build(ImageSpec((300_000, 50_000), seed=402, platforms=2))
    image.to_layout(tmp_path / "layout", f"{REGISTRY}/copy/me:v2")
    server = spegel_registry_factory(f"oci-layout:{tmp_path / 'layout'}", extra=("--default-registry", REGISTRY))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    out = tmp_path / "copy"
    argv = ["skopeo", "--policy", str(policy), "copy", "--all", "--preserve-digests", "--src-tls-verify=false"]
    result = subprocess.run(
        [*argv, f"docker://{server.registry_addr}/copy/me:v2", f"oci:{out}:v2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [str(image.top.digest)]
    for descriptor in image.blobs():
        copied = out / "blobs" / descriptor.digest.algorithm / descriptor.digest.hex
        assert copied.read_bytes() == image.read_blob(descriptor.digest), descriptor
    assert len(list((out / "blobs" / "sha256").iterdir())) == len(image.blobs())

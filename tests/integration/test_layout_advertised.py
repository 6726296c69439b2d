"""A layout store with a router advertises its content: a second mirror (real libp2p, two `spegel registry`
processes on loopback) serves what the first's OCI layout holds, at start and after its index.json changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import trio

from benchmark.daemons import Spegel, free_address
from benchmark.images import ImageSpec, SyntheticImage, build
from spegel.oci.digest import Digest
from spegel.store.layout import write_layout

FIRST, SECOND = "example.com/seed/app:v1", "example.com/seed/tool:v2"


def router_flags(tmp_path: Path, name: str, router_addr: str, *bootstrap: str) -> list[str]:
    flags = ["--router-addr", router_addr, "--data-dir", str(tmp_path / f"{name}-identity")]
    return flags + [flag for addr in bootstrap for flag in ("--static-bootstrap-peers", f"/ip4/{addr}")]


async def served(client: httpx.AsyncClient, reference: str, image: SyntheticImage) -> None:
    """The mirror serves `image` as `reference`: its manifest once the advertisement has arrived (polled up to
    30 s), then its layer, from the peer."""
    repository, _, tag = reference.removeprefix("example.com/").partition(":")
    with trio.fail_after(30):
        while True:
            manifest = await client.get(f"/v2/{repository}/manifests/{tag}", params={"ns": "example.com"})
            if manifest.status_code == 200:
                break
            assert manifest.status_code == 404, manifest.text
            await trio.sleep(0.1)
    assert Digest.of(manifest.content) == image.top.digest
    layer = image.platforms[0].layers[0].digest
    blob = await client.get(f"/v2/{repository}/blobs/{layer}", params={"ns": "example.com"})
    assert blob.status_code == 200 and Digest.of(blob.content) == layer


def add_to_layout(layout: Path, staging: Path, reference: str) -> None:
    """Copy the blobs of the layout at `staging` into `layout`, then replace its index.json (by a rename) with
    one that also tags `staging`'s image as `reference`, the way layout tools add an image."""
    for blob in (staging / "blobs").rglob("*"):
        if blob.is_file():
            target = layout / blob.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, target)
    index = json.loads((layout / "index.json").read_text())
    [added] = json.loads((staging / "index.json").read_text())["manifests"]
    added["annotations"] = {"org.opencontainers.image.ref.name": reference}
    index["manifests"].append(added)
    (layout / "index.json.new").write_text(json.dumps(index))
    (layout / "index.json.new").rename(layout / "index.json")


async def test_a_layout_is_advertised_at_start_and_when_its_index_changes(tmp_path: Path) -> None:
    first = build(ImageSpec(layers=(200_000,), seed=701))
    second = build(ImageSpec(layers=(150_000,), seed=702))
    first.to_layout(tmp_path / "seed", FIRST)
    write_layout(tmp_path / "empty", {}, [])
    seed_router, node_router = free_address(), free_address()
    seed_flags = router_flags(tmp_path, "seed", seed_router)
    node_flags = router_flags(tmp_path, "node", node_router, seed_router.replace(":", "/tcp/"))
    with (
        Spegel.registry(f"oci-layout:{tmp_path / 'seed'}", tmp_path / "seed.log", router=seed_flags),
        Spegel.registry(f"oci-layout:{tmp_path / 'empty'}", tmp_path / "node.log", router=node_flags) as node,
    ):
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            await served(client, FIRST, first)
            second.to_layout(tmp_path / "staging", SECOND)
            add_to_layout(tmp_path / "seed", tmp_path / "staging", SECOND)
            await served(client, SECOND, second)

"""The containerd client and store against a real containerd 2.1.9 and a real upstream (CNCF distribution).

- after a CRI pull of a two-platform image, the store lists the tag, resolves it, walks every digest this
  node holds, and serves each blob byte-exact, from the content root and through the Content.Read API;
- `spegel registry --store containerd` (the CLI process) serves the pulled image over HTTP, byte-exact;
- the trio <-> asyncio bridge under load (hundreds of concurrent calls and streams) and under cancellation
  (unary calls, Content.Read streams and Events.Subscribe cancelled mid-flight): the channel keeps working.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from containerd_harness import plain_http_upstream, pushed

from benchmark.daemons import Containerd, Registry, Spegel
from benchmark.images import ImageSpec
from spegel.oci.digest import Digest
from spegel.oci.manifest import Descriptor
from spegel.oci.reference import Reference
from spegel.store.base import NotFound
from spegel.store.containerd.client import ContainerdClient, ContainerdUnavailable
from spegel.store.containerd.content import ContainerdContent
from spegel.store.containerd.proto import images_pb2
from spegel.store.containerd.store import ContainerdStore, ContentAPIReader
from spegel.store.files import FileBlobReader

pytestmark = pytest.mark.slow


async def _read(reader, start: int = 0, end: int | None = None) -> bytes:
    end = reader.size - 1 if end is None else end
    try:
        return b"".join([chunk async for chunk in reader.chunks(start, end)])
    finally:
        await reader.aclose()


async def test_store_after_cri_pull(
    tmp_path: Path, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    image, name = await pushed(upstream_registry, ImageSpec((300_000, 700_000), seed=501, platforms=2), "s/app", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    store = ContainerdStore(ContainerdClient(str(containerd.socket)), containerd.content_root)
    api_store = ContainerdStore(ContainerdClient(str(containerd.socket)), tmp_path / "not-mounted")
    try:
        await store.client.pull_image(name, timeout=120)

        [stored] = await store.images()
        assert stored.reference == Reference.parse(name)
        assert stored.target.digest == image.top.digest == image.index.digest
        assert (await store.resolve(Reference.parse(name))).digest == image.top.digest
        with pytest.raises(NotFound):
            await store.resolve(Reference.parse(f"{upstream_registry.address}/s/app:v2"))

        host = image.platforms[0]
        held = [image.index, host.manifest, host.config, *host.layers]
        keys = await ContainerdContent(store, blobs=False, downloads_too=False).all_image_keys()
        assert keys[0] == f"{Reference.parse(name).tag_key()}@{image.top.digest}"  # a tag carries its digest
        assert set(keys[1:]) == {str(d.digest) for d in held}  # the other platform's manifest is not held
        assert str(image.platforms[1].manifest.digest) not in keys

        for descriptor in held:
            expected = image.read_blob(descriptor.digest)
            assert (await store.describe(descriptor.digest)).size == len(expected)
            reader = await store.open(descriptor.digest)
            assert isinstance(reader, FileBlobReader)
            assert await _read(reader) == expected
            api_reader = await api_store.open(descriptor.digest)
            assert isinstance(api_reader, ContentAPIReader)
            assert await _read(api_reader) == expected
            assert await _read(await api_store.open(descriptor.digest), 7, 7 + 99) == expected[7:107]
        missing = Digest.of(b"not stored")
        with pytest.raises(NotFound):
            await store.open(missing)
        with pytest.raises(NotFound):
            await api_store.describe(missing)
    finally:
        store.close()
        api_store.close()


async def test_registry_serves_containerd_content(
    upstream_registry: Registry,
    containerd_factory: Callable[..., Containerd],
    spegel_registry_factory: Callable[..., Spegel],
) -> None:
    image, name = await pushed(upstream_registry, ImageSpec((400_000, 90_000), seed=503, platforms=2), "s/web", "v2")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    async with ContainerdClient(str(containerd.socket)) as client:
        await client.pull_image(name, timeout=120)
    flags = ("--containerd-sock", str(containerd.socket), "--containerd-content-path", str(containerd.content_root))
    mirror = spegel_registry_factory("containerd", extra=flags)
    base = f"{mirror.url}/v2/s/web"
    async with httpx.AsyncClient(timeout=30) as http:
        tag = await http.get(f"{base}/manifests/v2?ns={upstream_registry.address}", headers={"Accept": "*/*"})
        assert tag.status_code == 200 and tag.content == image.read_blob(image.index.digest)
        assert tag.headers["docker-content-digest"] == str(image.index.digest)
        host = image.platforms[0]
        manifest = await http.get(f"{base}/manifests/{host.manifest.digest}?ns={upstream_registry.address}")
        assert manifest.status_code == 200 and manifest.content == image.read_blob(host.manifest.digest)
        for blob in (host.config, *host.layers):
            response = await http.get(f"{base}/blobs/{blob.digest}?ns={upstream_registry.address}")
            assert response.status_code == 200 and response.content == image.read_blob(blob.digest)
        other = image.platforms[1].manifest.digest  # the other platform's manifest was never pulled
        assert (await http.get(f"{base}/manifests/{other}?ns={upstream_registry.address}")).status_code == 404


async def test_bridge_under_load_and_cancellation(
    upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    image, name = await pushed(upstream_registry, ImageSpec((3 << 20,), compression="none", seed=502), "s/l", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    layer = image.platforms[0].layers[0]
    async with ContainerdClient(str(containerd.socket)) as client:
        await client.pull_image(name, timeout=120)
        layer_hash = hashlib.sha256(image.read_blob(layer.digest)).hexdigest()

        # load: 400 unary calls and 20 full Content.Read streams at once, all correct
        results: list[object] = []

        async def info() -> None:
            results.append((await client.content_info(str(layer.digest))).size)

        async def read_layer() -> None:
            digest = hashlib.sha256()
            async with client.read_content(str(layer.digest), 0, 0) as pieces:
                async for piece in pieces:
                    digest.update(piece)
            results.append(digest.hexdigest())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(400):
                    nursery.start_soon(info)
                for _ in range(20):
                    nursery.start_soon(read_layer)
        assert results.count(layer.size) == 400 and results.count(layer_hash) == 20

        # cancellation of unary calls mid-flight, of Read streams after one piece, of idle subscriptions
        for _ in range(5):
            with trio.move_on_after(0.002):
                async with trio.open_nursery() as nursery:
                    for _ in range(100):
                        nursery.start_soon(client.list_content)
            with trio.move_on_after(5) as scope:
                async with client.read_content(str(layer.digest), 0, 0) as pieces:
                    async for _ in pieces:
                        scope.cancel()
            assert scope.cancelled_caught
            with trio.move_on_after(0.05) as scope:
                async with client.subscribe([]) as envelopes:
                    async for _ in envelopes:
                        pass
            assert scope.cancelled_caught

        # the channel still works, and a subscription still receives events in order
        with trio.fail_after(30):
            assert (await client.version()).at_least(2, 1)
            async with client.subscribe(['topic~="/images/"']) as envelopes:
                for tag in ("a", "b", "c"):
                    await trio.to_thread.run_sync(containerd.ctr, "images", "tag", name, f"{name}-{tag}")
                created = []
                async for envelope in envelopes:
                    if envelope.topic == "/images/create":  # (CRI follows each with an update: a label)
                        created.append(images_pb2.ImageCreate.FromString(envelope.event.value).name)
                        if len(created) == 3:
                            break
            assert created == [f"{name}-{tag}" for tag in ("a", "b", "c")]


async def test_unavailable_containerd_is_a_clear_error(tmp_path: Path) -> None:
    async with ContainerdClient(str(tmp_path / "no.sock")) as client:
        with trio.fail_after(10), pytest.raises(ContainerdUnavailable):
            await client.version()
        with trio.fail_after(10), pytest.raises(ContainerdUnavailable):
            async with client.subscribe([]) as envelopes:
                async for _ in envelopes:
                    pass


async def test_store_answers_not_found_while_containerd_is_away(tmp_path: Path) -> None:
    store = ContainerdStore(ContainerdClient(str(tmp_path / "no.sock")), tmp_path)
    digest = Digest.of(b"x")
    try:
        with trio.fail_after(10):
            # the request path: not here (the mirror asks its peers)
            for call in (lambda: store.describe(digest), lambda: store.open(digest), store.images):
                with pytest.raises(NotFound, match=r"ConnectionRefusedError|FileNotFoundError"):
                    await call()
            with pytest.raises(NotFound):
                await store.resolve(Reference.parse("example.com/a:b"))
            # the watcher's listings: an error, never a partial answer that would withdraw keys
            content = ContainerdContent(store, blobs=True, downloads_too=True)
            with pytest.raises(ContainerdUnavailable):
                await content.listing()
            with pytest.raises(ContainerdUnavailable):
                await content.walk(Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 1))
    finally:
        store.close()

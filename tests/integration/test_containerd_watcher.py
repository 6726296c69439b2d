"""The watcher against a real containerd 2.1.9 pulling (CRI PullImage) from a real registry.

- image and layer modes: what is advertised, and in the order containerd publishes its events;
- inflight: behind a throttled upstream, a layer is advertised in progress within 250 ms of its download
  starting (its ingest's first bytes on disk: an ingest without data is not advertised, see ingestwatch.py),
  long before its commit, and a reader opened mid-download returns the whole blob;
- removing an image (CRI RemoveImage, then containerd's garbage collection) withdraws its keys, but not a blob
  claimed for a download that has not begun;
- restarting containerd is survived: the watcher reconnects and keeps advertising.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from containerd_harness import held_digests, plain_http_upstream, pushed

from benchmark.daemons import Containerd, Registry
from benchmark.images import ImageSpec
from benchmark.throttle import ThrottledProxy
from spegel.oci.digest import Digest
from spegel.oci.reference import Reference
from spegel.routing.base import KeyState
from spegel.store.containerd.client import ContainerdClient
from spegel.store.containerd.ingest import IngestReader, find_ingest
from spegel.store.containerd.proto import content_events_pb2, images_pb2
from spegel.store.containerd.store import ContainerdStore
from spegel.store.containerd.watcher import Mode, Watcher
from spegel.tracker import Tracker
from tests.support.routers import RecordingRouter

pytestmark = pytest.mark.slow

COMPLETE, IN_PROGRESS = KeyState.COMPLETE, KeyState.IN_PROGRESS


async def record_events(client: ContainerdClient, log: list[tuple[str, str]], *, task_status) -> None:
    """Record (topic, digest or image name) of every k8s.io image and content event, in containerd's order."""
    async with client.subscribe(['namespace=="k8s.io"']) as envelopes:
        task_status.started()
        async for envelope in envelopes:
            if envelope.topic.startswith("/content/"):
                log.append((envelope.topic, content_events_pb2.ContentCreate.FromString(envelope.event.value).digest))
            elif envelope.topic.startswith("/images/"):
                log.append((envelope.topic, images_pb2.ImageCreate.FromString(envelope.event.value).name))


async def record_first_bytes(content_root: Path, digest: Digest, found: list[float], *, task_status) -> None:
    """Append when the ingest of `digest` first has data on disk (polled every 2 ms, so at most that late)."""
    task_status.started()
    while True:
        ingest = find_ingest(content_root, digest, "k8s.io")
        if ingest is not None and ingest.size() > 0:
            found.append(time.time())
            return
        await trio.sleep(0.002)


@pytest.mark.parametrize("mode", [Mode.IMAGE, Mode.LAYER, Mode.INFLIGHT])
async def test_events_are_advertised_in_containerds_order(
    mode: Mode, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    image, name = await pushed(upstream_registry, ImageSpec((200_000, 300_000, 400_000), seed=601), "w/app", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    tag = f"{Reference.parse(name).tag_key()}@{image.top.digest}"
    router = RecordingRouter()
    store = ContainerdStore(ContainerdClient(str(containerd.socket)), containerd.content_root)
    events: list[tuple[str, str]] = []
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(record_events, store.client, events)
                await nursery.start(Watcher(store, Tracker(router), mode).run)
                assert router.calls == []  # nothing to advertise yet
                await store.client.pull_image(name)
                await router.wait_for(lambda state: tag in state)
                nursery.cancel_scope.cancel()
    finally:
        store.close()

    assert set(router.state) == {tag, *held_digests(image)}
    assert all(state is COMPLETE for state in router.state.values())
    assert all(call.kind == "advertise" for call in router.calls)
    complete = [call for call in router.calls if call.state is COMPLETE]  # (inflight also says in progress)
    advertised = [key for call in complete for key in call.keys]
    if mode is Mode.IMAGE:
        # one advertisement, when the image is created: tag first, then manifest, config, layers
        [call] = router.calls
        assert call.keys == (tag, *held_digests(image))
    else:
        created = [digest for topic, digest in events if topic == "/content/create"]
        assert set(created) == set(held_digests(image))
        # each blob advertised on its own /content/create, in containerd's order, before the image's tag
        assert advertised[: len(created)] == created
        assert advertised[len(created)] == tag
        assert [call.keys for call in complete[: len(created)]] == [(d,) for d in created]
        for call in router.calls:
            if call.state is IN_PROGRESS:  # a blob is in progress only before it is complete
                [key] = call.keys
                assert router.calls.index(call) < router.calls.index(router.first("advertise", key, COMPLETE))


@pytest.mark.parametrize("chunk_size", [0, 1 << 20], ids=["one-stream", "parallel-chunks"])
async def test_inflight_layer_is_advertised_at_once_and_readable_mid_download(
    chunk_size: int, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    size = 6 << 20
    image, _ = await pushed(upstream_registry, ImageSpec((size,), compression="none", seed=602), "w/slow", "v1")
    layer = image.platforms[0].layers[0]
    containerd = containerd_factory(chunk_size=chunk_size, max_concurrent_downloads=4)
    router = RecordingRouter()
    store = ContainerdStore(ContainerdClient(str(containerd.socket)), containerd.content_root)
    proxy = ThrottledProxy(upstream_registry.address, rate=3e6)  # about 2 s for the layer
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.serve)
                (containerd.hosts_dir / proxy.address).mkdir()
                (containerd.hosts_dir / proxy.address / "hosts.toml").write_text(f'server = "http://{proxy.address}"\n')
                await nursery.start(Watcher(store, Tracker(router), Mode.INFLIGHT).run)
                first_bytes: list[float] = []
                await nursery.start(record_first_bytes, containerd.content_root, layer.digest, first_bytes)
                nursery.start_soon(store.client.pull_image, f"{proxy.address}/w/slow:v1")

                key = str(layer.digest)
                await router.wait_for(lambda state: key in state)
                ingest = find_ingest(containerd.content_root, layer.digest, "k8s.io")
                assert ingest is not None and router.state[key] is IN_PROGRESS
                seen = router.first("advertise", key, IN_PROGRESS).at
                with trio.fail_after(5):
                    while not first_bytes:
                        await trio.sleep(0.002)
                delay = seen - first_bytes[0]
                assert delay < 0.25, f"in progress seen {delay:.3f} s after the download's first bytes"

                reader = IngestReader.open_data(ingest)
                assert reader is not None and not reader.ranged and reader.size == layer.size
                assert ingest.size() < layer.size, "the reader must start before the download ends"
                digest = hashlib.sha256()
                async for chunk in reader.chunks(0, layer.size - 1):
                    digest.update(chunk)
                await reader.aclose()
                assert digest.hexdigest() == layer.digest.hex

                await router.wait_for(lambda state: state.get(key) is COMPLETE)
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert router.state[key] is COMPLETE
    assert not any(call.kind == "withdraw" for call in router.calls)
    layer_gets = [e for e in upstream_registry.access_log() if e.method == "GET" and e.path.endswith(key)]
    if chunk_size:  # containerd really fetched the layer in parallel ranges
        assert sum(e.status == 206 for e in layer_gets) > 1
    else:
        assert len(layer_gets) == 1


async def test_removed_image_is_withdrawn_after_gc(
    upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    kept, kept_name = await pushed(upstream_registry, ImageSpec((100_000,), seed=603), "w/kept", "v1")
    gone, gone_name = await pushed(upstream_registry, ImageSpec((150_000, 50_000), seed=604), "w/gone", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    router = RecordingRouter()
    store = ContainerdStore(ContainerdClient(str(containerd.socket)), containerd.content_root)
    gone_keys = {f"{Reference.parse(gone_name).tag_key()}@{gone.top.digest}", *held_digests(gone)}
    kept_keys = {f"{Reference.parse(kept_name).tag_key()}@{kept.top.digest}", *held_digests(kept)}
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await store.client.pull_image(kept_name)
                await store.client.pull_image(gone_name)
                await nursery.start(Watcher(store, Tracker(router), Mode.LAYER, gc_delay=1.0).run)
                assert set(router.state) == kept_keys | gone_keys  # the first re-list found both

                await store.client.remove_image(gone_name)
                await router.wait_for(lambda state: not gone_keys & set(state))
                layer_path = containerd.content_root / "blobs" / "sha256" / gone.platforms[0].layers[0].digest.hex
                assert not layer_path.exists(), "withdrawn because garbage collection removed it"
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert set(router.state) == kept_keys


async def test_a_claim_survives_the_relist_after_an_image_delete(
    upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    """A blob claimed on a miss has no ingest yet (containerd has not begun its download): the re-list that
    every `/images/delete` runs must keep it in progress, not withdraw it, until its grace ends."""
    gone, gone_name = await pushed(upstream_registry, ImageSpec((90_000,), seed=607), "w/deleted", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    router = RecordingRouter()
    store = ContainerdStore(ContainerdClient(str(containerd.socket)), containerd.content_root)
    tracker = Tracker(router, claim_grace=60.0)  # the claim must outlive both re-lists below on its own
    watcher = Watcher(store, tracker, Mode.INFLIGHT, gc_delay=0.5)
    claimed = Digest.of(b"a blob this node is about to download")
    gone_keys = {Reference.parse(gone_name).tag_key(), *held_digests(gone)}
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await store.client.pull_image(gone_name)
                await nursery.start(watcher.run)
                assert await tracker.claim(claimed, time.time()) is not None
                await store.client.remove_image(gone_name)
                await router.wait_for(lambda state: not gone_keys & set(state))  # both re-lists have run
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert router.state.get(str(claimed)) is IN_PROGRESS
    assert not any(str(claimed) in call.keys for call in router.calls if call.kind == "withdraw")


async def test_containerd_restart_is_survived(
    tmp_path: Path, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    first, first_name = await pushed(upstream_registry, ImageSpec((100_000,), seed=605), "w/first", "v1")
    second, second_name = await pushed(upstream_registry, ImageSpec((120_000,), seed=606), "w/second", "v1")
    containerd = containerd_factory()
    plain_http_upstream(containerd, upstream_registry)
    link = tmp_path / "containerd.sock"  # a stable path: each start of this containerd gets a new state dir
    os.symlink(containerd.socket, link)
    router = RecordingRouter()
    store = ContainerdStore(ContainerdClient(str(link)), containerd.content_root)
    watcher = Watcher(store, Tracker(router), Mode.INFLIGHT)
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(watcher.run)
                await store.client.pull_image(first_name)
                await router.wait_for(
                    lambda state: f"{Reference.parse(first_name).tag_key()}@{first.top.digest}" in state
                )

                await trio.to_thread.run_sync(containerd.stop)
                containerd.process = None  # stopped for good: the next start() launches a new process
                await trio.sleep(0.5)  # the watcher notices and retries against a missing socket
                await trio.to_thread.run_sync(containerd.start)
                await trio.to_thread.run_sync(containerd.wait_ready)
                os.unlink(link)
                os.symlink(containerd.socket, link)

                await store.client.pull_image(second_name)
                await router.wait_for(
                    lambda state: f"{Reference.parse(second_name).tag_key()}@{second.top.digest}" in state
                )
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert watcher.sessions >= 2
    assert set(held_digests(first)) | set(held_digests(second)) <= set(router.state)
    assert not any(call.kind == "withdraw" for call in router.calls)

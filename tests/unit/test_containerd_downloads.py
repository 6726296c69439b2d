"""IngestSource over the inotify-fed Downloads index: a peer's request for a blob still downloading waits for
the download's first bytes (woken by the watcher, not by polling), gets the committed blob once it is, and is
refused at once when no download appears. A real IngestWatcher (inotify) watches a content root that a writer
fills like containerd does."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from spegel.oci.digest import Digest
from spegel.store.base import NotFound
from spegel.store.containerd.downloads import Downloads, IngestSource
from spegel.store.containerd.ingest import IngestReader
from spegel.store.containerd.ingestwatch import IngestEvent, IngestWatcher
from spegel.store.files import FileBlobReader
from tests.support.ingests import Writer


@asynccontextmanager
async def watched(root: Path) -> AsyncIterator[tuple[Downloads, list[IngestEvent]]]:
    """`Downloads` of `root`'s ingests fed by a running IngestWatcher, and the events it got."""
    downloads, events = Downloads(), []

    async def feed(event: IngestEvent) -> None:
        events.append(event)
        downloads.update(event)

    (root / "ingest").mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(IngestWatcher(root, "k8s.io", feed).run)
        yield downloads, events
        nursery.cancel_scope.cancel()


async def read_all(reader: object) -> bytes:
    assert isinstance(reader, FileBlobReader)
    try:
        return b"".join([chunk async for chunk in reader.chunks(0, reader.size - 1)])
    finally:
        await reader.aclose()


async def test_a_request_waits_for_the_first_bytes_then_follows_the_download(tmp_path: Path) -> None:
    blob = os.urandom(3 << 20)
    async with watched(tmp_path) as (downloads, _):
        writer = Writer(tmp_path, blob)  # the ingest is created, without bytes
        source = IngestSource(tmp_path, downloads, appear_wait=0.5)
        async with trio.open_nursery() as nursery:

            async def write_later() -> None:
                await trio.sleep(1.0)  # past appear_wait: a created download is waited for up to `wait`
                await writer.write(len(blob), delay=0.01)
                writer.commit()

            nursery.start_soon(write_later)
            with trio.fail_after(10):
                reader = await source.open_in_progress(writer.digest, wait=5)
            assert isinstance(reader, IngestReader) and not reader.ranged
            assert await read_all(reader) == blob
        reader = await source.open_in_progress(writer.digest, wait=5)  # committed now: the blob itself
        assert type(reader) is FileBlobReader and await read_all(reader) == blob


async def test_no_download_is_refused_after_the_appear_wait(tmp_path: Path) -> None:
    async with watched(tmp_path) as (downloads, _):
        source = IngestSource(tmp_path, downloads, appear_wait=0.2)
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(NotFound):
            await source.open_in_progress(Digest.of(b"nobody downloads this"), wait=30)
        assert trio.current_time() - started < 5  # the appear wait, not the 30 s wait


async def test_a_created_download_without_bytes_is_refused_at_the_deadline(tmp_path: Path) -> None:
    async with watched(tmp_path) as (downloads, events):
        writer = Writer(tmp_path, b"x" * 100)
        with trio.fail_after(5):
            while not downloads.known(writer.digest):
                await downloads.changed().wait()
        source = IngestSource(tmp_path, downloads, appear_wait=0.1)
        with trio.fail_after(5), pytest.raises(NotFound):
            await source.open_in_progress(writer.digest, wait=0.5)
        assert [type(e).__name__ for e in events] == ["IngestCreated"]

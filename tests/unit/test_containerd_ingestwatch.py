"""inotify record parsing, and the ingest watcher on a real directory tree written like containerd writes it."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import trio

from spegel.oci.digest import Digest
from spegel.store import inotify
from spegel.store.containerd.ingestwatch import IngestEnded, IngestEvent, IngestStarted, IngestWatcher


def test_parse_events_reads_packed_records() -> None:
    def record(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    buffer = record(1, inotify.CREATE | inotify.ISDIR, b"abc") + record(2, inotify.IGNORED, b"") + b"\x01\x02"
    events = inotify.parse_events(buffer)
    assert [(e.wd, e.name, e.is_dir) for e in events] == [(1, "abc", True), (2, "", False)]


class Containerd:
    """Writes ingests the way containerd's local content store does (mkdir, ref, startedat, total, empty data,
    then the data as it arrives)."""

    def __init__(self, content_root: Path) -> None:
        self.content_root = content_root

    def start(self, name: str, ref: str, data: bytes = b"") -> Path:
        directory = self.content_root / "ingest" / name
        directory.mkdir(parents=True)
        (directory / "ref").write_text(ref)
        (directory / "startedat").write_text("2026-01-01T00:00:00Z")
        (directory / "total").write_text("1000")
        (directory / "data").touch()
        if data:
            self.write(directory, data)
        return directory

    def write(self, directory: Path, data: bytes) -> None:
        with open(directory / "data", "ab") as f:
            f.write(data)

    def commit(self, directory: Path, digest: Digest) -> None:
        target = self.content_root / "blobs" / "sha256" / digest.hex
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(directory / "data", target)
        self.remove(directory)

    def remove(self, directory: Path) -> None:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        directory.rmdir()


async def test_watcher_reports_downloads_from_their_first_bytes_to_their_end(tmp_path: Path) -> None:
    """From before the content root exists; an ingest is started once its data has bytes."""
    content_root = tmp_path / "io.containerd.content.v1.content"
    events: list[IngestEvent] = []
    changed = trio.Event()

    async def on_event(event: IngestEvent) -> None:
        nonlocal changed
        events.append(event)
        changed.set()
        changed = trio.Event()

    async def until(count: int) -> None:
        while len(events) < count:
            await changed.wait()

    kept, dropped, other, never = Digest.of(b"kept"), Digest.of(b"dropped"), Digest.of(b"other"), Digest.of(b"0")
    writer = Containerd(content_root)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            watcher = IngestWatcher(content_root, "k8s.io", on_event)
            await nursery.start(watcher.run)  # neither the content root nor ingest/ exist yet
            first = writer.start("one", f"k8s.io/1/layer-{kept}", b"kept")
            writer.start("two", f"other-ns/1/layer-{other}", b"other")  # another namespace: not reported
            second = writer.start("three", f"k8s.io/2/config-{dropped}")
            empty = writer.start("four", f"k8s.io/3/layer-{never}")  # no byte ever: created, never started
            await until(3)
            writer.write(second, b"d")
            await until(4)
            writer.commit(first, kept)
            writer.remove(second)
            writer.remove(empty)
            await until(7)
            assert watcher.known == []
            nursery.cancel_scope.cancel()

    def kinds(digest: Digest) -> list[str]:
        return [type(e).__name__ for e in events if e.ingest.digest == digest]

    assert kinds(kept) == ["IngestStarted", "IngestEnded"]
    assert kinds(dropped) == ["IngestCreated", "IngestStarted", "IngestEnded"]  # no data: not a download yet
    assert kinds(never) == ["IngestCreated", "IngestEnded"]
    assert kinds(other) == []
    ended = {e.ingest.digest: (e.committed, e.started) for e in events if isinstance(e, IngestEnded)}
    assert ended == {kept: (True, True), dropped: (False, True), never: (False, False)}


async def test_watcher_reports_ingests_present_at_start(tmp_path: Path) -> None:
    digest = Digest.of(b"x")
    Containerd(tmp_path).start("a", f"k8s.io/1/layer-{digest}", b"x")
    events: list[IngestEvent] = []

    async def on_event(event: IngestEvent) -> None:
        events.append(event)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(IngestWatcher(tmp_path, "k8s.io", on_event).run)
            nursery.cancel_scope.cancel()
    assert [(type(e), e.ingest.digest) for e in events] == [(IngestStarted, digest)]

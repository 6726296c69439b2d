"""Ingest discovery and the reader over a growing ingest file, against a writer that behaves like containerd's
local content writer (sequential 1 MiB writes, then rename of `data` into `blobs/` and removal of the directory).
The same reader is checked against real containerd in tests/integration/test_containerd_watcher.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from spegel.oci.digest import Digest
from spegel.store.base import NotFound
from spegel.store.containerd.ingest import (
    IngestReader,
    blob_path,
    find_ingest,
    list_ingests,
    parse_ref,
    read_ingest,
    ref_digest,
)
from tests.support.ingests import Writer, make_ingest

HEX = "ab" * 32


def test_parse_ref_takes_namespace_and_digest() -> None:
    assert parse_ref(f"k8s.io/1/layer-sha256:{HEX}") == ("k8s.io", Digest("sha256", HEX))
    assert parse_ref(f"default/config-sha256:{HEX}") == ("default", Digest("sha256", HEX))
    assert parse_ref(f"ns/7/sha256:{HEX}") == ("ns", Digest("sha256", HEX))
    assert parse_ref(f"layer-sha256:{HEX}") is None  # no namespace: not a ref file's content
    assert ref_digest(f"layer-sha256:{HEX}") == Digest("sha256", HEX)  # as Content.ListStatuses reports it


@pytest.mark.parametrize(
    "ref",
    ["", "k8s.io", f"sha256:{HEX}", "k8s.io/1/layer-sha256:abc", "k8s.io/upload-1234", f"k8s.io/x-md5:{HEX}"],
)
def test_parse_ref_rejects_refs_without_a_valid_digest(ref: str) -> None:
    assert parse_ref(ref) is None


def test_listing_and_finding_ingests(tmp_path: Path) -> None:
    digest = Digest("sha256", HEX)
    make_ingest(tmp_path, "a", f"k8s.io/1/layer-{digest}", 100, b"x" * 10)
    make_ingest(tmp_path, "b", f"other/1/layer-{digest}", 100, b"x" * 50)
    make_ingest(tmp_path, "c", "k8s.io/upload", 5)
    (tmp_path / "ingest" / "d").mkdir()  # ref not written yet
    assert {i.path.name for i in list_ingests(tmp_path)} == {"a", "b"}
    [ours] = list_ingests(tmp_path, "k8s.io")
    assert (ours.namespace, ours.digest, ours.total, ours.size()) == ("k8s.io", digest, 100, 10)
    assert find_ingest(tmp_path, digest, "k8s.io") == ours
    assert find_ingest(tmp_path, digest).path.name == "b"  # the largest
    assert find_ingest(tmp_path, Digest("sha256", "cd" * 32)) is None
    assert list_ingests(tmp_path / "missing") == []
    assert read_ingest(tmp_path / "ingest" / "gone") is None


async def _read_all(reader, start: int = 0, end: int | None = None) -> bytes:
    end = reader.size - 1 if end is None else end
    return b"".join([chunk async for chunk in reader.chunks(start, end)])


async def test_reader_started_mid_download_returns_whole_blob_across_commit(tmp_path: Path) -> None:
    blob = os.urandom(5 * (1 << 20) + 123)
    writer = Writer(tmp_path, blob)
    await writer.write(1 << 20)
    reader = IngestReader.open_data(writer.ingest, stall_timeout=5)
    assert isinstance(reader, IngestReader) and not reader.ranged and reader.size == len(blob)

    async def write_then_commit() -> None:
        await writer.write(len(blob), delay=0.02)
        writer.commit()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_then_commit)
        data = b""
        async for chunk in reader.chunks(0, len(blob) - 1):
            data += chunk
            on_disk = os.fstat(reader.fileno()).st_size
            assert len(data) <= on_disk, "never yields bytes the writer has not written"
    await reader.aclose()
    assert hashlib.sha256(data).hexdigest() == writer.digest.hex
    assert not writer.directory.exists() and blob_path(tmp_path, writer.digest).exists()


async def test_reader_serves_a_range_of_a_growing_ingest(tmp_path: Path) -> None:
    blob = os.urandom(3 << 20)
    writer = Writer(tmp_path, blob)
    await writer.write(10)
    reader = IngestReader.open_data(writer.ingest, stall_timeout=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, len(blob), 0.01)
        assert await _read_all(reader, 1000, 2_500_000) == blob[1000:2_500_001]
    await reader.aclose()


async def test_reader_gives_up_on_a_stalled_ingest(tmp_path: Path) -> None:
    writer = Writer(tmp_path, os.urandom(4096))
    await writer.write(1000)
    reader = IngestReader.open_data(writer.ingest, stall_timeout=0.2)
    got = b""
    with trio.fail_after(5), pytest.raises(OSError, match="stalled at 1000"):
        async for chunk in reader.chunks(0, 4095):
            got += chunk
    assert got == writer.blob[:1000]
    await reader.aclose()


async def test_reader_gives_up_when_the_ingest_is_deleted(tmp_path: Path) -> None:
    writer = Writer(tmp_path, os.urandom(4096))
    await writer.write(100)
    reader = IngestReader.open_data(writer.ingest, stall_timeout=30)
    for name in os.listdir(writer.directory):
        os.unlink(writer.directory / name)
    with trio.fail_after(5), pytest.raises(OSError, match="removed at 100"):
        await _read_all(reader)
    await reader.aclose()


def test_open_data_is_none_without_data_and_refuses_an_unknown_size(tmp_path: Path) -> None:
    writer = Writer(tmp_path, b"abc")
    assert IngestReader.open_data(writer.ingest) is None  # no data yet (or the download ended): never waits
    no_total = read_ingest(make_ingest(tmp_path, "t", f"k8s.io/1/layer-{writer.digest}", None, b"data"))
    with pytest.raises(NotFound, match="no total"):
        IngestReader.open_data(no_total)


async def test_open_data_reads_a_total_written_after_the_ref(tmp_path: Path) -> None:
    directory = make_ingest(tmp_path, "late", f"k8s.io/1/layer-sha256:{HEX}", None)
    ingest = read_ingest(directory)
    assert ingest.total is None
    (directory / "total").write_text("10")
    (directory / "data").write_bytes(b"0123")
    reader = IngestReader.open_data(ingest)
    assert reader is not None and reader.size == 10
    await reader.aclose()

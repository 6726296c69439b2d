"""containerd's in-progress downloads (ingests) on disk, and a reader that follows one as it grows.

An ingest is `<content root>/ingest/<sha256 of its key>/` holding `ref` (`<namespace>/<n>/<kind>-<digest>`,
written first), `total` (the expected size), `startedat`, `updatedat` and `data`, which containerd writes
strictly sequentially: at every moment `data[0, size)` is a correct prefix of the blob. At commit containerd
renames `data` to `blobs/<algorithm>/<hex>` (the same inode) and removes the directory. The directory name
cannot be derived from the digest: `ref` must be read.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from spegel.oci.digest import Digest, InvalidDigest
from spegel.store.base import NotFound
from spegel.store.files import READ_SIZE, FileBlobReader, read_at

# Seconds without growth after which a reader gives up on an ingest; as the mirror's --mirror-inflight-wait. containerd
# writes a chunk only once it is complete, and in a 12-node storm (16 Mbit/s upstream shared by 4 downloads of 3
# chunks each) a 1 MiB chunk took 6 s on average and over 10 s at times: with 10 s, followers gave up on live
# downloads and went upstream themselves, which slowed every chunk further (reports/scale/README.md).
DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 0.01  # seconds between size checks while waiting for the writer

_REF_DIGEST = re.compile(r"(?:^|[/-])(?P<digest>[a-z0-9]+:[a-f0-9]+)$")


def ref_digest(ref: str) -> Digest | None:
    """The blob digest at the end of an ingest ref (`.../layer-sha256:ab..`, also the namespace-less form
    Content.ListStatuses reports), or None when the ref names no valid digest."""
    match = _REF_DIGEST.search(ref)
    if match is None:
        return None
    try:
        return Digest.parse(match["digest"])
    except InvalidDigest:
        return None


def parse_ref(ref: str) -> tuple[str, Digest] | None:
    """The namespace and blob digest an ingest's `ref` file names, or None when it names no blob digest.

    `k8s.io/1/layer-sha256:ab..` -> ("k8s.io", sha256:ab..). Refs of other writers (no digest) give None.
    """
    namespace, slash, _ = ref.partition("/")
    digest = ref_digest(ref)
    if not slash or not namespace or digest is None:
        return None
    return namespace, digest


@dataclass(frozen=True)
class Ingest:
    """One ingest directory and what its `ref` and `total` files say."""

    path: Path
    ref: str
    namespace: str
    digest: Digest
    total: int | None  # None when `total` is not written (yet) or unreadable

    @property
    def data_path(self) -> Path:
        return self.path / "data"

    def size(self) -> int:
        """Bytes written so far (0 before `data` exists or after the ingest is gone)."""
        try:
            return self.data_path.stat().st_size
        except FileNotFoundError:
            return 0


def ingest_root(content_root: Path) -> Path:
    return content_root / "ingest"


def blob_path(content_root: Path, digest: Digest) -> Path:
    """Where a committed blob lies in the content root (built only from a validated digest)."""
    return content_root / "blobs" / digest.algorithm / digest.hex


def read_ingest(directory: Path) -> Ingest | None:
    """The ingest in `directory`, or None when it is gone, its `ref` is not written yet, or names no digest."""
    try:
        ref = (directory / "ref").read_text()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    parsed = parse_ref(ref)
    if parsed is None:
        return None
    return Ingest(directory, ref, parsed[0], parsed[1], _read_total(directory))


def _read_total(directory: Path) -> int | None:
    try:
        return int((directory / "total").read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def list_ingests(content_root: Path, namespace: str | None = None) -> list[Ingest]:
    """Every readable ingest of the content root (of `namespace` only, when given)."""
    try:
        entries = list(os.scandir(ingest_root(content_root)))
    except FileNotFoundError:
        return []
    ingests = [read_ingest(Path(entry.path)) for entry in entries if entry.is_dir()]
    return [i for i in ingests if i is not None and (namespace is None or i.namespace == namespace)]


def find_ingest(content_root: Path, digest: Digest, namespace: str | None = None) -> Ingest | None:
    """The ingest writing `digest` (the largest if several), or None."""
    matches = [i for i in list_ingests(content_root, namespace) if i.digest == digest]
    return max(matches, key=Ingest.size, default=None)


class IngestReader(FileBlobReader):
    """A `BlobReader` over the growing `data` file of an ingest, answered as one unranged stream.

    `chunks(start, end)` yields bytes as soon as they are on disk and waits (polling every `poll_interval`)
    for the rest: it never yields a byte the writer has not written, it keeps reading the same inode across
    the commit rename, and it raises `OSError` when the file stops growing for `stall_timeout` seconds or is
    deleted (the download was abandoned) before `end`. Cancelling the iteration stops it at once.
    """

    ranged = False

    def __init__(
        self,
        fd: int,
        size: int,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        super().__init__(fd, size)
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval

    @classmethod
    def open_data(
        cls, ingest: Ingest, stall_timeout: float = DEFAULT_STALL_TIMEOUT, poll_interval: float = DEFAULT_POLL_INTERVAL
    ) -> IngestReader | None:
        """A reader of the ingest's data as it is now, or None when the data is gone (the download ended: its
        blob is committed or abandoned) or not created yet. Raises `NotFound` when the expected size (`total`,
        written before the data) is unreadable. Never waits."""
        try:
            fd = os.open(ingest.data_path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        total = ingest.total if ingest.total is not None else _read_total(ingest.path)
        if total is None:
            os.close(fd)
            raise NotFound(f"ingest of {ingest.digest} has no total size")
        return cls(fd, total, stall_timeout, poll_interval)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        last_size, last_growth = -1, trio.current_time()
        while offset <= end:
            stat = os.fstat(self._fd)
            if stat.st_size > offset:
                want = min(READ_SIZE, end - offset + 1, stat.st_size - offset)
                data = await read_at(self._fd, want, offset)
                if data:
                    offset += len(data)
                    yield data
                    continue
            if stat.st_nlink == 0:
                raise OSError(f"ingest removed at {stat.st_size} of {self.size} bytes")
            now = trio.current_time()
            if stat.st_size != last_size:
                last_size, last_growth = stat.st_size, now
            elif now - last_growth > self.stall_timeout:
                raise OSError(f"ingest stalled at {stat.st_size} of {self.size} bytes for {self.stall_timeout} s")
            await trio.sleep(self.poll_interval)

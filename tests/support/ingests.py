"""A writer that behaves like containerd's local content writer: an ingest directory (`ref`, `total`, `data`),
sequential 1 MiB appends, then commit (rename of `data` into `blobs/`, removal of the directory)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from spegel.oci.digest import Digest
from spegel.store.containerd.ingest import blob_path, read_ingest


def make_ingest(root: Path, name: str, ref: str, total: int | None, data: bytes | None = None) -> Path:
    directory = root / "ingest" / name
    directory.mkdir(parents=True)
    (directory / "ref").write_text(ref)
    if total is not None:
        (directory / "total").write_text(str(total))
    if data is not None:
        (directory / "data").write_bytes(data)
    return directory


class Writer:
    """Writes a blob into an ingest like containerd: 1 MiB appends, then commit (fsync, rename, rmdir)."""

    def __init__(self, root: Path, blob: bytes, piece: int = 1 << 20) -> None:
        self.root, self.blob, self.piece = root, blob, piece
        self.digest = Digest.of(blob)
        self.directory = make_ingest(root, "w", f"k8s.io/1/layer-{self.digest}", len(blob))
        self.ingest = read_ingest(self.directory)

    async def write(self, upto: int, delay: float = 0.0) -> None:
        with open(self.directory / "data", "ab") as f:
            while f.tell() < upto:
                f.write(self.blob[f.tell() : min(upto, f.tell() + self.piece)])
                f.flush()
                await trio.sleep(delay)

    def commit(self) -> None:
        target = blob_path(self.root, self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.directory / "data", target)
        for name in os.listdir(self.directory):
            os.unlink(self.directory / name)
        self.directory.rmdir()

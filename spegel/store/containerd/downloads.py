"""containerd's downloads in progress, as `IngestWatcher` (inotify) reports them, and serving them to peers.

`Downloads` is the one index of the namespace's ingests: created (no bytes yet), started (first bytes on disk),
ended. The watcher feeds it every `IngestEvent`; readers wait on it instead of polling containerd or the ingest
directory. `IngestSource` is the mirror's `InProgressSource` over it.
"""

from __future__ import annotations

from pathlib import Path

import trio

from spegel.oci.digest import Digest
from spegel.store.base import BlobReader, NotFound
from spegel.store.containerd.ingest import Ingest, IngestReader, blob_path
from spegel.store.containerd.ingestwatch import IngestCreated, IngestEnded, IngestEvent, IngestStarted
from spegel.store.files import FileBlobReader

DEFAULT_APPEAR_WAIT = 1.0  # seconds a download announced on a miss has to appear as an ingest


class Downloads:
    """The ingests of one namespace by digest: created and started ones. `changed()` is awaitable."""

    def __init__(self) -> None:
        self._created: dict[Digest, Ingest] = {}
        self._started: dict[Digest, Ingest] = {}
        self._changed = trio.Event()

    def update(self, event: IngestEvent) -> None:
        digest = event.ingest.digest
        if isinstance(event, IngestCreated):
            self._created[digest] = event.ingest
        elif isinstance(event, IngestStarted):
            self._created.pop(digest, None)
            self._started[digest] = event.ingest
        elif isinstance(event, IngestEnded):
            self._created.pop(digest, None)
            self._started.pop(digest, None)
        self._wake()

    def clear(self) -> None:
        """Forget every ingest (the watcher starts over and reports those present again)."""
        self._created.clear()
        self._started.clear()
        self._wake()

    def started(self, digest: Digest) -> Ingest | None:
        """The ingest of `digest` with bytes on disk, if any."""
        return self._started.get(digest)

    def known(self, digest: Digest) -> bool:
        """Whether an ingest of `digest` exists (with bytes or not)."""
        return digest in self._created or digest in self._started

    def changed(self) -> trio.Event:
        """An event set at the next change (take it before looking, so that no change is missed)."""
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class IngestSource:
    """The mirror's `InProgressSource` over containerd's content root and its `Downloads`.

    `open_in_progress(digest, wait)` returns the committed blob when there is one, else a reader following the
    download once its first bytes are on disk. One deadline bounds it, computed once: `max(wait, appear_wait)`
    from the call; and a download not even created (as an ingest) within `appear_wait` seconds is given up on
    at once. It wakes on the watcher's events only (no polling). NotFound when the deadline passes.
    """

    def __init__(self, content_root: Path, downloads: Downloads, appear_wait: float = DEFAULT_APPEAR_WAIT) -> None:
        self.content_root = content_root
        self.downloads = downloads
        self.appear_wait = appear_wait

    async def open_in_progress(self, digest: Digest, wait: float) -> BlobReader:
        start = trio.current_time()
        appear_by, deadline = start + self.appear_wait, start + max(wait, self.appear_wait)
        with trio.move_on_at(deadline):
            while True:
                changed = self.downloads.changed()
                try:
                    return await FileBlobReader.open(blob_path(self.content_root, digest))
                except (FileNotFoundError, NotADirectoryError):
                    pass
                ingest = self.downloads.started(digest)
                if ingest is not None and (reader := IngestReader.open_data(ingest)) is not None:
                    return reader
                known = self.downloads.known(digest)
                if not known and trio.current_time() >= appear_by:
                    break  # no download of it here: do not keep the peer waiting
                with trio.move_on_at(deadline if known else appear_by):
                    await changed.wait()
        raise NotFound(f"no bytes of {digest} here within {max(wait, self.appear_wait)} s")

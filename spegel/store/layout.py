"""An OCI image layout directory as a content store (`--store oci-layout:DIR`), and its feed to the tracker.

Tags come from `index.json`: each top-level descriptor whose `org.opencontainers.image.ref.name` annotation
is a full reference `registry/repository:tag` is that tag. Blobs are `DIR/blobs/<algorithm>/<hex>`; the path is
built only from a validated `Digest`, so no request can name a file outside the layout.

With a router, `LayoutFeed` advertises every tag and every blob of the layout at start and again each time
`index.json` is rewritten (inotify), so that a cluster can be seeded from a layout (air-gapped clusters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import trio

from spegel.oci.digest import Digest, InvalidDigest
from spegel.oci.manifest import REF_NAME_ANNOTATION, Descriptor, Index, InvalidManifest, parse
from spegel.oci.reference import InvalidReference, Reference
from spegel.routing.keys import with_digest
from spegel.store import inotify
from spegel.store.base import ContentInfo, NotFound, StoredImage
from spegel.store.files import FileBlobReader
from spegel.tracker import Listing, Tracker

log = logging.getLogger("spegel.layout")


class InvalidLayout(ValueError):
    """The directory is not an OCI image layout."""


class OCILayoutStore:
    """A `ContentStore` over an OCI image layout directory. `index.json` is re-read when it changes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not (self.root / "oci-layout").is_file() or not (self.root / "index.json").is_file():
            raise InvalidLayout(f"{self.root} is not an OCI image layout (needs oci-layout and index.json)")
        self._index_stamp: tuple[int, int] | None = None
        self._images: list[StoredImage] = []
        self._load_images()  # a broken index.json is a configuration error, reported at once

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    async def images(self) -> list[StoredImage]:
        return await trio.to_thread.run_sync(self._load_images)

    async def resolve(self, reference: Reference) -> Descriptor:
        for image in await self.images():
            if image.reference == reference:
                return image.target
        raise NotFound(str(reference))

    async def describe(self, digest: Digest) -> ContentInfo:
        try:
            stat = await trio.to_thread.run_sync(os.stat, self.blob_path(digest))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(str(digest)) from None
        return ContentInfo(digest, stat.st_size)

    async def open(self, digest: Digest) -> FileBlobReader:
        try:
            return await FileBlobReader.open(self.blob_path(digest))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(str(digest)) from None

    def blob_digests(self) -> list[Digest]:
        """The digest of every blob file of the layout (files whose name is no valid digest are skipped)."""
        digests = []
        for algorithm in sorted(p for p in (self.root / "blobs").glob("*") if p.is_dir()):
            for path in sorted(algorithm.iterdir()):
                try:
                    digests.append(Digest.parse(f"{algorithm.name}:{path.name}"))
                except InvalidDigest:
                    continue
        return digests

    def _load_images(self) -> list[StoredImage]:
        index_path = self.root / "index.json"
        stat = index_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._index_stamp:
            self._images = list(_tagged_images(index_path.read_bytes()))
            self._index_stamp = stamp
        return self._images


class LayoutFeed:
    """Tells a `Tracker` what an `OCILayoutStore` holds: a full listing at start (then `started`) and after each
    rewrite of `index.json`, until cancelled. A listing that fails (index.json invalid meanwhile, files
    unreadable) is logged and the advertisements are kept as they were."""

    def __init__(self, store: OCILayoutStore, tracker: Tracker) -> None:
        self.store = store
        self.tracker = tracker

    async def listing(self) -> Listing:
        tags = [with_digest(i.reference.tag_key(), str(i.target.digest)) for i in await self.store.images()]
        digests = await trio.to_thread.run_sync(self.store.blob_digests)
        return Listing(tags + [str(d) for d in digests])

    async def downloads(self) -> set[str]:
        return set()  # a layout has no downloads

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise the layout, then follow its index until cancelled. When the layout cannot be watched (no
        inotify instance or watch left), that is logged and the layout is advertised as it was at start."""
        with contextlib.ExitStack() as stack:
            try:
                watcher = stack.enter_context(inotify.Inotify())
                watcher.add_watch(self.store.root, inotify.CLOSE_WRITE | inotify.MOVED_TO | inotify.ONLYDIR)
            except OSError as exc:
                log.warning("cannot watch the layout: changes will not be advertised", extra={"error": str(exc)})
                await self._relist()
                task_status.started()
                await trio.sleep_forever()
            await self._relist()
            task_status.started()
            while True:
                events = await watcher.read()
                if any(e.name == "index.json" or e.mask & inotify.OVERFLOW for e in events):
                    await self._relist()

    async def _relist(self) -> None:
        try:
            await self.tracker.relist(self)
        except (InvalidLayout, OSError) as exc:
            log.warning("cannot list the layout: advertisements kept", extra={"error": str(exc)})


def _tagged_images(index_json: bytes) -> list[StoredImage]:
    try:
        index = parse(index_json, "application/vnd.oci.image.index.v1+json")
    except (InvalidManifest, ValueError) as exc:
        raise InvalidLayout(f"invalid index.json: {exc}") from None
    assert isinstance(index, Index)
    images = []
    for descriptor in index.manifests:
        name = descriptor.annotations.get(REF_NAME_ANNOTATION)
        if not name:
            continue
        try:
            reference = Reference.parse(name)
        except InvalidReference:
            continue  # a bare tag ("latest") names no registry: not servable as a mirror tag
        if reference.tag is not None and reference.digest is None:
            images.append(StoredImage(reference, descriptor))
    return images


def write_layout(root: str | os.PathLike[str], blobs: dict[Digest, bytes], index: list[Descriptor]) -> None:
    """Write an OCI image layout holding `blobs`, with `index` as the top-level descriptors."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        path = root / "blobs" / digest.algorithm / digest.hex
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [d.to_json() for d in index]}))

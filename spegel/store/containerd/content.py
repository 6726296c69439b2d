"""What one containerd namespace holds, as advertisement keys: the `ContentSource` of the tracker.

An image is advertised under its tag (when its name is `registry/repository:tag`) and every digest it holds:
its target walked through indexes (every platform present) and manifests down to configs and layers. In
layer and inflight modes every committed blob is advertised too (whether or not an image refers to it), and
in inflight mode the downloads (ingests) are listed as well.
"""

from __future__ import annotations

import logging

import trio

from spegel.oci import manifest as oci_manifest
from spegel.oci import mediatypes
from spegel.oci.digest import Digest
from spegel.oci.manifest import Descriptor, InvalidManifest
from spegel.routing.keys import with_digest
from spegel.store.base import NotFound
from spegel.store.containerd.ingest import blob_path, list_ingests
from spegel.store.containerd.proto import images_pb2
from spegel.store.containerd.store import ContainerdStore, image_reference, to_descriptor
from spegel.tracker import Listing

log = logging.getLogger("spegel.containerd")

MAX_DOCUMENT_SIZE = 4 << 20  # larger than any manifest or index CNCF distribution accepts


class ContainerdContent:
    """The keys a containerd namespace holds. `blobs`: list every committed blob (layer and inflight modes);
    `downloads_too`: list the ingests (inflight mode). Calls raise `ContainerdError` when containerd does not
    answer (a partial listing is never returned)."""

    def __init__(self, store: ContainerdStore, blobs: bool, downloads_too: bool) -> None:
        self.store = store
        self.client = store.client
        self.blobs = blobs
        self.downloads_too = downloads_too

    async def listing(self) -> Listing:
        in_progress: list[str] = []
        downloading: list[str] = []
        if self.downloads_too:  # ingests first: one committed meanwhile is then listed as content
            ingests = await trio.to_thread.run_sync(list_ingests, self.store.content_path, self.store.namespace)
            in_progress = [str(i.digest) for i in ingests if i.size() > 0]
            downloading = [str(i.digest) for i in ingests]
        complete = await self.all_image_keys()
        if self.blobs:
            complete += [info.digest for info in await self.client.list_content()]
        return Listing(complete, in_progress, downloading)

    async def downloads(self) -> set[str]:
        ingests = await trio.to_thread.run_sync(list_ingests, self.store.content_path, self.store.namespace)
        return {str(i.digest) for i in ingests}

    async def image_keys_by_name(self, name: str) -> list[str]:
        """The keys of the image called `name`; empty when it is gone."""
        try:
            return await self.image_keys(await self.client.get_image(name))
        except NotFound:
            return []

    async def all_image_keys(self) -> list[str]:
        """The keys of every image of the namespace (tags and digests), each once."""
        keys: dict[str, None] = {}
        for image in await self.client.list_images():
            keys.update(dict.fromkeys(await self.image_keys(image)))
        return list(keys)

    async def image_keys(self, image: images_pb2.Image) -> list[str]:
        """The keys an image is advertised under: its tag with its manifest's digest (`registry/repository:tag@
        sha256:...`, if its name is a tag), then every digest it holds."""
        reference = image_reference(image.name)
        try:
            target = to_descriptor(image.target)
            content = await self.walk(target)
        except (NotFound, InvalidManifest):
            return []  # an image without its content is not served
        keys = [with_digest(reference.tag_key(), str(target.digest))] if reference is not None else []
        return keys + [str(d.digest) for d in content]

    async def walk(self, root: Descriptor) -> list[Descriptor]:
        """`root` and every descriptor below it that this namespace holds, parents before children, once each.

        Indexes are followed into every platform's manifest that is present (containerd usually fetches one);
        absent or unparsable children are skipped, never an error. `NotFound` when `root` itself is absent.
        """
        await self.client.content_info(str(root.digest))
        found: dict[Digest, Descriptor] = {}
        pending = [root]
        while pending:
            descriptor = pending.pop(0)
            if descriptor.digest in found:
                continue
            if descriptor is not root:
                try:
                    await self.client.content_info(str(descriptor.digest))
                except NotFound:
                    continue
            found[descriptor.digest] = descriptor
            if mediatypes.is_index(descriptor.media_type) or mediatypes.is_manifest(descriptor.media_type):
                try:
                    document = oci_manifest.parse(await self.read_blob(descriptor.digest), descriptor.media_type)
                except (NotFound, InvalidManifest, ValueError, OSError) as exc:
                    log.warning("cannot read manifest", extra={"digest": str(descriptor.digest), "error": str(exc)})
                    continue
                pending.extend(oci_manifest.children(document))
        return list(found.values())

    async def read_blob(self, digest: Digest, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        """A whole (small) blob: `NotFound` when absent or larger than `limit`."""
        info = await self.client.content_info(str(digest))
        if info.size > limit:
            raise NotFound(f"{digest} is larger than {limit} bytes")
        try:
            return await trio.to_thread.run_sync(blob_path(self.store.content_path, digest).read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            async with self.client.read_content(str(digest), 0, 0) as pieces:
                return b"".join([piece async for piece in pieces])

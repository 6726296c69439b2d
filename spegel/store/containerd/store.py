"""containerd as a content store (`--store containerd`, the default).

Images and content metadata come from containerd's gRPC API in one namespace. Tags are the image names of the
form `registry/repository:tag`; an image's content is its target walked through indexes (every platform
present) and manifests down to configs and layers. Blobs are read straight from the content root
(`<content path>/blobs/<algorithm>/<hex>`) and, when that directory is not mounted here, through the
Content.Read API. Blobs still downloading are opened from their ingest (`open_ingest`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

from spegel.oci import manifest as oci_manifest
from spegel.oci import mediatypes
from spegel.oci.digest import Digest, InvalidDigest
from spegel.oci.manifest import Descriptor, InvalidManifest
from spegel.oci.reference import InvalidReference, Reference
from spegel.store.base import BlobReader, ContentInfo, NotFound, StoredImage
from spegel.store.containerd.client import ContainerdClient, ContainerdError, ContainerdUnavailable
from spegel.store.containerd.ingest import (
    DEFAULT_STALL_TIMEOUT,
    IngestReader,
    blob_path,
    find_ingest,
)
from spegel.store.containerd.proto import images_pb2, types_pb2
from spegel.store.files import FileBlobReader

log = logging.getLogger("spegel.containerd")

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
DEFAULT_CONTENT_PATH = "/var/lib/containerd/io.containerd.content.v1.content"
MAX_DOCUMENT_SIZE = 4 << 20  # larger than any manifest or index CNCF distribution accepts


def image_reference(name: str) -> Reference | None:
    """The tag reference an image name is, or None for names that are not `registry/repository:tag`."""
    try:
        reference = Reference.parse(name)
    except InvalidReference:
        return None
    return reference if reference.tag is not None and reference.digest is None else None


def to_descriptor(target: types_pb2.Descriptor) -> Descriptor:
    """A `Descriptor` from containerd's protobuf descriptor; raises `InvalidManifest` when it is not valid."""
    try:
        digest = Digest.parse(target.digest)
    except InvalidDigest as exc:
        raise InvalidManifest(f"invalid image target: {exc}") from None
    return Descriptor(target.media_type, digest, target.size, dict(target.annotations))


class ContainerdStore:
    """A `ContentStore` over one containerd namespace. The client is owned by the store: `close()` it.

    The `ContentStore` methods answer `NotFound` when containerd does not answer (logged), so that the mirror
    goes on to its peers instead of failing the request; the other methods let `ContainerdError` through.
    """

    def __init__(
        self,
        client: ContainerdClient,
        content_path: str | Path = DEFAULT_CONTENT_PATH,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.client = client
        self.content_path = Path(content_path)
        self.stall_timeout = stall_timeout

    @classmethod
    def connect(
        cls, socket: str = DEFAULT_SOCKET, namespace: str = DEFAULT_NAMESPACE, content_path: str = DEFAULT_CONTENT_PATH
    ) -> ContainerdStore:
        """The store of containerd at `socket`, in `namespace` (connects lazily, on the first call)."""
        return cls(ContainerdClient(socket, namespace), content_path)

    @property
    def namespace(self) -> str:
        return self.client.namespace

    def close(self) -> None:
        self.client.close()

    # --- ContentStore ---

    async def resolve(self, reference: Reference) -> Descriptor:
        if reference.tag is None or reference.digest is not None:
            raise NotFound(f"{reference} is not a tag")
        with _unavailable_is_missing():
            image = await self.client.get_image(reference.tag_key())
        try:
            return to_descriptor(image.target)
        except InvalidManifest as exc:
            raise NotFound(f"{reference}: {exc}") from None

    async def describe(self, digest: Digest) -> ContentInfo:
        with _unavailable_is_missing():
            info = await self.client.content_info(str(digest))
        return ContentInfo(digest, info.size)

    async def open(self, digest: Digest) -> BlobReader:
        info = await self.describe(digest)
        try:
            return await FileBlobReader.open(blob_path(self.content_path, digest), info.size)
        except (FileNotFoundError, NotADirectoryError):
            return ContentAPIReader(self.client, digest, info.size)  # the content root is not mounted here

    async def images(self) -> list[StoredImage]:
        images = []
        with _unavailable_is_missing():
            listed = await self.client.list_images()
        for image in listed:
            reference = image_reference(image.name)
            if reference is None:
                continue
            try:
                images.append(StoredImage(reference, to_descriptor(image.target)))
            except InvalidManifest:
                log.warning("skipping image with an invalid target", extra={"image": image.name})
        return images

    # --- beyond ContentStore ---

    async def open_ingest(self, digest: Digest) -> BlobReader:
        """A reader of a blob still downloading in this namespace; `NotFound` when there is no such ingest."""
        ingest = await trio.to_thread.run_sync(find_ingest, self.content_path, digest, self.namespace)
        if ingest is None:
            raise NotFound(f"no download of {digest} in progress")
        return await IngestReader.open_ingest(ingest, self.content_path, self.stall_timeout)

    async def read_blob(self, digest: Digest, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        """A whole (small) blob: `NotFound` when absent or larger than `limit`, `ContainerdError` when
        containerd does not answer."""
        info = await self.client.content_info(str(digest))
        if info.size > limit:
            raise NotFound(f"{digest} is larger than {limit} bytes")
        try:
            return await trio.to_thread.run_sync(blob_path(self.content_path, digest).read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            async with self.client.read_content(str(digest), 0, 0) as pieces:
                return b"".join([piece async for piece in pieces])

    async def walk(self, root: Descriptor) -> list[Descriptor]:
        """`root` and every descriptor below it that this namespace holds, parents before children, once each.

        Indexes are followed into every platform's manifest that is present (containerd usually fetches one);
        absent or unparsable children are skipped, never an error. `NotFound` when `root` itself is absent;
        `ContainerdError` when containerd does not answer (a partial walk is never returned).
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

    async def image_keys(self, image: images_pb2.Image) -> list[str]:
        """The keys an image is advertised under: its tag with its manifest's digest (`registry/repository:tag@
        sha256:...`, if its name is a tag), then every digest it holds."""
        reference = image_reference(image.name)
        try:
            target = to_descriptor(image.target)
            content = await self.walk(target)
        except (NotFound, InvalidManifest):
            return []  # an image without its content is not served
        keys = [f"{reference.tag_key()}@{target.digest}"] if reference is not None else []
        return keys + [str(d.digest) for d in content]

    async def image_keys_by_name(self, name: str) -> list[str]:
        """`image_keys` of the image called `name`; empty when it is gone."""
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

    async def all_content_keys(self) -> list[str]:
        """The digest of every committed blob of the namespace (whether or not an image refers to it)."""
        return [info.digest for info in await self.client.list_content()]


@contextlib.contextmanager
def _unavailable_is_missing() -> Iterator[None]:
    """For the request path: when containerd does not answer, the content is not here (peers may have it)."""
    try:
        yield
    except ContainerdError as exc:
        if isinstance(exc, ContainerdUnavailable):
            log.warning("containerd does not answer: answering not found", extra={"error": str(exc)})
        raise NotFound(str(exc)) from exc


class ContentAPIReader:
    """A `BlobReader` reading through containerd's Content.Read API (when the content root is not mounted)."""

    ranged = True

    def __init__(self, client: ContainerdClient, digest: Digest, size: int) -> None:
        self._client = client
        self.digest = digest
        self.size = size

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        try:
            async with self._client.read_content(str(self.digest), start, end - start + 1) as pieces:
                async for piece in pieces:
                    piece = piece[: end + 1 - offset]
                    if piece:
                        offset += len(piece)
                        yield piece
        except (ContainerdError, NotFound) as exc:
            raise OSError(f"reading {self.digest} through containerd failed at {offset}: {exc}") from exc
        if offset != end + 1:
            raise OSError(f"content API returned {offset - start} of {end - start + 1} bytes of {self.digest}")

    async def aclose(self) -> None:
        pass

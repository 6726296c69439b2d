"""containerd as a content store (`--store containerd`, the default).

Images and content metadata come from containerd's gRPC API in one namespace. Tags are the image names of the
form `registry/repository:tag`. Blobs are read straight from the content root
(`<content path>/blobs/<algorithm>/<hex>`) and, when that directory is not mounted here, through the
Content.Read API. Blobs still downloading are served by `downloads.IngestSource`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from spegel.oci.digest import Digest, InvalidDigest
from spegel.oci.manifest import Descriptor, InvalidManifest
from spegel.oci.reference import InvalidReference, Reference
from spegel.store.base import BlobReader, ContentInfo, NotFound, StoredImage
from spegel.store.containerd.client import ContainerdClient, ContainerdError, ContainerdUnavailable
from spegel.store.containerd.ingest import (
    blob_path,
)
from spegel.store.containerd.proto import types_pb2
from spegel.store.files import FileBlobReader

log = logging.getLogger("spegel.containerd")

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
DEFAULT_CONTENT_PATH = "/var/lib/containerd/io.containerd.content.v1.content"


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

    def __init__(self, client: ContainerdClient, content_path: str | Path = DEFAULT_CONTENT_PATH) -> None:
        self.client = client
        self.content_path = Path(content_path)

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

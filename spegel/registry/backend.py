"""What the registry app asks for content: the `Backend` interface and the store-only `LocalBackend`.

The app parses and validates the request, then asks a backend for a manifest or a blob. A backend either
returns the content or raises `NotFound` (answered 404 with an OCI error body at once). The mirror's
backend (spegel/mirror) adds peers behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from spegel.httprange import RangeSpec
from spegel.oci.digest import Digest
from spegel.oci.manifest import detect_media_type
from spegel.oci.reference import Reference
from spegel.store.base import BlobReader, ContentStore, NotFound

MIRRORED_HEADER = "X-Spegel-Mirrored"  # `true` on requests from peer mirrors: serve local content only
MAX_MANIFEST_SIZE = 4 << 20  # what CNCF distribution accepts; anything larger is not a manifest we serve


@dataclass(frozen=True)
class ManifestRequest:
    reference: Reference  # with exactly one of tag and digest
    mirrored: bool  # True when a peer mirror asks (X-Spegel-Mirrored: true): serve local content only


@dataclass(frozen=True)
class BlobRequest:
    registry: str
    repository: str
    digest: Digest
    range: RangeSpec | None  # the one range asked for (None: the whole blob), parsed once by the app
    mirrored: bool
    head: bool  # HEAD: the body will not be read


@dataclass(frozen=True)
class ManifestContent:
    media_type: str
    digest: Digest
    data: bytes


class Backend(Protocol):
    async def manifest(self, request: ManifestRequest) -> ManifestContent:
        """The manifest or index the reference names; `NotFound` when unknown."""
        ...

    async def blob(self, request: BlobRequest) -> BlobReader:
        """An open blob; the caller `aclose()`s it. `NotFound` when unknown."""
        ...

    def ready(self) -> bool: ...


async def read_manifest(store: ContentStore, reference: Reference) -> ManifestContent:
    """Read and check a manifest or index from a store: the bytes must match the digest and be a manifest."""
    if reference.digest is not None:
        digest, media_type = reference.digest, None
    else:
        descriptor = await store.resolve(reference)
        digest, media_type = descriptor.digest, descriptor.media_type
    reader = await store.open(digest)  # knows the size: no separate describe (one containerd call, not two)
    try:
        if reader.size > MAX_MANIFEST_SIZE:
            raise NotFound(f"{digest} is too large to be a manifest")
        data = b"".join([chunk async for chunk in reader.chunks(0, reader.size - 1)]) if reader.size else b""
    finally:
        await reader.aclose()
    if Digest.of(data, digest.algorithm) != digest:
        raise NotFound(f"stored content of {digest} does not match its digest")
    detected = detect_media_type(data)
    if detected is None:
        raise NotFound(f"{digest} is not a manifest or index")
    return ManifestContent(media_type or detected, digest, data)


class LocalBackend:
    """Serves only what the local store holds."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    async def manifest(self, request: ManifestRequest) -> ManifestContent:
        return await read_manifest(self.store, request.reference)

    async def blob(self, request: BlobRequest) -> BlobReader:
        return await self.store.open(request.digest)

    def ready(self) -> bool:
        return True

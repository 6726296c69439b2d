"""Parsing manifests and indexes into descriptors, and walking an image's content graph."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spegel.oci import mediatypes
from spegel.oci.digest import Digest, InvalidDigest

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class InvalidManifest(ValueError):
    """The bytes are not a manifest or index this registry understands."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None


@dataclass(frozen=True)
class Descriptor:
    """What content is: its media type, digest and size (plus optional annotations and platform)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidManifest("a descriptor must be an object")
        try:
            media_type = obj["mediaType"]
            digest = Digest.parse(obj["digest"])
            size = obj["size"]
        except (KeyError, TypeError, InvalidDigest) as exc:
            raise InvalidManifest(f"invalid descriptor: {exc}") from None
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise InvalidManifest("invalid descriptor: bad mediaType or size")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise InvalidManifest("invalid descriptor: annotations must be an object")
        platform = None
        if isinstance(obj.get("platform"), dict):
            p = obj["platform"]
            platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")), p.get("variant"))
        return cls(media_type, digest, size, annotations, platform)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.platform is not None:
            obj["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                obj["platform"]["variant"] = self.platform.variant
        return obj


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config and its layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    """An image index (or Docker manifest list): manifests for several platforms."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def detect_media_type(data: bytes) -> str | None:
    """The media type a manifest or index declares, or infers from its shape; None when not one."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared in mediatypes.MANIFEST_OR_INDEX_TYPES:
        return declared
    if "manifests" in obj:
        return mediatypes.OCI_INDEX
    if "config" in obj and "layers" in obj:
        return mediatypes.OCI_MANIFEST
    return None


def parse(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or index; `media_type` (e.g. from a descriptor) wins over detection."""
    media_type = media_type if media_type in mediatypes.MANIFEST_OR_INDEX_TYPES else detect_media_type(data)
    if media_type is None:
        raise InvalidManifest("not a manifest or index")
    obj = json.loads(data)
    try:
        if mediatypes.is_index(media_type):
            return Index(media_type, tuple(Descriptor.from_json(d) for d in obj["manifests"]))
        return Manifest(
            media_type,
            Descriptor.from_json(obj["config"]),
            tuple(Descriptor.from_json(d) for d in obj["layers"]),
        )
    except (KeyError, TypeError) as exc:
        raise InvalidManifest(f"invalid {media_type}: missing {exc}") from None


def children(document: Manifest | Index) -> tuple[Descriptor, ...]:
    """The descriptors a manifest or index points at: manifests of an index; config and layers."""
    if isinstance(document, Index):
        return document.manifests
    return (document.config, *document.layers)

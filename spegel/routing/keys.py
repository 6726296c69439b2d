"""Spegel keys as content identifiers (pure).

Every key (a digest string such as `sha256:...` or a tag `registry/repository:tag`) becomes a CID v1 with the
raw codec (0x55) whose multihash is sha2-256 (0x12, 32 bytes) over the UTF-8 key string, as Spegel does. The DHT
stores provider records under the multihash; the textual form is multibase base32 (prefix `b`), lower case.

A tag is advertised together with the digest of the manifest it names: `registry/repository:tag@sha256:...`
(`split_tag_digest` takes it apart). Lookups, the DHT and the index use the tag key alone; the digest travels with
the announcement, so a mirror can check a peer's manifest against what that peer announced.
"""

from __future__ import annotations

import base64
import hashlib

from spegel.oci.digest import Digest, InvalidDigest

CID_VERSION = 1
RAW_CODEC = 0x55
SHA2_256 = 0x12
SHA2_256_LENGTH = 32
MAX_KEY_LENGTH = 512  # a tag key (registry 253 + repository 255 + tag 128) fits in practice; longer is junk


class InvalidKey(ValueError):
    """A key that cannot name content: empty, or not valid UTF-8 text."""


def varint(value: int) -> bytes:
    """The unsigned LEB128 varint of `value` (multiformats' unsigned-varint), `value` >= 0."""
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key_multihash(key: str) -> bytes:
    """The sha2-256 multihash (`0x12 0x20 <digest>`) over the key string. Raises InvalidKey for an empty key."""
    if not key:
        raise InvalidKey("empty key")
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"key is not valid text: {exc}") from None
    return varint(SHA2_256) + varint(SHA2_256_LENGTH) + hashlib.sha256(data).digest()


def key_cid(key: str) -> bytes:
    """The binary CID v1 (raw codec) of `key`."""
    return varint(CID_VERSION) + varint(RAW_CODEC) + key_multihash(key)


def key_cid_string(key: str) -> str:
    """The CID v1 of `key` as multibase base32 text (`bafkrei...`)."""
    return "b" + base64.b32encode(key_cid(key)).decode("ascii").rstrip("=").lower()


def split_tag_digest(key: str) -> tuple[str, str | None]:
    """A tag advertised with its manifest's digest (`registry/repository:tag@<digest>`) as (tag key, digest); any
    other key as (key, None). Raises InvalidKey when the text after a tag's `@` is not a digest."""
    if "/" not in key or "@" not in key:
        return key, None
    tag, _, digest = key.rpartition("@")
    try:
        return tag, str(Digest.parse(digest))
    except InvalidDigest as exc:
        raise InvalidKey(f"tag {tag[:200]!r} announced with {exc}") from None


def with_digest(key: str, digest: str | None) -> str:
    """`key` as advertised: with `@<digest>` appended when `digest` is set (see `split_tag_digest`)."""
    return key if digest is None else f"{key}@{digest}"

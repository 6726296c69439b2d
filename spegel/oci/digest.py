"""Content digests (`algorithm:hex`) and streaming verification.

Only the algorithms the OCI image spec registers are accepted: sha256 (64 hex) and sha512 (128 hex).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(?P<algorithm>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<encoded>[a-zA-Z0-9=_-]+)\Z")


class InvalidDigest(ValueError):
    """The text is not a digest of a supported algorithm."""


class UnsupportedAlgorithm(InvalidDigest):
    """The text is a well-formed digest of an algorithm this registry does not support."""


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest. `str(d)` is the canonical `algorithm:hex` form."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `algorithm:hex`; raise `InvalidDigest` (or `UnsupportedAlgorithm`) when it is not one."""
        match = _DIGEST_RE.match(text)
        if match is None:
            raise InvalidDigest(f"invalid digest {text[:200]!r}")
        algorithm, encoded = match["algorithm"], match["encoded"]
        if algorithm not in _HEX_LENGTH:
            raise UnsupportedAlgorithm(f"unsupported digest algorithm {algorithm[:50]!r}")
        if len(encoded) != _HEX_LENGTH[algorithm] or not _is_lower_hex(encoded):
            raise InvalidDigest(f"invalid {algorithm} digest {text[:200]!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of `data`."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def verifier(self) -> Verifier:
        """A fresh verifier for content that should have this digest."""
        return Verifier(self)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class Verifier:
    """Hashes a stream piece by piece; `verified()` tells whether what was fed matches the digest."""

    def __init__(self, expected: Digest) -> None:
        self.expected = expected
        self._hash = hashlib.new(expected.algorithm)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.expected.algorithm, self._hash.hexdigest())

    def verified(self) -> bool:
        return self.digest() == self.expected

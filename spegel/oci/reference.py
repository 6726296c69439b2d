"""Image references: `registry/repository[:tag][@digest]`, validated per the distribution spec grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel.oci.digest import Digest, InvalidDigest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
REGISTRY_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?\Z")
MAX_REPOSITORY_LENGTH = 255


class InvalidReference(ValueError):
    """A registry, repository name, tag or reference that the grammar does not allow."""


class InvalidName(InvalidReference):
    """The repository name is invalid (OCI code NAME_INVALID)."""


class InvalidTag(InvalidReference):
    """The tag is invalid (OCI code TAG_INVALID)."""


def validate_repository(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise `InvalidName`."""
    if len(name) > MAX_REPOSITORY_LENGTH or not REPOSITORY_RE.match(name):
        raise InvalidName(f"invalid repository name {name[:300]!r}")
    return name


def validate_registry(registry: str) -> str:
    """Return `registry` (`host[:port]`) if valid, else raise `InvalidReference`."""
    if not REGISTRY_RE.match(registry):
        raise InvalidReference(f"invalid registry {registry[:300]!r}")
    return registry


def validate_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise InvalidTag(f"invalid tag {tag[:300]!r}")
    return tag


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference. At least one of `tag` and `digest` is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        validate_registry(self.registry)
        validate_repository(self.repository)
        if self.tag is not None:
            validate_tag(self.tag)
        if self.tag is None and self.digest is None:
            raise InvalidReference("a reference needs a tag or a digest")

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse `registry/repository[:tag][@digest]`. The registry part is required."""
        rest, digest = text, None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except InvalidDigest as exc:
                raise InvalidReference(str(exc)) from None
        registry, slash, path = rest.partition("/")
        if not slash:
            raise InvalidReference(f"reference {text[:300]!r} has no registry")
        tag = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1 :]
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """`registry/repository`."""
        return f"{self.registry}/{self.repository}"

    def tag_key(self) -> str:
        """`registry/repository:tag`, the key under which a tag is stored and advertised."""
        if self.tag is None:
            raise InvalidReference(f"{self} has no tag")
        return f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

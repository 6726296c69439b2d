"""Parsing registry request paths into routes. Pure: no I/O.

`/v2/` is the API base; `/v2/<name>/manifests/<tag|digest>` and `/v2/<name>/blobs/<digest>` are content.
Everything else under `/v2/` is a route this pull-only registry does not support.
"""

from __future__ import annotations

from dataclasses import dataclass

from spegel.oci.digest import Digest, InvalidDigest
from spegel.oci.errors import ErrorCode
from spegel.oci.reference import InvalidName, InvalidTag, validate_repository, validate_tag


class RouteError(Exception):
    """A request path that names no content; carries the OCI error code (and HTTP status) to answer."""

    def __init__(self, code: ErrorCode, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else code.status


@dataclass(frozen=True)
class BaseRoute:
    """`/v2/`: the API base."""


@dataclass(frozen=True)
class ManifestRoute:
    repository: str
    tag: str | None
    digest: Digest | None


@dataclass(frozen=True)
class BlobRoute:
    repository: str
    digest: Digest


Route = BaseRoute | ManifestRoute | BlobRoute


def parse_route(path: str) -> Route:
    """The route a `/v2/...` path names; raises `RouteError` for malformed names, tags, digests or paths.
    Called once per request, by the app."""
    repository, kind, reference = _split(path)
    if kind == "base":
        return BaseRoute()
    try:
        validate_repository(repository)
    except InvalidName as exc:
        raise RouteError(ErrorCode.NAME_INVALID, str(exc)) from None
    if kind == "blobs" or ":" in reference:
        try:
            digest = Digest.parse(reference)
        except InvalidDigest as exc:
            raise RouteError(ErrorCode.DIGEST_INVALID, str(exc)) from None
        return BlobRoute(repository, digest) if kind == "blobs" else ManifestRoute(repository, None, digest)
    try:
        return ManifestRoute(repository, validate_tag(reference), None)
    except InvalidTag as exc:
        raise RouteError(ErrorCode.TAG_INVALID, str(exc)) from None


def _split(path: str) -> tuple[str, str, str]:
    """(repository, kind, reference) by the path's shape alone, kind `base`, `manifests` or `blobs`; nothing is
    validated. Raises `RouteError` (404 UNSUPPORTED) for any other path."""
    if path in ("/v2", "/v2/"):
        return "", "base", ""
    if not path.startswith("/v2/"):
        raise RouteError(ErrorCode.UNSUPPORTED, "not a registry API path", 404)
    segments = path[len("/v2/") :].split("/")
    if len(segments) < 3 or segments[-2] not in ("manifests", "blobs"):
        raise RouteError(ErrorCode.UNSUPPORTED, "this registry serves only manifests and blobs", 404)
    return "/".join(segments[:-2]), segments[-2], segments[-1]


_HANDLERS = {"base": "base", "manifests": "manifest", "blobs": "blob"}


def handler_name(path: str) -> str:
    """A low-cardinality label for metrics, from the path's shape (the route itself is parsed once, by the
    app): base, manifest, blob, health or other."""
    if path in ("/livez", "/readyz"):
        return "health"
    try:
        return _HANDLERS[_split(path)[1]]
    except RouteError:
        return "other"

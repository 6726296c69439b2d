"""The registry app: `/v2/` manifests and blobs answered from a `Backend`, plus `/livez` and `/readyz`.

Contract, per request:
- GET and HEAD only; other methods on `/v2/...` get 405 UNSUPPORTED. HEAD answers GET's headers, no body.
- The image's registry is `?ns=`; without it, the app's default registry.
- Blobs: `Range` per RFC 9110, parsed once here into the `RangeSpec` the backend and `httprange.decide` get:
  one range → 206, unsatisfiable → 416 with `Content-Range: bytes */SIZE`, multi-range or invalid → 200 with
  the whole body. A backend blob that is not `ranged` (content still arriving) answers a range starting at 0
  with 200 and the whole body (see `httprange.decide`); a resume (`bytes=N-`, N > 0) is still answered 206.
- Manifests ignore `Range` and are checked against their digest before they are sent.
- Malformed names, tags and digests → 400 NAME_INVALID / TAG_INVALID / DIGEST_INVALID; unknown content →
  404 BLOB_UNKNOWN / MANIFEST_UNKNOWN. No `Content-Encoding` is ever sent.
- A body is streamed piece by piece; when the client closes, the handler is cancelled and reading stops.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from spegel import httprange
from spegel.oci.errors import ErrorCode, error_body
from spegel.oci.reference import InvalidReference, Reference, validate_registry
from spegel.registry.backend import MIRRORED_HEADER, Backend, BlobRequest, ManifestRequest
from spegel.registry.http11 import ZERO_COPY
from spegel.registry.routes import BaseRoute, BlobRoute, ManifestRoute, RouteError, parse_route
from spegel.store.base import BlobReader, NotFound, closing
from spegel.store.files import FileRegion, FileRegions

log = logging.getLogger("spegel.registry")

OCTET_STREAM = "application/octet-stream"
_ALLOWED = ("GET", "HEAD")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_OPEN_BLOBS = "spegel.open_blobs"  # ASGI scope key: the blobs a request opened whose body has not finished


def _open_blobs(scope: object) -> list[BlobReader]:
    """The blobs the request of this ASGI `scope` opened and has not closed yet (an extension key of the scope)."""
    blobs: list[BlobReader] = cast(dict[str, Any], scope).setdefault(_OPEN_BLOBS, [])
    return blobs


def oci_error(code: ErrorCode, detail: str | None = None, status: int | None = None) -> Response:
    response = Response(error_body(code, detail), status=status or code.status, content_type="application/json")
    response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
    return response


def create_app(backend: Backend, default_registry: str, ready: Callable[[], bool] | None = None) -> QuartTrio:
    """Build the registry app. `ready` (default: the backend's `ready`) drives `/readyz`."""
    app = QuartTrio("spegel.registry")
    app.asgi_http_class = _HTTPConnection
    app.config["RESPONSE_TIMEOUT"] = None  # a registry must not cut long downloads
    app.config["BODY_TIMEOUT"] = 10
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    add_health(app, ready or backend.ready)

    @app.route("/v2", methods=_ALL_METHODS)
    @app.route("/v2/<path:rest>", methods=_ALL_METHODS)
    async def v2(rest: str = "") -> Response:
        if request.method not in _ALLOWED:
            response = oci_error(ErrorCode.UNSUPPORTED, "this registry is pull-only")
            response.headers["Connection"] = "close"  # the unread request body must not be taken for a request
            return response
        try:
            route = parse_route(request.path)
            registry = validate_registry(request.args.get("ns", default_registry))
        except RouteError as exc:
            return oci_error(exc.code, exc.detail, exc.status)
        except InvalidReference as exc:
            return oci_error(ErrorCode.NAME_INVALID, str(exc))
        mirrored = request.headers.get(MIRRORED_HEADER, "").lower() == "true"
        if isinstance(route, BaseRoute):
            return with_api_version(Response("{}", content_type="application/json"))
        try:
            if isinstance(route, ManifestRoute):
                return await serve_manifest(backend, registry, route, mirrored)
            return await serve_blob(backend, registry, route, mirrored)
        except OSError as exc:
            log.warning("store failed", extra={"path": request.path, "error": str(exc)})
            return oci_error(*storage_error(exc))

    @app.after_request
    async def head_has_no_body(response: Response) -> Response:
        """HEAD answers GET's headers without a body (RFC 9110 §9.3.2), whoever made the response (errors,
        health). A body on a HEAD answer is refused by h11 mid-response, and the client's next request on
        that keep-alive connection is then never answered."""
        if request.method == "HEAD":
            length = response.headers.get("Content-Length")
            response.set_data(b"")
            if length is not None:
                response.headers["Content-Length"] = length
        return response

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        return oci_error(ErrorCode.UNSUPPORTED, "not found", 404)

    @app.errorhandler(405)
    async def not_allowed(_: Exception) -> Response:
        return oci_error(ErrorCode.UNSUPPORTED, "method not allowed")

    @app.errorhandler(Exception)
    async def failed(exc: Exception) -> Response:
        log.warning("request failed", extra={"path": request.path, "error": f"{type(exc).__name__}: {exc}"})
        return oci_error(ErrorCode.UNKNOWN, "the request failed")

    return app


def add_health(app: QuartTrio, ready: Callable[[], bool]) -> None:
    """`/livez` (200 while the process serves) and `/readyz` (200 when `ready()`, else 503)."""

    @app.route("/livez")
    async def livez() -> Response:
        return Response("ok\n", content_type="text/plain")

    @app.route("/readyz")
    async def readyz() -> Response:
        if ready():
            return Response("ok\n", content_type="text/plain")
        return Response("not ready\n", status=503, content_type="text/plain")


_STORAGE_ERRNO_STATUS = {
    errno.ENOSPC: 507,  # Insufficient Storage
    errno.EDQUOT: 507,
    errno.EMFILE: 503,  # out of file descriptors or memory: try again later
    errno.ENFILE: 503,
    errno.ENOMEM: 503,
    errno.EAGAIN: 503,
}


def storage_error(exc: OSError) -> tuple[ErrorCode, str, int]:
    """The OCI error code, detail and status to answer a store's OSError with: 507 when the disk is full,
    503 when the process is out of descriptors or memory, 500 otherwise (EIO and the rest)."""
    status = _STORAGE_ERRNO_STATUS.get(exc.errno or 0, 500)
    code = ErrorCode.UNAVAILABLE if status == 503 else ErrorCode.UNKNOWN
    return code, f"store: {exc.strerror or exc}", status


def with_api_version(response: Response) -> Response:
    response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
    return response


async def serve_manifest(backend: Backend, registry: str, route: ManifestRoute, mirrored: bool) -> Response:
    reference = Reference(registry, route.repository, route.tag, route.digest)
    try:
        content = await backend.manifest(ManifestRequest(reference, mirrored))
    except NotFound as exc:
        return oci_error(ErrorCode.MANIFEST_UNKNOWN, str(exc))
    response = Response(content.data, content_type=content.media_type)
    response.headers["Docker-Content-Digest"] = str(content.digest)
    return with_api_version(response)


async def serve_blob(backend: Backend, registry: str, route: BlobRoute, mirrored: bool) -> Response:
    head = request.method == "HEAD"
    use_range = not head and _if_range_holds(request.headers.get("If-Range"), route)
    requested = httprange.requested_range(request.headers.get("Range")) if use_range else None
    blob_request = BlobRequest(registry, route.repository, route.digest, requested, mirrored, head)
    try:
        blob = await backend.blob(blob_request)
    except NotFound as exc:
        return oci_error(ErrorCode.BLOB_UNKNOWN, str(exc))
    decision = httprange.decide(requested, blob.size, blob.ranged)
    headers = {"Docker-Content-Digest": str(route.digest), "ETag": f'"{route.digest}"', **decision.headers()}
    if blob.ranged:
        headers["Accept-Ranges"] = "bytes"
    if isinstance(decision, httprange.Unsatisfiable) or head or decision.length == 0:
        await blob.aclose()
        if isinstance(decision, httprange.Unsatisfiable):
            assert requested is not None
            response = oci_error(ErrorCode.RANGE_INVALID, f"range {requested.header()!r} of {blob.size} bytes")
            response.headers.update(headers)
            return response
        response = Response(_empty(), status=decision.status, content_type=OCTET_STREAM, headers=headers)
        return with_api_version(response)
    start, end = decision.start, decision.start + decision.length - 1
    open_blobs = _open_blobs(request.scope)
    open_blobs.append(blob)
    zero_copy = ZERO_COPY in request.scope.get("extensions", {})
    pieces = blob.regions(start, end) if zero_copy and blob.ranged and isinstance(blob, FileRegions) else None
    body = _stream(blob, pieces or blob.chunks(start, end), route, open_blobs)
    response = Response(body, status=decision.status, content_type=OCTET_STREAM, headers=headers)
    response.timeout = None
    return with_api_version(response)


def _if_range_holds(if_range: str | None, route: BlobRoute) -> bool:
    """RFC 9110 §13.1.5: a Range applies only when If-Range (if sent) matches our strong ETag."""
    return if_range is None or if_range.strip() == f'"{route.digest}"'


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _stream(
    blob: BlobReader,
    pieces: AsyncIterator[bytes] | AsyncIterator[FileRegion],
    route: BlobRoute,
    open_blobs: list[BlobReader],
) -> AsyncIterator[bytes | FileRegion]:
    """The body of a blob response: `pieces` of `blob`, bytes or file regions (sent with the server's zero-copy
    extension, see `_HTTPConnection`). It closes the blob and takes it off `open_blobs` when it ends. A read
    error after the headers went out can only cut the body short (the client sees a truncated transfer and
    resumes with a Range request): the server drops the connection and logs it in one line."""
    try:
        async with closing(pieces):
            async for piece in pieces:
                yield piece
    except (NotFound, OSError) as exc:
        raise BodyCutShort(f"{route.digest}: {exc}") from None
    finally:
        if blob in open_blobs:  # else the connection's clean-up closed it already
            open_blobs.remove(blob)
            await blob.aclose()


class _HTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection that sends body pieces that are `FileRegion`s as the ASGI zero-copy send
    extension's messages, and that closes, when the request ends, every blob it left open.

    When a client goes away, quart-trio cancels the response task. If that happens before the body began
    (e.g. while the headers are sent), the body generator never runs, so its `finally` never closes the
    blob: without this, each such request would leak a file descriptor (or a peer's connection).
    """

    async def _send_response(self, send: Any, response: Any) -> None:
        async def send_regions(message: Any) -> None:
            region = message.get("body")
            if isinstance(region, FileRegion):
                message = {"type": ZERO_COPY, "file": region.fd, "offset": region.offset, "count": region.count}
                message["more_body"] = True
            await send(message)

        await super()._send_response(send_regions, response)

    async def __call__(self, receive: Any, send: Any) -> None:
        try:
            await super().__call__(receive, send)
        finally:
            leftovers = _open_blobs(self.scope)
            with trio.CancelScope(shield=True):
                while leftovers:
                    await leftovers.pop().aclose()


class BodyCutShort(Exception):
    """Raised into the HTTP server so it drops the connection instead of finishing a short body."""

"""The debug page, `/debug/web/` on the metrics address (on by default, as Spegel's; `--debug-web-enabled=false`).

Server-rendered HTML, no script, no external resource: this node and its peers (with their state), what it
advertises (tags, blobs, blobs in progress), the transfers running now with bytes and rate and the peer each
streams from, the transfers and misses just before, and a "measure" form: `/debug/web/measure?image=REF` pulls
`REF` through this node's own mirror (manifest, config and layers of one platform; nothing is stored) and shows
where each blob came from and how fast. The live page reloads itself every 2 seconds.

Rendering is pure (`render_*` take data, return HTML); `measure` is the only I/O (HTTP to this node's registry).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

from spegel.activity import Activity, Transfer
from spegel.metrics import tag_registry
from spegel.oci import manifest as oci_manifest
from spegel.oci import mediatypes
from spegel.oci.manifest import Descriptor, Index, InvalidManifest
from spegel.oci.reference import InvalidReference, Reference
from spegel.routing.base import KeyState

LISTED = 50  # rows per list (tags, blobs in progress)
MEASURE_TIMEOUT = 120.0  # seconds for a whole measure
MEASURE_BLOBS = 128  # most blobs a measure fetches
ACCEPT = ", ".join(sorted(mediatypes.MANIFEST_OR_INDEX_TYPES))


@dataclass(frozen=True)
class PeerRow:
    peer: str  # the peer's id
    address: str | None  # its registry address, once it announced one
    keys: int  # keys it announced
    heard: bool  # heard from within the record TTL


@dataclass
class DebugView:
    """What the page shows, as the composition root wires it."""

    node: str  # this node's peer name (or a note that it runs without a router)
    registry_url: str  # this node's registry, for measures (http://host:port)
    activity: Activity
    advertised: Mapping[str, KeyState] = field(default_factory=dict)
    peers: Callable[[], list[PeerRow]] = list


@dataclass(frozen=True)
class MeasuredBlob:
    digest: str
    kind: str  # manifest, config, layer
    size: int
    status: int
    seconds: float
    source: str  # local, peer, inflight, or miss
    peer: str | None

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;"
    "font-family:monospace;font-size:.9em}th{background:#eee}.empty{color:#777}"
)


def _page(title: str, body: str, refresh: bool) -> str:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _measure_form(image: str = "") -> str:
    return (
        '<form action="/debug/web/measure" method="get"><label>Image <input name="image" size="60" '
        f'value="{_e(image)}" placeholder="docker.io/library/nginx:latest"></label> '
        '<button type="submit">Measure</button></form>'
    )


def _transfer_row(t: Transfer, now: float) -> list[object]:
    return [
        t.digest,
        t.source,
        t.peer or "this node",
        size_text(t.sent),
        f"{t.seconds(now):.2f} s",
        f"{size_text(t.rate(now))}/s",
    ]


def render_index(view: DebugView, now: float | None = None) -> str:
    """The live page."""
    now = time.monotonic() if now is None else now
    state = dict(view.advertised)
    tags = sorted(k for k in state if tag_registry(k) is not None)
    complete = sum(1 for k, s in state.items() if tag_registry(k) is None and s is KeyState.COMPLETE)
    in_progress = sorted(k for k, s in state.items() if tag_registry(k) is None and s is KeyState.IN_PROGRESS)
    peers = view.peers()
    transfer_headers = ("digest", "source", "peer", "bytes", "time", "rate")
    running = sorted(view.activity.running.values(), key=lambda t: t.started)
    finished = list(reversed(view.activity.finished))[:LISTED]
    misses = list(reversed(view.activity.misses))[:LISTED]
    body = (
        f"<h1>Spegel mirror: {_e(view.node)}</h1>"
        f'<section id="measure"><h2>Measure a pull through this mirror</h2>{_measure_form()}</section>'
        f'<section id="peers"><h2>Peers ({len(peers)})</h2>'
        + _table(
            ("peer", "registry address", "keys announced", "state"),
            (
                (p.peer, p.address or "—", p.keys, "heard" if p.heard else ("connected" if p.address else "joining"))
                for p in peers
            ),
            "no peer connected",
        )
        + "</section>"
        f'<section id="advertised"><h2>Advertised: {len(tags)} tags, {complete} blobs, '
        f"{len(in_progress)} blobs in progress</h2>"
        + _table(("tag",), ((t,) for t in tags[:LISTED]), "no tag")
        + _table(("blob in progress",), ((d,) for d in in_progress[:LISTED]), "no blob in progress")
        + "</section>"
        f'<section id="transfers"><h2>Transfers running now ({len(running)})</h2>'
        + _table(transfer_headers, (_transfer_row(t, now) for t in running), "none")
        + "</section>"
        '<section id="finished"><h2>Transfers just finished</h2>'
        + _table(transfer_headers, (_transfer_row(t, now) for t in finished), "none")
        + "</section>"
        '<section id="misses"><h2>Recent misses (404: containerd went to the next host)</h2>'
        + _table(
            ("time", "path", "registry", "asked by"),
            (
                (
                    time.strftime("%H:%M:%S", time.localtime(m.at)),
                    m.path,
                    m.registry,
                    "peer" if m.mirrored else "containerd",
                )
                for m in misses
            ),
            "none",
        )
        + "</section>"
    )
    return _page(f"Spegel: {view.node}", body, refresh=True)


def render_measure(image: str, blobs: list[MeasuredBlob], error: str | None, seconds: float) -> str:
    """The result of a measure."""
    total = sum(b.size for b in blobs if b.status == 200)
    rows = (
        (
            b.kind,
            b.digest,
            size_text(b.size),
            b.status,
            b.source,
            b.peer or "this node",
            f"{b.seconds * 1000:.1f} ms",
            f"{size_text(b.rate)}/s",
        )
        for b in blobs
    )
    body = (
        f'<h1>Measure: {_e(image)}</h1>{_measure_form(image)}<p><a href="/debug/web/">back</a></p>'
        + (f'<p id="error">{_e(error)}</p>' if error else "")
        + f'<section id="result"><h2>{len(blobs)} requests, {size_text(total)} in {seconds:.2f} s</h2>'
        + _table(("kind", "digest", "size", "status", "source", "peer", "time", "rate"), rows, "nothing fetched")
        + "</section>"
    )
    return _page(f"Measure {image}", body, refresh=False)


async def measure(registry_url: str, image: str, activity: Activity) -> tuple[list[MeasuredBlob], str | None]:
    """Pull `image` through the mirror at `registry_url` (manifest, one platform's config and layers; bodies are
    counted, not kept). Returns what each request got, and an error that ended the measure early, if any."""
    try:
        reference = Reference.parse(image.strip())
    except InvalidReference as exc:
        return [], f"invalid image reference: {exc}"
    base = f"{registry_url}/v2/{reference.repository}"
    params = {"ns": reference.registry}
    blobs: list[MeasuredBlob] = []
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.move_on_after(MEASURE_TIMEOUT) as scope:
            target = str(reference.digest or reference.tag)
            document, error = await _fetch_manifest(client, f"{base}/manifests/{target}", params, activity, blobs)
            if isinstance(document, Index):
                chosen = _platform_manifest(document)
                if chosen is None:
                    return blobs, "the index lists no manifest"
                url = f"{base}/manifests/{chosen.digest}"
                document, error = await _fetch_manifest(client, url, params, activity, blobs)
            if document is None:
                return blobs, error
            assert isinstance(document, oci_manifest.Manifest)
            parts = [("config", document.config), *(("layer", layer) for layer in document.layers)]
            for kind, descriptor in parts[:MEASURE_BLOBS]:
                blobs.append(await _fetch_blob(client, f"{base}/blobs/{descriptor.digest}", params, activity, kind))
    if scope.cancelled_caught:
        return blobs, f"stopped after {MEASURE_TIMEOUT:.0f} s"
    return blobs, None


async def _fetch_manifest(
    client: httpx.AsyncClient, url: str, params: dict[str, str], activity: Activity, blobs: list[MeasuredBlob]
) -> tuple[oci_manifest.Manifest | Index | None, str | None]:
    started = time.monotonic()
    try:
        response = await client.get(url, params=params, headers={"Accept": ACCEPT})
    except httpx.HTTPError as exc:
        return None, f"{url}: {exc}"
    seconds = time.monotonic() - started
    digest = response.headers.get("docker-content-digest", url.rsplit("/", 1)[-1])
    source = "miss" if response.status_code == 404 else "mirror"  # manifests are not tracked per source
    blobs.append(MeasuredBlob(digest, "manifest", len(response.content), response.status_code, seconds, source, "—"))
    if response.status_code != 200:
        return None, f"manifest: HTTP {response.status_code} (not on this node nor its peers: a pull goes upstream)"
    try:
        return oci_manifest.parse(response.content, response.headers.get("content-type")), None
    except (InvalidManifest, ValueError) as exc:
        return None, f"manifest: {exc}"


def _platform_manifest(index: Index) -> Descriptor | None:
    """The linux/amd64 manifest of an index, else its first."""
    for descriptor in index.manifests:
        platform = descriptor.platform
        if platform is not None and (platform.os, platform.architecture) == ("linux", "amd64"):
            return descriptor
    return index.manifests[0] if index.manifests else None


async def _fetch_blob(
    client: httpx.AsyncClient, url: str, params: dict[str, str], activity: Activity, kind: str
) -> MeasuredBlob:
    digest = url.rsplit("/", 1)[-1]
    started, size, status = time.monotonic(), 0, 0
    try:
        async with client.stream("GET", url, params=params) as response:
            status = response.status_code
            async for chunk in response.aiter_bytes():
                size += len(chunk)
    except httpx.HTTPError:
        status = status or 599
    seconds = time.monotonic() - started
    transfer = activity.last_finished(digest) if status == 200 else None
    source = transfer.source if transfer is not None else ("miss" if status == 404 else "unknown")
    peer = transfer.peer if transfer is not None else None
    return MeasuredBlob(digest, kind, size, status, seconds, source, peer)


def add_debug_web(app: QuartTrio, view: DebugView) -> None:
    """Serve the debug page on `app` (the metrics app)."""

    @app.route("/debug/web/")
    async def index() -> Response:
        return Response(render_index(view), content_type="text/html; charset=utf-8")

    @app.route("/debug/web/measure")
    async def measure_page() -> Response:
        image = request.args.get("image", "")[:500]
        if not image:
            return Response(render_measure("", [], "give an image reference", 0.0), content_type="text/html")
        started = time.monotonic()
        blobs, error = await measure(view.registry_url, image, view.activity)
        page = render_measure(image, blobs, error, time.monotonic() - started)
        return Response(page, content_type="text/html; charset=utf-8")

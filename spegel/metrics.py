"""Prometheus metrics: one `Metrics` object per process holds its own registry and every metric.

What Spegel measures carries Spegel's names and labels, so that its dashboards and alerts work unchanged:
`spegel_mirror_requests_total{registry,cache}`, `spegel_mirror_last_success_timestamp_seconds`,
`spegel_resolve_duration_seconds{router}`, `spegel_advertised_{image_tags,image_digests,content_digests}{registry}`
and the `http_*` trio. What only this mirror measures has its own names (requests and bytes by source, in-flight
sharing included, resolve outcomes, peer errors and resumes, advertised keys by kind). Process and Python GC
collectors are registered too.

Every label value comes from a fixed set: a registry is one of the configured registries (or, when every registry
is mirrored, one this node holds images of), else `other`; a method is a standard one, else `other`. Clients
choose `?ns=` and methods freely, and must not grow `/metrics`.

HTTP metrics are taken by an ASGI middleware (`instrument`) around the registry app, so they measure what was
really sent: duration until the last body byte (or the client's close), bytes of body sent. The same middleware
writes one access-log line per request (logger `spegel.access`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.registry import Collector

from spegel.activity import Activity
from spegel.routing.base import KeyState
from spegel.routing.filtered import is_tag_key

ASGIApp = Callable[..., Any]
access_log = logging.getLogger("spegel.access")

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_SIZE_BUCKETS = (256, 4096, 65536, 1 << 20, 8 << 20, 32 << 20, 128 << 20, 512 << 20, 1 << 30, 4 << 30)
_RESOLVE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1)

OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SOURCES = ("local", "peer", "inflight", "miss")  # where a request's bytes came from (`miss`: 404, none)
MAX_REGISTRY_LABELS = 64  # registries named in labels when every registry is mirrored (the rest: `other`)
MAX_SHOWN = 200  # characters of a client's path or registry kept for the debug page
ROUTER = "libp2p"  # Spegel's `router` label of spegel_resolve_duration_seconds


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def tag_registry(key: str) -> str | None:
    """The registry of a tag key (`registry/repository:tag`), None for a digest key."""
    return key.partition("/")[0] if is_tag_key(key) else None


class RegistryLabels:
    """The `registry` label of a request: a registry of the fixed set, else `other`.

    The set is `known` (the configured registries and the default one), plus, when `held` is given (every
    registry is mirrored), the registries this node holds tagged images of, re-read at most every `refresh`
    seconds and capped at `MAX_REGISTRY_LABELS`. Both come from the operator, never from a client.
    """

    def __init__(
        self, known: Iterable[str] = (), held: Callable[[], Iterable[str]] | None = None, refresh: float = 10.0
    ) -> None:
        self._known = frozenset(known)
        self._held = held
        self._refresh = refresh
        self._cached: frozenset[str] = frozenset()
        self._read_at = -refresh

    def __call__(self, registry: str) -> str:
        if registry in self._known:
            return registry
        if self._held is None:
            return OTHER
        now = time.monotonic()
        if now - self._read_at >= self._refresh:
            self._cached = frozenset(sorted(set(self._held()))[:MAX_REGISTRY_LABELS])
            self._read_at = now
        return registry if registry in self._cached else OTHER


class AdvertisedCollector(Collector):
    """What this node advertises, counted at scrape time from `state` (key -> complete or in progress)."""

    def __init__(self, state: Mapping[str, KeyState], registry_label: Callable[[str], str]) -> None:
        self._state = state
        self._registry_label = registry_label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        kinds: Tally[str] = Tally()
        tags: Tally[str] = Tally()
        for key, state in list(self._state.items()):
            registry = tag_registry(key)
            if registry is not None:
                kinds["tag"] += 1
                tags[self._registry_label(registry)] += 1
            else:
                kinds["blob" if state is KeyState.COMPLETE else "blob_in_progress"] += 1
        by_kind = GaugeMetricFamily("spegel_advertised_keys", "Keys this node advertises, by kind.", labels=["kind"])
        for kind in ("tag", "blob", "blob_in_progress"):
            by_kind.add_metric([kind], kinds[kind])
        yield by_kind
        image_tags = GaugeMetricFamily(
            "spegel_advertised_image_tags", "Number of image tags advertised to be available.", labels=["registry"]
        )
        image_digests = GaugeMetricFamily(
            "spegel_advertised_image_digests",
            "Number of image digests advertised to be available (one per tagged image).",
            labels=["registry"],
        )
        for registry, count in sorted(tags.items()):
            image_tags.add_metric([registry], count)
            image_digests.add_metric([registry], count)
        yield image_tags
        yield image_digests
        content = GaugeMetricFamily(
            "spegel_advertised_content_digests",
            "Number of content digests advertised to be available (digests name no registry: `all`).",
            labels=["registry"],
        )
        content.add_metric(["all"], kinds["blob"])
        yield content


class Metrics:
    def __init__(self, registry_label: Callable[[str], str] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry_label = registry_label or RegistryLabels()
        self.activity = Activity()  # transfers and misses, for the debug page
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer a request, until the last body byte is sent.",
            ["handler", "method", "code"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.http_response_size = Histogram(
            "http_response_size_bytes",
            "Body bytes sent per response.",
            ["handler", "method", "code"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.http_requests_inflight = Gauge(
            "http_requests_inflight", "Requests being answered.", ["handler"], registry=r
        )
        self.mirror_requests = Counter(
            "spegel_mirror_requests_total",
            "Requests for content this node does not hold: hit (served from a peer) or miss (404).",
            ["registry", "cache"],
            registry=r,
        )
        self.mirror_last_success = Gauge(
            "spegel_mirror_last_success_timestamp_seconds",
            "When a request was last served from a peer (Unix time).",
            registry=r,
        )
        self.mirror_requests_by_source = Counter(
            "spegel_mirror_requests_by_source_total",
            "Content requests by source: local, peer, inflight or miss.",
            ["registry", "source"],
            registry=r,
        )
        self.mirror_bytes = Counter("spegel_mirror_bytes_total", "Body bytes served by source.", ["source"], registry=r)
        self.resolve_duration = Histogram(
            "spegel_resolve_duration_seconds",
            "Time to find peers holding a key.",
            ["router"],
            buckets=_RESOLVE_BUCKETS,
            registry=r,
        )
        self.resolve_outcomes = Counter(
            "spegel_resolve_total", "Lookups of peers holding a key, by outcome.", ["outcome"], registry=r
        )
        self.peer_errors = Counter(
            "spegel_peer_errors_total", "Failed or broken transfers from peers.", ["reason"], registry=r
        )
        self.peer_resumes = Counter(
            "spegel_peer_resumes_total", "Transfers resumed from another holder after a break.", registry=r
        )
        for source in SOURCES:
            self.mirror_bytes.labels(source)
        for outcome in ("found", "not_found"):
            self.resolve_outcomes.labels(outcome)
        for reason in ("open", "broken", "digest"):
            self.peer_errors.labels(reason)
        self.resolve_duration.labels(ROUTER)

    def request_served(self, registry: str, source: str) -> None:
        """A content request was answered from `source` (one of `SOURCES`); `miss` is a 404."""
        label = self.registry_label(registry)
        self.mirror_requests_by_source.labels(label, source).inc()
        if source == "peer":
            self.mirror_requests.labels(label, "hit").inc()
            self.mirror_last_success.set_to_current_time()
        elif source == "miss":
            self.mirror_requests.labels(label, "miss").inc()

    def resolved(self, seconds: float, found: bool) -> None:
        """A lookup of peers took `seconds` and found holders or not."""
        self.resolve_duration.labels(ROUTER).observe(seconds)
        self.resolve_outcomes.labels("found" if found else "not_found").inc()

    def export_advertised(self, state: Mapping[str, KeyState]) -> None:
        """Count what this node advertises (`state`: key -> complete or in progress) at each scrape."""
        self.registry.register(AdvertisedCollector(state, self.registry_label))

    def export_router(
        self, members: Callable[[], float], links: Callable[[], float], settled: Callable[[], float]
    ) -> None:
        """Report the announcement overlay at each scrape: nodes known, links held, whether the links are the ones
        this node wants (1) or still changing (0)."""
        gauges = (
            ("spegel_router_members", "Other nodes this node knows in the announcement overlay.", members),
            ("spegel_router_links", "Peers this node exchanges announcements with directly.", links),
            ("spegel_router_settled", "1 when this node holds the links it picks and no other it dialled.", settled),
        )
        for name, text, read in gauges:
            Gauge(name, text, registry=self.registry).set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def instrument(app: ASGIApp, metrics: Metrics, handler_of: Callable[[str], str]) -> ASGIApp:
    """Wrap an ASGI app so every HTTP request updates the HTTP metrics, labelled by `handler_of(path)`."""

    async def instrumented(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        handler, method = handler_of(scope["path"]), scope["method"]
        status, sent = 0, 0
        started = time.perf_counter()

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.zerocopysend":
                sent += message["count"]
            await send(message)

        inflight = metrics.http_requests_inflight.labels(handler)
        inflight.inc()
        try:
            await app(scope, receive, counting_send)
        finally:
            inflight.dec()
            code, label = str(status or 499), method_label(method)
            metrics.http_request_duration.labels(handler, label, code).observe(time.perf_counter() - started)
            metrics.http_response_size.labels(handler, label, code).observe(sent)
            mirrored = _header(scope, b"x-spegel-mirrored")
            if status == 404 and handler in ("manifest", "blob"):
                registry = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ns", [""])[0]
                metrics.activity.missed(scope["path"][:MAX_SHOWN], registry[:MAX_SHOWN], mirrored is not None)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "range": _header(scope, b"range"),
                    "mirrored": mirrored,
                    "status": status or 499,
                    "bytes": sent,
                    "seconds": round(time.perf_counter() - started, 6),
                },
            )

    return instrumented


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None

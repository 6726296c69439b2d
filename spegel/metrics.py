"""Prometheus metrics: one `Metrics` object per process holds its own registry and every metric.

HTTP metrics are taken by an ASGI middleware (`instrument`) around the registry app, so they measure what
was really sent: duration until the last body byte (or the client's close), bytes of body sent. The same
middleware writes one access-log line per request (logger `spegel.access`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ASGIApp = Callable[..., Any]
access_log = logging.getLogger("spegel.access")

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_SIZE_BUCKETS = (256, 4096, 65536, 1 << 20, 8 << 20, 32 << 20, 128 << 20, 512 << 20, 1 << 30, 4 << 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            "Content requests by source: local, peer, inflight or miss.",
            ["registry", "source"],
            registry=r,
        )
        self.mirror_bytes = Counter("spegel_mirror_bytes_total", "Body bytes served by source.", ["source"], registry=r)
        self.resolve_duration = Histogram(
            "spegel_resolve_duration_seconds",
            "Time to find peers holding a key.",
            ["outcome"],
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self.advertised_keys = Gauge(
            "spegel_advertised_keys", "Keys this node advertises, by kind.", ["kind"], registry=r
        )
        self.peer_errors = Counter(
            "spegel_peer_errors_total", "Failed or broken transfers from peers.", ["reason"], registry=r
        )
        self.peer_resumes = Counter(
            "spegel_peer_resumes_total", "Transfers resumed from another holder after a break.", registry=r
        )

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
            code = str(status or 499)
            metrics.http_request_duration.labels(handler, method, code).observe(time.perf_counter() - started)
            metrics.http_response_size.labels(handler, method, code).observe(sent)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "range": _header(scope, b"range"),
                    "mirrored": _header(scope, b"x-spegel-mirrored"),
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

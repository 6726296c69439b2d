"""Serving ASGI apps on our HTTP/1.1 server (spegel.registry.http11): the registry and the metrics endpoint."""

from __future__ import annotations

from collections.abc import Callable

import trio
from quart import Response
from quart_trio import QuartTrio

from spegel.metrics import Metrics
from spegel.registry.app import add_health
from spegel.registry.http11 import ASGIApp, Limits, serve

METRICS_LIMITS = Limits(keep_alive_timeout=10.0, send_timeout=10.0, max_connections=16)


def split_address(bind: str) -> tuple[str | None, int]:
    """`HOST:PORT` or `[V6]:PORT` as (host, port); an empty host or `0.0.0.0` means every IPv4 interface."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve_app(
    app: ASGIApp,
    bind: str,
    limits: Limits | None = None,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `bind` (`host:port`) until cancelled; reports the bound URLs (`http://host:port`) via
    `task_status`. `limits` default: `Limits()`."""
    host, port = split_address(bind)
    listeners = await trio.open_tcp_listeners(port, host=host)
    urls = []
    for listener in listeners:
        address, bound_port = listener.socket.getsockname()[:2]
        urls.append(f"http://[{address}]:{bound_port}" if ":" in address else f"http://{address}:{bound_port}")
    try:
        task_status.started(urls)
        await serve(app, listeners, limits or Limits())
    finally:
        for listener in listeners:
            listener.socket.close()


def create_metrics_app(metrics: Metrics, ready: Callable[[], bool]) -> QuartTrio:
    """`/metrics`, and the probes `/livez` (the process serves) and `/readyz` (`ready()`)."""
    app = QuartTrio("spegel.metrics")

    @app.route("/metrics")
    async def exposition() -> Response:
        return Response(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")

    add_health(app, ready)
    return app

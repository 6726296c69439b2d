"""Serving ASGI apps with hypercorn on trio: the registry and the metrics endpoint."""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio

from spegel.metrics import Metrics


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 30
    config.graceful_timeout = 2
    return config


async def serve_app(app: Any, bind: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on `bind` (`host:port`) until cancelled; reports the bound addresses via `task_status`."""
    await serve(app, hypercorn_config(bind), mode="asgi", task_status=task_status)


def create_metrics_app(metrics: Metrics) -> QuartTrio:
    app = QuartTrio("spegel.metrics")

    @app.route("/metrics")
    async def exposition() -> Response:
        return Response(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")

    return app

"""The composition root: builds stores, backends and servers from parsed flags, and runs them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from typing import TypeVar

import trio

from spegel.metrics import Metrics, instrument
from spegel.registry.app import create_app
from spegel.registry.backend import LocalBackend
from spegel.registry.routes import handler_name
from spegel.registry.server import create_metrics_app, serve_app
from spegel.store.base import ContentStore
from spegel.store.layout import InvalidLayout, OCILayoutStore

log = logging.getLogger("spegel")
E = TypeVar("E", bound=BaseException)


class ConfigurationError(Exception):
    """A flag value that names something unusable (reported in one line, exit 2)."""


def open_store(spec: str) -> ContentStore:
    kind, _, location = spec.partition(":")
    if kind == "oci-layout":
        try:
            return OCILayoutStore(location)
        except InvalidLayout as exc:
            raise ConfigurationError(str(exc)) from None
    raise ConfigurationError(f"unknown store {spec!r}: want containerd or oci-layout:DIR")


def run_registry(args: argparse.Namespace) -> int:
    try:
        store = open_store(args.store)
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(serve_registry, args, store)
    except (ConfigurationError, BaseExceptionGroup) as exc:
        error = find_exception(exc, ConfigurationError)
        if error is None:
            raise
        sys.stderr.write(f"spegel: error: {error}\n")
        return 2
    return 0


def find_exception(exc: BaseException, kind: type[E]) -> E | None:
    """`exc` itself if it is a `kind`, else the first `kind` nested in it (exception groups), else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_exception(inner, kind)) is not None:
                return found
    return None


async def listen(nursery: trio.Nursery, app: object, address: str) -> list[str]:
    """Start serving `app` on `address` in `nursery`; a failure to bind raises `ConfigurationError`."""
    try:
        return await nursery.start(serve_app, app, address)
    except (OSError, BaseExceptionGroup) as exc:
        error = find_exception(exc, OSError)
        if error is None:
            raise
        raise ConfigurationError(f"cannot listen on {address}: {error.strerror or error}") from None


async def serve_registry(args: argparse.Namespace, store: ContentStore) -> None:
    metrics = Metrics()
    backend = LocalBackend(store)
    registry_app = instrument(create_app(backend, args.default_registry), metrics, handler_name)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        bound = await listen(nursery, registry_app, args.registry_addr)
        metrics_bound = await listen(nursery, create_metrics_app(metrics), args.metrics_addr)
        log.info("serving", extra={"registry": bound, "metrics": metrics_bound, "store": args.store})


async def _stop_on_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return

"""The composition root: builds stores, backends and servers from parsed flags, and runs them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

import trio

from spegel.metrics import Metrics, instrument
from spegel.registry.app import create_app
from spegel.registry.backend import LocalBackend
from spegel.registry.routes import handler_name
from spegel.registry.server import create_metrics_app, serve_app
from spegel.store.base import ContentStore
from spegel.store.layout import InvalidLayout, OCILayoutStore

log = logging.getLogger("spegel")


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
    except ConfigurationError as exc:
        sys.stderr.write(f"spegel: error: {exc}\n")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve_registry, args, store)
    return 0


async def serve_registry(args: argparse.Namespace, store: ContentStore) -> None:
    metrics = Metrics()
    backend = LocalBackend(store)
    registry_app = instrument(create_app(backend, args.default_registry), metrics, handler_name)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        bound = await nursery.start(serve_app, registry_app, args.registry_addr)
        metrics_bound = await nursery.start(serve_app, create_metrics_app(metrics), args.metrics_addr)
        log.info("serving", extra={"registry": bound, "metrics": metrics_bound, "store": args.store})


async def _stop_on_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return

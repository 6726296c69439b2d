"""The composition root: builds stores, backends and servers from parsed flags, and runs them."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import TypeVar

import trio

from spegel.advertise import Advertisements
from spegel.metrics import Metrics, instrument
from spegel.mirror.backend import MirrorBackend, MirrorOptions
from spegel.mirror.inflight import IngestSource
from spegel.mirror.peers import PeerClient, Timeouts
from spegel.mirror.policy import RegistryFilters
from spegel.preflight import Severity, run_preflight
from spegel.registry.app import create_app
from spegel.registry.backend import Backend, LocalBackend
from spegel.registry.routes import handler_name
from spegel.registry.server import create_metrics_app, serve_app
from spegel.routing.base import KeyState, Router
from spegel.routing.config import RouterConfigError, open_router
from spegel.routing.filtered import TagFilteringRouter, is_tag_key
from spegel.store.base import ContentStore
from spegel.store.containerd.client import ContainerdError
from spegel.store.containerd.store import ContainerdStore
from spegel.store.containerd.watcher import Mode, Watcher
from spegel.store.layout import InvalidLayout, OCILayoutStore

log = logging.getLogger("spegel")
E = TypeVar("E", bound=BaseException)


class ConfigurationError(Exception):
    """A flag value that names something unusable (reported in one line, exit 2)."""


def open_store(args: argparse.Namespace) -> ContentStore:
    kind, _, location = args.store.partition(":")
    if args.store == "containerd":
        return ContainerdStore.from_args(args)
    if kind == "oci-layout":
        try:
            return OCILayoutStore(location)
        except InvalidLayout as exc:
            raise ConfigurationError(str(exc)) from None
    raise ConfigurationError(f"unknown store {args.store!r}: want containerd or oci-layout:DIR")


def run_registry(args: argparse.Namespace) -> int:
    try:
        store = open_store(args)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                trio.run(serve_registry, args, store)
        finally:
            if isinstance(store, ContainerdStore):
                store.close()
    except (ConfigurationError, RouterConfigError, BaseExceptionGroup) as exc:
        error = find_exception(exc, (ConfigurationError, RouterConfigError))
        if error is None:
            raise
        sys.stderr.write(f"spegel: error: {error}\n")
        return 2
    return 0


def find_exception(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
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
        addresses: list[str] = await nursery.start(serve_app, app, address)
        return addresses
    except (OSError, BaseExceptionGroup) as exc:
        error = find_exception(exc, OSError)
        if error is None:
            raise
        raise ConfigurationError(f"cannot listen on {address}: {error.strerror or error}") from None


async def serve_registry(args: argparse.Namespace, store: ContentStore) -> None:
    """Serve until SIGINT or SIGTERM. Contexts are entered outside the serving nursery, so that on a signal
    the servers stop first, then the mirror, then the router, each inside the one that started before it."""
    metrics = Metrics()
    async with trio.open_nursery() as signals:
        signals.start_soon(_stop_on_signals, signals.cancel_scope)
        async with contextlib.AsyncExitStack() as stack:
            watcher, peer_name = None, None
            if args.router == "none":
                backend: Backend = LocalBackend(store)
            else:
                router = await stack.enter_async_context(open_router(args, args.registry_addr))
                peer_name = router.name
                if isinstance(store, ContainerdStore):
                    advertised = TagFilteringRouter(router, RegistryFilters(args.registry_filters).excludes)
                    watcher = Watcher(store, advertised, Mode(args.advertise), args.containerd_relist_interval)
                    export_advertised_keys(metrics, watcher.advertisements)
                backend = await stack.enter_async_context(open_mirror(args, store, router, metrics, watcher))
            registry_app = instrument(create_app(backend, args.default_registry), metrics, handler_name)
            async with trio.open_nursery() as nursery:
                if isinstance(store, ContainerdStore):
                    nursery.start_soon(check_containerd, store, args)
                if watcher is not None:
                    nursery.start_soon(watcher.run)
                bound = await listen(nursery, registry_app, args.registry_addr)
                metrics_bound = await listen(nursery, create_metrics_app(metrics), args.metrics_addr)
                log.info(
                    "serving",
                    extra={"registry": bound, "metrics": metrics_bound, "store": args.store, "peer": peer_name},
                )


async def check_containerd(store: ContainerdStore, args: argparse.Namespace) -> None:
    """Preflight at start: log, in one line each, what in containerd's version or configuration keeps the
    mirror from working (the mirror keeps serving: the watcher falls back to what containerd offers)."""
    try:
        version = await store.client.version()
    except ContainerdError as exc:
        log.warning("preflight: containerd is not reachable yet", extra={"error": str(exc)})
        return
    findings = await trio.to_thread.run_sync(
        run_preflight, version.text, args.containerd_config_path, args.containerd_registry_config_path
    )
    for finding in findings:
        level = logging.ERROR if finding.severity is Severity.ERROR else logging.WARNING
        log.log(level, f"preflight: {finding.message}", extra={"check": finding.check})
    if not findings:
        log.info("preflight: containerd is ready for the mirror", extra={"version": version.text})


def export_advertised_keys(metrics: Metrics, advertisements: Advertisements) -> None:
    """`spegel_advertised_keys{kind}`: tags, complete blobs and blobs in progress, counted at scrape time."""

    def count(kind: str) -> int:
        return sum(1 for key, state in advertisements.state.items() if advertised_kind(key, state) == kind)

    for kind in ("tag", "blob", "blob_in_progress"):
        metrics.advertised_keys.labels(kind).set_function(functools.partial(count, kind))


def advertised_kind(key: str, state: KeyState) -> str:
    if is_tag_key(key):
        return "tag"
    return "blob" if state is KeyState.COMPLETE else "blob_in_progress"


@contextlib.asynccontextmanager
async def open_mirror(
    args: argparse.Namespace, store: ContentStore, router: Router, metrics: Metrics, watcher: Watcher | None
) -> AsyncIterator[MirrorBackend]:
    """The mirror backend the flags describe; in-progress downloads are shared when the store has them, and
    the watcher (if any) announces the downloads containerd is about to make (claims)."""
    timeouts = Timeouts(
        connect=args.mirror_peer_connect_timeout,
        first_byte=args.mirror_peer_first_byte_timeout,
        read=args.mirror_peer_read_timeout,
        inflight_wait=args.mirror_inflight_wait,
    )
    options = MirrorOptions(
        resolve_timeout=args.mirror_resolve_timeout,
        resolve_retries=args.mirror_resolve_retries,
        resolve_tags=args.resolve_tags,
        filters=RegistryFilters(args.registry_filters),
        inflight_wait=args.mirror_inflight_wait,
        miss_settle=args.mirror_miss_settle,
    )
    in_progress = IngestSource(store) if isinstance(store, ContainerdStore) else None
    peers = PeerClient(timeouts)
    try:
        yield MirrorBackend(store, router, peers, metrics, options, in_progress, watcher)
    finally:
        await peers.aclose()


async def _stop_on_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return

"""The composition root: builds stores, backends and servers from the registry settings, and runs them."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from spegel import hostsconfig, preflight
from spegel.advertise import Advertisements
from spegel.debugweb import DebugView, PeerRow, add_debug_web
from spegel.metrics import Metrics, RegistryLabels, instrument, tag_registry
from spegel.mirror.backend import InProgressSource, MirrorBackend, MirrorOptions
from spegel.mirror.peers import PeerClient, Timeouts
from spegel.preflight import Severity, run_preflight
from spegel.registry.app import create_app
from spegel.registry.backend import Backend, LocalBackend
from spegel.registry.http11 import ASGIApp, Limits
from spegel.registry.routes import handler_name
from spegel.registry.server import METRICS_LIMITS, create_metrics_app, serve_app
from spegel.routing.base import Router
from spegel.routing.config import RouterConfigError, RouterOptions, open_router
from spegel.routing.filtered import TagFilteringRouter
from spegel.store.base import ContentStore
from spegel.store.containerd.client import ContainerdError
from spegel.store.containerd.downloads import Downloads, IngestSource
from spegel.store.containerd.store import DEFAULT_CONTENT_PATH, DEFAULT_NAMESPACE, DEFAULT_SOCKET, ContainerdStore
from spegel.store.containerd.watcher import DEFAULT_RELIST_INTERVAL, Mode, Watcher
from spegel.store.layout import InvalidLayout, LayoutFeed, OCILayoutStore
from spegel.tracker import Tracker

if TYPE_CHECKING:
    from spegel.routing.libp2p.router import Libp2pRouter

log = logging.getLogger("spegel")
E = TypeVar("E", bound=BaseException)


class ConfigurationError(Exception):
    """A flag value that names something unusable (reported in one line, exit 2)."""


@dataclass(frozen=True)
class ContainerdOptions:
    """Where containerd is, what to advertise from it, and which configuration to check at start."""

    sock: str = DEFAULT_SOCKET
    namespace: str = DEFAULT_NAMESPACE
    content_path: str = DEFAULT_CONTENT_PATH
    advertise: Mode = Mode.INFLIGHT
    relist_interval: float = DEFAULT_RELIST_INTERVAL
    config_path: str = preflight.DEFAULT_CONFIG_FILE
    registry_config_path: str = hostsconfig.DEFAULT_CONFIG_PATH


@dataclass(frozen=True)
class RegistrySettings:
    """Everything `spegel registry` runs with (`spegel.cli` builds it from flags and environment)."""

    store: str = "containerd"  # containerd | oci-layout:DIR
    registry_addr: str = "0.0.0.0:5000"
    metrics_addr: str = "0.0.0.0:9090"
    default_registry: str = "docker.io"
    mirrored_registries: tuple[str, ...] = ()  # empty: every registry
    router: RouterOptions | None = field(default_factory=RouterOptions)  # None: serve local content only
    mirror: MirrorOptions = field(default_factory=MirrorOptions)
    timeouts: Timeouts = field(default_factory=Timeouts)
    containerd: ContainerdOptions = field(default_factory=ContainerdOptions)
    debug_web: bool = True  # the debug page at /debug/web/ on the metrics address
    http: Limits = field(default_factory=Limits)  # the registry port's connections


class Feed(Protocol):
    """A task that tells the tracker what its store holds (`started` once the first listing is applied)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


@dataclass
class OpenedStore:
    """A store with what the composition root runs beside it: its feed to the tracker, its in-progress
    downloads (when it has any), tasks to start with it (checks), and how to close it."""

    content: ContentStore
    feed: Callable[[Tracker], Feed]
    in_progress: InProgressSource | None = None
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    close: Callable[[], None] = lambda: None


def open_store(settings: RegistrySettings) -> OpenedStore:
    kind, _, location = settings.store.partition(":")
    if settings.store == "containerd":
        c = settings.containerd
        store = ContainerdStore.connect(c.sock, c.namespace, c.content_path)
        downloads = Downloads()
        return OpenedStore(
            store,
            feed=lambda tracker: Watcher(store, tracker, c.advertise, c.relist_interval, downloads=downloads),
            in_progress=IngestSource(store.content_path, downloads),
            tasks=[functools.partial(check_containerd, store, c)],
            close=store.close,
        )
    if kind == "oci-layout":
        try:
            layout = OCILayoutStore(location)
        except InvalidLayout as exc:
            raise ConfigurationError(str(exc)) from None
        return OpenedStore(layout, feed=lambda tracker: LayoutFeed(layout, tracker))
    raise ConfigurationError(f"unknown store {settings.store!r}: want containerd or oci-layout:DIR")


def run_registry(settings: RegistrySettings) -> int:
    try:
        store = open_store(settings)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                trio.run(serve_registry, settings, store)
        finally:
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


async def listen(nursery: trio.Nursery, app: ASGIApp, address: str, limits: Limits) -> list[str]:
    """Start serving `app` on `address` in `nursery`; a failure to bind raises `ConfigurationError`."""
    try:
        addresses: list[str] = await nursery.start(serve_app, app, address, limits)
        return addresses
    except (OSError, BaseExceptionGroup) as exc:
        error = find_exception(exc, OSError)
        if error is None:
            raise
        raise ConfigurationError(f"cannot listen on {address}: {error.strerror or error}") from None


async def serve_registry(settings: RegistrySettings, store: OpenedStore) -> None:
    """Serve until SIGINT or SIGTERM. Contexts are entered outside the serving nursery, so that on a signal
    the servers stop first, then the mirror, then the router, each inside the one that started before it."""
    metrics = Metrics(RegistryLabels([*settings.mirrored_registries, settings.default_registry]))
    async with trio.open_nursery() as signals:
        signals.start_soon(_stop_on_signals, signals.cancel_scope)
        async with contextlib.AsyncExitStack() as stack:
            tracker, peer_name = None, None
            peers: Callable[[], list[PeerRow]] = list
            if settings.router is None:
                backend: Backend = LocalBackend(store.content)
            else:
                router = await stack.enter_async_context(open_router(settings.router, settings.registry_addr))
                peer_name, peers = router.name, functools.partial(_peer_rows, router)
                metrics.export_router(
                    lambda: len(router.origins.known), lambda: len(router.linked_peers()), lambda: router.settled
                )
                tracker = Tracker(TagFilteringRouter(router, settings.mirror.filters.excludes))
                if not settings.mirrored_registries:
                    hosts_dir = settings.containerd.registry_config_path
                    held = functools.partial(_registries_here, tracker.advertisements, hosts_dir)
                    metrics.registry_label = RegistryLabels([settings.default_registry], held)
                metrics.export_advertised(tracker.advertisements.state)
                backend = await stack.enter_async_context(open_mirror(settings, store, router, metrics, tracker))
            registry_app = instrument(create_app(backend, settings.default_registry), metrics, handler_name)
            async with trio.open_nursery() as nursery:
                for task in store.tasks:
                    nursery.start_soon(task)
                if tracker is not None:
                    nursery.start_soon(store.feed(tracker).run)
                bound = await listen(nursery, registry_app, settings.registry_addr, settings.http)
                metrics_app = create_metrics_app(metrics, backend.ready)
                if settings.debug_web:
                    view = DebugView(
                        node=peer_name or "local content only (--router none)",
                        registry_url=_loopback(bound[0]),
                        activity=metrics.activity,
                        advertised=tracker.advertisements.state if tracker is not None else {},
                        peers=peers,
                    )
                    add_debug_web(metrics_app, view)
                metrics_bound = await listen(nursery, metrics_app, settings.metrics_addr, METRICS_LIMITS)
                log.info(
                    "serving",
                    extra={"registry": bound, "metrics": metrics_bound, "store": settings.store, "peer": peer_name},
                )


async def check_containerd(store: ContainerdStore, options: ContainerdOptions) -> None:
    """Preflight at start: log, in one line each, what in containerd's version or configuration keeps the
    mirror from working (the mirror keeps serving: the watcher falls back to what containerd offers)."""
    try:
        version = await store.client.version()
    except ContainerdError as exc:
        log.warning("preflight: containerd is not reachable yet", extra={"error": str(exc)})
        return
    findings = await trio.to_thread.run_sync(
        run_preflight, version.text, options.config_path, options.registry_config_path
    )
    for finding in findings:
        level = logging.ERROR if finding.severity is Severity.ERROR else logging.WARNING
        log.log(level, f"preflight: {finding.message}", extra={"check": finding.check})
    if not findings:
        log.info("preflight: containerd is ready for the mirror", extra={"version": version.text})


def _peer_rows(router: Libp2pRouter) -> list[PeerRow]:
    """The debug page's peers: every connected one, its announced registry address, keys, and whether it is
    heard from."""
    now, index = trio.current_time(), router.index
    rows = []
    for peer in map(str, router.connected_peers()):
        rows.append(PeerRow(peer, index.address(peer), index.holds(peer), index.heard(peer, now)))
    return rows


def _loopback(url: str) -> str:
    """A bound URL as this process reaches it: an unspecified host becomes loopback."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


def _registries_here(advertisements: Advertisements, hosts_dir: str) -> set[str]:
    """The registries containerd sends to this mirror (its hosts.toml directories) and those of the tags this
    node advertises: the operator's choice, never a client's."""
    try:
        configured = {entry.name for entry in os.scandir(hosts_dir) if entry.is_dir() and entry.name[0] != "_"}
    except OSError:
        configured = set()
    return configured | {r for key in list(advertisements.state) if (r := tag_registry(key)) is not None}


@contextlib.asynccontextmanager
async def open_mirror(
    settings: RegistrySettings, store: OpenedStore, router: Router, metrics: Metrics, tracker: Tracker
) -> AsyncIterator[MirrorBackend]:
    """The mirror backend the settings describe; in-progress downloads are shared when the store has them, and
    the tracker announces the downloads the node is about to make (claims), when its store's feed accepts them."""
    peers = PeerClient(settings.timeouts)
    try:
        yield MirrorBackend(store.content, router, peers, metrics, settings.mirror, store.in_progress, tracker)
    finally:
        await peers.aclose()


async def _stop_on_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return

"""The router's options and the composition of a router from them.

`RouterOptions` is what the router flags say (parsed by `spegel.cli`); `open_router` starts the libp2p router
they describe (and, with `http_bootstrap_addr`, the `/id` endpoint other nodes bootstrap from) and stops it on
exit. Bad values raise `RouterConfigError` before anything starts. libp2p is imported only when a router is
opened, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from spegel.routing.libp2p.router import Libp2pRouter, RouterSettings

__all__ = ["RouterConfigError", "RouterOptions", "open_router", "router_settings"]


class RouterConfigError(Exception):
    """An unusable identity file, key file or address (reported in one line)."""


@dataclass(frozen=True)
class RouterOptions:
    """What the router flags say (`spegel.cli` parses them; durations in seconds)."""

    addr: str = ":5001"
    data_dir: str = "/var/lib/spegel"
    bootstrap_kind: str = "static"  # static | dns | http
    static_bootstrap_peers: tuple[str, ...] = ()
    dns_bootstrap_domain: str | None = None
    http_bootstrap_addr: str | None = None
    http_bootstrap_url: str | None = None
    psk_file: str | None = None
    record_ttl: float = 600.0
    refresh: float | None = None  # default: a third of the TTL
    rejoin: float = 60.0
    dht_provide_rate: float = 1.0
    dht: bool = True


def router_settings(options: RouterOptions) -> RouterSettings:
    """The RouterSettings the options describe; loads (or creates) the identity in --data-dir."""
    from spegel.routing.libp2p.bootstrap import (
        BootstrapError,
        DnsBootstrapper,
        HttpBootstrapper,
        StaticBootstrapper,
        parse_multiaddrs,
    )
    from spegel.routing.libp2p.host import listen_multiaddr, load_identity, read_psk_file
    from spegel.routing.libp2p.router import RouterSettings

    listen = listen_multiaddr(options.addr)
    bootstrapper: StaticBootstrapper | DnsBootstrapper | HttpBootstrapper
    if options.bootstrap_kind == "static":
        try:
            bootstrapper = StaticBootstrapper(parse_multiaddrs(list(options.static_bootstrap_peers)))
        except BootstrapError as exc:
            raise RouterConfigError(f"--static-bootstrap-peers: {exc}") from None
    elif options.bootstrap_kind == "dns":
        if not options.dns_bootstrap_domain:
            raise RouterConfigError("--bootstrap-kind dns needs --dns-bootstrap-domain")
        bootstrapper = DnsBootstrapper(options.dns_bootstrap_domain, int(listen.value_for_protocol("tcp")))
    else:
        if not options.http_bootstrap_url:
            raise RouterConfigError("--bootstrap-kind http needs --http-bootstrap-url")
        bootstrapper = HttpBootstrapper(options.http_bootstrap_url)
    psk = read_psk_file(options.psk_file) if options.psk_file else None
    return RouterSettings(
        listen=listen,
        key_pair=load_identity(options.data_dir),
        bootstrapper=bootstrapper,
        psk=psk,
        ttl=options.record_ttl,
        refresh=options.refresh,
        rejoin=options.rejoin,
        dht=options.dht,
        provide_rate=options.dht_provide_rate,
    )


@asynccontextmanager
async def open_router(options: RouterOptions, registry_address: str) -> AsyncIterator[Libp2pRouter]:
    """Run the router the options describe, announcing `registry_address` (`host:port`) as this node's registry.

    An unspecified host in `registry_address` (`0.0.0.0:5000`) is replaced, at each peer, by the address this node
    connects from. Raises RouterConfigError for unusable flags; cancelling the caller stops everything.
    """
    from spegel.routing.libp2p.bootstrap import serve_id
    from spegel.routing.libp2p.router import open_libp2p_router

    settings = router_settings(options)
    async with open_libp2p_router(settings, registry_address) as router:
        if not options.http_bootstrap_addr:
            yield router
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_id, router.listen_addrs, options.http_bootstrap_addr)
            yield router
            nursery.cancel_scope.cancel()

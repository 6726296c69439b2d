"""The router's options and the composition of a router from them.

`RouterOptions` is what the router flags say (parsed by `spegel.cli`); `open_router` starts the libp2p router
they describe (and, with `http_bootstrap_addr`, the `/id` endpoint other nodes bootstrap from) and stops it on
exit. Bad values raise `RouterConfigError` before anything starts, and so does a router without a private network
key (`psk_file`) that would join a cluster beyond this machine (a listen or bootstrap address that is not
loopback), unless `insecure_no_psk` says so. libp2p is imported only when a router is opened, so importing this
module stays cheap.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from spegel.routing.base import RouterConfigError

if TYPE_CHECKING:
    import multiaddr

    from spegel.routing.libp2p.router import Libp2pRouter, RouterSettings

__all__ = ["RouterConfigError", "RouterOptions", "open_router", "router_settings"]


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
    dht_provide_delay: float = 120.0  # seconds from a key's advertisement to its DHT provide
    dht: bool = True
    insecure_no_psk: bool = False  # join a non-loopback cluster without a key
    peer_networks: tuple[str, ...] = ()  # CIDRs peers may name besides their own host
    max_keys_per_peer: int = 50_000
    peer_grace: float = 10.0  # seconds a disconnected peer's entries are kept
    degree: int = 8  # peers each node picks to link to


def router_settings(options: RouterOptions) -> RouterSettings:
    """The RouterSettings the options describe; loads (or creates) the identity in --data-dir."""
    from spegel.routing.libp2p.addresses import parse_networks
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
            static = parse_multiaddrs(list(options.static_bootstrap_peers))
        except BootstrapError as exc:
            raise RouterConfigError(f"--static-bootstrap-peers: {exc}") from None
        bootstrapper = StaticBootstrapper(static)
        hosts = [_multiaddr_host(addr) for addr in static]
    elif options.bootstrap_kind == "dns":
        if not options.dns_bootstrap_domain:
            raise RouterConfigError("--bootstrap-kind dns needs --dns-bootstrap-domain")
        bootstrapper = DnsBootstrapper(options.dns_bootstrap_domain, int(listen.value_for_protocol("tcp")))
        hosts = [options.dns_bootstrap_domain]
    else:
        if not options.http_bootstrap_url:
            raise RouterConfigError("--bootstrap-kind http needs --http-bootstrap-url")
        bootstrapper = HttpBootstrapper(options.http_bootstrap_url)
        hosts = [urllib.parse.urlsplit(options.http_bootstrap_url).hostname or ""]
    psk = read_psk_file(options.psk_file) if options.psk_file else None
    if psk is None and not options.insecure_no_psk:
        outside = [host for host in [_multiaddr_host(listen), *hosts] if not _is_loopback(host)]
        if outside:
            raise RouterConfigError(
                f"no --router-psk-file: refusing to join a cluster beyond this machine ({outside[0]}) without a "
                "private network key (make one with `openssl rand -hex 32`), or pass --insecure-no-psk"
            )
    try:
        networks = parse_networks(options.peer_networks)
    except ValueError as exc:
        raise RouterConfigError(f"--router-peer-networks: {exc}") from None
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
        provide_delay=options.dht_provide_delay,
        networks=networks,
        max_keys_per_peer=options.max_keys_per_peer,
        peer_grace=options.peer_grace,
        degree=options.degree,
    )


def _multiaddr_host(addr: multiaddr.Multiaddr) -> str:
    """The host part of a multiaddr (`/ip4/10.0.0.1/...` → `10.0.0.1`, `/dns4/a/...` → `a`)."""
    parts = str(addr).split("/")
    return parts[2] if len(parts) > 2 else str(addr)


def _is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: a loopback IP, or `localhost`."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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

"""The router's command-line flags and the composition of a router from them.

`add_router_arguments` adds the flags to a parser (the `registry` command, and the test node driver);
`open_router` starts the libp2p router they describe (and, with `--http-bootstrap-addr`, the `/id` endpoint other
nodes bootstrap from) and stops it on exit. Bad values raise `RouterConfigError` before anything starts.
libp2p is imported only when a router is opened, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from spegel.routing.libp2p.router import Libp2pRouter, RouterSettings

__all__ = ["RouterConfigError", "add_router_arguments", "open_router", "router_settings"]


class RouterConfigError(Exception):
    """An unusable identity file, key file or address (reported in one line)."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be positive")
    return value


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("router (libp2p)")
    group.add_argument(
        "--router-addr", default=":5001", help="HOST:PORT the libp2p router listens on (default: :5001, all IPv4)"
    )
    group.add_argument(
        "--data-dir",
        default="/var/lib/spegel",
        help="directory for the node's persistent Ed25519 identity (default: /var/lib/spegel)",
    )
    group.add_argument(
        "--bootstrap-kind",
        choices=["static", "dns", "http"],
        default="static",
        help="how to find the cluster: static multiaddrs, a DNS name's A/AAAA records, or a node's /id over HTTP",
    )
    group.add_argument(
        "--static-bootstrap-peers",
        action="append",
        default=[],
        metavar="MULTIADDR[,MULTIADDR...]",
        help="bootstrap multiaddrs (repeatable or comma-separated); /p2p/<id> optional, learned on connect",
    )
    group.add_argument(
        "--dns-bootstrap-domain", help="name whose A/AAAA records are the nodes (e.g. a headless Service)"
    )
    group.add_argument("--http-bootstrap-addr", help="HOST:PORT to serve this node's multiaddrs on at GET /id")
    group.add_argument("--http-bootstrap-url", help="URL of another node's /id to bootstrap from")
    group.add_argument(
        "--router-psk-file",
        help="private network key file (libp2p /key/swarm/psk/1.0.0/ format or 64 hex digits): "
        "only nodes with the same key can connect",
    )
    group.add_argument(
        "--router-record-ttl",
        type=_positive,
        default=600.0,
        help="seconds a node's advertisements count after it was last heard from, and DHT records live (default: 600)",
    )
    group.add_argument(
        "--router-refresh",
        type=_positive,
        help="seconds between full-state announcements to every peer (default: a third of the TTL); "
        "DHT records are republished at half the TTL",
    )
    group.add_argument(
        "--router-rejoin",
        type=_positive,
        default=60.0,
        help="seconds between bootstrap rounds once connected (default: 60)",
    )
    group.add_argument(
        "--router-dht-provide-rate",
        type=_positive,
        default=1.0,
        metavar="KEYS_PER_SECOND",
        help="at most this many DHT provides a second (each walks the DHT and costs every peer it reaches CPU; "
        "default: 1)",
    )
    group.add_argument(
        "--router-dht",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="provide keys in the Kademlia DHT and fall back to it on index misses (default: on)",
    )


def router_settings(args: argparse.Namespace) -> RouterSettings:
    """The RouterSettings the parsed flags describe; loads (or creates) the identity in --data-dir."""
    from spegel.routing.libp2p.bootstrap import (
        BootstrapError,
        DnsBootstrapper,
        HttpBootstrapper,
        StaticBootstrapper,
        parse_multiaddrs,
    )
    from spegel.routing.libp2p.host import listen_multiaddr, load_identity, read_psk_file
    from spegel.routing.libp2p.router import RouterSettings

    listen = listen_multiaddr(args.router_addr)
    bootstrapper: StaticBootstrapper | DnsBootstrapper | HttpBootstrapper
    if args.bootstrap_kind == "static":
        texts = [text for flag in args.static_bootstrap_peers for text in flag.split(",")]
        try:
            bootstrapper = StaticBootstrapper(parse_multiaddrs(texts))
        except BootstrapError as exc:
            raise RouterConfigError(f"--static-bootstrap-peers: {exc}") from None
    elif args.bootstrap_kind == "dns":
        if not args.dns_bootstrap_domain:
            raise RouterConfigError("--bootstrap-kind dns needs --dns-bootstrap-domain")
        bootstrapper = DnsBootstrapper(args.dns_bootstrap_domain, int(listen.value_for_protocol("tcp")))
    else:
        if not args.http_bootstrap_url:
            raise RouterConfigError("--bootstrap-kind http needs --http-bootstrap-url")
        bootstrapper = HttpBootstrapper(args.http_bootstrap_url)
    psk = read_psk_file(args.router_psk_file) if args.router_psk_file else None
    return RouterSettings(
        listen=listen,
        key_pair=load_identity(args.data_dir),
        bootstrapper=bootstrapper,
        psk=psk,
        ttl=args.router_record_ttl,
        refresh=args.router_refresh,
        rejoin=args.router_rejoin,
        dht=args.router_dht,
        provide_rate=args.router_dht_provide_rate,
    )


@asynccontextmanager
async def open_router(args: argparse.Namespace, registry_address: str) -> AsyncIterator[Libp2pRouter]:
    """Run the router the flags describe, announcing `registry_address` (`host:port`) as this node's registry.

    An unspecified host in `registry_address` (`0.0.0.0:5000`) is replaced, at each peer, by the address this node
    connects from. Raises RouterConfigError for unusable flags; cancelling the caller stops everything.
    """
    from spegel.routing.libp2p.bootstrap import serve_id
    from spegel.routing.libp2p.router import open_libp2p_router

    settings = router_settings(args)
    async with open_libp2p_router(settings, registry_address) as router:
        if not args.http_bootstrap_addr:
            yield router
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_id, router.listen_addrs, args.http_bootstrap_addr)
            yield router
            nursery.cancel_scope.cancel()

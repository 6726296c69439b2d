"""Filling in the host of addresses a node announces about itself while listening on all interfaces (pure).

A node listening on `0.0.0.0` or `::` announces that unspecified IP; whoever receives the announcement replaces it
by the IP it sees the node at (the remote end of the connection, or the host it fetched the announcement from).
"""

from __future__ import annotations

import ipaddress


def is_unspecified(host: str) -> bool:
    """Whether `host` is the IPv4 or IPv6 unspecified address (`0.0.0.0`, `::`)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def with_host(address: str, seen_ip: str | None) -> str:
    """`address` (`host:port`, `[v6]:port` or `:port`) with an unspecified or missing host replaced by `seen_ip`."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address
    host = host.strip("[]")
    if seen_ip and (not host or is_unspecified(host)):
        host = seen_ip
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def with_host_multiaddr(addr: str, seen_ip: str | None) -> str:
    """A multiaddr (text) whose leading unspecified `/ip4` or `/ip6` part is replaced by `seen_ip`."""
    parts = addr.split("/")
    if seen_ip and len(parts) > 2 and parts[1] in ("ip4", "ip6") and is_unspecified(parts[2]):
        try:
            version = ipaddress.ip_address(seen_ip).version
        except ValueError:
            return addr
        parts[1:3] = [f"ip{version}", seen_ip]
    return "/".join(parts)
